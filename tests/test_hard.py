"""Tests for stochastic hard attention, REINFORCE and Gumbel-softmax (MECHANISMS.md M2)."""
import numpy as np
import pytest

from attention_np.mechanisms.hard import (
    HardAttention, entropy_logit_gradient, gumbel_softmax, gumbel_softmax_backward,
    reinforce_logit_gradient, sample_categorical,
)
from attention_np.train.gradcheck import TOLERANCE, check_function, check_module, numerical_gradient, relative_error
from attention_np.train.optim import Adam

B, L, D, D_STATE, D_HIDDEN = 3, 5, 4, 3, 6

# MECHANISMS.md M2 (e), the bandit: logits [1, 0, -1], rewards [1, 3, 0]
BANDIT_LOGITS = np.array([1.0, 0.0, -1.0])
BANDIT_REWARDS = np.array([1.0, 3.0, 0.0])
BANDIT_ALPHA = np.array([0.6652, 0.2447, 0.0900])            # [v]
BANDIT_MEAN_REWARD = 1.3994                                  # [v]
BANDIT_GRADIENT = np.array([-0.2657, 0.3917, -0.1260])       # [v] grad_e E[r], maximisation


def _inputs(seed=0):
    rng = np.random.default_rng(seed)
    features = rng.standard_normal((B, L, D))
    state = rng.standard_normal((B, D_STATE))
    mask = np.ones((B, L), dtype=bool)
    mask[0, 3:] = False
    mask[2, 1] = False
    return features, state, mask


def _module(seed=1):
    module = HardAttention(D, D_STATE, D_HIDDEN, rng=np.random.default_rng(seed))
    module.params["b"][:] = np.random.default_rng(seed + 10).standard_normal(D_HIDDEN)
    return module


# ------------------------------------------------------------------ pathwise part
@pytest.mark.parametrize("use_mask", [False, True])
def test_pathwise_gradient_with_the_sample_frozen(use_mask):
    features, state, mask = _inputs()
    module = _module()
    kwargs = {"mask": mask} if use_mask else {}
    module.forward(features, state, np.random.default_rng(3), **kwargs)
    sample = module.sample.copy()
    # advantage 0: only the pathwise gradient; d context / d(everything but the chosen feature) = 0
    errors = check_module(module, features, state, np.random.default_rng(3), details=True,
                          backward_kwargs={"advantage": 0.0}, sample=sample, **kwargs)
    assert set(errors) == {"input0", "input1", "W_a", "W_h", "b", "w"}
    assert max(errors.values()) < TOLERANCE, errors
    module.zero_grad()
    module.forward(features, state, None, sample=sample, **kwargs)
    G = np.random.default_rng(4).standard_normal((B, D))
    dfeatures, dstate = module.backward(G, advantage=0.0)
    np.testing.assert_array_equal(dfeatures[np.arange(B), sample], G)     # only the chosen feature
    assert np.count_nonzero(np.abs(dfeatures).sum(-1)) == B
    assert np.all(dstate == 0.0) and all(np.all(g == 0.0) for _, _, g in module.parameters())


# ------------------------------------------------------------------ score-function part
@pytest.mark.parametrize("use_mask", [False, True])
def test_score_function_gradient_is_the_gradient_of_the_surrogate(use_mask):
    """With the sample frozen, backward(dcontext, A) is the exact gradient of

    sum_b G_b . context_b  -  sum_b A_b log alpha_{b, s_b}

    (pathwise term + REINFORCE surrogate in minimisation convention), for every
    input and parameter.
    """
    features, state, mask = _inputs(1)
    module = _module(2)
    kwargs = {"mask": mask} if use_mask else {}
    module.forward(features, state, np.random.default_rng(5), **kwargs)
    sample = module.sample.copy()
    advantage = np.array([0.7, -1.3, 2.1])
    G = np.random.default_rng(6).standard_normal((B, D))

    def surrogate():
        context = module.forward(features, state, None, sample=sample, **kwargs)
        picked = module.weights[np.arange(B), sample]
        return float(np.sum(G * context) - np.sum(advantage * np.log(picked)))

    module.zero_grad()
    module.forward(features, state, None, sample=sample, **kwargs)
    dfeatures, dstate = module.backward(G, advantage=advantage)
    analytic = {name: g.copy() for name, _, g in module.parameters()}
    assert relative_error(dfeatures, numerical_gradient(surrogate, features)) < TOLERANCE
    assert relative_error(dstate, numerical_gradient(surrogate, state)) < TOLERANCE
    for name, p, _ in module.parameters():
        assert relative_error(analytic[name], numerical_gradient(surrogate, p)) < TOLERANCE, name
    if use_mask:
        assert np.all(dfeatures[~mask] == 0.0)


