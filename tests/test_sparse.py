"""Tests for attention_np.mechanisms.sparse: sparsemax, its backward, the masks, sparsemax attention."""
import numpy as np
import pytest

from attention_np.mechanisms.scaled_dot_product import (
    scaled_dot_product_attention, scaled_dot_product_attention_backward,
)
from attention_np.mechanisms.sparse import (
    band_offsets, band_to_dense, bigbird_mask, fixed_mask, longformer_mask, sliding_window_attention,
    sliding_window_attention_backward, sliding_window_mask, sparsemax, sparsemax_attention,
    sparsemax_attention_backward, sparsemax_backward, sparsemax_threshold, strided_mask,
)
from attention_np.nn.functional import causal_mask
from attention_np.train.gradcheck import TOLERANCE, check_function


# ---------------------------------------------------------------- sparsemax: [v] numbers (M13)
def test_sparsemax_textbook_examples():
    np.testing.assert_allclose(sparsemax(np.array([1.0, 0.8, 0.1])), [0.6, 0.4, 0.0], atol=1e-15)
    np.testing.assert_allclose(sparsemax_threshold(np.array([1.0, 0.8, 0.1])), 0.4, atol=1e-15)
    np.testing.assert_allclose(sparsemax(np.array([0.5, 0.0, -0.5])), [0.75, 0.25, 0.0], atol=1e-15)
    np.testing.assert_allclose(sparsemax_threshold(np.array([0.5, 0.0, -0.5])), -0.25, atol=1e-15)


def test_sparsemax_two_dimensional_curve():
    # sparsemax([t, 0])_1 = clip((t + 1) / 2, 0, 1)
    t = np.array([-1.5, -0.5, 0.0, 0.5, 1.5])
    z = np.stack([t, np.zeros_like(t)], axis=-1)            # (5, 2)
    np.testing.assert_allclose(sparsemax(z)[:, 0], [0.0, 0.25, 0.5, 0.75, 1.0], atol=1e-15)


def test_sparsemax_exact_zeros_sum_to_one_and_shift_invariance():
    rng = np.random.default_rng(0)
    z = rng.standard_normal((4, 3, 10)) * 3.0
    p = sparsemax(z)
    np.testing.assert_allclose(p.sum(axis=-1), 1.0, atol=1e-12)
    assert np.all(p >= 0)
    assert np.sum(p == 0.0) > p.size // 3                    # exact zeros, many of them
    np.testing.assert_allclose(sparsemax(z + 7.5), p, atol=1e-12)
    assert not np.allclose(sparsemax(2.0 * z), p)             # not scale invariant
    # the projection property: p - z is -tau on the support, >= -tau off it
    tau = sparsemax_threshold(z)[..., None]
    support = p > 0
    np.testing.assert_allclose(np.where(support, p - z, -tau), -np.broadcast_to(tau, z.shape), atol=1e-12)
    assert np.all(z[~support] <= np.broadcast_to(tau, z.shape)[~support] + 1e-12)


def test_sparsemax_other_axis_matches_last_axis():
    z = np.random.default_rng(1).standard_normal((5, 4, 3))
    np.testing.assert_allclose(sparsemax(z, axis=1), np.moveaxis(sparsemax(np.moveaxis(z, 1, -1)), -1, 1))


def test_sparsemax_matches_brute_force_projection():
    # independent check: the support is the largest prefix of sorted z with a consistent tau
    rng = np.random.default_rng(2)
    for _ in range(20):
        z = rng.standard_normal(6)
        best = None
        for size in range(1, 7):
            top = np.sort(z)[::-1][:size]
            tau = (top.sum() - 1.0) / size
            p = np.maximum(z - tau, 0.0)
            if np.isclose(p.sum(), 1.0):
                best = p
        np.testing.assert_allclose(sparsemax(z), best, atol=1e-12)


def test_sparsemax_mask_huge_logits_and_float32():
    z = np.array([[1e300, 1e300, -1e300], [3.0, 2.0, 1.0]])
    p = sparsemax(z)
    assert np.all(np.isfinite(p))
    np.testing.assert_allclose(p[0], [0.5, 0.5, 0.0])
    mask = np.array([[True, False, True], [False, False, False]])
    pm = sparsemax(z, mask=mask)
    np.testing.assert_allclose(pm, [[1.0, 0.0, 0.0], [0.0, 0.0, 0.0]])
    z32 = np.random.default_rng(3).standard_normal((3, 5)).astype(np.float32)
    assert sparsemax(z32).dtype == np.float32
    assert sparsemax(z32, mask=np.ones(5, bool)).dtype == np.float32


