r"""Local attention (Luong, Pham & Manning 2015, *Effective Approaches to
Attention-based Neural Machine Translation*, EMNLP; Chapter 7).

A decoder state ``h_t (B, d)`` attends only to the source positions
``s`` (0-based array indices ``0..S-1``) in a window ``|s - p_t| <= D`` around
an aligned position ``p_t``; ``D = window``, ``σ = D / 2``.

local-m (``mode="monotonic"``): ``p_t = t`` and

.. math:: a_t(s) = \operatorname{softmax}_{s\in\text{window}}\bigl(\operatorname{score}(h_t, \bar h_s)\bigr)

local-p (``mode="predictive"``): with ``W_p (d, d_p)``, ``v_p (d_p,)``,

.. math::
    p_t = S\,\sigma\bigl(v_p^\top \tanh(W_p^\top h_t)\bigr) \in [0, S],\qquad
    a_t(s) = \operatorname{align}(h_t, \bar h_s)\,
             \exp\Bigl(-\frac{(s - p_t)^2}{2\sigma^2}\Bigr)

where ``align`` is the softmax of the scores *restricted to the window* and
the Gaussian is applied after it **without renormalising** (the weights sum to
less than 1).  ``S`` is the source length (per example: the number of
unmasked positions).  Then, as in global attention (Chapter 6),
``c_t = Σ_s a_t(s) h̄_s`` and ``h̃_t = tanh([c_t; h_t] W_c)`` ``(B, d)``.

Backward (Chapter 7), with ``g_s`` the Gaussian and ``α`` the windowed softmax:
``dα_s = da_s g_s`` -> softmax backward inside the window;
``dp_t = Σ_s da_s a_s (s - p_t) / σ²``; with ``x = v_pᵀ r``, ``r = tanh(W_pᵀ h_t)``:
``dx = dp_t S σ(x)(1 - σ(x))``, ``dv_p = dx r``, ``dW_p = h_t (dx v_p ⊙ (1 - r²))ᵀ``,
``dh_t += W_p (dx v_p ⊙ (1 - r²))``.  The integer window itself has no gradient.

Everything is vectorised over the batch: the window is a boolean ``(B, S)`` mask.
"""
from __future__ import annotations

import numpy as np

from ..nn.functional import sigmoid, softmax, softmax_backward
from ..nn.module import Module, default_rng, xavier_uniform
from ..nn.validate import as_float_array, shape_error
from .global_attention import (attentional_hidden, check_step_inputs, init_score_params, luong_scores,
                               luong_scores_backward, output_backward)

MODES = ("predictive", "monotonic")


# ---------------------------------------------------------------- window weights (the math)
def local_weights(scores, p_t, window: int, mask=None, gaussian=True):
    """Windowed softmax times the Gaussian centred at ``p_t``.

    ``scores (B, S)``, ``p_t (B,)``, ``window = D``; ``mask (B, S)`` bool
    (True = may attend).  Returns ``(weights, align, gauss)``, each ``(B, S)``;
    ``weights = align * gauss`` is exactly zero outside the window
    (``gauss`` is all ones when ``gaussian=False``, i.e. local-m).
    """
    S = scores.shape[-1]
    dist = np.arange(S, dtype=scores.dtype)[None, :] - p_t[:, None]    # (B, S): s - p_t
    in_window = np.abs(dist) <= window                                 # (B, S) bool
    if mask is not None:
        in_window &= mask
    align = softmax(scores, axis=-1, mask=in_window)                  # (B, S), sums to 1 over the window
    if not gaussian:
        return align, align, np.ones_like(align)
    sigma = 0.5 * window                                               # python float: keeps float32
    gauss = np.exp(-dist * dist / (2.0 * sigma * sigma))               # (B, S)
    return align * gauss, align, gauss


def local_weights_backward(dweights, p_t, window: int, align, gauss, gaussian=True):
    """Backward of :func:`local_weights` with the window held fixed: ``-> (dscores (B, S), dp_t (B,))``.

    ``dweights (B, S)``; ``p_t (B,)``, ``window`` and ``gaussian`` as in the
    forward; ``align``, ``gauss (B, S)``, the forward's second and third outputs.
    """
    dscores = softmax_backward(dweights * gauss, align)               # (B, S); zero outside the window
    if not gaussian:
        return dscores, np.zeros_like(p_t)
    S = align.shape[-1]
    dist = np.arange(S, dtype=align.dtype)[None, :] - p_t[:, None]     # (B, S)
    sigma = 0.5 * window
    dp_t = np.sum(dweights * align * gauss * dist, axis=-1) / (sigma * sigma)  # (B,): da_s/dp_t = a_s (s-p_t)/σ²
    return dscores, dp_t


