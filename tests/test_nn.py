"""Building blocks: functional pairs, masks, layers, losses — each backward against finite differences."""
import numpy as np
import pytest

from attention_np.nn import (
    Dropout, Embedding, LayerNorm, Linear, Module, causal_mask, cross_entropy, cross_entropy_backward,
    elu, elu_backward, elu_plus_one, elu_plus_one_backward, gelu, gelu_backward, log_softmax,
    log_softmax_backward, logsumexp, mse, mse_backward, padding_mask, relu, relu_backward, sigmoid,
    sigmoid_backward, softmax, softmax_backward, tanh, tanh_backward, unbroadcast,
)
from attention_np.train import TOLERANCE, check_function, check_module


# ------------------------------------------------------------------ functional pairs
def _pair(fwd, bwd, uses_output):
    if uses_output:
        return fwd, lambda d, x: bwd(d, fwd(x))
    return fwd, lambda d, x: bwd(d, x)


@pytest.mark.parametrize("name, fwd, bwd, uses_output", [
    ("softmax", softmax, softmax_backward, True),
    ("log_softmax", log_softmax, log_softmax_backward, True),
    ("tanh", tanh, tanh_backward, True),
    ("sigmoid", sigmoid, sigmoid_backward, True),
    ("relu", relu, relu_backward, False),
    ("gelu", gelu, gelu_backward, False),
    ("elu", elu, elu_backward, False),
    ("elu_plus_one", elu_plus_one, elu_plus_one_backward, False),
])
def test_functional_gradients(name, fwd, bwd, uses_output):
    rng = np.random.default_rng(0)
    x = rng.standard_normal((3, 5)) * 2
    x[np.abs(x) < 1e-3] = 0.5                                 # keep away from relu/elu kinks
    f, b = _pair(fwd, bwd, uses_output)
    assert check_function(f, b, x) < TOLERANCE


def test_masked_softmax_gradient_and_zeros():
    rng = np.random.default_rng(1)
    x = rng.standard_normal((2, 3, 4))
    mask = padding_mask(np.array([4, 2]), 4)
    y = softmax(x, mask=mask)
    np.testing.assert_array_equal(y[1, :, 2:], 0.0)
    np.testing.assert_allclose(y.sum(-1), 1.0, rtol=1e-12)
    err = check_function(lambda x: softmax(x, mask=mask), lambda d, x: softmax_backward(d, softmax(x, mask=mask)), x)
    assert err < TOLERANCE


def test_softmax_matches_definition_and_is_shift_invariant():
    x = np.array([1.2, 0.5, 4.0])
    e = np.exp(x)
    np.testing.assert_allclose(softmax(x), e / e.sum(), rtol=1e-14)
    np.testing.assert_allclose(softmax(x).round(4), [0.0557, 0.0277, 0.9166])   # MECHANISMS.md M9 (g)
    np.testing.assert_allclose(softmax(x + 1000.0), softmax(x), rtol=1e-12)


def test_softmax_extremes():
    x = np.array([[1e4, -1e4, 0.0], [-1e4, -1e4, -1e4]])
    y = softmax(x)
    assert np.all(np.isfinite(y))
    np.testing.assert_allclose(y[0], [1, 0, 0], atol=1e-300)
    np.testing.assert_allclose(y[1], 1 / 3)
    z = softmax(np.zeros((2, 3)), mask=np.zeros((2, 3), dtype=bool))     # fully masked rows
    np.testing.assert_array_equal(z, 0.0)
    assert np.all(np.isfinite(log_softmax(x))) and np.isfinite(logsumexp(np.array([1e4, 1e4])))
    x32 = x.astype(np.float32)
    assert softmax(x32).dtype == np.float32 and np.all(np.isfinite(softmax(x32)))
    assert np.all(np.isfinite(sigmoid(np.array([-1e4, 1e4]))))
    assert np.all(np.isfinite(elu(np.array([-1e4, 1e4]))))


