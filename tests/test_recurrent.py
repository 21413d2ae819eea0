"""GRU / LSTM cells and sequence modules: forward against the papers' equations,
backpropagation through time against central differences, padding, errors."""
import numpy as np
import pytest

from attention_np.nn.recurrent import GRU, LSTM, GRUCell, LSTMCell
from attention_np.train.gradcheck import TOLERANCE, check_module, numerical_gradient, relative_error

B, T, D_IN, H = 2, 6, 2, 3                      # T >= 5 steps of BPTT
MASK = np.array([[True] * 4 + [False] * 2, [True] * 6])   # lengths 4 and 6


def _sig(z):
    return 1.0 / (1.0 + np.exp(-z))


def _gru_reference(cell, x_t, h):
    """Cho et al. (2014) eqs. 5-8, one example at a time, column form with separate matrices."""
    W, U, b = cell.params["W"], cell.params["U"], cell.params["b"]
    out = np.empty_like(h)
    for i in range(x_t.shape[0]):
        xi, hi = x_t[i], h[i]
        z = _sig(W[:, :H].T @ xi + U[:, :H].T @ hi + b[:H])
        r = _sig(W[:, H:2 * H].T @ xi + U[:, H:2 * H].T @ hi + b[H:2 * H])
        cand = np.tanh(W[:, 2 * H:].T @ xi + U[:, 2 * H:].T @ (r * hi) + b[2 * H:])
        out[i] = z * hi + (1 - z) * cand
    return out


def _lstm_reference(cell, x_t, h, c):
    W, U, b = cell.params["W"], cell.params["U"], cell.params["b"]
    hs, cs = np.empty_like(h), np.empty_like(c)
    for k in range(x_t.shape[0]):
        a = W.T @ x_t[k] + U.T @ h[k] + b
        i, f, o, g = _sig(a[:H]), _sig(a[H:2 * H]), _sig(a[2 * H:3 * H]), np.tanh(a[3 * H:])
        cs[k] = f * c[k] + i * g
        hs[k] = o * np.tanh(cs[k])
    return hs, cs


@pytest.fixture
def data():
    rng = np.random.default_rng(0)
    return rng, rng.standard_normal((B, T, D_IN))


# ---------------------------------------------------------------- forward
def test_gru_cell_matches_cho_equations(data):
    rng, x = data
    cell = GRUCell(D_IN, H, rng=rng)
    h = rng.standard_normal((B, H))
    np.testing.assert_allclose(cell(x[:, 0], h), _gru_reference(cell, x[:, 0], h), rtol=1e-12, atol=1e-12)
    np.testing.assert_allclose(cell(x[:, 0]), _gru_reference(cell, x[:, 0], np.zeros((B, H))), atol=1e-12)


def test_lstm_cell_matches_equations(data):
    rng, x = data
    cell = LSTMCell(D_IN, H, rng=rng)
    h, c = rng.standard_normal((B, H)), rng.standard_normal((B, H))
    ref_h, ref_c = _lstm_reference(cell, x[:, 0], h, c)
    np.testing.assert_allclose(cell(x[:, 0], h, c), ref_h, atol=1e-12)
    np.testing.assert_allclose(cell.c, ref_c, atol=1e-12)


def test_gru_sequence_is_the_cell_applied_step_by_step(data):
    rng, x = data
    gru = GRU(D_IN, H, rng=rng)
    h0 = rng.standard_normal((B, H))
    states = gru(x, h0)
    h = h0
    for t in range(T):
        h = _gru_reference(gru.cells[0], x[:, t], h)
        np.testing.assert_allclose(states[:, t], h, atol=1e-12)
    np.testing.assert_allclose(gru.h_last, h, atol=1e-12)


def test_lstm_sequence_is_the_cell_applied_step_by_step(data):
    rng, x = data
    lstm = LSTM(D_IN, H, rng=rng)
    states = lstm(x)
    h = c = np.zeros((B, H))
    for t in range(T):
        h, c = _lstm_reference(lstm.cells[0], x[:, t], h, c)
        np.testing.assert_allclose(states[:, t], h, atol=1e-12)
    np.testing.assert_allclose(lstm.c_last, c, atol=1e-12)


@pytest.mark.parametrize("cls", [GRU, LSTM])
def test_bidirectional_halves_are_forward_and_time_reversed_runs(cls, data):
    rng, x = data
    bi = cls(D_IN, H, bidirectional=True, rng=rng)
    out = bi(x)
    assert out.shape == (B, T, 2 * H)
    fwd, rev = cls(D_IN, H, rng=rng), cls(D_IN, H, rng=rng)
    for name in bi.cells[0].params:
        fwd.cells[0].params[name][...] = bi.cells[0].params[name]
        rev.cells[0].params[name][...] = bi.cells[1].params[name]
    np.testing.assert_allclose(out[:, :, :H], fwd(x), atol=1e-12)
    np.testing.assert_allclose(out[:, :, H:], rev(x[:, ::-1])[:, ::-1], atol=1e-12)


