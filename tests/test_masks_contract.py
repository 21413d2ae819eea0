"""Masks cannot be misapplied silently, and linear attention never returns NaN (issue 15, items 1-3).

Each test reproduces a silent wrong result that the library used to give:
an additive float mask inverted, a ``(B, 1, m)`` padding mask lined up with the
head axis, NaN from an underflowed linear-attention denominator.
"""
import numpy as np
import pytest

from attention_np import causal_mask, padding_mask, scaled_dot_product_attention
from attention_np.mechanisms import MultiHeadAttention, MultiHeadLatentAttention, SelfAttention
from attention_np.mechanisms.linear_attention import linear_attention, linear_attention_backward
from attention_np.mechanisms.sparse import sparsemax_attention
from attention_np.nn.functional import softmax
from attention_np.train import check_function


def _rng():
    return np.random.default_rng(7)


# ---------------------------------------------------------------- 1. one validation for every mask
@pytest.mark.parametrize("bad, what", [
    (np.where(np.tril(np.ones((4, 4))) > 0, 0.0, -np.inf), "float"),   # PyTorch-style additive mask
    (np.tril(np.ones((4, 4), dtype=int)), "int"),                      # 0/1 integers
])
def test_self_attention_refuses_non_boolean_masks(bad, what):
    layer = SelfAttention(6, 4, rng=_rng())
    x = _rng().standard_normal((2, 4, 6))
    for causal in (False, True):
        with pytest.raises(ValueError, match=r"mask must be a boolean array.*got dtype"):
            layer(x, mask=bad, causal=causal)


def test_additive_float_mask_error_says_how_to_convert():
    x = _rng().standard_normal((1, 3, 6))
    additive = np.where(np.tril(np.ones((3, 3))) > 0, 0.0, -np.inf)
    with pytest.raises(ValueError, match="mask == 0"):
        SelfAttention(6, 4, rng=_rng())(x, mask=additive, causal=True)


def test_self_attention_wrong_shape_mask_is_a_named_error():
    layer = SelfAttention(6, 4, rng=_rng())
    x = _rng().standard_normal((2, 4, 6))
    with pytest.raises(ValueError, match=r"mask must broadcast to shape \(2, 4, 4\), got \(3, 3\)"):
        layer(x, mask=np.ones((3, 3), bool), causal=True)


def test_self_attention_boolean_mask_and_causal_combine():
    layer = SelfAttention(6, 4, rng=_rng())
    x = _rng().standard_normal((2, 4, 6))
    keep = np.ones((2, 1, 4), bool)
    keep[1, 0, 3] = False
    layer(x, mask=keep, causal=True)
    w = layer.weights
    assert np.all(w[:, np.triu_indices(4, 1)[0], np.triu_indices(4, 1)[1]] == 0)   # causal
    assert np.all(w[1, :, 3] == 0) and np.all(w[0, 3, :] > 0)                        # padding of example 1 only
    np.testing.assert_allclose(w.sum(-1), 1.0)


# ---------------------------------------------------------------- 2. a padding mask cannot meet the head axis
def _padding_case(B=2, H=2, n=3, m=5):
    rng = _rng()
    q, k, v = rng.standard_normal((B, H, n, 4)), rng.standard_normal((B, H, m, 4)), rng.standard_normal((B, H, m, 4))
    return q, k, v, padding_mask(np.array([m, 2]), m)


@pytest.mark.parametrize("fn", [scaled_dot_product_attention, sparsemax_attention], ids=["sdpa", "sparsemax"])
def test_three_axis_mask_against_per_head_scores_is_refused(fn):
    q, k, v, mask = _padding_case()                     # B == H == 2: broadcasting would pair B with H
    assert mask.shape == (2, 1, 5)
    with pytest.raises(ValueError, match=r"mask\[:, None\]"):
        fn(q, k, v, mask=mask)
    out, w = fn(q, k, v, mask=mask[:, None])               # the explicit head axis: right
    assert np.all(w[1, :, :, 2:] == 0)                     # example 1 has 2 valid keys, in every head
    assert np.all(w[0].sum(-1) > 0.999)


