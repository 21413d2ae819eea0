"""Scaled dot-product attention: gradient checks, numerics, the M9 numbers, errors."""
import math

import numpy as np
import pytest

from attention_np import causal_mask, padding_mask
from attention_np.mechanisms.scaled_dot_product import (
    scaled_dot_product_attention as sdpa,
    scaled_dot_product_attention_backward as sdpa_backward,
)
from attention_np.train import TOLERANCE, check_function


def _check(q, k, v, mask):
    def forward(q, k, v):
        return sdpa(q, k, v, mask=mask)[0]

    def backward(dout, q, k, v):
        return sdpa_backward(dout, q, k, v, sdpa(q, k, v, mask=mask)[1])

    return check_function(forward, backward, q, k, v, details=True)


def _qkv(rng, lead, n, m, d_k=4, d_v=3):
    return (rng.standard_normal(lead + (n, d_k)), rng.standard_normal(lead + (m, d_k)),
            rng.standard_normal(lead + (m, d_v)))


@pytest.mark.parametrize("case", ["none", "padding", "causal", "cached_prefix", "heads"])
def test_gradient_check(case):
    rng = np.random.default_rng(1)
    if case == "none":
        q, k, v = _qkv(rng, (2,), 3, 5)
        mask = None
    elif case == "padding":
        q, k, v = _qkv(rng, (3,), 4, 5)
        mask = padding_mask(np.array([5, 2, 3]), 5)
    elif case == "causal":
        q, k, v = _qkv(rng, (2,), 5, 5)
        mask = causal_mask(5)
    elif case == "cached_prefix":
        q, k, v = _qkv(rng, (2,), 3, 7)
        mask = causal_mask(3, 7)
    else:                                                    # (B, H) leading axes, k/v shared over heads (MQA-style broadcast)
        q = rng.standard_normal((2, 3, 4, 4))
        k = rng.standard_normal((2, 1, 5, 4))
        v = rng.standard_normal((2, 1, 5, 3))
        mask = padding_mask(np.array([5, 3]), 5)[:, None]
    errors = _check(q, k, v, mask)
    assert max(errors.values()) < TOLERANCE, errors


def test_gradient_check_detects_a_wrong_backward(monkeypatch):
    """The check must fail when the backward forgets the 1/sqrt(d_k) factor."""
    from attention_np.mechanisms import scaled_dot_product as mod

    rng = np.random.default_rng(2)
    q, k, v = _qkv(rng, (2,), 3, 4)
    broken = lambda dy, y, axis=-1: y * (dy - np.sum(dy * y, axis=axis, keepdims=True)) * math.sqrt(q.shape[-1])
    monkeypatch.setattr(mod, "softmax_backward", broken)
    errors = _check(q, k, v, None)
    assert errors["input0"] > 1e-3 and errors["input1"] > 1e-3
    assert errors["input2"] < TOLERANCE                      # the value path does not use softmax_backward


def test_m9_worked_example():
    """MECHANISMS.md M9 (f): Q = K = I3, V = 10 I3 -> 0.4711 / 0.2645 and 4.7108 / 2.6446."""
    eye = np.eye(3)
    out, w = sdpa(eye, eye, 10 * eye)
    diag, off = math.exp(1 / math.sqrt(3)), 1.0
    expected_diag = diag / (diag + 2 * off)                  # computed independently of the library
    assert round(expected_diag, 4) == 0.4711
    np.testing.assert_allclose(np.diag(w), expected_diag, rtol=1e-12)
    np.testing.assert_allclose(w.round(4), np.where(np.eye(3, dtype=bool), 0.4711, 0.2645))
    np.testing.assert_allclose(out.round(4), np.where(np.eye(3, dtype=bool), 4.7108, 2.6446))


def test_matches_an_independent_loop_implementation():
    rng = np.random.default_rng(3)
    q, k, v = _qkv(rng, (2,), 3, 4)
    out, w = sdpa(q, k, v)
    for b in range(2):
        for i in range(3):
            s = np.array([q[b, i] @ k[b, j] / 2.0 for j in range(4)])     # d_k = 4 -> sqrt = 2
            p = np.exp(s) / np.exp(s).sum()
            np.testing.assert_allclose(w[b, i], p, rtol=1e-12)
            np.testing.assert_allclose(out[b, i], p @ v[b], rtol=1e-12)


