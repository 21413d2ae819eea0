r"""A tiny Transformer built from the library's own blocks, trained with hand-written backprop.

Vaswani et al. (2017), *Attention Is All You Need* (the block, position-wise
feed-forward network, sinusoidal positions, embedding scaled by ``sqrt(d_model)``);
Xiong et al. (2020), *On Layer Normalization in the Transformer Architecture*
(pre-norm placement); Su et al. (2021), *RoFormer* (rotary positions).

Feed-forward network, applied at every position independently:

.. math::
    \operatorname{FFN}(x) = \phi(x W_1 + b_1) W_2 + b_2,\qquad
    W_1 (d_{model}, d_{ff}),\; W_2 (d_{ff}, d_{model}),\; \phi \in \{\text{GELU}, \text{ReLU}\}

Block on ``x (B, n, d_model)`` (``MHA`` = :class:`MultiHeadAttention`):

* pre-norm:  ``h = x + MHA(LN_1(x))``,  ``y = h + FFN(LN_2(h))``
* post-norm (the 2017 paper): ``h = LN_1(x + MHA(x))``,  ``y = LN_2(h + FFN(h))``

(dropout on each sub-layer output before the residual add).  Backward: a residual
``y = x + f(x)`` passes its gradient through twice, ``dx = dy + f'(x)^T dy``.

Model: ``ids (B, n) -> E[ids] sqrt(d_model) (+ PE) -> blocks -> (LN) -> logits (B, n, vocab)``
with ``PE`` sinusoidal (fixed), learned (``W_pos (max_len, d_model)``) or none
(RoPE inside every attention layer).
"""
from __future__ import annotations

import math

import numpy as np

from ..nn.dropout import Dropout
from ..nn.embedding import Embedding
from ..nn.functional import gelu, gelu_backward, relu, relu_backward
from ..nn.linear import Linear
from ..nn.module import Module, accepts_unbatched, default_rng, xavier_uniform
from ..nn.norm import LayerNorm
from ..nn.validate import as_float_array, check_int_array, shape_error
from .kv_cache import KVCache, cached_attention
from .multihead import MultiHeadAttention, split_heads
from .positional import sinusoidal_encoding

__all__ = ["FeedForward", "TransformerBlock", "TinyTransformer", "qkv_dimension_norms"]

_ACTIVATIONS = {"gelu": (gelu, gelu_backward), "relu": (relu, relu_backward)}


class FeedForward(Module):
    """Position-wise ``phi(x W_1 + b_1) W_2 + b_2``; ``x (..., d_model) -> (..., d_model)``."""

    def __init__(self, d_model: int, d_ff: int, activation: str = "gelu", *, rng=None) -> None:
        super().__init__()
        if activation not in _ACTIVATIONS:
            raise ValueError(f"activation must be one of {sorted(_ACTIVATIONS)}, got {activation!r}")
        rng = default_rng(rng)
        self.d_model, self.d_ff, self.activation = int(d_model), int(d_ff), activation
        self.add_param("W_1", xavier_uniform(rng, self.d_model, self.d_ff))
        self.add_param("b_1", np.zeros(self.d_ff))
        self.add_param("W_2", xavier_uniform(rng, self.d_ff, self.d_model))
        self.add_param("b_2", np.zeros(self.d_model))

    def forward(self, x) -> np.ndarray:
        """``x (..., d_model)``, e.g. ``(B, n, d_model)`` -> ``(..., d_model)``, each position independently.

        Caches ``x``, the pre-activation and the activation ``(..., d_ff)``.
        """
        x = as_float_array(x, "x")
        if x.ndim < 1 or x.shape[-1] != self.d_model:
            raise shape_error("x", f"(..., d_model={self.d_model})", x)
        p = self.params
        z = x @ p["W_1"] + p["b_1"]                              # (..., d_ff)
        a = _ACTIVATIONS[self.activation][0](z)                  # (..., d_ff)
        self.cache = (x, z, a)
        return a @ p["W_2"] + p["b_2"]                           # (..., d_model)

    def backward(self, dout) -> np.ndarray:
        """``dout (..., d_model)`` -> ``dx (..., d_model)``.

        Adds ``dW_1 (d_model, d_ff)``, ``db_1 (d_ff,)``, ``dW_2 (d_ff, d_model)``,
        ``db_2 (d_model,)`` into ``grads``.
        """
        x, z, a = self.cache
        p, g = self.params, self.grads
        d2 = dout.reshape(-1, self.d_model)                      # (N, d_model)
        g["W_2"] += a.reshape(-1, self.d_ff).T @ d2              # (d_ff, d_model)
        g["b_2"] += d2.sum(axis=0)
        dz = _ACTIVATIONS[self.activation][1](dout @ p["W_2"].T, z)   # (..., d_ff)
        dz2 = dz.reshape(-1, self.d_ff)
        g["W_1"] += x.reshape(-1, self.d_model).T @ dz2          # (d_model, d_ff)
        g["b_1"] += dz2.sum(axis=0)
        return dz @ p["W_1"].T                                   # (..., d_model)


