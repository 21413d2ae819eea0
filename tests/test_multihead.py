"""Multi-head attention with MHA / GQA / MQA (MECHANISMS.md M5)."""
import math

import numpy as np
import pytest

from attention_np.mechanisms.multihead import (
    MultiHeadAttention, merge_heads, merge_heads_backward, repeat_kv, repeat_kv_backward, split_heads,
    split_heads_backward,
)
from attention_np.mechanisms.self_attention import SelfAttention
from attention_np.nn.functional import causal_mask, padding_mask
from attention_np.train.gradcheck import TOLERANCE, check_function, check_module


def _rotate_complex(x, positions, base=10000.0):
    """Interleaved RoPE of ``x (..., n, d)`` as (x_2i + i x_2i+1) * exp(i p theta_i), theta_i = base^(-2i/d)."""
    d = x.shape[-1]
    z = (x[..., 0::2] + 1j * x[..., 1::2]) * np.exp(1j * np.outer(positions, base ** (-np.arange(0, d, 2) / d)))
    out = np.empty_like(x)
    out[..., 0::2], out[..., 1::2] = z.real, z.imag
    return out


def _reference(mha, x, context=None, mask=None, positions=None, kv_positions=None):
    """Head-by-head loop straight from the equations, g(h) = h // (H / H_kv); RoPE on q and k only."""
    p = mha.params
    src = x if context is None else context
    H, Hkv, d = mha.n_heads, mha.n_kv_heads, mha.d_head
    Q = x @ p["W_q"] + (p["b_q"] if mha.bias else 0)
    K = src @ p["W_k"] + (p["b_k"] if mha.bias else 0)
    V = src @ p["W_v"] + (p["b_v"] if mha.bias else 0)
    outs = []
    for h in range(H):
        g = h // (H // Hkv)
        q, k, v = Q[..., h * d:(h + 1) * d], K[..., g * d:(g + 1) * d], V[..., g * d:(g + 1) * d]
        if positions is not None:                            # rotate this head's query and key, never v
            q, k = _rotate_complex(q, positions), _rotate_complex(k, kv_positions)
        s = q @ np.swapaxes(k, -1, -2) / math.sqrt(d)
        if mask is not None:
            s = np.where(mask, s, -np.inf)
        e = np.exp(s - s.max(-1, keepdims=True))
        outs.append((e / e.sum(-1, keepdims=True)) @ v)
    return np.concatenate(outs, axis=-1) @ p["W_o"] + (p["b_o"] if mha.bias else 0)


# ---------------------------------------------------------------- helpers
def test_split_and_merge_heads():
    rng = np.random.default_rng(0)
    x = rng.standard_normal((2, 5, 12))
    h = split_heads(x, 3)
    assert h.shape == (2, 3, 5, 4)
    # head 1 of position 2 is columns 4..7 of row 2 (reshape THEN transpose)
    np.testing.assert_array_equal(h[1, 1, 2], x[1, 2, 4:8])
    np.testing.assert_array_equal(merge_heads(h), x)
    np.testing.assert_array_equal(split_heads_backward(h), x)
    np.testing.assert_array_equal(merge_heads_backward(x, 3), h)
    with pytest.raises(ValueError, match="x must have shape"):
        split_heads(np.zeros((2, 5, 10)), 3)


def test_split_and_merge_heads_gradients():
    rng = np.random.default_rng(10)
    x = rng.standard_normal((2, 3, 12))
    assert check_function(lambda a: split_heads(a, 4), lambda g, a: split_heads_backward(g), x) < TOLERANCE
    h = rng.standard_normal((2, 4, 3, 3))
    assert check_function(merge_heads, lambda g, a: merge_heads_backward(g, 4), h) < TOLERANCE


