r"""Adaptive attention with a visual sentinel (Lu, Xiong, Parikh, Socher, CVPR 2017).

Paper: *Knowing When to Look: Adaptive Attention via A Visual Sentinel for
Image Captioning*: spatial attention, the visual sentinel and the adaptive
context vector.  Chapter 15.

The paper writes columns (``W_v V``); we store weights ``(d_in, d_out)`` and
multiply rows.  Shapes: regions ``V (B, k, d)``, current decoder state
``h_t (B, d)``, LSTM memory cell ``m_t (B, d)``, attention width ``d_att``.

Sentinel:

.. math::
    g_t = \sigma(W_x x_t + W_h h_{t-1})\ (B, d),\qquad s_t = g_t \odot \tanh(m_t)\ (B, d)

Extended attention, note the *current* ``h_t``:

.. math::
    z_t = w_h^\top \tanh(W_v V + W_g h_t 1^\top)\ (B, k),\qquad
    \hat\alpha_t = \operatorname{softmax}([z_t;\ w_h^\top\tanh(W_s s_t + W_g h_t)])\ (B, k+1)\\
    \beta_t = \hat\alpha_t[k+1],\qquad \hat c_t = \beta_t s_t + (1 - \beta_t) c_t,\quad
    c_t = \sum_i \alpha_{t,i} v_i,\ \alpha_t = \operatorname{softmax}(z_t)

Since ``alpha_hat[1..k] = (1 - beta) alpha``, ``c_hat = sum_{i<=k+1} alpha_hat_i
[v_1..v_k, s_t]_i``: one softmax-weighted sum over ``k + 1`` values, and the
backward is that of one attention layer: ``dalpha_hat_i = dc . value_i``,
softmax backward over ``k + 1`` logits, tanh backward in both score branches
(``W_g`` gets the sum of both), ``ds_t = beta dc + W_s^T dpre_s``.  The sentinel's
backward: ``dg = ds * tanh(m)``, sigmoid backward into ``W_x, W_h``, and
``dm_t = ds * g * (1 - tanh(m)^2)`` (a new gradient path into the LSTM cell).

``mask (B, k)`` hides regions (True = may attend); the sentinel can always be
attended, so a fully masked row gives ``beta = 1`` and ``c_hat = s_t``.
"""
from __future__ import annotations

import numpy as np

from ..nn.functional import sigmoid, sigmoid_backward, softmax, softmax_backward, tanh_backward
from ..nn.module import Module, default_rng, xavier_uniform
from ..nn.validate import as_float_array, check_mask, shape_error


def _batch_vector(x, name, B, d, dname="d"):
    x = as_float_array(x, name)
    if x.ndim != 2 or (B is not None and x.shape[0] != B) or x.shape[1] != d:
        raise shape_error(name, f"({'B' if B is None else f'B={B}'}, {dname}={d})", x)
    return x


# ------------------------------------------------------------------ visual sentinel
def visual_sentinel(x_t, h_prev, m_t, W_x, W_h):
    """``s_t = sigmoid(x_t W_x + h_prev W_h) * tanh(m_t)``; returns ``(s_t (B, d), g_t (B, d))``."""
    g = sigmoid(x_t @ W_x + h_prev @ W_h)                  # (B, d_in)@(d_in, d) + (B, d)@(d, d) -> (B, d)
    return g * np.tanh(m_t), g                             # (B, d)


def visual_sentinel_backward(ds, x_t, h_prev, m_t, W_x, W_h, g):
    """Backward of :func:`visual_sentinel`: ``(dx_t, dh_prev, dm_t, dW_x, dW_h)``.

    ``ds (B, d)``; ``x_t (B, d_in)``, ``h_prev, m_t (B, d)``, ``W_x (d_in, d)``,
    ``W_h (d, d)`` and the gate ``g (B, d)`` from the forward.  Each gradient
    has its argument's shape.
    """
    tm = np.tanh(m_t)                                      # (B, d)
    dpre = sigmoid_backward(ds * tm, g)                    # (B, d)
    dm = tanh_backward(ds * g, tm)                         # (B, d)
    return dpre @ W_x.T, dpre @ W_h.T, dm, x_t.T @ dpre, h_prev.T @ dpre


