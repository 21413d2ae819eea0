"""Cross (encoder-decoder) attention (MECHANISMS.md M4)."""
import numpy as np
import pytest

from attention_np.mechanisms.cross import CrossAttention, cross_attention, cross_attention_backward
from attention_np.mechanisms.scaled_dot_product import scaled_dot_product_attention
from attention_np.nn.functional import padding_mask
from attention_np.train.gradcheck import TOLERANCE, check_function, check_module


@pytest.mark.parametrize("padded", [False, True])
def test_module_gradient(padded):
    rng = np.random.default_rng(0)
    layer = CrossAttention(d_model=4, d_context=6, d_k=3, d_v=5, rng=rng)
    x = rng.standard_normal((2, 3, 4))                        # n = 3 decoder positions
    context = rng.standard_normal((2, 5, 6))                  # m = 5 source positions
    mask = padding_mask(np.array([3, 5]), 5) if padded else None
    errors = check_module(layer, x, context, mask=mask, details=True)
    assert set(errors) == {"input0", "input1", "W_q", "W_k", "W_v"}
    assert max(errors.values()) < TOLERANCE, errors
    assert layer.weights.shape == (2, 3, 5)


def test_functional_gradient():
    rng = np.random.default_rng(1)
    x, context = rng.standard_normal((2, 4, 3)), rng.standard_normal((2, 2, 3))
    W_q, W_k, W_v = rng.standard_normal((3, 3, 3))
    mask = padding_mask(np.array([2, 1]), 2)

    def fwd(x, c, W_q, W_k, W_v):
        return cross_attention(x, c, W_q, W_k, W_v, mask=mask)[0]

    def bwd(g, x, c, W_q, W_k, W_v):
        w = cross_attention(x, c, W_q, W_k, W_v, mask=mask)[1]
        return cross_attention_backward(g, x, c, W_q, W_k, W_v, w)

    errors = check_function(fwd, bwd, x, context, W_q, W_k, W_v, details=True)
    assert max(errors.values()) < TOLERANCE, errors


def test_padded_source_keys_get_exactly_zero_weight():
    rng = np.random.default_rng(2)
    layer = CrossAttention(4, 4, 4, rng=rng)
    x = rng.standard_normal((2, 3, 4))
    context = rng.standard_normal((2, 5, 4))
    mask = padding_mask(np.array([3, 5]), 5)
    out = layer(x, context, mask=mask)
    assert np.all(layer.weights[0, :, 3:] == 0.0)
    np.testing.assert_allclose(layer.weights.sum(-1), 1.0, atol=1e-15)
    noisy = context.copy()
    noisy[0, 3:] = 1e3 * rng.standard_normal((2, 4))           # garbage in the padding
    out_noisy = layer(x, noisy, mask=mask)
    np.testing.assert_allclose(out_noisy[0], out[0], rtol=0, atol=1e-15)
    assert np.max(np.abs(out_noisy[1] - out[1])) == 0.0        # example 1 untouched
    # and the gradient reaching the padded source rows is exactly zero
    layer.zero_grad()
    _, dcontext = layer.backward(np.ones_like(out))
    assert np.all(dcontext[0, 3:] == 0.0)


def test_matches_sdpa_on_projections():
    rng = np.random.default_rng(3)
    layer = CrossAttention(3, 2, 4, rng=rng)
    x, c = rng.standard_normal((1, 2, 3)), rng.standard_normal((1, 6, 2))
    p = layer.params
    ref, _ = scaled_dot_product_attention(x @ p["W_q"], c @ p["W_k"], c @ p["W_v"])
    np.testing.assert_allclose(layer(x, c), ref, atol=1e-15)


def test_bad_context_shape():
    layer = CrossAttention(4, 6, 3, rng=np.random.default_rng(0))
    with pytest.raises(ValueError, match=r"context must have shape \(2 or 1, m, d_context=6\), got \(2, 5, 4\)"):
        layer(np.zeros((2, 3, 4)), np.zeros((2, 5, 4)))
    with pytest.raises(ValueError, match=r"context must have shape \(2 or 1, m, d_context=6\), got \(3, 5, 6\)"):
        layer(np.zeros((2, 3, 4)), np.zeros((3, 5, 6)))   # a batch of 3 contexts for 2 examples
    with pytest.raises(ValueError, match=r"x must have shape"):
        layer(np.zeros((2, 3, 5)), np.zeros((2, 5, 6)))