def test_softmax_refuses_the_same_misaligned_mask():
    with pytest.raises(ValueError, match="wrong score axes"):
        softmax(np.zeros((2, 2, 3, 5)), mask=padding_mask(np.array([5, 2]), 5))


def test_two_axis_masks_still_broadcast_everywhere():
    q, k, v, _ = _padding_case(n=4, m=4)
    out, w = scaled_dot_product_attention(q, k, v, mask=causal_mask(4))
    assert np.all(np.triu(w[0, 0], 1) == 0)


@pytest.mark.parametrize("make", [
    lambda rng: MultiHeadAttention(8, 2, rng=rng),
    lambda rng: MultiHeadLatentAttention(d_model=8, n_heads=2, d_head=4, d_latent_kv=4, d_latent_q=4, d_rope=2,
                                         rng=rng),
], ids=["mha", "mla"])
def test_modules_read_a_padding_mask_as_batch_by_keys(make):
    """B == H == 2: MLA used to put weight on padded keys of example 0; now both modules agree."""
    rng = _rng()
    layer = make(rng)
    x = rng.standard_normal((2, 5, 8))
    mask = padding_mask(np.array([2, 5]), 5)               # example 0: keys 0, 1 only
    kwargs = {"causal": False}
    layer(x, mask=mask, **kwargs)
    w = layer.weights                                      # (B, H, n, m)
    assert float(w[0, :, :, 2:].sum()) == 0.0, "weight on the padded keys of example 0"
    assert float(w[1, :, :, 2:].sum()) > 0.5
    np.testing.assert_allclose(w.sum(-1), 1.0)


def test_modules_refuse_a_misaligned_four_axis_mask():
    layer = MultiHeadAttention(8, 2, rng=_rng())
    with pytest.raises(ValueError, match=r"mask must broadcast to shape \(2, 2, 5, 5\)"):
        layer(_rng().standard_normal((2, 5, 8)), mask=np.ones((2, 3, 5, 5), bool))


# ---------------------------------------------------------------- 3. linear attention never returns NaN
@pytest.mark.parametrize("dtype", [np.float32, np.float64])
@pytest.mark.parametrize("causal", [False, True])
def test_linear_attention_underflowed_features_give_zero_not_nan(dtype, causal):
    rng = _rng()
    q, k, v = (rng.standard_normal((2, 4, 3)).astype(dtype) for _ in range(3))
    q[0, 1] = -800.0                                       # phi(q) = exp(-800) = 0 in either precision
    k2 = k.copy()
    k2[1, :2] = -800.0                                     # phi(k) = 0 for the first two keys of example 1
    for kk in (k, k2):
        out = linear_attention(q, kk, v, causal=causal)
        assert out.dtype == dtype and np.all(np.isfinite(out))
        grads = linear_attention_backward(np.ones_like(out), q, kk, v, causal=causal)
        assert all(np.all(np.isfinite(g)) for g in grads)
    np.testing.assert_array_equal(linear_attention(q, k, v, causal=causal)[0, 1], 0.0)
    if causal:                                             # query 0 and 1 of example 1 see only dead keys
        np.testing.assert_array_equal(linear_attention(q, k2, v, causal=True)[1, :2], 0.0)


def test_linear_attention_float32_moderate_negatives_keep_their_weights():
    """elu(x) + 1 written as (exp(x) - 1) + 1 is exactly 0 at x = -18 in float32; exp(x) is not."""
    q = np.full((1, 1, 2), -20.0, np.float32)
    k = np.zeros((1, 2, 2), np.float32)
    v = np.array([[[1.0], [3.0]]], np.float32)
    out = linear_attention(q, k, v)
    np.testing.assert_allclose(out, [[[2.0]]], rtol=1e-6)  # equal features: the mean of the values


def test_linear_attention_gradient_still_exact_near_the_floor():
    rng = _rng()
    q, k, v = rng.standard_normal((3, 2, 3, 2))
    q -= 30.0                                              # tiny but non-zero features: the ratio is still exact
    fwd = lambda q, k, v: linear_attention(q, k, v, causal=True)
    bwd = lambda d, q, k, v: linear_attention_backward(d, q, k, v, causal=True)
    assert check_function(fwd, bwd, q, k, v) < 1e-7