def test_score_function_check_can_fail(monkeypatch):
    """Flip the sign convention of the REINFORCE gradient: the surrogate check must notice."""
    import attention_np.mechanisms.hard as hard

    features, state, _ = _inputs(1)
    module = _module(2)
    module.forward(features, state, np.random.default_rng(5))
    sample = module.sample.copy()
    real = hard.reinforce_logit_gradient
    monkeypatch.setattr(hard, "reinforce_logit_gradient", lambda w, s, a: -real(w, s, a))

    def surrogate():
        module.forward(features, state, None, sample=sample)
        return float(-np.sum(np.log(module.weights[np.arange(B), sample])))

    module.zero_grad()
    module.forward(features, state, None, sample=sample)
    module.backward(np.zeros((B, D)), advantage=1.0)
    assert relative_error(module.grads["w"], numerical_gradient(surrogate, module.params["w"])) > 1e-3


def test_bandit_exact_gradient_matches_the_verified_numbers():
    alpha = np.exp(BANDIT_LOGITS) / np.exp(BANDIT_LOGITS).sum()
    np.testing.assert_allclose(alpha, BANDIT_ALPHA, atol=5e-5)
    mean_reward = alpha @ BANDIT_REWARDS
    assert mean_reward == pytest.approx(BANDIT_MEAN_REWARD, abs=5e-5)
    # the exact gradient, by finite differences of E[r](e) = softmax(e) . r
    e = BANDIT_LOGITS.copy()
    exact = numerical_gradient(lambda: float(np.exp(e) @ BANDIT_REWARDS / np.exp(e).sum()), e)
    np.testing.assert_allclose(exact, BANDIT_GRADIENT, atol=5e-5)
    np.testing.assert_allclose(alpha * (BANDIT_REWARDS - mean_reward), BANDIT_GRADIENT, atol=5e-5)
    # one REINFORCE term, by hand: sample 1, reward 3 -> -(3) * (onehot(1) - alpha)
    np.testing.assert_allclose(reinforce_logit_gradient(alpha, np.array(1), 3.0),
                               -3.0 * (np.array([0.0, 1.0, 0.0]) - alpha), rtol=1e-12)


def test_reinforce_expectation_by_enumeration_is_exactly_the_verified_gradient():
    """No sampling: E_{s~alpha}[-r_s (onehot(s) - alpha)] = -alpha (r - E[r]), the [v] numbers of M2 (e)."""
    alpha = np.exp(BANDIT_LOGITS) / np.exp(BANDIT_LOGITS).sum()
    expectation = sum(alpha[s] * reinforce_logit_gradient(alpha, np.array(s), BANDIT_REWARDS[s])
                      for s in range(3))                                        # the loop is the expectation
    np.testing.assert_allclose(-expectation, BANDIT_GRADIENT, atol=5e-5)
    # any baseline that does not depend on the sample leaves the expectation unchanged
    with_baseline = sum(alpha[s] * reinforce_logit_gradient(alpha, np.array(s), BANDIT_REWARDS[s] - 1.7)
                        for s in range(3))
    np.testing.assert_allclose(with_baseline, expectation, atol=1e-15)
    # batched call: one row per outcome, advantages r_s
    rows = reinforce_logit_gradient(np.tile(alpha, (3, 1)), np.arange(3), BANDIT_REWARDS)
    np.testing.assert_allclose(alpha @ rows, expectation, atol=1e-15)


