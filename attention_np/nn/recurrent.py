r"""Recurrent cells (GRU, LSTM) and sequence modules with backpropagation through time.

The RNN-era attention papers (Bahdanau et al. 2015; Luong et al. 2015; Yang et
al. 2016 HAN; Yao et al. 2015) all put attention on top of recurrent states.
This file gives those states, with hand-written backward passes.

GRU (Cho et al. 2014, *Learning Phrase Representations using RNN
Encoder-Decoder for Statistical Machine Translation*, the "hidden unit that adaptively
remembers and forgets"), row form with
``x (B, d_in)``, ``h (B, H)`` and stacked weights ``W (d_in, 3H)``,
``U (H, 3H)``, ``b (3H,)`` whose column blocks are ``[z | r | candidate]``:

.. math::
    z = \sigma(x W_z + h U_z + b_z),\quad r = \sigma(x W_r + h U_r + b_r),\quad
    \tilde h = \tanh(x W_n + (r\odot h) U_n + b_n),\quad h' = z\odot h + (1-z)\odot\tilde h

(the reset gate acts *before* the recurrent product, as in Cho et al.; ``z``
keeps the old state, also as in the paper).

LSTM (Hochreiter & Schmidhuber 1997, with the forget gate of Gers, Schmidhuber
& Cummins 2000), ``W (d_in, 4H)``, ``U (H, 4H)``, ``b (4H,)``, blocks
``[i | f | o | g]``:

.. math::
    i, f, o = \sigma(\cdot),\quad g = \tanh(x W_g + h U_g + b_g),\quad
    c' = f\odot c + i\odot g,\quad h' = o\odot\tanh(c')

Backward of one step (affine layers and the tanh/sigmoid derivatives of Chapter 3) is written out in
:func:`gru_cell_backward` / :func:`lstm_cell_backward`.  Backpropagation
through time runs the steps in reverse order, adding the gradient that arrives
from the output at step ``t`` to the gradient that arrives from step ``t+1``
through the state.

Padding: a boolean ``mask (B, T)`` (True = real token) makes a padded step
*skip* the update (the state is carried over unchanged) and output zeros.  A
reverse direction therefore starts from its initial state at each sequence's
own last real token, and a sequence with no real token outputs all zeros.
"""
from __future__ import annotations

import numpy as np

from .functional import sigmoid
from .module import Module, default_rng, xavier_uniform
from .validate import as_float_array, check_mask, shape_error


# ---------------------------------------------------------------- one GRU step
def gru_cell(x, h, W, U, b):
    """One GRU step. ``x (B, d_in)``, ``h (B, H)`` -> ``(h_new (B, H), cache)``.

    ``W (d_in, 3H)``, ``U (H, 3H)``, ``b (3H,)`` with column blocks
    ``[z | r | candidate]``; ``cache`` is what :func:`gru_cell_backward` needs.
    """
    H = h.shape[-1]
    xw = x @ W + b                                          # (B, d_in) @ (d_in, 3H) -> (B, 3H)
    hu = h @ U[:, :2 * H]                                   # (B, H) @ (H, 2H) -> (B, 2H)
    z = sigmoid(xw[:, :H] + hu[:, :H])                      # (B, H) update gate
    r = sigmoid(xw[:, H:2 * H] + hu[:, H:])                 # (B, H) reset gate
    rh = r * h                                              # (B, H)
    n = np.tanh(xw[:, 2 * H:] + rh @ U[:, 2 * H:])          # (B, H) candidate state
    h_new = z * h + (1.0 - z) * n                           # (B, H)
    return h_new, (x, h, z, r, n, rh)


