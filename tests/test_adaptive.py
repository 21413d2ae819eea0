"""Tests for adaptive attention with a visual sentinel (MECHANISMS.md M8)."""
import numpy as np
import pytest

from attention_np.mechanisms.adaptive import AdaptiveAttention, VisualSentinel
from attention_np.nn.linear import Linear
from attention_np.nn.losses import cross_entropy_backward
from attention_np.train.gradcheck import TOLERANCE, check_module
from attention_np.train.optim import Adam

B, K, D, D_ATT, D_IN = 3, 5, 4, 6, 3


def _inputs(seed=0):
    rng = np.random.default_rng(seed)
    regions = rng.standard_normal((B, K, D))
    h_t = rng.standard_normal((B, D))
    sentinel = rng.standard_normal((B, D))
    mask = np.ones((B, K), dtype=bool)
    mask[0, 3:] = False
    mask[2, 1] = False
    return regions, h_t, sentinel, mask


def _independent_forward(module, regions, h_t, sentinel):
    """The paper's equations (spatial attention, extended softmax, mix), written out directly in NumPy."""
    p = module.params
    z = np.tanh(regions @ p["W_v"] + (h_t @ p["W_g"])[:, None, :]) @ p["w_h"]      # (B, k)
    z_s = np.tanh(sentinel @ p["W_s"] + h_t @ p["W_g"]) @ p["w_h"]                  # (B,)
    alpha = np.exp(z) / np.exp(z).sum(axis=1, keepdims=True)                        # spatial softmax over k
    c = np.einsum("bk,bkd->bd", alpha, regions)
    ext = np.concatenate([z, z_s[:, None]], axis=1)
    alpha_hat = np.exp(ext) / np.exp(ext).sum(axis=1, keepdims=True)
    beta = alpha_hat[:, -1]
    return alpha, c, alpha_hat, beta, beta[:, None] * sentinel + (1 - beta[:, None]) * c


# ------------------------------------------------------------------ gradient checks
@pytest.mark.parametrize("use_mask", [False, True])
def test_adaptive_attention_gradcheck(use_mask):
    regions, h_t, sentinel, mask = _inputs()
    module = AdaptiveAttention(D, D_ATT, rng=np.random.default_rng(1))
    kwargs = {"mask": mask} if use_mask else {}
    errors = check_module(module, regions, h_t, sentinel, details=True, **kwargs)
    assert set(errors) == {"input0", "input1", "input2", "W_v", "W_g", "W_s", "w_h"}
    assert max(errors.values()) < TOLERANCE, errors


def test_adaptive_attention_gradcheck_with_a_fully_masked_row():
    regions, h_t, sentinel, mask = _inputs()
    mask[1] = False
    module = AdaptiveAttention(D, D_ATT, rng=np.random.default_rng(1))
    assert check_module(module, regions, h_t, sentinel, mask=mask) < TOLERANCE


def test_visual_sentinel_gradcheck():
    rng = np.random.default_rng(2)
    module = VisualSentinel(D_IN, D, rng=np.random.default_rng(3))
    errors = check_module(module, rng.standard_normal((B, D_IN)), rng.standard_normal((B, D)),
                          rng.standard_normal((B, D)), details=True)
    assert set(errors) == {"input0", "input1", "input2", "W_x", "W_h"}
    assert max(errors.values()) < TOLERANCE, errors


def test_gradchecks_fail_for_a_wrong_backward(monkeypatch):
    import attention_np.mechanisms.adaptive as adaptive

    regions, h_t, sentinel, _ = _inputs()
    module = AdaptiveAttention(D, D_ATT, rng=np.random.default_rng(1))
    real = adaptive.adaptive_attention_backward

    def broken(*args):
        dregions, dh, dsentinel, dparams = real(*args)
        return dregions, dh, 0.0 * dsentinel, dparams        # forget the sentinel's gradient

    monkeypatch.setattr(adaptive, "adaptive_attention_backward", broken)
    assert check_module(module, regions, h_t, sentinel, details=True)["input2"] > 1e-3
    sentinel_module = VisualSentinel(D_IN, D, rng=np.random.default_rng(3))
    real_s = adaptive.visual_sentinel_backward
    monkeypatch.setattr(adaptive, "visual_sentinel_backward",
                        lambda *a: (lambda dx, dh, dm, dWx, dWh: (dx, dh, 0.0 * dm, dWx, dWh))(*real_s(*a)))
    rng = np.random.default_rng(2)
    errors = check_module(sentinel_module, rng.standard_normal((B, D_IN)), rng.standard_normal((B, D)),
                          rng.standard_normal((B, D)), details=True)
    assert errors["input2"] > 1e-3                            # the new path into the LSTM cell m_t


