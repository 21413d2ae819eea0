"""attention_np — attention mechanisms from first principles, in NumPy, with hand-written backward passes.

Quick tour::

    import numpy as np
    from attention_np import scaled_dot_product_attention, scaled_dot_product_attention_backward, causal_mask
    rng = np.random.default_rng(0)
    q, k, v = rng.standard_normal((3, 2, 5, 8))                    # each (B=2, n=5, d=8)
    out, weights = scaled_dot_product_attention(q, k, v, mask=causal_mask(5))
    dq, dk, dv = scaled_dot_product_attention_backward(np.ones_like(out), q, k, v, weights)
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
