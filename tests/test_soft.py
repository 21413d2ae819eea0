"""Tests for Show-Attend-Tell soft attention (MECHANISMS.md M1)."""
import math

import numpy as np
import pytest

from attention_np.mechanisms.hard import HardAttention
from attention_np.mechanisms.soft import SoftAttention, doubly_stochastic_penalty
from attention_np.nn.linear import Linear
from attention_np.nn.losses import cross_entropy, cross_entropy_backward
from attention_np.train.gradcheck import TOLERANCE, check_function, check_module
from attention_np.train.optim import Adam

B, L, D, D_STATE, D_HIDDEN = 3, 5, 4, 3, 6


def _inputs(seed=0):
    rng = np.random.default_rng(seed)
    features = rng.standard_normal((B, L, D))
    state = rng.standard_normal((B, D_STATE))
    mask = np.ones((B, L), dtype=bool)
    mask[0, 3:] = False          # padded tail
    mask[2, 1] = False           # a hole in the middle
    return features, state, mask


@pytest.mark.parametrize("gate", [True, False])
@pytest.mark.parametrize("use_mask", [False, True])
def test_gradcheck_every_input_and_parameter(gate, use_mask):
    features, state, mask = _inputs()
    module = SoftAttention(D, D_STATE, D_HIDDEN, gate=gate, rng=np.random.default_rng(1))
    module.params["b"][:] = np.random.default_rng(2).standard_normal(D_HIDDEN)   # non-trivial bias
    kwargs = {"mask": mask} if use_mask else {}
    errors = check_module(module, features, state, details=True, **kwargs)
    expected = {"input0", "input1", "W_a", "W_h", "b", "w"} | ({"w_beta", "b_beta"} if gate else set())
    assert set(errors) == expected
    assert max(errors.values()) < TOLERANCE, errors


def test_gradcheck_fails_for_a_wrong_backward(monkeypatch):
    """The gradient check above can fail: break the gate gradient and it must notice."""
    import attention_np.mechanisms.soft as soft

    features, state, _ = _inputs()
    module = SoftAttention(D, D_STATE, D_HIDDEN, rng=np.random.default_rng(1))
    real = soft.soft_attention_backward

    def broken(*args):
        dfeatures, dstate, dparams = real(*args)
        dparams["w_beta"] = 2.0 * dparams["w_beta"]
        return dfeatures, dstate, dparams

    monkeypatch.setattr(soft, "soft_attention_backward", broken)
    assert check_module(module, features, state, details=True)["w_beta"] > 1e-3


def _m1_modules():
    """Soft (no gate) and hard attention whose scores give alpha = [0.2, 0.5, 0.3] on a = [[1,0],[0,1],[1,1]].

    With W_a = I, b = 0 and h = 0 the hidden activations are tanh(a_i) =
    [t,0], [0,t], [t,t] (t = tanh 1), so e_3 = e_1 + e_2.  log(alpha) + log 3 =
    log([0.6, 1.5, 0.9]) satisfies that, so w = log([0.6, 1.5]) / t.
    """
    w = np.log([0.6, 1.5]) / math.tanh(1.0)
    mods = [SoftAttention(2, 1, 2, gate=False, rng=np.random.default_rng(0)),
            HardAttention(2, 1, 2, rng=np.random.default_rng(0))]
    for m in mods:
        m.params["W_a"][:] = np.eye(2)
        m.params["W_h"][:] = 0.0
        m.params["b"][:] = 0.0
        m.params["w"][:] = w
    return mods


def test_m1_soft_context_is_the_mean_of_hard_contexts():
    soft, hard = _m1_modules()
    a = np.array([[1.0, 0.0], [0.0, 1.0], [1.0, 1.0]])
    context = soft.forward(a[None], np.zeros((1, 1)))
    np.testing.assert_allclose(soft.weights, [[0.2, 0.5, 0.3]], atol=1e-12)
    np.testing.assert_allclose(context, [[0.5, 0.8]], atol=1e-12)        # [v] M1 f
    n = 40_000
    hard_contexts = hard.forward(np.broadcast_to(a, (n, 3, 2)), np.zeros((n, 1)), np.random.default_rng(0))
    np.testing.assert_allclose(hard_contexts.mean(axis=0), [0.5, 0.8], atol=0.01)
    assert set(np.unique(hard.sample)) == {0, 1, 2}


def test_gate_scales_the_expected_context():
    features, state, _ = _inputs(3)
    module = SoftAttention(D, D_STATE, D_HIDDEN, rng=np.random.default_rng(4))
    module.params["b_beta"][:] = 0.3
    context = module.forward(features, state)
    beta = 1.0 / (1.0 + np.exp(-(state @ module.params["w_beta"] + 0.3)))     # independent sigmoid
    np.testing.assert_allclose(module.beta, beta, rtol=1e-12)
    expected = (module.weights[:, :, None] * features).sum(axis=1)
    np.testing.assert_allclose(context, beta[:, None] * expected, rtol=1e-12)
    np.testing.assert_allclose(module.weights.sum(axis=1), 1.0, rtol=1e-12)