# ------------------------------------------------------------------ the paper's equations and the [v] numbers
def test_forward_matches_the_paper_equations():
    regions, h_t, sentinel, _ = _inputs(4)
    module = AdaptiveAttention(D, D_ATT, rng=np.random.default_rng(5))
    c_hat = module.forward(regions, h_t, sentinel)
    alpha, _, alpha_hat, beta, expected = _independent_forward(module, regions, h_t, sentinel)
    np.testing.assert_allclose(c_hat, expected, rtol=1e-12)          # c_hat = beta s + (1 - beta) c
    np.testing.assert_allclose(module.weights, alpha_hat, rtol=1e-12)
    np.testing.assert_allclose(module.beta, beta, rtol=1e-12)
    np.testing.assert_allclose(module.weights[:, :K], (1 - beta[:, None]) * alpha, rtol=1e-12)  # M8 d


def test_beta_is_one_fiftieth_when_all_fifty_logits_are_equal():
    rng = np.random.default_rng(6)
    k = 49
    module = AdaptiveAttention(8, 4, rng=rng)
    module.params["w_h"][:] = 0.0                            # every one of the k + 1 = 50 logits is 0
    regions, h_t, sentinel = rng.standard_normal((2, k, 8)), rng.standard_normal((2, 8)), rng.standard_normal((2, 8))
    module.forward(regions, h_t, sentinel)
    np.testing.assert_allclose(module.beta, 0.02, rtol=1e-12)                     # [v] M8 f
    np.testing.assert_allclose(module.weights[:, :k], (1 - 0.02) * (1 / k), rtol=1e-12)   # (1 - beta) alpha


def test_visual_sentinel_formula():
    rng = np.random.default_rng(7)
    module = VisualSentinel(D_IN, D, rng=rng)
    x, h, m = rng.standard_normal((B, D_IN)), rng.standard_normal((B, D)), rng.standard_normal((B, D))
    s = module.forward(x, h, m)
    g = 1.0 / (1.0 + np.exp(-(x @ module.params["W_x"] + h @ module.params["W_h"])))
    np.testing.assert_allclose(module.gate, g, rtol=1e-12)
    np.testing.assert_allclose(s, g * np.tanh(m), rtol=1e-12)
    assert np.all(np.abs(s) < 1.0)


# ------------------------------------------------------------------ masks
def test_masked_regions_get_zero_weight_and_zero_gradient():
    regions, h_t, sentinel, mask = _inputs()
    module = AdaptiveAttention(D, D_ATT, rng=np.random.default_rng(1))
    c_hat = module.forward(regions, h_t, sentinel, mask=mask)
    assert module.weights.shape == (B, K + 1)
    assert np.all(module.weights[:, :K][~mask] == 0.0)
    np.testing.assert_allclose(module.weights.sum(axis=1), 1.0, rtol=1e-12)
    dregions, _, _ = module.backward(np.random.default_rng(2).standard_normal((B, D)))
    assert np.all(dregions[~mask] == 0.0) and np.any(dregions[mask] != 0.0)
    moved = regions.copy()
    moved[~mask] = 50.0
    np.testing.assert_array_equal(module.forward(moved, h_t, sentinel, mask=mask), c_hat)


def test_fully_masked_regions_leave_only_the_sentinel():
    regions, h_t, sentinel, mask = _inputs()
    mask[1] = False
    module = AdaptiveAttention(D, D_ATT, rng=np.random.default_rng(1))
    c_hat = module.forward(regions, h_t, sentinel, mask=mask)
    assert module.beta[1] == 1.0
    np.testing.assert_array_equal(c_hat[1], sentinel[1])
    dregions, dh, dsentinel = module.backward(np.ones((B, D)))
    assert np.all(dregions[1] == 0.0) and np.all(np.isfinite(dh)) and np.all(np.isfinite(dsentinel))


def test_huge_inputs_and_float32():
    regions, h_t, sentinel, _ = _inputs()
    module = AdaptiveAttention(D, D_ATT, rng=np.random.default_rng(1))
    module.params["w_h"][:] *= 1e6
    assert np.all(np.isfinite(module.forward(regions * 1e3, h_t, sentinel)))
    module.astype(np.float32)
    f32 = [a.astype(np.float32) for a in (regions, h_t, sentinel)]
    out = module.forward(*f32)
    assert out.dtype == np.float32 and module.beta.dtype == np.float32
    assert all(g.dtype == np.float32 for g in module.backward(np.ones((B, D), dtype=np.float32)))
    sent = VisualSentinel(D_IN, D, rng=np.random.default_rng(0)).astype(np.float32)
    s = sent.forward(np.ones((B, D_IN), np.float32), f32[1], f32[2])
    assert s.dtype == np.float32
    assert all(g.dtype == np.float32 for g in sent.backward(np.ones((B, D), np.float32)))


