r"""Multi-head attention with grouped (GQA) and multi-query (MQA) key/value heads.

Vaswani et al. (2017), *Attention Is All You Need* (MHA); Shazeer (2019), *Fast
Transformer Decoding: One Write-Head is All You Need* (MQA); Ainslie et al.
(2023), *GQA: Training Generalized Multi-Query Transformer Models from
Multi-Head Checkpoints* (GQA).

``H`` query heads, ``H_kv`` key/value heads (``H_kv`` divides ``H``), head width
``d_head = d_model // H``.  Query head ``h`` reads key/value head
``g(h) = floor(h / (H / H_kv))``:

.. math::
    Q = X W_Q + b_Q \;\to\; (B, H, n, d_{head}),\qquad
    K = C W_K + b_K,\; V = C W_V + b_V \;\to\; (B, H_{kv}, m, d_{head})

.. math::
    O_h = \operatorname{softmax}\!\Bigl(\frac{Q_h K_{g(h)}^\top}{\sqrt{d_{head}}} + \text{mask}\Bigr) V_{g(h)},\qquad
    Y = \operatorname{concat}_h(O_h)\, W_O + b_O

with ``C = X`` (self-attention) or ``C = context`` (cross-attention).  Weights:
``W_Q (d_model, H d_head)``, ``W_K, W_V (d_model, H_kv d_head)``,
``W_O (H d_head, d_model)``.  ``H_kv = H`` is MHA, ``H_kv = 1`` is MQA.
Optionally (``rope=True``) queries and keys are rotated per head by RoPE
(Su et al. 2021) at their absolute positions after the projection.

Backward (Chapter 11): ``dW_O = concat^T dY``, ``dconcat = dY W_O^T``;
split heads; SDPA backward per head; the repeated key/value heads are **summed
back** over each group, ``dK_g = sum_{h: g(h) = g} dK_h``; undo RoPE (rotate
by ``-p theta``); merge heads; the projections' backward.  For self-attention
``dX`` is the sum of the Q, K and V paths.
"""
from __future__ import annotations

import numpy as np

from ..nn.functional import causal_mask
from ..nn.module import Module, accepts_unbatched, default_rng, xavier_uniform
from ..nn.validate import as_float_array, check_head_mask, check_int_array, positive_int, shape_error
from .positional import rope as apply_rope, rope_backward
from .scaled_dot_product import scaled_dot_product_attention, scaled_dot_product_attention_backward

__all__ = [
    "split_heads", "split_heads_backward", "merge_heads", "merge_heads_backward",
    "repeat_kv", "repeat_kv_backward", "MultiHeadAttention",
]


