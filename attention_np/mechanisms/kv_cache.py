r"""Causal decoding with a key/value cache for :class:`MultiHeadAttention`.

Vaswani et al. (2017), *Attention Is All You Need* (masked decoder
self-attention); the cache itself is the standard inference technique analysed
by Shazeer (2019), *Fast Transformer Decoding: One Write-Head is All You Need*.

Training runs all ``n`` positions at once under the causal mask (allowed iff
``j <= i``).  Generation produces one token at a time, and the keys and values
of earlier tokens never change, so they are kept:

* **prefill**: run the prompt ``x_{0..s-1}`` once, store ``K, V (B, H_kv, s, d_head)``;
* **decode** step ``t``: project only the new token, ``q_t, k_t, v_t (B, H, 1, d_head)``,
  rotate ``q_t`` and ``k_t`` by RoPE at the *absolute* position ``t`` (not 0),
  append ``k_t, v_t`` to the cache and attend over all ``t + 1`` cached keys.
  One query over past-only keys needs no mask; a block of ``s > 1`` new queries
  over ``m`` keys uses ``causal_mask(s, m)``: allowed iff ``j <= i + (m - s)``.

Each step costs ``O(t d_head)`` per head instead of re-running the prefix.  The
cache holds ``2 * layers * H_kv * d_head * T`` numbers per sequence, which is
why GQA/MQA (fewer key/value heads) shrink it.

Inference only: nothing here has a backward (training uses the full causal
forward, to which this is equal to rounding error).
"""
from __future__ import annotations

import numpy as np

from ..nn.validate import as_float_array, shape_error
from .multihead import MultiHeadAttention

__all__ = ["TokenCache", "KVCache", "cached_attention", "prefill", "decode_step", "incremental_forward", "kv_cache_bytes"]


def kv_cache_bytes(n_layers: int, n_kv_heads: int, d_head: int, n_tokens: int, bytes_per_element: int = 2) -> int:
    """Bytes of a KV cache for one sequence: ``2 * layers * H_kv * d_head * tokens * bytes``.

    ``bytes_per_element`` is 2 for float16/bfloat16, 4 for float32.  Returns an int.
    """
    return 2 * int(n_layers) * int(n_kv_heads) * int(d_head) * int(n_tokens) * int(bytes_per_element)


class TokenCache:
    """Arrays that grow along their token axis (the second to last), filled left to right.

    The storage shared by :class:`KVCache` (keys and values of MHA) and
    :class:`~attention_np.mechanisms.latent.LatentCache` (the latents of MLA):
    each subclass names its arrays and their axes in ``fields``.  With
    ``max_len`` the buffers are allocated once (on the first append) and filled
    in place, as a serving system would; without it they grow by concatenation.
    ``length`` counts the cached tokens; ``reset`` empties the cache;
    ``nbytes`` is the memory of the filled part.
    """

    fields: tuple = ()          # ((name, axis labels), ...), the token axis labelled "s", second to last

    def __init__(self, max_len: int | None = None) -> None:
        if max_len is not None and (int(max_len) != max_len or max_len < 1):
            raise ValueError(f"max_len must be a positive integer or None, got {max_len!r}")
        self.max_len = None if max_len is None else int(max_len)
        self._buffers = None
        self.length = 0

    def reset(self) -> None:
        """Empty the cache (length 0); the next append starts a new sequence (and may change shape or dtype)."""
        self._buffers = None
        self.length = 0

    def _filled(self, i: int) -> np.ndarray | None:
        """The filled part of buffer ``i`` (a view), None before the first append."""
        return None if self._buffers is None else self._buffers[i][..., : self.length, :]

    @property
    def nbytes(self) -> int:
        """Bytes held by the filled part of the cache."""
        return 0 if self._buffers is None else int(sum(self._filled(i).nbytes for i in range(len(self.fields))))

    def _append(self, *arrays) -> tuple:
        """Validate ``arrays`` (one per field, ``s`` new tokens each), store them, return every filled view."""
        arrays = [as_float_array(a, name) for a, (name, _) in zip(arrays, self.fields)]
        first, first_axes = arrays[0], self.fields[0][1]
        for i, (a, (name, axes)) in enumerate(zip(arrays, self.fields)):
            if a.ndim != len(axes):
                raise shape_error(name, f"({', '.join(axes)})", a)
            # an axis named like one of the first array's (B, s, ...) must have its size
            sizes = dict(zip(first_axes, first.shape)) if i else {}
            if any(size != sizes.get(label, size) for label, size in zip(axes, a.shape)):
                labels = [f"{label}={sizes[label]}" if label in sizes else label for label in axes]
                raise shape_error(name, f"({', '.join(labels)})", a)
            if self._buffers is not None:                    # every axis but the token axis is fixed
                held = self._buffers[i]
                if a.shape[:-2] + a.shape[-1:] != held.shape[:-2] + held.shape[-1:]:
                    labels = [f"{label}={size}" if label != "s" else "s" for label, size in zip(axes, held.shape)]
                    raise shape_error(name, f"({', '.join(labels)})", a)
        if self._buffers is not None and any(a.dtype != b.dtype for a, b in zip(arrays, self._buffers)):
            names = " and ".join(name for name, _ in self.fields)
            raise ValueError(f"{names} must have the cache's dtype {self._buffers[0].dtype}, got {first.dtype}: "
                             f"convert them (or start a new cache) instead of silently changing precision")
        s = first.shape[-2]
        if self.max_len is None:
            # a copy on the first append: the cache must not change when the caller reuses its arrays
            self._buffers = ([a.copy() for a in arrays] if self._buffers is None else
                             [np.concatenate([b, a], axis=-2) for b, a in zip(self._buffers, arrays)])
        else:
            if self.length + s > self.max_len:
                raise ValueError(f"cache overflow: {self.length} + {s} tokens exceed max_len={self.max_len}")
            if self._buffers is None:
                self._buffers = [np.zeros(a.shape[:-2] + (self.max_len, a.shape[-1]), dtype=a.dtype)
                                 for a in arrays]                                  # (..., max_len, d)
            for b, a in zip(self._buffers, arrays):
                b[..., self.length:self.length + s, :] = a
        self.length += s
        return tuple(self._filled(i) for i in range(len(self.fields)))


