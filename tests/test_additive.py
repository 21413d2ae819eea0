"""Additive (Bahdanau) attention: gradient checks, masks, dtypes, errors, M10 facts."""
import numpy as np
import pytest

from attention_np import padding_mask
from attention_np.mechanisms import additive as mod
from attention_np.mechanisms.additive import (
    AdditiveAttention,
    additive_attention,
    additive_attention_backward,
    additive_scores,
)
from attention_np.train import TOLERANCE, check_function, check_module


def _inputs(rng, B=2, n=3, m=4, d_q=3, d_k=5, d_v=2):
    return (rng.standard_normal((B, n, d_q)), rng.standard_normal((B, m, d_k)),
            rng.standard_normal((B, m, d_v)))


def _reference_scores(query, keys, W_q, W_k, v):
    """Independent, loop-based score e_ij = v . tanh(W_a s_i + U_a h_j) in the paper's column form."""
    B, n, m = query.shape[0], query.shape[1], keys.shape[1]
    W_a, U_a = W_q.T, W_k.T                                  # paper stores (d_a, d_q), (d_a, d_k)
    e = np.zeros((B, n, m))
    for b in range(B):                                       # reference implementation: loops are the point
        for i in range(n):
            for j in range(m):
                e[b, i, j] = v @ np.tanh(W_a @ query[b, i] + U_a @ keys[b, j])
    return e


# ---------------------------------------------------------------- gradient checks
@pytest.mark.parametrize("masked", [False, True])
def test_check_module_every_input_and_parameter(masked):
    rng = np.random.default_rng(0)
    layer = AdditiveAttention(3, 5, 4, rng=rng)
    q, k, v = _inputs(rng, B=3, n=3, m=5)
    mask = padding_mask(np.array([5, 2, 3]), 5) if masked else None
    errors = check_module(layer, q, k, v, details=True, mask=mask)
    assert set(errors) == {"input0", "input1", "input2", "W_q", "W_k", "w"}
    assert max(errors.values()) < TOLERANCE, errors


@pytest.mark.parametrize("masked", [False, True])
def test_functional_pair_gradients_including_parameters(masked):
    rng = np.random.default_rng(1)
    q, k, vals = _inputs(rng)
    W_q, W_k, v = rng.standard_normal((3, 4)), rng.standard_normal((5, 4)), rng.standard_normal(4)
    mask = padding_mask(np.array([4, 1]), 4) if masked else None

    def forward(q, k, vals, W_q, W_k, v):
        return additive_attention(q, k, vals, W_q, W_k, v, mask=mask)[0]

    def backward(dout, q, k, vals, W_q, W_k, v):
        weights = additive_attention(q, k, vals, W_q, W_k, v, mask=mask)[1]
        return additive_attention_backward(dout, q, k, vals, W_q, W_k, v, weights)

    errors = check_function(forward, backward, q, k, vals, W_q, W_k, v, details=True)
    assert len(errors) == 6
    assert max(errors.values()) < TOLERANCE, errors


def test_keys_equal_values_gradients_add():
    """Bahdanau's annotations are keys AND values: d(annotation) = dkeys + dvalues."""
    rng = np.random.default_rng(2)
    layer = AdditiveAttention(3, 4, 5, rng=rng)
    q, h = rng.standard_normal((2, 3, 3)), rng.standard_normal((2, 6, 4))
    mask = padding_mask(np.array([6, 4]), 6)

    def forward(q, h):
        return layer.forward(q, h, h, mask=mask)

    def backward(dout, q, h):
        layer.forward(q, h, h, mask=mask)
        dq, dk, dv = layer.backward(dout)
        assert np.abs(dk).max() > 1e-3 and np.abs(dv).max() > 1e-3   # both paths really contribute
        return dq, dk + dv

    assert check_function(forward, backward, q, h) < TOLERANCE
    # and either path alone is NOT the gradient of the annotation
    layer.forward(q, h, h, mask=mask)
    G = np.random.default_rng(0).standard_normal((2, 3, 4))
    layer.zero_grad()
    dq, dk, dv = layer.backward(G)
    assert check_function(forward, lambda d, q, h: (dq, dk), q, h) > 1e-3


