"""Tests for attention_np.mechanisms.linear_attention: linear attention and Linformer."""
import numpy as np
import pytest

from attention_np.mechanisms.linear_attention import (
    LinformerAttention, linear_attention, linear_attention_backward,
)
from attention_np.nn.functional import causal_mask
from attention_np.train.gradcheck import TOLERANCE, check_function, check_module


def phi(x):
    """elu + 1, written out independently of nn.functional."""
    return np.where(x > 0, x + 1.0, np.exp(np.minimum(x, 0.0)))


def quadratic_form(q, k, v, mask):
    """``A V / rowsum(A)`` with ``A = phi(Q) phi(K)^T`` masked: the O(n m) definition."""
    A = phi(q) @ np.swapaxes(phi(k), -1, -2)                  # (..., n, m)
    if mask is not None:
        A = A * mask
    return A @ v / A.sum(axis=-1, keepdims=True)


def quadratic_form_backward(dout, q, k, v, mask):
    """Hand-derived backward of ``quadratic_form`` (a second, independent derivation)."""
    pq, pk = phi(q), phi(k)
    A = pq @ np.swapaxes(pk, -1, -2)
    if mask is not None:
        A = A * mask
    r = A.sum(axis=-1, keepdims=True)                         # (..., n, 1)
    W = A / r
    dv = np.swapaxes(W, -1, -2) @ dout
    dW = dout @ np.swapaxes(v, -1, -2)
    dA = (dW - np.sum(dW * W, axis=-1, keepdims=True)) / r
    if mask is not None:
        dA = dA * mask
    dpq, dpk = dA @ pk, np.swapaxes(dA, -1, -2) @ pq
    dphi = lambda x: np.where(x > 0, 1.0, np.exp(np.minimum(x, 0.0)))
    return dpq * dphi(q), dpk * dphi(k), dv


def recurrence(q, k, v):
    """The causal RNN form, one position at a time (n = m): S_i = S_{i-1} + phi(k_i) v_i^T."""
    n, d_k, d_v = q.shape[0], q.shape[1], v.shape[1]
    S, z, out = np.zeros((d_k, d_v)), np.zeros(d_k), np.zeros((n, d_v))
    for i in range(n):                                        # the loop is the point: an RNN
        S += np.outer(phi(k[i]), v[i])
        z += phi(k[i])
        out[i] = S.T @ phi(q[i]) / (phi(q[i]) @ z)
    return out


# (n, m, causal): self-attention, a cached prefix (m > n), fewer keys than queries (non-causal only)
CASES = [(6, 6, False), (6, 6, True), (4, 9, False), (4, 9, True), (7, 3, False)]


@pytest.mark.parametrize("n, m, causal", CASES)
def test_linear_attention_equals_quadratic_form(n, m, causal):
    rng = np.random.default_rng(n * 10 + m)
    q, k, v = rng.standard_normal((2, 3, n, 5)), rng.standard_normal((2, 3, m, 5)), rng.standard_normal((2, 3, m, 4))
    mask = causal_mask(n, m) if causal else None
    np.testing.assert_allclose(linear_attention(q, k, v, causal=causal), quadratic_form(q, k, v, mask),
                               rtol=0, atol=1e-12)
    dout = rng.standard_normal((2, 3, n, 4))
    for name, g, g_ref in zip("qkv", linear_attention_backward(dout, q, k, v, causal=causal),
                              quadratic_form_backward(dout, q, k, v, mask)):
        np.testing.assert_allclose(g, g_ref, rtol=0, atol=1e-12, err_msg=f"d{name}")


def test_causal_recurrence_equals_masked_quadratic_form():
    rng = np.random.default_rng(1)
    q, k, v = rng.standard_normal((12, 4)), rng.standard_normal((12, 4)), rng.standard_normal((12, 3))
    rnn = recurrence(q, k, v)
    np.testing.assert_allclose(rnn, quadratic_form(q, k, v, causal_mask(12)), rtol=0, atol=1e-12)
    np.testing.assert_allclose(linear_attention(q, k, v, causal=True), rnn, rtol=0, atol=1e-12)
    # and it is not softmax attention
    assert not np.allclose(linear_attention(q, k, v, causal=True), quadratic_form(q, k, v, None))


def test_causal_outputs_ignore_the_future():
    rng = np.random.default_rng(2)
    q, k, v = rng.standard_normal((8, 4)), rng.standard_normal((8, 4)), rng.standard_normal((8, 3))
    k2, v2 = k.copy(), v.copy()
    k2[5:] += 3.0
    v2[5:] -= 2.0
    a, b = linear_attention(q, k, v, causal=True), linear_attention(q, k2, v2, causal=True)
    np.testing.assert_array_equal(a[:5], b[:5])
    assert not np.allclose(a[5:], b[5:])


