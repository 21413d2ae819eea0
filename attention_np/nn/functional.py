r"""Parameter-free building blocks, each as a forward/backward pair.

Conventions: a backward takes the upstream gradient first and then exactly what
it needs from the forward (its output ``y`` or its input ``x``), never a hidden
cache.  Everything keeps the input's floating dtype (float32 stays float32).

Softmax (Chapter 2), per row of the last axis:

.. math::
    M = \max_j s_j,\quad p_j = \frac{e^{s_j - M}}{\sum_k e^{s_k - M}},\qquad
    ds = p \odot \bigl(dp - \textstyle\sum_j dp_j p_j\bigr)

Masks are boolean and True means *may attend*.  Masked entries get weight 0;
a row whose every entry is masked gets all-zero weights (never NaN, never a
silent uniform distribution over padding).
"""
from __future__ import annotations

import numpy as np

from .validate import as_float_array, check_int_array, check_mask, positive_int, shape_error


# ---------------------------------------------------------------- softmax
def softmax(x, axis: int = -1, mask=None) -> np.ndarray:
    """Numerically stable softmax along ``axis``; optional boolean ``mask`` (True = keep).

    ``x (..., m)``: any shape with at least one axis (``axis`` picks the one that
    is normalised, the last by default).  ``mask``: boolean, True = may attend,
    either at most two axes (e.g. ``(n, m)`` or ``(m,)``, shared by every leading
    axis) or one axis per axis of ``x`` (size 1 where it broadcasts).
    Returns the weights ``(..., m)``, same shape and floating dtype as ``x``;
    each slice sums to 1, masked entries are exactly 0 and fully masked slices
    come back as zeros (never NaN).  Chapter 2.
    """
    x = as_float_array(x, "x")
    if x.ndim == 0:
        raise shape_error("x", "(..., m) with at least one axis", x)
    if mask is not None:
        mask = check_mask(mask, x.shape)
        x = np.where(mask, x, -np.inf)                      # masked logits -> -inf
    x_max = np.max(x, axis=axis, keepdims=True)             # (..., 1)
    if mask is not None:
        x_max = np.where(np.isfinite(x_max), x_max, 0.0)    # fully masked row: avoid inf - inf
    e = x - x_max                                           # one new (..., m) buffer, reused below
    np.exp(e, out=e)                                        # exp(-inf) = 0 for masked entries
    total = np.sum(e, axis=axis, keepdims=True)             # >= 1 unless fully masked
    if mask is not None:
        total = np.where(total > 0, total, 1.0)             # fully masked row -> 0 / 1 = 0
    e /= total
    return e


def softmax_backward(dy, y, axis: int = -1) -> np.ndarray:
    """Backward of softmax: ``dx = y * (dy - sum(dy * y))`` (a Jacobian-vector product).

    ``dy (..., m)`` is the upstream gradient and ``y (..., m)`` the forward's
    output (same shape), the sum running along ``axis``.  Returns
    ``dx (..., m)``.  Masked entries (``y == 0``) receive zero gradient.
    No mask argument is needed: the zeros in ``y`` carry it.  Chapter 2.
    """
    dx = dy - np.sum(dy * y, axis=axis, keepdims=True)
    dx *= y
    return dx


def masked_softmax(x, mask, axis: int = -1) -> np.ndarray:
    """``softmax(x, axis, mask)`` with the mask as a required argument.

    ``x (..., m)`` scores, ``mask`` boolean (True = may attend), ``(n, m)``,
    ``(m,)`` or one axis per axis of ``x``; returns weights ``(..., m)``.
    """
    return softmax(x, axis=axis, mask=mask)


def logsumexp(x, axis: int = -1, keepdims: bool = False) -> np.ndarray:
    """Stable ``log(sum(exp(x)))`` along ``axis`` (the row maximum is subtracted first).

    ``x (..., m)`` -> ``(...)``, or ``(..., 1)`` with ``keepdims=True``.
    """
    x = as_float_array(x, "x")
    x_max = np.max(x, axis=axis, keepdims=True)
    x_max = np.where(np.isfinite(x_max), x_max, 0.0)             # an all -inf row: exp(-inf) = 0, no inf - inf
    with np.errstate(divide="ignore"):                            # log(0) = -inf is the right answer there
        out = x_max + np.log(np.sum(np.exp(x - x_max), axis=axis, keepdims=True))
    return out if keepdims else np.squeeze(out, axis=axis)