# ---------------------------------------------------------------- padding
@pytest.mark.parametrize("cls", [GRU, LSTM])
@pytest.mark.parametrize("bidirectional", [False, True])
def test_padding_equals_running_the_unpadded_sequence(cls, bidirectional, data):
    rng, x = data
    rnn = cls(D_IN, H, bidirectional=bidirectional, rng=rng)
    x_pad = x.copy()
    x_pad[0, 4:] = 1e3                                         # garbage in the padding must not matter
    out = rnn(x_pad, mask=MASK)
    last = rnn.h_last.copy()
    alone = rnn(x[:1, :4])                                     # example 0 without its padding
    np.testing.assert_allclose(out[0, :4], alone[0], atol=1e-12)
    np.testing.assert_allclose(last[0], rnn.h_last[0], atol=1e-12)
    assert np.all(out[0, 4:] == 0.0)                           # padded outputs are exactly zero
    rnn.zero_grad()
    rnn(x_pad, mask=MASK)
    dx = rnn.backward(np.ones_like(out))
    assert np.all(dx[0, 4:] == 0.0)                            # padded inputs get exactly zero gradient
    assert np.all(np.abs(dx[0, :4]) > 0)


def test_fully_masked_sequence_outputs_zeros_without_nan(data):
    rng, x = data
    gru = GRU(D_IN, H, bidirectional=True, rng=rng)
    mask = np.array([[False] * T, [True] * T])
    out = gru(x, mask=mask)
    assert np.all(out[0] == 0.0) and np.all(np.isfinite(out))
    dx = gru.backward(np.ones_like(out))
    assert np.all(dx[0] == 0.0) and np.all(np.isfinite(dx))


# ---------------------------------------------------------------- gradients (BPTT)
def _assert_all_checked(errors, expected_keys):
    assert set(expected_keys) <= set(errors), errors
    assert max(errors.values()) < TOLERANCE, errors


def test_gru_cell_gradients(data):
    rng, x = data
    cell = GRUCell(D_IN, H, rng=rng)
    h = rng.standard_normal((B, H))
    _assert_all_checked(check_module(cell, x[:, 0], h, details=True), ["input0", "input1", "W", "U", "b"])
    _assert_all_checked(check_module(cell, x[:, 0], details=True), ["input0", "W", "U", "b"])


def test_lstm_cell_gradients_including_the_cell_state_path(data):
    rng, x = data
    cell = LSTMCell(D_IN, H, rng=rng)
    h, c = rng.standard_normal((B, H)), rng.standard_normal((B, H))
    _assert_all_checked(check_module(cell, x[:, 0], h, c, details=True),
                        ["input0", "input1", "input2", "W", "U", "b"])
    # upstream gradient into c' as well: L = sum(h' G1) + sum(c' G2)
    G1, G2 = rng.standard_normal((B, H)), rng.standard_normal((B, H))
    x0 = x[:, 0].copy()

    def loss():
        h_new = cell(x0, h, c)
        return np.sum(h_new * G1) + np.sum(cell.c * G2)

    cell.zero_grad()
    cell(x0, h, c)
    dx, dh, dc = cell.backward(G1, dc=G2)
    for analytic, arr in [(dx, x0), (dh, h), (dc, c), (cell.grads["U"].copy(), cell.params["U"])]:
        assert relative_error(analytic, numerical_gradient(loss, arr)) < TOLERANCE


@pytest.mark.parametrize("cls", [GRU, LSTM])
@pytest.mark.parametrize("bidirectional", [False, True])
@pytest.mark.parametrize("masked", [False, True])
def test_bptt_gradients_over_six_steps(cls, bidirectional, masked, data):
    rng, x = data
    rnn = cls(D_IN, H, bidirectional=bidirectional, rng=rng)
    d0 = rnn.d_out
    init = [rng.standard_normal((B, d0)) for _ in range(1 if cls is GRU else 2)]
    kwargs = {"mask": MASK} if masked else {}
    params = [name for name, _, _ in rnn.parameters()]
    assert len(params) == 3 * (2 if bidirectional else 1)
    if masked:      # with initial states (and the padding mask)
        inputs = ["input0"] + [f"input{i + 1}" for i in range(len(init))]
        _assert_all_checked(check_module(rnn, x, *init, details=True, **kwargs), inputs + params)
    else:           # without initial states (zeros), no mask
        _assert_all_checked(check_module(rnn, x, details=True), ["input0"] + params)