class TransformerBlock(Module):
    """Self-attention + feed-forward sub-layers with residuals and LayerNorm.

    ``forward(x (B, n, d_model), mask=None, positions=None) -> (B, n, d_model)``
    (``x (n, d_model)`` -> ``(n, d_model)``);
    ``mask`` is a key/padding mask broadcastable to ``(B, n, n)`` (True = may
    attend), combined with the causal mask when ``causal=True``; ``positions``
    are RoPE positions (``rope=True``).  ``backward(dout) -> dx``.
    """

    def __init__(self, d_model: int, n_heads: int, d_ff: int, n_kv_heads: int | None = None,
                 causal: bool = False, pre_norm: bool = True, dropout: float = 0.0, rope: bool = False,
                 activation: str = "gelu", *, rng=None) -> None:
        super().__init__()
        rng = default_rng(rng)
        self.d_model, self.causal, self.pre_norm = int(d_model), bool(causal), bool(pre_norm)
        self.attn = MultiHeadAttention(d_model, n_heads, n_kv_heads, rng=rng, rope=rope)
        self.ffn = FeedForward(d_model, d_ff, activation=activation, rng=rng)
        self.ln1, self.ln2 = LayerNorm(d_model), LayerNorm(d_model)
        self.drop1, self.drop2 = Dropout(dropout, rng=rng), Dropout(dropout, rng=rng)

    def _attention(self, x, mask, positions, cache):
        if cache is None:
            return self.attn(x, mask=mask, causal=self.causal, positions=positions, kv_positions=positions)
        return cached_attention(self.attn, x, cache, mask=mask)  # inference: causal over the cache

    @accepts_unbatched("x")
    def forward(self, x, mask=None, positions=None, cache: KVCache | None = None) -> np.ndarray:
        """``x (B, n, d_model)`` (or ``(n, d_model)``) -> ``(B, n, d_model)``: attention and feed-forward sub-layers with residuals.

        ``mask``: boolean, True = may attend, ``(n, n)``, ``(B, n, n)`` (e.g.
        ``padding_mask(lengths, n)``, ``(B, 1, n)``) or per head ``(B, H, n, n)``;
        ANDed with the causal mask in a causal block.  ``positions (n,)``: RoPE
        positions (``rope=True``), default ``arange(n)``.  The sub-layers cache
        their own forward passes.

        With ``cache`` (a :class:`KVCache`; inference only, causal blocks): ``x``
        holds the new tokens ``(B, s, d_model)`` after the cached prefix, and
        nothing is cached for a backward.
        """
        x = as_float_array(x, "x")
        if x.ndim != 3 or x.shape[-1] != self.d_model:
            raise shape_error("x", f"(B, n, d_model={self.d_model})", x)
        if cache is not None and not self.causal:
            raise ValueError("a KV cache needs a causal block (causal=True)")
        if self.pre_norm:
            h = x + self.drop1(self._attention(self.ln1(x), mask, positions, cache))   # (B, n, d_model)
            return h + self.drop2(self.ffn(self.ln2(h)))                              # (B, n, d_model)
        h = self.ln1(x + self.drop1(self._attention(x, mask, positions, cache)))
        return self.ln2(h + self.drop2(self.ffn(h)))

    def backward(self, dout) -> np.ndarray:
        """``dout (B, n, d_model)`` -> ``dx (B, n, d_model)``; each residual passes the gradient through twice.

        The sub-layers (attention, feed-forward, both LayerNorms) add their
        parameter gradients into their own ``grads``.
        """
        if self.pre_norm:
            dh = dout + self.ln2.backward(self.ffn.backward(self.drop2.backward(dout)))   # residual: both paths
            return dh + self.ln1.backward(self.attn.backward(self.drop1.backward(dh)))
        dz2 = self.ln2.backward(dout)
        dh = dz2 + self.ffn.backward(self.drop2.backward(dz2))
        dz1 = self.ln1.backward(dh)
        return dz1 + self.attn.backward(self.drop1.backward(dz1))