def test_gradient_check_detects_a_wrong_backward(monkeypatch):
    """Dropping the tanh derivative (1 - T^2) must be caught by check_module."""
    rng = np.random.default_rng(3)
    layer = AdditiveAttention(3, 5, 4, rng=rng)
    q, k, v = _inputs(rng)
    real = mod.additive_attention_backward

    def broken(dout, query, keys, values, W_q, W_k, v, weights, hidden=None):
        return real(dout, query, keys, values, W_q, W_k, v, weights, np.zeros_like(hidden))

    monkeypatch.setattr(mod, "additive_attention_backward", broken)
    assert check_module(layer, q, k, v) > 1e-3


def test_leading_axes_broadcast():
    """A (B, H) leading shape with keys shared across H: broadcast gradients are summed back."""
    rng = np.random.default_rng(4)
    q = rng.standard_normal((2, 3, 2, 3))
    k = rng.standard_normal((2, 1, 4, 5))
    vals = rng.standard_normal((2, 1, 4, 2))
    W_q, W_k, v = rng.standard_normal((3, 4)), rng.standard_normal((5, 4)), rng.standard_normal(4)

    def forward(q, k, vals, W_q, W_k, v):
        return additive_attention(q, k, vals, W_q, W_k, v)[0]

    def backward(dout, q, k, vals, W_q, W_k, v):
        weights = additive_attention(q, k, vals, W_q, W_k, v)[1]
        return additive_attention_backward(dout, q, k, vals, W_q, W_k, v, weights)

    assert check_function(forward, backward, q, k, vals, W_q, W_k, v) < TOLERANCE


# ---------------------------------------------------------------- forward values
def test_scores_match_the_papers_column_form():
    rng = np.random.default_rng(5)
    q, k, _ = _inputs(rng)
    W_q, W_k, v = rng.standard_normal((3, 4)), rng.standard_normal((5, 4)), rng.standard_normal(4)
    np.testing.assert_allclose(additive_scores(q, k, W_q, W_k, v),
                               _reference_scores(q, k, W_q, W_k, v), rtol=1e-12, atol=1e-12)


def test_forward_is_softmax_weighted_sum():
    rng = np.random.default_rng(6)
    q, k, vals = _inputs(rng)
    W_q, W_k, v = rng.standard_normal((3, 4)), rng.standard_normal((5, 4)), rng.standard_normal(4)
    e = _reference_scores(q, k, W_q, W_k, v)
    p = np.exp(e) / np.exp(e).sum(-1, keepdims=True)
    out, weights = additive_attention(q, k, vals, W_q, W_k, v)
    np.testing.assert_allclose(weights, p, rtol=1e-12)
    np.testing.assert_allclose(out, np.einsum("bij,bjd->bid", p, vals), rtol=1e-12)


def test_hand_checkable_example():
    """d_a = 1, W_q = W_k = v = 1: e_ij = tanh(q_i + k_j)."""
    q = np.array([[[0.0]]])
    k = np.array([[[0.0], [np.log(3.0) / 2.0]]])             # tanh(log(3)/2) = 0.5
    vals = np.array([[[1.0], [3.0]]])
    out, weights = additive_attention(q, k, vals, np.ones((1, 1)), np.ones((1, 1)), np.ones(1))
    e = np.array([0.0, 0.5])
    expected = np.exp(e) / np.exp(e).sum()
    np.testing.assert_allclose(weights[0, 0], expected, rtol=1e-12)
    np.testing.assert_allclose(out[0, 0, 0], expected @ [1.0, 3.0], rtol=1e-12)


