"""Tests for attention_np.mechanisms.flash: tiled attention equals SDPA, without n x m memory."""
import inspect
import tracemalloc

import numpy as np
import pytest

from attention_np.mechanisms.flash import DEFAULT_BLOCK_SIZE, flash_attention, flash_attention_backward
from attention_np.mechanisms.scaled_dot_product import (
    scaled_dot_product_attention, scaled_dot_product_attention_backward,
)
from attention_np.nn.functional import causal_mask, logsumexp
from attention_np.train.gradcheck import TOLERANCE, check_function

# (n, m, causal, block_size): divisible and not, n != m both ways, one block only
CASES = [
    (8, 8, False, 4), (8, 8, True, 4),
    (10, 10, False, 3), (10, 10, True, 3),
    (7, 13, False, 4), (7, 13, True, 4),      # cached prefix: j <= i + (m - n)
    (13, 7, False, 5),
    (9, 9, True, 64), (21, 34, True, 5),
]


def _reference(q, k, v, causal):
    n, m = q.shape[-2], k.shape[-2]
    mask = causal_mask(n, m) if causal else None
    return scaled_dot_product_attention(q, k, v, mask=mask)


@pytest.mark.parametrize("n, m, causal, block", CASES)
def test_flash_equals_sdpa_forward_and_gradients(n, m, causal, block):
    rng = np.random.default_rng(n * 100 + m)
    q, k, v = rng.standard_normal((2, 3, n, 6)), rng.standard_normal((2, 3, m, 6)), rng.standard_normal((2, 3, m, 4))
    out_ref, weights = _reference(q, k, v, causal)
    out, lse = flash_attention(q, k, v, causal=causal, block_size=block)
    np.testing.assert_allclose(out, out_ref, rtol=0, atol=1e-12)
    # lse is the log-sum-exp of the scaled, masked scores
    scores = q @ np.swapaxes(k, -1, -2) / np.sqrt(6)
    if causal:
        scores = np.where(causal_mask(n, m), scores, -np.inf)
    np.testing.assert_allclose(lse, logsumexp(scores, axis=-1), rtol=0, atol=1e-12)
    dout = rng.standard_normal(out.shape)
    grads_ref = scaled_dot_product_attention_backward(dout, q, k, v, weights)
    grads = flash_attention_backward(dout, q, k, v, out, lse, causal=causal, block_size=block)
    for name, g, g_ref in zip("qkv", grads, grads_ref):
        assert g.shape == g_ref.shape
        np.testing.assert_allclose(g, g_ref, rtol=0, atol=1e-12, err_msg=f"d{name}")


@pytest.mark.parametrize("causal", [False, True])
def test_flash_gradcheck(causal):
    rng = np.random.default_rng(1)
    q, k, v = rng.standard_normal((2, 5, 3)), rng.standard_normal((2, 7, 3)), rng.standard_normal((2, 7, 2))

    def fwd(q, k, v):
        return flash_attention(q, k, v, causal=causal, block_size=2)[0]

    def bwd(dout, q, k, v):
        out, lse = flash_attention(q, k, v, causal=causal, block_size=2)
        return flash_attention_backward(dout, q, k, v, out, lse, causal=causal, block_size=2)

    errors = check_function(fwd, bwd, q, k, v, details=True)
    assert max(errors.values()) < TOLERANCE, errors


def test_flash_broadcasts_leading_axes():
    rng = np.random.default_rng(2)
    q = rng.standard_normal((2, 1, 6, 4))          # (B, 1, n, d): shared over heads
    k = rng.standard_normal((1, 3, 6, 4))          # (1, H, m, d): shared over batch
    v = rng.standard_normal((6, 5))                # (m, d_v): shared over everything
    out_ref, w = scaled_dot_product_attention(q, k, v, mask=causal_mask(6))
    out, lse = flash_attention(q, k, v, causal=True, block_size=4)
    np.testing.assert_allclose(out, out_ref, atol=1e-12)
    dout = rng.standard_normal(out.shape)
    for g, g_ref in zip(flash_attention_backward(dout, q, k, v, out, lse, causal=True, block_size=4),
                        scaled_dot_product_attention_backward(dout, q, k, v, w)):
        assert g.shape == g_ref.shape
        np.testing.assert_allclose(g, g_ref, atol=1e-12)


def test_flash_never_allocates_n_by_m():
    n = m = 2048
    rng = np.random.default_rng(3)
    q, k, v = rng.standard_normal((n, 16)), rng.standard_normal((m, 16)), rng.standard_normal((m, 16))
    dout = rng.standard_normal((n, 16))
    full_matrix = n * m * 8                          # bytes of one float64 n x m array (32 MiB)

    def peak(f):
        tracemalloc.start()
        try:
            result = f()
            return tracemalloc.get_traced_memory()[1], result
        finally:
            tracemalloc.stop()

    sdpa_peak, _ = peak(lambda: scaled_dot_product_attention(q, k, v))
    assert sdpa_peak >= full_matrix                  # the probe does see an n x m array
    fwd_peak, (out, lse) = peak(lambda: flash_attention(q, k, v, block_size=64))
    bwd_peak, _ = peak(lambda: flash_attention_backward(dout, q, k, v, out, lse, block_size=64))
    assert fwd_peak < full_matrix / 8, fwd_peak
    assert bwd_peak < full_matrix / 8, bwd_peak
    # causal with the default block size stays far below one n x m array, too
    c_peak, (out, lse) = peak(lambda: flash_attention(q, k, v, causal=True))
    assert c_peak < full_matrix / 4, c_peak
    cb_peak, _ = peak(lambda: flash_attention_backward(dout, q, k, v, out, lse, causal=True))
    assert cb_peak < full_matrix / 4, cb_peak


