"""Tests for attention_np.mechanisms.latent: DeepSeek-V2 multi-head latent attention."""
import numpy as np
import pytest

from attention_np.mechanisms.latent import MultiHeadLatentAttention
from attention_np.nn.functional import padding_mask
from attention_np.train.gradcheck import TOLERANCE, check_module

EIGHT = {"W_DKV", "W_UK", "W_UV", "W_DQ", "W_UQ", "W_QR", "W_KR", "W_o"}


def small(seed=0, **kw):
    sizes = dict(d_model=6, n_heads=2, d_head=3, d_latent_kv=4, d_latent_q=5, d_rope=4)
    sizes.update(kw)
    return MultiHeadLatentAttention(**sizes, rng=np.random.default_rng(seed))


def rope(x, positions=None, base=10000.0):
    """RoPE (X3) written independently: pair (2i, 2i+1) as one complex number, rotated by p * base^(-2i/d)."""
    n, d = x.shape[-2], x.shape[-1]
    positions = np.arange(n) if positions is None else np.asarray(positions)
    theta = base ** (-2.0 * np.arange(d // 2) / d)                 # (d/2,)
    z = (x[..., 0::2] + 1j * x[..., 1::2]) * np.exp(1j * positions[:, None] * theta)   # (..., n, d/2)
    return np.stack([z.real, z.imag], axis=-1).reshape(x.shape)


def reference(mla, x):
    """M6's equations token by token, head by head (causal), written independently of the module."""
    P = mla.params
    B, n, _ = x.shape
    H, d_h, d_R = mla.n_heads, mla.d_head, mla.d_rope
    out = np.zeros((B, n, mla.d_model))
    for b in range(B):
        c_kv = x[b] @ P["W_DKV"]                                  # (n, d_c)
        c_q = x[b] @ P["W_DQ"]                                    # (n, d_c')
        k_r = rope(x[b] @ P["W_KR"])                              # (n, d_R): one per token
        heads = []
        for i in range(H):
            k_c = c_kv @ P["W_UK"][:, i * d_h:(i + 1) * d_h]      # (n, d_h)
            v_c = c_kv @ P["W_UV"][:, i * d_h:(i + 1) * d_h]
            q_c = c_q @ P["W_UQ"][:, i * d_h:(i + 1) * d_h]
            q_r = rope(c_q @ P["W_QR"][:, i * d_R:(i + 1) * d_R])
            o = np.zeros((n, d_h))
            for t in range(n):
                s = np.array([(q_c[t] @ k_c[j] + q_r[t] @ k_r[j]) / np.sqrt(d_h + d_R) for j in range(t + 1)])
                p = np.exp(s - s.max())
                o[t] = (p / p.sum()) @ v_c[: t + 1]
            heads.append(o)
        out[b] = np.concatenate(heads, axis=1) @ P["W_o"]
    return out


def test_parameter_shapes():
    mla = small()
    expected = {"W_DKV": (6, 4), "W_UK": (4, 6), "W_UV": (4, 6), "W_DQ": (6, 5), "W_UQ": (5, 6),
                "W_QR": (5, 8), "W_KR": (6, 4), "W_o": (6, 6)}
    assert {name: p.shape for name, p in mla.params.items()} == expected   # W_KR: ONE d_R key per token


def test_forward_matches_equations():
    mla = small(1)
    x = np.random.default_rng(1).standard_normal((2, 5, 6))
    out = mla(x, causal=True)
    assert out.shape == (2, 5, 6)
    np.testing.assert_allclose(out, reference(mla, x), atol=1e-12)
    assert mla.weights.shape == (2, 2, 5, 5)
    assert np.all(np.triu(mla.weights, k=1) == 0)              # causal by default


def test_gradcheck_all_eight_matrices():
    mla = small(2)
    x = np.random.default_rng(2).standard_normal((2, 4, 6))
    errors = check_module(mla, x, details=True)
    assert set(errors) == EIGHT | {"input0"}
    assert max(errors.values()) < TOLERANCE, errors


def test_gradcheck_with_padding_mask_not_causal():
    mla = small(3, n_heads=3, d_head=2, d_rope=2)
    x = np.random.default_rng(3).standard_normal((2, 4, 6))
    mask = padding_mask(np.array([4, 2]), 4)[:, None]            # (B, 1, 1, m)
    errors = check_module(mla, x, details=True, mask=mask, causal=False)
    assert max(errors.values()) < TOLERANCE, errors


@pytest.mark.parametrize("causal", [True, False])
def test_absorbed_equals_naive(causal):
    mla = small(4, d_latent_kv=7)
    x = np.random.default_rng(4).standard_normal((3, 6, 6))
    mask = padding_mask(np.array([6, 3, 5]), 6)[:, None]
    np.testing.assert_allclose(mla.forward_absorbed(x, causal=causal), mla.forward(x, causal=causal),
                               rtol=0, atol=1e-10)
    np.testing.assert_allclose(mla.forward_absorbed(x, mask=mask, causal=causal),
                               mla.forward(x, mask=mask, causal=causal), rtol=0, atol=1e-10)


def test_absorbed_matrices_reproduce_forward():
    # M6 weight absorption done by hand with pre-multiplied matrices (row-vector layout):
    # per head i, q^C . k^C = c^Q (W^UQ_i W^UK_i^T) c^KV^T and o_i W^O_i = (sum_j p_j c^KV_j) (W^UV_i W^O_i).
    mla = small(8, d_latent_kv=5)
    x = np.random.default_rng(8).standard_normal((2, 6, 6))
    P, H, d_h, d_R = mla.params, mla.n_heads, mla.d_head, mla.d_rope
    out = np.zeros((2, 6, 6))
    for b in range(2):
        c_kv, c_q = x[b] @ P["W_DKV"], x[b] @ P["W_DQ"]            # the cache holds c_kv (and k_r)
        k_r = rope(x[b] @ P["W_KR"])                               # (n, d_R)
        for i in range(H):
            cols, rcols = slice(i * d_h, (i + 1) * d_h), slice(i * d_R, (i + 1) * d_R)
            W_qk = P["W_UQ"][:, cols] @ P["W_UK"][:, cols].T       # (d_c', d_c): W^UK absorbed into W^UQ
            W_vo = P["W_UV"][:, cols] @ P["W_o"][cols]             # (d_c, d_model): W^UV folded into W^O
            s = (c_q @ W_qk @ c_kv.T + rope(c_q @ P["W_QR"][:, rcols]) @ k_r.T) / np.sqrt(d_h + d_R)
            s = np.where(np.tril(np.ones((6, 6), bool)), s, -np.inf)
            p = np.exp(s - s.max(axis=1, keepdims=True))
            out[b] += (p / p.sum(axis=1, keepdims=True)) @ c_kv @ W_vo
    np.testing.assert_allclose(mla.forward(x, causal=True), out, rtol=0, atol=1e-12)
    np.testing.assert_allclose(mla.forward_absorbed(x, causal=True), out, rtol=0, atol=1e-12)


@pytest.mark.parametrize("max_len", [None, 7])
def test_incremental_decoding_equals_full_forward(max_len):
    mla = small(5)
    x = np.random.default_rng(5).standard_normal((2, 7, 6))
    full = mla.forward(x, causal=True)
    # token by token from an empty cache, which grows in place
    cache, outs = mla.init_cache(max_len), []
    for t in range(7):
        outs.append(mla.forward_incremental(x[:, t:t + 1], cache))
        assert cache.length == t + 1
        assert cache.c_kv.shape == (2, t + 1, 4) and cache.k_r.shape == (2, t + 1, 4)   # nothing else is cached
    np.testing.assert_allclose(np.concatenate(outs, axis=1), full, rtol=0, atol=1e-12)
    # prefill of 4 tokens, then 3 more in one call
    cache = mla.init_cache(max_len)
    out1 = mla.forward_incremental(x[:, :4], cache)
    assert cache.length == 4
    out2 = mla.forward_incremental(x[:, 4:], cache)
    np.testing.assert_allclose(np.concatenate([out1, out2], axis=1), full, rtol=0, atol=1e-12)
    # the cache holds exactly c^KV = x W^DKV and k^R = RoPE(x W^KR) at absolute positions 0..6
    P = mla.params
    np.testing.assert_allclose(cache.c_kv, x @ P["W_DKV"], rtol=0, atol=1e-13)
    np.testing.assert_allclose(cache.k_r, rope(x @ P["W_KR"]), rtol=0, atol=1e-13)
    per_token = cache.c_kv.shape[-1] + cache.k_r.shape[-1]
    assert per_token == mla.cache_elements_per_token() == 4 + 4
    assert cache.nbytes == 2 * 7 * per_token * 8                # float64: 8 bytes per number
    cache.reset()
    assert cache.length == 0 and cache.nbytes == 0 and cache.c_kv is None


def test_latent_cache_grows_in_place_and_refuses_overflow_and_new_precision():
    mla = small(5)
    x = np.random.default_rng(6).standard_normal((1, 4, 6))
    cache = mla.init_cache(max_len=3)
    mla.forward_incremental(x[:, :2], cache)
    buffer = cache._buffers[0]
    mla.forward_incremental(x[:, 2:3], cache)
    assert cache._buffers[0] is buffer and np.shares_memory(cache.c_kv, buffer)   # filled in place
    with pytest.raises(ValueError, match="cache overflow: 3 \\+ 1 tokens exceed max_len=3"):
        mla.forward_incremental(x[:, 3:], cache)
    with pytest.raises(ValueError, match="cache's dtype float64, got float32"):
        cache.append(np.zeros((1, 1, 4), np.float32), np.zeros((1, 1, 4), np.float32))


def test_cache_elements_per_token_deepseek_v2():
    # DeepSeek-V2: d_c = 512, d_R = 64 (M6): 576 numbers per token and layer,
    # whatever the number of heads; MHA with 128 heads of 128 caches 2 * 128 * 128.
    mla = MultiHeadLatentAttention(d_model=32, n_heads=2, d_head=8, d_latent_kv=512, d_latent_q=16,
                                   d_rope=64, rng=np.random.default_rng(0))
    more_heads = MultiHeadLatentAttention(d_model=32, n_heads=8, d_head=16, d_latent_kv=512, d_latent_q=16,
                                          d_rope=64, rng=np.random.default_rng(0))
    assert mla.cache_elements_per_token() == 576 == more_heads.cache_elements_per_token()
    mha = 2 * 128 * 128
    assert mha == 32768
    assert round(100 * 576 / mha, 2) == 1.76


def test_causality_and_rope_matter():
    mla = small(6)
    rng = np.random.default_rng(6)
    x = rng.standard_normal((1, 6, 6))
    y = x.copy()
    y[:, 4:] += rng.standard_normal((1, 2, 6))
    np.testing.assert_allclose(mla(x, causal=True)[:, :4], mla(y, causal=True)[:, :4], atol=1e-14)   # future tokens invisible
    # with W_KR = 0 the RoPE path is silent: the output then changes, so the path is used
    before = mla(x)
    mla.params["W_KR"][...] = 0.0
    assert not np.allclose(mla(x), before)


def test_float32_stays_float32():
    mla = small(7).astype(np.float32)
    x = np.random.default_rng(7).standard_normal((2, 5, 6)).astype(np.float32)
    assert mla(x).dtype == np.float32
    assert mla.backward(np.ones((2, 5, 6), np.float32)).dtype == np.float32
    assert mla.forward_absorbed(x).dtype == np.float32
    cache = mla.init_cache()
    out = mla.forward_incremental(x, cache)
    assert out.dtype == np.float32 and cache.c_kv.dtype == np.float32


def test_bad_input():
    mla = small()
    with pytest.raises(ValueError, match="d_model=6"):
        mla(np.zeros((2, 5, 7)))
    with pytest.raises(ValueError, match="d_rope must be even"):
        small(d_rope=3)
    with pytest.raises(ValueError, match="mask"):
        mla(np.zeros((2, 5, 6)), mask=np.ones((3, 5), bool))
    with pytest.raises(ValueError, match="cache must be a LatentCache"):
        mla.forward_incremental(np.zeros((2, 1, 6)), {"c_kv": np.zeros((2, 3, 4)), "k_r": np.zeros((2, 3, 4))})
    cache = mla.init_cache()
    mla.forward_incremental(np.zeros((2, 1, 6)), cache)
    with pytest.raises(ValueError, match=r"c_kv must have shape \(B=2, s, d_latent_kv=4\), got \(3, 1, 4\)"):
        mla.forward_incremental(np.zeros((3, 1, 6)), cache)      # another batch size than the cached one
    with pytest.raises(ValueError, match=r"k_r must have shape \(B=2, s=1, d_rope\), got \(1, 1, 4\)"):
        cache.append(np.zeros((2, 1, 4)), np.zeros((1, 1, 4)))   # the two arrays disagree on the batch


def test_causal_is_off_by_default_as_in_every_attention_module():
    """One contract: ``causal=False`` unless asked, in MLA as in MultiHeadAttention and SelfAttention."""
    mla = small()
    x = np.random.default_rng(1).standard_normal((1, 4, mla.d_model))
    mla(x)
    assert np.all(mla.weights[..., 0, 1:] > 0), "a default call must let token 0 see later tokens"
    np.testing.assert_allclose(mla.forward_absorbed(x), mla(x), atol=1e-12)