def test_gelu_matches_its_formula():
    x = np.linspace(-3, 3, 7)
    ref = 0.5 * x * (1 + np.tanh(np.sqrt(2 / np.pi) * (x + 0.044715 * x**3)))
    np.testing.assert_allclose(gelu(x), ref, rtol=1e-14)


# ------------------------------------------------------------------ masks
def test_causal_mask_square_and_cached_prefix():
    np.testing.assert_array_equal(causal_mask(3), np.tril(np.ones((3, 3), dtype=bool)))
    m = causal_mask(2, 5)                                       # two new queries after a 3-token prefix
    np.testing.assert_array_equal(m, [[1, 1, 1, 1, 0], [1, 1, 1, 1, 1]])
    assert causal_mask(4).sum() == 10
    with pytest.raises(ValueError, match="m must be an integer >= n=3"):
        causal_mask(3, 2)


def test_padding_mask():
    m = padding_mask(np.array([3, 1]), 4)
    assert m.shape == (2, 1, 4)
    np.testing.assert_array_equal(m[:, 0], [[1, 1, 1, 0], [1, 0, 0, 0]])
    with pytest.raises(ValueError, match=r"lengths must have shape \(B,\)"):
        padding_mask(np.array([[1, 2]]), 4)
    with pytest.raises(ValueError, match="lengths must lie in"):
        padding_mask(np.array([5]), 4)


def test_unbroadcast_sums_broadcast_axes():
    g = np.ones((2, 3, 4, 5))
    assert unbroadcast(g, (3, 1, 5)).shape == (3, 1, 5)
    np.testing.assert_array_equal(unbroadcast(g, (3, 1, 5)), 8.0)


# ------------------------------------------------------------------ layers
def test_linear_gradients_and_shape():
    rng = np.random.default_rng(2)
    layer = Linear(3, 4, rng=rng)
    assert layer(np.zeros((2, 5, 3))).shape == (2, 5, 4)
    assert check_module(layer, rng.standard_normal((2, 5, 3))) < TOLERANCE
    nobias = Linear(3, 2, bias=False, rng=rng)
    assert set(nobias.params) == {"W"}
    assert check_module(nobias, rng.standard_normal((4, 3))) < TOLERANCE
    with pytest.raises(ValueError, match=r"x must have shape \(\.\.\., d_in=3\), got \(2, 4\)"):
        layer(np.zeros((2, 4)))


def test_layernorm_gradients_and_normalisation():
    rng = np.random.default_rng(3)
    ln = LayerNorm(6)
    ln.params["gamma"][:] = rng.standard_normal(6)
    ln.params["beta"][:] = rng.standard_normal(6)
    assert check_module(ln, rng.standard_normal((2, 3, 6)) * 3 + 1) < TOLERANCE
    y = LayerNorm(6)(rng.standard_normal((4, 6)) * 5 + 2)
    np.testing.assert_allclose(y.mean(-1), 0, atol=1e-12)
    np.testing.assert_allclose(y.std(-1), 1, atol=1e-3)


def test_embedding_scatter_add_with_repeats():
    rng = np.random.default_rng(4)
    emb = Embedding(5, 3, rng=rng)
    ids = np.array([[1, 1, 4], [0, 1, 2]])
    assert check_module(emb, ids) < TOLERANCE
    emb.zero_grad()
    emb(ids)
    emb.backward(np.ones((2, 3, 3)))
    np.testing.assert_array_equal(emb.grads["W"][:, 0], [1, 3, 1, 0, 1])    # token 1 appears 3 times
    with pytest.raises(ValueError, match=r"ids must hold ids in \[0, 5\)"):
        emb(np.array([5]))


def test_dropout_train_eval_and_backward():
    rng = np.random.default_rng(5)
    drop = Dropout(0.5, rng=rng)
    x = np.ones((1000,))
    y = drop(x)
    assert set(np.unique(y)) <= {0.0, 2.0} and 0.4 < (y > 0).mean() < 0.6
    np.testing.assert_array_equal(drop.backward(np.ones_like(x)), y)      # same mask, same scale
    drop.eval()
    np.testing.assert_array_equal(drop(x), x)
    with pytest.raises(ValueError, match="p must lie in"):
        Dropout(1.0)


