r"""Additive attention (Bahdanau, Cho, Bengio 2015, *Neural Machine Translation by
Jointly Learning to Align and Translate*, ICLR).

In the paper a decoder state :math:`s_{i-1}` scores every encoder annotation
:math:`h_j` with a one-hidden-layer network (the "alignment model")

.. math::
    e_{ij} = v_a^\top \tanh(W_a s_{i-1} + U_a h_j),\qquad
    \alpha_{ij} = \operatorname{softmax}_j(e_{ij}),\qquad
    c_i = \textstyle\sum_j \alpha_{ij} h_j

and the annotations :math:`h_j` are both the keys and the values.  Since
:math:`W_a s + U_a h = [W_a\;U_a]\,[s; h]`, the score is an MLP on the
concatenation of query and key.  We keep keys and values as separate arguments
(pass the same array twice to get the paper's model) and use row vectors:

============  =====================  ======================================
name          shape                  meaning
============  =====================  ======================================
``query``     ``(..., n, d_q)``      one row per query (decoder state)
``keys``      ``(..., m, d_k)``      one row per key (annotation)
``values``    ``(..., m, d_v)``      one row per value (annotation)
``W_q``       ``(d_q, d_a)``         :math:`W_a^\top`
``W_k``       ``(d_k, d_a)``         :math:`U_a^\top`
``w``         ``(d_a,)``             :math:`v_a` (the paper's score vector; ``v`` is kept for values)
``hidden``    ``(..., n, m, d_a)``   :math:`T`, the tanh tensor
``weights``   ``(..., n, m)``        :math:`P`, rows sum to 1
``out``       ``(..., n, d_v)``      :math:`O`, one context per query
============  =====================  ======================================

Forward (Chapter 3), vectorised over every (query, key) pair:

.. math::
    T = \tanh\bigl((Q W_q)[\dots, :, \text{None}, :] + (K W_k)[\dots, \text{None}, :, :]\bigr),\quad
    S = T w,\quad P = \operatorname{softmax}(S + \text{mask}),\quad O = P V

Backward (Chapter 3), with :math:`dP = dO\,V^\top` and
:math:`dS = P \odot (dP - \operatorname{rowsum}(dP \odot P))`:

.. math::
    dV = P^\top dO,\quad dw = \textstyle\sum_{b,i,j} dS_{bij} T_{bij},\quad
    dA = dS[\dots, \text{None}]\, w \odot (1 - T^2),

    d(QW_q) = \textstyle\sum_j dA,\quad d(KW_k) = \textstyle\sum_i dA,\quad
    dW_q = Q^\top d(QW_q),\ dW_k = K^\top d(KW_k),\
    dQ = d(QW_q) W_q^\top,\ dK = d(KW_k) W_k^\top

When keys and values are the same array (Bahdanau's annotations) its gradient
is ``dK + dV``: the key path and the value path add.  No :math:`1/\sqrt d`
scaling is needed: each score is bounded by :math:`\lVert w\rVert_1`.

``mask`` is boolean, broadcastable to ``(..., n, m)``, True = may attend.
Masked keys get weight 0 and no gradient; a fully masked query row gets zero
weights and a zero output.  The ``(..., n, m, d_a)`` tanh tensor is the
memory cost of this mechanism (dot-product scores need only ``(..., n, m)``).
"""
from __future__ import annotations

import numpy as np

from ..nn.functional import softmax, softmax_backward, unbroadcast
from ..nn.module import Module, default_rng, xavier_uniform
from ..nn.validate import as_float_array, check_mask, shape_error

__all__ = ["additive_scores", "additive_attention", "additive_attention_backward", "AdditiveAttention"]


# ---------------------------------------------------------------- checks
def _check_params(W_q, W_k, w):
    W_q, W_k, w = as_float_array(W_q, "W_q"), as_float_array(W_k, "W_k"), as_float_array(w, "w")
    if W_q.ndim != 2:
        raise shape_error("W_q", "(d_q, d_a)", W_q)
    d_a = W_q.shape[1]
    if W_k.ndim != 2 or W_k.shape[1] != d_a:
        raise shape_error("W_k", f"(d_k, d_a={d_a})", W_k)
    if w.shape != (d_a,):
        raise shape_error("w", f"(d_a={d_a},)", w)
    return W_q, W_k, w


def _check_qk(query, keys, W_q, W_k):
    query, keys = as_float_array(query, "query"), as_float_array(keys, "keys")
    d_q, d_k = W_q.shape[0], W_k.shape[0]
    if query.ndim < 2 or query.shape[-1] != d_q:
        raise shape_error("query", f"(..., n, d_q={d_q})", query)
    if keys.ndim < 2 or keys.shape[-1] != d_k:
        raise shape_error("keys", f"(..., m, d_k={d_k})", keys)
    return query, keys


