"""Inverted dropout: in training, keep each entry with probability ``1 - p`` and
scale kept entries by ``1 / (1 - p)``; in evaluation, the identity.

The random mask comes from the explicit ``rng`` and is cached, so the backward
multiplies by the same mask: ``dx = dy * keep / (1 - p)``.
"""
from __future__ import annotations

import numpy as np

from .module import Module, default_rng
from .validate import as_float_array


class Dropout(Module):
    """Inverted dropout with drop probability ``p`` in ``[0, 1)`` and an explicit ``rng``.

    Srivastava et al. (2014), *Dropout: A Simple Way to Prevent Neural Networks
    from Overfitting*.  No parameters; active only in training mode
    (:meth:`Module.train` / :meth:`Module.eval`).
    """

    def __init__(self, p: float = 0.1, *, rng=None) -> None:
        super().__init__()
        if not 0.0 <= p < 1.0:
            raise ValueError(f"p must lie in [0, 1), got {p}")
        self.p = float(p)
        self.rng = default_rng(rng)

    def forward(self, x) -> np.ndarray:
        """``x (...)`` of any shape -> ``(...)``: ``x * keep / (1 - p)`` in training, ``x`` itself otherwise.

        Caches the scaled keep mask ``(...)`` (None in evaluation or when ``p = 0``).
        """
        x = as_float_array(x, "x")
        if not self.training or self.p == 0.0:
            self.cache = None
            return x
        keep = self.rng.random(x.shape) >= self.p               # (...) boolean
        scale = keep / (1.0 - self.p)
        self.cache = scale.astype(x.dtype)
        return x * self.cache

    def backward(self, dout) -> np.ndarray:
        """``dout (...)`` -> ``dx (...)``: multiplied by the same cached mask (the identity in evaluation)."""
        return dout if self.cache is None else dout * self.cache
