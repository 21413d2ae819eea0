"""Tests for attention pooling and Nadaraya–Watson kernel regression (attention_np/mechanisms/pooling.py)."""
import math

import numpy as np
import pytest

from attention_np.mechanisms.pooling import (
    KERNELS, NadarayaWatson, attention_pooling, attention_pooling_backward, boxcar_kernel,
    epanechnikov_kernel, gaussian_kernel, has_support, nadaraya_watson, nadaraya_watson_backward,
)
from attention_np.train.gradcheck import TOLERANCE, check_function, check_module


def _nw_loop(queries, keys, values, kernel, h):
    """Textbook Nadaraya–Watson, one query at a time, with math.* kernels (independent reference)."""
    kfun = {
        "gaussian": lambda u: math.exp(-0.5 * u * u),
        "boxcar": lambda u: 1.0 if abs(u) <= 1.0 else 0.0,
        "epanechnikov": lambda u: max(0.0, 1.0 - u * u),
    }[kernel]
    out, weights = [], []
    for x in queries:
        K = [kfun((x - xk) / h) for xk in keys]
        S = sum(K)
        w = [Ki / S for Ki in K] if S > 0 else [0.0] * len(K)
        weights.append(w)
        out.append(sum(wi * yi for wi, yi in zip(w, values)))
    return np.array(out), np.array(weights)


def _data(rng, n=4, m=6, lead=()):
    q = rng.uniform(0.0, 5.0, size=lead + (n,))
    k = rng.uniform(0.0, 5.0, size=lead + (m,))
    v = rng.standard_normal(lead + (m,))
    return q, k, v


# ----------------------------------------------------------------- forward
@pytest.mark.parametrize("kernel", KERNELS)
def test_matches_textbook_loop(kernel):
    rng = np.random.default_rng(0)
    q, k, v = _data(rng, n=7, m=9)
    out, weights = nadaraya_watson(q, k, v, kernel=kernel, bandwidth=0.8)
    ref_out, ref_w = _nw_loop(q, k, v, kernel, 0.8)
    np.testing.assert_allclose(weights, ref_w, rtol=1e-12, atol=1e-15)
    np.testing.assert_allclose(out, ref_out, rtol=1e-12, atol=1e-15)


@pytest.mark.parametrize("kernel", KERNELS)
def test_weights_nonnegative_rows_sum_to_one(kernel):
    rng = np.random.default_rng(1)
    q, k, v = _data(rng, n=20, m=30, lead=(3,))
    h = 1.0
    out, weights = nadaraya_watson(q, k, v, kernel=kernel, bandwidth=h)
    assert weights.shape == (3, 20, 30) and out.shape == (3, 20)
    assert np.all(weights >= 0.0)
    support = has_support(q, k, kernel=kernel, bandwidth=h)
    assert support.shape == (3, 20) and support.all()        # 30 keys on [0, 5], h = 1: never empty
    np.testing.assert_allclose(weights.sum(axis=-1), 1.0, rtol=0, atol=1e-12)


@pytest.mark.parametrize("kernel", ["boxcar", "epanechnikov"])
def test_compact_kernels_zero_outside_support(kernel):
    rng = np.random.default_rng(2)
    q, k, v = _data(rng, n=15, m=25)
    h = 0.7
    _, weights = nadaraya_watson(q, k, v, kernel=kernel, bandwidth=h)
    dist = np.abs(q[:, None] - k[None, :])
    outside = dist > h
    assert outside.any() and (~outside).any()
    assert np.all(weights[outside] == 0.0)                  # exactly zero, not merely small
    strictly_inside = dist < 0.99 * h
    assert np.all(weights[strictly_inside] > 0.0)