class TinyTransformer(Module):
    """Token ids ``(B, n)`` -> logits ``(B, n, vocab_size)``; an encoder (``causal=False``) or a decoder.

    ``positional``: ``"sinusoidal"`` (fixed, added), ``"learned"`` (parameter
    ``W_pos (max_len, d_model)``, added) or ``"rope"`` (rotary, inside attention).
    ``forward(ids, mask=None)``: ``mask`` is a key padding mask broadcastable to
    ``(B, n, n)``, e.g. ``padding_mask(lengths, n)``.  ``backward(dlogits)``
    fills every gradient and returns ``None`` (integer ids have no gradient).
    """

    def __init__(self, vocab_size: int, d_model: int, n_heads: int, n_layers: int, d_ff: int, max_len: int,
                 causal: bool = False, positional: str = "sinusoidal", n_kv_heads: int | None = None,
                 pre_norm: bool = True, dropout: float = 0.0, activation: str = "gelu", *, rng=None) -> None:
        super().__init__()
        if positional not in ("sinusoidal", "learned", "rope"):
            raise ValueError(f"positional must be 'sinusoidal', 'learned' or 'rope', got {positional!r}")
        rng = default_rng(rng)
        self.vocab_size, self.d_model, self.max_len = int(vocab_size), int(d_model), int(max_len)
        self.causal, self.positional = bool(causal), positional
        self.embed_scale = math.sqrt(self.d_model)              # python float: keeps float32 float32
        self.embed = Embedding(vocab_size, d_model, rng=rng)
        if positional == "learned":
            self.add_param("W_pos", rng.normal(0.0, 0.5, size=(self.max_len, self.d_model)))
        self.pe = sinusoidal_encoding(self.max_len, self.d_model) if positional == "sinusoidal" else None
        self.drop = Dropout(dropout, rng=rng)
        self.blocks = [TransformerBlock(d_model, n_heads, d_ff, n_kv_heads, causal=causal, pre_norm=pre_norm,
                                        dropout=dropout, rng=rng, rope=positional == "rope",
                                        activation=activation) for _ in range(int(n_layers))]
        self.ln_f = LayerNorm(d_model) if pre_norm else None    # pre-norm stacks end with a LayerNorm
        self.head = Linear(d_model, vocab_size, rng=rng)

    def _embed(self, ids, start):
        ids = check_int_array(ids, "ids", high=self.vocab_size, expected="(B, n) of token ids")
        if ids.ndim != 2 or not 1 <= start + ids.shape[1] <= self.max_len:
            raise shape_error("ids", f"(B, n) with n <= max_len={self.max_len - start}", ids)
        n = ids.shape[1]
        x = self.embed(ids) * self.embed_scale                   # (B, n, d_model)
        if self.positional == "sinusoidal":
            x = x + self.pe[start:start + n].astype(x.dtype)
        elif self.positional == "learned":
            x = x + self.params["W_pos"][start:start + n]
        return self.drop(x), np.arange(start, start + n)

    def _readout(self, x):
        if self.ln_f is not None:
            x = self.ln_f(x)
        return self.head(x)                                      # (B, n, vocab_size)

    def forward(self, ids, mask=None) -> np.ndarray:
        """Token ids ``ids (B, n)`` (``n <= max_len``) -> logits ``(B, n, vocab_size)``.

        ``mask``: boolean key padding mask, True = may attend, ``(n, n)``,
        ``(B, n, n)`` (e.g. ``padding_mask(lengths, n)``, ``(B, 1, n)``) or per
        head ``(B, H, n, n)``, used by every block (ANDed with the causal mask
        in a decoder).  Every sub-module caches its own forward pass.
        """
        x, positions = self._embed(ids, 0)                       # (B, n, d_model)
        for block in self.blocks:
            x = block(x, mask=mask, positions=positions)
        self.cache = x.shape[1]
        return self._readout(x)

    def backward(self, dlogits) -> None:
        """``dlogits (B, n, vocab_size)`` -> ``None`` (integer ids have no gradient).

        Backpropagates through the head, the blocks and the embedding and adds
        every parameter's gradient into ``grads`` (``W_pos`` and the embedding
        table included).
        """
        n = self.cache
        dx = self.head.backward(dlogits)                         # (B, n, d_model)
        if self.ln_f is not None:
            dx = self.ln_f.backward(dx)
        for block in reversed(self.blocks):
            dx = block.backward(dx)
        dx = self.drop.backward(dx)
        if self.positional == "learned":
            self.grads["W_pos"][:n] += dx.sum(axis=0)           # (n, d_model): summed over the batch
        self.embed.backward(dx * self.embed_scale)              # scatter-add into the embedding table
        return None

    # -- inference with a KV cache (causal models only) ------------------
    def new_caches(self) -> list[KVCache]:
        """One empty :class:`KVCache` per layer, sized ``max_len``; each will hold ``(B, H_kv, T, d_head)`` keys and values."""
        return [KVCache(self.max_len) for _ in self.blocks]

    def forward_cached(self, ids, caches: list[KVCache]) -> np.ndarray:
        """Logits ``(B, s, vocab)`` for ``s`` new tokens that follow the cached prefix (inference only)."""
        if not self.causal:
            raise ValueError("cached decoding needs a causal model (causal=True)")
        if len(caches) != len(self.blocks):
            raise ValueError(f"caches must hold one KVCache per layer ({len(self.blocks)}), got {len(caches)}")
        x, _ = self._embed(ids, caches[0].length)                # positions continue after the prefix
        for block, cache in zip(self.blocks, caches):
            x = block(x, cache=cache)
        return self._readout(x)

    def generate(self, prompt, n_new: int) -> np.ndarray:
        """Greedy decoding: ``prompt (B, s)`` -> ``(B, s + n_new)`` ids, prefill then one token at a time.

        Positions used: the prompt and every new token but the last (which is
        returned, never fed back), so ``s + n_new - 1 <= max_len``.
        """
        prompt = check_int_array(prompt, "prompt", high=self.vocab_size, expected="(B, s)")
        if prompt.ndim != 2 or prompt.shape[1] < 1:
            raise shape_error("prompt", "(B, s) with s >= 1", prompt)
        if isinstance(n_new, bool) or int(n_new) != n_new or n_new < 0:
            raise ValueError(f"n_new must be a non-negative integer, got {n_new!r}")
        n_new = int(n_new)
        fed = prompt.shape[1] + max(n_new - 1, 0)               # the last new token is never fed back
        if fed > self.max_len:
            raise ValueError(f"prompt length {prompt.shape[1]} + n_new {n_new} feeds {fed} tokens through the model "
                             f"(all but the last new one), more than max_len={self.max_len}, the longest sequence "
                             f"this model has positions for")
        was_training = self.training
        self.eval()
        try:
            caches = self.new_caches()
            logits = self.forward_cached(prompt, caches)         # prefill: (B, s, vocab)
            out = [prompt]
            for step in range(int(n_new)):                       # decoding loop: one token per step
                nxt = np.argmax(logits[:, -1], axis=-1)[:, None] # (B, 1)
                out.append(nxt)
                if step < n_new - 1:
                    logits = self.forward_cached(nxt, caches)    # (B, 1, vocab)
        finally:
            self.train(was_training)                             # back to the caller's mode, even after an error
        return np.concatenate(out, axis=1)


