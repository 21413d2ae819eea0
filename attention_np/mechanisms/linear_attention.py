r"""Linear attention (kernel feature map) and Linformer (low-rank along the sequence).

Papers: Katharopoulos, Vyas, Pappas and Fleuret (2020, ICML), *Transformers are
RNNs: Fast Autoregressive Transformers with Linear Attention*; Wang, Li,
Khabsa, Fang and Ma (2020), *Linformer: Self-Attention with Linear
Complexity*.  Chapter 19.

**Linear attention** replaces ``exp(q . k)`` by ``phi(q) . phi(k)`` with the
positive feature map ``phi(x) = elu(x) + 1``.  Shapes ``q (..., n, d_k)``,
``k (..., m, d_k)``, ``v (..., m, d_v)`` -> ``out (..., n, d_v)``.
Non-causal, in ``O(n d_k d_v)`` instead of ``O(n m d)``:

.. math::
    O_i = \frac{\phi(q_i)^\top \bigl(\phi(K)^\top V\bigr)}{\phi(q_i)^\top \phi(K)^\top \mathbf 1},
    \qquad \phi(K)^\top V \in \mathbb R^{d_k\times d_v}

Causal, by prefix sums (an RNN with a constant-size state at inference):

.. math::
    S_j = \textstyle\sum_{j'\le j} \phi(k_{j'}) v_{j'}^\top,\quad
    z_j = \sum_{j'\le j}\phi(k_{j'}),\quad
    O_i = \frac{S_{a}^\top \phi(q_i)}{\phi(q_i)^\top z_{a}},\quad a = i + (m - n)

(``a`` is the absolute position of query ``i`` when ``m - n`` keys are a cached
prefix, as in ``causal_mask``).  This equals the masked quadratic form
``tril(phi(Q) phi(K)^T) V / rowsum`` exactly.  It is a *different model* from
softmax attention, not an approximation of it.  Here the prefix sums are one
vectorised ``cumsum`` over positions, which stores every state ``S_j``
(``O(n d_k d_v)`` memory); a recurrent or chunked loop would keep only one.

Backward (``N_i`` numerator, ``den_i`` denominator): ``dN_i = dO_i / den_i``,
``dden_i = -dO_i . O_i / den_i``, ``dphi(q_i) = S_a dN_i + z_a dden_i``;
reverse prefix sums ``G_j = sum_{a >= j} phi(q_i) dN_i^T``,
``g_j = sum_{a >= j} phi(q_i) dden_i``; ``dphi(k_j) = G_j v_j + g_j``,
``dv_j = G_j^T phi(k_j)``; then the elu + 1 backward.

**Linformer** projects keys and values along the *sequence* axis with learned
``E, F`` of shape ``(k, n)`` before ordinary softmax attention:

.. math::
    \operatorname{head}_h = \operatorname{softmax}\Bigl(\frac{Q_h (E K_h)^\top}{\sqrt{d_h}}\Bigr) F V_h,
    \qquad Q = X W_q,\ K = X W_k,\ V = X W_v

so the scores are ``n x k`` instead of ``n x n``.  ``E, F`` are shared by all
heads here.  Backward: ``dE = dK_bar K^T``, ``dK = E^T dK_bar`` (same for ``F``).
Linformer needs a fixed sequence length and cannot be causal (``E`` mixes
future positions into every projected key).
"""
from __future__ import annotations

import math

import numpy as np

from ..nn.functional import elu_plus_one, elu_plus_one_backward, unbroadcast
from ..nn.module import Module, default_rng, xavier_uniform
from ..nn.validate import as_float_array, check_last_dim, shape_error
from .scaled_dot_product import (
    check_qkv, scaled_dot_product_attention, scaled_dot_product_attention_backward,
)

__all__ = ["linear_attention", "linear_attention_backward", "LinformerAttention"]


# ---------------------------------------------------------------- linear attention
def _check(q, k, v, causal):
    q, k, v, lead = check_qkv(q, k, v)
    n, m = q.shape[-2], k.shape[-2]
    if causal and m < n:
        raise ValueError(
            f"causal attention needs at least as many keys as queries (m >= n), got n={n}, m={m}"
        )
    return q, k, v


