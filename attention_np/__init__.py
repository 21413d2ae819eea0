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
* **Functional pairs** take plain arrays; the backward receives what it needs
  from the forward explicitly (``dq, dk, dv = ..._backward(dout, q, k, v,
  weights)``) and returns input gradients in input order.  Nothing is hidden in
  a global cache, so a reader can see every dependency.
* **Modules** (``Module``) own ``params`` and ``grads`` with the same keys;
  ``forward`` caches, ``backward(dout)`` *adds* parameter gradients (a tied or
  reused weight sums its contributions) and returns the input gradients: one
  array for one input, a tuple for several, ``None`` when the inputs are
  integer ids.  ``backward`` before ``forward`` is a ``RuntimeError``; a ``dout``
  whose shape is not the output's is a ``ValueError``.
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
* Constructors take sizes first, then options, then ``rng`` (a keyword).
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
