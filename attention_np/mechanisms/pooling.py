r"""Attention pooling and Nadaraya–Watson kernel regression.

References: E. A. Nadaraya, "On estimating regression", *Theory of Probability
and its Applications* 9(1), 1964; G. S. Watson, "Smooth regression analysis",
*Sankhyā A* 26(4), 1964.  Both proposed estimating ``E[y | x]`` by a
kernel-weighted average of observed ``y_i`` -- the oldest form of what is now
called attention pooling.

Attention pooling (Chapter 1)
----------------------------------------
Scores ``e (..., n, m)`` (one row per query, one column per key) become weights
by a softmax over the keys, and the output is the weighted average of values
``v (..., m, d_v)``:

.. math::
    \alpha_{ij} = \frac{\exp e_{ij}}{\sum_{l} \exp e_{il}},\qquad
    c_i = \sum_j \alpha_{ij} v_j \quad(\text{i.e. } C = \alpha V,\ (..., n, d_v))

Backward: ``dV = αᵀ dC``, ``dα = dC Vᵀ``, ``de = α ⊙ (dα − rowsum(dα ⊙ α))``.

Nadaraya–Watson pooling
-----------------------
Scalar queries ``x (..., n)``, scalar keys ``x_k (..., m)`` and values
``y (..., m)`` (or ``(..., m, d_v)``).  With the scaled distance
``u_ij = (x_i − x_k,j) / h`` (bandwidth ``h > 0``) and a kernel ``K``,

.. math::
    \alpha_{ij} = \frac{K(u_{ij})}{\sum_l K(u_{il})},\qquad
    f(x_i) = \sum_j \alpha_{ij}\, y_j

Kernels (their normalising constants cancel in the ratio, so we omit them):

* Gaussian      ``K(u) = exp(−u²/2)``   → ``α = softmax(−u²/2)``: attention with score ``e = −u²/2``;
* boxcar        ``K(u) = 1 if |u| ≤ 1 else 0``  (a plain average of the keys within ``h``);
* Epanechnikov  ``K(u) = max(0, 1 − u²)``.

For boxcar and Epanechnikov a query may have **no key inside its window**
(every ``K = 0``).  The estimator is then undefined; we return a zero row of
weights and a zero output for that query (like a fully masked softmax row),
never NaN.  :func:`has_support` tells you which queries that happened to.

Backward (all kernels), with ``s = 1/h`` and ``S_i = Σ_l K(u_il)``:

.. math::
    dK_{ij} = \frac{d\alpha_{ij} - \sum_l d\alpha_{il}\alpha_{il}}{S_i},\quad
    du_{ij} = dK_{ij}\,K'(u_{ij}),\quad
    dx_i = s\sum_j du_{ij},\quad dx_{k,j} = -s\sum_i du_{ij},\quad
    ds = \sum_{ij} du_{ij}\,(x_i - x_{k,j}),\quad dh = -ds / h^2

For the Gaussian ``K' = −uK`` and this reduces to the softmax backward:
``du = −u ⊙ α ⊙ (dα − rowsum(dα ⊙ α))``.  The boxcar is piecewise constant, so
its gradients for queries, keys and bandwidth are zero (almost everywhere);
only the values receive gradient.

The parametric version :class:`NadarayaWatson` learns the inverse bandwidth
``w`` (scores ``e = −((x − x_k) w)² / 2`` for the Gaussian), i.e. ``s = w``.
"""
from __future__ import annotations

import numpy as np

from ..nn.functional import softmax, softmax_backward, unbroadcast
from ..nn.module import Module, default_rng
from ..nn.validate import as_float_array, shape_error

KERNELS = ("gaussian", "boxcar", "epanechnikov")


# ------------------------------------------------------------------ kernels
def _check_kernel(kernel) -> str:
    if kernel not in KERNELS:
        raise ValueError(f"kernel must be one of {KERNELS}, got {kernel!r}")
    return kernel


def _check_bandwidth(bandwidth) -> float:
    """A positive finite scalar (python float, numpy scalar or size-1 array) -> python float."""
    b = np.asarray(bandwidth)
    if b.size != 1 or not (np.issubdtype(b.dtype, np.floating) or np.issubdtype(b.dtype, np.integer)):
        raise ValueError(f"bandwidth must be a positive scalar, got shape {b.shape} and dtype {b.dtype}")
    h = float(b.reshape(()))
    if not (np.isfinite(h) and h > 0.0 and np.isfinite(1.0 / h)):
        raise ValueError(f"bandwidth must be a positive finite scalar, got {h}")
    return h


def gaussian_kernel(distance, bandwidth=1.0) -> np.ndarray:
    """``exp(−(distance/h)²/2)``, elementwise: ``distance (...)`` of any shape -> ``(...)``; ``h = bandwidth``."""
    d = as_float_array(distance, "distance")
    u = d * (1.0 / _check_bandwidth(bandwidth))
    with np.errstate(over="ignore"):                        # u² = inf means "infinitely far": K = 0
        return np.exp(-0.5 * (u * u))


