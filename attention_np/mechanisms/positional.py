r"""Positional information for attention: sinusoidal, rotary (RoPE), ALiBi, relative (Shaw).

Self-attention alone is permutation-equivariant: it cannot tell positions apart.
This module gathers four ways of telling it where each token sits.

* **Sinusoidal encoding** — Vaswani et al. (2017), *Attention Is All You Need*.
  For position ``p`` and pair ``i = 0 .. d/2 - 1``, with ``w_i = 10000^(-2i/d)``:

  .. math::
      PE(p, 2i) = \sin(p\,w_i),\qquad PE(p, 2i+1) = \cos(p\,w_i)

  ``PE (n, d)`` is added to the token embeddings.  Each (sin, cos) pair shares one
  frequency, so ``PE(p + k) = R(k) PE(p)`` with ``R(k)`` block-diagonal 2x2
  rotations by ``k w_i`` and ``||PE(p)||^2 = d/2``.  No parameters.

* **Rotary position embedding (RoPE)** — Su, Lu, Pan, Murtadha, Wen, Liu (2021),
  *RoFormer: Enhanced Transformer with Rotary Position Embedding*.  Pair ``i`` of a
  query/key vector at position ``p`` is rotated by ``p theta_i``,
  ``theta_i = base^(-2i/d)``:

  .. math::
      \begin{pmatrix} y_a \\ y_b \end{pmatrix} =
      \begin{pmatrix} \cos p\theta_i & -\sin p\theta_i \\ \sin p\theta_i & \cos p\theta_i \end{pmatrix}
      \begin{pmatrix} x_a \\ x_b \end{pmatrix}

  so ``(R_p q)^T (R_r k) = q^T R_{r-p} k`` depends only on ``r - p``.  Pairs are
  ``(2i, 2i+1)`` ("interleaved", the RoFormer paper) or ``(i, i + d/2)``
  ("half-split", GPT-NeoX style).  Backward is the transpose: ``dx = R_p^T dy``.

* **ALiBi** — Press, Smith, Lewis (2022), *Train Short, Test Long: Attention with
  Linear Biases Enables Input Length Extrapolation*.  No embeddings; a fixed bias
  ``-m_h (i - j)`` is added to the scores of head ``h``, slopes ``m_h = 2^(-8h/H)``
  for ``H`` a power of two (other ``H``: the released code's rule, see :func:`alibi_slopes`).

* **Relative position representations** — Shaw, Uszkoreit, Vaswani (2018),
  *Self-Attention with Relative Position Representations*.  Two learned tables
  ``w_K, w_V (2k+1, d_k)`` indexed by ``r(i, j) = clip(j - i, -k, k)``:

  .. math::
      e_{ij} = \frac{q_i \cdot (k_j + w^K_{r(i,j)})}{\sqrt{d_k}},\qquad
      z_i = \sum_j \alpha_{ij} (v_j + w^V_{r(i,j)})

  Backward: the gathers ``w[r(i, j)]`` become scatter-adds into the tables.
"""
from __future__ import annotations

import math

import numpy as np

from ..nn.functional import softmax, softmax_backward
from ..nn.module import Module, accepts_unbatched, default_rng, xavier_uniform
from ..nn.validate import as_float_array, check_int_array, check_mask, shape_error, positive_float, positive_int

__all__ = [
    "sinusoidal_encoding", "rope_angles", "rope", "rope_backward", "alibi_slopes", "alibi_bias",
    "relative_positions", "relative_attention", "relative_attention_backward", "RelativeSelfAttention",
]


_positive_int = positive_int


