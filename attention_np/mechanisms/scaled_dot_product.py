r"""Scaled dot-product attention (Vaswani et al. 2017, *Attention Is All You Need*).

Shapes: ``q (..., n, d_k)``, ``k (..., m, d_k)``, ``v (..., m, d_v)``; the
leading axes (batch, heads) broadcast against each other.

.. math::
    S = \frac{Q K^\top}{\sqrt{d_k}} \in \mathbb R^{n\times m},\qquad
    P = \operatorname{softmax}(S + \text{mask}),\qquad O = P V \in \mathbb R^{n\times d_v}

Backward (Chapter 2), with ``s = 1/sqrt(d_k)``:

.. math::
    dV = P^\top dO,\quad dP = dO\,V^\top,\quad
    dS = P\odot\bigl(dP - \operatorname{rowsum}(dP\odot P)\bigr),\quad
    dQ = s\, dS\, K,\quad dK = s\, dS^\top Q

``mask`` is boolean, broadcastable to ``(..., n, m)``, True = may attend.  A
query whose keys are all masked gets zero weights and a zero output.
"""
from __future__ import annotations

import math

import numpy as np

from ..nn.functional import softmax, softmax_backward, unbroadcast
from ..nn.validate import as_float_array, check_mask, shape_error


def check_qkv(q, k, v):
    """Validate ``q (..., n, d_k)``, ``k (..., m, d_k)``, ``v (..., m, d_v)``; return them as floats and the broadcast leading shape."""
    q, k, v = as_float_array(q, "q"), as_float_array(k, "k"), as_float_array(v, "v")
    if q.ndim < 2:
        raise shape_error("q", "(..., n, d_k)", q)
    d_k = q.shape[-1]
    if k.ndim < 2 or k.shape[-1] != d_k:
        raise shape_error("k", f"(..., m, d_k={d_k})", k)
    m = k.shape[-2]
    if v.ndim < 2 or v.shape[-2] != m:
        raise shape_error("v", f"(..., m={m}, d_v)", v)
    if d_k == 0:
        raise ValueError(f"q and k must have a feature axis d_k >= 1, got q {q.shape} and k {k.shape}")
    if m == 0:
        raise ValueError(f"k and v must hold at least one key (m >= 1): a query needs something to attend to; "
                         f"got k {k.shape}")
    try:
        lead = np.broadcast_shapes(q.shape[:-2], k.shape[:-2], v.shape[:-2])
    except ValueError:
        raise ValueError(
            f"the leading axes of q {q.shape}, k {k.shape} and v {v.shape} must broadcast"
        ) from None
    return q, k, v, lead


def dot_product_attention(q, k, v, mask=None, scale: float | None = None, normalize=softmax):
    """The skeleton shared by every dot-product attention: scores, a row normaliser, a weighted sum.

    ``normalize(scores, axis=-1, mask=mask)`` turns scores into weights: softmax
    here, sparsemax in sparse.py.  Returns ``(out (..., n, d_v), weights (..., n, m))``.
    """
    q, k, v, lead = check_qkv(q, k, v)
    n, m = q.shape[-2], k.shape[-2]
    scale = 1.0 / math.sqrt(q.shape[-1]) if scale is None else float(scale)  # python float keeps float32
    scores = q @ np.swapaxes(k, -1, -2)                     # (..., n, d_k) @ (..., d_k, m) -> (..., n, m)
    scores *= scale
    if mask is not None:
        check_mask(mask, lead + (n, m))
    weights = normalize(scores, axis=-1, mask=mask)         # (..., n, m), rows sum to 1 (or 0 if fully masked)
    out = weights @ v                                       # (..., n, m) @ (..., m, d_v) -> (..., n, d_v)
    return out, weights


def dot_product_attention_backward(dout, q, k, v, weights, scale: float | None = None,
                                   normalize_backward=softmax_backward):
    """Backward of :func:`dot_product_attention`; ``normalize_backward(dweights, weights)`` -> dscores.

    ``dout (..., n, d_v)``; ``q (..., n, d_k)``, ``k (..., m, d_k)``,
    ``v (..., m, d_v)`` and the forward's ``weights (..., n, m)``.  Returns
    ``(dq, dk, dv)`` with the shapes of ``q, k, v`` (broadcast axes summed back).
    """
    q, k, v, lead = check_qkv(q, k, v)
    n, m, d_v = q.shape[-2], k.shape[-2], v.shape[-1]
    dout = as_float_array(dout, "dout")
    if dout.shape != lead + (n, d_v):
        raise shape_error("dout", str(lead + (n, d_v)), dout)
    if np.shape(weights) != lead + (n, m):
        raise shape_error("weights", str(lead + (n, m)), weights)
    scale = 1.0 / math.sqrt(q.shape[-1]) if scale is None else float(scale)
    dv = np.swapaxes(weights, -1, -2) @ dout                # (..., m, n) @ (..., n, d_v) -> (..., m, d_v)
    dweights = dout @ np.swapaxes(v, -1, -2)                # (..., n, d_v) @ (..., d_v, m) -> (..., n, m)
    dscores = normalize_backward(dweights, weights)         # (..., n, m); softmax: P * (dP - rowsum(dP * P))
    dscores *= scale                                        # the 1/sqrt(d_k) of the forward
    dq = dscores @ k                                        # (..., n, m) @ (..., m, d_k) -> (..., n, d_k)
    dk = np.swapaxes(dscores, -1, -2) @ q                   # (..., m, n) @ (..., n, d_k) -> (..., m, d_k)
    return unbroadcast(dq, q.shape), unbroadcast(dk, k.shape), unbroadcast(dv, v.shape)


def scaled_dot_product_attention(q, k, v, mask=None, scale: float | None = None):
    """Return ``(out (..., n, d_v), weights (..., n, m))``.

    ``q (..., n, d_k)``, ``k (..., m, d_k)``, ``v (..., m, d_v)``; the leading
    axes (batch, heads) broadcast.  ``mask``: boolean, True = may attend,
    ``(n, m)``, ``(m,)`` or one axis per score axis, e.g. ``(B, 1, m)`` against
    ``(B, n, m)`` scores or ``(B, 1, 1, m)`` against per-head ``(B, H, n, m)``
    (a three-axis mask against four-axis scores is refused).  A query whose
    keys are all masked gets zero weights and a zero output.  ``scale``
    defaults to ``1/sqrt(d_k)``; pass ``scale=1.0`` for unscaled dot-product
    attention (Luong's "dot" score).  Chapter 2.
    """
    return dot_product_attention(q, k, v, mask=mask, scale=scale, normalize=softmax)


def scaled_dot_product_attention_backward(dout, q, k, v, weights, scale: float | None = None):
    """Return ``(dq, dk, dv)`` with the shapes of ``q, k, v``.

    ``dout (..., n, d_v)`` is the gradient at the output; ``q (..., n, d_k)``,
    ``k (..., m, d_k)``, ``v (..., m, d_v)`` and ``scale`` are the forward's;
    ``weights (..., n, m)`` is the second output of the forward (masked entries
    are 0 there, so they receive no gradient and no mask is needed).
    Broadcast leading axes are summed back.  Chapter 2.
    """
    return dot_product_attention_backward(dout, q, k, v, weights, scale=scale,
                                          normalize_backward=softmax_backward)