class VisualSentinel(Module):
    """The sentinel gate of Lu et al.: params ``W_x (d_in, d)``, ``W_h (d, d)`` (no bias, as in the paper)."""

    def __init__(self, d_in: int, d: int, *, rng=None) -> None:
        super().__init__()
        rng = default_rng(rng)
        self.d_in, self.d = int(d_in), int(d)
        self.add_param("W_x", xavier_uniform(rng, self.d_in, self.d))
        self.add_param("W_h", xavier_uniform(rng, self.d, self.d))
        self.gate = None

    def forward(self, x_t, h_prev, m_t) -> np.ndarray:
        """``x_t (B, d_in)``, ``h_prev (B, d)``, ``m_t (B, d)`` -> ``s_t (B, d)``; ``.gate`` holds ``g_t``."""
        x_t = _batch_vector(x_t, "x_t", None, self.d_in, "d_in")
        B = x_t.shape[0]
        h_prev = _batch_vector(h_prev, "h_prev", B, self.d)
        m_t = _batch_vector(m_t, "m_t", B, self.d)
        s, self.gate = visual_sentinel(x_t, h_prev, m_t, self.params["W_x"], self.params["W_h"])
        self.cache = (x_t, h_prev, m_t, self.gate)
        return s

    def backward(self, ds):
        """``ds (B, d)`` -> ``(dx_t, dh_prev, dm_t)``; adds into ``grads``."""
        x_t, h_prev, m_t, g = self.cache
        ds = _batch_vector(ds, "ds", x_t.shape[0], self.d)
        dx, dh, dm, dW_x, dW_h = visual_sentinel_backward(ds, x_t, h_prev, m_t, self.params["W_x"],
                                                          self.params["W_h"], g)
        self.grads["W_x"] += dW_x
        self.grads["W_h"] += dW_h
        return dx, dh, dm


# ------------------------------------------------------------------ adaptive attention
def _scores(regions, h_t, sentinel, params):
    gh = h_t @ params["W_g"]                               # (B, d) @ (d, d_att) -> (B, d_att)
    T_v = np.tanh(regions @ params["W_v"] + gh[:, None, :])  # (B, k, d_att)
    T_s = np.tanh(sentinel @ params["W_s"] + gh)           # (B, d_att)
    logits = np.concatenate([T_v @ params["w_h"], (T_s @ params["w_h"])[:, None]], axis=1)  # (B, k+1)
    return logits, T_v, T_s


def adaptive_attention(regions, h_t, sentinel, params, mask=None):
    """Forward: ``(c_hat (B, d), weights (B, k+1))``; ``beta = weights[:, -1]``.

    ``regions (B, k, d)``, ``h_t (B, d)``, ``sentinel (B, d)``; ``params``:
    ``W_v, W_g, W_s (d, d_att)``, ``w_h (d_att,)``; ``mask (B, k)``, boolean,
    True = may attend (the sentinel is always allowed).
    """
    B, k, _ = regions.shape
    logits, _, _ = _scores(regions, h_t, sentinel, params)
    if mask is not None:
        mask = np.concatenate([mask, np.ones((B, 1), dtype=bool)], axis=1)   # sentinel always allowed
    weights = softmax(logits, axis=-1, mask=mask)           # (B, k+1) alpha_hat
    values = np.concatenate([regions, sentinel[:, None, :]], axis=1)     # (B, k+1, d) [v_1..v_k, s_t]
    return np.einsum("bi,bid->bd", weights, values), weights            # (B, d)