def test_repeat_kv_and_group_sum_backward():
    rng = np.random.default_rng(1)
    k = rng.standard_normal((2, 2, 3, 4))                    # H_kv = 2
    r = repeat_kv(k, 3)                                      # H = 6
    assert r.shape == (2, 6, 3, 4)
    for h in range(6):
        np.testing.assert_array_equal(r[:, h], k[:, h // 3])
    dy = rng.standard_normal(r.shape)
    np.testing.assert_allclose(repeat_kv_backward(dy, 3)[:, 1], dy[:, 3] + dy[:, 4] + dy[:, 5], atol=1e-15)
    err = check_function(lambda a: repeat_kv(a, 3), lambda g, a: repeat_kv_backward(g, 3), k)
    assert err < TOLERANCE


# ---------------------------------------------------------------- forward
@pytest.mark.parametrize("n_kv_heads", [4, 2, 1])
def test_forward_matches_head_loop(n_kv_heads):
    rng = np.random.default_rng(2)
    mha = MultiHeadAttention(8, 4, n_kv_heads, rng=rng)
    for name in ("b_q", "b_k", "b_v", "b_o"):
        mha.params[name][...] = rng.standard_normal(mha.params[name].shape)
    x = rng.standard_normal((2, 5, 8))
    mask = padding_mask(np.array([5, 3]), 5) & causal_mask(5)
    np.testing.assert_allclose(mha(x, mask=mask), _reference(mha, x, mask=mask), atol=1e-13)
    assert mha.weights.shape == (2, 4, 5, 5)
    assert mha.params["W_k"].shape == (8, 2 * n_kv_heads)


def test_gqa_equals_mha_with_duplicated_kv_heads():
    rng = np.random.default_rng(3)
    gqa = MultiHeadAttention(8, 4, 2, rng=rng)
    mha = MultiHeadAttention(8, 4, 4, rng=rng)
    mha.params["W_q"][...] = gqa.params["W_q"]
    mha.params["W_o"][...] = gqa.params["W_o"]
    for name in ("W_k", "W_v"):                              # kv head g copied to query heads 2g, 2g+1
        blocks = np.split(gqa.params[name], 2, axis=1)
        mha.params[name][...] = np.concatenate([blocks[0], blocks[0], blocks[1], blocks[1]], axis=1)
    x = rng.standard_normal((2, 4, 8))
    np.testing.assert_allclose(gqa(x), mha(x), atol=1e-14)


def test_single_head_equals_self_attention_plus_output_projection():
    rng = np.random.default_rng(4)
    mha = MultiHeadAttention(6, 1, bias=False, rng=rng)
    sa = SelfAttention(6, 6, rng=rng)
    for name in ("W_q", "W_k", "W_v"):
        sa.params[name][...] = mha.params[name]
    x = rng.standard_normal((3, 4, 6))
    np.testing.assert_allclose(mha(x), sa(x) @ mha.params["W_o"], atol=1e-14)


@pytest.mark.parametrize("n_kv_heads", [6, 3, 1])
def test_parameter_shapes_follow_the_contract(n_kv_heads):
    # DESIGN.md: W_q (d_model, H d_head), W_k, W_v (d_model, H_kv d_head), W_o (H d_head, d_model), biases
    mha = MultiHeadAttention(12, 6, n_kv_heads, rng=np.random.default_rng(0))
    d_head = 2
    expected = {"W_q": (12, 6 * d_head), "W_k": (12, n_kv_heads * d_head), "W_v": (12, n_kv_heads * d_head),
                "W_o": (6 * d_head, 12), "b_q": (6 * d_head,), "b_k": (n_kv_heads * d_head,),
                "b_v": (n_kv_heads * d_head,), "b_o": (12,)}
    assert {name: p.shape for name, p in mha.params.items()} == expected
    assert {name: g.shape for name, g in mha.grads.items()} == expected
    assert set(MultiHeadAttention(12, 6, n_kv_heads, bias=False, rng=np.random.default_rng(0)).params) == {
        "W_q", "W_k", "W_v", "W_o"}


def test_projection_parameter_counts():
    counts = {h_kv: MultiHeadAttention(512, 8, h_kv, bias=False, rng=np.random.default_rng(0)).num_parameters()
              for h_kv in (8, 2, 1)}
    assert counts == {8: 1_048_576, 2: 655_360, 1: 589_824}
    assert MultiHeadAttention(16, 4, rng=np.random.default_rng(0)).num_parameters() == 4 * 16 * 16 + 4 * 16


# ---------------------------------------------------------------- gradients
@pytest.mark.parametrize("n_kv_heads", [4, 2, 1])
@pytest.mark.parametrize("mask_kind", ["padding", "causal"])
def test_self_attention_gradient(n_kv_heads, mask_kind):
    rng = np.random.default_rng(5)
    mha = MultiHeadAttention(8, 4, n_kv_heads, rng=rng)
    for name in ("b_q", "b_k", "b_v", "b_o"):
        mha.params[name][...] = rng.standard_normal(mha.params[name].shape)
    x = rng.standard_normal((2, 4, 8))
    mask = padding_mask(np.array([4, 2]), 4) if mask_kind == "padding" else causal_mask(4)
    errors = check_module(mha, x, mask=mask, details=True)
    assert set(errors) == {"input0", "W_q", "W_k", "W_v", "W_o", "b_q", "b_k", "b_v", "b_o"}
    assert max(errors.values()) < TOLERANCE, errors


@pytest.mark.parametrize("n_kv_heads", [4, 2, 1])
def test_cross_attention_gradient(n_kv_heads):
    rng = np.random.default_rng(6)
    mha = MultiHeadAttention(8, 4, n_kv_heads, bias=False, rng=rng)
    x = rng.standard_normal((2, 3, 8))                       # n = 3
    context = rng.standard_normal((2, 5, 8))                 # m = 5
    mask = padding_mask(np.array([5, 2]), 5)
    errors = check_module(mha, x, context, mask=mask, details=True)    # input1 = context
    assert set(errors) == {"input0", "input1", "W_q", "W_k", "W_v", "W_o"}
    assert max(errors.values()) < TOLERANCE, errors
    assert mha.weights.shape == (2, 4, 3, 5)
    assert np.all(mha.weights[1, :, :, 2:] == 0.0)


@pytest.mark.parametrize("n_kv_heads", [2, 1])
def test_rope_gradient_at_absolute_positions(n_kv_heads):
    rng = np.random.default_rng(7)
    mha = MultiHeadAttention(8, 2, n_kv_heads, rng=rng, rope=True)
    x = rng.standard_normal((2, 3, 8))
    errors = check_module(mha, x, causal=True, positions=np.array([4, 5, 6]),
                          kv_positions=np.array([4, 5, 6]), details=True)
    assert max(errors.values()) < TOLERANCE, errors


@pytest.mark.parametrize("n_kv_heads", [2, 1])
def test_rope_gradient_with_distinct_query_and_key_positions(n_kv_heads):
    # keys and queries at different absolute positions: each must be un-rotated at its own positions
    rng = np.random.default_rng(11)
    mha = MultiHeadAttention(8, 2, n_kv_heads, rng=rng, rope=True)
    x = rng.standard_normal((2, 3, 8))
    errors = check_module(mha, x, positions=np.array([6, 7, 8]), kv_positions=np.array([0, 2, 5]), details=True)
    assert max(errors.values()) < TOLERANCE, errors
    context = rng.standard_normal((2, 5, 8))                 # cross-attention with RoPE, n = 3 != m = 5
    errors = check_module(mha, x, context, positions=np.array([4, 5, 6]), kv_positions=np.arange(5),
                          mask=padding_mask(np.array([5, 3]), 5), details=True)
    assert set(errors) >= {"input0", "input1", "W_k", "b_k"}
    assert max(errors.values()) < TOLERANCE, errors


@pytest.mark.parametrize("n_kv_heads", [4, 2, 1])
def test_rope_forward_matches_head_loop(n_kv_heads):
    rng = np.random.default_rng(12)
    mha = MultiHeadAttention(16, 4, n_kv_heads, rng=rng, rope=True)
    for name in ("b_q", "b_k", "b_v", "b_o"):
        mha.params[name][...] = rng.standard_normal(mha.params[name].shape)
    x = rng.standard_normal((2, 5, 16))
    pos, kv_pos = np.array([3, 4, 5, 6, 7]), np.array([0, 1, 2, 9, 4])
    mask = causal_mask(5)
    np.testing.assert_allclose(mha(x, mask=mask, positions=pos, kv_positions=kv_pos),
                               _reference(mha, x, mask=mask, positions=pos, kv_positions=kv_pos), atol=1e-13)
    # only relative positions matter and v is never rotated, so a common shift leaves the OUTPUT unchanged
    out0 = mha(x, mask=mask)
    np.testing.assert_allclose(mha(x, mask=mask, positions=np.arange(5) + 40, kv_positions=np.arange(5) + 40),
                               out0, atol=1e-12)


def test_four_dimensional_mask_per_head():
    rng = np.random.default_rng(8)
    mha = MultiHeadAttention(8, 2, rng=rng)
    x = rng.standard_normal((1, 4, 8))
    mask = np.ones((1, 2, 4, 4), dtype=bool)
    mask[0, 0] = causal_mask(4)                              # head 0 causal, head 1 free
    mha(x, mask=mask)
    assert np.all(np.triu(mha.weights[0, 0], 1) == 0.0)
    assert np.all(mha.weights[0, 1] > 0.0)
    assert check_module(mha, x, mask=mask) < TOLERANCE


def test_rope_makes_scores_relative():
    rng = np.random.default_rng(9)
    mha = MultiHeadAttention(8, 2, rng=rng, rope=True)
    x = rng.standard_normal((1, 5, 8))
    mha(x)
    w0 = mha.weights.copy()
    mha(x, positions=np.arange(5) + 17, kv_positions=np.arange(5) + 17)
    np.testing.assert_allclose(mha.weights, w0, atol=1e-12)   # a common shift changes nothing
    mha(x, positions=np.arange(5) + 3)                          # queries moved, keys not: it does
    assert np.max(np.abs(mha.weights - w0)) > 1e-3


def test_bad_arguments():
    rng = np.random.default_rng(0)
    with pytest.raises(ValueError, match="n_heads must be"):
        MultiHeadAttention(10, 4, rng=rng)
    with pytest.raises(ValueError, match="n_kv_heads must be"):
        MultiHeadAttention(12, 4, 3, rng=rng)
    mha = MultiHeadAttention(8, 2, rng=rng)
    with pytest.raises(ValueError, match=r"x must have shape \(B, n, d_model=8\), got \(2, 3, 6\)"):
        mha(np.zeros((2, 3, 6)))
    with pytest.raises(ValueError, match=r"context must have shape \(B, m, d_model=8\)"):
        mha(np.zeros((2, 3, 8)), context=np.zeros((2, 4, 5)))
    with pytest.raises(ValueError, match="mask must broadcast"):
        mha(np.zeros((2, 3, 8)), mask=np.ones((2, 3, 4), dtype=bool))
