r"""Temporal attention over video frames (Yao, Torabi, Cho, Ballas, Pal, Larochelle
& Courville 2015, *Describing Videos by Exploiting Temporal Structure*, ICCV;
Chapter 18).

A caption decoder at word step ``t`` looks back over the frame features
``frames (B, F, D)`` (Yao's :math:`v_1..v_n`), conditioned on its previous
state ``h_prev (B, d_state)`` (:math:`h_{t-1}`).  Row form, weights stored
``(d_in, d_out)``:

.. math::
    e_i = w^\top \tanh(W_a^\top h_{t-1} + U_a^\top v_i + b_a),\qquad
    \alpha = \operatorname{softmax}_i(e) \in \mathbb R^{B\times F},\qquad
    \varphi_t(V) = \textstyle\sum_i \alpha_i v_i \in \mathbb R^{B\times D}

with ``W_a (d_state, d_hidden)``, ``U_a (D, d_hidden)``, ``b_a (d_hidden,)``,
``w (d_hidden,)``.  ``φ_t`` then feeds the decoder's gates and output layer
(outside this module).  Uniform ``α`` is mean pooling over frames, the
baseline the paper improves on: mean pooling forgets *when* things happen,
while ``α`` changes with ``h_{t-1}`` and so can look at different moments
for different words.  (The authors' code adds an optional scalar gate
``σ(w_selᵀ h_{t-1} + b_sel)`` on ``φ_t``; it is left out here.)

Backward (the same as additive attention, Chapter 3, with keys = values =
frames): ``dα = frames · dφ``, ``dframes = α dφ`` (value path), ``de`` by the
softmax backward (Chapter 2), ``T = tanh(pre)``: ``dw = Σ_i de_i T_i``,
``dpre_i = de_i w ⊙ (1 - T_i²)``, ``dU_a = Σ v_i dpre_iᵀ``, ``db_a = Σ dpre_i``,
``dW_a = h (Σ_i dpre_i)ᵀ``, ``dh_prev = W_a Σ_i dpre_i``, ``dframes += dpre U_aᵀ``
(key path).
"""
from __future__ import annotations

import numpy as np

from ..nn.functional import softmax, softmax_backward
from ..nn.module import Module, default_rng, xavier_uniform
from ..nn.validate import as_float_array, check_mask, shape_error
from .soft import additive_scores, additive_scores_backward


def temporal_attention(frames, h_prev, W_a, U_a, b_a, w, mask=None):
    """``frames (B, F, D)``, ``h_prev (B, d_state)`` -> ``(phi (B, D), weights (B, F), T (B, F, d_hidden))``.

    The score is Show-Attend-Tell's additive score (soft.py) with the frames as
    annotations: Yao's ``U_a`` acts on the frames and ``W_a`` on the state.
    """
    scores, T = additive_scores(frames, h_prev, U_a, W_a, b_a, w)   # (B, F), (B, F, d_h)
    weights = softmax(scores, axis=-1, mask=mask)           # (B, F); masked frames -> 0
    phi = np.einsum("bf,bfd->bd", weights, frames)          # (B, F) . (B, F, D) -> (B, D)
    return phi, weights, T


def temporal_attention_backward(dphi, frames, h_prev, W_a, U_a, w, weights, T):
    """Backward of :func:`temporal_attention`: ``-> (dframes, dh_prev, dW_a, dU_a, db_a, dw)``.

    ``dphi (B, D)``; ``frames (B, F, D)``, ``h_prev (B, d_state)`` and the
    parameters ``W_a, U_a, w`` as in the forward (``b_a`` is not needed);
    ``weights (B, F)`` and ``T (B, F, d_hidden)``, the forward's second and
    third outputs.  Returns ``dframes (B, F, D)`` (value path + key path),
    ``dh_prev (B, d_state)`` and the gradients of ``W_a, U_a, b_a, w``, shaped
    like the parameters.
    """
    dweights = np.einsum("bd,bfd->bf", dphi, frames)        # (B, F)
    dframes = weights[:, :, None] * dphi[:, None, :]        # (B, F, D) value path
    dscores = softmax_backward(dweights, weights)           # (B, F); masked frames -> 0
    dframes_key, dh_prev, dU_a, dW_a, db_a, dw = additive_scores_backward(dscores, frames, h_prev, U_a, W_a, w, T)
    return dframes + dframes_key, dh_prev, dW_a, dU_a, db_a, dw   # dframes: value path + key path