def test_module_score_function_expectation_is_exactly_the_expected_reward_gradient():
    """Through the scoring network, without Monte Carlo: weighting the backward of every possible
    sample s by alpha_s (advantage r_s - b, dcontext = 0) gives exactly -grad E_{s~alpha}[r_s]
    for every parameter, the state and the features (finite differences of the exact expectation)."""
    rng = np.random.default_rng(3)
    features, state = rng.standard_normal((1, 3, 2)), rng.standard_normal((1, 2))
    module = HardAttention(2, 2, 3, rng=np.random.default_rng(4))
    module.params["b"][:] = rng.standard_normal(3)

    def expected_reward():
        module.forward(features, state, None, sample=np.array([0]))
        return float(module.weights[0] @ BANDIT_REWARDS)

    exact = {name: numerical_gradient(expected_reward, p) for name, p, _ in module.parameters()}
    exact["state"] = numerical_gradient(expected_reward, state)
    exact["features"] = numerical_gradient(expected_reward, features)
    module.forward(features, state, None, sample=np.array([0]))
    alpha = module.weights[0].copy()
    total = {name: 0.0 for name in exact}
    for s in range(3):                                                          # the loop is the expectation
        module.zero_grad()
        module.forward(features, state, None, sample=np.array([s]))
        dfeatures, dstate = module.backward(np.zeros((1, 2)), advantage=BANDIT_REWARDS[s] - 0.8)
        grads = {name: g for name, _, g in module.parameters()}
        grads.update(state=dstate, features=dfeatures)
        for name in total:
            total[name] = total[name] + alpha[s] * grads[name]
    for name in exact:                                                          # minimisation: -grad E[r]
        assert relative_error(total[name], -exact[name]) < TOLERANCE, name
        assert np.abs(exact[name]).max() > 1e-3, name                           # a real, non-trivial gradient


@pytest.mark.parametrize("use_mask", [False, True])
def test_entropy_bonus_is_the_gradient_of_minus_lambda_entropy(use_mask):
    """backward(dcontext, A, entropy=lam) is the exact gradient of
    sum G . context - sum A log alpha_s - lam sum H(alpha) (sample frozen)."""
    features, state, mask = _inputs(2)
    module = _module(3)
    kwargs = {"mask": mask} if use_mask else {}
    module.forward(features, state, np.random.default_rng(8), **kwargs)
    sample = module.sample.copy()
    advantage, lam = np.array([0.4, -0.9, 1.1]), 0.6
    G = np.random.default_rng(9).standard_normal((B, D))

    def surrogate():
        context = module.forward(features, state, None, sample=sample, **kwargs)
        w = module.weights
        entropy = -np.sum(np.where(w > 0, w * np.log(np.where(w > 0, w, 1.0)), 0.0))
        return float(np.sum(G * context) - np.sum(advantage * np.log(w[np.arange(B), sample])) - lam * entropy)

    module.zero_grad()
    module.forward(features, state, None, sample=sample, **kwargs)
    dfeatures, dstate = module.backward(G, advantage=advantage, entropy=lam)
    analytic = {name: g.copy() for name, _, g in module.parameters()}
    assert relative_error(dfeatures, numerical_gradient(surrogate, features)) < TOLERANCE
    assert relative_error(dstate, numerical_gradient(surrogate, state)) < TOLERANCE
    for name, p, _ in module.parameters():
        assert relative_error(analytic[name], numerical_gradient(surrogate, p)) < TOLERANCE, name
    # and the bonus really changes the gradient (the check above would see a sign error)
    module.zero_grad()
    module.forward(features, state, None, sample=sample, **kwargs)
    module.backward(G, advantage=advantage)
    assert np.abs(module.grads["w"] - analytic["w"]).max() > 1e-3


