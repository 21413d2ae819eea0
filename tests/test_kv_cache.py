"""Causal masking and the KV cache (MECHANISMS.md X4)."""
import numpy as np
import pytest

from attention_np.mechanisms.kv_cache import (
    KVCache, cached_attention, decode_step, incremental_forward, kv_cache_bytes, prefill,
)
from attention_np.mechanisms.multihead import MultiHeadAttention
from attention_np.nn.functional import causal_mask


@pytest.mark.parametrize("n_kv_heads", [4, 2, 1])
@pytest.mark.parametrize("use_rope", [False, True])
@pytest.mark.parametrize("max_len", [None, 9])
def test_cached_decoding_equals_full_causal_forward(n_kv_heads, use_rope, max_len):
    rng = np.random.default_rng(0)
    mha = MultiHeadAttention(16, 4, n_kv_heads, rng=rng, rope=use_rope)
    for name in ("b_q", "b_k", "b_v", "b_o"):
        mha.params[name][...] = rng.standard_normal(mha.params[name].shape)
    x = rng.standard_normal((2, 9, 16))
    full = mha(x, causal=True)
    cache = KVCache(max_len)
    out = incremental_forward(mha, x, prompt_len=4, cache=cache)
    assert np.max(np.abs(out - full)) < 1e-12
    assert cache.length == 9
    assert cache.keys.shape == (2, n_kv_heads, 9, 4)
    assert cache.nbytes == kv_cache_bytes(1, n_kv_heads, 4, 9, bytes_per_element=8) * 2
    # the cached keys are the (rotated) keys of the full pass
    k_full, v_full = mha.project_keys_values(x)
    np.testing.assert_allclose(cache.keys, k_full, atol=1e-14)
    np.testing.assert_allclose(cache.values, v_full, atol=1e-14)


def test_token_by_token_from_the_first_token():
    rng = np.random.default_rng(1)
    mha = MultiHeadAttention(8, 2, 1, rng=rng, rope=True)
    x = rng.standard_normal((1, 6, 8))
    full = mha(x, causal=True)
    assert np.max(np.abs(incremental_forward(mha, x, prompt_len=1) - full)) < 1e-12
    assert np.max(np.abs(incremental_forward(mha, x, prompt_len=6) - full)) < 1e-12
    # a block of new queries after a cached prefix uses the offset causal mask j <= i + (m - s)
    cache = KVCache()
    a = prefill(mha, x[:, :2], cache)
    b = cached_attention(mha, x[:, 2:], cache)
    assert np.max(np.abs(np.concatenate([a, b], axis=1) - full)) < 1e-12
    assert mha.weights.shape == (1, 2, 4, 6)
    assert np.all(mha.weights[0, :, 0, 3:] == 0.0)               # query at position 2 sees keys 0..2
    # new query i sits at absolute position i + (m - s) = i + 2 and sees exactly the keys j <= i + 2
    allowed = np.array([[j <= i + 2 for j in range(6)] for i in range(4)])
    np.testing.assert_array_equal(mha.weights[0] > 0.0, np.broadcast_to(allowed, (2, 4, 6)))


def test_rope_without_the_absolute_offset_is_wrong():
    rng = np.random.default_rng(2)
    mha = MultiHeadAttention(8, 2, rng=rng, rope=True)
    x = rng.standard_normal((1, 5, 8))
    full = mha(x, causal=True)
    cache = KVCache()
    prefill(mha, x[:, :4], cache)
    # the pitfall: rotating the new query/key as if it were position 0
    q = mha.project_queries(x[:, 4:], positions=np.array([0]))
    k, v = mha.project_keys_values(x[:, 4:], positions=np.array([0]))
    keys, values = cache.append(k, v)
    wrong, _, _ = mha.attend(q, keys, values)
    assert np.max(np.abs(wrong - full[:, 4:])) > 1e-3


def test_future_tokens_do_not_change_earlier_outputs():
    rng = np.random.default_rng(3)
    mha = MultiHeadAttention(8, 2, rng=rng, rope=True)
    x = rng.standard_normal((2, 7, 8))
    out = mha(x, causal=True)
    x2 = x.copy()
    x2[:, 4:] += rng.standard_normal((2, 3, 8))
    out2 = mha(x2, causal=True)
    np.testing.assert_array_equal(out2[:, :4], out[:, :4])
    assert np.max(np.abs(out2[:, 4:] - out[:, 4:])) > 1e-3
    # without the causal mask the past does see the future
    assert np.max(np.abs(mha(x2)[:, :4] - mha(x)[:, :4])) > 1e-3


def test_cache_sizes():
    gib, mib = 2**30, 2**20
    # 32 layers, H = 32, d_k = 128, 4096 tokens, fp16 ([v] numbers)
    assert kv_cache_bytes(32, 32, 128, 4096, 2) == 2 * gib
    assert kv_cache_bytes(32, 8, 128, 4096, 2) == gib // 2
    assert kv_cache_bytes(32, 1, 128, 4096, 2) == 64 * mib


def test_cache_errors():
    cache = KVCache(max_len=3)
    k = np.zeros((1, 2, 2, 4))
    cache.append(k, k)
    with pytest.raises(ValueError, match="cache overflow"):
        cache.append(k, k)
    with pytest.raises(ValueError, match=r"k must have shape \(B=1, H_kv=2, s, d_head=4\)"):
        cache.append(np.zeros((1, 1, 1, 4)), np.zeros((1, 1, 1, 4)))
    mha = MultiHeadAttention(8, 2, rng=np.random.default_rng(0))
    with pytest.raises(ValueError, match="prefill needs an empty cache"):
        prefill(mha, np.zeros((1, 2, 8)), _filled(mha))
    with pytest.raises(ValueError, match=r"x_t must have shape \(B, 1, d_model=8\)"):
        decode_step(mha, np.zeros((1, 2, 8)), KVCache())
    with pytest.raises(ValueError, match="prompt_len must be"):
        incremental_forward(mha, np.zeros((1, 3, 8)), prompt_len=0)


def _filled(mha):
    cache = KVCache()
    prefill(mha, np.zeros((1, 2, 8)), cache)
    return cache


def test_padding_mask_during_decoding():
    rng = np.random.default_rng(4)
    mha = MultiHeadAttention(8, 2, rng=rng)
    x = rng.standard_normal((1, 5, 8))
    key_ok = np.array([[[False, True, True, True, True]]])      # (B, 1, m): key 0 is padding
    full = mha(x, mask=key_ok & causal_mask(5))
    cache = KVCache()
    outs = [prefill(mha, x[:, :3], cache, mask=key_ok[..., :3])]
    for t in (3, 4):
        outs.append(decode_step(mha, x[:, t:t + 1], cache, mask=key_ok[..., :t + 1]))
    assert np.max(np.abs(np.concatenate(outs, axis=1)[:, 1:] - full[:, 1:])) < 1e-12