def log_softmax(x, axis: int = -1) -> np.ndarray:
    """Stable ``log(softmax(x))`` along ``axis``: ``x - logsumexp(x)``.

    ``x (..., m)`` -> log-probabilities ``(..., m)``, never ``-inf`` for finite
    ``x`` (unlike ``log(softmax(x))`` when a probability underflows).
    """
    x = as_float_array(x, "x")
    return x - logsumexp(x, axis=axis, keepdims=True)


def log_softmax_backward(dy, y, axis: int = -1) -> np.ndarray:
    """Backward of log_softmax given its output ``y``: ``dx = dy - softmax(x) * sum(dy)``.

    ``dy (..., m)`` upstream gradient, ``y (..., m)`` the forward's output
    (``softmax(x) = exp(y)``); returns ``dx (..., m)``.
    """
    return dy - np.exp(y) * np.sum(dy, axis=axis, keepdims=True)


# ---------------------------------------------------------------- activations
def tanh(x) -> np.ndarray:
    """Hyperbolic tangent, elementwise: ``x (...)`` of any shape -> ``(...)``, values in ``(-1, 1)``."""
    return np.tanh(as_float_array(x, "x"))


def tanh_backward(dy, y) -> np.ndarray:
    """``y = tanh(x)``: ``dx = dy * (1 - y**2)``.

    ``dy (...)`` and the forward's output ``y (...)`` have the same (any)
    shape; returns ``dx (...)``.
    """
    return dy * (1.0 - y * y)


def sigmoid(x) -> np.ndarray:
    """Logistic function ``1 / (1 + e^-x)``, elementwise, stable for large |x| (no overflow warnings).

    ``x (...)`` of any shape -> ``(...)``, values in ``[0, 1]``.
    """
    x = as_float_array(x, "x")
    z = np.exp(-np.abs(x))                          # in (0, 1]: never overflows
    return np.where(x >= 0, 1.0 / (1.0 + z), z / (1.0 + z))


def sigmoid_backward(dy, y) -> np.ndarray:
    """``y = sigmoid(x)``: ``dx = dy * y * (1 - y)``.

    ``dy (...)`` and the forward's output ``y (...)``, same (any) shape;
    returns ``dx (...)``.
    """
    return dy * y * (1.0 - y)


def relu(x) -> np.ndarray:
    """``max(x, 0)``, elementwise: ``x (...)`` of any shape -> ``(...)``."""
    x = as_float_array(x, "x")
    return np.maximum(x, 0.0)


def relu_backward(dy, x) -> np.ndarray:
    """``dx = dy`` where ``x > 0``, else 0 (the kink at 0 gets 0).

    Takes the forward's *input* ``x (...)`` (not its output) and ``dy (...)``
    of the same shape; returns ``dx (...)``.
    """
    return dy * (x > 0)


_GELU_C = float(np.sqrt(2.0 / np.pi))


def gelu(x) -> np.ndarray:
    """GELU, tanh approximation: ``0.5 x (1 + tanh(c (x + 0.044715 x^3)))``, ``c = sqrt(2/pi)``.

    Hendrycks & Gimpel (2016), *Gaussian Error Linear Units*.  Elementwise:
    ``x (...)`` of any shape -> ``(...)``.
    """
    x = as_float_array(x, "x")
    return 0.5 * x * (1.0 + np.tanh(_GELU_C * (x + 0.044715 * x**3)))


def gelu_backward(dy, x) -> np.ndarray:
    """Backward of :func:`gelu`: ``dx = dy * gelu'(x)``, given the forward's *input* ``x``.

    ``dy (...)`` and ``x (...)`` have the same (any) shape; returns ``dx (...)``.
    """
    u = _GELU_C * (x + 0.044715 * x**3)
    t = np.tanh(u)
    du = _GELU_C * (1.0 + 3 * 0.044715 * x**2)
    return dy * (0.5 * (1.0 + t) + 0.5 * x * (1.0 - t * t) * du)


def elu(x, alpha: float = 1.0) -> np.ndarray:
    """ELU (Clevert et al. 2016): ``x`` for ``x > 0``, ``alpha (e^x - 1)`` otherwise (no overflow for large x).

    Elementwise: ``x (...)`` of any shape -> ``(...)``.
    """
    x = as_float_array(x, "x")
    return np.where(x > 0, x, alpha * np.expm1(np.minimum(x, 0.0)))


def elu_backward(dy, x, alpha: float = 1.0) -> np.ndarray:
    """Backward of :func:`elu`: ``dx = dy`` where ``x > 0``, ``dy * alpha * e^x`` elsewhere.

    Takes the forward's *input* ``x (...)`` and ``dy (...)`` of the same shape;
    returns ``dx (...)``.
    """
    return dy * np.where(x > 0, 1.0, alpha * np.exp(np.minimum(x, 0.0)))