def gru_cell_backward(dh_new, W, U, cache):
    """Backward of :func:`gru_cell`: ``-> (dx, dh, dW, dU, db)``.

    ``dh_new (B, H)`` upstream gradient; the parameters ``W (d_in, 3H)``,
    ``U (H, 3H)`` as in the forward; ``cache``, the forward's second output.
    Returns ``dx (B, d_in)``, ``dh (B, H)`` and the parameter gradients
    ``dW (d_in, 3H)``, ``dU (H, 3H)``, ``db (3H,)`` (returned, not accumulated).
    """
    x, h, z, r, n, rh = cache
    H = h.shape[-1]
    dz = dh_new * (h - n)                                   # h' = z h + (1 - z) n
    dn = dh_new * (1.0 - z)
    dh = dh_new * z
    dpre_n = dn * (1.0 - n * n)                             # tanh'
    drh = dpre_n @ U[:, 2 * H:].T                           # (B, H)
    dh += drh * r
    dpre_zr = np.concatenate([dz * z * (1.0 - z), drh * h * r * (1.0 - r)], axis=1)  # (B, 2H) sigmoid'
    dpre = np.concatenate([dpre_zr, dpre_n], axis=1)        # (B, 3H) gradient of the pre-activations
    dh += dpre_zr @ U[:, :2 * H].T                          # (B, 2H) @ (2H, H) -> (B, H)
    dx = dpre @ W.T                                         # (B, 3H) @ (3H, d_in) -> (B, d_in)
    dU = np.concatenate([h.T @ dpre_zr, rh.T @ dpre_n], axis=1)  # (H, 3H)
    return dx, dh, x.T @ dpre, dU, dpre.sum(axis=0)


# ---------------------------------------------------------------- one LSTM step
def lstm_cell(x, h, c, W, U, b):
    """One LSTM step. ``x (B, d_in)``, ``h, c (B, H)`` -> ``(h_new (B, H), c_new (B, H), cache)``.

    ``W (d_in, 4H)``, ``U (H, 4H)``, ``b (4H,)`` with column blocks ``[i | f | o | g]``.
    """
    H = h.shape[-1]
    pre = x @ W + h @ U + b                                 # (B, 4H)
    ifo = sigmoid(pre[:, :3 * H])                           # (B, 3H) input, forget, output gates
    i, f, o = ifo[:, :H], ifo[:, H:2 * H], ifo[:, 2 * H:]
    g = np.tanh(pre[:, 3 * H:])                             # (B, H) cell candidate
    c_new = f * c + i * g                                   # (B, H)
    tc = np.tanh(c_new)                                     # (B, H)
    h_new = o * tc
    return h_new, c_new, (x, h, c, i, f, o, g, tc)


def lstm_cell_backward(dh_new, dc_new, W, U, cache):
    """Backward of :func:`lstm_cell`: ``-> (dx, dh, dc, dW, dU, db)``.

    ``dh_new, dc_new (B, H)`` are the gradients arriving at ``h_new`` and
    ``c_new``; ``W (d_in, 4H)``, ``U (H, 4H)`` as in the forward; ``cache``, the
    forward's third output.  Returns ``dx (B, d_in)``, ``dh (B, H)``, ``dc (B, H)``
    (into the previous cell state) and ``dW (d_in, 4H)``, ``dU (H, 4H)``, ``db (4H,)``.
    """
    x, h, c, i, f, o, g, tc = cache
    do = dh_new * tc
    dc = dc_new + dh_new * o * (1.0 - tc * tc)              # total gradient into c'
    di, df, dg = dc * g, dc * c, dc * i
    dpre = np.concatenate([di * i * (1.0 - i), df * f * (1.0 - f), do * o * (1.0 - o),
                           dg * (1.0 - g * g)], axis=1)     # (B, 4H)
    dx = dpre @ W.T                                         # (B, d_in)
    dh = dpre @ U.T                                         # (B, H)
    return dx, dh, dc * f, x.T @ dpre, h.T @ dpre, dpre.sum(axis=0)


# ---------------------------------------------------------------- helpers
def _check_step_inputs(x, states, d_in, H):
    x = as_float_array(x, "x")
    if x.ndim != 2 or x.shape[1] != d_in:
        raise shape_error("x", f"(B, d_in={d_in})", x)
    out = []
    for name, s in states:
        if s is None:
            out.append(np.zeros((x.shape[0], H), dtype=x.dtype))
            continue
        s = as_float_array(s, name)
        if s.shape != (x.shape[0], H):
            raise shape_error(name, f"(B={x.shape[0]}, d_hidden={H})", s)
        out.append(s)
    return x, out