def test_concatenation_equivalence_and_parameter_count():
    """W_a s + U_a h = W [s; h] with W = [W_a U_a]; parameter count d_a (d_q + d_k + 1)."""
    rng = np.random.default_rng(7)
    d_q, d_k, d_a = 3, 5, 4
    layer = AdditiveAttention(d_q, d_k, d_a, rng=rng)
    s, h = rng.standard_normal(d_q), rng.standard_normal(d_k)
    W_a, U_a = layer.params["W_q"].T, layer.params["W_k"].T   # (d_a, d_q), (d_a, d_k)
    W = np.concatenate([W_a, U_a], axis=1)                   # (d_a, d_q + d_k)
    np.testing.assert_allclose(W_a @ s + U_a @ h, W @ np.concatenate([s, h]), rtol=1e-12)
    mlp_score = layer.params["w"] @ np.tanh(W @ np.concatenate([s, h]))
    np.testing.assert_allclose(additive_scores(s[None, None], h[None, None], layer.params["W_q"],
                                               layer.params["W_k"], layer.params["w"])[0, 0, 0],
                               mlp_score, rtol=1e-12)
    assert layer.num_parameters() == d_a * (d_q + d_k + 1) == 36
    assert layer.params["W_q"].shape == (d_q, d_a)
    assert layer.params["W_k"].shape == (d_k, d_a)
    assert layer.params["w"].shape == (d_a,)


def test_scores_are_bounded_without_scaling():
    """|e_ij| <= ||v||_1 whatever the size of the inputs: no 1/sqrt(d) needed."""
    rng = np.random.default_rng(8)
    W_q, W_k, v = rng.standard_normal((64, 8)), rng.standard_normal((64, 8)), rng.standard_normal(8)
    e = additive_scores(1e3 * rng.standard_normal((2, 5, 64)), 1e3 * rng.standard_normal((2, 6, 64)), W_q, W_k, v)
    assert np.all(np.abs(e) <= np.abs(v).sum() + 1e-12)


# ---------------------------------------------------------------- masks
def test_masked_keys_get_exactly_zero_weight_and_gradient():
    rng = np.random.default_rng(9)
    layer = AdditiveAttention(3, 5, 4, rng=rng)
    q, k, vals = _inputs(rng, B=2, n=3, m=5)
    lengths = np.array([5, 2])
    mask = padding_mask(lengths, 5)
    out = layer.forward(q, k, vals, mask=mask)
    assert np.all(layer.weights[1, :, 2:] == 0.0)
    np.testing.assert_allclose(layer.weights.sum(-1), 1.0)
    dq, dk, dv = layer.backward(rng.standard_normal(out.shape))
    assert np.all(dk[1, 2:] == 0.0) and np.all(dv[1, 2:] == 0.0)
    assert np.abs(dk[1, :2]).min() > 0.0 and np.abs(dk[0]).min() > 0.0
    # changing the masked keys/values does not change the output
    k2, v2 = k.copy(), vals.copy()
    k2[1, 2:] += 100.0
    v2[1, 2:] -= 7.0
    np.testing.assert_array_equal(layer.forward(q, k2, v2, mask=mask), out)


def test_fully_masked_row_gives_zeros_not_nan():
    rng = np.random.default_rng(10)
    layer = AdditiveAttention(3, 5, 4, rng=rng)
    q, k, vals = _inputs(rng, B=2, n=3, m=4)
    mask = np.ones((2, 3, 4), dtype=bool)
    mask[0, 1] = False                                       # query 1 of example 0 may attend nothing
    out = layer.forward(q, k, vals, mask=mask)
    assert np.all(np.isfinite(out)) and np.all(out[0, 1] == 0.0)
    assert np.all(layer.weights[0, 1] == 0.0)
    grads = layer.backward(np.ones_like(out))
    assert all(np.all(np.isfinite(g)) for g in grads)
    assert np.all(grads[0][0, 1] == 0.0)
    assert all(np.all(np.isfinite(g)) for g in layer.grads.values())
    errors = check_module(AdditiveAttention(3, 5, 4, rng=np.random.default_rng(0)), q, k, vals, mask=mask)
    assert errors < TOLERANCE


