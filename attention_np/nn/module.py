"""The ``Module`` base class: parameters, gradients, forward and backward.

A module owns named parameters (``params``) and a gradient buffer of the same
shape for each (``grads``).  ``forward`` computes the output and caches what
``backward`` needs on ``self.cache``; ``backward(dout)`` *adds* parameter
gradients into ``grads`` and returns one gradient per floating-point array the
caller passed to ``forward``, in argument order: an array for one, a tuple for
several, ``None`` when the inputs are integer ids (masks, positions and ids get
no gradient).

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

import functools
import inspect
from typing import Iterator

import numpy as np


def _float_dtype(values):
    """The floating dtype of the array arguments (NumPy promotion), or None if there are none."""
    dtypes = [v.dtype for v in values if isinstance(v, np.ndarray) and v.dtype.kind == "f"]
    return np.result_type(*dtypes) if dtypes else None


def _narrow(result, dtype):
    """Cast floating arrays in ``result`` (an array or a tuple/list of them) down to ``dtype``."""
    if isinstance(result, np.ndarray):
        if result.dtype.kind == "f" and result.dtype.itemsize > dtype.itemsize:
            return result.astype(dtype)
        return result
    if isinstance(result, (tuple, list)):
        return type(result)(_narrow(r, dtype) for r in result)
    return result


def _refuse_wrong_dout(module, method, args, kwargs, expected):
    """Raise a named ValueError for an upstream gradient whose shape is not the forward's output.

    A module that validates its upstream gradient itself keeps its own message
    (e.g. ``dh_tilde must have shape (B=3, d=4), ...``); otherwise NumPy would
    broadcast or reshape silently, or fail with a raw error, so a generic one is
    raised.  Gradient buffers are left as they were either way.
    """
    params = [p for p in inspect.signature(method).parameters if p != "self"]
    name = params[0] if params else "dout"
    saved = [(grad, grad.copy()) for _, _, grad in module.parameters()]
    try:
        method(module, *args, **kwargs)
    except Exception as err:                                   # noqa: BLE001 - re-raised below with a name
        if isinstance(err, ValueError) and str(err).startswith(name):
            raise
        cause = err
    else:
        cause = None
    finally:
        for grad, copy in saved:
            grad[...] = copy
    raise ValueError(f"{name} must have shape {tuple(expected)} (the output of the last forward), "
                     f"got {tuple(np.shape(args[0]))}") from cause


# Constructor arguments that must be positive numbers, by annotation (sizes) or by name (eps, bases).
_POSITIVE_FLOATS = {"eps", "base", "rope_base"}


def check_sizes(owner: str, arguments: dict, annotations: dict) -> None:
    """Refuse sizes that are not positive integers and eps/bases that are not positive numbers.

    ``arguments`` maps a constructor's parameter names to the values passed;
    ``annotations`` to their annotations (as strings, ``"int"`` or ``"int | None"``).
    The one validation every module constructor goes through (see :class:`Module`).
    """
    from .validate import positive_float, positive_int

    for name, value in arguments.items():
        kind = str(annotations.get(name, "")).replace(" ", "")
        try:
            if kind in ("int", "int|None") and not (kind == "int|None" and value is None):
                positive_int(value, name)
            elif name in _POSITIVE_FLOATS and value is not None:
                positive_float(value, name)
        except ValueError as err:
            raise ValueError(f"{err} (constructing {owner})") from None


def _checks_sizes(init):
    signature = inspect.signature(init)
    annotations = {name: p.annotation for name, p in signature.parameters.items()}

    @functools.wraps(init)
    def wrapper(self, *args, **kwargs):
        bound = signature.bind(self, *args, **kwargs)
        arguments = {k: v for k, v in bound.arguments.items() if k != "self"}
        check_sizes(type(self).__name__, arguments, annotations)
        init(self, *args, **kwargs)

    wrapper._checks_sizes = True
    return wrapper


def _keeps_input_dtype(method, is_forward):
    """Wrap ``forward``/``backward`` so that float32 in gives float32 out (see :class:`Module`)."""
    @functools.wraps(method)
    def wrapper(self, *args, **kwargs):
        if is_forward:
            dtype = _float_dtype(list(args) + list(kwargs.values()))
            self._io_dtype = dtype
            result = method(self, *args, **kwargs)
            # remember the output shape together with the cache it belongs to: backward checks dout
            # against it, unless the caller restored another step's cache (see the class docstring)
            self._out_shape = (id(self.cache), result.shape) if isinstance(result, np.ndarray) else None
        else:
            if not hasattr(self, "_io_dtype"):
                raise RuntimeError(f"{type(self).__name__}.backward called before forward: "
                                   "forward caches what backward needs, so call it first")
            out = getattr(self, "_out_shape", None)
            if args and out is not None and out[0] == id(self.cache) and np.shape(args[0]) != out[1]:
                _refuse_wrong_dout(self, method, args, kwargs, out[1])
            dtype = self._io_dtype
            result = method(self, *args, **kwargs)
        return result if dtype is None else _narrow(result, dtype)

    wrapper._keeps_input_dtype = True
    return wrapper


def accepts_unbatched(*names):
    """Mark a sequence module's ``forward``: the array arguments ``names`` may come without their batch axis.

    ``x (n, d)`` is then run as ``x[None] (1, n, d)`` and the batch axis is
    removed again from the output ``(n, d_out)``, from ``.weights`` (e.g.
    ``(H, n, m)``) and, in ``backward``, from every returned gradient, so a
    caller gets back the rank it passed (the contract in ``attention_np``'s
    docstring).  The first name decides: when it is 2-D, every other named
    argument that is given (a ``context``) must be 2-D too.  One helper for every
    attention module, applied by :class:`Module` (``__init_subclass__``).
    """
    def mark(forward):
        forward._unbatched_args = tuple(names)
        return forward
    return mark


def _unbatched_forward(method, names):
    from .validate import shape_error

    signature = inspect.signature(method)

    @functools.wraps(method)
    def wrapper(self, *args, **kwargs):
        bound = signature.bind(self, *args, **kwargs)
        first = bound.arguments.get(names[0])
        if first is None or np.ndim(first) != 2:
            return method(*bound.args, **bound.kwargs)
        for name in names:                                   # (n, d) -> (1, n, d), every named sequence
            value = bound.arguments.get(name)
            if value is None:
                continue
            if np.ndim(value) != 2:
                raise shape_error(name, f"(m, d) without a batch axis, like {names[0]} {np.shape(first)}", value)
            bound.arguments[name] = np.asarray(value)[None]
        result = method(*bound.args, **bound.kwargs)[0]      # (1, n, d_out) -> (n, d_out)
        weights = getattr(self, "weights", None)
        if isinstance(weights, np.ndarray):
            self.weights = weights[0]                        # e.g. (1, H, n, m) -> (H, n, m)
        return result

    return wrapper


def _unbatched_backward(method):
    @functools.wraps(method)
    def wrapper(self, dout, *args, **kwargs):
        # a batched forward of these modules returns (B, n, d_out): a 2-D dout belongs to an unbatched one
        if np.ndim(dout) != 2:
            return method(self, dout, *args, **kwargs)
        result = method(self, np.asarray(dout)[None], *args, **kwargs)
        if isinstance(result, tuple):
            return tuple(r[0] if isinstance(r, np.ndarray) else r for r in result)
        return result[0] if isinstance(result, np.ndarray) else result

    return wrapper


class Module:
    """Base class for every layer with parameters (and for containers of layers).

    **Dtypes.** Parameters are float64 unless converted with :meth:`astype`. A
    module returns the floating dtype of its inputs: float32 in, float32 out (the
    computation runs at the parameters' precision and the result is cast down, the
    way master weights are kept in float64). ``backward`` returns input gradients
    in the dtype of the matching forward's inputs; parameter gradients stay in the
    parameters' dtype.

    **Checks.** Every constructor argument annotated ``int`` (a size) must be a
    positive integer and ``eps``/``base``/``rope_base`` positive numbers
    (:func:`check_sizes`); ``backward`` before ``forward`` and an upstream gradient
    whose shape differs from the forward's output are named errors.  Every
    subclass gets these from ``__init_subclass__``.

    **Ranks.** A sequence module whose ``forward`` is marked with
    :func:`accepts_unbatched` takes ``x (n, d)`` as well as ``x (B, n, d)`` and
    returns outputs, ``.weights`` and input gradients of the rank it was given.
    """

    def __init_subclass__(cls, **kwargs):
        super().__init_subclass__(**kwargs)
        if "__init__" in cls.__dict__ and not getattr(cls.__init__, "_checks_sizes", False):
            cls.__init__ = _checks_sizes(cls.__init__)
        unbatched = getattr(cls.__dict__.get("forward"), "_unbatched_args", None)
        for name, is_forward in (("forward", True), ("backward", False)):
            method = cls.__dict__.get(name)
            if method is not None and not getattr(method, "_keeps_input_dtype", False):
                if unbatched:                                # see accepts_unbatched
                    method = _unbatched_forward(method, unbatched) if is_forward else _unbatched_backward(method)
                setattr(cls, name, _keeps_input_dtype(method, is_forward))

    def __init__(self) -> None:
        self.params: dict[str, np.ndarray] = {}
        self.grads: dict[str, np.ndarray] = {}
        self.cache = None
        self.training = True

    # -- parameters -------------------------------------------------------
    def add_param(self, name: str, value: np.ndarray) -> np.ndarray:
        """Register ``value`` (any shape, e.g. ``(d_in, d_out)``) as parameter ``name``.

        Stored as float64 in ``params[name]``, with a zero gradient buffer of
        the same shape in ``grads[name]``; returns the stored array.
        """
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
        """Compute the output from ``inputs`` (e.g. ``x (B, n, d_model)``) and cache what backward needs.

        Subclasses document their own shapes.  The cache holds one forward
        pass (see the class docstring for layers applied several times).
        """
        raise NotImplementedError(f"{type(self).__name__} does not implement forward")

    def backward(self, dout):
        """Given ``dout``, shaped like the last forward's output (e.g. ``(B, n, d_model)``), return input gradients.

        One gradient per floating-point array passed to ``forward``, in
        argument order (one array, a tuple for several, ``None`` for integer
        ids); parameter gradients are *added* into ``grads``, so call
        :meth:`zero_grad` between optimisation steps.
        """
        raise NotImplementedError(f"{type(self).__name__} does not implement backward")

    def __call__(self, *inputs, **kwargs):
        """Same as :meth:`forward`."""
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
