"""Luong local attention (M12): the local-p example numbers, windows, the
gradient through p_t, padding, vectorisation over the batch, errors."""
import numpy as np
import pytest

from attention_np.mechanisms.local import LocalAttention, local_weights, local_weights_backward
from attention_np.train.gradcheck import TOLERANCE, check_module, numerical_gradient, relative_error

B, S, D = 3, 9, 4
MASK = np.array([[True] * 6 + [False] * 3, [True] * 9, [True] * 4 + [False] * 5])
SCORE_PARAMS = {"dot": [], "general": ["W_a"], "concat": ["W_a", "v_a"]}

# MECHANISMS.md M12 (e) [v]: S = 20, x = 0.3, D = 2
P_T = 11.4889
WINDOW = [10, 11, 12, 13]
GAUSS = [0.3301, 0.8874, 0.8775, 0.3192]
WEIGHTS = [0.0825, 0.2218, 0.2194, 0.0798]
DA_DP = [-0.1229, -0.1084, 0.1121, 0.1206]


@pytest.fixture
def data():
    rng = np.random.default_rng(2)
    return rng, rng.standard_normal((B, D)), rng.standard_normal((B, S, D))


def _example_module(score="general"):
    """d = 1, W_p = 1, v_p = 1 and h_t = artanh(0.3) give x = v_p tanh(W_p h_t) = 0.3; a constant
    source makes every score equal, so the windowed softmax ("align") is uniform."""
    att = LocalAttention(1, window=2, mode="predictive", score=score, rng=np.random.default_rng(0))
    att.params["W_p"][...] = 1.0
    att.params["v_p"][...] = 1.0
    return att, np.array([[np.arctanh(0.3)]]), np.full((1, 20, 1), 0.7)


@pytest.mark.parametrize("score", ["dot", "general", "concat"])
def test_local_p_example_numbers(score):
    att, h, src = _example_module(score)
    att(h, src)
    assert att.position.shape == (1,)
    np.testing.assert_allclose(att.position, [P_T], atol=5e-5)
    w = att.weights[0]
    assert np.flatnonzero(w).tolist() == WINDOW                 # zero outside {10..13}
    np.testing.assert_allclose(w[WINDOW], WEIGHTS, atol=5e-5)
    np.testing.assert_allclose(w.sum(), 0.6036, atol=5e-5)      # not renormalised
    np.testing.assert_allclose(att.context, [[0.7 * w.sum()]], atol=1e-12)


def test_gaussian_factors_and_derivative_with_respect_to_p_t():
    p_t = np.array([20.0 / (1.0 + np.exp(-0.3))])               # 11.48885...
    scores = np.zeros((1, 20))                                  # equal scores: uniform align
    weights, align, gauss = local_weights(scores, p_t, 2)
    np.testing.assert_allclose(gauss[0, WINDOW], GAUSS, atol=5e-5)
    np.testing.assert_allclose(align[0, WINDOW], 0.25, atol=1e-15)
    np.testing.assert_allclose(weights[0, WINDOW], WEIGHTS, atol=5e-5)
    # d a_s / d p_t: the backward with a one-hot upstream gradient on a_s
    da_dp = []
    for s in WINDOW:
        dweights = np.zeros((1, 20))
        dweights[0, s] = 1.0
        dscores, dp = local_weights_backward(dweights, p_t, 2, align, gauss)
        da_dp.append(dp[0])
    np.testing.assert_allclose(da_dp, DA_DP, atol=5e-5)
    # and by finite differences, the window held where it is (p_t is 0.49 from its edges)
    for s, expected in zip(WINDOW, DA_DP):
        numeric = numerical_gradient(lambda: local_weights(scores, p_t, 2)[0][0, s], p_t)
        np.testing.assert_allclose(numeric, [expected], atol=5e-5)


def test_local_weights_backward_matches_finite_differences():
    rng = np.random.default_rng(5)
    scores, p_t = rng.standard_normal((3, 12)), np.array([2.3, 7.6, 10.2])
    mask = np.ones((3, 12), bool)
    mask[2, 11] = False
    G = rng.standard_normal((3, 12))
    weights, align, gauss = local_weights(scores, p_t, 3, mask)
    dscores, dp_t = local_weights_backward(G, p_t, 3, align, gauss)
    loss = lambda: np.sum(local_weights(scores, p_t, 3, mask)[0] * G)  # noqa: E731
    assert relative_error(dscores, numerical_gradient(loss, scores)) < TOLERANCE
    assert relative_error(dp_t, numerical_gradient(loss, p_t)) < TOLERANCE


@pytest.mark.parametrize("score", ["dot", "general", "concat"])
@pytest.mark.parametrize("masked", [False, True])
def test_predictive_gradients_including_the_path_through_p_t(score, masked, data):
    rng, h, src = data
    att = LocalAttention(D, window=3, mode="predictive", score=score, rng=rng)   # sigma = 1.5, not 1
    kwargs = {"mask": MASK} if masked else {}
    errors = check_module(att, h, src, details=True, **kwargs)
    assert set(errors) == {"input0", "input1", "W_p", "v_p", "W_c", *SCORE_PARAMS[score]}
    assert max(errors.values()) < TOLERANCE, errors
    assert np.all(np.abs(att.grads["W_p"]) > 0)                 # p_t really receives a gradient