# ---------------------------------------------------------------- head bookkeeping
def split_heads(x, n_heads: int) -> np.ndarray:
    """``(..., n, H*d) -> (..., H, n, d)``: reshape to ``(..., n, H, d)`` *then* swap axes.

    (Reshaping straight to ``(..., H, n, d)`` would scramble positions and heads.)
    """
    x = np.asarray(x)
    if x.ndim < 2 or x.shape[-1] % n_heads:
        raise shape_error("x", f"(..., n, H*d_head) with H={n_heads}", x)
    *lead, n, width = x.shape
    x = x.reshape(*lead, n, n_heads, width // n_heads)       # (..., n, H, d)
    return np.swapaxes(x, -2, -3)                            # (..., H, n, d)


def merge_heads(x) -> np.ndarray:
    """``(..., H, n, d) -> (..., n, H*d)``, the inverse of :func:`split_heads`."""
    x = np.asarray(x)
    if x.ndim < 3:
        raise shape_error("x", "(..., H, n, d_head)", x)
    *lead, h, n, d = x.shape
    x = np.swapaxes(x, -2, -3)                               # (..., n, H, d)
    return x.reshape(*lead, n, h * d)                        # (..., n, H*d)


def split_heads_backward(dy) -> np.ndarray:
    """Backward of :func:`split_heads` (a pure re-indexing): ``dy (..., H, n, d) -> (..., n, H*d)``."""
    return merge_heads(dy)


def merge_heads_backward(dy, n_heads: int) -> np.ndarray:
    """Backward of :func:`merge_heads`: ``dy (..., n, H*d) -> (..., H, n, d)`` with ``H = n_heads``."""
    return split_heads(dy, n_heads)


def repeat_kv(x, n_rep: int) -> np.ndarray:
    """``(..., H_kv, m, d) -> (..., H_kv*n_rep, m, d)``: head ``h`` gets group ``h // n_rep``."""
    n_rep = positive_int(n_rep, "n_rep")
    x = np.asarray(x)
    if x.ndim < 3:
        raise shape_error("x", "(..., H_kv, m, d_head)", x)
    return x if n_rep == 1 else np.repeat(x, n_rep, axis=-3)  # (..., H, m, d)


def repeat_kv_backward(dy, n_rep: int) -> np.ndarray:
    """Backward of :func:`repeat_kv`: sum the gradients of the ``n_rep`` heads of each group.

    ``dy (..., H_kv*n_rep, m, d) -> (..., H_kv, m, d)``.
    """
    n_rep = positive_int(n_rep, "n_rep")
    dy = np.asarray(dy)
    if dy.ndim < 3 or dy.shape[-3] % n_rep:
        raise shape_error("dy", f"(..., H_kv*{n_rep}, m, d_head)", dy)
    if n_rep == 1:
        return dy
    *lead, h, m, d = dy.shape
    return dy.reshape(*lead, h // n_rep, n_rep, m, d).sum(axis=-3)   # (..., H_kv, m, d)


# ---------------------------------------------------------------- module
class MultiHeadAttention(Module):
    """MHA / GQA / MQA in one class (see the module docstring for the equations).

    ``forward(x (B, n, d_model), context=None, mask=None, causal=False,
    positions=None, kv_positions=None) -> (B, n, d_model)``; an unbatched
    ``x (n, d_model)`` gives ``(n, d_model)``.

    * ``context (B, m, d_model)``: keys and values come from it (cross-attention);
      otherwise from ``x`` (``m = n``).  A ``context (1, m, d_model)`` is shared
      by the whole batch.
    * ``mask``: boolean, True = may attend, broadcastable to ``(B, n, m)`` (a head
      axis is inserted) or a 4-D mask broadcastable to ``(B, H, n, m)``.
    * ``causal=True`` also applies ``causal_mask(n, m)`` (cached-prefix offset).
    * ``positions (n,)`` / ``kv_positions (m,)``: absolute positions for RoPE
      (``rope=True`` in the constructor); default ``arange``.

    ``.weights (B, H, n, m)`` after forward.  ``backward(dout)`` returns ``dx``, or
    ``(dx, dcontext)`` when ``context`` was given.
    """

    def __init__(self, d_model: int, n_heads: int, n_kv_heads: int | None = None, bias: bool = True,
                 rope: bool = False, rope_base: float = 10000.0, rope_interleaved: bool = True, *,
                 rng=None) -> None:
        super().__init__()
        rng = default_rng(rng)
        self.d_model, self.n_heads = int(d_model), int(n_heads)
        self.n_kv_heads = self.n_heads if n_kv_heads is None else int(n_kv_heads)
        if self.n_heads < 1 or self.d_model % self.n_heads:
            raise ValueError(f"n_heads must be a positive divisor of d_model={self.d_model}, got {n_heads!r}")
        if self.n_kv_heads < 1 or self.n_heads % self.n_kv_heads:
            raise ValueError(f"n_kv_heads must be a positive divisor of n_heads={self.n_heads}, got {n_kv_heads!r}")
        self.d_head = self.d_model // self.n_heads
        if rope and self.d_head % 2:
            raise ValueError(f"rope needs an even head width, got d_head={self.d_head}")
        self.n_rep = self.n_heads // self.n_kv_heads             # query heads per key/value head
        self.bias, self.rope = bool(bias), bool(rope)
        self.rope_base, self.rope_interleaved = float(rope_base), bool(rope_interleaved)
        d_q, d_kv = self.n_heads * self.d_head, self.n_kv_heads * self.d_head
        self.add_param("W_q", xavier_uniform(rng, self.d_model, d_q))
        self.add_param("W_k", xavier_uniform(rng, self.d_model, d_kv))
        self.add_param("W_v", xavier_uniform(rng, self.d_model, d_kv))
        self.add_param("W_o", xavier_uniform(rng, d_q, self.d_model))
        if self.bias:
            for name, size in (("b_q", d_q), ("b_k", d_kv), ("b_v", d_kv), ("b_o", self.d_model)):
                self.add_param(name, np.zeros(size))
        self.weights = None

    # -- pieces shared with the KV-cache decoder (kv_cache.py) -------------
    def _affine(self, x, w, b):
        y = x @ self.params[w]                                   # (B, n, d_in) @ (d_in, d_out) -> (B, n, d_out)
        return y + self.params[b] if self.bias else y

    def _check_input(self, x, name):
        x = as_float_array(x, name)
        if x.ndim != 3 or x.shape[-1] != self.d_model:
            raise shape_error(name, f"(B, {'m' if name == 'context' else 'n'}, d_model={self.d_model})", x)
        if x.shape[1] == 0:
            raise ValueError(f"{name} must hold at least one token, got shape {x.shape}")
        return x

    def _positions(self, positions, length, name):
        if positions is None:
            return np.arange(length)                             # (length,)
        positions = check_int_array(positions, name, expected=f"({length},)")
        if positions.shape != (length,):
            raise shape_error(name, f"({length},)", positions)
        return positions

    def project_queries(self, x, positions=None) -> np.ndarray:
        """``x (B, n, d_model) -> q (B, H, n, d_head)``, RoPE-rotated at ``positions`` if enabled."""
        q = split_heads(self._affine(x, "W_q", "b_q"), self.n_heads)     # (B, H, n, d_head)
        if self.rope:
            q = apply_rope(q, positions, self.rope_base, self.rope_interleaved)
        return q

    def project_keys_values(self, source, positions=None):
        """``source (B, m, d_model) -> (k, v)`` each ``(B, H_kv, m, d_head)``; keys RoPE-rotated if enabled."""
        k = split_heads(self._affine(source, "W_k", "b_k"), self.n_kv_heads)   # (B, H_kv, m, d_head)
        v = split_heads(self._affine(source, "W_v", "b_v"), self.n_kv_heads)   # (B, H_kv, m, d_head)
        if self.rope:
            k = apply_rope(k, positions, self.rope_base, self.rope_interleaved)
        return k, v

    def attend(self, q, k, v, mask=None):
        """Heads ``q (B, H, n, d)``, ``k, v (B, H_kv, m, d)`` -> ``(y (B, n, d_model), concat, weights)``."""
        k_rep, v_rep = repeat_kv(k, self.n_rep), repeat_kv(v, self.n_rep)   # (B, H, m, d_head)
        heads, weights = scaled_dot_product_attention(q, k_rep, v_rep, mask=mask)   # (B, H, n, d_head), (B, H, n, m)
        concat = merge_heads(heads)                               # (B, n, H*d_head)
        return self._affine(concat, "W_o", "b_o"), concat, weights   # (B, n, d_model)

    def head_mask(self, mask, batch, n, m, causal=False):
        """Normalise ``mask`` to something broadcastable to ``(B, H, n, m)`` (or None).

        ``mask``: boolean, True = may attend, ``(n, m)``, ``(B, n, m)`` (a head
        axis is inserted: ``(B, 1, n|1, m)``) or per head ``(B, H, n, m)``;
        ``causal=True`` ANDs it with ``causal_mask(n, m)``.
        """
        mask = check_head_mask(mask, batch, self.n_heads, n, m)   # (B, 1, n|1, m) for a 3-axis mask
        if causal:
            cm = causal_mask(n, m)                                # (n, m)
            mask = cm if mask is None else np.logical_and(mask, cm)
        return mask

    # -- forward / backward ---------------------------------------------
    @accepts_unbatched("x", "context")
    def forward(self, x, context=None, mask=None, causal: bool = False, positions=None, kv_positions=None):
        """``x (B, n, d_model)`` -> ``(B, n, d_model)``; keys and values from ``context (B, m, d_model)`` or ``x``.

        ``x (n, d_model)`` (with ``context (m, d_model)``) works too and gives
        ``(n, d_model)`` and ``.weights (H, n, m)``.  A ``context (1, m, d_model)``
        is shared by every example of the batch (its gradient is summed back).

        ``mask``: boolean, True = may attend, ``(n, m)``, ``(B, n, m)`` (e.g.
        ``padding_mask(lengths, m)``, ``(B, 1, m)``; the head axis is inserted)
        or per head ``(B, H, n, m)``.  ``causal=True`` ANDs it with
        ``causal_mask(n, m)``.  ``positions (n,)`` and ``kv_positions (m,)`` are
        the RoPE positions (``rope=True``), default ``arange``.
        ``.weights (B, H, n, m)``.  Caches the inputs, the projected heads
        ``q (B, H, n, d_head)``, ``k, v (B, H_kv, m, d_head)``, the concatenated
        heads and the weights.
        """
        x = self._check_input(x, "x")
        source = x if context is None else self._check_input(context, "context")
        if source.shape[0] not in (1, x.shape[0]):                # a batch-1 context is shared by every example
            raise shape_error("context", f"(B={x.shape[0]} or 1, m, d_model={self.d_model})", source)
        batch, n, m = x.shape[0], x.shape[1], source.shape[1]
        positions = self._positions(positions, n, "positions")
        kv_positions = self._positions(kv_positions, m, "kv_positions")
        q = self.project_queries(x, positions)                   # (B, H, n, d_head)
        k, v = self.project_keys_values(source, kv_positions)    # (B, H_kv, m, d_head) each
        mask = self.head_mask(mask, batch, n, m, causal)
        y, concat, weights = self.attend(q, k, v, mask)          # (B, n, d_model)
        self.weights = weights                                   # (B, H, n, m)
        self.cache = (x, source, context is not None, positions, kv_positions, q, k, v, concat, weights)
        return y

    def backward(self, dout):
        """``dout (B, n, d_model)`` -> ``dx (B, n, d_model)``, or ``(dx, dcontext (B, m, d_model))`` after a cross-attention forward.

        Each gradient has the shape of its input (``(n, d_model)`` after an
        unbatched forward, ``(1, m, d_model)`` for a shared context).

        For self-attention ``dx`` sums the Q, K and V paths; key/value
        gradients of grouped heads are summed over each group.  Adds the
        gradients of ``W_q, W_k, W_v, W_o`` (and the biases) into ``grads``.
        Chapter 11.
        """
        x, source, is_cross, positions, kv_positions, q, k, v, concat, weights = self.cache
        p, g = self.params, self.grads
        dout = as_float_array(dout, "dout")
        if dout.shape != x.shape:
            raise shape_error("dout", str(x.shape), dout)
        # output projection: Y = concat W_O + b_O
        g["W_o"] += concat.reshape(-1, concat.shape[-1]).T @ dout.reshape(-1, self.d_model)
        if self.bias:
            g["b_o"] += dout.reshape(-1, self.d_model).sum(axis=0)
        dheads = split_heads(dout @ p["W_o"].T, self.n_heads)   # (B, n, H*d) -> (B, H, n, d_head)
        # attention per head, then sum the repeated key/value heads back into their groups
        k_rep, v_rep = repeat_kv(k, self.n_rep), repeat_kv(v, self.n_rep)   # (B, H, m, d_head)
        dq, dk_rep, dv_rep = scaled_dot_product_attention_backward(dheads, q, k_rep, v_rep, weights)  # (B, H, n|m, d)
        dk = repeat_kv_backward(dk_rep, self.n_rep)              # (B, H_kv, m, d_head)
        dv = repeat_kv_backward(dv_rep, self.n_rep)              # (B, H_kv, m, d_head)
        if self.rope:
            dq = rope_backward(dq, positions, self.rope_base, self.rope_interleaved)
            dk = rope_backward(dk, kv_positions, self.rope_base, self.rope_interleaved)
        dq, dk, dv = merge_heads(dq), merge_heads(dk), merge_heads(dv)   # (B, n|m, H*d | H_kv*d)
        x2, s2 = x.reshape(-1, self.d_model), source.reshape(-1, self.d_model)   # (B*n, d_model), (B*m, d_model)
        for name, src2, d in (("q", x2, dq), ("k", s2, dk), ("v", s2, dv)):   # three projections, not data
            g["W_" + name] += src2.T @ d.reshape(-1, d.shape[-1])
            if self.bias:
                g["b_" + name] += d.reshape(-1, d.shape[-1]).sum(axis=0)
        dx = dq @ p["W_q"].T                                     # (B, n, d_model)
        dsource = dk @ p["W_k"].T + dv @ p["W_v"].T              # (B, m, d_model)
        return (dx, dsource) if is_cross else dx + dsource

