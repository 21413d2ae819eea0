r"""Multi-head latent attention (MLA) with decoupled RoPE and weight absorption.

Paper: DeepSeek-AI (2024), *DeepSeek-V2: A Strong, Economical, and Efficient
Mixture-of-Experts Language Model*, arXiv:2405.04434.  Chapter 13 (RoPE: Chapter 9).

Rows are tokens: ``x (B, n, d_model)``; ``H`` heads of width ``d_h``; latent
widths ``d_c`` (keys/values) and ``d_c'`` (queries); RoPE width ``d_R``.

.. math::
    c^{KV} = x W^{DKV}\ (B,n,d_c),\quad k^C = c^{KV} W^{UK},\quad v^C = c^{KV} W^{UV}\ (B,H,n,d_h)\\
    c^{Q} = x W^{DQ}\ (B,n,d_c'),\quad q^C = c^{Q} W^{UQ}\ (B,H,n,d_h),\quad
    q^R = \operatorname{RoPE}(c^{Q} W^{QR})\ (B,H,n,d_R)\\
    k^R = \operatorname{RoPE}(x W^{KR})\ (B,n,d_R)\quad\text{— one vector per token, shared by all heads}\\
    q_{t,i} = [q^C_{t,i}; q^R_{t,i}],\quad k_{j,i} = [k^C_{j,i}; k^R_j],\quad
    o_{t,i} = \sum_{j\le t} \operatorname{softmax}_j\Bigl(\frac{q_{t,i}^\top k_{j,i}}{\sqrt{d_h + d_R}}\Bigr) v^C_{j,i},\quad
    u = [o_1;\dots;o_H] W^O

(The reference code also RMS-normalises ``c^Q`` and ``c^{KV}``; we leave that
out to keep the mechanism visible.)  Weights are stored ``(d_in, d_out)``.

**Weight absorption.** ``q^C_i . k^C_{j,i} = (W^{UK}_i q^C_i) . c^{KV}_j``, so
each head gets a query in latent space ``q~_i = W^{UK}_i q^C_i (d_c)`` and
scores against the cached latents directly; the output
``sum_j p_j v^C_{j,i} = (sum_j p_j c^{KV}_j) W^{UV}_i``.  In the row layout used
here the content score is ``c^Q_t (W^{UQ}_i W^{UK\top}_i) c^{KV\top}_j`` (one
``(d_c', d_c)`` matrix per head) and ``W^{UV}_i W^O_i`` is one ``(d_c, d_model)``
matrix: ``W^{UV}`` folds into ``W^O``.  Like DeepSeek's inference code we reorder
the products instead of pre-multiplying.  Decoding then caches
only ``(c^{KV}, k^R)``: ``d_c + d_R`` numbers per token and layer (576 for
DeepSeek-V2's 512 + 64, versus ``2 H d_h = 32,768`` for MHA with 128 heads of
128).  RoPE cannot be absorbed (the rotation depends on the position and sits
between ``W^{UQ}`` and ``W^{UK}``), hence the separate small ``k^R`` path.

**Backward** (naive form): SDPA backward gives ``dq, dk, dv``; split
``dq -> (dq^C, dq^R)``, ``dk -> (dk^C, dk^R)``; the shared key gets
``dk^R_j = sum_i dk^R_{j,i}``; RoPE's backward is the inverse rotation; then
``dW^{UK} = c^{KV\top} dk^C``, ``dW^{UV} = c^{KV\top} dv^C``,
``dc^{KV} = dk^C W^{UK\top} + dv^C W^{UV\top}``, ``dc^Q = dq^C W^{UQ\top} + dq^R_{pre} W^{QR\top}``,
``dx = dc^{KV} W^{DKV\top} + dc^Q W^{DQ\top} + dk^R_{pre} W^{KR\top}``.
"""
from __future__ import annotations

import math

import numpy as np

from ..nn.functional import causal_mask, softmax
from ..nn.module import Module, accepts_unbatched, default_rng, xavier_uniform
from ..nn.validate import as_float_array, check_head_mask, shape_error
from .kv_cache import TokenCache
from .positional import rope, rope_backward
from .scaled_dot_product import scaled_dot_product_attention, scaled_dot_product_attention_backward