@pytest.mark.parametrize("kernel", ["boxcar", "epanechnikov"])
def test_empty_window_gives_zero_row_not_nan(kernel):
    q = np.array([0.0, 10.0])                               # the second query has no key within h
    k = np.array([-0.3, 0.2, 0.5])
    v = np.array([1.0, 2.0, 4.0])
    out, weights = nadaraya_watson(q, k, v, kernel=kernel, bandwidth=1.0)
    assert np.all(np.isfinite(out)) and np.all(np.isfinite(weights))
    assert np.all(weights[1] == 0.0) and out[1] == 0.0
    np.testing.assert_allclose(weights[0].sum(), 1.0)
    assert has_support(q, k, kernel=kernel, bandwidth=1.0).tolist() == [True, False]
    vv = np.stack([v, -v], axis=-1)                         # vector values, (m, 2)
    out2, _ = nadaraya_watson(q, k, vv, kernel=kernel, bandwidth=1.0)
    assert np.all(out2[1] == 0.0)
    grads = nadaraya_watson_backward(np.ones_like(out), q, k, v, weights, kernel=kernel, bandwidth=1.0)
    for g in grads:
        assert np.all(np.isfinite(g))


def test_boxcar_is_plain_average_inside_window():
    q = np.array([1.0])
    k = np.array([0.0, 0.5, 1.2, 3.0])
    v = np.array([3.0, 5.0, 10.0, 100.0])
    out, _ = nadaraya_watson(q, k, v, kernel="boxcar", bandwidth=1.0)
    np.testing.assert_allclose(out, [(3.0 + 5.0 + 10.0) / 3.0])


def test_tiny_bandwidth_is_nearest_neighbour():
    rng = np.random.default_rng(3)
    q, k, v = _data(rng, n=12, m=10)
    nearest = np.argmin(np.abs(q[:, None] - k[None, :]), axis=1)  # independent: nearest key by distance
    for h in (1e-3, 1e-200):
        out, weights = nadaraya_watson(q, k, v, bandwidth=h)
        np.testing.assert_allclose(out, v[nearest], rtol=0, atol=1e-12)
        np.testing.assert_array_equal(np.argmax(weights, axis=1), nearest)


def test_huge_bandwidth_is_mean():
    rng = np.random.default_rng(4)
    q, k, v = _data(rng, n=5, m=8)
    out, weights = nadaraya_watson(q, k, v, bandwidth=1e6)
    np.testing.assert_allclose(out, np.full(5, v.mean()), rtol=0, atol=1e-9)
    np.testing.assert_allclose(weights, 1.0 / 8.0, rtol=0, atol=1e-12)
    vv = rng.standard_normal((8, 3))
    out_v, _ = nadaraya_watson(q, k, vv, bandwidth=1e6)
    np.testing.assert_allclose(out_v, np.broadcast_to(vv.mean(axis=0), (5, 3)), atol=1e-9)


def test_gaussian_is_softmax_of_negative_half_squared_distance():
    rng = np.random.default_rng(5)
    q, k, v = _data(rng, n=3, m=4)
    h = 0.6
    e = -0.5 * ((q[:, None] - k[None, :]) / h) ** 2
    w_ref = np.exp(e) / np.exp(e).sum(axis=1, keepdims=True)
    _, weights = nadaraya_watson(q, k, v, bandwidth=h)
    np.testing.assert_allclose(weights, w_ref, rtol=1e-12)
    out_pool, w_pool = attention_pooling(e, v[:, None])       # same thing via generic attention pooling
    np.testing.assert_allclose(w_pool, w_ref, rtol=1e-12)
    np.testing.assert_allclose(out_pool[:, 0], w_ref @ v, rtol=1e-12)


def test_no_overflow_or_nan_at_extreme_distances():
    q = np.array([0.0, 1e200])
    k = np.array([-1e200, 3.0])
    v = np.array([1.0, 2.0])
    with np.errstate(all="raise"):
        for kernel in KERNELS:
            out, weights = nadaraya_watson(q, k, v, kernel=kernel, bandwidth=1e-100)
            assert np.all(np.isfinite(out)) and np.all(np.isfinite(weights))
    out, _ = nadaraya_watson(q, k, v, bandwidth=1e-100)
    np.testing.assert_array_equal(out, [2.0, 2.0])           # each query's nearest key


