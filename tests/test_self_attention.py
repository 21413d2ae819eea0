"""Self-attention (MECHANISMS.md M3)."""
import numpy as np
import pytest

from attention_np.mechanisms.positional import sinusoidal_encoding
from attention_np.mechanisms.self_attention import SelfAttention, self_attention, self_attention_backward
from attention_np.nn.functional import causal_mask, padding_mask
from attention_np.train.gradcheck import TOLERANCE, check_function, check_module


def test_duplicate_tokens_exercise():
    # tokens [A, B, A, C] one-hot in R^3, W_Q = W_K = W_V = I, d_k = 3  ([v] numbers)
    x = np.eye(3)[[0, 1, 0, 2]][None]                        # (1, 4, 3)
    layer = SelfAttention(3, 3, rng=np.random.default_rng(0))
    for name in ("W_q", "W_k", "W_v"):
        layer.params[name][...] = np.eye(3)
    out = layer(x)
    np.testing.assert_allclose(layer.weights[0, 0], [0.3202, 0.1798, 0.3202, 0.1798], atol=5e-5)
    np.testing.assert_allclose(out[0, 0], [0.6405, 0.1798, 0.1798], atol=5e-5)
    np.testing.assert_allclose(layer.weights.sum(-1), 1.0, atol=1e-15)


@pytest.mark.parametrize("mask_kind", ["none", "padding", "causal", "padding+causal"])
def test_module_gradient(mask_kind):
    rng = np.random.default_rng(1)
    layer = SelfAttention(d_model=5, d_k=3, d_v=4, rng=rng)
    x = rng.standard_normal((2, 5, 5))
    pad = padding_mask(np.array([5, 3]), 5)                  # (2, 1, 5)
    mask = {"none": None, "padding": pad, "causal": causal_mask(5),
            "padding+causal": pad & causal_mask(5)}[mask_kind]
    errors = check_module(layer, x, mask=mask, details=True)
    assert set(errors) == {"input0", "W_q", "W_k", "W_v"}
    assert layer(x, mask=mask).shape == (2, 5, 4) and layer.weights.shape == (2, 5, 5)   # (B, n, d_v), (B, n, n)
    assert {k: v.shape for k, v in layer.params.items()} == {"W_q": (5, 3), "W_k": (5, 3), "W_v": (5, 4)}
    assert max(errors.values()) < TOLERANCE, errors


def test_causal_keyword_equals_causal_mask():
    rng = np.random.default_rng(2)
    layer = SelfAttention(4, 4, rng=rng)
    x = rng.standard_normal((2, 6, 4))
    np.testing.assert_array_equal(layer(x, causal=True), layer(x, mask=causal_mask(6)))
    assert np.all(np.triu(layer.weights[0], 1) == 0.0)
    assert check_module(layer, x, causal=True) < TOLERANCE


def test_functional_gradient_each_path():
    rng = np.random.default_rng(3)
    x = rng.standard_normal((2, 4, 3))
    W_q, W_k, W_v = rng.standard_normal((3, 3, 2))

    def fwd(x, W_q, W_k, W_v):
        return self_attention(x, W_q, W_k, W_v)[0]

    def bwd(g, x, W_q, W_k, W_v):
        return self_attention_backward(g, x, W_q, W_k, W_v, self_attention(x, W_q, W_k, W_v)[1])

    errors = check_function(fwd, bwd, x, W_q, W_k, W_v, details=True)
    assert max(errors.values()) < TOLERANCE, errors


def test_permutation_equivariance_and_positional_encoding_breaks_it():
    rng = np.random.default_rng(4)
    layer = SelfAttention(8, 8, rng=rng)
    x = rng.standard_normal((1, 6, 8))
    perm = np.array([3, 0, 5, 1, 4, 2])
    out = layer(x)
    np.testing.assert_allclose(layer(x[:, perm]), out[:, perm], atol=1e-13)
    pe = sinusoidal_encoding(6, 8)
    out_pe = layer(x + pe)
    assert np.max(np.abs(layer(x[:, perm] + pe) - out_pe[:, perm])) > 1e-3


def test_fully_masked_row_is_zero_and_float32_stays_float32():
    rng = np.random.default_rng(5)
    layer = SelfAttention(4, 4, rng=rng)
    x = rng.standard_normal((1, 3, 4))
    mask = np.array([[False, False, False], [True, True, False], [True, True, True]])
    out = layer(x, mask=mask)
    assert np.all(np.isfinite(out)) and np.all(out[0, 0] == 0.0)
    big = layer(1e6 * x)
    assert np.all(np.isfinite(big))
    layer32 = SelfAttention(4, 4, rng=np.random.default_rng(5)).astype(np.float32)
    assert layer32(x.astype(np.float32)).dtype == np.float32


def test_bad_input_names_argument():
    layer = SelfAttention(4, 2, rng=np.random.default_rng(0))
    with pytest.raises(ValueError, match=r"x must have shape \(B, n, d_model=4\), got \(2, 3, 5\)"):
        layer(np.zeros((2, 3, 5)))
    with pytest.raises(ValueError, match="mask must"):
        layer(np.zeros((2, 3, 4)), mask=np.ones((2, 3, 4), dtype=bool))