class LocalAttention(Module):
    """Luong local attention, ``mode="predictive"`` (local-p) or ``"monotonic"`` (local-m).

    Params: ``W_p (d, d_p)`` and ``v_p (d_p,)`` (local-p only; ``d_p`` defaults
    to ``d``), the score's ``W_a`` / ``v_a`` (as in :class:`GlobalAttention`),
    and ``W_c (2d, d)``.

    ``forward(h_t (B, d), source (B, S, d), t=None, mask=None (B, S)) -> h̃_t (B, d)``;
    ``t`` (an int or ``(B,)``) is the window centre for local-m and ignored by local-p.
    ``.position (B,)`` is ``p_t``; ``.weights (B, S)`` are zero outside the window
    and not renormalised after the Gaussian; ``.context (B, d)``.
    ``backward(dh_tilde) -> (dh_t, dsource)``, including the path through ``p_t``.
    """

    def __init__(self, d: int, window: int, mode: str = "predictive", score: str = "general",
                 d_p: int | None = None, d_att: int | None = None, *, rng=None) -> None:
        super().__init__()
        rng = default_rng(rng)
        if mode not in MODES:
            raise ValueError(f"mode must be one of {MODES}, got {mode!r}")
        if int(window) != window or window < 1:
            raise ValueError(f"window (the half-width D) must be an integer >= 1, got {window!r}")
        self.d, self.window, self.mode, self.score = int(d), int(window), mode, score
        init_score_params(self, score, self.d, int(d_att or d), rng)
        if mode == "predictive":
            d_p = int(d_p or d)
            self.add_param("W_p", xavier_uniform(rng, self.d, d_p))
            self.add_param("v_p", rng.uniform(-1.0, 1.0, size=d_p) / np.sqrt(d_p))
        self.add_param("W_c", xavier_uniform(rng, 2 * self.d, self.d))
        self.weights = self.context = self.position = None

    def _position(self, h_t, t, lengths):
        """``p_t (B,)`` and what its backward needs."""
        if self.mode == "monotonic":
            if t is None:
                raise ValueError("t (the decoder step, an int or shape (B,)) is required in monotonic mode")
            t = as_float_array(t, "t").astype(h_t.dtype)
            if t.shape not in ((), (h_t.shape[0],)):
                raise shape_error("t", f"() or (B={h_t.shape[0]},)", t)
            return np.broadcast_to(t, (h_t.shape[0],)).copy(), None
        r = np.tanh(h_t @ self.params["W_p"])                             # (B, d) @ (d, d_p) -> (B, d_p)
        sig = sigmoid(r @ self.params["v_p"])                              # (B,)
        return lengths * sig, (r, sig)                                     # p_t = S sigma(x)

    def forward(self, h_t, source, t=None, mask=None) -> np.ndarray:
        """One decoder step: ``h_t (B, d)`` attends over a window of ``source (B, S, d)`` -> ``h̃_t (B, d)``.

        ``t``: the window centre, an int or ``(B,)`` (required by local-m,
        ignored by local-p, which predicts ``p_t (B,)`` from ``h_t``).  ``mask``:
        boolean, True = may attend, ``(B, S)`` or ``(S,)``; local-p takes the
        source length ``S`` per example as the number of True entries, so
        padding is expected at the end.  ``.position (B,)``, ``.weights (B, S)``,
        ``.context (B, d)``.  Caches everything the backward needs.
        """
        h_t, source, mask = check_step_inputs(h_t, source, self.d, mask)
        B, S, _ = source.shape
        lengths = (np.full(B, S) if mask is None else mask.sum(axis=1)).astype(h_t.dtype)  # (B,) source lengths
        p_t, pos_cache = self._position(h_t, t, lengths)                   # (B,)
        p = self.params
        scores, score_cache = luong_scores(h_t, source, self.score, p.get("W_a"), p.get("v_a"))  # (B, S)
        gaussian = self.mode == "predictive"
        weights, align, gauss = local_weights(scores, p_t, self.window, mask, gaussian)  # (B, S) each
        context = np.einsum("bs,bsd->bd", weights, source)                 # (B, d)
        h_tilde = attentional_hidden(context, h_t, p["W_c"])               # (B, d)
        self.weights, self.context, self.position = weights, context, p_t
        self.cache = (h_t, source, lengths, p_t, pos_cache, score_cache, weights, align, gauss, context, h_tilde)
        return h_tilde

    def backward(self, dh_tilde):
        """``dh_tilde (B, d)`` -> ``(dh_t (B, d), dsource (B, S, d))``.

        Includes the path through the predicted position ``p_t`` (local-p);
        the integer window has no gradient.  Adds ``dW_c``, the score's
        parameters and, for local-p, ``dW_p (d, d_p)``, ``dv_p (d_p,)`` into
        ``grads``.  Chapter 7.
        """
        (h_t, source, lengths, p_t, pos_cache, score_cache, weights, align, gauss,
         context, h_tilde) = self.cache
        dh_tilde = as_float_array(dh_tilde, "dh_tilde")
        if dh_tilde.shape != h_tilde.shape:
            raise shape_error("dh_tilde", f"(B={h_tilde.shape[0]}, d={self.d})", dh_tilde)
        p = self.params
        dweights, dsource, dh, dW_c = output_backward(dh_tilde, weights, source, h_t, p["W_c"], context, h_tilde)
        self.grads["W_c"] += dW_c
        gaussian = self.mode == "predictive"
        dscores, dp_t = local_weights_backward(dweights, p_t, self.window, align, gauss, gaussian)
        dh_s, dsource_s, *dparams = luong_scores_backward(dscores, h_t, source, self.score,
                                                          p.get("W_a"), p.get("v_a"), score_cache)
        for name, g in zip(("W_a", "v_a"), dparams):                       # the score's parameters, if any
            self.grads[name] += g
        dh = dh + dh_s
        if gaussian:                                                       # p_t = S sigma(v_p . tanh(h_t W_p))
            r, sig = pos_cache
            dx = dp_t * lengths * sig * (1.0 - sig)                        # (B,)
            self.grads["v_p"] += r.T @ dx                                  # (d_p,)
            dpre = dx[:, None] * p["v_p"] * (1.0 - r * r)                  # (B, d_p)
            self.grads["W_p"] += h_t.T @ dpre                              # (d, d_p)
            dh = dh + dpre @ p["W_p"].T                                    # (B, d)
        return dh, dsource + dsource_s
