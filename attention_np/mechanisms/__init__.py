"""One module per attention mechanism (see the chapter map in the README)."""
from .scaled_dot_product import scaled_dot_product_attention, scaled_dot_product_attention_backward

__all__ = ["scaled_dot_product_attention", "scaled_dot_product_attention_backward"]
