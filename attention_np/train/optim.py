r"""Optimisers over ``Module.parameters()``; they update parameters in place.

SGD with momentum: ``v <- mu v + g``, ``p <- p - lr v``.

Adam (Kingma & Ba 2015) with decoupled weight decay (AdamW, Loshchilov & Hutter 2019):

.. math::
    m \leftarrow \beta_1 m + (1-\beta_1) g,\quad v \leftarrow \beta_2 v + (1-\beta_2) g^2,\quad
    p \leftarrow p - \eta\Bigl(\frac{m/(1-\beta_1^t)}{\sqrt{v/(1-\beta_2^t)}+\epsilon} + \lambda p\Bigr)
"""
from __future__ import annotations

import numpy as np


def _collect(params):
    if hasattr(params, "parameters"):
        params = params.parameters()
    triples = [(name, p, g) for name, p, g in params]
    if not triples:
        raise ValueError("params must contain at least one (name, param, grad) triple")
    return triples


class Optimizer:
    def __init__(self, params, lr: float) -> None:
        if lr <= 0:
            raise ValueError(f"lr must be positive, got {lr}")
        self.params = _collect(params)
        self.lr = float(lr)

    def zero_grad(self) -> None:
        for _, _, g in self.params:
            g[...] = 0.0

    def step(self) -> None:
        raise NotImplementedError


class SGD(Optimizer):
    """Stochastic gradient descent with optional momentum and (L2) weight decay."""

    def __init__(self, params, lr: float = 0.1, momentum: float = 0.0, weight_decay: float = 0.0) -> None:
        super().__init__(params, lr)
        self.momentum, self.weight_decay = float(momentum), float(weight_decay)
        self.velocity = [np.zeros_like(p) for _, p, _ in self.params]

    def step(self) -> None:
        for (_, p, g), vel in zip(self.params, self.velocity):
            grad = g + self.weight_decay * p if self.weight_decay else g
            if self.momentum:
                vel *= self.momentum
                vel += grad
                grad = vel
            p -= self.lr * grad


class Adam(Optimizer):
    """Adam; ``weight_decay`` is decoupled (AdamW): it shrinks parameters directly."""

    def __init__(self, params, lr: float = 1e-3, betas=(0.9, 0.999), eps: float = 1e-8,
                 weight_decay: float = 0.0) -> None:
        super().__init__(params, lr)
        self.beta1, self.beta2 = map(float, betas)
        self.eps, self.weight_decay = float(eps), float(weight_decay)
        self.m = [np.zeros_like(p) for _, p, _ in self.params]
        self.v = [np.zeros_like(p) for _, p, _ in self.params]
        self.t = 0

    def step(self) -> None:
        self.t += 1
        c1 = 1.0 - self.beta1 ** self.t
        c2 = 1.0 - self.beta2 ** self.t
        for (_, p, g), m, v in zip(self.params, self.m, self.v):
            m *= self.beta1
            m += (1.0 - self.beta1) * g
            v *= self.beta2
            v += (1.0 - self.beta2) * g * g
            if self.weight_decay:
                p -= self.lr * self.weight_decay * p
            p -= self.lr * (m / c1) / (np.sqrt(v / c2) + self.eps)


def clip_grad_norm(params, max_norm: float) -> float:
    """Scale all gradients in place so their global L2 norm is at most ``max_norm``; return the norm before."""
    triples = _collect(params)
    norm = float(np.sqrt(sum(float(np.sum(g * g)) for _, _, g in triples)))
    if norm > max_norm:
        for _, _, g in triples:
            g *= max_norm / norm
    return norm