def _forward(q, k, v, causal):
    """Everything the backward needs: features, (prefix) states, normaliser, output."""
    n, m = q.shape[-2], k.shape[-2]
    phi_q, phi_k = elu_plus_one(q), elu_plus_one(k)                  # (..., n, d_k), (..., m, d_k)
    if causal:
        offset = m - n
        outer = phi_k[..., :, :, None] * v[..., :, None, :]          # phi(k_j) v_j^T, (..., m, d_k, d_v)
        states = np.cumsum(outer, axis=-3)[..., offset:, :, :]       # S_a, (..., n, d_k, d_v)
        z = np.cumsum(phi_k, axis=-2)[..., offset:, :]               # z_a, (..., n, d_k)
        num = (phi_q[..., None, :] @ states)[..., 0, :]              # (..., n, 1, d_k) @ (..., n, d_k, d_v) -> (..., n, d_v)
        den = np.sum(phi_q * z, axis=-1, keepdims=True)              # (..., n, 1)
    else:
        states = np.swapaxes(phi_k, -1, -2) @ v                      # phi(K)^T V, (..., d_k, d_v)
        z = np.sum(phi_k, axis=-2)                                   # phi(K)^T 1, (..., d_k)
        num = phi_q @ states                                         # (..., n, d_k) @ (..., d_k, d_v) -> (..., n, d_v)
        den = phi_q @ z[..., :, None]                                # (..., n, 1)
    # den = phi(q_i) . z_a is a sum of non-negative terms; it is exactly 0 only when every term is
    # (phi underflowed, e.g. q <= -104 in float32, or phi(k) = 0 for every visible key), and then
    # num = 0 too.  Such a row outputs 0 and passes no gradient, like a fully masked softmax row.
    empty = den <= 0
    den = np.where(empty, 1.0, den).astype(num.dtype, copy=False)
    return phi_q, phi_k, states, z, den, num / den


def linear_attention(q, k, v, causal: bool = False) -> np.ndarray:
    """Linear attention with ``phi = elu + 1``; returns ``out (..., n, d_v)``.

    ``q (..., n, d_k)``, ``k (..., m, d_k)``, ``v (..., m, d_v)``; leading axes
    broadcast.  No mask argument: ``causal=True`` lets query ``i`` see keys
    ``j <= i + (m - n)`` (needs ``m >= n``).  A row whose normaliser is 0
    (every ``phi`` term underflowed) outputs 0.
    """
    q, k, v = _check(q, k, v, causal)
    return _forward(q, k, v, causal)[-1]


def _reverse_cumsum(x, axis):
    """``y_i = sum_{i' >= i} x_i'`` along ``axis``."""
    return np.flip(np.cumsum(np.flip(x, axis=axis), axis=axis), axis=axis)