class TemporalAttention(Module):
    """Yao et al. (2015) soft attention over frames, conditioned on the decoder state.

    Params ``W_a (d_state, d_hidden)``, ``U_a (d_frame, d_hidden)``, ``b_a (d_hidden,)``, ``w (d_hidden,)``.
    ``forward(frames (B, F, d_frame), h_prev (B, d_state), mask=None (B, F)) -> φ (B, d_frame)``;
    ``.weights (B, F)``.  ``backward(dphi) -> (dframes, dh_prev)``.
    """

    def __init__(self, d_frame: int, d_state: int, d_hidden: int, *, rng=None) -> None:
        super().__init__()
        rng = default_rng(rng)
        self.d_frame, self.d_state, self.d_hidden = int(d_frame), int(d_state), int(d_hidden)
        self.add_param("W_a", xavier_uniform(rng, self.d_state, self.d_hidden))
        self.add_param("U_a", xavier_uniform(rng, self.d_frame, self.d_hidden))
        self.add_param("b_a", np.zeros(self.d_hidden))
        self.add_param("w", rng.uniform(-1.0, 1.0, size=self.d_hidden) / np.sqrt(self.d_hidden))
        self.weights = None

    def forward(self, frames, h_prev, mask=None) -> np.ndarray:
        """``frames (B, F, d_frame)`` attended from ``h_prev (B, d_state)`` -> ``φ (B, d_frame)``.

        ``mask``: boolean, True = real frame, ``(B, F)`` or ``(F,)``; a fully
        masked row gives ``φ = 0``.  ``.weights (B, F)``.  Caches the inputs,
        the weights and the tanh activations ``(B, F, d_hidden)``.
        """
        frames, h_prev = as_float_array(frames, "frames"), as_float_array(h_prev, "h_prev")
        if frames.ndim != 3 or frames.shape[2] != self.d_frame:
            raise shape_error("frames", f"(B, F, d_frame={self.d_frame})", frames)
        B = frames.shape[0]
        if h_prev.shape != (B, self.d_state):
            raise shape_error("h_prev", f"(B={B}, d_state={self.d_state})", h_prev)
        if mask is not None:
            mask = check_mask(mask, frames.shape[:2])
        p = self.params
        phi, weights, T = temporal_attention(frames, h_prev, p["W_a"], p["U_a"], p["b_a"], p["w"], mask)
        self.weights = weights
        self.cache = (frames, h_prev, weights, T)
        return phi

    def backward(self, dphi):
        """``dphi (B, d_frame)`` -> ``(dframes (B, F, d_frame), dh_prev (B, d_state))``.

        Adds ``dW_a (d_state, d_hidden)``, ``dU_a (d_frame, d_hidden)``,
        ``db_a (d_hidden,)`` and ``dw (d_hidden,)`` into ``grads``.  Chapter 18.
        """
        frames, h_prev, weights, T = self.cache
        dphi = as_float_array(dphi, "dphi")
        if dphi.shape != (frames.shape[0], self.d_frame):
            raise shape_error("dphi", f"(B={frames.shape[0]}, d_frame={self.d_frame})", dphi)
        p = self.params
        dframes, dh_prev, *grads = temporal_attention_backward(dphi, frames, h_prev, p["W_a"], p["U_a"], p["w"],
                                                               weights, T)
        for name, g in zip(("W_a", "U_a", "b_a", "w"), grads):
            self.grads[name] += g
        return dframes, dh_prev
