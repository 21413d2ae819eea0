r"""Global attention (Luong, Pham & Manning 2015, *Effective Approaches to
Attention-based Neural Machine Translation*, EMNLP; Chapter 6).

"Global" means every source position is attended (not Longformer's global
tokens).  Inputs: the current decoder state ``h_t (B, d)`` -- computed by the
RNN *before* attention, unlike Bahdanau's ``s_{i-1}`` -- and the source states
``source (B, S, d)`` (Luong's :math:`\bar h_s`).  Row form, weights stored
``(d_in, d_out)``:

.. math::
    \operatorname{score}(h_t, \bar h_s) =
    \begin{cases}
      h_t^\top \bar h_s & \text{dot}\\
      h_t^\top W_a \bar h_s & \text{general},\ W_a \in \mathbb R^{d\times d}\\
      v_a^\top \tanh(W_a [h_t; \bar h_s]) & \text{concat},\ W_a \in \mathbb R^{2d\times d_a},\ v_a \in \mathbb R^{d_a}
    \end{cases}

.. math::
    a_t = \operatorname{softmax}_s(\operatorname{score}) \in \mathbb R^{B\times S},\qquad
    c_t = \textstyle\sum_s a_t(s)\,\bar h_s \in \mathbb R^{B\times d},\qquad
    \tilde h_t = \tanh([c_t; h_t]\, W_c),\ W_c \in \mathbb R^{2d\times d}

(the paper's global attention; its location-based score needs a fixed maximum source
length and is left out).  The output layer ``softmax(W_s h̃_t)`` and input
feeding belong to the decoder that uses this module.

Backward (Chapter 6): ``dpre = dh̃ ⊙ (1 - h̃²)``, ``dW_c = [c; h]ᵀ dpre``,
``[dc; dh] = dpre W_cᵀ``; then ``da = source · dc`` (weighted-sum backward), ``dsource += a dc``,
softmax backward (Chapter 2) gives ``dscore``, and each score sends ``dscore`` into
``h_t``, ``source`` and its own parameters.
"""
from __future__ import annotations

import numpy as np

from ..nn.functional import softmax, softmax_backward
from ..nn.module import Module, default_rng, xavier_uniform
from ..nn.validate import as_float_array, check_mask, shape_error

SCORES = ("dot", "general", "concat")


# ---------------------------------------------------------------- score functions
def luong_scores(h_t, source, method: str, W_a=None, v_a=None):
    """Scores ``(B, S)`` of ``h_t (B, d)`` against ``source (B, S, d)``; returns ``(scores, cache)``.

    ``method``: ``"dot"``, ``"general"`` (``W_a (d, d)``) or ``"concat"``
    (``W_a (2d, d_a)``, ``v_a (d_a,)``).  ``cache`` is None, ``h_t W_a (B, d)``
    or the tanh activations ``(B, S, d_a)``.
    """
    if method == "dot":
        scores = np.einsum("bsd,bd->bs", source, h_t)      # (B, S, d) . (B, d) -> (B, S)
        return scores, None
    if method == "general":
        q = h_t @ W_a                                      # (B, d) @ (d, d) -> (B, d)
        scores = np.einsum("bsd,bd->bs", source, q)        # (B, S)
        return scores, q
    d = h_t.shape[-1]
    T = np.tanh((h_t @ W_a[:d])[:, None, :] + source @ W_a[d:])  # (B, 1, d_a) + (B, S, d_a) -> (B, S, d_a)
    scores = T @ v_a                                       # (B, S)
    return scores, T