class KVCache(TokenCache):
    """Keys and values of one attention layer, ``(B, H_kv, T, d_head)`` each, filled left to right.

    With ``max_len`` the buffers are allocated once (on the first append) and
    filled in place, as a serving system would; without it they grow by
    concatenation.  ``keys``/``values`` are views of the filled part.
    """

    fields = (("k", ("B", "H_kv", "s", "d_head")), ("v", ("B", "H_kv", "s", "d_head")))

    @property
    def keys(self) -> np.ndarray | None:
        """The cached keys ``(B, H_kv, T, d_head)``, a view of the filled part; None before the first append."""
        return self._filled(0)

    @property
    def values(self) -> np.ndarray | None:
        """The cached values ``(B, H_kv, T, d_head)``, a view of the filled part; None before the first append."""
        return self._filled(1)

    def append(self, k, v):
        """Append ``k, v (B, H_kv, s, d_head)``; return all cached ``(keys, values)``, each ``(B, H_kv, T + s, d_head)``.

        ``B``, ``H_kv``, ``d_head`` and the dtype must match what the cache
        already holds; with ``max_len`` the total may not exceed it.
        """
        return self._append(k, v)


def cached_attention(mha: MultiHeadAttention, x, cache: KVCache, mask=None) -> np.ndarray:
    """Self-attention of ``s`` new tokens ``x (B, s, d_model)`` that follow the cached prefix.

    The new tokens sit at absolute positions ``cache.length .. cache.length + s - 1``
    (RoPE uses them); their keys/values are appended to ``cache``; each new query
    attends causally over everything cached.  ``mask`` (optional, boolean,
    True = may attend, e.g. a key padding mask) is ``(s, m)``, ``(B, s, m)`` or
    per head ``(B, H, s, m)``, with ``m`` the cache length after the append.  Returns ``(B, s, d_model)``; sets ``mha.weights (B, H, s, m)``.
    """
    x = mha._check_input(x, "x")
    batch, s = x.shape[0], x.shape[1]
    positions = np.arange(cache.length, cache.length + s)        # (s,) absolute positions
    q = mha.project_queries(x, positions)                        # (B, H, s, d_head)
    k_new, v_new = mha.project_keys_values(x, positions)         # (B, H_kv, s, d_head)
    k, v = cache.append(k_new, v_new)                            # (B, H_kv, m, d_head), m = length
    m = cache.length
    # one new query sees only past keys: no mask needed; a block needs j <= i + (m - s)
    mask = mha.head_mask(mask, batch, s, m, causal=s > 1)
    y, _, weights = mha.attend(q, k, v, mask)                    # (B, s, d_model)
    mha.weights = weights                                        # (B, H, s, m)
    return y


def prefill(mha: MultiHeadAttention, prompt, cache: KVCache, mask=None) -> np.ndarray:
    """Run the prompt ``(B, s, d_model)`` through ``mha`` and fill the (empty) cache.

    Returns ``(B, s, d_model)``; ``mask`` as in :func:`cached_attention`.
    """
    if cache.length:
        raise ValueError(f"prefill needs an empty cache, got one holding {cache.length} tokens")
    return cached_attention(mha, prompt, cache, mask=mask)


def decode_step(mha: MultiHeadAttention, x_t, cache: KVCache, mask=None) -> np.ndarray:
    """One new token ``x_t (B, 1, d_model)`` at position ``cache.length``; returns ``(B, 1, d_model)``."""
    x_t = as_float_array(x_t, "x_t")
    if x_t.ndim != 3 or x_t.shape[1] != 1:
        raise shape_error("x_t", f"(B, 1, d_model={mha.d_model})", x_t)
    return cached_attention(mha, x_t, cache, mask=mask)


def incremental_forward(mha: MultiHeadAttention, x, prompt_len: int, cache: KVCache | None = None) -> np.ndarray:
    """Prefill ``x[:, :prompt_len]``, then decode the remaining positions one at a time.

    Returns ``(B, n, d_model)``, equal (to rounding) to ``mha(x, causal=True)``.
    """
    x = mha._check_input(x, "x")
    n = x.shape[1]
    if int(prompt_len) != prompt_len or not 1 <= prompt_len <= n:
        raise ValueError(f"prompt_len must be an integer in [1, n={n}], got {prompt_len!r}")
    cache = KVCache() if cache is None else cache
    outputs = [prefill(mha, x[:, :prompt_len], cache)]           # (B, prompt_len, d_model)
    for t in range(prompt_len, n):                               # token-by-token decoding: the loop is the point
        outputs.append(decode_step(mha, x[:, t:t + 1], cache))   # (B, 1, d_model)
    return np.concatenate(outputs, axis=1)                       # (B, n, d_model)
