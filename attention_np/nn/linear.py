r"""Affine layer ``y = x W + b`` (the backward is derived in Chapter 3).

Shapes: ``x (..., d_in)``, ``W (d_in, d_out)``, ``b (d_out,)``, ``y (..., d_out)``.
Backward, with every leading axis flattened into ``N``:

.. math::
    dW = x^\top dy,\qquad db = \textstyle\sum_N dy,\qquad dx = dy\, W^\top
"""
from __future__ import annotations

import numpy as np

from .module import Module, default_rng, xavier_uniform
from .validate import as_float_array, check_last_dim


class Linear(Module):
    """``y = x @ W + b`` with ``W`` stored ``(d_in, d_out)``."""

    def __init__(self, d_in: int, d_out: int, bias: bool = True, *, rng=None) -> None:
        super().__init__()
        rng = default_rng(rng)
        self.d_in, self.d_out, self.bias = int(d_in), int(d_out), bool(bias)
        self.add_param("W", xavier_uniform(rng, self.d_in, self.d_out))
        if self.bias:
            self.add_param("b", np.zeros(self.d_out))

    def forward(self, x) -> np.ndarray:
        """``x (..., d_in)`` -> ``y (..., d_out) = x W + b``; any number of leading axes.

        Caches ``x`` for the backward.
        """
        x = as_float_array(x, "x")
        check_last_dim(x, "x", self.d_in, f"(..., d_in={self.d_in})")
        y = x @ self.params["W"]                               # (..., d_in) @ (d_in, d_out) -> (..., d_out)
        if self.bias:
            y = y + self.params["b"]
        self.cache = x
        return y

    def backward(self, dout) -> np.ndarray:
        """``dout (..., d_out)`` -> ``dx (..., d_in) = dout W^T``.

        Adds ``x^T dout`` into ``grads["W"]`` ``(d_in, d_out)`` and the sum of
        ``dout`` over every leading axis into ``grads["b"]`` ``(d_out,)``
        (Chapter 3).
        """
        x = self.cache
        x2 = x.reshape(-1, self.d_in)                          # (N, d_in)
        d2 = dout.reshape(-1, self.d_out)                      # (N, d_out)
        self.grads["W"] += x2.T @ d2                           # (d_in, d_out)
        if self.bias:
            self.grads["b"] += d2.sum(axis=0)                  # (d_out,)
        return dout @ self.params["W"].T                       # (..., d_in)