def linear_attention_backward(dout, q, k, v, causal: bool = False):
    """Return ``(dq, dk, dv)`` for :func:`linear_attention` (the forward is recomputed).

    ``dout (..., n, d_v)``; ``q (..., n, d_k)``, ``k (..., m, d_k)``,
    ``v (..., m, d_v)`` and ``causal`` as in the forward.  The gradients have
    the shapes of ``q, k, v`` (broadcast axes summed back).
    """
    shapes = (np.shape(q), np.shape(k), np.shape(v))
    q, k, v = _check(q, k, v, causal)
    phi_q, phi_k, states, z, den, out = _forward(q, k, v, causal)
    dout = as_float_array(dout, "dout")
    if dout.shape != out.shape:
        raise shape_error("dout", str(out.shape), dout)
    d_num = dout / den                                               # dN, (..., n, d_v)
    d_den = -np.sum(dout * out, axis=-1, keepdims=True) / den        # dden, (..., n, 1); 0 on an empty row (out = 0)
    if causal:
        n, m = q.shape[-2], k.shape[-2]
        dphi_q = (states @ d_num[..., :, :, None])[..., 0] + z * d_den          # S_a dN_i + z_a dden_i, (..., n, d_k)
        # reverse prefix sums over queries; key j collects every query with a >= j
        first_query = np.maximum(np.arange(m) - (m - n), 0)                    # (m,)
        G = _reverse_cumsum(phi_q[..., :, :, None] * d_num[..., :, None, :], axis=-3)  # (..., n, d_k, d_v)
        g = _reverse_cumsum(phi_q * d_den, axis=-2)                            # (..., n, d_k)
        G, g = G[..., first_query, :, :], g[..., first_query, :]               # (..., m, d_k, d_v), (..., m, d_k)
        dphi_k = (G @ v[..., :, :, None])[..., 0] + g                          # G_j v_j + g_j, (..., m, d_k)
        dv = (np.swapaxes(G, -1, -2) @ phi_k[..., :, :, None])[..., 0]         # G_j^T phi(k_j), (..., m, d_v)
    else:
        dphi_q = d_num @ np.swapaxes(states, -1, -2) + d_den * z[..., None, :]  # (..., n, d_k)
        d_states = np.swapaxes(phi_q, -1, -2) @ d_num                          # (..., d_k, d_v)
        dz = np.sum(phi_q * d_den, axis=-2)                                    # (..., d_k)
        dphi_k = v @ np.swapaxes(d_states, -1, -2) + dz[..., None, :]          # (..., m, d_k)
        dv = phi_k @ d_states                                                  # (..., m, d_v)
    dq = elu_plus_one_backward(dphi_q, q)
    dk = elu_plus_one_backward(dphi_k, k)
    return unbroadcast(dq, shapes[0]), unbroadcast(dk, shapes[1]), unbroadcast(dv, shapes[2])