def adaptive_attention_backward(dc_hat, regions, h_t, sentinel, params, weights):
    """Backward of :func:`adaptive_attention`: ``(dregions, dh_t, dsentinel, dparams)``.

    ``dc_hat (B, d)``; ``regions (B, k, d)``, ``h_t (B, d)``, ``sentinel (B, d)``,
    ``params`` and ``weights (B, k+1)`` as in the forward.  Returns
    ``dregions (B, k, d)``, ``dh_t (B, d)``, ``dsentinel (B, d)`` and one
    gradient per key of ``params``.
    """
    B, k, d = regions.shape
    d_att = params["W_v"].shape[1]
    _, T_v, T_s = _scores(regions, h_t, sentinel, params)
    values = np.concatenate([regions, sentinel[:, None, :]], axis=1)     # (B, k+1, d)
    dvalues = weights[:, :, None] * dc_hat[:, None, :]     # (B, k+1, d)
    dweights = values @ dc_hat[:, :, None]                 # (B, k+1, d) @ (B, d, 1) -> (B, k+1, 1)
    dlogits = softmax_backward(dweights[..., 0], weights)  # (B, k+1); zero where masked
    dz, dz_s = dlogits[:, :k], dlogits[:, k]               # (B, k), (B,)
    w_h = params["w_h"]
    dw_h = np.einsum("bk,bka->a", dz, T_v) + dz_s @ T_s    # (d_att,)
    dpre_v = tanh_backward(dz[..., None] * w_h, T_v)       # (B, k, d_att)
    dpre_s = tanh_backward(dz_s[:, None] * w_h, T_s)       # (B, d_att)
    dgh = dpre_v.sum(axis=1) + dpre_s                      # (B, d_att): W_g h_t feeds both branches
    dparams = {
        "W_v": regions.reshape(-1, d).T @ dpre_v.reshape(-1, d_att),   # (d, d_att)
        "W_g": h_t.T @ dgh,                                            # (d, d_att)
        "W_s": sentinel.T @ dpre_s,                                    # (d, d_att)
        "w_h": dw_h,
    }
    dregions = dvalues[:, :k] + dpre_v @ params["W_v"].T   # (B, k, d)
    dsentinel = dvalues[:, k] + dpre_s @ params["W_s"].T   # (B, d)
    dh = dgh @ params["W_g"].T                             # (B, d)
    return dregions, dh, dsentinel, dparams


class AdaptiveAttention(Module):
    """Spatial attention over ``k`` regions extended by the sentinel (``k + 1`` candidates).

    Params ``W_v, W_g, W_s (d, d_att)``, ``w_h (d_att,)``.  After ``forward``:
    ``.weights (B, k+1)`` (``alpha_hat``) and ``.beta (B,)`` (its last column).
    """

    def __init__(self, d: int, d_att: int, *, rng=None) -> None:
        super().__init__()
        rng = default_rng(rng)
        self.d, self.d_att = int(d), int(d_att)
        for name in ("W_v", "W_g", "W_s"):
            self.add_param(name, xavier_uniform(rng, self.d, self.d_att))
        self.add_param("w_h", xavier_uniform(rng, self.d_att, 1)[:, 0])
        self.weights = None
        self.beta = None

    def forward(self, regions, h_t, sentinel, mask=None) -> np.ndarray:
        """``regions (B, k, d)``, ``h_t (B, d)``, ``sentinel (B, d)``, ``mask (B, k)`` -> ``c_hat (B, d)``."""
        regions = as_float_array(regions, "regions")
        if regions.ndim != 3 or regions.shape[-1] != self.d:
            raise shape_error("regions", f"(B, k, d={self.d})", regions)
        B, k, _ = regions.shape
        h_t = _batch_vector(h_t, "h_t", B, self.d)
        sentinel = _batch_vector(sentinel, "sentinel", B, self.d)
        if mask is not None:
            mask = np.broadcast_to(check_mask(mask, (B, k), "mask"), (B, k))
        c_hat, self.weights = adaptive_attention(regions, h_t, sentinel, self.params, mask)
        self.beta = self.weights[:, k]
        self.cache = (regions, h_t, sentinel, self.weights)
        return c_hat

    def backward(self, dc_hat):
        """``dc_hat (B, d)`` -> ``(dregions, dh_t, dsentinel)``; adds into ``grads``."""
        regions, h_t, sentinel, weights = self.cache
        dc_hat = _batch_vector(dc_hat, "dc_hat", regions.shape[0], self.d)
        dregions, dh, dsentinel, dparams = adaptive_attention_backward(dc_hat, regions, h_t, sentinel,
                                                                       self.params, weights)
        for name, g in dparams.items():
            self.grads[name] += g
        return dregions, dh, dsentinel