def qkv_dimension_norms(model: TinyTransformer, ids, mask=None) -> np.ndarray:
    """Per-layer, per-head, per-dimension L2 norms of the projected queries, keys and values.

    ``ids (B, n)`` token ids, ``mask`` as in :meth:`TinyTransformer.forward`.
    Returns ``(n_layers, 3, H, d_head)``: Q, K, V in that order; entry
    ``[l, c, h, j]`` is ``sqrt(sum over batch and positions of z[b, h, t, j]^2)``
    for ``z`` the layer's ``W_q``/``W_k``/``W_v`` projection (bias included)
    *before* the rotary rotation.  A rotation mixes only the two dimensions of
    one pair, so the summed squares of a pair are the same before and after
    RoPE.  Keys and values of grouped heads (``n_kv_heads < n_heads``) are
    repeated to the ``H`` query heads.  Runs one forward pass (the model's
    caches are overwritten).  The "massive values" probe of Jin et al. (2025),
    Chapter 20.
    """
    if not isinstance(model, TinyTransformer):
        raise ValueError(f"model must be a TinyTransformer, got {type(model).__name__}")
    was_training = model.training
    model.eval()
    model(ids, mask=mask)                                        # validates ids; fills every attention cache
    model.train(was_training)
    out = []
    for block in model.blocks:
        attn = block.attn
        x = attn.cache[0]                                        # (B, n, d_model): the attention layer's input
        q = split_heads(attn._affine(x, "W_q", "b_q"), attn.n_heads)       # (B, H, n, d_head)
        k = split_heads(attn._affine(x, "W_k", "b_k"), attn.n_kv_heads)    # (B, H_kv, n, d_head)
        v = split_heads(attn._affine(x, "W_v", "b_v"), attn.n_kv_heads)
        k, v = np.repeat(k, attn.n_rep, axis=1), np.repeat(v, attn.n_rep, axis=1)   # (B, H, n, d_head)
        out.append(np.stack([np.sqrt(np.sum(z * z, axis=(0, 2))) for z in (q, k, v)]))  # (3, H, d_head)
    return np.stack(out)                                         # (n_layers, 3, H, d_head)
