r"""Stochastic hard attention, REINFORCE and the Gumbel-softmax relaxation.

Papers: Xu et al. (ICML 2015), *Show, Attend and Tell*, section 4.1 ("stochastic
hard attention"); Williams (1992), *Simple Statistical Gradient-Following
Algorithms for Connectionist Reinforcement Learning* (REINFORCE); Bengio,
Leonard, Courville (2013) (straight-through); Jang, Gu, Poole (ICLR 2017),
*Categorical Reparameterization with Gumbel-Softmax*, and Maddison, Mnih, Teh
(ICLR 2017), *The Concrete Distribution*.  Chapter 5.

The scores are those of soft attention (``soft.py``, Chapter 4), without the gate:

.. math::
    e_i = w^\top\tanh(W_a a_i + W_h h + b)\ (B, L),\qquad \alpha = \operatorname{softmax}(e),\qquad
    s \sim \operatorname{Categorical}(\alpha)\ (B,),\qquad z = a_s\ (B, D)

``z`` is a sample whose *expectation* is the soft context ``sum_i alpha_i a_i``.

Backward has two parts (Chapter 5):

* pathwise: ``dz`` flows into the chosen feature ``a_s`` only; the one-hot
  selection is constant, so nothing reaches the scoring network this way;
* score function (REINFORCE): ``d log alpha_s / d e_j = 1[j = s] - alpha_j``.  For
  a reward ``R`` with baseline ``b`` and weight ``lambda_r`` the caller passes the
  *advantage* ``A = lambda_r (R - b)`` and, in the minimisation convention of
  this library (we minimise ``-A log alpha_s``),

  .. math::  de = -A\,(\operatorname{onehot}(s) - \alpha)

  which is backpropagated through the scoring network exactly as in soft attention.  The
  estimator is unbiased for any baseline that does not depend on the sample.
  An optional entropy bonus ``lambda_e H(alpha)`` adds ``-lambda_e dH/de`` with
  ``dH/de_j = -alpha_j (log alpha_j + H)``.

Gumbel-softmax: ``y = softmax((e + g) / tau)``, ``g = -log(-log u)``,
``u ~ U(0, 1)``; ``de = softmax_backward(dy, y) / tau``.  ``argmax(e + g)`` is an
exact sample of ``Categorical(softmax(e))``; the straight-through variant
(``hard=True``) returns ``onehot(argmax y)`` forward and uses the gradient of
the relaxed ``y`` backward (biased, like every relaxation with ``tau > 0``).
"""
from __future__ import annotations

import numpy as np

from ..nn.functional import softmax, softmax_backward
from ..nn.module import Module, default_rng, xavier_uniform
from ..nn.validate import as_float_array, check_int_array, check_mask, shape_error
from .soft import additive_scores, additive_scores_backward, check_features_state


# ------------------------------------------------------------------ sampling and the score function
def sample_categorical(weights, rng) -> np.ndarray:
    """One draw per row of ``weights (B, L)`` by inverting the CDF; ``-1`` for an all-zero row.

    Locations with weight 0 (masked) are never drawn: the CDF does not rise there.
    ``rng`` must be a ``np.random.Generator``: randomness only through an explicit rng.
    """
    if not isinstance(rng, np.random.Generator):
        raise ValueError("rng must be a numpy.random.Generator (randomness only through an explicit rng, "
                         f"e.g. np.random.default_rng(0)), got {type(rng).__name__}")
    cdf = np.cumsum(weights, axis=-1)                      # (B, L), last entry = row total (1 or 0)
    u = rng.random(weights.shape[:-1]) * cdf[..., -1]      # (B,) uniform on [0, total)
    sample = np.argmax(cdf > u[..., None], axis=-1)        # (B,) first index whose CDF passes u
    return np.where(cdf[..., -1] > 0, sample, -1)