def test_kernel_functions():
    d = np.array([0.0, 0.5, 1.0, 1.0 + 1e-9, 3.0])
    np.testing.assert_allclose(gaussian_kernel(d), np.exp(-0.5 * d**2))
    np.testing.assert_allclose(gaussian_kernel(d, bandwidth=2.0)[2], math.exp(-0.125))
    np.testing.assert_array_equal(boxcar_kernel(d), [1.0, 1.0, 1.0, 0.0, 0.0])
    np.testing.assert_allclose(epanechnikov_kernel(d), [1.0, 0.75, 0.0, 0.0, 0.0], atol=1e-8)
    np.testing.assert_allclose(epanechnikov_kernel(1.0, bandwidth=2.0), 0.75)


def test_vector_values_and_broadcasting():
    rng = np.random.default_rng(6)
    q = rng.uniform(0, 5, size=(2, 3))                      # (B, n)
    k = rng.uniform(0, 5, size=(5,))                        # (m,) shared by the batch
    v = rng.standard_normal((5, 4))                         # (m, d_v)
    out, weights = nadaraya_watson(q, k, v, bandwidth=0.9)
    assert out.shape == (2, 3, 4) and weights.shape == (2, 3, 5)
    for b in range(2):
        _, ref_w = _nw_loop(q[b], k, v[:, 0], "gaussian", 0.9)
        np.testing.assert_allclose(weights[b], ref_w, rtol=1e-12)
        np.testing.assert_allclose(out[b], ref_w @ v, rtol=1e-12)


# --------------------------------------------------------- gradient checks
def _nw_fns(kernel):
    def fwd(q, k, v, h):
        return nadaraya_watson(q, k, v, kernel=kernel, bandwidth=h)[0]

    def bwd(dout, q, k, v, h):
        _, weights = nadaraya_watson(q, k, v, kernel=kernel, bandwidth=h)
        return nadaraya_watson_backward(dout, q, k, v, weights, kernel=kernel, bandwidth=h)

    return fwd, bwd


@pytest.mark.parametrize("vector", [False, True])
def test_gaussian_gradcheck_every_input_and_bandwidth(vector):
    rng = np.random.default_rng(7)
    q, k, v = _data(rng, n=3, m=4, lead=(2,))
    if vector:
        v = rng.standard_normal((2, 4, 3))
    h = np.array(0.9)                                       # 0-d so it can be perturbed
    fwd, bwd = _nw_fns("gaussian")
    errors = check_function(fwd, bwd, q, k, v, h, details=True)
    assert set(errors) == {"input0", "input1", "input2", "input3"}
    assert max(errors.values()) < TOLERANCE, errors


def test_gaussian_gradcheck_with_broadcast_keys():
    rng = np.random.default_rng(8)
    q = rng.uniform(0, 3, size=(2, 3))
    k = rng.uniform(0, 3, size=(1, 4))                      # broadcast over the batch: grads summed back
    v = rng.standard_normal((1, 4, 2))                      # (1, m, d_v): one more axis than keys
    fwd, bwd = _nw_fns("gaussian")
    assert check_function(fwd, bwd, q, k, v, np.array(1.3)) < TOLERANCE


def test_epanechnikov_gradcheck():
    rng = np.random.default_rng(9)
    q = np.array([0.5, 1.5, 2.5, 3.5])
    k = np.linspace(0.0, 4.0, 9) + rng.uniform(-0.05, 0.05, size=9)
    v = rng.standard_normal(9)
    h = 1.1
    u = np.abs(q[:, None] - k[None, :]) / h
    assert np.min(np.abs(u - 1.0)) > 1e-3                  # no key on a kink of the kernel
    fwd, bwd = _nw_fns("epanechnikov")
    assert check_function(fwd, bwd, q, k, v, np.array(h)) < TOLERANCE


