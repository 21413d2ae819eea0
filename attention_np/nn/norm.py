r"""Layer normalisation (Ba, Kiros, Hinton 2016) over the last axis.

.. math::
    \mu = \tfrac1d\sum_i x_i,\quad \sigma^2 = \tfrac1d\sum_i (x_i-\mu)^2,\quad
    \hat x = (x-\mu)/\sqrt{\sigma^2+\epsilon},\quad y = \gamma\odot\hat x + \beta

Backward (per row, ``g = dy * gamma``):
``dx = (g - mean(g) - x_hat * mean(g * x_hat)) / sqrt(var + eps)``.
"""
from __future__ import annotations

import numpy as np

from .module import Module
from .validate import as_float_array, check_last_dim


class LayerNorm(Module):
    """LayerNorm over the last axis with learned ``gamma`` (ones) and ``beta`` (zeros)."""

    def __init__(self, d: int, eps: float = 1e-5) -> None:
        super().__init__()
        self.d, self.eps = int(d), float(eps)
        self.add_param("gamma", np.ones(self.d))
        self.add_param("beta", np.zeros(self.d))

    def forward(self, x) -> np.ndarray:
        """``x (..., d)`` -> ``gamma * x_hat + beta`` ``(..., d)``, each row normalised over its ``d`` features.

        Caches ``x_hat (..., d)`` and ``1/sqrt(var + eps)`` ``(..., 1)``.
        """
        x = as_float_array(x, "x")
        check_last_dim(x, "x", self.d, f"(..., d={self.d})")
        mu = x.mean(axis=-1, keepdims=True)                    # (..., 1)
        var = x.var(axis=-1, keepdims=True)                    # (..., 1)
        inv_std = 1.0 / np.sqrt(var + self.eps)                # (..., 1)
        x_hat = (x - mu) * inv_std                             # (..., d)
        self.cache = (x_hat, inv_std)
        return x_hat * self.params["gamma"] + self.params["beta"]

    def backward(self, dout) -> np.ndarray:
        """``dout (..., d)`` -> ``dx (..., d)`` (the formula in the module docstring).

        Adds ``sum(dout * x_hat)`` into ``grads["gamma"]`` and ``sum(dout)`` into
        ``grads["beta"]``, both ``(d,)``, summed over every leading axis.
        """
        x_hat, inv_std = self.cache
        self.grads["gamma"] += (dout * x_hat).reshape(-1, self.d).sum(axis=0)
        self.grads["beta"] += dout.reshape(-1, self.d).sum(axis=0)
        g = dout * self.params["gamma"]                        # (..., d)
        return inv_std * (g - g.mean(axis=-1, keepdims=True)
                          - x_hat * (g * x_hat).mean(axis=-1, keepdims=True))
