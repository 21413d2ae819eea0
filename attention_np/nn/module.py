"""The ``Module`` base class: parameters, gradients, forward and backward.

A module owns named parameters (``params``) and a gradient buffer of the same
shape for each (``grads``).  ``forward`` computes the output and caches what
``backward`` needs on ``self.cache``; ``backward(dout)`` *adds* parameter
gradients into ``grads`` and returns the gradient(s) with respect to the
inputs, in input order.

Because the cache holds exactly one forward pass, a module that is applied
several times before one backward (a decoder step inside a loop) saves
``module.cache`` after each forward and restores it before the matching
backward, latest first::

    caches = []
    for t in range(T):
        y[t] = layer(x[t]); caches.append(layer.cache)
    for t in reversed(range(T)):
        layer.cache = caches[t]; dx[t] = layer.backward(dy[t])

Gradients accumulate across those backward calls, as they must.
"""
from __future__ import annotations

from typing import Iterator

import numpy as np


class Module:
    """Base class for every layer with parameters (and for containers of layers)."""

    def __init__(self) -> None:
        self.params: dict[str, np.ndarray] = {}
        self.grads: dict[str, np.ndarray] = {}
        self.cache = None
        self.training = True

    # -- parameters -------------------------------------------------------
    def add_param(self, name: str, value: np.ndarray) -> np.ndarray:
        """Register ``value`` as parameter ``name`` with a zero gradient buffer."""
        value = np.asarray(value, dtype=np.float64)
        self.params[name] = value
        self.grads[name] = np.zeros_like(value)
        return value

    def children(self) -> Iterator[tuple[str, "Module"]]:
        """Direct sub-modules, as ``(attribute_name, module)``; lists are indexed ``name.i``."""
        for name, value in vars(self).items():
            if isinstance(value, Module):
                yield name, value
            elif isinstance(value, (list, tuple)):
                for i, item in enumerate(value):
                    if isinstance(item, Module):
                        yield f"{name}.{i}", item

    def parameters(self, prefix: str = "") -> Iterator[tuple[str, np.ndarray, np.ndarray]]:
        """Yield ``(qualified_name, param, grad)`` for this module and all children."""
        for name, value in self.params.items():
            yield prefix + name, value, self.grads[name]
        for child_name, child in self.children():
            yield from child.parameters(prefix + child_name + ".")

    def num_parameters(self) -> int:
        """Total number of scalar parameters, children included."""
        return int(sum(p.size for _, p, _ in self.parameters()))

    def zero_grad(self) -> None:
        """Set every gradient buffer (children included) to zero, in place."""
        for _, _, grad in self.parameters():
            grad[...] = 0.0

    def astype(self, dtype) -> "Module":
        """Convert every parameter and gradient (children included) to ``dtype``, in place."""
        for name in self.params:
            self.params[name] = self.params[name].astype(dtype)
            self.grads[name] = self.grads[name].astype(dtype)
        for _, child in self.children():
            child.astype(dtype)
        return self

    # -- mode -------------------------------------------------------------
    def train(self, mode: bool = True) -> "Module":
        """Switch training mode (dropout active) on or off, children included."""
        self.training = mode
        for _, child in self.children():
            child.train(mode)
        return self

    def eval(self) -> "Module":
        """Switch to evaluation mode (dropout off)."""
        return self.train(False)

    # -- computation ------------------------------------------------------
    def forward(self, *inputs, **kwargs):
        raise NotImplementedError(f"{type(self).__name__} does not implement forward")

    def backward(self, dout):
        raise NotImplementedError(f"{type(self).__name__} does not implement backward")

    def __call__(self, *inputs, **kwargs):
        return self.forward(*inputs, **kwargs)

    def __repr__(self) -> str:
        shapes = ", ".join(f"{k}{tuple(v.shape)}" for k, v in self.params.items())
        return f"{type(self).__name__}({shapes})"


def default_rng(rng: np.random.Generator | None) -> np.random.Generator:
    """Return ``rng`` or, if None, a freshly seeded generator (pass your own for reproducibility)."""
    if rng is None:
        return np.random.default_rng()
    if not isinstance(rng, np.random.Generator):
        raise ValueError(f"rng must be a numpy.random.Generator or None, got {type(rng).__name__}")
    return rng


def xavier_uniform(rng: np.random.Generator, d_in: int, d_out: int) -> np.ndarray:
    """Glorot/Xavier uniform initialisation of a ``(d_in, d_out)`` weight."""
    limit = np.sqrt(6.0 / (d_in + d_out))
    return rng.uniform(-limit, limit, size=(d_in, d_out))