def test_boxcar_gradients_flow_only_to_values():
    q = np.array([0.0, 2.0])
    k = np.array([-0.5, 0.3, 1.6, 2.9])
    v = np.array([1.0, -2.0, 0.5, 3.0])
    fwd, bwd = _nw_fns("boxcar")
    out = fwd(q, k, v, 1.0)
    dq, dk, dv, dh = bwd(np.ones_like(out), q, k, v, 1.0)
    assert np.all(dq == 0) and np.all(dk == 0) and dh == 0.0
    np.testing.assert_allclose(dv, [0.5, 0.5, 0.5, 0.5])    # each query averages 2 keys, dout = 1
    assert check_function(fwd, bwd, q, k, v, np.array(1.0)) < TOLERANCE


def test_backward_can_fail():
    """The check above must be able to fail: a wrong bandwidth gradient is caught."""
    rng = np.random.default_rng(10)
    q, k, v = _data(rng, n=3, m=4)
    fwd, bwd = _nw_fns("gaussian")

    def wrong(dout, q, k, v, h):
        dq, dk, dv, dh = bwd(dout, q, k, v, h)
        return dq, dk, dv, 0.5 * dh

    assert check_function(fwd, wrong, q, k, v, np.array(0.9)) > 1e-3


def test_attention_pooling_gradcheck():
    rng = np.random.default_rng(11)
    scores = rng.standard_normal((2, 3, 5))
    values = rng.standard_normal((5, 4))                    # shared across the batch
    fwd = lambda s, v: attention_pooling(s, v)[0]
    bwd = lambda dout, s, v: attention_pooling_backward(dout, v, attention_pooling(s, v)[1])
    errors = check_function(fwd, bwd, scores, values, details=True)
    assert max(errors.values()) < TOLERANCE, errors


def test_attention_pooling_matches_explicit_weighted_average():
    e = np.array([[1.2, 0.5, 4.0]])                         # MECHANISMS.md M9: softmax -> 0.0557, 0.0277, 0.9166 [v]
    v = np.array([[1.0], [2.0], [3.0]])
    out, weights = attention_pooling(e, v)
    np.testing.assert_allclose(weights, [[0.0557, 0.0277, 0.9166]], atol=5e-5)
    np.testing.assert_allclose(out, [[0.0557 * 1 + 0.0277 * 2 + 0.9166 * 3]], atol=5e-4)


@pytest.mark.parametrize("kernel", ["gaussian", "epanechnikov"])
def test_module_gradcheck(kernel):
    rng = np.random.default_rng(12)
    mod = NadarayaWatson(kernel=kernel, w_init=0.8)
    q = np.array([[0.4, 1.3, 2.2], [0.9, 1.8, 2.7]])       # (B=2, n=3)
    k = np.array([[0.1, 0.7, 1.5, 2.45], [0.35, 1.1, 2.0, 2.9]])  # (B=2, m=4)
    v = rng.standard_normal((2, 4, 2))
    u = np.abs(q[:, :, None] - k[:, None, :]) * 0.8
    assert np.min(np.abs(u - 1.0)) > 1e-3
    errors = check_module(mod, q, k, v, details=True)
    assert set(errors) == {"input0", "input1", "input2", "w"}
    assert max(errors.values()) < TOLERANCE, errors


def test_module_matches_function_and_accumulates():
    rng = np.random.default_rng(13)
    q, k, v = _data(rng, n=3, m=5)
    h = 0.7
    mod = NadarayaWatson(w_init=1.0 / h)
    out = mod(q, k, v)
    ref_out, ref_w = nadaraya_watson(q, k, v, bandwidth=h)
    np.testing.assert_allclose(out, ref_out, rtol=1e-12)
    np.testing.assert_allclose(mod.weights, ref_w, rtol=1e-12)
    G = rng.standard_normal(out.shape)
    mod.backward(G)
    first = mod.grads["w"].copy()
    _, _, _, dh = nadaraya_watson_backward(G, q, k, v, ref_w, bandwidth=h)
    np.testing.assert_allclose(first, [-dh * h * h], rtol=1e-10)   # w = 1/h, dw = dh * dh/dw = −h² dh
    mod.backward(G)
    np.testing.assert_allclose(mod.grads["w"], 2 * first)
    assert NadarayaWatson(rng=np.random.default_rng(0)).params["w"].shape == (1,)