def test_reinforce_monte_carlo_average_matches_the_exact_gradient():
    rng = np.random.default_rng(0)
    n = 200_000
    alpha = np.broadcast_to(np.exp(BANDIT_LOGITS) / np.exp(BANDIT_LOGITS).sum(), (n, 3))
    samples = sample_categorical(alpha, rng)                                       # (n,)
    np.testing.assert_allclose(np.bincount(samples, minlength=3) / n, BANDIT_ALPHA, atol=5e-3)
    rewards = BANDIT_REWARDS[samples]
    # minimisation convention: the estimator targets -grad E[r]
    no_baseline = -reinforce_logit_gradient(alpha, samples, rewards)              # (n, 3)
    with_baseline = -reinforce_logit_gradient(alpha, samples, rewards - BANDIT_MEAN_REWARD)
    np.testing.assert_allclose(no_baseline.mean(axis=0), BANDIT_GRADIENT, atol=1e-2)
    np.testing.assert_allclose(with_baseline.mean(axis=0), BANDIT_GRADIENT, atol=1e-2)
    assert with_baseline.var(axis=0).sum() < 0.5 * no_baseline.var(axis=0).sum()  # 0.65 vs 2.13 [v]
    # a baseline that depends on the sample itself, b = r_s: the estimator is identically 0 (biased)
    assert np.all(reinforce_logit_gradient(alpha, samples, rewards - rewards) == 0.0)


def test_module_reinforce_matches_exact_expected_reward_gradient():
    """Through the whole scoring network: the average of many REINFORCE gradients
    estimates -grad_theta E_{s~alpha(theta)}[r_s], computed exactly (no sampling)."""
    rng = np.random.default_rng(0)
    features1 = rng.standard_normal((1, 3, 2))
    state1 = rng.standard_normal((1, 2))
    module = HardAttention(2, 2, 3, rng=np.random.default_rng(1))
    rewards = BANDIT_REWARDS

    def expected_reward():
        module.forward(features1, state1, None, sample=np.array([0]))
        return float(module.weights[0] @ rewards)

    exact = {name: numerical_gradient(expected_reward, p) for name, p, _ in module.parameters()}
    n = 100_000
    module.zero_grad()
    module.forward(np.broadcast_to(features1, (n, 3, 2)), np.broadcast_to(state1, (n, 2)), rng)
    module.backward(np.zeros((n, 2)), advantage=rewards[module.sample] - float(module.weights[0] @ rewards))
    for name, _, g in module.parameters():
        scale = max(np.abs(exact[name]).max(), 0.1)
        assert np.max(np.abs(-g / n - exact[name])) < 0.02 * scale + 2e-3, name


def test_entropy_gradient():
    rng = np.random.default_rng(2)
    logits = rng.standard_normal((4, 5))

    def entropy(e):
        p = np.exp(e - e.max(-1, keepdims=True))
        p /= p.sum(-1, keepdims=True)
        return -np.sum(p * np.log(p), axis=-1)

    def backward(dout, e):
        p = np.exp(e - e.max(-1, keepdims=True))
        return dout[:, None] * entropy_logit_gradient(p / p.sum(-1, keepdims=True))

    assert check_function(entropy, backward, logits) < TOLERANCE
    assert np.all(entropy_logit_gradient(np.array([0.5, 0.0, 0.5])) == 0.0)


# ------------------------------------------------------------------ masks
def test_masked_locations_are_never_sampled_and_get_zero_gradient():
    rng = np.random.default_rng(0)
    n = 20_000
    features = rng.standard_normal((n, L, D))
    state = rng.standard_normal((n, D_STATE))
    mask = rng.random((n, L)) < 0.5
    mask[:, 0] |= ~mask.any(axis=1)                         # at least one allowed location per row
    module = _module()
    context = module.forward(features, state, rng, mask=mask)
    assert np.all(mask[np.arange(n), module.sample])
    assert np.all(module.weights[~mask] == 0.0)
    np.testing.assert_array_equal(context, features[np.arange(n), module.sample])
    dfeatures, _ = module.backward(np.ones((n, D)), advantage=rng.standard_normal(n))
    assert np.all(dfeatures[~mask] == 0.0)
    # a location with tiny but nonzero probability can still be drawn, a masked one never
    weights = np.array([[0.0, 1e-12, 1.0 - 1e-12, 0.0]])
    assert set(sample_categorical(np.repeat(weights, 1000, axis=0), rng)) <= {1, 2}


