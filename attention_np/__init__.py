"""attention_np — attention mechanisms from first principles, in NumPy, with hand-written backward passes.

Quick tour::

    import numpy as np
    from attention_np import scaled_dot_product_attention, scaled_dot_product_attention_backward, causal_mask
    rng = np.random.default_rng(0)
    q, k, v = rng.standard_normal((3, 2, 5, 8))                    # each (B=2, n=5, d=8)
    out, weights = scaled_dot_product_attention(q, k, v, mask=causal_mask(5))
    dq, dk, dv = scaled_dot_product_attention_backward(np.ones_like(out), q, k, v, weights)

The contract every module keeps (and why)
-----------------------------------------
* **Rows are tokens.** Arrays are ``(..., n, d)``: batch (and head) axes first,
  then positions, then features; weights are stored ``(d_in, d_out)`` so that a
  layer is ``x @ W``.  RNN-era papers write columns; docstrings give the paper's
  symbol and the code follows this rule.
* **Functional pairs** take plain arrays and hide nothing in a global cache.
  A backward's arguments are the upstream gradient, then the forward's array
  arguments it needs in the forward's order (inputs, then parameters), then
  what the forward returned that it needs (weights, ``lse``, a cache object):
  ``dq, dk, dv = scaled_dot_product_attention_backward(dout, q, k, v, weights)``,
  ``context_pooling_backward(dpooled, H, W, u, weights, U)``.  Settings
  (``axis``, ``scale``, ``causal``, ``tau``, ``method``, ``window``) keep their
  forward names and can be passed by keyword; a forward with two outputs that
  carry gradient takes both upstream gradients first
  (``lstm_cell_backward(dh_new, dc_new, W, U, cache)``).  Why: every
  signature reads the same way: what arrives, what went in, what came out.
* **A backward returns a flat tuple**: the input gradients in order, then the
  parameter gradients in order, each shaped like its argument (one array when
  there is one gradient).  Every parameter gets its gradient, even one the
  backward did not need to read (``context_pooling_backward`` returns ``db``).
  Only a forward that takes its parameters as one ``params`` dict returns one
  dict of their gradients, same keys, in that position
  (``soft_attention_backward -> (dfeatures, dstate, dparams)``).  Why: a tuple
  unpacks in the order of the forward's arguments; a dict only where the
  parameters already travel as one.  Losses start the chain, so their
  backward takes the forward's arguments and ``dloss=1.0``.
* **Modules** (``Module``) own ``params`` and ``grads`` with the same keys;
  ``forward`` caches, ``backward(dout)`` *adds* parameter gradients (a tied or
  reused weight sums its contributions) and returns one gradient per
  floating-point array the caller passed to ``forward``, in argument order:
  one array for one, a tuple for several, ``None`` when the inputs are integer
  ids; masks, positions and ids get none (``GRU(x)`` gives ``dx``,
  ``GRU(x, h0)`` gives ``(dx, dh0)``).  Why: what you passed is what you get a
  gradient for.  ``backward`` before ``forward`` is a ``RuntimeError``; a
  ``dout`` whose shape is not the output's is a ``ValueError``.
* **Ranks.** Attention modules over a sequence take ``x (n, d)`` as well as
  ``x (B, n, d)`` and give outputs, ``.weights`` and input gradients of the
  rank they were given; a ``context (1, m, d)`` is shared by a batch of
  queries (its gradient is summed back to ``(1, m, d)``).  Why: they are built
  on scaled dot-product attention, whose leading axes broadcast.
* **Decoding caches** are mutable objects with ``append``, ``length``,
  ``reset``, ``nbytes`` and an optional ``max_len`` (buffers filled in place):
  ``KVCache`` for ``MultiHeadAttention``, ``LatentCache`` for
  ``MultiHeadLatentAttention``; a decoding call appends to the cache it is
  given.  Why: one decoding loop for both, and a serving system's
  preallocated buffer.
* **Names.** ``v``/``values`` always means the values; a learned score vector
  is ``w`` (additive attention's ``w`` is Bahdanau's :math:`v_a`).  Where a
  paper's symbol clashes with a name here, the code follows this contract and
  the docstring gives the paper's symbol.  Why: one name, one meaning, in
  every chapter.
* **Masks are boolean, True = may attend.**  Functional attention takes masks of
  at most two axes ``(n, m)``/``(m,)`` or with one axis per score axis; a
  three-axis mask against four-axis scores is refused, because NumPy would pair
  the batch axis with the head axis.  Modules that hide their heads take
  ``(n, m)``, ``(B, n, m)`` or ``(B, H, n, m)``.  ``causal=False`` is the default
  everywhere; a fully masked row gives zero weights and a zero output.
* **Dtypes.** Parameters are float64 unless ``astype`` converts them; every
  module returns the floating dtype of its inputs (float32 in, float32 out).
* **Errors.** Bad input is a ``ValueError`` naming the argument, the expected
  shape and the received one; sizes must be positive integers; an empty
  sequence is an error, not a NaN.
* **Randomness** only through an explicit ``rng = np.random.default_rng(seed)``.
* Constructors take sizes first, then options, then ``rng`` as a
  keyword-only argument (``rng=np.random.default_rng(0)``).  Why: a positional
  call can never shift a generator into an option.
"""
from .nn import (
    Module, Linear, LayerNorm, Embedding, Dropout,
    softmax, softmax_backward, masked_softmax, log_softmax, log_softmax_backward,
    causal_mask, padding_mask, cross_entropy, cross_entropy_backward,
)
from .mechanisms.scaled_dot_product import (
    scaled_dot_product_attention, scaled_dot_product_attention_backward,
)

__version__ = "0.1.0"

__all__ = [
    "Module", "Linear", "LayerNorm", "Embedding", "Dropout",
    "softmax", "softmax_backward", "masked_softmax", "log_softmax", "log_softmax_backward",
    "causal_mask", "padding_mask", "cross_entropy", "cross_entropy_backward",
    "scaled_dot_product_attention", "scaled_dot_product_attention_backward",
    "__version__",
]