class _TwoLayer(Module):
    def __init__(self, rng):
        super().__init__()
        self.layers = [Linear(3, 4, rng=rng), Linear(4, 2, rng=rng)]
        self.norm = LayerNorm(2)

    def forward(self, x):
        return self.norm(self.layers[1](np.tanh(self.layers[0](x))))

    def backward(self, d):
        d = self.layers[1].backward(self.norm.backward(d))
        h = np.tanh(self.layers[0].cache @ self.layers[0].params["W"] + self.layers[0].params["b"])
        return self.layers[0].backward(d * (1 - h**2))


def test_module_parameters_names_zero_grad_and_accumulation():
    rng = np.random.default_rng(6)
    net = _TwoLayer(rng)
    names = [n for n, _, _ in net.parameters()]
    assert names == ["layers.0.W", "layers.0.b", "layers.1.W", "layers.1.b", "norm.gamma", "norm.beta"]
    assert net.num_parameters() == 3 * 4 + 4 + 4 * 2 + 2 + 2 + 2
    x = rng.standard_normal((5, 3))
    assert check_module(net, x) < TOLERANCE
    net.zero_grad()
    net(x); net.backward(np.ones((5, 2)))
    once = net.layers[0].grads["W"].copy()
    net(x); net.backward(np.ones((5, 2)))
    np.testing.assert_allclose(net.layers[0].grads["W"], 2 * once)        # backward adds
    net.zero_grad()
    assert all(np.all(g == 0) for _, _, g in net.parameters())
    net.astype(np.float32)
    assert all(p.dtype == np.float32 for _, p, _ in net.parameters())


# ------------------------------------------------------------------ losses
def test_cross_entropy_value_gradient_and_masking():
    rng = np.random.default_rng(7)
    logits = rng.standard_normal((2, 3, 5))
    targets = np.array([[1, 0, 4], [2, 2, 0]])
    mask = np.array([[True, True, False], [True, False, False]])
    p = np.exp(logits) / np.exp(logits).sum(-1, keepdims=True)
    ref = -(np.log(p[0, 0, 1]) + np.log(p[0, 1, 0]) + np.log(p[1, 0, 2])) / 3
    assert abs(cross_entropy(logits, targets, mask=mask) - ref) < 1e-12
    err = check_function(lambda z: np.array(cross_entropy(z, targets, mask=mask)),
                         lambda d, z: cross_entropy_backward(z, targets, mask=mask, dloss=float(d)), logits)
    assert err < TOLERANCE
    ign = np.where(mask, targets, -100)
    assert abs(cross_entropy(logits, ign, ignore_index=-100) - ref) < 1e-12
    np.testing.assert_allclose(cross_entropy_backward(logits, ign, ignore_index=-100),
                               cross_entropy_backward(logits, targets, mask=mask))
    with pytest.raises(ValueError, match="targets must have shape"):
        cross_entropy(logits, targets[:, :2])


def test_mse():
    rng = np.random.default_rng(8)
    a, b = rng.standard_normal((2, 3, 4))
    assert abs(mse(a, b) - np.mean((a - b) ** 2)) < 1e-15
    assert check_function(lambda a: np.array(mse(a, b)), lambda d, a: mse_backward(a, b, float(d)), a) < TOLERANCE


class _FrozenDropout(Dropout):
    """Dropout whose random mask is the same on every forward (re-seeded), so finite differences apply."""

    def forward(self, x):
        self.rng = np.random.default_rng(123)
        return super().forward(x)


def test_dropout_gradient_check_with_a_frozen_mask():
    x = np.random.default_rng(9).standard_normal((4, 6))
    drop = _FrozenDropout(0.3)
    assert check_module(drop, x) < TOLERANCE
    y = drop(x)
    assert np.any(y == 0) and np.any(y != 0)                              # the mask really drops entries
