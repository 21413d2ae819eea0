r"""Sparse attention: sparsemax weights and structured sparsity patterns.

Papers: Martins & Astudillo (2016, ICML), *From Softmax to Sparsemax: A Sparse
Model of Attention and Multi-Label Classification*; Child, Gray, Radford and
Sutskever (2019), *Generating Long Sequences with Sparse Transformers*;
Beltagy, Peters and Cohan (2020), *Longformer: The Long-Document Transformer*;
Zaheer et al. (2020, NeurIPS), *Big Bird: Transformers for Longer Sequences*.
Chapter 16.

Two different ideas live here and should not be confused:

* **sparsemax** changes the *normaliser*: the Euclidean projection of the
  scores ``z (..., K)`` onto the probability simplex,

  .. math::
      \operatorname{sparsemax}(z) = \max(z - \tau(z), 0),\quad
      k(z) = \max\{k : 1 + k z_{(k)} > \textstyle\sum_{r\le k} z_{(r)}\},\quad
      \tau = \frac{\sum_{r\le k(z)} z_{(r)} - 1}{k(z)}

  with ``z_(1) >= z_(2) >= ...`` sorted.  Many weights are *exactly* zero, but
  all ``n x m`` scores are still computed (plus a sort): no saving in cost.
  Backward, with support ``S = {j : p_j > 0}`` and indicator ``s``:

  .. math::
      dz = s \odot \Bigl(dp - \frac{\sum_{j\in S} dp_j}{|S|}\Bigr)

* **structured patterns** keep softmax but let query ``i`` see only a set
  ``A_i`` of keys, given here as boolean ``(n, n)`` masks (True = may attend):
  sliding window, strided and fixed (Child et al.), Longformer (window + global
  tokens), BigBird (window + global + random).  A real kernel gathers only the
  allowed blocks, which is where the ``O(n w)`` / ``O(n sqrt(n))`` cost comes
  from; the masks here are for teaching and for heatmaps.

``sparsemax_attention(q, k, v, mask)`` is scaled dot-product attention with
sparsemax in place of softmax: ``q (..., n, d_k)``, ``k (..., m, d_k)``,
``v (..., m, d_v)`` -> ``out (..., n, d_v)``, ``weights (..., n, m)``.

``sliding_window_attention(q, k, v, window)`` is the one pattern computed the
efficient way: it gathers each query's ``W`` keys (``W = 2 (window // 2) + 1``,
or ``window`` when causal) with ``sliding_window_view`` and never forms the
``n x n`` score matrix, so it costs ``O(n W d)`` time and ``O(n W)`` memory.
Its weights come back in *band* form ``(..., n, W)``: column ``w`` holds key
``i + offsets[w]`` (see :func:`band_offsets`); :func:`band_to_dense` scatters
them into ``(..., n, n)``.  Backward: the SDPA backward restricted to the band,

.. math::
    dV_j = \sum_w P_{j-o_w,\,w}\, dO_{j-o_w},\quad
    dS = P \odot (dP - \operatorname{rowsum}(dP \odot P)),\quad
    dQ_i = s \sum_w dS_{i,w} K_{i+o_w},\quad dK_j = s \sum_w dS_{j-o_w,\,w}\, Q_{j-o_w}

(a key ``j`` is reached by query ``j - o_w`` through band column ``w``).
"""
from __future__ import annotations


import math

import numpy as np

from numpy.lib.stride_tricks import sliding_window_view

from ..nn.functional import softmax, softmax_backward, unbroadcast
from ..nn.validate import as_float_array, check_mask, shape_error
from .scaled_dot_product import check_qkv, dot_product_attention, dot_product_attention_backward

__all__ = [
    "sparsemax", "sparsemax_backward", "sparsemax_threshold",
    "sliding_window_mask", "strided_mask", "fixed_mask", "longformer_mask", "bigbird_mask",
    "sparsemax_attention", "sparsemax_attention_backward",
    "band_offsets", "band_to_dense", "sliding_window_attention", "sliding_window_attention_backward",
]