def test_huge_logits_stay_finite():
    q = np.array([[1e4, -1e4], [-1e4, 1e4]])
    k = q.copy()
    out, w = sdpa(q, k, np.eye(2), scale=1.0)
    assert np.all(np.isfinite(w)) and np.all(np.isfinite(out))
    np.testing.assert_allclose(w, np.eye(2), atol=1e-12)


def test_fully_masked_row_gives_zeros_not_nan():
    rng = np.random.default_rng(4)
    q, k, v = _qkv(rng, (2,), 3, 4)
    mask = np.ones((2, 3, 4), dtype=bool)
    mask[0, 1] = False                                       # query 1 of example 0 sees nothing
    out, w = sdpa(q, k, v, mask=mask)
    assert np.all(np.isfinite(out))
    np.testing.assert_array_equal(w[0, 1], 0.0)
    np.testing.assert_array_equal(out[0, 1], 0.0)
    dq, dk, dv = sdpa_backward(rng.standard_normal(out.shape), q, k, v, w)
    np.testing.assert_array_equal(dq[0, 1], 0.0)
    assert np.all(np.isfinite(dk)) and np.all(np.isfinite(dv))


def test_masked_keys_get_zero_weight_and_gradient():
    rng = np.random.default_rng(5)
    q, k, v = _qkv(rng, (2,), 3, 5)
    mask = padding_mask(np.array([5, 2]), 5)
    out, w = sdpa(q, k, v, mask=mask)
    np.testing.assert_array_equal(w[1, :, 2:], 0.0)
    dq, dk, dv = sdpa_backward(rng.standard_normal(out.shape), q, k, v, w)
    np.testing.assert_array_equal(dk[1, 2:], 0.0)
    np.testing.assert_array_equal(dv[1, 2:], 0.0)
    v2 = v.copy()
    v2[1, 2:] = 1e6 * rng.standard_normal((3, 3))           # noise in padded values changes nothing
    np.testing.assert_array_equal(sdpa(q, k, v2, mask=mask)[0][1], out[1])


def test_causal_outputs_ignore_the_future():
    rng = np.random.default_rng(6)
    q, k, v = _qkv(rng, (1,), 6, 6)
    out, _ = sdpa(q, k, v, mask=causal_mask(6))
    k2, v2 = k.copy(), v.copy()
    k2[:, 4:] += 5.0
    v2[:, 4:] -= 3.0
    out2, _ = sdpa(q, k2, v2, mask=causal_mask(6))
    np.testing.assert_allclose(out2[:, :4], out[:, :4], rtol=0, atol=1e-15)
    assert not np.allclose(out2[:, 4:], out[:, 4:])


def test_float32_stays_float32_and_is_finite():
    rng = np.random.default_rng(7)
    q, k, v = (a.astype(np.float32) for a in _qkv(rng, (2, 2), 4, 4))
    mask = causal_mask(4)
    out, w = sdpa(q * 1000, k * 1000, v, mask=mask)
    assert out.dtype == np.float32 and w.dtype == np.float32
    grads = sdpa_backward(np.ones_like(out), q, k, v, w)
    assert all(g.dtype == np.float32 and np.all(np.isfinite(g)) for g in grads)


@pytest.mark.parametrize("shapes, match", [
    (((2, 3, 4), (2, 5, 8), (2, 5, 3)), r"k must have shape \(\.\.\., m, d_k=4\), got \(2, 5, 8\)"),
    (((2, 3, 4), (2, 5, 4), (2, 6, 3)), r"v must have shape \(\.\.\., m=5, d_v\), got \(2, 6, 3\)"),
    (((4,), (5, 4), (5, 3)), r"q must have shape \(\.\.\., n, d_k\), got \(4,\)"),
    (((2, 3, 4), (3, 5, 4), (3, 5, 3)), r"leading axes"),
])
def test_shape_errors_name_the_argument(shapes, match):
    q, k, v = (np.zeros(s) for s in shapes)
    with pytest.raises(ValueError, match=match):
        sdpa(q, k, v)


def test_mask_errors():
    q = np.zeros((2, 3, 4)); k = np.zeros((2, 5, 4)); v = np.zeros((2, 5, 3))
    with pytest.raises(ValueError, match=r"mask must broadcast to shape \(2, 3, 5\), got \(3, 4\)"):
        sdpa(q, k, v, mask=np.ones((3, 4), dtype=bool))
    with pytest.raises(ValueError, match="mask must be a boolean array"):
        sdpa(q, k, v, mask=np.ones((3, 5)))