def test_flash_causal_skips_blocks_above_the_diagonal():
    # A NaN in a value row poisons any block that touches it, even where the
    # weight is 0 (0 * NaN = NaN).  Query blocks that lie wholly before the
    # poisoned key's block never load it when blocks above the diagonal are skipped.
    rng = np.random.default_rng(4)
    n, block = 12, 4
    q, k, v = rng.standard_normal((n, 3)), rng.standard_normal((n, 3)), rng.standard_normal((n, 2))
    v_bad = v.copy()
    v_bad[9] = np.nan                                # key block [8, 12)
    out_ref, _ = scaled_dot_product_attention(q, k, v, mask=causal_mask(n))
    out, _ = flash_attention(q, k, v_bad, causal=True, block_size=block)
    np.testing.assert_allclose(out[:8], out_ref[:8], atol=1e-12)
    assert np.all(np.isnan(out[9:]))                 # it is used where it should be


def test_flash_backward_skips_blocks_above_the_diagonal():
    # A NaN query row poisons every block that loads it (0 * NaN = NaN in dK += dS^T Q).
    # Causal: key blocks after the poisoned query's block must never load that query block.
    rng = np.random.default_rng(6)
    n, block = 12, 4
    q, k, v = rng.standard_normal((n, 3)), rng.standard_normal((n, 3)), rng.standard_normal((n, 2))
    dout = rng.standard_normal((n, 2))
    q_bad = q.copy()
    q_bad[1] = np.nan                                # query block [0, 4)
    _, w = scaled_dot_product_attention(q, k, v, mask=causal_mask(n))
    dq_ref, dk_ref, dv_ref = scaled_dot_product_attention_backward(dout, q, k, v, w)
    out, lse = flash_attention(q_bad, k, v, causal=True, block_size=block)
    dq, dk, dv = flash_attention_backward(dout, q_bad, k, v, out, lse, causal=True, block_size=block)
    np.testing.assert_allclose(dk[4:], dk_ref[4:], atol=1e-12)   # keys 4.. only see queries 4..
    np.testing.assert_allclose(dv[4:], dv_ref[4:], atol=1e-12)
    np.testing.assert_allclose(dq[4:], dq_ref[4:], atol=1e-12)
    assert np.all(np.isnan(dk[:2]))                  # it is used where it should be


def test_flash_backward_recomputes_p_from_lse():
    # P = exp(S - LSE) is rebuilt from the lse it is given: lse + log 2 halves every P,
    # hence dV = P^T dO exactly halves (no hidden normaliser is recomputed).
    rng = np.random.default_rng(7)
    q, k, v = rng.standard_normal((2, 9, 4)), rng.standard_normal((2, 11, 4)), rng.standard_normal((2, 11, 3))
    dout = rng.standard_normal((2, 9, 3))
    for causal in (False, True):
        out, lse = flash_attention(q, k, v, causal=causal, block_size=4)
        dv = flash_attention_backward(dout, q, k, v, out, lse, causal=causal, block_size=4)[2]
        dv_half = flash_attention_backward(dout, q, k, v, out, lse + np.log(2.0), causal=causal, block_size=4)[2]
        np.testing.assert_allclose(dv_half, dv / 2, rtol=1e-13, atol=1e-15)


def test_flash_default_block_size_is_the_contracts_64():
    assert DEFAULT_BLOCK_SIZE == 64
    for fn in (flash_attention, flash_attention_backward):
        assert inspect.signature(fn).parameters["block_size"].default == 64
        assert inspect.signature(fn).parameters["causal"].default is False


def test_flash_float32_huge_logits_and_default_block():
    rng = np.random.default_rng(5)
    n = DEFAULT_BLOCK_SIZE + 37                      # more than one default block, not divisible
    q = (rng.standard_normal((n, 8)) * 300).astype(np.float32)   # scores of size ~ 1e5
    k = (rng.standard_normal((n, 8)) * 300).astype(np.float32)
    v = rng.standard_normal((n, 4)).astype(np.float32)
    out, lse = flash_attention(q, k, v, causal=True)
    assert out.dtype == np.float32 and lse.dtype == np.float32
    assert np.all(np.isfinite(out)) and np.all(np.isfinite(lse))
    ref, w = scaled_dot_product_attention(q.astype(np.float64), k.astype(np.float64), v.astype(np.float64),
                                          mask=causal_mask(n))
    np.testing.assert_allclose(out, ref, atol=1e-3)
    dout = rng.standard_normal(out.shape).astype(np.float32)
    grads = flash_attention_backward(dout, q, k, v, out, lse, causal=True)
    assert all(g.dtype == np.float32 and np.all(np.isfinite(g)) for g in grads)


def test_flash_bad_input():
    q, k, v = np.zeros((4, 3)), np.zeros((5, 3)), np.zeros((5, 2))
    with pytest.raises(ValueError, match="k must have shape"):
        flash_attention(q, np.zeros((5, 4)), v)
    with pytest.raises(ValueError, match="block_size"):
        flash_attention(q, k, v, block_size=0)
    with pytest.raises(ValueError, match="m >= n"):
        flash_attention(np.zeros((6, 3)), k, v, causal=True)
    out, lse = flash_attention(q, k, v)
    with pytest.raises(ValueError, match="lse must have shape"):
        flash_attention_backward(np.zeros((4, 2)), q, k, v, out, lse[:3])
    with pytest.raises(ValueError, match="dout must have shape"):
        flash_attention_backward(np.zeros((4, 3)), q, k, v, out, lse)