def test_bad_shapes_raise_value_error_naming_the_argument():
    regions, h_t, sentinel, mask = _inputs()
    module = AdaptiveAttention(D, D_ATT, rng=np.random.default_rng(1))
    with pytest.raises(ValueError, match="regions"):
        module.forward(regions[..., :2], h_t, sentinel)
    with pytest.raises(ValueError, match="h_t"):
        module.forward(regions, h_t[:2], sentinel)
    with pytest.raises(ValueError, match="sentinel"):
        module.forward(regions, h_t, sentinel[:, :2])
    with pytest.raises(ValueError, match="mask"):
        module.forward(regions, h_t, sentinel, mask=mask[:, :2])
    module.forward(regions, h_t, sentinel)
    with pytest.raises(ValueError, match="dc_hat"):
        module.backward(np.ones((B, D + 1)))
    sent = VisualSentinel(D_IN, D, rng=np.random.default_rng(0))
    with pytest.raises(ValueError, match="x_t"):
        sent.forward(np.ones((B, D)), h_t, sentinel)
    with pytest.raises(ValueError, match="h_prev"):
        sent.forward(np.ones((B, D_IN)), h_t[:1], sentinel)
    with pytest.raises(ValueError, match="m_t"):
        sent.forward(np.ones((B, D_IN)), h_t, sentinel[:, :1])


# ------------------------------------------------------------------ learning
def test_sentinel_is_used_on_non_visual_steps():
    """Visual steps: predict the symbol of the marked region.  Non-visual ("filler")
    steps: predict a symbol held only in the LSTM memory cell m_t, which reaches
    the output only through the sentinel.  After training, beta must be high on
    filler steps and low on visual ones (MECHANISMS.md M8 e)."""
    rng = np.random.default_rng(0)
    n_sym, k = 4, 6
    d = n_sym + 3
    MARK, VISUAL, FILLER = n_sym, n_sym + 1, n_sym + 2

    def make(n):
        symbols = rng.integers(0, n_sym, size=(n, k))
        marked = rng.integers(0, k, size=n)
        regions = np.zeros((n, k, d))
        regions[np.arange(n)[:, None], np.arange(k), symbols] = 1.0
        regions[np.arange(n), marked, MARK] = 1.0
        visual = rng.random(n) < 0.5
        h = np.zeros((n, d))
        h[visual, VISUAL] = 1.0                              # the decoder state says which kind of step
        h[~visual, FILLER] = 1.0
        memory_symbol = rng.integers(0, n_sym, size=n)
        m = np.zeros((n, d))
        m[np.arange(n), memory_symbol] = 3.0
        target = np.where(visual, symbols[np.arange(n), marked], memory_symbol)
        return regions, h, m, target, visual, marked

    sentinel = VisualSentinel(d, d, rng=rng)
    attention = AdaptiveAttention(d, 8, rng=rng)
    readout = Linear(d, n_sym, rng=rng)                      # p_t = softmax(W_p (c_hat + h_t))
    opt = Adam(list(sentinel.parameters()) + list(attention.parameters()) + list(readout.parameters()), lr=0.05)
    for _ in range(250):
        regions, h, m, target, _, _ = make(64)
        opt.zero_grad()
        s = sentinel.forward(h, h, m)                        # x_t and h_{t-1} stand-ins: the step flags
        logits = readout.forward(attention.forward(regions, h, s) + h)
        _, _, ds = attention.backward(readout.backward(cross_entropy_backward(logits, target)))
        sentinel.backward(ds)
        opt.step()
    regions, h, m, target, visual, marked = make(1000)
    logits = readout.forward(attention.forward(regions, h, sentinel.forward(h, h, m)) + h)
    accuracy = np.mean(logits.argmax(axis=1) == target)
    beta_filler, beta_visual = attention.beta[~visual].mean(), attention.beta[visual].mean()
    alignment = np.mean(attention.weights[visual, :k].argmax(axis=1) == marked[visual])
    assert accuracy >= 0.95, accuracy
    assert beta_filler > 0.7 and beta_visual < 0.1, (beta_filler, beta_visual)
    assert alignment >= 0.95, alignment