def luong_scores_backward(dscores, h_t, source, method: str, W_a=None, v_a=None, cache=None):
    """Backward of :func:`luong_scores`: ``(dh_t (B, d), dsource (B, S, d))`` then one gradient per parameter.

    ``dscores (B, S)``; ``h_t (B, d)``, ``source (B, S, d)``, ``method`` and the
    parameters as in the forward; ``cache``, the forward's second output
    (needed by ``"general"`` and ``"concat"``).  Returns ``(dh_t, dsource)`` for
    dot, ``(dh_t, dsource, dW_a)`` for general and ``(dh_t, dsource, dW_a, dv_a)``
    for concat, each gradient of its argument's shape.
    """
    if method == "dot":
        dh = np.einsum("bs,bsd->bd", dscores, source)      # (B, d)
        dsource = dscores[:, :, None] * h_t[:, None, :]    # (B, S, d)
        return dh, dsource
    if cache is None:
        raise ValueError(f"cache (the second output of luong_scores) is needed for method {method!r}")
    if method == "general":
        q = cache
        dq = np.einsum("bs,bsd->bd", dscores, source)      # (B, d)
        dsource = dscores[:, :, None] * q[:, None, :]      # (B, S, d) = ds_s W_aᵀ h_t
        return dq @ W_a.T, dsource, h_t.T @ dq
    d = h_t.shape[-1]
    T = cache
    dv = np.einsum("bs,bsk->k", dscores, T)                # (d_a,)
    dpre = dscores[:, :, None] * v_a * (1.0 - T * T)       # (B, S, d_a)
    dpre_h = dpre.sum(axis=1)                              # (B, d_a): h_t is shared by every s
    dW = np.concatenate([h_t.T @ dpre_h,
                         source.reshape(-1, d).T @ dpre.reshape(-1, dpre.shape[-1])], axis=0)  # (2d, d_a)
    return dpre_h @ W_a[:d].T, dpre @ W_a[d:].T, dW, dv


# ---------------------------------------------------------------- shared checks and output layer
def check_step_inputs(h_t, source, d, mask):
    """Validate ``h_t (B, d)``, ``source (B, S, d)`` and an optional ``mask (B, S)``."""
    h_t, source = as_float_array(h_t, "h_t"), as_float_array(source, "source")
    if h_t.ndim != 2 or h_t.shape[1] != d:
        raise shape_error("h_t", f"(B, d={d})", h_t)
    B = h_t.shape[0]
    if source.ndim != 3 or source.shape[0] != B or source.shape[2] != d:
        raise shape_error("source", f"(B={B}, S, d={d})", source)
    if mask is not None:
        mask = np.broadcast_to(check_mask(mask, source.shape[:2]), source.shape[:2])  # (B, S)
    return h_t, source, mask


def attentional_hidden(context, h_t, W_c):
    """``h̃_t = tanh([c_t; h_t] W_c)``: ``(B, d), (B, d), (2d, d) -> (B, d)``."""
    return np.tanh(np.concatenate([context, h_t], axis=-1) @ W_c)   # (B, 2d) @ (2d, d) -> (B, d)


def attentional_hidden_backward(dh_tilde, context, h_t, W_c, h_tilde):
    """Backward of :func:`attentional_hidden`: ``-> (dcontext (B, d), dh_t (B, d), dW_c (2d, d))``.

    ``dh_tilde (B, d)`` upstream gradient; ``context``, ``h_t (B, d)`` and
    ``W_c (2d, d)`` as in the forward; ``h_tilde (B, d)`` the forward's output.
    """
    dpre = dh_tilde * (1.0 - h_tilde * h_tilde)            # (B, d)
    ch = np.concatenate([context, h_t], axis=-1)           # (B, 2d)
    dch = dpre @ W_c.T                                     # (B, 2d)
    d = h_t.shape[-1]
    return dch[:, :d], dch[:, d:], ch.T @ dpre


def init_score_params(module, method, d, d_att, rng):
    """Register the score's parameters on ``module``: ``W_a (d, d)`` for general, ``W_a (2d, d_att)`` and ``v_a (d_att,)`` for concat."""
    if method not in SCORES:
        raise ValueError(f"score must be one of {SCORES}, got {method!r}")
    if method == "general":
        module.add_param("W_a", xavier_uniform(rng, d, d))
    elif method == "concat":
        module.add_param("W_a", xavier_uniform(rng, 2 * d, d_att))
        module.add_param("v_a", rng.uniform(-1.0, 1.0, size=d_att) / np.sqrt(d_att))


