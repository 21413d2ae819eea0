r"""Deterministic soft attention with a gate (Xu et al. 2015, *Show, Attend and Tell*).

Paper: Xu, Ba, Kiros, Cho, Courville, Salakhutdinov, Zemel, Bengio (ICML 2015),
*Show, Attend and Tell: Neural Image Caption Generation with Visual Attention*,
section 4.2 ("deterministic soft attention"); the scores are the additive
scores of Bahdanau, Cho, Bengio (ICLR 2015).  Chapter 4.

The paper writes column vectors (``W_a a_i``); we store weights ``(d_in, d_out)``
and multiply rows (``a_i @ W_a``).  Shapes: annotations ``A (B, L, D)``,
previous decoder state ``h (B, d_state)``, hidden width ``d_a = d_hidden``.

.. math::
    e_{i} = w^\top \tanh(W_a a_i + W_h h + b)                    \quad (B, L)\\
    \alpha = \operatorname{softmax}(e)  \text{ over the } L \text{ locations}   \quad (B, L)\\
    \beta  = \sigma(w_\beta^\top h + b_\beta)                    \quad (B,)\\
    \hat z = \beta \sum_i \alpha_i a_i                            \quad (B, D)

``gate=False`` drops the gate (``beta = 1``).  The training objective adds the
"doubly stochastic" penalty (paper eq. 14)

.. math::
    \lambda \sum_i \Bigl(1 - \sum_t \alpha_{t,i}\Bigr)^2

which asks every location to receive about one unit of attention over the caption.

Backward (Chapter 4), with ``c = sum_i alpha_i a_i`` and ``T = tanh(pre)``:
``dbeta = dz . c``, ``dalpha_i = beta dz . a_i``, ``da_i = beta alpha_i dz`` (value
path); softmax backward gives ``de``; ``dw = sum_i de_i T_i``,
``dpre_i = de_i w * (1 - T_i^2)``, ``dW_a = sum_i a_i dpre_i^T``, ``db = sum_i dpre_i``,
``dW_h = h (sum_i dpre_i)^T``, ``dh = W_h (sum_i dpre_i) + w_beta beta(1-beta) dbeta``,
``da_i += W_a dpre_i`` (key path).

"Soft" because ``sum_i alpha_i a_i`` is the expectation of the hard context
``a_s``, ``s ~ Categorical(alpha)`` (see ``hard.py``): every step is differentiable.
"""
from __future__ import annotations

import numpy as np

from ..nn.functional import sigmoid, sigmoid_backward, softmax, softmax_backward, tanh_backward
from ..nn.module import Module, default_rng, xavier_uniform
from ..nn.validate import as_float_array, check_mask, shape_error


# ------------------------------------------------------------------ checks
def check_features_state(features, state, d_feature: int, d_state: int, mask=None):
    """Validate ``features (B, L, D)``, ``state (B, d_state)`` and a ``(B, L)`` mask."""
    features = as_float_array(features, "features")
    if features.ndim != 3 or features.shape[-1] != d_feature:
        raise shape_error("features", f"(B, L, D={d_feature})", features)
    B, L, _ = features.shape
    state = as_float_array(state, "state")
    if state.shape != (B, d_state):
        raise shape_error("state", f"(B={B}, d_state={d_state})", state)
    if mask is not None:
        mask = check_mask(mask, (B, L), "mask")
        mask = np.broadcast_to(mask, (B, L))
    return features, state, mask


# ------------------------------------------------------------------ additive scores (shared with hard.py)
def additive_scores(features, state, W_a, W_h, b, w):
    """Scores ``e (B, L)`` and the hidden activations ``T (B, L, d_a)``: ``e_i = w . tanh(a_i W_a + h W_h + b)``."""
    pre = features @ W_a + (state @ W_h + b)[:, None, :]   # (B, L, D)@(D, d_a) + (B, 1, d_a) -> (B, L, d_a)
    T = np.tanh(pre)                                       # (B, L, d_a)
    return T @ w, T                                        # (B, L, d_a)@(d_a,) -> (B, L)