def test_sparsemax_backward_gradcheck_and_formula():
    rng = np.random.default_rng(4)
    z = rng.standard_normal((3, 2, 7))
    err = check_function(lambda z: sparsemax(z), lambda dp, z: sparsemax_backward(dp, sparsemax(z)), z)
    assert err < TOLERANCE
    # along another axis, too
    err = check_function(lambda z: sparsemax(z, axis=0),
                         lambda dp, z: sparsemax_backward(dp, sparsemax(z, axis=0), axis=0), z)
    assert err < TOLERANCE
    # with a mask: masked entries get exactly zero gradient, a fully masked row none at all
    mask = rng.random((2, 7)) < 0.7
    mask[1] = False
    errors = check_function(lambda z: sparsemax(z, mask=mask),
                            lambda dp, z: sparsemax_backward(dp, sparsemax(z, mask=mask)), z, details=True)
    assert max(errors.values()) < TOLERANCE, errors
    dz = sparsemax_backward(rng.standard_normal(z.shape), sparsemax(z, mask=mask))
    assert np.all(dz[:, ~mask] == 0.0)


def test_sparsemax_backward_jacobian_matches_definition():
    # J = diag(s) - s s^T / |S|, checked column by column
    z = np.array([1.0, 0.8, 0.1, 0.95])
    p = sparsemax(z)
    s = (p > 0).astype(float)
    J = np.diag(s) - np.outer(s, s) / s.sum()
    got = np.stack([sparsemax_backward(e, p) for e in np.eye(4)], axis=1)
    np.testing.assert_allclose(got, J.T, atol=1e-15)


def test_sparsemax_bad_input():
    with pytest.raises(ValueError, match="dp must have shape"):
        sparsemax_backward(np.zeros(3), np.zeros(4))
    with pytest.raises(ValueError, match="mask"):
        sparsemax(np.zeros((2, 3)), mask=np.ones((2, 4), bool))


# ---------------------------------------------------------------- patterns: [v] counts (M13)
def test_pattern_entry_counts():
    assert causal_mask(16).sum() == 136
    assert strided_mask(16, 4).sum() == 82
    assert fixed_mask(16, 4, 1).sum() == 64
    assert sliding_window_mask(8, 2).sum() == 22
    assert longformer_mask(8, 2, [0]).sum() == 34
    # an interior global token overlaps the window twice more: 22 + 2 * (8 - 3) = 32
    assert longformer_mask(8, 2, [3]).sum() == 32