def test_fully_masked_row_has_no_sample_and_zero_context():
    features, state, mask = _inputs()
    mask[1] = False
    module = _module()
    context = module.forward(features, state, np.random.default_rng(0), mask=mask)
    assert module.sample[1] == -1 and np.all(context[1] == 0.0)
    dfeatures, dstate = module.backward(np.ones((B, D)), advantage=np.ones(B))
    assert np.all(dfeatures[1] == 0.0) and np.all(dstate[1] == 0.0)
    assert np.all(np.isfinite(dfeatures)) and np.all(np.isfinite(dstate))


# ------------------------------------------------------------------ Gumbel-softmax
def test_gumbel_argmax_frequencies_match_softmax():
    rng = np.random.default_rng(0)
    logits = np.array([2.0, 0.5, -1.0, 0.0])
    probs = np.exp(logits) / np.exp(logits).sum()
    n = 100_000
    y, y_soft = gumbel_softmax(np.broadcast_to(logits, (n, 4)), 1.0, rng, hard=True)
    assert np.all(y.sum(axis=1) == 1.0) and set(np.unique(y)) == {0.0, 1.0}
    np.testing.assert_array_equal(y.argmax(axis=1), y_soft.argmax(axis=1))
    np.testing.assert_allclose(y.mean(axis=0), probs, atol=1e-2)
    # a low temperature makes the relaxed sample nearly one-hot
    _, cold = gumbel_softmax(np.broadcast_to(logits, (1000, 4)), 0.01, rng)
    assert np.mean(cold.max(axis=1)) > 0.99


@pytest.mark.parametrize("tau", [0.5, 2.0])
def test_gumbel_softmax_gradient_with_frozen_noise(tau):
    logits = np.random.default_rng(1).standard_normal((3, 5))
    forward = lambda e: gumbel_softmax(e, tau, np.random.default_rng(7))[0]           # noise frozen by the seed
    backward = lambda dy, e: gumbel_softmax_backward(dy, gumbel_softmax(e, tau, np.random.default_rng(7))[1], tau)
    assert check_function(forward, backward, logits) < TOLERANCE


def test_straight_through_uses_the_relaxed_gradient():
    logits = np.random.default_rng(1).standard_normal((3, 5))
    y_hard, y_soft = gumbel_softmax(logits, 0.5, np.random.default_rng(7), hard=True)
    y_relaxed, _ = gumbel_softmax(logits, 0.5, np.random.default_rng(7), hard=False)
    np.testing.assert_allclose(y_soft, y_relaxed, rtol=1e-12)
    np.testing.assert_array_equal(y_hard, np.eye(5)[y_relaxed.argmax(axis=1)])
    dy = np.random.default_rng(2).standard_normal((3, 5))
    # softmax Jacobian of the relaxed sample, written out: (diag(y) - y y^T) / tau
    expected = np.einsum("bij,bj->bi", (np.einsum("bi,ij->bij", y_soft, np.eye(5))
                                        - y_soft[:, :, None] * y_soft[:, None, :]) / 0.5, dy)
    np.testing.assert_allclose(gumbel_softmax_backward(dy, y_soft, 0.5), expected, rtol=1e-10, atol=1e-14)


def test_gumbel_masked_positions_get_zero_weight_and_gradient():
    rng = np.random.default_rng(0)
    logits = np.broadcast_to(np.array([5.0, 0.0, 1.0, 2.0]), (2000, 4))
    mask = np.array([False, True, True, False])
    y, y_soft = gumbel_softmax(logits, 1.0, rng, hard=True, mask=mask)
    assert np.all(y[:, ~mask] == 0.0) and np.all(y_soft[:, ~mask] == 0.0)
    assert np.all(gumbel_softmax_backward(np.ones_like(y), y_soft, 1.0)[:, ~mask] == 0.0)
    y, y_soft = gumbel_softmax(logits[:2], 1.0, rng, hard=True, mask=np.zeros(4, dtype=bool))
    assert np.all(y == 0.0) and np.all(y_soft == 0.0)