def _check_upstream(d, name, like):
    """Validate an upstream gradient that must have the shape of the state ``like (B, H)``."""
    d = as_float_array(d, name)
    if d.shape != like.shape:
        raise shape_error(name, f"(B={like.shape[0]}, d_hidden={like.shape[1]})", d)
    return d


def _accumulate(grads, dW, dU, db):
    for key, g in (("W", dW), ("U", dU), ("b", db)):
        grads[key] += g


class GRUCell(Module):
    """One GRU step (Cho et al. 2014). Params ``W (d_in, 3H)``, ``U (H, 3H)``, ``b (3H,)``.

    ``forward(x (B, d_in), h=None (B, H)) -> h_new (B, H)``;
    ``backward(dh_new) -> dx``, or ``(dx, dh)`` when ``h`` was given.
    """

    def __init__(self, d_in: int, d_hidden: int, *, rng=None) -> None:
        super().__init__()
        rng = default_rng(rng)
        self.d_in, self.d_hidden = int(d_in), int(d_hidden)
        H = self.d_hidden
        self.add_param("W", xavier_uniform(rng, self.d_in, 3 * H))
        self.add_param("U", np.concatenate([xavier_uniform(rng, H, H) for _ in range(3)], axis=1))
        self.add_param("b", np.zeros(3 * H))

    def forward(self, x, h=None) -> np.ndarray:
        """``x (B, d_in)``, previous state ``h (B, H)`` (zeros if None) -> ``h_new (B, H)``.

        Caches the gate activations and whether ``h`` was given.
        """
        x, (h_,) = _check_step_inputs(x, [("h", h)], self.d_in, self.d_hidden)
        h_new, cache = gru_cell(x, h_, self.params["W"], self.params["U"], self.params["b"])
        self.cache = (cache, h is not None)
        return h_new

    def backward(self, dh_new):
        """``dh_new (B, H)`` -> ``dx (B, d_in)``, or ``(dx, dh (B, H))`` when forward was given ``h``.

        Adds ``dW (d_in, 3H)``, ``dU (H, 3H)``, ``db (3H,)`` into ``grads``.
        """
        cache, has_h = self.cache
        dh_new = _check_upstream(dh_new, "dh_new", cache[1])
        dx, dh, *param_grads = gru_cell_backward(dh_new, self.params["W"], self.params["U"], cache)
        _accumulate(self.grads, *param_grads)
        return (dx, dh) if has_h else dx


class LSTMCell(Module):
    """One LSTM step (Hochreiter & Schmidhuber 1997; forget gate: Gers et al. 2000).

    Params ``W (d_in, 4H)``, ``U (H, 4H)``, ``b (4H,)`` (forget-gate bias starts at 1).
    ``forward(x (B, d_in), h=None, c=None) -> h_new (B, H)``; the new cell state
    is ``.c``.  ``backward(dh_new, dc=None)`` returns ``dx`` followed by ``dh``
    and ``dc`` for whichever of ``h``, ``c`` was given.
    """

    def __init__(self, d_in: int, d_hidden: int, *, rng=None) -> None:
        super().__init__()
        rng = default_rng(rng)
        self.d_in, self.d_hidden = int(d_in), int(d_hidden)
        H = self.d_hidden
        self.add_param("W", xavier_uniform(rng, self.d_in, 4 * H))
        self.add_param("U", np.concatenate([xavier_uniform(rng, H, H) for _ in range(4)], axis=1))
        b = np.zeros(4 * H)
        b[H:2 * H] = 1.0                                    # remember by default (Jozefowicz et al. 2015)
        self.add_param("b", b)
        self.c = None

    def forward(self, x, h=None, c=None) -> np.ndarray:
        """``x (B, d_in)``, ``h, c (B, H)`` (zeros if None) -> ``h_new (B, H)``; the new cell state is ``.c (B, H)``.

        Caches the gate activations and which of ``h``, ``c`` were given.
        """
        x, (h_, c_) = _check_step_inputs(x, [("h", h), ("c", c)], self.d_in, self.d_hidden)
        h_new, self.c, cache = lstm_cell(x, h_, c_, self.params["W"], self.params["U"], self.params["b"])
        self.cache = (cache, h is not None, c is not None)
        return h_new

    def backward(self, dh_new, dc=None):
        """``dh_new (B, H)`` and optionally ``dc (B, H)`` (the gradient arriving at ``.c``).

        Returns ``dx (B, d_in)`` followed by ``dh (B, H)`` if ``h`` was given and
        ``dc (B, H)`` if ``c`` was given (just ``dx`` when neither was).  Adds
        ``dW (d_in, 4H)``, ``dU (H, 4H)``, ``db (4H,)`` into ``grads``.
        """
        cache, has_h, has_c = self.cache
        dh_new = _check_upstream(dh_new, "dh_new", cache[1])
        dc_new = np.zeros_like(dh_new) if dc is None else _check_upstream(dc, "dc", cache[2])
        dx, dh, dc_prev, *param_grads = lstm_cell_backward(dh_new, dc_new, self.params["W"], self.params["U"], cache)
        _accumulate(self.grads, *param_grads)
        out = (dx,) + ((dh,) if has_h else ()) + ((dc_prev,) if has_c else ())
        return out if len(out) > 1 else dx