def test_masked_locations_get_zero_weight_and_zero_gradient():
    features, state, mask = _inputs()
    module = SoftAttention(D, D_STATE, D_HIDDEN, rng=np.random.default_rng(1))
    module.forward(features, state, mask=mask)
    assert np.all(module.weights[~mask] == 0.0)
    np.testing.assert_allclose(module.weights.sum(axis=1), 1.0, rtol=1e-12)
    dfeatures, _ = module.backward(np.random.default_rng(5).standard_normal((B, D)))
    assert np.all(dfeatures[~mask] == 0.0)
    assert np.any(dfeatures[mask] != 0.0)
    # changing a masked feature changes nothing
    moved = features.copy()
    moved[~mask] += 100.0
    np.testing.assert_array_equal(module.forward(moved, state, mask=mask), module.forward(features, state, mask=mask))


def test_fully_masked_row_gives_zero_context_without_nan():
    features, state, mask = _inputs()
    mask[1] = False
    module = SoftAttention(D, D_STATE, D_HIDDEN, rng=np.random.default_rng(1))
    context = module.forward(features, state, mask=mask)
    assert np.all(np.isfinite(context)) and np.all(context[1] == 0.0)
    dfeatures, dstate = module.backward(np.ones((B, D)))
    assert np.all(np.isfinite(dfeatures)) and np.all(dfeatures[1] == 0.0)
    assert np.all(np.isfinite(dstate))


def test_huge_inputs_and_float32():
    features, state, _ = _inputs()
    module = SoftAttention(D, D_STATE, D_HIDDEN, rng=np.random.default_rng(1))
    module.params["w"][:] *= 1e6                               # huge logits
    out = module.forward(features * 1e3, state * 1e3)
    assert np.all(np.isfinite(out)) and np.all(np.isfinite(module.weights))
    module.astype(np.float32)
    out32 = module.forward(features.astype(np.float32), state.astype(np.float32))
    assert out32.dtype == np.float32 and module.weights.dtype == np.float32
    dfeatures, dstate = module.backward(np.ones((B, D), dtype=np.float32))
    assert dfeatures.dtype == np.float32 and dstate.dtype == np.float32
    assert all(g.dtype == np.float32 for _, _, g in module.parameters())


def test_bad_shapes_raise_value_error_naming_the_argument():
    features, state, mask = _inputs()
    module = SoftAttention(D, D_STATE, D_HIDDEN, rng=np.random.default_rng(1))
    with pytest.raises(ValueError, match="features"):
        module.forward(features[..., :2], state)
    with pytest.raises(ValueError, match="features"):
        module.forward(features[0], state)
    with pytest.raises(ValueError, match="state"):
        module.forward(features, state[:2])
    with pytest.raises(ValueError, match="state"):
        module.forward(features, state[:, :2])
    with pytest.raises(ValueError, match="mask"):
        module.forward(features, state, mask=mask[:, :2])
    with pytest.raises(ValueError, match="mask"):
        module.forward(features, state, mask=mask.astype(int))
    module.forward(features, state)
    with pytest.raises(ValueError, match="dcontext"):
        module.backward(np.ones((B, D + 1)))
    with pytest.raises(ValueError, match="weights"):
        doubly_stochastic_penalty(np.ones((3, 4)), 1.0)


# ------------------------------------------------------------------ doubly stochastic penalty
def test_doubly_stochastic_penalty_gradient():
    rng = np.random.default_rng(7)
    weights = rng.dirichlet(np.ones(6), size=(2, 4))           # (B=2, T=4, L=6)
    mask = np.array([[True] * 6, [True] * 4 + [False] * 2])
    for m in (None, mask):
        err = check_function(lambda w: np.array(doubly_stochastic_penalty(w, 0.7, mask=m)[0]),
                             lambda dout, w: doubly_stochastic_penalty(w, 0.7, mask=m)[1] * dout,
                             weights)
        assert err < TOLERANCE
    _, dweights = doubly_stochastic_penalty(weights, 0.7, mask=mask)
    assert np.all(dweights[1][:, ~mask[1]] == 0.0)