def reinforce_logit_gradient(weights, sample, advantage) -> np.ndarray:
    r"""Score-function gradient of the loss ``-A log alpha_s`` w.r.t. the logits: ``-A (onehot(s) - alpha)``.

    ``weights (..., L)`` are ``alpha``, ``sample (...)`` integer locations (``-1`` =
    no sample, zero gradient), ``advantage`` broadcasts to ``(...)``.  Averaged over
    samples ``s ~ alpha`` with ``A = r_s``, this estimates ``-grad_e E[r]``.
    """
    weights = as_float_array(weights, "weights")
    sample = check_int_array(sample, "sample", expected=f"{weights.shape[:-1]}")
    if sample.shape != weights.shape[:-1]:
        raise shape_error("sample", str(weights.shape[:-1]), sample)
    L = weights.shape[-1]
    onehot = (np.arange(L) == sample[..., None]).astype(weights.dtype)      # (..., L); all zero for -1
    valid = (sample >= 0)[..., None]                                        # (..., 1)
    advantage = np.broadcast_to(np.asarray(advantage, dtype=weights.dtype), sample.shape)
    return np.where(valid, -advantage[..., None] * (onehot - weights), 0.0).astype(weights.dtype)


def entropy_logit_gradient(weights) -> np.ndarray:
    """``dH/de`` for ``H = -sum_j alpha_j log alpha_j``, ``alpha = softmax(e)``: ``-alpha (log alpha + H)``.

    ``weights (..., L)`` are ``alpha``; returns ``dH/de (..., L)``.  Masked
    entries (``alpha = 0``) get 0.
    """
    weights = as_float_array(weights, "weights")
    positive = weights > 0
    log_w = np.log(np.where(positive, weights, 1.0))                        # (..., L), 0 where alpha = 0
    H = -np.sum(weights * log_w, axis=-1, keepdims=True)                    # (..., 1)
    return np.where(positive, -weights * (log_w + H), 0.0)


# ------------------------------------------------------------------ Gumbel-softmax
def gumbel_softmax(logits, tau: float, rng, hard: bool = False, mask=None):
    """Relaxed categorical sample ``softmax((logits + g) / tau)`` along the last axis.

    Returns ``(y, y_soft)``: ``y_soft`` is the relaxed sample (needed by the
    backward), ``(..., L)`` like ``logits (..., L)``; ``y`` equals it, or with
    ``hard=True`` is ``onehot(argmax y_soft)`` (straight-through).  ``mask`` (True = allowed) broadcasts to ``logits``;
    masked positions get zero weight and are never the argmax.
    """
    logits = as_float_array(logits, "logits")
    if not tau > 0:
        raise ValueError(f"tau must be positive, got {tau!r}")
    if not isinstance(rng, np.random.Generator):
        raise ValueError("rng must be a numpy.random.Generator (randomness only through an explicit rng, "
                         f"e.g. np.random.default_rng(0)), got {type(rng).__name__}")
    g = rng.gumbel(size=logits.shape).astype(logits.dtype)                  # (..., L) finite Gumbel(0, 1) noise
    y_soft = softmax((logits + g) * (1.0 / float(tau)), axis=-1, mask=mask) # (..., L)
    if not hard:
        return y_soft, y_soft
    index = np.argmax(y_soft, axis=-1)                                      # (...)
    any_allowed = np.sum(y_soft, axis=-1) > 0                               # fully masked row -> zeros
    y = ((np.arange(logits.shape[-1]) == index[..., None]) & any_allowed[..., None]).astype(logits.dtype)
    return y, y_soft


def gumbel_softmax_backward(dy, y_soft, tau: float) -> np.ndarray:
    """``dlogits = softmax_backward(dy, y_soft) / tau`` (straight-through when the forward was hard).

    ``dy (..., L)`` is the gradient at ``y``; ``y_soft (..., L)`` the forward's
    relaxed sample; returns ``dlogits (..., L)``.
    """
    dy = as_float_array(dy, "dy")
    if dy.shape != np.shape(y_soft):
        raise shape_error("dy", str(np.shape(y_soft)), dy)
    return softmax_backward(dy, y_soft) * (1.0 / float(tau))