# ---------------------------------------------------------------- sequences (BPTT)
def _scan(step, x, state, mask, reverse):
    """Run ``step(x_t, state) -> (new_state, cache)`` over time; state is a tuple (h,) or (h, c).

    Returns ``(states (B, T, H), final_state, caches)``.  The Python loop over
    time steps is the recurrence itself: step ``t`` needs the state of step ``t-1``.
    """
    B, T = x.shape[:2]
    H = state[0].shape[-1]
    outputs = np.zeros((B, T, H), dtype=state[0].dtype)    # (B, T, H), zeros at padding
    caches = [None] * T
    for t in (range(T - 1, -1, -1) if reverse else range(T)):
        new_state, caches[t] = step(x[:, t], state)
        if mask is not None:
            keep = mask[:, t, None]                         # (B, 1): padded rows carry the state over
            new_state = tuple(np.where(keep, s_new, s_old) for s_new, s_old in zip(new_state, state))
            outputs[:, t] = np.where(keep, new_state[0], 0.0)
        else:
            outputs[:, t] = new_state[0]
        state = new_state
    return outputs, state, caches


def _scan_backward(step_backward, doutputs, dfinal, caches, mask, reverse, d_in):
    """BPTT for :func:`_scan`. ``dfinal`` is a tuple like the state; returns ``(dx, dinitial_state)``.

    The loop runs the time steps in the opposite order of the forward pass (the point of BPTT).
    """
    B, T = doutputs.shape[:2]
    dx = np.zeros((B, T, d_in), dtype=doutputs.dtype)       # (B, T, d_in)
    dstate = dfinal
    for t in (range(T) if reverse else range(T - 1, -1, -1)):
        if mask is not None:
            keep = mask[:, t, None]                         # (B, 1); output at t is h_t, or 0 if padded
            dnew = (dstate[0] + np.where(keep, doutputs[:, t], 0.0),) + tuple(dstate[1:])
            through = tuple(np.where(keep, d, 0.0) for d in dnew)      # valid rows: through the cell
            carried = tuple(np.where(keep, 0.0, d) for d in dnew)      # padded rows: straight to t-1
            dx[:, t], dprev = step_backward(through, caches[t])
            dstate = tuple(dp + dc for dp, dc in zip(dprev, carried))
        else:
            dnew = (dstate[0] + doutputs[:, t],) + tuple(dstate[1:])
            dx[:, t], dstate = step_backward(dnew, caches[t])
    return dx, dstate