# ---------------------------------------------------------------- sparsemax
def _shift_and_mask(z, mask):
    """Subtract the row maximum and push masked scores out of the support.

    Sparsemax is shift invariant, so subtracting the largest *allowed* score
    changes nothing but keeps huge logits finite.  Every weight is at most 1,
    so ``tau >= max(z) - 1``: a masked entry set to ``-2`` (after the shift)
    gets weight exactly 0 and does not move ``tau``; unlike ``-inf`` it keeps
    the cumsum finite.
    """
    if mask is None:
        return z - np.max(z, axis=-1, keepdims=True)
    allowed_max = np.max(np.where(mask, z, -np.inf), axis=-1, keepdims=True)   # (..., 1)
    allowed_max = np.where(np.isfinite(allowed_max), allowed_max, 0.0)           # fully masked rows
    return np.where(mask, z - allowed_max, -2.0)


def sparsemax_threshold(z, axis: int = -1) -> np.ndarray:
    """The threshold ``tau(z)`` (sort, cumsum, support size).

    ``z (..., K)`` (``K`` along ``axis``) -> ``tau (...)``, the shape of ``z``
    without ``axis``; ``sparsemax(z) = max(z - tau, 0)``.
    """
    z = np.moveaxis(as_float_array(z, "z"), axis, -1)                            # (..., K)
    if z.shape[-1] == 0:
        raise shape_error("z", "(..., K) with K >= 1 along axis", z)
    z_sorted = -np.sort(-z, axis=-1)                                             # (..., K) descending
    cumsum = np.cumsum(z_sorted, axis=-1)                                        # (..., K)
    ks = np.arange(1, z.shape[-1] + 1, dtype=z.dtype)                            # (K,)
    in_support = 1.0 + ks * z_sorted > cumsum                                    # (..., K), a prefix of Trues
    k_z = np.sum(in_support, axis=-1, keepdims=True)                             # (..., 1), >= 1
    tau = (np.take_along_axis(cumsum, k_z - 1, axis=-1) - 1.0) / k_z.astype(z.dtype)  # (..., 1)
    return tau[..., 0]


def sparsemax(z, axis: int = -1, mask=None) -> np.ndarray:
    """Sparsemax along ``axis``: ``max(z - tau, 0)``, sums to 1, often exact zeros.

    Martins & Astudillo (2016); Chapter 16.  ``z (..., K)`` (``K`` along
    ``axis``) -> weights ``(..., K)``, vectorised over every other axis.
    ``mask`` (boolean, True = keep; ``(n, K)``, ``(K,)`` or one axis per axis of
    ``z``) forces entries to exactly 0; a fully masked slice returns all zeros.
    """
    z = as_float_array(z, "z")
    if z.ndim == 0:
        raise shape_error("z", "(..., K)", z)
    if mask is not None:
        mask = check_mask(mask, z.shape)
        mask = np.moveaxis(np.broadcast_to(mask, z.shape), axis, -1)            # (..., K)
    zl = np.moveaxis(z, axis, -1)                                                # (..., K)
    zl = _shift_and_mask(zl, mask)                                               # max allowed score -> 0
    tau = sparsemax_threshold(zl, axis=-1)[..., None]                            # (..., 1)
    p = np.maximum(zl - tau, 0.0)                                                # (..., K)
    if mask is not None:
        p = np.where(mask, p, 0.0)                                               # fully masked rows -> 0
    return np.moveaxis(p, -1, axis)


def sparsemax_backward(dp, p, axis: int = -1) -> np.ndarray:
    """Backward of sparsemax: ``dz = s * (dp - sum_S(dp) / |S|)``, ``s = (p > 0)``.

    ``dp (..., K)`` upstream gradient and ``p (..., K)`` the forward's output,
    ``K`` along ``axis``; returns ``dz (..., K)``.  Entries outside the support
    (and all entries of a fully masked slice) receive zero gradient.
    """
    dp, p = as_float_array(dp, "dp"), as_float_array(p, "p")
    if dp.shape != p.shape:
        raise shape_error("dp", str(p.shape), dp)
    support = (p > 0).astype(p.dtype)                                            # s, (..., K)
    size = np.sum(support, axis=axis, keepdims=True)                             # |S|, (..., 1)
    mean_dp = np.sum(dp * support, axis=axis, keepdims=True) / np.maximum(size, 1.0)
    return support * (dp - mean_dp)


# ---------------------------------------------------------------- patterns
def _check_n(n, name="n"):
    if int(n) != n or n < 1:
        raise ValueError(f"{name} must be a positive integer, got {n!r}")
    n = int(n)
    return np.arange(n)[:, None], np.arange(n)[None, :]                          # i (n, 1), j (1, n)


def _check_positive(value, name):
    if int(value) != value or value < 1:
        raise ValueError(f"{name} must be a positive integer, got {value!r}")
    return int(value)


