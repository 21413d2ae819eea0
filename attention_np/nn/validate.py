"""Input checking shared by every layer and mechanism.

Every public function validates what a user passes in and raises a
``ValueError`` that names the argument, the shape it expected and the shape it
received, e.g. ``k must have shape (..., m, d_k=16), got (2, 5, 8)``.
"""
from __future__ import annotations

import numpy as np


def shape_error(name: str, expected: str, x) -> ValueError:
    """Build the project's standard shape error for argument ``name``.

    ``expected`` is the shape in words, e.g. ``"(B, n, d_model=8)"``; ``x`` is the
    offending value, any shape ``(...)``.  Returns (does not raise) the ValueError.
    """
    return ValueError(f"{name} must have shape {expected}, got {tuple(np.shape(x))}")


def as_float_array(x, name: str) -> np.ndarray:
    """Return ``x (...)`` as a floating-point array of the same shape (float16/32/64 kept, ints -> float64).

    Object and complex arrays are refused with a ValueError naming ``name``.
    """
    arr = np.asarray(x)
    if arr.dtype == object:
        raise ValueError(f"{name} must be a numeric array, got dtype object")
    if not np.issubdtype(arr.dtype, np.floating):
        if np.issubdtype(arr.dtype, np.complexfloating):
            raise ValueError(f"{name} must be real-valued, got dtype {arr.dtype}")
        arr = arr.astype(np.float64)
    return arr


def check_ndim(x: np.ndarray, name: str, ndim: int, expected: str, at_least: bool = False) -> None:
    """Raise unless ``x.ndim == ndim`` (or ``>= ndim`` when ``at_least``).

    ``x (...)`` any array; ``expected`` names the wanted shape, e.g. ``"(B, n, d)"``.
    """
    ok = x.ndim >= ndim if at_least else x.ndim == ndim
    if not ok:
        raise shape_error(name, expected, x)


def check_last_dim(x: np.ndarray, name: str, size: int, expected: str) -> None:
    """Raise unless ``x`` has shape ``(..., size)``; ``expected`` names it, e.g. ``"(..., d_in=4)"``."""
    if x.ndim < 1 or x.shape[-1] != size:
        raise shape_error(name, expected, x)


def check_mask(mask, target_shape: tuple, name: str = "mask") -> np.ndarray:
    """Validate a boolean mask (True = may attend) for scores of shape ``target_shape``.

    Two kinds of mask are accepted, so that a mask can never line up with the
    wrong axes silently:

    * up to two axes, e.g. ``(n, m)`` or ``(m,)``: shared by every leading axis;
    * as many axes as the scores, e.g. ``(B, 1, n, m)`` against ``(B, H, n, m)``:
      every axis named, size 1 where it broadcasts.

    A three-axis mask such as ``padding_mask``'s ``(B, 1, m)`` against four-axis
    scores ``(B, H, n, m)`` would broadcast from the right and pair the batch
    axis with the head axis; it is refused with a message that says how to
    insert the missing axis.  Non-boolean masks (e.g. PyTorch-style additive
    ``0 / -inf`` float masks, or 0/1 integers) are refused too.
    """
    target_shape = tuple(target_shape)
    mask = np.asarray(mask)
    if mask.dtype != np.bool_:
        hint = (" (an additive 0 / -inf float mask means the opposite: convert it with `mask == 0`)"
                if np.issubdtype(mask.dtype, np.floating) else "")
        raise ValueError(
            f"{name} must be a boolean array (True = may attend), got dtype {mask.dtype}{hint}"
        )
    if mask.ndim > 2 and mask.ndim != len(target_shape):
        hint = ""
        if mask.ndim == len(target_shape) - 1 and len(target_shape) == 4:
            hint = "; for per-head scores (B, H, n, m) insert the head axis with mask[:, None]"
        raise ValueError(
            f"{name} must have shape (n, m), (m,) or one axis per score axis {target_shape}; "
            f"got {mask.ndim} axes {mask.shape}, which would pair its axes with the wrong score axes{hint}"
        )
    try:
        shape = np.broadcast_shapes(mask.shape, target_shape)
    except ValueError:
        shape = None
    if shape != target_shape:
        raise ValueError(
            f"{name} must broadcast to shape {target_shape}, got {mask.shape}"
        )
    return mask


def check_head_mask(mask, batch: int, n_heads: int, n: int, m: int, name: str = "mask"):
    """A module-level mask for multi-head scores ``(B, H, n, m)``, or None.

    Attention *modules* take ``x (B, n, d_model)`` and hide their heads, so their
    masks name the axes the user sees: ``(n, m)``, ``(B, n, m)`` (e.g.
    ``padding_mask``'s ``(B, 1, m)``), or per head ``(B, H, n, m)``.  A
    three-axis mask gets the head axis inserted, ``(B, 1, n|1, m)``.
    """
    if mask is None:
        return None
    mask = np.asarray(mask)
    if mask.ndim == 4:
        return check_mask(mask, (batch, n_heads, n, m), name)
    mask = check_mask(mask, (batch, n, m), name)
    return mask[:, None] if mask.ndim == 3 else mask


def check_int_array(x, name: str, high: int | None = None, expected: str = "") -> np.ndarray:
    """Validate integer ids ``x (...)`` (any shape, e.g. ``(B, n)``) lying in ``[0, high)``; returns the array.

    ``expected`` describes the wanted shape in the error message.
    """
    arr = np.asarray(x)
    if not np.issubdtype(arr.dtype, np.integer):
        raise ValueError(f"{name} must be an integer array {expected}, got dtype {arr.dtype}")
    if high is not None and arr.size and (arr.min() < 0 or arr.max() >= high):
        raise ValueError(
            f"{name} must hold ids in [0, {high}), got values in [{arr.min()}, {arr.max()}]"
        )
    return arr


def positive_int(value, name: str) -> int:
    """``value`` as an int if it is a positive whole number (not a bool), else a ValueError naming ``name``."""
    ok = (isinstance(value, (int, np.integer)) and not isinstance(value, bool)) or (
        isinstance(value, (float, np.floating)) and float(value).is_integer())
    if not ok or value < 1:
        raise ValueError(f"{name} must be a positive integer, got {value!r}")
    return int(value)


def positive_float(value, name: str) -> float:
    """``value`` as a float if it is a finite positive number, else a ValueError naming ``name``."""
    if isinstance(value, bool) or not isinstance(value, (int, float, np.integer, np.floating)) \
            or not np.isfinite(value) or value <= 0:
        raise ValueError(f"{name} must be a positive number, got {value!r}")
    return float(value)