def boxcar_kernel(distance, bandwidth=1.0) -> np.ndarray:
    """``1`` where ``|distance| ≤ h``, else ``0``: ``distance (...)`` -> ``(...)`` in the input's float dtype."""
    d = as_float_array(distance, "distance")
    return (np.abs(d) <= _check_bandwidth(bandwidth)).astype(d.dtype)


def epanechnikov_kernel(distance, bandwidth=1.0) -> np.ndarray:
    """``max(0, 1 − (distance/h)²)``, elementwise: ``distance (...)`` of any shape -> ``(...)``."""
    d = as_float_array(distance, "distance")
    u = d * (1.0 / _check_bandwidth(bandwidth))
    with np.errstate(over="ignore"):
        return np.maximum(0.0, 1.0 - u * u)


# ------------------------------------------------------- attention pooling
def _check_pooling(scores, values):
    scores, values = as_float_array(scores, "scores"), as_float_array(values, "values")
    if scores.ndim < 2:
        raise shape_error("scores", "(..., n, m)", scores)
    m = scores.shape[-1]
    if values.ndim < 2 or values.shape[-2] != m:
        raise shape_error("values", f"(..., m={m}, d_v)", values)
    try:
        lead = np.broadcast_shapes(scores.shape[:-2], values.shape[:-2])
    except ValueError:
        raise ValueError(
            f"the leading axes of scores {scores.shape} and values {values.shape} must broadcast"
        ) from None
    return scores, values, lead


def attention_pooling(scores, values, mask=None):
    """``weights = softmax(scores)`` over keys, ``out = weights @ values``.

    ``scores (..., n, m)``, ``values (..., m, d_v)`` -> ``(out (..., n, d_v), weights (..., n, m))``.
    ``mask`` (bool, True = may attend) broadcasts to ``(..., n, m)``; a fully
    masked row gives zero weights and a zero output.
    """
    scores, values, _ = _check_pooling(scores, values)
    weights = softmax(scores, axis=-1, mask=mask)           # (..., n, m), rows sum to 1
    out = weights @ values                                  # (..., n, m) @ (..., m, d_v) -> (..., n, d_v)
    return out, weights


def attention_pooling_backward(dout, values, weights):
    """Return ``(dscores (..., n, m), dvalues (..., m, d_v))`` for :func:`attention_pooling` (Chapter 1).

    ``dout (..., n, d_v)``, ``values (..., m, d_v)`` and the forward's
    ``weights (..., n, m)``; masked entries (weight 0) get no gradient and
    broadcast leading axes are summed back.
    """
    weights, values, lead = _check_pooling(weights, values)
    n, d_v = weights.shape[-2], values.shape[-1]
    dout = as_float_array(dout, "dout")
    if dout.shape != lead + (n, d_v):
        raise shape_error("dout", str(lead + (n, d_v)), dout)
    dvalues = np.swapaxes(weights, -1, -2) @ dout           # (..., m, n) @ (..., n, d_v) -> (..., m, d_v)
    dweights = dout @ np.swapaxes(values, -1, -2)           # (..., n, d_v) @ (..., d_v, m) -> (..., n, m)
    dscores = softmax_backward(dweights, weights)           # (..., n, m)
    return unbroadcast(dscores, weights.shape), unbroadcast(dvalues, values.shape)


# ---------------------------------------------------- Nadaraya–Watson core
def _check_nw(queries, keys, values):
    """Validate shapes; return arrays, the broadcast leading shape and whether values are vectors."""
    queries = as_float_array(queries, "queries")
    keys = as_float_array(keys, "keys")
    values = as_float_array(values, "values")
    if queries.ndim < 1:
        raise shape_error("queries", "(..., n)", queries)
    if keys.ndim < 1:
        raise shape_error("keys", "(..., m)", keys)
    m = keys.shape[-1]
    # values have the same number of axes as keys (scalar values) or one more (vectors)
    if values.ndim == keys.ndim and values.shape[-1] == m:
        vector, v_lead = False, values.shape[:-1]
    elif values.ndim == keys.ndim + 1 and values.shape[-2] == m:
        vector, v_lead = True, values.shape[:-2]
    else:
        raise shape_error("values", f"(..., m={m}) or (..., m={m}, d_v)", values)
    try:
        lead = np.broadcast_shapes(queries.shape[:-1], keys.shape[:-1], v_lead)
    except ValueError:
        raise ValueError(
            f"the leading axes of queries {queries.shape}, keys {keys.shape} and values "
            f"{values.shape} must broadcast"
        ) from None
    return queries, keys, values, lead, vector