@pytest.mark.parametrize("cls", [GRU, LSTM])
def test_gradient_into_the_final_state(cls, data):
    rng, x = data
    rnn = cls(D_IN, H, bidirectional=True, rng=rng)
    h0 = rng.standard_normal((B, 2 * H))
    G, G_last = rng.standard_normal((B, T, 2 * H)), rng.standard_normal((B, 2 * H))
    x = x.copy()

    def loss():
        return np.sum(rnn(x, h0, mask=MASK) * G) + np.sum(rnn.h_last * G_last)

    rnn.zero_grad()
    rnn(x, h0, mask=MASK)
    dx, dh0 = rnn.backward(G, dh_last=G_last)[:2]
    assert relative_error(dx, numerical_gradient(loss, x)) < TOLERANCE
    assert relative_error(dh0, numerical_gradient(loss, h0)) < TOLERANCE


def test_gradient_reaches_the_first_step(data):
    """BPTT, not truncated: the last output depends on the first input."""
    rng, x = data
    gru = GRU(D_IN, H, rng=rng)
    out = gru(x)
    dout = np.zeros_like(out)
    dout[:, -1] = 1.0
    dx = gru.backward(dout)
    assert np.all(np.abs(dx[:, 0]) > 1e-8)


def test_gradients_accumulate_across_backward_calls(data):
    rng, x = data
    gru = GRU(D_IN, H, rng=rng)
    out = gru(x)
    gru.backward(np.ones_like(out))
    once = gru.cells[0].grads["W"].copy()
    gru(x)
    gru.backward(np.ones_like(out))
    np.testing.assert_allclose(gru.cells[0].grads["W"], 2 * once)


def test_float32_stays_float32(data):
    rng, x = data
    lstm = LSTM(D_IN, H, bidirectional=True, rng=rng).astype(np.float32)
    out = lstm(x.astype(np.float32), mask=MASK)
    assert out.dtype == np.float32
    assert lstm.backward(np.ones_like(out)).dtype == np.float32


# ---------------------------------------------------------------- errors
def test_bad_shapes_raise_value_errors_naming_the_argument(data):
    rng, x = data
    gru = GRU(D_IN, H, bidirectional=True, rng=rng)
    with pytest.raises(ValueError, match=r"^x must have shape \(B, T, d_in=2\)"):
        gru(x[:, :, :1])
    with pytest.raises(ValueError, match=r"^x must have shape"):
        gru(x[0])
    with pytest.raises(ValueError, match=r"^h0 must have shape"):
        gru(x, np.zeros((B, H)))                                # bidirectional needs (B, 2H)
    with pytest.raises(ValueError, match=r"^mask must"):
        gru(x, mask=np.ones((B, T + 1), bool))
    with pytest.raises(ValueError, match=r"^c0 must have shape"):
        LSTM(D_IN, H, rng=rng)(x, np.zeros((B, H)), np.zeros((B, H + 1)))
    with pytest.raises(ValueError, match=r"^h must have shape"):
        GRUCell(D_IN, H, rng=rng)(x[:, 0], np.zeros((B + 1, H)))
    with pytest.raises(ValueError, match=r"^x must have shape \(B, d_in=2\)"):
        LSTMCell(D_IN, H, rng=rng)(x)


def test_bad_upstream_gradients_raise_value_errors(data):
    """A (1, H) gradient would silently broadcast over the batch in the cells; it must be refused."""
    rng, x = data
    gru_cell = GRUCell(D_IN, H, rng=rng)
    gru_cell(x[:, 0])
    with pytest.raises(ValueError, match=r"^dh_new must have shape \(B=2, d_hidden=3\)"):
        gru_cell.backward(np.ones((1, H)))
    lstm_cell = LSTMCell(D_IN, H, rng=rng)
    lstm_cell(x[:, 0], np.zeros((B, H)), np.zeros((B, H)))
    with pytest.raises(ValueError, match=r"^dh_new must have shape"):
        lstm_cell.backward(np.ones((B, H + 1)))
    with pytest.raises(ValueError, match=r"^dc must have shape \(B=2, d_hidden=3\)"):
        lstm_cell.backward(np.ones((B, H)), dc=np.ones((1, H)))
    gru = GRU(D_IN, H, rng=rng)
    gru(x)
    with pytest.raises(ValueError, match=r"^dstates must have shape"):
        gru.backward(np.ones((1, T, H)))
