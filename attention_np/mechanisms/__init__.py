"""One module per attention mechanism, named as in the book's chapter map.

==========================  ===========================================  ==========
module                      what it implements                           chapter
==========================  ===========================================  ==========
``pooling``                 weighted averages, Nadaraya–Watson pooling   01
``scaled_dot_product``      SDPA, masks, stable softmax                  02
``additive``                Bahdanau additive attention                  03
``soft``                    Show-Attend-Tell soft attention              04
``hard``                    stochastic hard attention, REINFORCE, Gumbel 05
``global_attention``        Luong global attention                       06
``local``                   Luong local-m / local-p                      07
``self_attention``          single-head self-attention                   08
``positional``              sinusoidal, relative (Shaw), RoPE, ALiBi     09
``cross``                   encoder–decoder attention                    10
``multihead``               MHA, GQA, MQA                                11
``kv_cache``                causal decoding with a KV cache              12
``latent``                  DeepSeek-V2 multi-head latent attention      13
``memory``                  end-to-end memory networks                   14
``adaptive``                adaptive attention, visual sentinel          15
``sparse``                  sparsemax, structured sparsity patterns      16
``hierarchical``            hierarchical attention networks              17
``temporal``                temporal attention over video frames         18
``flash``, ``linear_attention``  FlashAttention, linear attention, Linformer  19
``transformer``             a tiny Transformer                           20
==========================  ===========================================  ==========

The classes and most functional pairs are re-exported here; helpers whose
names would be ambiguous across mechanisms stay in their modules.
"""
import sys as _sys

from .scaled_dot_product import scaled_dot_product_attention, scaled_dot_product_attention_backward
from .pooling import NadarayaWatson, attention_pooling, attention_pooling_backward, nadaraya_watson, nadaraya_watson_backward
from .additive import AdditiveAttention, additive_attention, additive_attention_backward
from .soft import SoftAttention, doubly_stochastic_penalty, soft_attention, soft_attention_backward
from .hard import HardAttention, gumbel_softmax, gumbel_softmax_backward, reinforce_logit_gradient
from .global_attention import GlobalAttention
from .local import LocalAttention
from .self_attention import SelfAttention, self_attention, self_attention_backward
from .positional import (
    RelativeSelfAttention, alibi_bias, alibi_slopes, rope, rope_backward, sinusoidal_encoding,
)
from .cross import CrossAttention, cross_attention, cross_attention_backward
from .multihead import MultiHeadAttention, merge_heads, repeat_kv, split_heads
from .kv_cache import KVCache
from .latent import LatentCache, MultiHeadLatentAttention
from .memory import MemoryNetwork, position_encoding
from .adaptive import AdaptiveAttention, VisualSentinel
from .sparse import (
    bigbird_mask, fixed_mask, longformer_mask, sliding_window_mask, sparsemax, sparsemax_attention,
    sparsemax_attention_backward, sparsemax_backward, strided_mask,
)
from .hierarchical import AttentionPooling, HierarchicalAttention
from .temporal import TemporalAttention
from .flash import flash_attention, flash_attention_backward
from .linear_attention import LinformerAttention, linear_attention, linear_attention_backward
from .transformer import FeedForward, TinyTransformer, TransformerBlock

_SUBMODULES = {
    "scaled_dot_product", "pooling", "additive", "soft", "hard", "global_attention", "local", "self_attention",
    "positional", "cross", "multihead", "kv_cache", "latent", "memory", "adaptive", "sparse", "hierarchical",
    "temporal", "flash", "linear_attention", "transformer",
}
# ``self_attention`` and ``linear_attention`` name both a module and its main function.  The package
# attribute is the *function* (``from attention_np.mechanisms import linear_attention`` gives what a user
# means); the modules stay importable by their full dotted path, e.g.
# ``from attention_np.mechanisms.linear_attention import linear_attention_backward``.
__all__ = sorted(name for name in dir()
                 if not name.startswith("_") and (name not in _SUBMODULES or callable(globals()[name])
                                                  and not isinstance(globals()[name], type(_sys))))