__all__ = ["MultiHeadLatentAttention", "LatentCache"]


class MultiHeadLatentAttention(Module):
    """DeepSeek-V2 multi-head latent attention (self-attention; pass ``causal=True`` for a decoder).

    ``forward(x (B, n, d_model), mask=None, causal=False)`` -> ``(B, n, d_model)``,
    the naive (training) form (``x (n, d_model)`` gives ``(n, d_model)``);
    ``backward(dout)`` -> ``dx``.
    ``forward_absorbed`` computes the same output by scoring against the
    latents.  ``forward_incremental(x_new, cache)`` decodes with a
    :class:`LatentCache` (from ``init_cache()``) that holds only ``c_KV`` and ``k_R``.  ``.weights`` holds ``(B, H, n, m)``.
    """

    def __init__(self, d_model: int, n_heads: int, d_head: int, d_latent_kv: int, d_latent_q: int, d_rope: int,
                 rope_base: float = 10000.0, *, rng=None) -> None:
        super().__init__()
        rng = default_rng(rng)
        sizes = dict(d_model=d_model, n_heads=n_heads, d_head=d_head, d_latent_kv=d_latent_kv,
                     d_latent_q=d_latent_q, d_rope=d_rope)
        for name, value in sizes.items():
            if isinstance(value, bool) or int(value) != value or value < 1:
                raise ValueError(f"{name} must be a positive integer, got {value!r}")
        if d_rope % 2:
            raise ValueError(f"d_rope must be even (RoPE rotates pairs), got {d_rope}")
        self.d_model, self.n_heads, self.d_head = int(d_model), int(n_heads), int(d_head)
        self.d_latent_kv, self.d_latent_q, self.d_rope = int(d_latent_kv), int(d_latent_q), int(d_rope)
        self.rope_base = float(rope_base)
        H, d_h, d_R = self.n_heads, self.d_head, self.d_rope
        shapes = {
            "W_DKV": (self.d_model, self.d_latent_kv),   # down-projection to the cached latent
            "W_UK": (self.d_latent_kv, H * d_h),         # latent -> content keys
            "W_UV": (self.d_latent_kv, H * d_h),         # latent -> values
            "W_DQ": (self.d_model, self.d_latent_q),     # down-projection of queries
            "W_UQ": (self.d_latent_q, H * d_h),          # query latent -> content queries
            "W_QR": (self.d_latent_q, H * d_R),          # query latent -> RoPE queries (one per head)
            "W_KR": (self.d_model, d_R),                 # x -> the shared RoPE key (one per token)
            "W_o": (H * d_h, self.d_model),              # concatenated heads -> model width
        }
        for name, (d_in, d_out) in shapes.items():
            self.add_param(name, xavier_uniform(rng, d_in, d_out))
        self.weights = None

    # ------------------------------------------------------------- helpers
    def cache_elements_per_token(self) -> int:
        """Numbers cached per token and layer when decoding: ``d_c + d_R`` (576 in DeepSeek-V2).

        The cache rows are ``c_kv (d_c,)`` and ``k_r (d_R,)`` per token.
        """
        return self.d_latent_kv + self.d_rope

    def _split(self, y, width):
        """(B, n, H*width) -> (B, H, n, width)."""
        B, n = y.shape[:2]
        return y.reshape(B, n, self.n_heads, width).transpose(0, 2, 1, 3)

    @staticmethod
    def _merge(y):
        """(B, H, n, width) -> (B, n, H*width)."""
        B, H, n, width = y.shape
        return y.transpose(0, 2, 1, 3).reshape(B, n, H * width)

    def _check_x(self, x):
        x = as_float_array(x, "x")
        if x.ndim != 3 or x.shape[-1] != self.d_model:
            raise shape_error("x", f"(B, n, d_model={self.d_model})", x)
        if x.shape[1] == 0:
            raise ValueError(f"x must hold at least one token (n >= 1), got shape {x.shape}")
        return x

    def _mask(self, mask, causal, B, n, m):
        """Boolean mask for (B, H, n, m) scores: causal (with prefix) AND the user's mask."""
        full = causal_mask(n, m) if causal else None                     # (n, m)
        if mask is not None:
            mask = check_head_mask(mask, B, self.n_heads, n, m)          # (n, m), (B, 1, n|1, m) or (B, H, n, m)
            full = mask if full is None else (mask & full)
        return full

    def _project(self, x, positions):
        """Every projection of ``x``: latents, content and RoPE queries, the shared RoPE key."""
        P, d_h, d_R = self.params, self.d_head, self.d_rope
        c_kv = x @ P["W_DKV"]                                            # (B, n, d_c)
        c_q = x @ P["W_DQ"]                                              # (B, n, d_c')
        q_c = self._split(c_q @ P["W_UQ"], d_h)                          # (B, H, n, d_h)
        q_r = rope(self._split(c_q @ P["W_QR"], d_R), positions, self.rope_base)  # (B, H, n, d_R)
        k_r = rope(x @ P["W_KR"], positions, self.rope_base)             # (B, n, d_R), shared by all heads
        return c_kv, c_q, q_c, q_r, k_r

    # ------------------------------------------------------------- naive form (training)
    @accepts_unbatched("x")
    def forward(self, x, mask=None, causal: bool = False) -> np.ndarray:
        """Naive MLA: materialise per-head keys and values, then SDPA.

        ``x (B, n, d_model)`` -> ``(B, n, d_model)`` (``(n, d_model)`` -> ``(n, d_model)``).  ``mask``: boolean,
        True = may attend, ``(n, n)``, ``(B, n, n)`` (e.g.
        ``padding_mask(lengths, n)``, ``(B, 1, n)``; the head axis is inserted)
        or per head ``(B, H, n, n)``; ``causal=True`` ANDs it with
        ``causal_mask(n)``.  ``.weights (B, H, n, n)``.  Caches ``x``, the
        latents ``c_kv (B, n, d_c)``, ``c_q (B, n, d_c')``, the per-head
        ``q, k (B, H, n, d_h + d_R)``, ``v (B, H, n, d_h)``, the weights and the
        concatenated heads.
        """
        x = self._check_x(x)
        B, n, _ = x.shape
        P, H, d_h, d_R = self.params, self.n_heads, self.d_head, self.d_rope
        positions = np.arange(n)
        c_kv, c_q, q_c, q_r, k_r = self._project(x, positions)
        k_c = self._split(c_kv @ P["W_UK"], d_h)                         # (B, H, n, d_h)
        v_c = self._split(c_kv @ P["W_UV"], d_h)                         # (B, H, n, d_h)
        q = np.concatenate([q_c, q_r], axis=-1)                          # (B, H, n, d_h + d_R)
        k_r_heads = np.broadcast_to(k_r[:, None], (B, H, n, d_R))        # the same k^R for every head
        k = np.concatenate([k_c, k_r_heads], axis=-1)                    # (B, H, n, d_h + d_R)
        full_mask = self._mask(mask, causal, B, n, n)
        context, weights = scaled_dot_product_attention(q, k, v_c, mask=full_mask)  # (B, H, n, d_h), (B, H, n, n)
        concat = self._merge(context)                                    # (B, n, H*d_h)
        self.weights = weights
        self.cache = dict(x=x, positions=positions, c_kv=c_kv, c_q=c_q, q=q, k=k, v=v_c,
                          weights=weights, concat=concat)
        return concat @ P["W_o"]                                         # (B, n, d_model)

    def backward(self, dout) -> np.ndarray:
        """``dout (B, n, d_model)`` -> ``dx (B, n, d_model)`` (backward of the naive :meth:`forward`).

        The shared RoPE key's gradient is summed over the heads and un-rotated;
        ``dx`` sums the latent, query and RoPE-key paths.  Adds the gradients
        of all eight weight matrices into ``grads``.  Chapter 13.
        """
        c = self.cache
        P, G, d_h = self.params, self.grads, self.d_head
        x, c_kv, c_q, positions = c["x"], c["c_kv"], c["c_q"], c["positions"]
        dout = as_float_array(dout, "dout")
        if dout.shape != x.shape:
            raise shape_error("dout", str(x.shape), dout)
        flat = lambda a: a.reshape(-1, a.shape[-1])                       # (B*n, width)
        G["W_o"] += flat(c["concat"]).T @ flat(dout)                     # (H*d_h, d_model)
        dcontext = self._split(dout @ P["W_o"].T, d_h)                   # (B, H, n, d_h)
        dq, dk, dv = scaled_dot_product_attention_backward(dcontext, c["q"], c["k"], c["v"], c["weights"])
        dq_c, dq_r = dq[..., :d_h], dq[..., d_h:]                        # (B, H, n, d_h), (B, H, n, d_R)
        dk_c = dk[..., :d_h]                                             # (B, H, n, d_h)
        dk_r = dk[..., d_h:].sum(axis=1)                                 # shared key: sum over heads, (B, n, d_R)
        dq_r_pre = self._merge(rope_backward(dq_r, positions, self.rope_base))  # (B, n, H*d_R)
        dk_r_pre = rope_backward(dk_r, positions, self.rope_base)        # (B, n, d_R)
        dk_c, dv, dq_c = self._merge(dk_c), self._merge(dv), self._merge(dq_c)  # (B, n, H*d_h) each
        G["W_UK"] += flat(c_kv).T @ flat(dk_c)                           # (d_c, H*d_h)
        G["W_UV"] += flat(c_kv).T @ flat(dv)
        G["W_UQ"] += flat(c_q).T @ flat(dq_c)                            # (d_c', H*d_h)
        G["W_QR"] += flat(c_q).T @ flat(dq_r_pre)                        # (d_c', H*d_R)
        dc_kv = dk_c @ P["W_UK"].T + dv @ P["W_UV"].T                    # (B, n, d_c)
        dc_q = dq_c @ P["W_UQ"].T + dq_r_pre @ P["W_QR"].T               # (B, n, d_c')
        G["W_DKV"] += flat(x).T @ flat(dc_kv)                            # (d_model, d_c)
        G["W_DQ"] += flat(x).T @ flat(dc_q)                              # (d_model, d_c')
        G["W_KR"] += flat(x).T @ flat(dk_r_pre)                          # (d_model, d_R)
        return dc_kv @ P["W_DKV"].T + dc_q @ P["W_DQ"].T + dk_r_pre @ P["W_KR"].T   # (B, n, d_model)

    # ------------------------------------------------------------- absorbed form (inference)
    def _attend_latent(self, q_c, q_r, c_kv, k_r, mask):
        """Absorbed attention of queries ``(B, H, n, .)`` over cached ``c_kv (B, m, d_c)``, ``k_r (B, m, d_R)``."""
        P, H, d_h = self.params, self.n_heads, self.d_head
        W_UK = P["W_UK"].reshape(self.d_latent_kv, H, d_h)               # (d_c, H, d_h), per-head blocks
        W_UV = P["W_UV"].reshape(self.d_latent_kv, H, d_h)
        q_latent = np.einsum("bhnd,chd->bhnc", q_c, W_UK)                # q~ = W^UK_i q^C_i, (B, H, n, d_c)
        scale = 1.0 / math.sqrt(d_h + self.d_rope)
        scores = (q_latent @ np.swapaxes(c_kv, -1, -2)[:, None]          # (B, H, n, d_c) @ (B, 1, d_c, m)
                  + q_r @ np.swapaxes(k_r, -1, -2)[:, None]) * scale     # + (B, H, n, d_R) @ (B, 1, d_R, m)
        weights = softmax(scores, axis=-1, mask=mask)                    # (B, H, n, m)
        latent_context = weights @ c_kv[:, None]                         # (B, H, n, m) @ (B, 1, m, d_c) -> (B, H, n, d_c)
        context = np.einsum("bhnc,chd->bhnd", latent_context, W_UV)      # W^UV applied after the sum, (B, H, n, d_h)
        self.weights = weights
        return self._merge(context) @ P["W_o"]                           # (B, n, d_model)

    def forward_absorbed(self, x, mask=None, causal: bool = False) -> np.ndarray:
        """Same output as :meth:`forward`, computed by scoring queries against the latents.

        ``x (B, n, d_model)`` -> ``(B, n, d_model)``; ``mask`` and ``causal`` as in
        :meth:`forward`.  Inference only: sets ``.weights (B, H, n, n)`` but
        caches nothing and has no backward.
        """
        x = self._check_x(x)
        B, n, _ = x.shape
        c_kv, _, q_c, q_r, k_r = self._project(x, np.arange(n))
        return self._attend_latent(q_c, q_r, c_kv, k_r, self._mask(mask, causal, B, n, n))

    def init_cache(self, max_len: int | None = None) -> "LatentCache":
        """An empty decoding cache (a :class:`LatentCache`), filled by :meth:`forward_incremental`.

        It will hold ``c_kv (B, T, d_c)`` and ``k_r (B, T, d_R)``; with ``max_len``
        its buffers are allocated once and filled in place.
        """
        return LatentCache(max_len)

    def forward_incremental(self, x, cache: "LatentCache") -> np.ndarray:
        """Decode ``x (B, n_new, d_model)`` after the tokens in ``cache``; returns ``(B, n_new, d_model)``.

        ``cache`` (a :class:`LatentCache`, e.g. from :meth:`init_cache`) holds
        only ``c_kv (B, t, d_c)`` and ``k_r (B, t, d_R)`` (RoPE already applied
        at the absolute positions ``0 .. t-1``); the new tokens' latents are
        appended to it, in place, as :class:`MultiHeadAttention` appends to its
        :class:`KVCache`.  The new tokens sit at positions ``t .. t + n_new - 1``
        and attend causally.  Prefill is a call with an empty cache; each later
        call may add one or several tokens.  Sets ``.weights (B, H, n_new, t + n_new)``.
        """
        if not isinstance(cache, LatentCache):
            raise ValueError(f"cache must be a LatentCache (from init_cache()), got {type(cache).__name__}")
        x = self._check_x(x)
        n, t = x.shape[1], cache.length
        c_kv_new, _, q_c, q_r, k_r_new = self._project(x, t + np.arange(n))   # absolute positions
        c_kv, k_r = cache.append(c_kv_new, k_r_new)                      # (B, t + n, d_c), (B, t + n, d_R)
        return self._attend_latent(q_c, q_r, c_kv, k_r, causal_mask(n, t + n))


