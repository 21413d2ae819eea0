r"""Self-attention: queries, keys and values all come from the same sequence.

Vaswani, Shazeer, Parmar, Uszkoreit, Jones, Gomez, Kaiser, Polosukhin (2017),
*Attention Is All You Need*.  One head, no output projection:

.. math::
    Q = X W_Q,\quad K = X W_K,\quad V = X W_V,\qquad
    O = \operatorname{softmax}\!\Bigl(\frac{Q K^\top}{\sqrt{d_k}} + \text{mask}\Bigr) V

Shapes: ``X (B, n, d_model)``, ``W_Q, W_K (d_model, d_k)``, ``W_V (d_model, d_v)``,
``Q, K (B, n, d_k)``, ``V (B, n, d_v)``, weights ``P (B, n, n)``, ``O (B, n, d_v)``.

Backward (Chapter 8): the SDPA backward gives ``dQ, dK, dV``; then
``dW_Q = X^T dQ``, ``dW_K = X^T dK``, ``dW_V = X^T dV`` (summed over batch and
positions) and, because ``X`` feeds all three projections,

.. math::
    dX = dQ\,W_Q^\top + dK\,W_K^\top + dV\,W_V^\top .

Without positional information the layer is permutation-equivariant: permuting
the rows of ``X`` permutes the rows of ``O`` the same way.
"""
from __future__ import annotations

import numpy as np

from ..nn.functional import causal_mask
from ..nn.module import Module, default_rng, xavier_uniform
from ..nn.validate import as_float_array, check_mask, shape_error
from .scaled_dot_product import scaled_dot_product_attention, scaled_dot_product_attention_backward

__all__ = ["self_attention", "self_attention_backward", "SelfAttention"]


def _check_x(x, d_model):
    x = as_float_array(x, "x")
    if x.ndim < 2 or x.shape[-1] != d_model:
        raise shape_error("x", f"(B, n, d_model={d_model})", x)
    if x.shape[-2] == 0:
        raise ValueError(f"x must hold at least one token (n >= 1), got shape {x.shape}")
    return x


def self_attention(x, W_q, W_k, W_v, mask=None):
    """Return ``(out (..., n, d_v), weights (..., n, n))`` for ``x (..., n, d_model)``.

    ``W_q, W_k (d_model, d_k)``, ``W_v (d_model, d_v)``; ``mask``: boolean,
    True = may attend, broadcastable to ``(..., n, n)`` (e.g. ``causal_mask(n)``).
    """
    W_q, W_k, W_v = (as_float_array(w, name) for w, name in ((W_q, "W_q"), (W_k, "W_k"), (W_v, "W_v")))
    x = _check_x(x, W_q.shape[0])
    if W_k.shape != W_q.shape:
        raise shape_error("W_k", str(W_q.shape), W_k)
    if W_v.ndim != 2 or W_v.shape[0] != W_q.shape[0]:
        raise shape_error("W_v", f"(d_model={W_q.shape[0]}, d_v)", W_v)
    q, k, v = x @ W_q, x @ W_k, x @ W_v                     # (..., n, d_k), (..., n, d_k), (..., n, d_v)
    return scaled_dot_product_attention(q, k, v, mask=mask)  # (..., n, d_v), (..., n, n)


def self_attention_backward(dout, x, W_q, W_k, W_v, weights):
    """Return ``(dx, dW_q, dW_k, dW_v)``; ``dx`` is the sum of the three projection paths.

    ``dout (..., n, d_v)``, ``x (..., n, d_model)``, ``weights (..., n, n)`` from
    the forward.  ``dx (..., n, d_model)``, ``dW_q, dW_k (d_model, d_k)``,
    ``dW_v (d_model, d_v)`` (summed over the batch and positions).  Chapter 8.
    """
    x = _check_x(x, W_q.shape[0])
    d_model = x.shape[-1]
    q, k, v = x @ W_q, x @ W_k, x @ W_v                     # recomputed: cheaper than caching three arrays
    dq, dk, dv = scaled_dot_product_attention_backward(dout, q, k, v, weights)
    x2 = x.reshape(-1, d_model)                             # (B*n, d_model)
    dW_q = x2.T @ dq.reshape(-1, dq.shape[-1])              # (d_model, d_k)
    dW_k = x2.T @ dk.reshape(-1, dk.shape[-1])              # (d_model, d_k)
    dW_v = x2.T @ dv.reshape(-1, dv.shape[-1])              # (d_model, d_v)
    dx = dq @ W_q.T + dk @ W_k.T + dv @ W_v.T               # (..., n, d_model): all three paths add
    return dx, dW_q, dW_k, dW_v


class SelfAttention(Module):
    """Single-head self-attention with parameters ``W_q, W_k (d_model, d_k)``, ``W_v (d_model, d_v)``.

    ``forward(x (B, n, d_model), mask=None, causal=False) -> (B, n, d_v)``; the
    weights of the last call are kept as ``.weights (B, n, n)``.  ``mask`` is
    boolean, broadcastable to ``(B, n, n)``, True = may attend; ``causal=True``
    additionally applies ``causal_mask(n)``.  ``backward(dout) -> dx``.
    """

    def __init__(self, d_model: int, d_k: int, d_v: int | None = None, *, rng=None) -> None:
        super().__init__()
        rng = default_rng(rng)
        self.d_model, self.d_k = int(d_model), int(d_k)
        self.d_v = self.d_k if d_v is None else int(d_v)
        self.add_param("W_q", xavier_uniform(rng, self.d_model, self.d_k))
        self.add_param("W_k", xavier_uniform(rng, self.d_model, self.d_k))
        self.add_param("W_v", xavier_uniform(rng, self.d_model, self.d_v))
        self.weights = None

    def forward(self, x, mask=None, causal: bool = False) -> np.ndarray:
        """``x (B, n, d_model)`` (or ``(n, d_model)``) -> ``(B, n, d_v)``.

        ``mask``: boolean, True = may attend, ``(n, n)``, ``(n,)`` or
        ``(B, n, n)`` (e.g. ``padding_mask(lengths, n)``, ``(B, 1, n)``);
        ``causal=True`` ANDs it with ``causal_mask(n)``.  ``.weights (B, n, n)``.
        Caches ``x`` and the weights.
        """
        x = _check_x(x, self.d_model)
        n = x.shape[-2]
        if mask is not None:
            mask = check_mask(mask, x.shape[:-2] + (n, n))   # boolean, (n, n) or (..., n, n), before combining
        if causal:
            cm = causal_mask(n)                              # (n, n)
            mask = cm if mask is None else np.logical_and(mask, cm)
        p = self.params
        out, weights = self_attention(x, p["W_q"], p["W_k"], p["W_v"], mask=mask)
        self.cache = (x, weights)
        self.weights = weights                               # (B, n, n)
        return out

    def backward(self, dout) -> np.ndarray:
        """``dout (B, n, d_v)`` -> ``dx (B, n, d_model)``, the sum of the Q, K and V paths.

        Adds ``dW_q, dW_k (d_model, d_k)`` and ``dW_v (d_model, d_v)`` into ``grads``.
        """
        x, weights = self.cache
        p = self.params
        dx, dW_q, dW_k, dW_v = self_attention_backward(dout, x, p["W_q"], p["W_k"], p["W_v"], weights)
        self.grads["W_q"] += dW_q
        self.grads["W_k"] += dW_k
        self.grads["W_v"] += dW_v
        return dx
