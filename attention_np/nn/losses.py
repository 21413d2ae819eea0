r"""Losses as forward/backward pairs.

Cross-entropy over the last axis, averaged over the positions that count
(``mask`` True, and ``targets != ignore_index``):

.. math::
    L = -\frac{1}{N_\text{valid}}\sum_{\text{valid}} \log\operatorname{softmax}(z)_{y},\qquad
    \frac{\partial L}{\partial z} = \frac{\operatorname{softmax}(z) - \operatorname{onehot}(y)}{N_\text{valid}}
"""
from __future__ import annotations

import numpy as np

from .functional import log_softmax, softmax
from .validate import as_float_array, check_int_array, shape_error


def _valid(logits, targets, mask, ignore_index):
    logits = as_float_array(logits, "logits")
    targets = check_int_array(targets, "targets", expected="(...,) of class ids")
    if logits.shape[:-1] != targets.shape:
        raise shape_error("targets", f"{logits.shape[:-1]} (logits without the class axis)", targets)
    valid = np.ones(targets.shape, dtype=bool)
    if ignore_index is not None:
        valid &= targets != ignore_index
    if mask is not None:
        mask = np.asarray(mask)
        if mask.dtype != np.bool_:
            raise ValueError(f"mask must be a boolean array (True = the position counts), got dtype {mask.dtype}")
        if mask.shape != targets.shape:
            raise shape_error("mask", str(targets.shape), mask)
        valid &= mask
    safe = np.where(valid, targets, 0)
    if safe.size and (safe.min() < 0 or safe.max() >= logits.shape[-1]):
        raise ValueError(f"targets must hold class ids in [0, {logits.shape[-1]}), got {safe.min()}..{safe.max()}")
    return logits, safe, valid, max(int(valid.sum()), 1)


def cross_entropy(logits, targets, mask=None, ignore_index=None) -> float:
    """Mean cross-entropy of ``logits (..., C)`` against integer ``targets (...)``.

    ``targets`` hold class ids in ``[0, C)`` and have the shape of ``logits``
    without its last axis, e.g. ``logits (B, n, C)`` and ``targets (B, n)``.
    ``mask (...)`` (boolean, same shape as ``targets``, True = the position
    counts) and ``ignore_index`` (a target id to skip, e.g. padding) leave
    positions out; the mean runs over the ``N_valid`` positions that count
    (over 1 if none does).  Returns a python float.
    """
    logits, safe, valid, count = _valid(logits, targets, mask, ignore_index)
    logp = log_softmax(logits, axis=-1)
    picked = np.take_along_axis(logp, safe[..., None], axis=-1)[..., 0]
    return float(-(picked * valid).sum() / count)


def cross_entropy_backward(logits, targets, mask=None, ignore_index=None, dloss: float = 1.0) -> np.ndarray:
    """Gradient of :func:`cross_entropy` with respect to ``logits``.

    Same arguments as the forward (``logits (..., C)``, ``targets (...)``,
    ``mask (...)``, ``ignore_index``) plus the upstream scalar ``dloss``.
    Returns ``dlogits (..., C) = dloss * (softmax(logits) - onehot(targets)) / N_valid``,
    zero at positions that do not count.
    """
    logits, safe, valid, count = _valid(logits, targets, mask, ignore_index)
    d = softmax(logits, axis=-1)
    np.put_along_axis(d, safe[..., None], np.take_along_axis(d, safe[..., None], axis=-1) - 1.0, axis=-1)
    return d * (valid[..., None] * (dloss / count))


def mse(pred, target) -> float:
    """Mean squared error over all entries: ``mean((pred - target)**2)``.

    ``pred (...)`` and ``target (...)`` must have the same (any) shape;
    returns a python float.
    """
    pred, target = as_float_array(pred, "pred"), as_float_array(target, "target")
    if pred.shape != target.shape:
        raise shape_error("target", str(pred.shape), target)
    return float(np.mean((pred - target) ** 2))


def mse_backward(pred, target, dloss: float = 1.0) -> np.ndarray:
    """Gradient of :func:`mse` with respect to ``pred``: ``2 dloss (pred - target) / pred.size``.

    ``pred (...)`` and ``target (...)`` of the same shape; returns ``dpred (...)``.
    """
    pred, target = as_float_array(pred, "pred"), as_float_array(target, "target")
    return (2.0 * dloss / pred.size) * (pred - target)