def _kernel_weights(diff, scale: float, kernel: str):
    """Weights ``(..., n, m)`` from differences ``x_i − x_k,j`` and inverse bandwidth ``scale``."""
    with np.errstate(over="ignore", invalid="ignore"):     # overflow -> inf distance -> weight 0
        a = np.abs(diff * scale)                            # |u|, (..., n, m)
        if kernel == "gaussian":
            # softmax(−u²/2) with the row maximum (the nearest key) subtracted in factored
            # form, −(|u|² − |u|min²)/2, so that u² never overflows to −inf in a whole row
            a_min = np.min(a, axis=-1, keepdims=True)       # (..., n, 1)
            e = np.where(a == a_min, 0.0, -0.5 * (a - a_min) * (a + a_min))
            return softmax(e, axis=-1)                      # (..., n, m)
        K = (a <= 1.0).astype(diff.dtype) if kernel == "boxcar" else np.maximum(0.0, 1.0 - a * a)
    S = np.sum(K, axis=-1, keepdims=True)                   # (..., n, 1); 0 if no key in the window
    return K / np.where(S > 0, S, 1.0)                      # empty window -> zero row, never NaN


def _pool(weights, values, vector: bool):
    if vector:
        return weights @ values                             # (..., n, m) @ (..., m, d_v) -> (..., n, d_v)
    return (weights @ values[..., None])[..., 0]            # (..., n, m) @ (..., m, 1) -> (..., n)


def _nw_forward(queries, keys, values, kernel, scale):
    queries, keys, values, lead, vector = _check_nw(queries, keys, values)
    diff = queries[..., :, None] - keys[..., None, :]       # (..., n, 1) - (..., 1, m) -> (..., n, m)
    weights = _kernel_weights(diff, scale, kernel)          # (..., n, m)
    return _pool(weights, values, vector), weights


def _nw_backward(dout, queries, keys, values, weights, kernel, scale):
    """Gradients ``(dqueries, dkeys, dvalues, dscale)`` where ``u = (x − x_k) * scale``."""
    queries, keys, values, lead, vector = _check_nw(queries, keys, values)
    n, m = queries.shape[-1], keys.shape[-1]
    out_shape = lead + ((n, values.shape[-1]) if vector else (n,))
    dout = as_float_array(dout, "dout")
    if dout.shape != out_shape:
        raise shape_error("dout", str(out_shape), dout)
    if np.shape(weights) != lead + (n, m):
        raise shape_error("weights", str(lead + (n, m)), weights)
    diff = queries[..., :, None] - keys[..., None, :]       # (..., n, m)
    u = diff * scale                                        # (..., n, m)
    if vector:
        dvalues = np.swapaxes(weights, -1, -2) @ dout       # (..., m, n) @ (..., n, d_v) -> (..., m, d_v)
        dweights = dout @ np.swapaxes(values, -1, -2)       # (..., n, d_v) @ (..., d_v, m) -> (..., n, m)
    else:
        dvalues = (np.swapaxes(weights, -1, -2) @ dout[..., None])[..., 0]  # (..., m, n) @ (..., n, 1) -> (..., m)
        dweights = dout[..., :, None] * values[..., None, :]                # (..., n, 1) * (..., 1, m) -> (..., n, m)
    if kernel == "gaussian":
        du = -u * softmax_backward(dweights, weights)       # e = −u²/2, de/du = −u; (..., n, m)
    elif kernel == "epanechnikov":
        K = np.maximum(0.0, 1.0 - u * u)                    # (..., n, m)
        S = np.sum(K, axis=-1, keepdims=True)               # (..., n, 1)
        dK = (dweights - np.sum(dweights * weights, axis=-1, keepdims=True)) / np.where(S > 0, S, 1.0)
        du = np.where(K > 0, dK * (-2.0 * u), 0.0)          # K'(u) = −2u inside the window, 0 outside
    else:                                                   # boxcar: piecewise constant, K' = 0
        du = np.zeros_like(u)
    dqueries = np.sum(du, axis=-1) * scale                  # (..., n)
    dkeys = -np.sum(du, axis=-2) * scale                    # (..., m)
    dscale = float(np.sum(du * diff))
    return (unbroadcast(dqueries, queries.shape), unbroadcast(dkeys, keys.shape),
            unbroadcast(dvalues, values.shape), dscale)