def _check_values(values, keys):
    values = as_float_array(values, "values")
    m = keys.shape[-2]
    if values.ndim < 2 or values.shape[-2] != m:
        raise shape_error("values", f"(..., m={m}, d_v)", values)
    return values


def _lead(*arrays):
    try:
        return np.broadcast_shapes(*(a.shape[:-2] for a in arrays))
    except ValueError:
        shapes = ", ".join(str(a.shape) for a in arrays)
        raise ValueError(f"the leading (batch) axes of query, keys and values must broadcast, got {shapes}") from None


# ---------------------------------------------------------------- forward
def _hidden(query, keys, W_q, W_k):
    """The tanh tensor ``T (..., n, m, d_a)`` of every (query, key) pair."""
    q_proj = query @ W_q                                    # (..., n, d_q) @ (d_q, d_a) -> (..., n, d_a)
    k_proj = keys @ W_k                                     # (..., m, d_k) @ (d_k, d_a) -> (..., m, d_a)
    return np.tanh(q_proj[..., :, None, :] + k_proj[..., None, :, :])  # (..., n, 1, d_a) + (..., 1, m, d_a) -> (..., n, m, d_a)


def additive_scores(query, keys, W_q, W_k, w):
    """Alignment scores ``e (..., n, m)`` with ``e_ij = w . tanh(q_i W_q + k_j W_k)``.

    ``query (..., n, d_q)``, ``keys (..., m, d_k)``, ``W_q (d_q, d_a)``,
    ``W_k (d_k, d_a)``, ``w (d_a,)``.
    """
    W_q, W_k, w = _check_params(W_q, W_k, w)
    query, keys = _check_qk(query, keys, W_q, W_k)
    _lead(query, keys)
    return _hidden(query, keys, W_q, W_k) @ w               # (..., n, m, d_a) @ (d_a,) -> (..., n, m)


def additive_attention(query, keys, values, W_q, W_k, w, mask=None, return_hidden: bool = False):
    """Return ``(out (..., n, d_v), weights (..., n, m))``.

    ``query (..., n, d_q)``, ``keys (..., m, d_k)``, ``values (..., m, d_v)``
    (leading axes broadcast), ``W_q (d_q, d_a)``, ``W_k (d_k, d_a)``,
    ``w (d_a,)``.  ``mask``: boolean, True = may attend, broadcastable to
    ``(..., n, m)``.  With ``return_hidden=True`` also return the tanh tensor ``(..., n, m, d_a)``
    so that the backward does not recompute it.
    """
    W_q, W_k, w = _check_params(W_q, W_k, w)
    query, keys = _check_qk(query, keys, W_q, W_k)
    values = _check_values(values, keys)
    lead = _lead(query, keys, values)
    n, m = query.shape[-2], keys.shape[-2]
    if mask is not None:
        mask = check_mask(mask, lead + (n, m))
    hidden = _hidden(query, keys, W_q, W_k)                 # (..., n, m, d_a)
    scores = hidden @ w                                     # (..., n, m)
    weights = softmax(scores, axis=-1, mask=mask)           # (..., n, m); masked -> 0, fully masked row -> 0
    out = weights @ values                                  # (..., n, m) @ (..., m, d_v) -> (..., n, d_v)
    return (out, weights, hidden) if return_hidden else (out, weights)


# ---------------------------------------------------------------- backward
def additive_attention_backward(dout, query, keys, values, W_q, W_k, w, weights, hidden=None):
    """Return ``(dquery, dkeys, dvalues, dW_q, dW_k, dw)``, each shaped like its argument.

    ``dout (..., n, d_v)``; the inputs and parameters as in the forward;
    ``weights (..., n, m)`` (and optionally ``hidden (..., n, m, d_a)``) come
    from the forward; ``hidden`` is recomputed when not given.  Masked entries have weight 0 and therefore
    receive no gradient.  Broadcast leading axes are summed back.
    """
    W_q, W_k, w = _check_params(W_q, W_k, w)
    query, keys = _check_qk(query, keys, W_q, W_k)
    values = _check_values(values, keys)
    lead = _lead(query, keys, values)
    n, m, d_v, d_a = query.shape[-2], keys.shape[-2], values.shape[-1], w.shape[0]
    dout = as_float_array(dout, "dout")
    if dout.shape != lead + (n, d_v):
        raise shape_error("dout", str(lead + (n, d_v)), dout)
    if np.shape(weights) != lead + (n, m):
        raise shape_error("weights", str(lead + (n, m)), weights)
    if hidden is None:
        hidden = _hidden(query, keys, W_q, W_k)
    elif np.shape(hidden) != lead + (n, m, d_a):
        raise shape_error("hidden", str(lead + (n, m, d_a)), hidden)

    dvalues = np.swapaxes(weights, -1, -2) @ dout           # (..., m, n) @ (..., n, d_v) -> (..., m, d_v)
    dweights = dout @ np.swapaxes(values, -1, -2)           # (..., n, d_v) @ (..., d_v, m) -> (..., n, m)
    dscores = softmax_backward(dweights, weights)           # (..., n, m), zero where masked
    dw = dscores.reshape(-1) @ hidden.reshape(-1, d_a)      # sum over batch, i, j of dS_ij T_ij: (N,) @ (N, d_a) -> (d_a,)
    dpre = dscores[..., None] * w * (1.0 - hidden * hidden)  # (..., n, m, 1) * (d_a,) * (..., n, m, d_a)
    dq_proj = unbroadcast(dpre.sum(axis=-2), query.shape[:-1] + (d_a,))  # sum over keys j -> (..., n, d_a)
    dk_proj = unbroadcast(dpre.sum(axis=-3), keys.shape[:-1] + (d_a,))   # sum over queries i -> (..., m, d_a)
    dW_q = query.reshape(-1, query.shape[-1]).T @ dq_proj.reshape(-1, d_a)  # (d_q, N) @ (N, d_a) -> (d_q, d_a)
    dW_k = keys.reshape(-1, keys.shape[-1]).T @ dk_proj.reshape(-1, d_a)    # (d_k, N) @ (N, d_a) -> (d_k, d_a)
    dquery = dq_proj @ W_q.T                                # (..., n, d_a) @ (d_a, d_q) -> (..., n, d_q)
    dkeys = dk_proj @ W_k.T                                 # (..., m, d_a) @ (d_a, d_k) -> (..., m, d_k)
    return dquery, dkeys, unbroadcast(dvalues, values.shape), dW_q, dW_k, dw