def additive_scores_backward(de, features, state, W_a, W_h, w, T):
    """Backward of :func:`additive_scores`: ``(dfeatures, dstate, dW_a, dW_h, db, dw)``.

    ``de (B, L)``; ``features (B, L, D)``, ``state (B, d_state)``,
    ``W_a (D, d_a)``, ``W_h (d_state, d_a)``, ``w (d_a,)`` and ``T (B, L, d_a)``
    from the forward.  Each gradient has its argument's shape (``db (d_a,)``).
    """
    D, d_a = W_a.shape
    dw = np.einsum("bl,bla->a", de, T)                     # (d_a,)
    dpre = tanh_backward(de[..., None] * w, T)             # (B, L, d_a)
    dpre_sum = dpre.sum(axis=1)                            # (B, d_a): W_h h and b are shared by all L
    dW_a = features.reshape(-1, D).T @ dpre.reshape(-1, d_a)   # (D, N) @ (N, d_a) -> (D, d_a)
    dW_h = state.T @ dpre_sum                              # (d_state, B) @ (B, d_a) -> (d_state, d_a)
    db = dpre_sum.sum(axis=0)                              # (d_a,)
    dfeatures = dpre @ W_a.T                               # (B, L, d_a) @ (d_a, D) -> (B, L, D)
    dstate = dpre_sum @ W_h.T                              # (B, d_a) @ (d_a, d_state) -> (B, d_state)
    return dfeatures, dstate, dW_a, dW_h, db, dw


# ------------------------------------------------------------------ functional pair
def soft_attention(features, state, params, mask=None):
    """Forward of gated soft attention.

    ``params`` holds ``W_a (D, d_a)``, ``W_h (d_state, d_a)``, ``b (d_a,)``,
    ``w (d_a,)`` and, for the gate, ``w_beta (d_state,)``, ``b_beta (1,)``.
    ``mask (B, L)`` is boolean, True = may attend.  Returns
    ``(context (B, D), weights (B, L), beta (B,))``; a fully masked row gives a
    zero context.
    """
    e, _ = additive_scores(features, state, params["W_a"], params["W_h"], params["b"], params["w"])
    weights = softmax(e, axis=-1, mask=mask)               # (B, L)
    if "w_beta" in params:
        beta = sigmoid(state @ params["w_beta"] + params["b_beta"])   # (B,)
    else:
        beta = np.ones(features.shape[0], dtype=weights.dtype)        # (B,) no gate
    expected = np.einsum("bl,bld->bd", weights, features)  # (B, D) = E_{s~alpha}[a_s]
    return beta[:, None] * expected, weights, beta         # (B, D)


def soft_attention_backward(dcontext, features, state, params, weights, beta, dweights=None):
    """Backward of :func:`soft_attention`.

    ``dcontext (B, D)``; ``features``, ``state``, ``params`` as in the forward
    and its ``weights (B, L)``, ``beta (B,)``.  ``dweights (B, L)``, optional, is a gradient that reaches the weights from
    elsewhere than the context — e.g. the doubly stochastic penalty's — and is
    added before the softmax backward.  Returns ``(dfeatures (B, L, D),
    dstate (B, d_state), dparams)`` where ``dparams`` has one gradient per key
    of ``params``.
    """
    _, T = additive_scores(features, state, params["W_a"], params["W_h"], params["b"], params["w"])
    expected = np.einsum("bl,bld->bd", weights, features)  # (B, D)
    dexpected = beta[:, None] * dcontext                   # (B, D)
    dalpha = (features @ dexpected[:, :, None])[..., 0]    # (B, L, D) @ (B, D, 1) -> (B, L)
    if dweights is not None:
        dalpha = dalpha + dweights                         # extra gradient arriving at alpha
    de = softmax_backward(dalpha, weights)                 # (B, L); zero where masked
    dfeat_key, dstate, dW_a, dW_h, db, dw = additive_scores_backward(
        de, features, state, params["W_a"], params["W_h"], params["w"], T)
    dfeatures = weights[:, :, None] * dexpected[:, None, :] + dfeat_key   # value path + key path
    dparams = {"W_a": dW_a, "W_h": dW_h, "b": db, "w": dw}
    if "w_beta" in params:
        dbeta_pre = sigmoid_backward(np.sum(dcontext * expected, axis=-1), beta)   # (B,)
        dstate = dstate + dbeta_pre[:, None] * params["w_beta"]                   # (B, d_state)
        dparams["w_beta"] = state.T @ dbeta_pre                                    # (d_state,)
        dparams["b_beta"] = np.sum(dbeta_pre, keepdims=True)                       # (1,)
    return dfeatures, dstate, dparams