def output_backward(dh_tilde, weights, source, h_t, W_c, context, h_tilde):
    """Backward of the output step shared by global and local attention.

    Its forward takes ``weights (B, S)``, ``source (B, S, d)``, ``h_t (B, d)``
    and ``W_c (2d, d)`` and computes ``context = Σ_s a_s h̄_s (B, d)`` and then
    ``h_tilde = tanh([c; h_t] W_c) (B, d)``; ``dh_tilde (B, d)`` is the upstream
    gradient.  Returns ``(dweights (B, S), dsource (B, S, d) value path,
    dh_t (B, d) from the mix, dW_c (2d, d))``.
    """
    dcontext, dh, dW_c = attentional_hidden_backward(dh_tilde, context, h_t, W_c, h_tilde)
    dweights = np.einsum("bd,bsd->bs", dcontext, source)               # (B, S)  weighted-sum backward
    dsource = weights[:, :, None] * dcontext[:, None, :]               # (B, S, d) value path
    return dweights, dsource, dh, dW_c


class GlobalAttention(Module):
    """Luong global attention with score ``"dot"``, ``"general"`` or ``"concat"``.

    Params: ``W_c (2d, d)``; ``W_a (d, d)`` for general; ``W_a (2d, d_att)`` and
    ``v_a (d_att,)`` for concat (``d_att`` defaults to ``d``).

    ``forward(h_t (B, d), source (B, S, d), mask=None (B, S)) -> h̃_t (B, d)``;
    ``.weights (B, S)`` (zero at masked positions), ``.context (B, d)``.
    ``backward(dh_tilde) -> (dh_t, dsource)``.
    """

    def __init__(self, d: int, score: str = "dot", d_att: int | None = None, *, rng=None) -> None:
        super().__init__()
        rng = default_rng(rng)
        self.d, self.score = int(d), score
        init_score_params(self, score, self.d, int(d_att or d), rng)
        self.add_param("W_c", xavier_uniform(rng, 2 * self.d, self.d))
        self.weights = self.context = None

    def forward(self, h_t, source, mask=None) -> np.ndarray:
        """One decoder step: ``h_t (B, d)`` attends over ``source (B, S, d)`` -> ``h̃_t (B, d)``.

        ``mask``: boolean, True = may attend, ``(B, S)`` or ``(S,)`` (source
        padding); a fully masked row gets a zero context.  ``.weights (B, S)``,
        ``.context (B, d)``.  Caches the inputs, the score activations, the
        weights, the context and ``h̃_t``.
        """
        h_t, source, mask = check_step_inputs(h_t, source, self.d, mask)
        p = self.params
        scores, score_cache = luong_scores(h_t, source, self.score, p.get("W_a"), p.get("v_a"))  # (B, S)
        weights = softmax(scores, axis=-1, mask=mask)                      # (B, S); masked -> 0
        context = np.einsum("bs,bsd->bd", weights, source)                 # (B, S) . (B, S, d) -> (B, d)
        h_tilde = attentional_hidden(context, h_t, p["W_c"])               # (B, d)
        self.weights, self.context = weights, context
        self.cache = (h_t, source, score_cache, weights, context, h_tilde)
        return h_tilde

    def backward(self, dh_tilde):
        """``dh_tilde (B, d)`` -> ``(dh_t (B, d), dsource (B, S, d))``.

        ``dsource`` adds the value path and the score path.  Adds ``dW_c (2d, d)``
        and the score's ``dW_a`` (and ``dv_a``) into ``grads``.  Chapter 6.
        """
        h_t, source, score_cache, weights, context, h_tilde = self.cache
        dh_tilde = as_float_array(dh_tilde, "dh_tilde")
        if dh_tilde.shape != h_tilde.shape:
            raise shape_error("dh_tilde", f"(B={h_tilde.shape[0]}, d={self.d})", dh_tilde)
        p = self.params
        dweights, dsource, dh, dW_c = output_backward(dh_tilde, weights, source, h_t, p["W_c"], context, h_tilde)
        self.grads["W_c"] += dW_c
        dscores = softmax_backward(dweights, weights)                      # (B, S); masked -> 0
        dh_s, dsource_s, *dparams = luong_scores_backward(dscores, h_t, source, self.score,
                                                          p.get("W_a"), p.get("v_a"), score_cache)
        for name, g in zip(("W_a", "v_a"), dparams):                       # the score's parameters, if any
            self.grads[name] += g
        return dh + dh_s, dsource + dsource_s