def test_doubly_stochastic_penalty_value_and_minimum():
    # independent formula: lam * sum_i (1 - sum_t alpha_ti)^2, one example
    weights = np.array([[[0.5, 0.5, 0.0], [0.1, 0.2, 0.7]]])
    penalty, _ = doubly_stochastic_penalty(weights, 2.0)
    assert penalty == pytest.approx(2.0 * (0.4 ** 2 + 0.3 ** 2 + 0.3 ** 2), rel=1e-12)
    # [v] M1 f: L = 196 locations, a 16-word caption, every column sum C/L -> 165.3061
    uniform = np.full((1, 16, 196), 1.0 / 196)
    penalty, dweights = doubly_stochastic_penalty(uniform, 1.0)
    assert penalty == pytest.approx(165.3061, abs=1e-4)
    # it is the minimum: any other distribution of the 16 rows costs more
    rng = np.random.default_rng(0)
    for _ in range(5):
        other = rng.dirichlet(np.full(196, 5.0), size=(1, 16))
        assert doubly_stochastic_penalty(other, 1.0)[0] > penalty
    # and the gradient projected onto the simplex (rows summing to 1) vanishes there
    projected = dweights - dweights.mean(axis=-1, keepdims=True)
    assert np.max(np.abs(projected)) < 1e-12


# ------------------------------------------------------------------ learning
def test_soft_attention_learns_to_read_the_marked_cell():
    """16 cells hold one of 6 symbols; one cell carries a marker; predict its symbol.

    The readout sees only the symbol channels of the context: if it also saw the
    marker channel it could solve the task for one symbol by *not* attending
    (marker absent => that symbol), a perfect classifier whose attention map is
    wrong for that symbol -- a reminder that heatmaps are not explanations.
    """
    rng = np.random.default_rng(0)
    n_sym, n_cells, batch = 6, 16, 64

    def make(n):
        symbols = rng.integers(0, n_sym, size=(n, n_cells))
        marked = rng.integers(0, n_cells, size=n)
        feats = np.zeros((n, n_cells, n_sym + 1))
        feats[np.arange(n)[:, None], np.arange(n_cells), symbols] = 1.0
        feats[np.arange(n), marked, n_sym] = 1.0
        return feats, symbols[np.arange(n), marked], marked

    attn = SoftAttention(n_sym + 1, 2, 8, rng=rng)
    readout = Linear(n_sym, n_sym, rng=rng)
    opt = Adam(list(attn.parameters()) + list(readout.parameters()), lr=0.05)
    state = np.ones((batch, 2))                # a fixed "decoder state": the query is learned in W_h, b
    for _ in range(200):
        feats, target, _ = make(batch)
        opt.zero_grad()
        logits = readout.forward(attn.forward(feats, state)[:, :n_sym])
        dcontext = np.zeros((batch, n_sym + 1))
        dcontext[:, :n_sym] = readout.backward(cross_entropy_backward(logits, target))
        attn.backward(dcontext)
        opt.step()
    feats, target, marked = make(500)
    logits = readout.forward(attn.forward(feats, np.ones((500, 2)))[:, :n_sym])
    accuracy = np.mean(logits.argmax(axis=1) == target)
    alignment = np.mean(attn.weights.argmax(axis=1) == marked)
    mass_on_marked = attn.weights[np.arange(500), marked].mean()     # uniform would give 1/16
    assert cross_entropy(logits, target) < 0.3
    assert accuracy >= 0.95, accuracy
    assert alignment >= 0.95, alignment
    assert mass_on_marked > 0.8, mass_on_marked


def test_backward_accepts_a_gradient_at_the_weights_from_the_penalty():
    """Context loss + doubly stochastic penalty through the module: checked by finite differences."""
    from attention_np.mechanisms.soft import SoftAttention, doubly_stochastic_penalty
    from attention_np.train import TOLERANCE, numerical_gradient, relative_error

    rng = np.random.default_rng(11)
    B, L, D, d_s = 2, 5, 3, 4
    att = SoftAttention(D, d_s, 6, rng=rng)
    features, state = rng.standard_normal((B, L, D)), rng.standard_normal((B, d_s))
    G, lam = rng.standard_normal((B, D)), 0.7

    def objective():
        ctx = att.forward(features, state)
        penalty, _ = doubly_stochastic_penalty(att.weights[:, None, :], lam)    # T = 1 step
        return float(np.sum(ctx * G) + penalty)

    att.zero_grad()
    att.forward(features, state)
    _, dweights = doubly_stochastic_penalty(att.weights[:, None, :], lam)
    dfeatures, dstate = att.backward(G, dweights=dweights[:, 0, :])
    assert relative_error(dfeatures, numerical_gradient(objective, features)) < TOLERANCE
    assert relative_error(dstate, numerical_gradient(objective, state)) < TOLERANCE
    analytic = {name: g.copy() for name, _, g in att.parameters()}
    for name, p, _ in att.parameters():
        assert relative_error(analytic[name], numerical_gradient(objective, p)) < TOLERANCE, name
    with pytest.raises(ValueError, match="dweights must have shape"):
        att.backward(G, dweights=np.zeros((B, L + 1)))