# ---------------------------------------------------------------- Linformer
class LinformerAttention(Module):
    """Linformer self-attention: keys and values projected along the sequence to length ``k``.

    Parameters ``W_q, W_k, W_v, W_o`` ``(d_model, d_model)``, biases
    ``b_q, b_k, b_v, b_o`` (if ``bias``), and ``E, F`` ``(k, seq_len)`` shared
    by the ``n_heads`` heads.  ``forward(x (..., seq_len, d_model))`` returns
    ``(..., seq_len, d_model)``; ``.weights`` holds the ``(..., H, n, k)``
    attention weights.  ``backward(dout)`` returns ``dx``.
    """

    def __init__(self, d_model: int, seq_len: int, k: int, n_heads: int = 1, bias: bool = True, *, rng=None) -> None:
        super().__init__()
        rng = default_rng(rng)
        for name, value in (("d_model", d_model), ("seq_len", seq_len), ("k", k), ("n_heads", n_heads)):
            if int(value) != value or value < 1:
                raise ValueError(f"{name} must be a positive integer, got {value!r}")
        if d_model % n_heads:
            raise ValueError(f"d_model={d_model} must be divisible by n_heads={n_heads}")
        self.d_model, self.seq_len, self.k, self.n_heads = int(d_model), int(seq_len), int(k), int(n_heads)
        self.d_head, self.bias = self.d_model // self.n_heads, bool(bias)
        for name in ("W_q", "W_k", "W_v", "W_o"):
            self.add_param(name, xavier_uniform(rng, self.d_model, self.d_model))
        if self.bias:
            for name in ("b_q", "b_k", "b_v", "b_o"):
                self.add_param(name, np.zeros(self.d_model))
        # E, F average over the sequence at initialisation scale: std 1/sqrt(seq_len)
        self.add_param("E", rng.normal(0.0, 1.0 / math.sqrt(self.seq_len), (self.k, self.seq_len)))
        self.add_param("F", rng.normal(0.0, 1.0 / math.sqrt(self.seq_len), (self.k, self.seq_len)))
        self.weights = None

    def _project(self, x, name):
        y = x @ self.params["W_" + name]                             # (..., n, d_model)
        return y + self.params["b_" + name] if self.bias else y

    def _split(self, y):
        """(..., L, d_model) -> (..., H, L, d_head)."""
        return np.swapaxes(y.reshape(y.shape[:-1] + (self.n_heads, self.d_head)), -2, -3)

    def _merge(self, y):
        """(..., H, L, d_head) -> (..., L, d_model)."""
        y = np.swapaxes(y, -2, -3)                                   # (..., L, H, d_head)
        return y.reshape(y.shape[:-2] + (self.d_model,))

    def forward(self, x) -> np.ndarray:
        """``x (..., seq_len, d_model)`` -> ``(..., seq_len, d_model)``; no mask (Linformer cannot be causal).

        The sequence length must equal ``seq_len`` (``E, F`` are ``(k, seq_len)``).
        ``.weights (..., H, seq_len, k)``.  Caches ``x``, the full keys and
        values ``(..., seq_len, d_model)``, the heads and the weights.
        """
        x = as_float_array(x, "x")
        if x.ndim < 2 or x.shape[-2] != self.seq_len:
            raise shape_error("x", f"(..., seq_len={self.seq_len}, d_model={self.d_model})", x)
        check_last_dim(x, "x", self.d_model, f"(..., seq_len={self.seq_len}, d_model={self.d_model})")
        E, F = self.params["E"], self.params["F"]
        Q = self._project(x, "q")                                    # (..., n, d_model)
        K = self._project(x, "k")                                    # (..., n, d_model)
        V = self._project(x, "v")                                    # (..., n, d_model)
        K_bar = E @ K                                                # (k, n) @ (..., n, d_model) -> (..., k, d_model)
        V_bar = F @ V                                                # (..., k, d_model)
        Qh, Kh, Vh = self._split(Q), self._split(K_bar), self._split(V_bar)  # (..., H, n|k|k, d_head)
        context, weights = scaled_dot_product_attention(Qh, Kh, Vh)  # (..., H, n, d_head), (..., H, n, k)
        concat = self._merge(context)                                # (..., n, d_model)
        out = concat @ self.params["W_o"]                            # (..., n, d_model)
        if self.bias:
            out = out + self.params["b_o"]
        self.weights = weights
        self.cache = (x, K, V, Qh, Kh, Vh, weights, concat)
        return out

    def backward(self, dout) -> np.ndarray:
        """``dout (..., seq_len, d_model)`` -> ``dx (..., seq_len, d_model)``, the sum of the Q, K and V paths.

        Adds the gradients of ``W_q, W_k, W_v, W_o`` (and biases) and of the
        sequence projections ``E, F (k, seq_len)`` into ``grads``.  Chapter 19.
        """
        x, K, V, Qh, Kh, Vh, weights, concat = self.cache
        D = self.d_model
        dout = as_float_array(dout, "dout")
        if dout.shape != x.shape:
            raise shape_error("dout", str(x.shape), dout)
        self.grads["W_o"] += concat.reshape(-1, D).T @ dout.reshape(-1, D)          # (d_model, d_model)
        if self.bias:
            self.grads["b_o"] += dout.reshape(-1, D).sum(axis=0)
        dcontext = self._split(dout @ self.params["W_o"].T)                          # (..., H, n, d_head)
        dQh, dKh, dVh = scaled_dot_product_attention_backward(dcontext, Qh, Kh, Vh, weights)
        dQ, dK_bar, dV_bar = self._merge(dQh), self._merge(dKh), self._merge(dVh)    # (..., n|k|k, d_model)
        n, k = self.seq_len, self.k
        self.grads["E"] += np.einsum("bkd,bnd->kn", dK_bar.reshape(-1, k, D), K.reshape(-1, n, D))  # dE = sum_b dK_bar K^T
        self.grads["F"] += np.einsum("bkd,bnd->kn", dV_bar.reshape(-1, k, D), V.reshape(-1, n, D))  # dF = sum_b dV_bar V^T
        dK = self.params["E"].T @ dK_bar                                             # (n, k) @ (..., k, D) -> (..., n, D)
        dV = self.params["F"].T @ dV_bar                                             # (..., n, d_model)
        x2 = x.reshape(-1, D)                                                        # (N, d_model)
        dx = np.zeros_like(x)
        for name, dy in (("q", dQ), ("k", dK), ("v", dV)):                           # three projections of one x
            self.grads["W_" + name] += x2.T @ dy.reshape(-1, D)
            if self.bias:
                self.grads["b_" + name] += dy.reshape(-1, D).sum(axis=0)
            dx += dy @ self.params["W_" + name].T                                    # contributions add (one input, three projections)
        return dx