@pytest.mark.parametrize("score", ["dot", "general", "concat"])
@pytest.mark.parametrize("masked", [False, True])
def test_monotonic_gradients(score, masked, data):
    rng, h, src = data
    att = LocalAttention(D, window=1, mode="monotonic", score=score, rng=rng)
    kwargs = {"mask": MASK} if masked else {}
    errors = check_module(att, h, src, details=True, t=np.array([1, 4, 8]), **kwargs)
    assert set(errors) == {"input0", "input1", "W_c", *SCORE_PARAMS[score]}
    assert max(errors.values()) < TOLERANCE, errors


def test_predictive_weights_are_windowed_softmax_times_gaussian(data):
    rng, h, src = data
    att = LocalAttention(D, window=2, mode="predictive", score="general", rng=rng)
    att(h, src, mask=MASK)
    p = att.params
    lengths = MASK.sum(axis=1)
    x = np.tanh(h @ p["W_p"]) @ p["v_p"]
    np.testing.assert_allclose(att.position, lengths / (1 + np.exp(-x)), atol=1e-12)  # S_b sigma(x), S_b = own length
    for b in range(B):                                          # independent per-example reference
        win = [s for s in range(S) if abs(s - att.position[b]) <= 2 and MASK[b, s]]
        e = np.array([h[b] @ p["W_a"] @ src[b, s] for s in win])
        align = np.exp(e - e.max()) / np.exp(e - e.max()).sum()
        gauss = np.exp(-(np.array(win) - att.position[b]) ** 2 / 2.0)   # sigma = D/2 = 1
        expected = np.zeros(S)
        expected[win] = align * gauss
        np.testing.assert_allclose(att.weights[b], expected, atol=1e-12)
        assert att.weights[b].sum() < 1.0


def test_monotonic_window_is_centred_on_t_and_sums_to_one(data):
    rng, h, src = data
    att = LocalAttention(D, window=2, mode="monotonic", rng=rng)
    att(h, src, t=np.array([0, 4, 3]), mask=MASK)
    np.testing.assert_allclose(att.position, [0, 4, 3])
    assert [np.flatnonzero(w).tolist() for w in att.weights] == [[0, 1, 2], [2, 3, 4, 5, 6], [1, 2, 3]]
    np.testing.assert_allclose(att.weights.sum(axis=1), 1.0)
    att(h, src, t=5)                                            # a scalar t is shared by the batch
    np.testing.assert_allclose(att.position, [5, 5, 5])


@pytest.mark.parametrize("mode", ["predictive", "monotonic"])
def test_masked_positions_get_zero_weight_and_zero_gradient(mode, data):
    rng, h, src = data
    att = LocalAttention(D, window=4, mode=mode, rng=rng)
    att(h, src, t=np.array([5, 5, 3]), mask=MASK)
    assert np.all(att.weights[~MASK] == 0.0)
    dh, dsrc = att.backward(np.ones((B, D)))
    assert np.all(dsrc[~MASK] == 0.0)
    assert np.all(np.isfinite(dh))


def test_fully_masked_row_gives_no_nan(data):
    rng, h, src = data
    att = LocalAttention(D, window=2, rng=rng)
    mask = MASK.copy()
    mask[0] = False
    out = att(h, src, mask=mask)
    assert np.all(np.isfinite(out)) and np.all(att.weights[0] == 0)
    assert all(np.all(np.isfinite(g)) for g in att.backward(np.ones((B, D))))


def test_batch_is_vectorised_not_mixed(data):
    """Each example's result depends only on its own inputs and mask."""
    rng, h, src = data
    att = LocalAttention(D, window=2, rng=rng)
    out = att(h, src, mask=MASK)
    weights = att.weights.copy()
    for b in range(B):
        np.testing.assert_allclose(att(h[b:b + 1], src[b:b + 1], mask=MASK[b:b + 1]), out[b:b + 1], atol=1e-12)
        np.testing.assert_allclose(att.weights[0], weights[b], atol=1e-12)


def test_float32_stays_float32(data):
    rng, h, src = data
    att = LocalAttention(D, window=2, rng=rng).astype(np.float32)
    out = att(h.astype(np.float32), src.astype(np.float32), mask=MASK)
    assert out.dtype == np.float32 and att.weights.dtype == np.float32
    assert all(g.dtype == np.float32 for g in att.backward(np.ones((B, D), np.float32)))


def test_bad_inputs_raise_value_errors_naming_the_argument(data):
    rng, h, src = data
    att = LocalAttention(D, window=2, rng=rng)
    with pytest.raises(ValueError, match=r"^h_t must have shape"):
        att(h[:, :2], src)
    with pytest.raises(ValueError, match=r"^source must have shape"):
        att(h, src[:, :, :2])
    with pytest.raises(ValueError, match=r"^mask must"):
        att(h, src, mask=MASK[:, :4])
    mono = LocalAttention(D, window=2, mode="monotonic", rng=rng)
    with pytest.raises(ValueError, match=r"^t \(the decoder step"):
        mono(h, src)
    with pytest.raises(ValueError, match=r"^t must have shape"):
        mono(h, src, t=np.array([1, 2]))
    with pytest.raises(ValueError, match=r"^window"):
        LocalAttention(D, window=0)
    with pytest.raises(ValueError, match=r"^mode"):
        LocalAttention(D, window=2, mode="local-q")


@pytest.mark.parametrize("bad", [(B, D + 1), (1, D)])
def test_bad_upstream_gradient_raises_instead_of_broadcasting(bad, data):
    rng, h, src = data
    att = LocalAttention(D, window=2, rng=rng)
    att(h, src)
    with pytest.raises(ValueError, match=r"^dh_tilde must have shape \(B=3, d=4\)"):
        att.backward(np.ones(bad))