# ---------------------------------------------------------------- module
class AdditiveAttention(Module):
    """Bahdanau's additive attention with parameters ``W_q (d_query, d_hidden)``,
    ``W_k (d_key, d_hidden)`` and ``w (d_hidden,)``.

    ``forward(query (B, n, d_query), keys (B, m, d_key), values (B, m, d_v), mask=None)``
    returns ``(B, n, d_v)`` and keeps the weights ``(B, n, m)`` in ``.weights``;
    ``backward(dout)`` adds into ``grads`` and returns ``(dquery, dkeys, dvalues)``.
    For the paper's model pass the annotations as both ``keys`` and ``values``
    and add the two gradients.
    """

    def __init__(self, d_query: int, d_key: int, d_hidden: int, *, rng: np.random.Generator | None = None):
        super().__init__()
        rng = default_rng(rng)
        self.d_query, self.d_key, self.d_hidden = int(d_query), int(d_key), int(d_hidden)
        self.add_param("W_q", xavier_uniform(rng, self.d_query, self.d_hidden))
        self.add_param("W_k", xavier_uniform(rng, self.d_key, self.d_hidden))
        self.add_param("w", xavier_uniform(rng, self.d_hidden, 1)[:, 0])
        self.weights = None

    def forward(self, query, keys, values, mask=None):
        """Additive attention of ``query (B, n, d_query)`` over ``keys (B, m, d_key)``.

        ``values (B, m, d_v)`` are averaged with the weights (pass the
        annotations as both ``keys`` and ``values`` for Bahdanau's model; any
        leading axes ``(..., n, d)`` that broadcast work too).  ``mask``:
        boolean, True = may attend, ``(n, m)``, ``(m,)`` or ``(B, n, m)`` (e.g.
        ``padding_mask(lengths, m)``, ``(B, 1, m)``); a fully masked query gets a
        zero output.  Returns ``out (B, n, d_v)``; ``.weights (B, n, m)``.  Caches
        the inputs, the weights and the tanh tensor ``(B, n, m, d_hidden)``.
        """
        p = self.params
        out, weights, hidden = additive_attention(query, keys, values, p["W_q"], p["W_k"], p["w"],
                                                  mask=mask, return_hidden=True)
        self.cache = (query, keys, values, weights, hidden)
        self.weights = weights
        return out

    def backward(self, dout):
        """``dout (B, n, d_v)`` -> ``(dquery (B, n, d_query), dkeys (B, m, d_key), dvalues (B, m, d_v))``.

        Adds ``dW_q (d_query, d_hidden)``, ``dW_k (d_key, d_hidden)`` and
        ``dw (d_hidden,)`` into ``grads``.  When the same array was passed as
        keys and values its gradient is ``dkeys + dvalues``.  Chapter 3.
        """
        if self.cache is None:
            raise RuntimeError("AdditiveAttention.backward called before forward")
        query, keys, values, weights, hidden = self.cache
        p = self.params
        dquery, dkeys, dvalues, dW_q, dW_k, dw = additive_attention_backward(
            dout, query, keys, values, p["W_q"], p["W_k"], p["w"], weights, hidden)
        self.grads["W_q"] += dW_q
        self.grads["W_k"] += dW_k
        self.grads["w"] += dw
        return dquery, dkeys, dvalues
