"""Helpers that the check cells of solution/exercise notebooks import.

``check_rng()`` gives the check cells random inputs that the grader can change
at grading time (environment variable ``ATTENTION_NP_GRADE_SEED``), so a
hard-coded answer that only reproduces the printed output fails.  The check
cells compare the student's result with the library's reference *inside* the
cell and print only seed-independent lines such as ``ex2 causal mask: ok``.
"""
from __future__ import annotations

import os

import numpy as np

SEED_ENV = "ATTENTION_NP_GRADE_SEED"
DEFAULT_SEED = 20240917


def grading_seed() -> int:
    """The seed for check inputs: ``$ATTENTION_NP_GRADE_SEED`` if set, else a fixed default."""
    raw = os.environ.get(SEED_ENV, "").strip()
    if not raw:
        return DEFAULT_SEED
    try:
        return int(raw)
    except ValueError:
        raise ValueError(f"{SEED_ENV} must be an integer, got {raw!r}") from None


def check_rng(offset: int = 0) -> np.random.Generator:
    """A generator seeded from :func:`grading_seed` (plus ``offset``, one per exercise if you like)."""
    return np.random.default_rng(grading_seed() + int(offset))


def assert_close(actual, expected, name: str = "result", rtol: float = 1e-7, atol: float = 1e-9) -> None:
    """Raise ``AssertionError`` saying what was expected, in which shape, and where it differs most."""
    expected = np.asarray(expected)
    if actual is None:
        raise AssertionError(f"{name}: got None, expected an array of shape {expected.shape}")
    try:
        actual = np.asarray(actual, dtype=np.float64) if expected.dtype.kind in "fc" else np.asarray(actual)
    except (TypeError, ValueError):
        raise AssertionError(f"{name}: expected an array of shape {expected.shape}, got {type(actual).__name__}") from None
    if actual.shape != expected.shape:
        raise AssertionError(f"{name}: expected shape {expected.shape}, got shape {actual.shape}")
    if expected.dtype == np.bool_ or actual.dtype == np.bool_:
        bad = np.argwhere(actual.astype(bool) != expected.astype(bool))
        if bad.size:
            idx = tuple(int(i) for i in bad[0])
            raise AssertionError(
                f"{name}: {len(bad)} of {expected.size} entries differ; first at index {idx}: "
                f"expected {bool(expected[idx])}, got {bool(actual[idx])}")
        return
    if not np.all(np.isfinite(actual)):
        idx = tuple(int(i) for i in np.argwhere(~np.isfinite(actual))[0])
        raise AssertionError(f"{name}: contains NaN or inf (first at index {idx}); expected finite values")
    diff = np.abs(actual - expected)
    tol = atol + rtol * np.abs(expected)
    if np.any(diff > tol):
        idx = tuple(int(i) for i in np.unravel_index(np.argmax(diff - tol), diff.shape)) if diff.ndim else ()
        raise AssertionError(
            f"{name}: values differ (shape {expected.shape}); largest difference at index {idx}: "
            f"expected {float(expected[idx]):.6g}, got {float(actual[idx]):.6g} "
            f"(|diff| = {float(diff[idx]):.3g}){_scale_hint(actual, expected, rtol, atol)}")


def _scale_hint(actual, expected, rtol, atol) -> str:
    """``; got 2.00 × expected`` when the answer is the expected value times one constant."""
    if expected.dtype.kind not in "fc" or not np.any(expected):
        return ""
    c = float(np.vdot(expected, actual).real / np.vdot(expected, expected).real)
    if not np.isfinite(c) or abs(c - 1.0) < 1e-6 or c == 0.0:
        return ""
    if np.all(np.abs(actual - c * expected) <= 10 * (atol + rtol * np.abs(c * expected))):
        return f"; got {c:.2f} \u00d7 expected"
    return ""


def reference(dotted_name: str):
    """The library object ``dotted_name`` (e.g. ``"attention_np.mechanisms.sparse.sparsemax"``), for check cells.

    Check cells reach the reference implementation through this function, never through a name that a
    solution cell could see or replace.  While a submission is graded, the guard
    (:mod:`attention_np.grading.guard`) makes the names an exercise lists as ``off_limits`` unusable to
    student code; this function still returns the original object (as it was before any student code
    ran) and refuses to serve a caller with student code on the stack.
    """
    module_name, _, attr = str(dotted_name).rpartition(".")
    if not (module_name == "attention_np" or module_name.startswith("attention_np.")):
        raise ValueError(f"reference() takes a dotted name inside attention_np, got {dotted_name!r}")
    from . import guard

    return guard.reference(dotted_name)