def elu_plus_one(x) -> np.ndarray:
    """The positive feature map of linear attention: ``phi(x) = elu(x) + 1 > 0``.

    Katharopoulos et al. (2020), *Transformers are RNNs* (Chapter 19).
    Elementwise: ``x (...)`` of any shape, e.g. ``(..., n, d_k)`` -> ``(...)``.
    Computed as ``x + 1`` for ``x > 0`` and ``exp(x)`` otherwise (the same
    function); writing ``(exp(x) - 1) + 1`` would round to exactly 0 already at
    ``x <= -18`` in float32, ``exp(x)`` only underflows at about ``-104``.
    """
    x = as_float_array(x, "x")
    return np.where(x > 0, x + 1.0, np.exp(np.minimum(x, 0.0)))


def elu_plus_one_backward(dy, x) -> np.ndarray:
    """Backward of :func:`elu_plus_one`: ``dx = dy`` where ``x > 0``, ``dy * e^x`` elsewhere.

    Takes the forward's *input* ``x (...)`` and ``dy (...)`` of the same shape;
    returns ``dx (...)`` (the ``+ 1`` has no gradient, so this is ELU's backward).
    """
    return elu_backward(dy, x)


# ---------------------------------------------------------------- masks
def causal_mask(n: int, m: int | None = None) -> np.ndarray:
    """Boolean ``(n, m)`` mask, True where query ``i`` may attend key ``j``.

    ``n`` queries, ``m`` keys (default ``n``), ``m >= n``.  With ``m = n`` this is ``j <= i``.  With a cached prefix (``m > n``: the
    ``n`` queries are the *last* ``n`` of ``m`` positions) query ``i`` sits at
    absolute position ``i + (m - n)``, so it may attend ``j <= i + (m - n)``.
    """
    if m is None:
        m = n
    if int(n) != n or n < 1:
        raise ValueError(f"n must be a positive integer, got {n!r}")
    if int(m) != m or m < n:
        raise ValueError(f"m must be an integer >= n={n} (keys include every query), got {m!r}")
    i = np.arange(n)[:, None]                      # (n, 1)
    j = np.arange(m)[None, :]                      # (1, m)
    return j <= i + (m - n)                        # (n, m)


def padding_mask(lengths, m: int) -> np.ndarray:
    """Boolean ``(B, 1, m)`` mask, True for the first ``lengths[b]`` keys of example ``b``.

    ``lengths (B,)``: integers in ``[0, m]``; ``m``: the number of keys.

    The middle axis of length 1 broadcasts over the queries of ``(B, n, m)``
    attention weights; for per-head weights ``(B, H, n, m)`` use ``mask[:, None]``
    (``(B, 1, 1, m)``).  Against four-axis scores the ``(B, 1, m)`` mask itself is
    refused, because broadcasting from the right would pair B with the head axis;
    attention modules that hide their heads (``MultiHeadAttention``,
    ``MultiHeadLatentAttention``) insert the head axis themselves.
    """
    m = positive_int(m, "m")
    lengths = check_int_array(lengths, "lengths", expected="(B,)")
    if lengths.ndim != 1:
        raise shape_error("lengths", "(B,)", lengths)
    if lengths.size and (lengths.min() < 0 or lengths.max() > m):
        raise ValueError(f"lengths must lie in [0, m={m}], got values in [{lengths.min()}, {lengths.max()}]")
    return (np.arange(m)[None, :] < lengths[:, None])[:, None, :]      # (B, 1, m)


# ---------------------------------------------------------------- broadcasting
def unbroadcast(grad: np.ndarray, shape: tuple) -> np.ndarray:
    """Sum ``grad`` over the axes that broadcasting added or stretched, to get ``shape``.

    ``grad (..., *shape')`` where ``shape`` broadcasts to ``grad.shape``;
    returns an array of exactly ``shape``.

    The backward of an implicit broadcast is a sum: if a ``(1, m, d)`` array was
    used against ``(B, m, d)``, its gradient is the sum over the batch axis.
    """
    shape = tuple(shape)
    extra = grad.ndim - len(shape)
    if extra > 0:
        grad = grad.sum(axis=tuple(range(extra)))
    stretched = tuple(i for i, s in enumerate(shape) if s == 1 and grad.shape[i] != 1)
    if stretched:
        grad = grad.sum(axis=stretched, keepdims=True)
    return grad