class _Recurrent(Module):
    """Shared sequence logic for :class:`GRU` and :class:`LSTM` (one or two directions)."""

    cell_class = None
    n_states = 1

    def __init__(self, d_in: int, d_hidden: int, bidirectional: bool = False, *, rng=None) -> None:
        super().__init__()
        rng = default_rng(rng)
        self.d_in, self.d_hidden, self.bidirectional = int(d_in), int(d_hidden), bool(bidirectional)
        self.cells = [self.cell_class(d_in, d_hidden, rng=rng)]
        if self.bidirectional:
            self.cells.append(self.cell_class(d_in, d_hidden, rng=rng))

    @property
    def d_out(self) -> int:
        """Width of the output states: ``H``, or ``2H`` when bidirectional."""
        return self.d_hidden * len(self.cells)

    def _check(self, x, initial, mask):
        x = as_float_array(x, "x")
        if x.ndim != 3 or x.shape[2] != self.d_in:
            raise shape_error("x", f"(B, T, d_in={self.d_in})", x)
        B, T = x.shape[:2]
        states = []
        for name, s in initial:
            if s is None:
                states.append(None)
                continue
            s = as_float_array(s, name)
            if s.shape != (B, self.d_out):
                raise shape_error(name, f"(B={B}, {'2*' if self.bidirectional else ''}d_hidden={self.d_out})", s)
            states.append(s)
        if mask is not None:
            mask = check_mask(mask, (B, T))
            mask = np.broadcast_to(mask, (B, T))
        return x, states, mask

    def _run(self, x, states, mask):
        B, H = x.shape[0], self.d_hidden
        outs, finals, self._caches = [], [], []
        for k, cell in enumerate(self.cells):
            init = tuple(np.zeros((B, H), dtype=x.dtype) if s is None else s[:, k * H:(k + 1) * H]
                         for s in states)
            out, final, caches = _scan(self._step(cell), x, init, mask, reverse=(k == 1))
            outs.append(out)
            finals.append(final)
            self._caches.append(caches)
        self.cache = (x.shape, [s is not None for s in states], mask)
        # final states: concatenate the directions, per state kind (h, then c)
        self.final = tuple(np.concatenate([f[j] for f in finals], axis=-1) for j in range(self.n_states))
        return np.concatenate(outs, axis=-1)                # (B, T, H) or (B, T, 2H)

    def _unrun(self, dstates, dfinals):
        shape, given, mask = self.cache
        B, T, _ = shape
        H = self.d_hidden
        dstates = as_float_array(dstates, "dstates")
        if dstates.shape != (B, T, self.d_out):
            raise shape_error("dstates", f"(B={B}, T={T}, {self.d_out})", dstates)
        dx = np.zeros(shape, dtype=dstates.dtype)
        dinit = [[] for _ in range(self.n_states)]
        for k, cell in enumerate(self.cells):
            dfin = tuple(np.zeros((B, H), dtype=dstates.dtype) if d is None else d[:, k * H:(k + 1) * H]
                         for d in dfinals)
            dxk, d0 = _scan_backward(self._step_backward(cell), dstates[:, :, k * H:(k + 1) * H], dfin,
                                     self._caches[k], mask, reverse=(k == 1), d_in=self.d_in)
            dx += dxk
            for j in range(self.n_states):
                dinit[j].append(d0[j])
        out = [dx] + [np.concatenate(dinit[j], axis=-1) for j in range(self.n_states) if given[j]]
        return tuple(out) if len(out) > 1 else dx