# ---------------------------------------------------------------- dtypes
def test_float32_stays_float32():
    rng = np.random.default_rng(11)
    layer = AdditiveAttention(3, 5, 4, rng=rng).astype(np.float32)
    q, k, vals = (x.astype(np.float32) for x in _inputs(rng))
    mask = padding_mask(np.array([4, 2]), 4)
    out = layer.forward(q, k, vals, mask=mask)
    assert out.dtype == np.float32 and layer.weights.dtype == np.float32
    grads = layer.backward(np.ones_like(out))
    assert all(g.dtype == np.float32 for g in grads)
    assert all(g.dtype == np.float32 for g in layer.grads.values())
    out64 = AdditiveAttention(3, 5, 4, rng=np.random.default_rng(11)).forward(
        *(x.astype(np.float64) for x in (q, k, vals)), mask=mask)
    np.testing.assert_allclose(out, out64, rtol=1e-5, atol=1e-6)


def test_huge_inputs_stay_finite():
    rng = np.random.default_rng(12)
    layer = AdditiveAttention(3, 5, 4, rng=rng)
    q, k, vals = (1e8 * x for x in _inputs(rng))
    out = layer.forward(q, k, vals)
    assert np.all(np.isfinite(out))
    assert all(np.all(np.isfinite(g)) for g in layer.backward(np.ones_like(out)))


# ---------------------------------------------------------------- errors
@pytest.mark.parametrize("arg, shape", [
    ("query", (2, 3, 4)),      # d_q should be 3
    ("query", (3,)),           # missing query axis
    ("keys", (2, 4, 3)),       # d_k should be 5
    ("values", (2, 5, 2)),     # m should be 4
])
def test_bad_input_shapes_name_the_argument(arg, shape):
    rng = np.random.default_rng(13)
    layer = AdditiveAttention(3, 5, 4, rng=rng)
    args = dict(zip(["query", "keys", "values"], _inputs(rng)))
    args[arg] = np.zeros(shape)
    with pytest.raises(ValueError, match=rf"^{arg} must have shape"):
        layer.forward(args["query"], args["keys"], args["values"])


@pytest.mark.parametrize("arg, shape, pattern", [
    ("W_q", (3,), r"^W_q must have shape \(d_q, d_a\)"),
    ("W_k", (5, 3), r"^W_k must have shape \(d_k, d_a=4\)"),
    ("w", (4, 1), r"^w must have shape \(d_a=4,\)"),
])
def test_bad_parameter_shapes_name_the_argument(arg, shape, pattern):
    rng = np.random.default_rng(14)
    q, k, vals = _inputs(rng)
    params = dict(W_q=np.zeros((3, 4)), W_k=np.zeros((5, 4)), w=np.zeros(4))
    params[arg] = np.zeros(shape)
    with pytest.raises(ValueError, match=pattern):
        additive_attention(q, k, vals, **params)


def test_bad_mask_and_batch_raise():
    rng = np.random.default_rng(15)
    layer = AdditiveAttention(3, 5, 4, rng=rng)
    q, k, vals = _inputs(rng)
    with pytest.raises(ValueError, match="^mask must broadcast"):
        layer.forward(q, k, vals, mask=np.ones((2, 3, 5), dtype=bool))
    with pytest.raises(ValueError, match="^mask must be a boolean"):
        layer.forward(q, k, vals, mask=np.ones((2, 3, 4)))
    with pytest.raises(ValueError, match="leading"):
        layer.forward(q, k[:1].repeat(3, axis=0), vals[:1].repeat(3, axis=0))
    layer.forward(q, k, vals)
    with pytest.raises(ValueError, match=r"^dout must have shape"):
        layer.backward(np.zeros((2, 3, 3)))
