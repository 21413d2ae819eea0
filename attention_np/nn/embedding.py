"""Token embedding: a lookup table ``W (vocab_size, d)``; ``y = W[ids]``.

The backward of a gather is a scatter-add: every occurrence of token ``t``
adds its upstream gradient row into ``dW[t]`` (``np.add.at`` handles repeats).
"""
from __future__ import annotations

import numpy as np

from .module import Module, default_rng
from .validate import check_int_array


class Embedding(Module):
    """Lookup table ``W`` of shape ``(vocab_size, d)``, initialised N(0, 1/d)."""

    def __init__(self, vocab_size: int, d: int, *, rng=None) -> None:
        super().__init__()
        rng = default_rng(rng)
        self.vocab_size, self.d = int(vocab_size), int(d)
        self.add_param("W", rng.normal(0.0, 1.0 / np.sqrt(self.d), size=(self.vocab_size, self.d)))

    def forward(self, ids) -> np.ndarray:
        """Integer ``ids (...)`` in ``[0, vocab_size)``, e.g. ``(B, n)`` -> rows ``W[ids]`` ``(..., d)``.

        Caches ``ids``.
        """
        ids = check_int_array(ids, "ids", high=self.vocab_size, expected="(...) of token ids")
        self.cache = ids
        return self.params["W"][ids]                           # (..., d)

    def backward(self, dout) -> None:
        """Scatter-add ``dout (..., d)`` into ``grads['W']`` ``(vocab_size, d)``; returns ``None``.

        Integer ids have no gradient.  A token that occurs several times adds
        one row of ``dout`` per occurrence.
        """
        ids = self.cache
        np.add.at(self.grads["W"], ids.reshape(-1), dout.reshape(-1, self.d))
        return None
