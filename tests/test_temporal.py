"""Temporal attention over frames (Yao et al. 2015, M15): reference forward,
gradient checks, mean pooling vs attention on "A then B" / "B then A", masks, errors."""
import numpy as np
import pytest

from attention_np.mechanisms.temporal import TemporalAttention
from attention_np.train.gradcheck import TOLERANCE, check_module

B, F, D_FRAME, D_STATE, D_HID = 3, 6, 4, 3, 5
MASK = np.array([[True] * 4 + [False] * 2, [True] * 6, [True] * 2 + [False] * 4])
PARAMS = {"W_a", "U_a", "b_a", "w"}


@pytest.fixture
def data():
    rng = np.random.default_rng(3)
    return rng, rng.standard_normal((B, F, D_FRAME)), rng.standard_normal((B, D_STATE))


def test_forward_matches_per_frame_reference(data):
    rng, frames, h = data
    att = TemporalAttention(D_FRAME, D_STATE, D_HID, rng=rng)
    att.params["b_a"][...] = rng.standard_normal(D_HID)
    p = att.params
    phi = att(frames, h, mask=MASK)
    for b in range(B):
        valid = [i for i in range(F) if MASK[b, i]]
        e = np.array([p["w"] @ np.tanh(p["W_a"].T @ h[b] + p["U_a"].T @ frames[b, i] + p["b_a"]) for i in valid])
        alpha = np.exp(e) / np.exp(e).sum()
        np.testing.assert_allclose(att.weights[b, valid], alpha, atol=1e-12)
        np.testing.assert_allclose(phi[b], alpha @ frames[b, valid], atol=1e-12)


@pytest.mark.parametrize("masked", [False, True])
def test_gradients_of_every_input_and_parameter(masked, data):
    rng, frames, h = data
    att = TemporalAttention(D_FRAME, D_STATE, D_HID, rng=rng)
    att.params["b_a"][...] = rng.standard_normal(D_HID)
    kwargs = {"mask": MASK} if masked else {}
    errors = check_module(att, frames, h, details=True, **kwargs)
    assert set(errors) == {"input0", "input1"} | PARAMS
    assert max(errors.values()) < TOLERANCE, errors


def _videos():
    """Six frames: features [is_A, is_B, time]. "A then B" and "B then A" hold the same frames in another order."""
    time = np.linspace(0.0, 1.0, F)
    first = (time < 0.5).astype(float)
    ab = np.stack([first, 1 - first, time], axis=1)              # A during the first half
    ba = np.stack([1 - first, first, time], axis=1)              # B during the first half
    return np.stack([ab, ba])                                    # (2, F, 3)


def test_mean_pooling_cannot_tell_the_order_but_conditioned_attention_can():
    """M15 (f)."""
    videos = _videos()
    mean = videos.mean(axis=1)                                   # (2, 3): mean pooling over frames
    np.testing.assert_array_equal(mean[0], mean[1])              # identical: the order is lost
    att = TemporalAttention(3, 2, 2, rng=np.random.default_rng(0))
    att.params["w"][...] = 0.0                                   # uniform alpha is mean pooling
    np.testing.assert_allclose(att(videos, np.ones((2, 2))), mean, atol=1e-15)
    # scores conditioned on h_{t-1}: h_start = [1, 0] prefers early frames, h_end = [0, 1] late ones
    att.params["W_a"][...] = 10.0 * np.eye(2)
    att.params["U_a"][...] = [[0.0, 0.0], [0.0, 0.0], [-4.0, 4.0]]   # only the time feature enters the score
    att.params["b_a"][...] = [-8.0, -12.0]
    att.params["w"][...] = [3.0, 3.0]
    h_start, h_end = np.array([[1.0, 0.0]] * 2), np.array([[0.0, 1.0]] * 2)
    phi_start = att(videos, h_start)                             # first word
    assert phi_start[0, 0] > 0.9 and phi_start[1, 1] > 0.9       # reads A from "A then B", B from "B then A"
    assert np.abs(phi_start[0] - phi_start[1]).max() > 0.8
    phi_end = att(videos, h_end)                                 # a later word
    assert phi_end[0, 1] > 0.9 and phi_end[1, 0] > 0.9           # now the second action
    assert np.all(np.diff(att.weights, axis=1) > 0)              # weights grow with time at h_end


def test_masked_frames_get_zero_weight_and_zero_gradient(data):
    rng, frames, h = data
    att = TemporalAttention(D_FRAME, D_STATE, D_HID, rng=rng)
    bad = frames.copy()
    bad[~MASK] = 1e6
    phi = att(bad, h, mask=MASK)
    assert np.all(att.weights[~MASK] == 0.0)
    np.testing.assert_allclose(att.weights.sum(axis=1), 1.0)
    np.testing.assert_allclose(phi, att(frames, h, mask=MASK), atol=1e-12)
    dframes, dh = att.backward(np.ones((B, D_FRAME)))
    assert np.all(dframes[~MASK] == 0.0) and np.all(np.abs(dframes[MASK]) > 0)


def test_fully_masked_video_gives_zero_context_not_nan(data):
    rng, frames, h = data
    att = TemporalAttention(D_FRAME, D_STATE, D_HID, rng=rng)
    mask = MASK.copy()
    mask[1] = False
    phi = att(frames, h, mask=mask)
    assert np.all(phi[1] == 0) and np.all(np.isfinite(phi))
    assert all(np.all(np.isfinite(g)) for g in att.backward(np.ones((B, D_FRAME))))


def test_float32_stays_float32(data):
    rng, frames, h = data
    att = TemporalAttention(D_FRAME, D_STATE, D_HID, rng=rng).astype(np.float32)
    phi = att(frames.astype(np.float32), h.astype(np.float32), mask=MASK)
    assert phi.dtype == np.float32
    assert all(g.dtype == np.float32 for g in att.backward(np.ones((B, D_FRAME), np.float32)))


def test_bad_inputs_raise_value_errors_naming_the_argument(data):
    rng, frames, h = data
    att = TemporalAttention(D_FRAME, D_STATE, D_HID, rng=rng)
    with pytest.raises(ValueError, match=r"^frames must have shape \(B, F, d_frame=4\)"):
        att(frames[..., :3], h)
    with pytest.raises(ValueError, match=r"^h_prev must have shape \(B=3, d_state=3\)"):
        att(frames, h[:2])
    with pytest.raises(ValueError, match=r"^mask must"):
        att(frames, h, mask=MASK[:, :3])


@pytest.mark.parametrize("bad", [(B, D_FRAME + 1), (1, D_FRAME)])
def test_bad_upstream_gradient_raises_instead_of_broadcasting(bad, data):
    rng, frames, h = data
    att = TemporalAttention(D_FRAME, D_STATE, D_HID, rng=rng)
    att(frames, h)
    with pytest.raises(ValueError, match=r"^dphi must have shape \(B=3, d_frame=4\)"):
        att.backward(np.ones(bad))