# ---------------------------------------------------------------- sinusoidal
def sinusoidal_encoding(n: int, d: int, base: float = 10000.0) -> np.ndarray:
    """Sinusoidal positional encoding ``PE (n, d)`` for positions ``0 .. n-1``.

    Even columns ``2i`` hold ``sin(p w_i)``, odd columns ``2i+1`` hold ``cos(p w_i)``
    with the *same* ``w_i = base^(-2i/d)`` (for odd ``d`` the last cosine is dropped).
    """
    n, d = _positive_int(n, "n"), _positive_int(d, "d")
    half = (d + 1) // 2
    omega = base ** (-2.0 * np.arange(half) / d)                # (ceil(d/2),)
    angles = np.arange(n)[:, None] * omega[None, :]             # (n, ceil(d/2))
    pe = np.empty((n, d))
    pe[:, 0::2] = np.sin(angles)                                 # (n, ceil(d/2))
    pe[:, 1::2] = np.cos(angles[:, : d // 2])                    # (n, floor(d/2))
    return pe


# ---------------------------------------------------------------- RoPE
def rope_angles(positions, d: int, base: float = 10000.0) -> np.ndarray:
    """Angles ``p * theta_i``, ``theta_i = base^(-2i/d)``.

    ``positions (..., n)`` (integers, e.g. ``(n,)``) -> angles ``(..., n, d/2)``
    (``positions.shape + (d // 2,)``), float64.
    """
    base, d = positive_float(base, "base"), positive_int(d, "d")
    theta = base ** (-2.0 * np.arange(d // 2) / d)              # (d/2,)
    return np.asarray(positions, dtype=np.float64)[..., None] * theta   # (..., n, d/2)


def _rope_setup(x, name, positions, base):
    base = positive_float(base, "base")
    x = as_float_array(x, name)
    if x.ndim < 2 or x.shape[-1] % 2:
        raise shape_error(name, "(..., n, d) with an even head width d", x)
    n, d = x.shape[-2], x.shape[-1]
    if positions is None:
        positions = np.arange(n)                                 # (n,)
    else:
        positions = check_int_array(positions, "positions", expected=f"broadcastable to {x.shape[:-1]}")
        if positions.ndim == 0:
            raise shape_error("positions", f"(n={n},) or broadcastable to {x.shape[:-1]}", positions)
        try:
            ok = np.broadcast_shapes(positions.shape, x.shape[:-1]) == x.shape[:-1]
        except ValueError:
            ok = False
        if not ok:
            raise shape_error("positions", f"(n={n},) or broadcastable to {x.shape[:-1]}", positions)
    angles = rope_angles(positions, d, base)                     # (..., n, d/2)
    # cos/sin in the input's dtype so that float32 stays float32
    return x, np.cos(angles).astype(x.dtype), np.sin(angles).astype(x.dtype)


def _rotate(x, cos, sin, interleaved):
    """Rotate each pair of the last axis of ``x`` by the angle whose cos/sin are given."""
    d = x.shape[-1]
    if interleaved:
        a, b = x[..., 0::2], x[..., 1::2]                        # (..., n, d/2) each
    else:
        a, b = x[..., : d // 2], x[..., d // 2:]                 # (..., n, d/2) each
    ya = a * cos - b * sin                                       # (..., n, d/2)
    yb = a * sin + b * cos                                       # (..., n, d/2)
    y = np.empty(np.broadcast_shapes(x.shape, ya.shape[:-1] + (d,)), dtype=x.dtype)
    if interleaved:
        y[..., 0::2], y[..., 1::2] = ya, yb                      # (..., n, d)
    else:
        y[..., : d // 2], y[..., d // 2:] = ya, yb               # (..., n, d)
    return y


def rope(x, positions=None, base: float = 10000.0, interleaved: bool = True) -> np.ndarray:
    """Rotary position embedding of ``x (..., n, d)``; returns the same shape.

    ``positions``: integer array broadcastable to ``x.shape[:-1]`` (typically
    ``(n,)``), default ``arange(n)``.  Cached decoding passes the *absolute*
    positions of the new tokens (e.g. ``[t]``).  ``interleaved=True`` pairs
    ``(2i, 2i+1)``; ``False`` pairs ``(i, i + d/2)``.
    """
    x, cos, sin = _rope_setup(x, "x", positions, base)
    return _rotate(x, cos, sin, interleaved)


def rope_backward(dy, positions=None, base: float = 10000.0, interleaved: bool = True) -> np.ndarray:
    """Backward of :func:`rope`: ``dx = R_p^T dy``, i.e. rotate by ``-p theta_i``.

    ``dy (..., n, d)`` (``d`` even) is the gradient of the rotated array;
    ``positions``, ``base`` and ``interleaved`` must be those of the forward.
    Returns ``dx (..., n, d)``.  The rotation is orthogonal, so this is rope
    with the angles negated.  Chapter 9.
    """
    dy, cos, sin = _rope_setup(dy, "dy", positions, base)
    return _rotate(dy, cos, -sin, interleaved)


# ---------------------------------------------------------------- ALiBi
def alibi_slopes(n_heads: int) -> np.ndarray:
    """ALiBi's fixed head slopes, shape ``(H,)``, by the rule of Press et al.'s released code.

    For ``H`` a power of two the slopes are the geometric sequence
    ``m_h = 2^(-8h/H)``, ``h = 1..H`` (8 heads: 1/2, 1/4, ..., 1/256), as the paper
    states.  For other ``H`` the authors' code (and the models trained with it)
    takes the ``P`` slopes of the largest power of two ``P < H`` and then fills
    the remaining ``H - P`` heads with every other slope of ``2P`` heads (the
    1st, 3rd, 5th, ...): ``H = 6`` gives 1/4, 1/16, 1/64, 1/256, then 1/2, 1/8;
    ``H = 12`` starts 1/2, 1/4, 1/8.  Using ``2^(-8h/H)`` for every ``H`` would
    give other biases than such a model was trained with.
    """
    n_heads = _positive_int(n_heads, "n_heads")
    power = 1 << (n_heads.bit_length() - 1)                        # largest power of two <= H
    base = 2.0 ** (-8.0 * np.arange(1, power + 1) / power)        # (P,) the power-of-two sequence
    if power == n_heads:
        return base
    extra = 2.0 ** (-8.0 * np.arange(1, 2 * power + 1, 2) / (2 * power))   # odd-numbered slopes of 2P heads
    return np.concatenate([base, extra[: n_heads - power]])       # (H,)


def alibi_bias(n_heads: int, n: int, m: int | None = None) -> np.ndarray:
    """Additive ALiBi score bias of shape ``(H, n, m)``: ``-m_h * |i + (m - n) - j|``.

    As in :func:`~attention_np.nn.functional.causal_mask`, the ``n`` queries are
    the last ``n`` of ``m`` positions (a cached prefix), so query ``i`` sits at
    ``i + (m - n)``.  For ``j <= i`` this is the paper's ``-m_h (i - j)``; the
    distance is taken symmetric for future keys, which a causal model masks anyway
    (combine with ``causal_mask(n, m)``).  Add it to the scores of shape
    ``(B, H, n, m)`` before the softmax; it has no parameters and no gradient.
    """
    n = _positive_int(n, "n")
    m = n if m is None else _positive_int(m, "m")
    if m < n:
        raise ValueError(f"m must be an integer >= n={n} (keys include every query), got {m!r}")
    i = np.arange(n)[:, None] + (m - n)                          # (n, 1) absolute query positions
    j = np.arange(m)[None, :]                                    # (1, m)
    distance = np.abs(i - j).astype(np.float64)                  # (n, m)
    return -alibi_slopes(n_heads)[:, None, None] * distance      # (H, n, m)


# ---------------------------------------------------------------- relative (Shaw et al.)
def relative_positions(n: int, m: int, max_distance: int) -> np.ndarray:
    """Table index ``clip(j - i_abs, -k, k) + k`` of shape ``(n, m)`` (``k = max_distance``), in ``[0, 2k]``.

    ``n`` queries, ``m`` keys (``m >= n``).

    Query ``i`` sits at absolute position ``i_abs = i + (m - n)`` (cached-prefix offset).
    """
    i = np.arange(n)[:, None] + (m - n)                          # (n, 1)
    j = np.arange(m)[None, :]                                    # (1, m)
    return np.clip(j - i, -max_distance, max_distance) + max_distance   # (n, m) in [0, 2k]


def _relative_onehot(n, m, n_rel):
    """Boolean ``E (n, m, 2k+1)``, ``E[i, j, r] = (r(i, j) == r)``: gather = contract, scatter = contract back."""
    k = (n_rel - 1) // 2
    idx = relative_positions(n, m, k)                            # (n, m)
    return (idx[..., None] == np.arange(n_rel)).astype(np.float64)   # (n, m, 2k+1)


def _check_tables(q, k, v, table_k, table_v):
    table_k, table_v = as_float_array(table_k, "table_k"), as_float_array(table_v, "table_v")
    d_k, d_v = q.shape[-1], v.shape[-1]
    if table_k.ndim != 2 or table_k.shape[0] % 2 == 0 or table_k.shape[1] != d_k:
        raise shape_error("table_k", f"(2*max_distance+1, d_k={d_k})", table_k)
    if table_v.shape != (table_k.shape[0], d_v):
        raise shape_error("table_v", f"({table_k.shape[0]}, d_v={d_v})", table_v)
    return table_k, table_v


def _check_qkv(q, k, v):
    q, k, v = as_float_array(q, "q"), as_float_array(k, "k"), as_float_array(v, "v")
    if q.ndim < 2:
        raise shape_error("q", "(..., n, d_k)", q)
    if k.shape[:-2] != q.shape[:-2] or k.ndim != q.ndim or k.shape[-1] != q.shape[-1]:
        raise shape_error("k", f"({', '.join(map(str, q.shape[:-2] + ('m',)))}, d_k={q.shape[-1]})", k)
    if v.ndim != k.ndim or v.shape[:-1] != k.shape[:-1]:
        raise shape_error("v", str(k.shape[:-1] + ("d_v",)), v)
    return q, k, v


def relative_attention(q, k, v, table_k, table_v, mask=None):
    """Shaw et al. relative attention; returns ``(out (..., n, d_v), weights (..., n, m))``.

    ``q (..., n, d_k)``, ``k (..., m, d_k)``, ``v (..., m, d_v)``,
    ``table_k (2k+1, d_k)``, ``table_v (2k+1, d_v)``; ``mask`` boolean,
    broadcastable to ``(..., n, m)``, True = may attend.
    """
    q, k, v = _check_qkv(q, k, v)
    table_k, table_v = _check_tables(q, k, v, table_k, table_v)
    n, m, d_k = q.shape[-2], k.shape[-2], q.shape[-1]
    scale = 1.0 / math.sqrt(d_k)
    onehot = _relative_onehot(n, m, table_k.shape[0]).astype(q.dtype)   # (n, m, R)
    q_rel = q @ table_k.T                                        # (..., n, d_k) @ (d_k, R) -> (..., n, R)
    scores = q @ np.swapaxes(k, -1, -2)                          # (..., n, m)
    scores = (scores + np.einsum("...ir,ijr->...ij", q_rel, onehot)) * scale   # gather q.w^K_{r(i,j)}
    if mask is not None:
        check_mask(mask, q.shape[:-2] + (n, m))
    weights = softmax(scores, axis=-1, mask=mask)                # (..., n, m)
    bucket = np.einsum("...ij,ijr->...ir", weights, onehot)      # (..., n, R): weight mass per distance
    out = weights @ v + bucket @ table_v                         # (..., n, d_v)
    return out, weights


def relative_attention_backward(dout, q, k, v, table_k, table_v, weights):
    """Return ``(dq, dk, dv, dtable_k, dtable_v)`` for :func:`relative_attention`.

    ``dout (..., n, d_v)``; ``q (..., n, d_k)``, ``k (..., m, d_k)``,
    ``v (..., m, d_v)``, ``table_k (2k+1, d_k)``, ``table_v (2k+1, d_v)`` and the
    forward's ``weights (..., n, m)``.  Each gradient has its argument's shape.

    Gathers become scatter-adds: ``dtable_k[r] = sum_{r(i,j)=r} dS_ij q_i / sqrt(d_k)``
    and ``dtable_v[r] = sum_{r(i,j)=r} alpha_ij dz_i`` (summed over leading axes too).
    """
    q, k, v = _check_qkv(q, k, v)
    table_k, table_v = _check_tables(q, k, v, table_k, table_v)
    n, m, d_k, d_v = q.shape[-2], k.shape[-2], q.shape[-1], v.shape[-1]
    dout = as_float_array(dout, "dout")
    if dout.shape != q.shape[:-1] + (d_v,):
        raise shape_error("dout", str(q.shape[:-1] + (d_v,)), dout)
    scale = 1.0 / math.sqrt(d_k)
    onehot = _relative_onehot(n, m, table_k.shape[0]).astype(q.dtype)   # (n, m, R)
    bucket = np.einsum("...ij,ijr->...ir", weights, onehot)      # (..., n, R)
    # out = P V + bucket table_v
    dv = np.swapaxes(weights, -1, -2) @ dout                     # (..., m, n) @ (..., n, d_v) -> (..., m, d_v)
    n_rel = table_k.shape[0]
    dtable_v = bucket.reshape(-1, n_rel).T @ dout.reshape(-1, d_v)   # (R, d_v) scatter-add over (i, j) and batch
    dbucket = dout @ table_v.T                                   # (..., n, R)
    dweights = dout @ np.swapaxes(v, -1, -2)                     # (..., n, m)
    dweights = dweights + np.einsum("...ir,ijr->...ij", dbucket, onehot)   # gather back the bucket grads
    dscores = softmax_backward(dweights, weights) * scale        # (..., n, m), includes 1/sqrt(d_k)
    dq_rel = np.einsum("...ij,ijr->...ir", dscores, onehot)      # (..., n, R) scatter by distance
    dq = dscores @ k + dq_rel @ table_k                          # (..., n, d_k)
    dk = np.swapaxes(dscores, -1, -2) @ q                        # (..., m, d_k)
    dtable_k = dq_rel.reshape(-1, n_rel).T @ q.reshape(-1, d_k)  # (R, d_k)
    return dq, dk, dv, dtable_k, dtable_v


class RelativeSelfAttention(Module):
    """Single-head self-attention with Shaw et al. relative key and value tables.

    Parameters ``W_q, W_k, W_v (d_model, d_k)``, ``w_K, w_V (2*max_distance+1, d_k)``.
    ``forward(x (B, n, d_model), mask=None) -> (B, n, d_k)`` (``x (n, d_model)`` -> ``(n, d_k)``);
    ``.weights (B, n, n)``;
    ``backward(dout) -> dx``.
    """

    def __init__(self, d_model: int, d_k: int, max_distance: int, *, rng=None) -> None:
        super().__init__()
        rng = default_rng(rng)
        self.d_model, self.d_k = _positive_int(d_model, "d_model"), _positive_int(d_k, "d_k")
        if isinstance(max_distance, bool) or int(max_distance) != max_distance or max_distance < 0:
            raise ValueError(f"max_distance must be a non-negative integer, got {max_distance!r}")
        self.max_distance = int(max_distance)
        n_rel = 2 * self.max_distance + 1
        for name in ("W_q", "W_k", "W_v"):
            self.add_param(name, xavier_uniform(rng, self.d_model, self.d_k))
        self.add_param("w_K", rng.normal(0.0, 1.0 / math.sqrt(self.d_k), size=(n_rel, self.d_k)))
        self.add_param("w_V", rng.normal(0.0, 1.0 / math.sqrt(self.d_k), size=(n_rel, self.d_k)))
        self.weights = None

    @accepts_unbatched("x")
    def forward(self, x, mask=None) -> np.ndarray:
        """``x (B, n, d_model)`` (or ``(n, d_model)``) -> ``(B, n, d_k)``, with relative key/value terms added.

        ``mask``: boolean, True = may attend, ``(n, n)``, ``(n,)`` or
        ``(B, n, n)`` (e.g. ``causal_mask(n)`` or ``padding_mask(lengths, n)``).
        ``.weights (B, n, n)``.  Caches ``x``, the projections and the weights.
        """
        x = as_float_array(x, "x")
        if x.ndim != 3 or x.shape[-1] != self.d_model:
            raise shape_error("x", f"(B, n, d_model={self.d_model})", x)
        p = self.params
        q, k, v = x @ p["W_q"], x @ p["W_k"], x @ p["W_v"]       # (B, n, d_k) each
        out, weights = relative_attention(q, k, v, p["w_K"], p["w_V"], mask=mask)   # (B, n, d_k)
        self.cache = (x, q, k, v, weights)
        self.weights = weights                                   # (B, n, n)
        return out

    def backward(self, dout) -> np.ndarray:
        """``dout (B, n, d_k)`` -> ``dx (B, n, d_model)``, the sum of the Q, K and V paths.

        Adds ``dW_q, dW_k, dW_v (d_model, d_k)`` and the scatter-added table
        gradients ``dw_K, dw_V (2*max_distance+1, d_k)`` into ``grads``.
        """
        x, q, k, v, weights = self.cache
        p = self.params
        dq, dk, dv, dtk, dtv = relative_attention_backward(dout, q, k, v, p["w_K"], p["w_V"], weights)
        self.grads["w_K"] += dtk
        self.grads["w_V"] += dtv
        x2 = x.reshape(-1, self.d_model)                         # (B*n, d_model)
        dx = 0.0
        for name, d in (("W_q", dq), ("W_k", dk), ("W_v", dv)):  # three projections, not a data loop
            self.grads[name] += x2.T @ d.reshape(-1, self.d_k)   # (d_model, d_k)
            dx = dx + d @ p[name].T                              # (B, n, d_model): the three paths add
        return dx