@pytest.mark.parametrize("n, m, causal", [(5, 5, False), (5, 5, True), (3, 6, True), (6, 4, False)])
def test_linear_attention_gradcheck(n, m, causal):
    rng = np.random.default_rng(3)
    q, k, v = rng.standard_normal((2, n, 3)), rng.standard_normal((2, m, 3)), rng.standard_normal((2, m, 2))
    errors = check_function(lambda q, k, v: linear_attention(q, k, v, causal=causal),
                            lambda d, q, k, v: linear_attention_backward(d, q, k, v, causal=causal),
                            q, k, v, details=True)
    assert max(errors.values()) < TOLERANCE, errors


def test_linear_attention_broadcast_and_float32():
    rng = np.random.default_rng(4)
    q, k, v = rng.standard_normal((2, 1, 5, 3)), rng.standard_normal((4, 5, 3)), rng.standard_normal((5, 2))
    out = linear_attention(q, k, v, causal=True)
    assert out.shape == (2, 4, 5, 2)
    dq, dk, dv = linear_attention_backward(np.ones(out.shape), q, k, v, causal=True)
    assert dq.shape == q.shape and dk.shape == k.shape and dv.shape == v.shape
    errors = check_function(lambda q, k, v: linear_attention(q, k, v, causal=True),
                            lambda d, q, k, v: linear_attention_backward(d, q, k, v, causal=True), q, k, v)
    assert errors < TOLERANCE
    f32 = [x.astype(np.float32) for x in (q, k, v)]
    assert linear_attention(*f32).dtype == np.float32
    assert all(g.dtype == np.float32 for g in linear_attention_backward(out.astype(np.float32), *f32, causal=True))


def test_linear_attention_bad_input():
    with pytest.raises(ValueError, match="v must have shape"):
        linear_attention(np.zeros((3, 4)), np.zeros((5, 4)), np.zeros((6, 2)))
    with pytest.raises(ValueError, match="m >= n"):
        linear_attention(np.zeros((6, 4)), np.zeros((5, 4)), np.zeros((5, 2)), causal=True)
    with pytest.raises(ValueError, match="dout must have shape"):
        linear_attention_backward(np.zeros((3, 3)), np.zeros((3, 4)), np.zeros((5, 4)), np.zeros((5, 2)))


# ---------------------------------------------------------------- Linformer
def test_linformer_matches_definition():
    rng = np.random.default_rng(5)
    layer = LinformerAttention(d_model=6, seq_len=7, k=3, rng=rng, n_heads=2)
    for name in ("b_q", "b_k", "b_v", "b_o"):
        layer.params[name][...] = rng.standard_normal(6)
    x = rng.standard_normal((2, 7, 6))
    out = layer(x)
    P = layer.params
    ref = np.zeros((2, 7, 6))
    for b in range(2):                                        # plain per-example, per-head reference
        Q, K, V = x[b] @ P["W_q"] + P["b_q"], x[b] @ P["W_k"] + P["b_k"], x[b] @ P["W_v"] + P["b_v"]
        Kb, Vb = P["E"] @ K, P["F"] @ V                       # (k, d_model): projected along the sequence
        heads = []
        for h in range(2):
            cols = slice(3 * h, 3 * h + 3)
            S = Q[:, cols] @ Kb[:, cols].T / np.sqrt(3)       # (n, k) scores
            A = np.exp(S - S.max(axis=1, keepdims=True))
            A /= A.sum(axis=1, keepdims=True)
            heads.append(A @ Vb[:, cols])
        ref[b] = np.concatenate(heads, axis=1) @ P["W_o"] + P["b_o"]
    np.testing.assert_allclose(out, ref, atol=1e-12)
    assert layer.weights.shape == (2, 2, 7, 3)                # (B, H, n, k): n x k scores


def test_linformer_gradcheck():
    rng = np.random.default_rng(6)
    layer = LinformerAttention(d_model=4, seq_len=5, k=2, rng=rng, n_heads=2)
    for name in ("b_q", "b_k", "b_v", "b_o"):
        layer.params[name][...] = rng.standard_normal(4) * 0.5
    errors = check_module(layer, rng.standard_normal((2, 5, 4)), details=True)
    assert set(errors) >= {"input0", "W_q", "W_k", "W_v", "W_o", "b_q", "b_k", "b_v", "b_o", "E", "F"}
    assert max(errors.values()) < TOLERANCE, errors
    single = LinformerAttention(d_model=3, seq_len=4, k=2, rng=rng, bias=False)
    assert check_module(single, rng.standard_normal((4, 3))) < TOLERANCE


def test_linformer_bad_input():
    layer = LinformerAttention(d_model=4, seq_len=5, k=2, rng=np.random.default_rng(0))
    with pytest.raises(ValueError, match="seq_len=5"):
        layer(np.zeros((2, 6, 4)))
    with pytest.raises(ValueError, match="d_model=4"):
        layer(np.zeros((2, 5, 3)))
    with pytest.raises(ValueError, match="divisible"):
        LinformerAttention(d_model=5, seq_len=5, k=2, n_heads=2)
