r"""Cross (encoder-decoder) attention: queries from one sequence, keys and values from another.

Bahdanau, Cho, Bengio (2015), *Neural Machine Translation by Jointly Learning to
Align and Translate* (decoder-to-source attention); Vaswani et al. (2017),
*Attention Is All You Need* ("encoder-decoder attention").  One head:

.. math::
    Q = Y W_Q,\quad K = E W_K,\quad V = E W_V,\qquad
    O = \operatorname{softmax}\!\Bigl(\frac{Q K^\top}{\sqrt{d_k}} + \text{PadMask}_{src}\Bigr) V

Shapes: decoder states ``Y = x (B, n, d_model)``, encoder memory
``E = context (B, m, d_context)``, ``W_Q (d_model, d_k)``, ``W_K (d_context, d_k)``,
``W_V (d_context, d_v)``, weights ``(B, n, m)``, ``O (B, n, d_v)``.  Only the
source padding mask applies (no causal mask over the source): build it with
``padding_mask(source_lengths, m)`` of shape ``(B, 1, m)``.

Backward (Chapter 10): as self-attention, but the gradient splits by source,

.. math::
    dY = dQ\,W_Q^\top,\qquad dE = dK\,W_K^\top + dV\,W_V^\top .

In a stacked decoder every layer reads the same ``E``: the caller adds the
``dE`` of all layers.
"""
from __future__ import annotations

import numpy as np

from ..nn.module import Module, accepts_unbatched, default_rng, xavier_uniform
from ..nn.validate import as_float_array, shape_error
from .scaled_dot_product import scaled_dot_product_attention, scaled_dot_product_attention_backward

__all__ = ["cross_attention", "cross_attention_backward", "CrossAttention"]


def _check(x, context, W_q, W_k, W_v):
    W_q, W_k, W_v = (as_float_array(w, name) for w, name in ((W_q, "W_q"), (W_k, "W_k"), (W_v, "W_v")))
    x, context = as_float_array(x, "x"), as_float_array(context, "context")
    if x.ndim < 2 or x.shape[-1] != W_q.shape[0]:
        raise shape_error("x", f"(B, n, d_model={W_q.shape[0]})", x)
    lead = x.shape[:-2]
    broadcasts = context.ndim == x.ndim and all(c in (1, b) for c, b in zip(context.shape[:-2], lead))
    if not broadcasts or context.shape[-1] != W_k.shape[0]:
        lead = ", ".join(f"{s} or 1" for s in lead)
        raise shape_error("context", f"({lead}{', ' if lead else ''}m, d_context={W_k.shape[0]})", context)
    return x, context, W_q, W_k, W_v


def cross_attention(x, context, W_q, W_k, W_v, mask=None):
    """Return ``(out (..., n, d_v), weights (..., n, m))``.

    ``x (..., n, d_model)`` (decoder side, queries), ``context (..., m, d_context)``
    (encoder side, keys and values) with the same leading axes, or size 1 where
    one context is shared (``(1, m, d_context)`` against ``x (B, n, d_model)``);
    ``W_q (d_model, d_k)``, ``W_k (d_context, d_k)``, ``W_v (d_context, d_v)``.
    ``mask``: boolean, True = may attend, broadcastable to ``(..., n, m)``,
    typically the source padding mask ``padding_mask(lengths, m)`` ``(B, 1, m)``.
    """
    x, context, W_q, W_k, W_v = _check(x, context, W_q, W_k, W_v)
    q = x @ W_q                                               # (..., n, d_k)
    k, v = context @ W_k, context @ W_v                       # (..., m, d_k), (..., m, d_v)
    return scaled_dot_product_attention(q, k, v, mask=mask)   # (..., n, d_v), (..., n, m)