class GRU(_Recurrent):
    """GRU over a sequence (optionally bidirectional), trained by backpropagation through time.

    ``forward(x (B, T, d_in), h0=None, mask=None) -> states (B, T, H)`` or
    ``(B, T, 2H)`` when bidirectional (forward direction first).  ``h0`` is
    ``(B, H)`` (``(B, 2H)`` bidirectional: forward then reverse initial state).
    ``mask (B, T)`` bool, True = real token.  The final state (after each
    sequence's last real token; for the reverse direction after ``t = 0``) is
    ``.h_last``.

    ``backward(dstates, dh_last=None) -> dx``, or ``(dx, dh0)`` when ``h0`` was given.
    Parameters live in ``cells[0]`` (forward) and ``cells[1]`` (reverse).
    """

    cell_class = GRUCell
    n_states = 1

    @staticmethod
    def _step(cell):
        W, U, b = cell.params["W"], cell.params["U"], cell.params["b"]

        def step(x_t, state):
            h_new, cache = gru_cell(x_t, state[0], W, U, b)
            return (h_new,), cache
        return step

    @staticmethod
    def _step_backward(cell):
        W, U = cell.params["W"], cell.params["U"]

        def step_backward(dstate, cache):
            dx, dh, *param_grads = gru_cell_backward(dstate[0], W, U, cache)
            _accumulate(cell.grads, *param_grads)
            return dx, (dh,)
        return step_backward

    def forward(self, x, h0=None, mask=None) -> np.ndarray:
        """``x (B, T, d_in)`` -> states ``(B, T, H)``, or ``(B, T, 2H)`` when bidirectional.

        ``h0 (B, H)`` (``(B, 2H)`` bidirectional: forward then reverse) is the
        initial state, zeros if None.  ``mask (B, T)`` (or ``(T,)``), boolean,
        True = real token: padded steps carry the state over and output zeros.
        The final states are ``.h_last (B, H or 2H)``; every step's cache is kept
        for backpropagation through time.
        """
        x, states, mask = self._check(x, [("h0", h0)], mask)
        out = self._run(x, states, mask)
        self.h_last = self.final[0]
        return out

    def backward(self, dstates, dh_last=None):
        """``dstates (B, T, H or 2H)``, optional ``dh_last`` (the gradient arriving at ``.h_last``).

        Returns ``dx (B, T, d_in)``, or ``(dx, dh0)`` when forward was given
        ``h0``.  Adds every step's parameter gradients into the cells' ``grads``.
        """
        return self._unrun(dstates, [dh_last])


class LSTM(_Recurrent):
    """LSTM over a sequence (optionally bidirectional), trained by backpropagation through time.

    ``forward(x (B, T, d_in), h0=None, c0=None, mask=None) -> states (B, T, H)``
    (``2H`` bidirectional); final states ``.h_last``, ``.c_last``.
    ``backward(dstates, dh_last=None, dc_last=None)`` returns ``dx`` followed by
    ``dh0`` and ``dc0`` for whichever initial state was given.
    """

    cell_class = LSTMCell
    n_states = 2

    @staticmethod
    def _step(cell):
        W, U, b = cell.params["W"], cell.params["U"], cell.params["b"]

        def step(x_t, state):
            h_new, c_new, cache = lstm_cell(x_t, state[0], state[1], W, U, b)
            return (h_new, c_new), cache
        return step

    @staticmethod
    def _step_backward(cell):
        W, U = cell.params["W"], cell.params["U"]

        def step_backward(dstate, cache):
            dx, dh, dc, *param_grads = lstm_cell_backward(dstate[0], dstate[1], W, U, cache)
            _accumulate(cell.grads, *param_grads)
            return dx, (dh, dc)
        return step_backward

    def forward(self, x, h0=None, c0=None, mask=None) -> np.ndarray:
        """``x (B, T, d_in)`` -> states ``(B, T, H)``, or ``(B, T, 2H)`` when bidirectional.

        ``h0, c0 (B, H)`` (``(B, 2H)`` bidirectional) are the initial states,
        zeros if None; ``mask (B, T)`` as in :meth:`GRU.forward`.  Final
        states: ``.h_last``, ``.c_last``.
        """
        x, states, mask = self._check(x, [("h0", h0), ("c0", c0)], mask)
        out = self._run(x, states, mask)
        self.h_last, self.c_last = self.final
        return out

    def backward(self, dstates, dh_last=None, dc_last=None):
        """``dstates (B, T, H or 2H)``, optional ``dh_last``, ``dc_last`` (gradients at ``.h_last``, ``.c_last``).

        Returns ``dx (B, T, d_in)`` followed by ``dh0`` and ``dc0`` for whichever
        initial state forward was given.  Parameter gradients are added into
        the cells' ``grads``.
        """
        return self._unrun(dstates, [dh_last, dc_last])