def doubly_stochastic_penalty(weights, lam: float, mask=None):
    r"""Xu et al.'s penalty ``lam * sum_i (1 - sum_t alpha_{t,i})^2``, averaged over the batch.

    ``weights (B, T, L)`` are the attention weights of the ``T`` decoder steps;
    ``mask (B, L)`` (optional, True = real location) leaves padded locations out.
    Returns ``(penalty, dweights)`` with ``dweights[b, t, i] = -2 lam (1 - sum_t alpha_{b,t,i}) / B``.
    For one caption of ``C`` words over ``L`` locations the minimum is
    ``L (1 - C/L)^2`` (every column sum equal to ``C/L``).
    """
    weights = as_float_array(weights, "weights")
    if weights.ndim != 3:
        raise shape_error("weights", "(B, T, L)", weights)
    B, _, L = weights.shape
    residual = 1.0 - weights.sum(axis=1)                   # (B, L): 1 - sum_t alpha_{t,i}
    if mask is not None:
        mask = np.broadcast_to(check_mask(mask, (B, L), "mask"), (B, L))
        residual = np.where(mask, residual, 0.0)
    lam = float(lam)
    penalty = lam * float(np.sum(residual * residual)) / B
    dweights = np.broadcast_to((-2.0 * lam / B) * residual[:, None, :], weights.shape).copy()  # (B, T, L)
    return penalty, dweights


# ------------------------------------------------------------------ module
class SoftAttention(Module):
    """Show-Attend-Tell soft attention over ``L`` annotation vectors, with the ``beta`` gate.

    Parameters ``W_a (d_feature, d_hidden)``, ``W_h (d_state, d_hidden)``,
    ``b (d_hidden,)``, ``w (d_hidden,)`` and, with ``gate=True``,
    ``w_beta (d_state,)``, ``b_beta (1,)``.  After ``forward`` the weights are
    ``.weights (B, L)`` and the gate ``.beta (B,)``.
    """

    def __init__(self, d_feature: int, d_state: int, d_hidden: int, gate: bool = True, *, rng=None) -> None:
        super().__init__()
        rng = default_rng(rng)
        self.d_feature, self.d_state, self.d_hidden, self.gate = int(d_feature), int(d_state), int(d_hidden), bool(gate)
        self.add_param("W_a", xavier_uniform(rng, self.d_feature, self.d_hidden))
        self.add_param("W_h", xavier_uniform(rng, self.d_state, self.d_hidden))
        self.add_param("b", np.zeros(self.d_hidden))
        self.add_param("w", xavier_uniform(rng, self.d_hidden, 1)[:, 0])
        if self.gate:
            self.add_param("w_beta", xavier_uniform(rng, self.d_state, 1)[:, 0])
            self.add_param("b_beta", np.zeros(1))
        self.weights = None
        self.beta = None

    def forward(self, features, state, mask=None) -> np.ndarray:
        """``features (B, L, D)``, ``state (B, d_state)``, ``mask (B, L)`` -> context ``(B, D)``.

        ``mask``: boolean, True = may attend, ``(B, L)`` or ``(L,)``; a fully
        masked row gives a zero context.  ``.weights (B, L)``, ``.beta (B,)``.
        Caches the inputs, the weights and the gate.
        """
        features, state, mask = check_features_state(features, state, self.d_feature, self.d_state, mask)
        context, self.weights, self.beta = soft_attention(features, state, self.params, mask)
        self.cache = (features, state, self.weights, self.beta)
        return context

    def backward(self, dcontext, dweights=None):
        """``dcontext (B, D)`` -> ``(dfeatures (B, L, D), dstate (B, d_state))``; adds into ``grads``.

        ``dweights (B, L)``, optional: a gradient arriving at ``.weights`` from
        elsewhere, such as ``doubly_stochastic_penalty``'s (sliced per step).
        Adds ``dW_a``, ``dW_h``, ``db``, ``dw`` (and ``dw_beta``, ``db_beta``)
        into ``grads``.  Chapter 4.
        """
        features, state, weights, beta = self.cache
        dcontext = as_float_array(dcontext, "dcontext")
        if dcontext.shape != (features.shape[0], self.d_feature):
            raise shape_error("dcontext", f"(B={features.shape[0]}, D={self.d_feature})", dcontext)
        if dweights is not None:
            dweights = as_float_array(dweights, "dweights")
            if dweights.shape != weights.shape:
                raise shape_error("dweights", f"(B={weights.shape[0]}, L={weights.shape[1]})", dweights)
        dfeatures, dstate, dparams = soft_attention_backward(dcontext, features, state, self.params, weights, beta,
                                                             dweights)
        for name, g in dparams.items():
            self.grads[name] += g
        return dfeatures, dstate
