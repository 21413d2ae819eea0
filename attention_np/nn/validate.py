"""Input checking shared by every layer and mechanism.

Every public function validates what a user passes in and raises a
``ValueError`` that names the argument, the shape it expected and the shape it
received, e.g. ``k must have shape (..., m, d_k=16), got (2, 5, 8)``.
"""
from __future__ import annotations

import numpy as np


def shape_error(name: str, expected: str, x) -> ValueError:
    """Build the project's standard shape error for argument ``name``."""
    return ValueError(f"{name} must have shape {expected}, got {tuple(np.shape(x))}")


def as_float_array(x, name: str) -> np.ndarray:
    """Return ``x`` as a floating-point array (float16/32/64 kept, ints -> float64)."""
    arr = np.asarray(x)
    if arr.dtype == object:
        raise ValueError(f"{name} must be a numeric array, got dtype object")
    if not np.issubdtype(arr.dtype, np.floating):
        if np.issubdtype(arr.dtype, np.complexfloating):
            raise ValueError(f"{name} must be real-valued, got dtype {arr.dtype}")
        arr = arr.astype(np.float64)
    return arr


def check_ndim(x: np.ndarray, name: str, ndim: int, expected: str, at_least: bool = False) -> None:
    """Raise unless ``x.ndim == ndim`` (or ``>= ndim`` when ``at_least``)."""
    ok = x.ndim >= ndim if at_least else x.ndim == ndim
    if not ok:
        raise shape_error(name, expected, x)


def check_last_dim(x: np.ndarray, name: str, size: int, expected: str) -> None:
    """Raise unless the last axis of ``x`` has length ``size``."""
    if x.ndim < 1 or x.shape[-1] != size:
        raise shape_error(name, expected, x)


def check_mask(mask, target_shape: tuple, name: str = "mask") -> np.ndarray:
    """Validate a boolean mask (True = may attend) that broadcasts to ``target_shape``."""
    mask = np.asarray(mask)
    if mask.dtype != np.bool_:
        raise ValueError(
            f"{name} must be a boolean array (True = may attend), got dtype {mask.dtype}"
        )
    try:
        shape = np.broadcast_shapes(mask.shape, target_shape)
    except ValueError:
        shape = None
    if shape != tuple(target_shape):
        raise ValueError(
            f"{name} must broadcast to shape {tuple(target_shape)}, got {mask.shape}"
        )
    return mask


def check_int_array(x, name: str, high: int | None = None, expected: str = "") -> np.ndarray:
    """Validate an array of integer ids in ``[0, high)``."""
    arr = np.asarray(x)
    if not np.issubdtype(arr.dtype, np.integer):
        raise ValueError(f"{name} must be an integer array {expected}, got dtype {arr.dtype}")
    if high is not None and arr.size and (arr.min() < 0 or arr.max() >= high):
        raise ValueError(
            f"{name} must hold ids in [0, {high}), got values in [{arr.min()}, {arr.max()}]"
        )
    return arr