def test_pattern_definitions_entrywise():
    n = 12
    sw = sliding_window_mask(n, 4, causal=True)
    st = strided_mask(n, 3)
    fx = fixed_mask(n, 4, 2)
    for i in range(n):                                        # a plain double loop as the reference
        for j in range(n):
            assert sw[i, j] == (i - 4 < j <= i)
            assert st[i, j] == (j <= i and (i - j <= 3 or (i - j) % 3 == 0))
            assert fx[i, j] == (j <= i and (j // 4 == i // 4 or j % 4 in (2, 3)))
    assert sliding_window_mask(n, 4).sum() == n + 2 * (n - 1) + 2 * (n - 2)
    for mask in (sw, st, fx):
        assert not np.any(mask & ~causal_mask(n))             # causal patterns never look ahead
        assert np.all(np.diag(mask))


def test_longformer_global_is_symmetric():
    mask = longformer_mask(10, 2, [0, 9])
    assert np.all(mask[[0, 9], :]) and np.all(mask[:, [0, 9]])
    assert np.array_equal(mask, mask.T)


def test_bigbird_mask():
    n, w, r = 16, 2, 3
    base = longformer_mask(n, w, [0])
    mask = bigbird_mask(n, w, r, [0], np.random.default_rng(0))
    assert np.all(mask >= base)                               # contains window and globals
    extra = (mask & ~base).sum(axis=1)
    assert np.all(extra[1:] == r) and extra[0] == 0           # exactly r new keys per ordinary row
    again = bigbird_mask(n, w, r, [0], np.random.default_rng(0))
    assert np.array_equal(mask, again)                        # deterministic given the rng
    other = bigbird_mask(n, w, r, [0], np.random.default_rng(1))
    assert not np.array_equal(mask, other)
    assert np.all(bigbird_mask(4, 2, 10, [], np.random.default_rng(0)))  # more random keys than exist


def test_pattern_bad_input():
    with pytest.raises(ValueError, match="window"):
        sliding_window_mask(8, 0)
    with pytest.raises(ValueError, match="global_tokens"):
        longformer_mask(8, 2, [8])
    with pytest.raises(ValueError, match="c must be"):
        fixed_mask(8, 2, 3)


# ---------------------------------------------------------------- sparsemax attention
def test_sparsemax_attention_forward_matches_definition():
    rng = np.random.default_rng(5)
    q, k, v = rng.standard_normal((2, 4, 8)), rng.standard_normal((2, 6, 8)), rng.standard_normal((2, 6, 3))
    mask = np.ones((4, 6), bool)
    mask[1, 2:] = False
    mask[3, :] = False
    out, w = sparsemax_attention(q, k, v, mask=mask)
    ref_w = np.zeros((2, 4, 6))
    for b in range(2):
        for i in range(4):
            allowed = np.flatnonzero(mask[i])
            if allowed.size:
                ref_w[b, i, allowed] = sparsemax(q[b, i] @ k[b, allowed].T / np.sqrt(8))
    np.testing.assert_allclose(w, ref_w, atol=1e-14)
    np.testing.assert_allclose(out, ref_w @ v, atol=1e-14)
    assert np.all(out[:, 3] == 0)                             # fully masked row -> zero output


def test_sparsemax_attention_gradcheck():
    rng = np.random.default_rng(6)
    q, k, v = rng.standard_normal((2, 4, 5)) * 2, rng.standard_normal((2, 6, 5)) * 2, rng.standard_normal((2, 6, 3))
    mask = sliding_window_mask(6, 4)[1:5]                     # (4, 6)

    def fwd(q, k, v):
        return sparsemax_attention(q, k, v, mask=mask)[0]

    def bwd(dout, q, k, v):
        return sparsemax_attention_backward(dout, q, k, v, sparsemax_attention(q, k, v, mask=mask)[1])

    errors = check_function(fwd, bwd, q, k, v, details=True)
    assert max(errors.values()) < TOLERANCE, errors
    _, w = sparsemax_attention(q, k, v, mask=mask)
    assert np.sum(w[:, mask] == 0) > 0                          # the check crosses exact zeros


def test_sparsemax_attention_differs_from_softmax_backward():
    # guards against accidentally reusing the softmax Jacobian
    rng = np.random.default_rng(7)
    q, k, v = rng.standard_normal((3, 4)), rng.standard_normal((5, 4)), rng.standard_normal((5, 2))
    dout = rng.standard_normal((3, 2))
    _, w = sparsemax_attention(q, k, v)
    dq = sparsemax_attention_backward(dout, q, k, v, w)[0]
    assert not np.allclose(dq, scaled_dot_product_attention_backward(dout, q, k, v, w)[0])
    assert not np.allclose(w, scaled_dot_product_attention(q, k, v)[1])


def test_sparsemax_attention_bad_input():
    with pytest.raises(ValueError, match="k must have shape"):
        sparsemax_attention(np.zeros((3, 4)), np.zeros((5, 3)), np.zeros((5, 2)))
    with pytest.raises(ValueError, match="weights must have shape"):
        sparsemax_attention_backward(np.zeros((3, 2)), np.zeros((3, 4)), np.zeros((5, 4)),
                                     np.zeros((5, 2)), np.zeros((3, 4)))


# ---------------------------------------------------------------- sliding-window attention, band only
@pytest.mark.parametrize("causal", [False, True])
@pytest.mark.parametrize("window", [1, 2, 3, 4, 7, 30])
def test_sliding_window_attention_equals_masked_sdpa(window, causal):
    rng = np.random.default_rng(8)
    q, k, v = rng.standard_normal((2, 3, 9, 4)), rng.standard_normal((2, 3, 9, 4)), rng.standard_normal((2, 3, 9, 5))
    mask = sliding_window_mask(9, window, causal=causal)
    out, band = sliding_window_attention(q, k, v, window, causal=causal)
    ref_out, ref_w = scaled_dot_product_attention(q, k, v, mask=mask)
    assert band.shape == (2, 3, 9, len(band_offsets(window, causal)))
    np.testing.assert_allclose(out, ref_out, atol=1e-13)
    np.testing.assert_allclose(band_to_dense(band, window, causal=causal), ref_w, atol=1e-14)
    np.testing.assert_allclose(band.sum(axis=-1), 1.0, atol=1e-13)
    dout = rng.standard_normal(out.shape)
    got = sliding_window_attention_backward(dout, q, k, v, band, window, causal=causal)
    for g, r in zip(got, scaled_dot_product_attention_backward(dout, q, k, v, ref_w)):
        np.testing.assert_allclose(g, r, atol=1e-13)


def test_band_offsets_and_dense_layout():
    np.testing.assert_array_equal(band_offsets(4), [-2, -1, 0, 1, 2])
    np.testing.assert_array_equal(band_offsets(4, causal=True), [-3, -2, -1, 0])
    band = np.arange(1, 16, dtype=float).reshape(5, 3)         # n = 5, window = 2 -> offsets -1, 0, 1
    dense = band_to_dense(band, 2)
    assert dense[0, 0] == 2 and dense[0, 1] == 3 and dense[4, 3] == 13 and dense[4, 4] == 14
    assert dense.sum() == band.sum() - band[0, 0] - band[4, 2]  # the two cells beyond the ends are dropped
    assert np.array_equal(dense != 0, sliding_window_mask(5, 2))


@pytest.mark.parametrize("causal", [False, True])
def test_sliding_window_attention_gradcheck(causal):
    rng = np.random.default_rng(9)
    q, k, v = rng.standard_normal((2, 7, 3)), rng.standard_normal((2, 7, 3)), rng.standard_normal((2, 7, 2))

    def fwd(q, k, v):
        return sliding_window_attention(q, k, v, 4, causal=causal)[0]

    def bwd(dout, q, k, v):
        return sliding_window_attention_backward(dout, q, k, v, sliding_window_attention(q, k, v, 4, causal=causal)[1],
                                                 4, causal=causal)

    errors = check_function(fwd, bwd, q, k, v, details=True)
    assert max(errors.values()) < TOLERANCE, errors


def test_sliding_window_attention_broadcast_scale_and_float32():
    rng = np.random.default_rng(10)
    q, k, v = rng.standard_normal((2, 1, 6, 3)), rng.standard_normal((1, 6, 3)), rng.standard_normal((6, 2))

    def fwd(q, k, v):
        return sliding_window_attention(q, k, v, 2, scale=0.7)[0]

    def bwd(dout, q, k, v):
        return sliding_window_attention_backward(dout, q, k, v, sliding_window_attention(q, k, v, 2, scale=0.7)[1],
                                                 2, scale=0.7)

    errors = check_function(fwd, bwd, q, k, v, details=True)       # broadcast k, v: gradients summed back
    assert max(errors.values()) < TOLERANCE, errors
    grads = bwd(np.ones((2, 1, 6, 2)), q, k, v)
    assert [g.shape for g in grads] == [q.shape, k.shape, v.shape]
    out, band = sliding_window_attention(q.astype(np.float32), k.astype(np.float32), v.astype(np.float32), 2)
    assert out.dtype == np.float32 and band.dtype == np.float32


def test_sliding_window_attention_bad_input():
    q = np.zeros((5, 4))
    with pytest.raises(ValueError, match="k must have shape"):
        sliding_window_attention(q, np.zeros((6, 4)), np.zeros((6, 2)), 2)
    with pytest.raises(ValueError, match="window"):
        sliding_window_attention(q, q, q, 0)
    out, band = sliding_window_attention(q, q, np.zeros((5, 2)), 2)
    with pytest.raises(ValueError, match="weights must have shape"):
        sliding_window_attention_backward(out, q, q, np.zeros((5, 2)), band[:, :2], 2)
    with pytest.raises(ValueError, match="dout must have shape"):
        sliding_window_attention_backward(out[:, :1], q, q, np.zeros((5, 2)), band, 2)
    with pytest.raises(ValueError, match="weights must have shape"):
        band_to_dense(band, 4)