class LatentCache(TokenCache):
    """The MLA decoding cache of one layer: latents ``c_kv (B, T, d_c)`` and rotary keys ``k_r (B, T, d_R)``.

    The counterpart of :class:`~attention_np.mechanisms.kv_cache.KVCache` (same
    interface: ``append``, ``length``, ``reset``, ``nbytes``, optional
    ``max_len`` with in-place growth), holding ``d_c + d_R`` numbers per token
    instead of ``2 H d_h``.  ``c_kv``/``k_r`` are views of the filled part.
    """

    fields = (("c_kv", ("B", "s", "d_latent_kv")), ("k_r", ("B", "s", "d_rope")))

    @property
    def c_kv(self) -> np.ndarray | None:
        """The cached latents ``(B, T, d_c)``, a view of the filled part; None before the first append."""
        return self._filled(0)

    @property
    def k_r(self) -> np.ndarray | None:
        """The cached rotary keys ``(B, T, d_R)`` (already rotated), a view; None before the first append."""
        return self._filled(1)

    def append(self, c_kv, k_r):
        """Append ``c_kv (B, s, d_c)`` and ``k_r (B, s, d_R)``; return all cached ``(c_kv, k_r)``, ``T + s`` tokens each.

        ``B``, ``d_c``, ``d_R`` and the dtype must match what the cache already
        holds; with ``max_len`` the total may not exceed it.
        """
        return self._append(c_kv, k_r)