# ------------------------------------------------------------------ module
class HardAttention(Module):
    """Xu et al.'s stochastic hard attention: pick one annotation vector per example.

    Parameters ``W_a (d_feature, d_hidden)``, ``W_h (d_state, d_hidden)``,
    ``b (d_hidden,)``, ``w (d_hidden,)``.  After ``forward``: ``.weights (B, L)``
    (alpha) and ``.sample (B,)`` (``-1`` for a fully masked row, whose context is 0).
    """

    def __init__(self, d_feature: int, d_state: int, d_hidden: int, *, rng=None) -> None:
        super().__init__()
        rng = default_rng(rng)
        self.d_feature, self.d_state, self.d_hidden = int(d_feature), int(d_state), int(d_hidden)
        self.add_param("W_a", xavier_uniform(rng, self.d_feature, self.d_hidden))
        self.add_param("W_h", xavier_uniform(rng, self.d_state, self.d_hidden))
        self.add_param("b", np.zeros(self.d_hidden))
        self.add_param("w", xavier_uniform(rng, self.d_hidden, 1)[:, 0])
        self.weights = None
        self.sample = None

    def forward(self, features, state, rng, mask=None, sample=None) -> np.ndarray:
        """``features (B, L, D)``, ``state (B, d_state)`` -> ``features[b, sample[b]]`` ``(B, D)``.

        ``rng`` draws the sample.  Passing ``sample (B,)`` freezes it instead
        (gradient checks; replaying a step); it must not point at a masked location.
        ``mask``: boolean, True = may attend, ``(B, L)`` or ``(L,)``; a fully
        masked row gets sample ``-1`` and a zero output.  ``.weights (B, L)``,
        ``.sample (B,)``.  Caches the inputs, the tanh activations
        ``(B, L, d_hidden)``, the weights and the sample.
        """
        features, state, mask = check_features_state(features, state, self.d_feature, self.d_state, mask)
        B, L, _ = features.shape
        e, T = additive_scores(features, state, self.params["W_a"], self.params["W_h"],
                               self.params["b"], self.params["w"])          # (B, L), (B, L, d_a)
        weights = softmax(e, axis=-1, mask=mask)                            # (B, L)
        if sample is None:
            sample = sample_categorical(weights, rng)                       # (B,)
        else:
            sample = check_int_array(sample, "sample", expected=f"(B={B},)")
            if sample.shape != (B,) or sample.min(initial=0) < -1 or sample.max(initial=0) >= L:
                raise ValueError(f"sample must have shape (B={B},) with entries in [-1, {L}), got {sample.tolist()}")
            if np.any((sample >= 0) & (np.take_along_axis(weights, np.maximum(sample, 0)[:, None], 1)[:, 0] == 0)):
                raise ValueError("sample must not select a masked location")
        valid = sample >= 0                                                 # (B,)
        context = features[np.arange(B), np.maximum(sample, 0)] * valid[:, None]   # (B, D) gather a_s
        self.weights, self.sample = weights, sample
        self.cache = (features, state, T, weights, sample)
        return context

    def backward(self, dcontext, advantage, entropy: float = 0.0):
        """Pathwise + score-function gradients; returns ``(dfeatures, dstate)``.

        ``dcontext (B, D)`` is the gradient at the output; ``advantage`` (scalar
        or ``(B,)``) is ``lambda_r (R - b)`` per example; ``entropy`` is the
        weight ``lambda_e`` of an entropy bonus (maximised).  Returns
        ``dfeatures (B, L, D)`` (pathwise into the chosen row + score-function
        path through the scores) and ``dstate (B, d_state)``; adds ``dW_a``,
        ``dW_h``, ``db``, ``dw`` into ``grads``.  Chapter 5.
        """
        features, state, T, weights, sample = self.cache
        B, L, D = features.shape
        dcontext = as_float_array(dcontext, "dcontext")
        if dcontext.shape != (B, D):
            raise shape_error("dcontext", f"(B={B}, D={D})", dcontext)
        advantage = np.asarray(advantage, dtype=features.dtype)
        if advantage.ndim > 1 or advantage.size not in (1, B):
            raise shape_error("advantage", f"() or (B={B},)", advantage)
        valid = sample >= 0
        # (i) pathwise: only the chosen annotation vector receives dcontext
        dfeatures = np.zeros_like(features)                                 # (B, L, D)
        dfeatures[np.arange(B), np.maximum(sample, 0)] += dcontext * valid[:, None]
        # (ii) score function into the logits, then back through the scoring MLP as in soft attention
        de = reinforce_logit_gradient(weights, sample, advantage.reshape(-1) if advantage.ndim else advantage)
        if entropy:
            de = de - float(entropy) * entropy_logit_gradient(weights)      # loss -= lambda_e H
        dfeat_key, dstate, dW_a, dW_h, db, dw = additive_scores_backward(
            de, features, state, self.params["W_a"], self.params["W_h"], self.params["w"], T)
        for name, g in (("W_a", dW_a), ("W_h", dW_h), ("b", db), ("w", dw)):
            self.grads[name] += g
        return dfeatures + dfeat_key, dstate