def sliding_window_mask(n: int, window: int, causal: bool = False) -> np.ndarray:
    """Sliding window of total width ``window`` (boolean ``(n, n)``).

    Non-causal (Longformer): ``|i - j| <= window // 2`` (``window // 2`` keys
    per side plus the query itself).  Causal: ``i - window < j <= i`` (the last
    ``window`` keys, the query included).
    """
    i, j = _check_n(n)
    window = _check_positive(window, "window")
    if causal:
        return (j <= i) & (j > i - window)                                       # (n, n)
    return np.abs(i - j) <= window // 2                                          # (n, n)


def strided_mask(n: int, stride: int) -> np.ndarray:
    """Child et al.'s causal strided pattern with stride ``l``, boolean ``(n, n)``.

    ``A_i = {j <= i : i - l <= j} U {j <= i : (i - j) mod l = 0}``: the previous
    ``l`` positions (the "row" head) and every ``l``-th earlier position (the
    "column" head).  ``n = 16, l = 4`` gives 82 allowed entries.
    """
    i, j = _check_n(n)
    stride = _check_positive(stride, "stride")
    causal = j <= i
    return causal & ((j >= i - stride) | ((i - j) % stride == 0))                # (n, n)


def fixed_mask(n: int, block: int, c: int) -> np.ndarray:
    """Child et al.'s causal fixed pattern with block length ``l`` and ``c`` summary keys, boolean ``(n, n)``.

    ``A_i = {j <= i : floor(j / l) = floor(i / l)} U {j <= i : j mod l >= l - c}``:
    the query's own block and the last ``c`` positions of every block, which
    summarise it for all later queries.  ``n = 16, l = 4, c = 1`` gives 64.
    """
    i, j = _check_n(n)
    block = _check_positive(block, "block")
    c = _check_positive(c, "c")
    if c > block:
        raise ValueError(f"c must be at most block={block}, got {c}")
    causal = j <= i
    return causal & ((j // block == i // block) | (j % block >= block - c))       # (n, n)


def _global_index(global_tokens, n):
    idx = np.asarray(global_tokens if global_tokens is not None else [], dtype=np.int64).reshape(-1)
    if idx.size and (idx.min() < 0 or idx.max() >= n):
        raise ValueError(f"global_tokens must be positions in [0, {n}), got {idx.tolist()}")
    return idx


def longformer_mask(n: int, window: int, global_tokens) -> np.ndarray:
    """Longformer: a symmetric sliding window plus global tokens (boolean ``(n, n)``).

    ``global_tokens``: positions ``(g,)`` in ``[0, n)`` (or None).

    A global token attends to every position *and* every position attends to
    it (both directions).  ``n = 8``, window ``+-1`` (``window=2``) and one
    global token give 34 allowed entries.  (The paper also gives global tokens
    their own projections ``Q_g, K_g, V_g``; a mask cannot express that.)
    """
    mask = sliding_window_mask(n, window)                                        # (n, n)
    idx = _global_index(global_tokens, int(n))
    mask[idx, :] = True                                                          # global rows see all
    mask[:, idx] = True                                                          # all see global columns
    return mask


def bigbird_mask(n: int, window: int, n_random: int, global_tokens, rng) -> np.ndarray:
    """BigBird: window + global tokens + ``n_random`` random keys per query, boolean ``(n, n)``.

    ``global_tokens``: positions ``(g,)`` (or None); ``rng``: a
    ``numpy.random.Generator`` (required).

    Each query gets ``n_random`` extra keys drawn without replacement among the
    keys the window and global tokens do not already give it (fewer when not
    enough are left).  Token-level for teaching; the paper works in blocks.
    """
    mask = longformer_mask(n, window, global_tokens)                             # (n, n)
    if int(n_random) != n_random or n_random < 0:
        raise ValueError(f"n_random must be a non-negative integer, got {n_random!r}")
    if not isinstance(rng, np.random.Generator):
        raise ValueError(f"rng must be a numpy.random.Generator, got {type(rng).__name__}")
    n_random = min(int(n_random), int(n))
    if n_random == 0:
        return mask
    keys = rng.random(mask.shape)                                                # (n, n) random priorities
    keys[mask] = np.inf                                                          # already allowed: last
    pick = np.argsort(keys, axis=1)[:, :n_random]                                # (n, n_random)
    mask[np.arange(mask.shape[0])[:, None], pick] = True                         # inf picks are no-ops
    return mask


# ---------------------------------------------------------------- attention
def sparsemax_attention(q, k, v, mask=None, scale: float | None = None):
    """Return ``(out (..., n, d_v), weights (..., n, m))`` with sparsemax weights.

    ``q (..., n, d_k)``, ``k (..., m, d_k)``, ``v (..., m, d_v)``; ``mask``
    boolean, True = may attend, broadcastable to ``(..., n, m)`` as in
    scaled dot-product attention.  ``weights = sparsemax(q k^T * scale)`` row by row (``scale`` defaults to
    ``1/sqrt(d_k)``), masked entries exactly 0, fully masked rows all 0.  Only
    the normaliser differs from scaled dot-product attention, so both share
    :func:`~attention_np.mechanisms.scaled_dot_product.dot_product_attention`.
    """
    return dot_product_attention(q, k, v, mask=mask, scale=scale, normalize=sparsemax)


def sparsemax_attention_backward(dout, q, k, v, weights, scale: float | None = None):
    """Return ``(dq, dk, dv)`` with the shapes of ``q, k, v``.

    ``dout (..., n, d_v)``; ``q (..., n, d_k)``, ``k (..., m, d_k)``,
    ``v (..., m, d_v)``; ``weights (..., n, m)`` is the forward's second output
    (zero off the support, so those entries get no gradient).
    """
    return dot_product_attention_backward(dout, q, k, v, weights, scale=scale,
                                          normalize_backward=sparsemax_backward)


# ---------------------------------------------------------------- windowed attention, band only
def band_offsets(window: int, causal: bool = False) -> np.ndarray:
    """Key offsets ``o_w = j - i`` of the band's columns, as in :func:`sliding_window_mask`.

    Non-causal: ``-(window // 2), ..., window // 2``; causal: ``-(window - 1), ..., 0``.
    Returns integers ``(W,)``.
    """
    window = _check_positive(window, "window")
    if causal:
        return np.arange(-(window - 1), 1)                                       # (W,) W = window
    half = window // 2
    return np.arange(-half, half + 1)                                            # (W,) W = 2 half + 1


def _band_index(n, offsets):
    """Key index ``i + o_w`` of every band cell and whether it lies in ``[0, n)``."""
    keys = np.arange(n)[:, None] + offsets[None, :]                              # (n, W)
    return keys, (keys >= 0) & (keys < n)


def _windows(x, offsets, reverse=False):
    """Rows ``x[i + o_w]`` (or ``x[i - o_w]`` if ``reverse``) for every ``i, w``, zero outside.

    ``x (..., n, d)`` -> a strided view ``(..., n, d, W)``: pad the position
    axis and slide a window of ``W`` rows over it (no copy, no loop).
    """
    left, right = -int(offsets[0]), int(offsets[-1])                             # keys before / after i
    if reverse:
        left, right = right, left
    pad = [(0, 0)] * (x.ndim - 2) + [(left, right), (0, 0)]
    windows = sliding_window_view(np.pad(x, pad), len(offsets), axis=-2)          # (..., n, d, W)
    return windows[..., ::-1] if reverse else windows


def _skew(band, offsets, valid):
    """``out[..., j, w] = band[..., j - o_w, w]`` (0 where ``j - o_w`` is outside ``[0, n)``).

    Reindexes a band from "query i, column w" to "key j, column w", the
    bookkeeping of every key-side gradient.
    """
    n = band.shape[-2]
    queries = np.arange(n)[:, None] - offsets[None, :]                           # (n, W): j - o_w
    ok = (queries >= 0) & (queries < n)
    out = band[..., np.clip(queries, 0, n - 1), np.arange(len(offsets))[None, :]]  # (..., n, W) gather
    return np.where(ok, out, 0.0)


def sliding_window_attention(q, k, v, window: int, causal: bool = False, scale: float | None = None):
    """Softmax attention inside a sliding window, computing only the band.

    ``q (..., n, d_k)``, ``k (..., n, d_k)``, ``v (..., n, d_v)`` (self-attention
    lengths: ``m = n``) -> ``(out (..., n, d_v), weights (..., n, W))``.  Query
    ``i`` attends to keys ``i + o_w`` for ``o_w`` in :func:`band_offsets`; keys
    beyond the sequence ends get weight 0.  Equal (to rounding) to
    ``scaled_dot_product_attention(q, k, v, mask=sliding_window_mask(n, window, causal))``
    but ``O(n W d)`` instead of ``O(n^2 d)``.
    """
    q, k, v, lead = check_qkv(q, k, v)
    n, m = q.shape[-2], k.shape[-2]
    if m != n:
        raise shape_error("k", f"(..., n={n}, d_k) (a sliding window needs as many keys as queries)", k)
    offsets = band_offsets(window, causal)                                       # (W,)
    _, valid = _band_index(n, offsets)                                           # (n, W)
    scale = 1.0 / math.sqrt(q.shape[-1]) if scale is None else float(scale)
    k_win = _windows(k, offsets)                                                 # (..., n, d_k, W) view
    v_win = _windows(v, offsets)                                                 # (..., n, d_v, W) view
    scores = (q[..., None, :] @ k_win)[..., 0, :] * scale                        # (..., n, 1, d_k) @ (..., n, d_k, W) -> (..., n, W)
    weights = softmax(scores, mask=valid)                                        # (..., n, W), rows sum to 1
    out = (v_win @ weights[..., :, None])[..., 0]                                # (..., n, d_v, W) @ (..., n, W, 1) -> (..., n, d_v)
    return out, weights


def sliding_window_attention_backward(dout, q, k, v, weights, window: int, causal: bool = False,
                                      scale: float | None = None):
    """Return ``(dq, dk, dv)`` with the shapes of ``q, k, v``.

    ``dout (..., n, d_v)``; ``q (..., n, d_k)``, ``k (..., n, d_k)``,
    ``v (..., n, d_v)``; ``weights (..., n, W)`` is the forward's second output
    (band form); ``window``, ``causal`` and ``scale`` as in the forward.
    """
    q, k, v, lead = check_qkv(q, k, v)
    n, d_v = q.shape[-2], v.shape[-1]
    if k.shape[-2] != n:
        raise shape_error("k", f"(..., n={n}, d_k) (a sliding window needs as many keys as queries)", k)
    offsets = band_offsets(window, causal)                                       # (W,)
    W = len(offsets)
    dout = as_float_array(dout, "dout")
    if dout.shape != lead + (n, d_v):
        raise shape_error("dout", str(lead + (n, d_v)), dout)
    if np.shape(weights) != lead + (n, W):
        raise shape_error("weights", str(lead + (n, W)), weights)
    _, valid = _band_index(n, offsets)                                           # (n, W)
    scale = 1.0 / math.sqrt(q.shape[-1]) if scale is None else float(scale)
    shape = lambda x: np.broadcast_to(x, lead + x.shape[-2:])                    # common leading axes
    q_b, k_b, v_b, dout = shape(q), shape(k), shape(v), shape(dout)
    dweights = (dout[..., None, :] @ _windows(v_b, offsets))[..., 0, :]          # dP: (..., n, 1, d_v) @ (..., n, d_v, W) -> (..., n, W)
    dscores = softmax_backward(dweights, weights) * scale                        # (..., n, W); 0 off the sequence
    dq = (_windows(k_b, offsets) @ dscores[..., :, None])[..., 0]                # (..., n, d_k, W) @ (..., n, W, 1) -> (..., n, d_k)
    # key j is reached by query j - o_w through band column w: skew the bands, slide over queries
    dk = (_windows(q_b, offsets, reverse=True) @ _skew(dscores, offsets, valid)[..., :, None])[..., 0]   # (..., n, d_k)
    dv = (_windows(dout, offsets, reverse=True) @ _skew(weights, offsets, valid)[..., :, None])[..., 0]   # (..., n, d_v)
    return unbroadcast(dq, q.shape), unbroadcast(dk, k.shape), unbroadcast(dv, v.shape)


def band_to_dense(weights, window: int, causal: bool = False) -> np.ndarray:
    """Scatter band weights ``(..., n, W)`` into the full ``(..., n, n)`` matrix (zeros off the band)."""
    weights = as_float_array(weights, "weights")
    offsets = band_offsets(window, causal)
    if weights.ndim < 2 or weights.shape[-1] != len(offsets):
        raise shape_error("weights", f"(..., n, W={len(offsets)})", weights)
    n = weights.shape[-2]
    keys, valid = _band_index(n, offsets)                                        # (n, W)
    rows, cols = np.nonzero(valid)                                               # band cells inside the sequence
    dense = np.zeros(weights.shape[:-1] + (n,), dtype=weights.dtype)             # (..., n, n)
    dense[..., rows, keys[rows, cols]] = weights[..., rows, cols]
    return dense