def cross_attention_backward(dout, x, context, W_q, W_k, W_v, weights):
    """Return ``(dx, dcontext, dW_q, dW_k, dW_v)``, each shaped like its argument.

    ``dout (..., n, d_v)``; ``x (..., n, d_model)``, ``context (..., m, d_context)``
    and the weights as in the forward; ``weights (..., n, m)`` is the forward's
    second output (the projections are recomputed).  ``dcontext (..., m, d_context)``
    is the sum of the key and value paths, summed back over the axes where a
    shared context was broadcast.
    """
    x, context, W_q, W_k, W_v = _check(x, context, W_q, W_k, W_v)
    q, k, v = x @ W_q, context @ W_k, context @ W_v          # recomputed projections
    dq, dk, dv = scaled_dot_product_attention_backward(dout, q, k, v, weights)
    x2 = x.reshape(-1, x.shape[-1])                           # (B*n, d_model)
    c2 = context.reshape(-1, context.shape[-1])               # (B*m, d_context)
    dW_q = x2.T @ dq.reshape(-1, dq.shape[-1])                # (d_model, d_k)
    dW_k = c2.T @ dk.reshape(-1, dk.shape[-1])                # (d_context, d_k)
    dW_v = c2.T @ dv.reshape(-1, dv.shape[-1])                # (d_context, d_v)
    dx = dq @ W_q.T                                           # (..., n, d_model)
    # dk, dv come back summed over a shared context's batch (SDPA un-broadcasts), so dcontext has its shape
    dcontext = dk @ W_k.T + dv @ W_v.T                        # (..., m, d_context): both paths add
    return dx, dcontext, dW_q, dW_k, dW_v


class CrossAttention(Module):
    """Single-head cross-attention, params ``W_q (d_model, d_k)``, ``W_k (d_context, d_k)``, ``W_v (d_context, d_v)``.

    ``forward(x (B, n, d_model), context (B, m, d_context), mask=None) -> (B, n, d_v)``;
    ``.weights (B, n, m)``; ``backward(dout) -> (dx, dcontext)``.  Unbatched
    ``x (n, d_model)``, ``context (m, d_context)`` give ``(n, d_v)``; a
    ``context (1, m, d_context)`` is shared by every example of the batch.
    """

    def __init__(self, d_model: int, d_context: int, d_k: int, d_v: int | None = None, *, rng=None) -> None:
        super().__init__()
        rng = default_rng(rng)
        self.d_model, self.d_context, self.d_k = int(d_model), int(d_context), int(d_k)
        self.d_v = self.d_k if d_v is None else int(d_v)
        self.add_param("W_q", xavier_uniform(rng, self.d_model, self.d_k))
        self.add_param("W_k", xavier_uniform(rng, self.d_context, self.d_k))
        self.add_param("W_v", xavier_uniform(rng, self.d_context, self.d_v))
        self.weights = None

    @accepts_unbatched("x", "context")
    def forward(self, x, context, mask=None) -> np.ndarray:
        """``x (B, n, d_model)`` attends over ``context (B, m, d_context)`` -> ``(B, n, d_v)``.

        ``mask``: boolean, True = may attend, ``(n, m)``, ``(m,)`` or
        ``(B, n, m)`` (e.g. the source padding mask ``(B, 1, m)``); no causal
        mask applies to the source.  ``.weights (B, n, m)``.  Caches ``x``,
        ``context`` and the weights.
        """
        p = self.params
        out, weights = cross_attention(x, context, p["W_q"], p["W_k"], p["W_v"], mask=mask)
        self.cache = (np.asarray(x), np.asarray(context), weights)
        self.weights = weights                                # (B, n, m)
        return out

    def backward(self, dout):
        """``dout (B, n, d_v)`` -> ``(dx (B, n, d_model), dcontext (B, m, d_context))``.

        Adds ``dW_q``, ``dW_k``, ``dW_v`` into ``grads``.  In a stacked decoder
        every layer reads the same ``context``: add the ``dcontext`` of all layers.
        """
        x, context, weights = self.cache
        p = self.params
        dx, dcontext, dW_q, dW_k, dW_v = cross_attention_backward(
            dout, x, context, p["W_q"], p["W_k"], p["W_v"], weights)
        self.grads["W_q"] += dW_q
        self.grads["W_k"] += dW_k
        self.grads["W_v"] += dW_v
        return dx, dcontext