# ------------------------------------------------------------------ errors, dtypes
def test_bad_inputs_raise_value_error_naming_the_argument():
    features, state, mask = _inputs()
    module = _module()
    rng = np.random.default_rng(0)
    with pytest.raises(ValueError, match="features"):
        module.forward(features[..., :2], state, rng)
    with pytest.raises(ValueError, match="state"):
        module.forward(features, state[:, :1], rng)
    with pytest.raises(ValueError, match="mask"):
        module.forward(features, state, rng, mask=mask[:, :2])
    with pytest.raises(ValueError, match="sample"):
        module.forward(features, state, rng, sample=np.array([0, 1]))
    with pytest.raises(ValueError, match="sample"):
        module.forward(features, state, rng, mask=mask, sample=np.array([4, 0, 0]))   # masked location
    module.forward(features, state, rng)
    with pytest.raises(ValueError, match="dcontext"):
        module.backward(np.ones((B, D + 1)), advantage=0.0)
    with pytest.raises(ValueError, match="advantage"):
        module.backward(np.ones((B, D)), advantage=np.ones(B + 1))
    with pytest.raises(ValueError, match="tau"):
        gumbel_softmax(np.zeros(3), 0.0, rng)
    with pytest.raises(ValueError, match="sample"):
        reinforce_logit_gradient(np.ones((2, 3)) / 3, np.array([0, 1, 2]), 1.0)
    with pytest.raises(ValueError, match="dy"):
        gumbel_softmax_backward(np.ones(4), np.ones(3) / 3, 1.0)


def test_float32_stays_float32():
    features, state, _ = _inputs()
    module = _module().astype(np.float32)
    out = module.forward(features.astype(np.float32), state.astype(np.float32), np.random.default_rng(0))
    assert out.dtype == np.float32 and module.weights.dtype == np.float32
    dfeatures, dstate = module.backward(np.ones((B, D), dtype=np.float32), advantage=np.ones(B, dtype=np.float32))
    assert dfeatures.dtype == np.float32 and dstate.dtype == np.float32
    assert all(g.dtype == np.float32 for _, _, g in module.parameters())
    y, _ = gumbel_softmax(np.zeros((2, 3), dtype=np.float32), 0.5, np.random.default_rng(0), hard=True)
    assert y.dtype == np.float32


# ------------------------------------------------------------------ learning
def test_reinforce_learns_to_pick_the_marked_location():
    """Reward 1 for choosing the marked cell, 0 otherwise; REINFORCE with a moving-average baseline."""
    rng = np.random.default_rng(0)
    n_cells, d, batch = 8, 4, 64

    def make(n):
        feats = rng.standard_normal((n, n_cells, d))
        marked = rng.integers(0, n_cells, size=n)
        feats[:, :, -1] = 0.0
        feats[np.arange(n), marked, -1] = 1.0                 # the marker channel
        return feats, marked

    module = HardAttention(d, 1, 8, rng=rng)
    opt = Adam(module, lr=0.05)
    state = np.ones((batch, 1))
    baseline = 0.0
    for _ in range(150):
        feats, marked = make(batch)
        opt.zero_grad()
        module.forward(feats, state, rng)
        reward = (module.sample == marked).astype(float)
        module.backward(np.zeros((batch, d)), advantage=(reward - baseline) / batch)
        baseline = 0.9 * baseline + 0.1 * reward.mean()
        opt.step()
    feats, marked = make(1000)
    module.forward(feats, np.ones((1000, 1)), rng)
    mass_on_marked = module.weights[np.arange(1000), marked].mean()                # uniform: 1/8
    assert mass_on_marked > 0.9, mass_on_marked
    assert np.mean(module.sample == marked) > 0.85