# --------------------------------------------------------- public functions
def nadaraya_watson(queries, keys, values, kernel: str = "gaussian", bandwidth=1.0):
    """Nadaraya–Watson kernel regression as attention pooling.

    Parameters
    ----------
    queries : (..., n) query points ``x``.
    keys : (..., m) observed inputs ``x_k``.
    values : (..., m) observed outputs ``y`` (same number of axes as ``keys``),
        or (..., m, d_v) vector outputs.  Leading axes broadcast.
    kernel : "gaussian", "boxcar" or "epanechnikov".
    bandwidth : positive scalar ``h``.

    Returns
    -------
    out : (..., n) or (..., n, d_v), the weighted averages.
    weights : (..., n, m); each row sums to 1, or is all zero (with a zero
        output) when a compact kernel has no key within ``h`` of that query.
    """
    kernel = _check_kernel(kernel)
    h = _check_bandwidth(bandwidth)
    return _nw_forward(queries, keys, values, kernel, 1.0 / h)


def nadaraya_watson_backward(dout, queries, keys, values, weights, kernel: str = "gaussian",
                             bandwidth=1.0):
    """Return ``(dqueries, dkeys, dvalues, dbandwidth)`` for :func:`nadaraya_watson`.

    ``dout (..., n)`` or ``(..., n, d_v)`` like the output; ``queries (..., n)``,
    ``keys (..., m)``, ``values`` and ``weights (..., n, m)`` as in the forward.
    The gradients have the shapes of ``queries``, ``keys`` and ``values``.

    ``weights`` is the forward's second output; ``dbandwidth`` is a python
    float.  Gradients of broadcast leading axes are summed back.
    """
    kernel = _check_kernel(kernel)
    h = _check_bandwidth(bandwidth)
    dq, dk, dv, dscale = _nw_backward(dout, queries, keys, values, weights, kernel, 1.0 / h)
    return dq, dk, dv, -dscale / (h * h)                    # s = 1/h, ds/dh = −1/h²


def has_support(queries, keys, kernel: str = "gaussian", bandwidth=1.0) -> np.ndarray:
    """Bool ``(..., n)``: True where the query has at least one key with a non-zero kernel value."""
    kernel = _check_kernel(kernel)
    h = _check_bandwidth(bandwidth)
    queries, keys = as_float_array(queries, "queries"), as_float_array(keys, "keys")
    if queries.ndim < 1:
        raise shape_error("queries", "(..., n)", queries)
    if keys.ndim < 1:
        raise shape_error("keys", "(..., m)", keys)
    diff = queries[..., :, None] - keys[..., None, :]       # (..., n, m)
    weights = _kernel_weights(diff, 1.0 / h, kernel)        # the forward's own test, same rounding
    return np.sum(weights, axis=-1) > 0                     # (..., n)


# ------------------------------------------------------------------ module
class NadarayaWatson(Module):
    """Parametric Nadaraya–Watson pooling with a learnable inverse bandwidth ``w``.

    Scores ``u = (x − x_k) w``; Gaussian weights ``softmax(−u²/2)`` (boxcar and
    Epanechnikov as in :func:`nadaraya_watson` with ``h = 1/|w|``).  Parameter
    ``w`` has shape ``(1,)``; initialised to ``w_init`` or, if None, drawn
    uniformly from ``[0.5, 1.5)`` with ``rng``.

    ``forward(queries (..., n), keys (..., m), values (..., m) or (..., m, d_v))``
    returns the pooled values and stores ``.weights (..., n, m)``;
    ``backward(dout)`` returns ``(dqueries, dkeys, dvalues)`` and adds into
    ``grads["w"]``.
    """

    def __init__(self, kernel: str = "gaussian", w_init: float | None = None, *, rng=None) -> None:
        super().__init__()
        self.kernel = _check_kernel(kernel)
        if w_init is None:
            w_init = default_rng(rng).uniform(0.5, 1.5)
        self.add_param("w", np.array([float(w_init)]))
        self.weights = None

    def forward(self, queries, keys, values) -> np.ndarray:
        """``queries (..., n)``, ``keys (..., m)``, ``values (..., m)`` or ``(..., m, d_v)`` -> ``(..., n)`` or ``(..., n, d_v)``.

        Leading axes broadcast.  ``.weights (..., n, m)``; rows sum to 1, or are
        zero for a compact kernel with no key inside the window.  Caches the
        inputs, the weights and the current ``w``.
        """
        scale = float(self.params["w"][0])                  # python float keeps float32 inputs float32
        out, weights = _nw_forward(queries, keys, values, self.kernel, scale)
        self.cache = (queries, keys, values, weights, scale)
        self.weights = weights
        return out

    def backward(self, dout):
        """``dout`` shaped like the output -> ``(dqueries (..., n), dkeys (..., m), dvalues)``.

        ``dvalues`` has the shape of ``values``; ``dw`` is added into
        ``grads["w"]`` ``(1,)`` (zero for the boxcar kernel).
        """
        queries, keys, values, weights, scale = self.cache
        dq, dk, dv, dscale = _nw_backward(dout, queries, keys, values, weights, self.kernel, scale)
        self.grads["w"] += dscale                           # u = (x − x_k) w, so dw = ds
        return dq, dk, dv