# ------------------------------------------------------------------ dtypes
def test_float32_stays_float32():
    rng = np.random.default_rng(14)
    q, k, v = (x.astype(np.float32) for x in _data(rng, n=3, m=4))
    for kernel in KERNELS:
        out, weights = nadaraya_watson(q, k, v, kernel=kernel, bandwidth=1.5)
        assert out.dtype == np.float32 and weights.dtype == np.float32, kernel
        grads = nadaraya_watson_backward(np.ones_like(out), q, k, v, weights, kernel=kernel, bandwidth=1.5)
        assert all(g.dtype == np.float32 for g in grads[:3]), kernel
    mod = NadarayaWatson(w_init=0.7).astype(np.float32)
    out = mod(q, k, v)
    assert out.dtype == np.float32
    assert all(g.dtype == np.float32 for g in mod.backward(np.ones_like(out)))
    s = rng.standard_normal((3, 4)).astype(np.float32)
    out, w = attention_pooling(s, v[:, None])
    assert out.dtype == np.float32 and w.dtype == np.float32
    assert all(g.dtype == np.float32 for g in attention_pooling_backward(np.ones_like(out), v[:, None], w))
    for f in (gaussian_kernel, boxcar_kernel, epanechnikov_kernel):
        assert f(np.float32([0.5]), 2.0).dtype == np.float32


# ------------------------------------------------------------------ errors
def test_bad_inputs_raise_value_errors_naming_the_argument():
    q, k, v = np.zeros(3), np.zeros(4), np.zeros(4)
    with pytest.raises(ValueError, match="queries must have shape"):
        nadaraya_watson(np.float64(1.0), k, v)
    with pytest.raises(ValueError, match="keys must have shape"):
        nadaraya_watson(q, np.float64(1.0), v)
    with pytest.raises(ValueError, match=r"values must have shape \(\.\.\., m=4\)"):
        nadaraya_watson(q, k, np.zeros(5))
    with pytest.raises(ValueError, match="values must have shape"):
        nadaraya_watson(q, k, np.zeros((5, 2)))
    with pytest.raises(ValueError, match="leading axes of queries"):
        nadaraya_watson(np.zeros((2, 3)), np.zeros((3, 4)), np.zeros((3, 4)))
    with pytest.raises(ValueError, match="kernel must be one of"):
        nadaraya_watson(q, k, v, kernel="triangle")
    for bad in (0.0, -1.0, np.inf, np.nan, np.ones(2), 1e-320):
        with pytest.raises(ValueError, match="bandwidth must be"):
            nadaraya_watson(q, k, v, bandwidth=bad)
    out, w = nadaraya_watson(q, k, v)
    with pytest.raises(ValueError, match="dout must have shape"):
        nadaraya_watson_backward(np.zeros(4), q, k, v, w)
    with pytest.raises(ValueError, match="weights must have shape"):
        nadaraya_watson_backward(out, q, k, v, w[:, :2])
    with pytest.raises(ValueError, match="scores must have shape"):
        attention_pooling(np.zeros(3), np.zeros((3, 1)))
    with pytest.raises(ValueError, match=r"values must have shape \(\.\.\., m=3, d_v\)"):
        attention_pooling(np.zeros((2, 3)), np.zeros((4, 1)))
    with pytest.raises(ValueError, match="dout must have shape"):
        attention_pooling_backward(np.zeros((2, 2)), np.zeros((3, 1)), np.full((2, 3), 1 / 3))
    with pytest.raises(ValueError, match="kernel must be one of"):
        NadarayaWatson(kernel="cosine")
    with pytest.raises(ValueError, match="rng must be"):
        NadarayaWatson(rng=0)
