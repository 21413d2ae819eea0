"""Luong global attention (M11): three scores against a per-example reference,
gradient checks with and without a padding mask, general(W_a = I) == dot, errors."""
import numpy as np
import pytest

from attention_np.mechanisms.global_attention import GlobalAttention
from attention_np.train.gradcheck import TOLERANCE, check_module

B, S, D = 3, 5, 4
MASK = np.array([[True] * 3 + [False] * 2, [True] * 5, [True] * 1 + [False] * 4])
PARAMS = {"dot": ["W_c"], "general": ["W_a", "W_c"], "concat": ["W_a", "v_a", "W_c"]}


@pytest.fixture
def data():
    rng = np.random.default_rng(1)
    return rng, rng.standard_normal((B, D)), rng.standard_normal((B, S, D))


def _reference(module, h, src, mask=None):
    """Luong et al. (2015) eqs. 5-8, one example and one source position at a time (column form)."""
    p = module.params
    out = np.empty((B, D))
    weights = np.zeros((B, S))
    for b in range(B):
        valid = [s for s in range(S) if mask is None or mask[b, s]]
        e = {}
        for s in valid:
            if module.score == "dot":
                e[s] = h[b] @ src[b, s]
            elif module.score == "general":
                e[s] = h[b] @ p["W_a"] @ src[b, s]
            else:
                e[s] = p["v_a"] @ np.tanh(p["W_a"].T @ np.concatenate([h[b], src[b, s]]))
        z = sum(np.exp(v) for v in e.values())
        for s in valid:
            weights[b, s] = np.exp(e[s]) / z
        c = sum(weights[b, s] * src[b, s] for s in valid)
        out[b] = np.tanh(p["W_c"].T @ np.concatenate([c, h[b]]))
    return out, weights


@pytest.mark.parametrize("score", ["dot", "general", "concat"])
@pytest.mark.parametrize("masked", [False, True])
def test_forward_matches_per_example_reference(score, masked, data):
    rng, h, src = data
    att = GlobalAttention(D, score=score, rng=rng)
    mask = MASK if masked else None
    out = att(h, src, mask=mask)
    ref_out, ref_w = _reference(att, h, src, mask)
    np.testing.assert_allclose(out, ref_out, atol=1e-12)
    np.testing.assert_allclose(att.weights, ref_w, atol=1e-12)
    np.testing.assert_allclose(att.context, np.einsum("bs,bsd->bd", ref_w, src), atol=1e-12)


@pytest.mark.parametrize("score", ["dot", "general", "concat"])
@pytest.mark.parametrize("masked", [False, True])
def test_gradients_of_every_input_and_parameter(score, masked, data):
    rng, h, src = data
    att = GlobalAttention(D, score=score, rng=rng)
    kwargs = {"mask": MASK} if masked else {}
    errors = check_module(att, h, src, details=True, **kwargs)
    assert set(errors) == {"input0", "input1", *PARAMS[score]}
    assert max(errors.values()) < TOLERANCE, errors


def test_general_with_identity_equals_dot(data):
    """M11 (f): h_t^T I h_s = h_t^T h_s, so general with W_a = I is the dot score."""
    rng, h, src = data
    dot = GlobalAttention(D, score="dot", rng=rng)
    general = GlobalAttention(D, score="general", rng=rng)
    general.params["W_a"][...] = np.eye(D)
    general.params["W_c"][...] = dot.params["W_c"]
    np.testing.assert_allclose(general(h, src, mask=MASK), dot(h, src, mask=MASK), atol=1e-14)
    np.testing.assert_allclose(general.weights, dot.weights, atol=1e-14)
    G = rng.standard_normal((B, D))
    for g, d in zip(general.backward(G), dot.backward(G)):
        np.testing.assert_allclose(g, d, atol=1e-14)
    # and with W_a = W_q W_k^T it is an unscaled projected dot product
    W_q, W_k = rng.standard_normal((D, 2)), rng.standard_normal((D, 2))
    general.params["W_a"][...] = W_q @ W_k.T
    general(h, src)
    scores = np.einsum("bk,bsk->bs", h @ W_q, src @ W_k)
    e = np.exp(scores - scores.max(axis=1, keepdims=True))
    np.testing.assert_allclose(general.weights, e / e.sum(axis=1, keepdims=True), atol=1e-12)


@pytest.mark.parametrize("score", ["dot", "general", "concat"])
def test_masked_positions_get_zero_weight_and_zero_gradient(score, data):
    rng, h, src = data
    att = GlobalAttention(D, score=score, rng=rng)
    src_bad = src.copy()
    src_bad[~MASK] = 1e6                                      # padding content must be ignored
    out = att(h, src_bad, mask=MASK)
    assert np.all(att.weights[~MASK] == 0.0)
    np.testing.assert_allclose(att.weights.sum(axis=1), 1.0)
    np.testing.assert_allclose(out, att(h, src, mask=MASK), atol=1e-12)
    dh, dsrc = att.backward(np.ones((B, D)))
    assert np.all(dsrc[~MASK] == 0.0)
    assert np.all(np.abs(dsrc[MASK]) > 0)


def test_fully_masked_row_gives_zero_context_not_nan(data):
    rng, h, src = data
    att = GlobalAttention(D, score="concat", rng=rng)
    mask = MASK.copy()
    mask[2] = False
    out = att(h, src, mask=mask)
    assert np.all(np.isfinite(out)) and np.all(att.weights[2] == 0) and np.all(att.context[2] == 0)
    grads = att.backward(np.ones((B, D)))
    assert all(np.all(np.isfinite(g)) for g in grads)


def test_huge_scores_stay_finite(data):
    rng, h, src = data
    att = GlobalAttention(D, score="dot", rng=rng)
    out = att(1e4 * h, 1e4 * src)
    assert np.all(np.isfinite(out)) and np.all(np.isfinite(att.weights))


def test_float32_stays_float32(data):
    rng, h, src = data
    att = GlobalAttention(D, score="general", rng=rng).astype(np.float32)
    out = att(h.astype(np.float32), src.astype(np.float32), mask=MASK)
    assert out.dtype == np.float32
    assert all(g.dtype == np.float32 for g in att.backward(np.ones((B, D), np.float32)))


def test_bad_inputs_raise_value_errors_naming_the_argument(data):
    rng, h, src = data
    att = GlobalAttention(D, score="general", rng=rng)
    with pytest.raises(ValueError, match=r"^h_t must have shape \(B, d=4\)"):
        att(h[:, :3], src)
    with pytest.raises(ValueError, match=r"^source must have shape \(B=3, S, d=4\)"):
        att(h, src[:2])
    with pytest.raises(ValueError, match=r"^source must have shape"):
        att(h, src[..., :2])
    with pytest.raises(ValueError, match=r"^mask must"):
        att(h, src, mask=np.ones((B, S + 1), bool))
    with pytest.raises(ValueError, match=r"^mask must be a boolean"):
        att(h, src, mask=np.ones((B, S)))
    with pytest.raises(ValueError, match=r"score must be one of"):
        GlobalAttention(D, score="location")


@pytest.mark.parametrize("bad", [(B, D + 1), (1, D), (D,)])
def test_bad_upstream_gradient_raises_instead_of_broadcasting(bad, data):
    """A (1, d) gradient would silently broadcast over the batch; it must be refused."""
    rng, h, src = data
    att = GlobalAttention(D, score="general", rng=rng)
    att(h, src)
    with pytest.raises(ValueError, match=r"^dh_tilde must have shape \(B=3, d=4\)"):
        att.backward(np.ones(bad))
