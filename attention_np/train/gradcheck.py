r"""Gradient checking by central finite differences (every chapter prints one).

For a forward ``f`` and a fixed random "upstream gradient" ``G`` of the
output's shape, the scalar ``L = sum(f(x) * G)`` has ``dL/dx`` equal to what a
correct backward returns when called with ``dout = G``.  We estimate each entry

.. math::
    \frac{\partial L}{\partial x_i} \approx \frac{L(x + \varepsilon e_i) - L(x - \varepsilon e_i)}{2\varepsilon},
    \qquad \varepsilon = 10^{-6}

in float64 and compare with

.. math::
    \text{error}(a, n) = \frac{\max_i |a_i - n_i|}{\max(1, \max_i |a_i|, \max_i |n_i|)}

— relative to the largest entry, and absolute when the whole gradient is
smaller than 1 (so a gradient that is exactly zero, e.g. a key bias under a
shift-invariant softmax, does not divide finite-difference noise by zero).
The project's bar is an error below ``1e-7``.
"""
from __future__ import annotations

from typing import Callable, Sequence

import numpy as np

TOLERANCE = 1e-7


def relative_error(analytic, numeric) -> float:
    """The error measure above between two gradients of the same shape."""
    a, n = np.asarray(analytic, dtype=np.float64), np.asarray(numeric, dtype=np.float64)
    if a.shape != n.shape:
        raise ValueError(f"analytic gradient has shape {a.shape} but numeric has {n.shape}")
    if a.size == 0:
        return 0.0
    scale = max(1.0, float(np.max(np.abs(a))), float(np.max(np.abs(n))))
    return float(np.max(np.abs(a - n)) / scale)


def numerical_gradient(f: Callable[[], float], x: np.ndarray, eps: float = 1e-6) -> np.ndarray:
    """Central-difference gradient of the scalar ``f()`` with respect to array ``x``.

    ``x`` is perturbed *in place* (one entry at a time) and restored, so ``f``
    must read ``x`` (or something that aliases it, such as a module parameter).
    ``x`` must be float64. This loop over entries is the point of the function.
    """
    if not isinstance(x, np.ndarray) or x.dtype != np.float64:
        raise ValueError(f"x must be a float64 numpy array, got {getattr(x, 'dtype', type(x).__name__)}")
    grad = np.zeros_like(x)
    it = np.nditer(x, flags=["multi_index"], op_flags=[["readwrite"]])
    for _ in it:
        idx = it.multi_index
        old = x[idx]
        x[idx] = old + eps
        plus = float(f())
        x[idx] = old - eps
        minus = float(f())
        x[idx] = old
        grad[idx] = (plus - minus) / (2.0 * eps)
    return grad


def _as_tuple(value):
    if value is None:
        return ()
    return tuple(value) if isinstance(value, (tuple, list)) else (value,)


def _float64_inputs(inputs):
    out = []
    for x in inputs:
        if isinstance(x, np.ndarray) and np.issubdtype(x.dtype, np.floating):
            if x.dtype != np.float64:
                raise ValueError(f"gradient checks need float64 inputs, got {x.dtype}")
            out.append(x.copy())
        else:
            out.append(x)
    return out


def check_function(forward: Callable, backward: Callable, *inputs, eps: float = 1e-6,
                   seed: int = 0, details: bool = False):
    """Check a functional pair.

    ``forward(*inputs)`` returns an array; ``backward(dout, *inputs)`` returns
    one gradient per floating-point input, in input order (integer inputs and
    ``None`` are passed through and not differentiated).  Returns the largest
    error, or a dict ``{"input0": err, ...}`` when ``details``.
    """
    inputs = _float64_inputs(inputs)
    out = np.asarray(forward(*inputs))
    G = np.random.default_rng(seed).standard_normal(out.shape)
    grads = _as_tuple(backward(G, *inputs))
    floats = [i for i, x in enumerate(inputs) if isinstance(x, np.ndarray) and x.dtype == np.float64]
    if len(grads) != len(floats):
        raise ValueError(f"backward returned {len(grads)} gradients for {len(floats)} floating inputs")
    errors = {}
    for g, i in zip(grads, floats):
        num = numerical_gradient(lambda: np.sum(forward(*inputs) * G), inputs[i], eps)
        errors[f"input{i}"] = relative_error(g, num)
    return errors if details else max(errors.values(), default=0.0)


def check_module(module, *inputs, eps: float = 1e-6, seed: int = 0, details: bool = False,
                 backward_kwargs: dict | None = None, **forward_kwargs):
    """Check every input gradient and every parameter gradient of ``module``.

    Runs ``module.forward(*inputs, **forward_kwargs)``, draws a random ``G`` of
    the output's shape, calls ``module.backward(G)`` and compares the returned
    input gradients (one per floating-point positional input, in order) and
    every ``grads[...]`` (children included) with central differences of
    ``L = sum(forward(...) * G)``.  Parameters must be float64.

    Returns the largest error; with ``details=True`` a dict mapping
    ``"input0"``, ``"input1"``, ... and each qualified parameter name to its
    error.  Any randomness inside ``forward`` must be frozen by the caller.
    """
    inputs = _float64_inputs(inputs)
    for name, p, _ in module.parameters():
        if p.dtype != np.float64:
            raise ValueError(f"parameter {name} must be float64 for a gradient check, got {p.dtype}")

    def loss() -> float:
        return float(np.sum(np.asarray(module.forward(*inputs, **forward_kwargs)) * G))

    out = np.asarray(module.forward(*inputs, **forward_kwargs))
    G = np.random.default_rng(seed).standard_normal(out.shape)
    module.zero_grad()
    module.forward(*inputs, **forward_kwargs)
    grads = _as_tuple(module.backward(G, **(backward_kwargs or {})))
    analytic_params = {name: g.copy() for name, _, g in module.parameters()}
    floats = [i for i, x in enumerate(inputs) if isinstance(x, np.ndarray) and x.dtype == np.float64]
    grads = tuple(g for g in grads if g is not None) if len(grads) != len(floats) else grads
    if len(grads) != len(floats):
        raise ValueError(
            f"{type(module).__name__}.backward returned {len(grads)} input gradients "
            f"for {len(floats)} floating-point inputs"
        )
    errors = {}
    for g, i in zip(grads, floats):
        errors[f"input{i}"] = relative_error(g, numerical_gradient(loss, inputs[i], eps))
    for name, p, _ in module.parameters():
        errors[name] = relative_error(analytic_params[name], numerical_gradient(loss, p, eps))
    return errors if details else max(errors.values(), default=0.0)
