r"""FlashAttention: exact attention, tiled, with an online softmax.

Papers: Dao, Fu, Ermon, Rudra and Re (2022, NeurIPS), *FlashAttention: Fast and
Memory-Efficient Exact Attention with IO-Awareness*; Dao (2023),
*FlashAttention-2: Faster Attention with Better Parallelism and Work
Partitioning*; Milakov and Gimelshein (2018), *Online normalizer calculation
for softmax*.  Chapter 19.

Shapes: ``q (..., n, d_k)``, ``k (..., m, d_k)``, ``v (..., m, d_v)``; leading
(batch, head) axes broadcast.  The result is *exactly* scaled dot-product
attention (``s = 1/sqrt(d_k)``), computed without ever holding the ``n x m``
score matrix: queries are cut into blocks ``Q_i`` of ``B_r`` rows and keys /
values into blocks ``K_j, V_j`` of ``B_c`` rows.  For one query block, with a
running row maximum ``m``, running normaliser ``l`` and unnormalised output
``Acc``, each key block does

.. math::
    S = s\,Q_i K_j^\top \;(B_r\times B_c),\quad m' = \max(m, \operatorname{rowmax} S),\quad
    \tilde P = e^{S - m'},\\
    l \leftarrow e^{m - m'} l + \operatorname{rowsum}\tilde P,\quad
    Acc \leftarrow e^{m - m'} Acc + \tilde P V_j,\quad m \leftarrow m'

and at the end ``O_i = Acc / l`` and ``LSE_i = m + log l`` — the only softmax
statistic kept (``P = exp(S - LSE)``).  Causal attention skips the key blocks
that lie entirely above the diagonal; with a cached prefix (``m > n``) query
``i`` may see key ``j`` iff ``j <= i + (m - n)``, as in ``causal_mask``.

Backward recomputes each score block from ``LSE`` instead of storing ``P``:

.. math::
    D_i = \operatorname{rowsum}(dO_i \odot O_i),\quad P = e^{S - LSE_i},\quad
    dV_j \mathrel{+}= P^\top dO_i,\quad dP = dO_i V_j^\top,\\
    dS = P \odot (dP - D_i),\quad dQ_i \mathrel{+}= s\, dS K_j,\quad dK_j \mathrel{+}= s\, dS^\top Q_i

Extra memory is ``O(n)`` (``lse``, the output, per-block buffers of
``B_r x B_c``) instead of ``O(n m)``; the FLOPs stay ``O(n m d)`` (plus the
recomputation in the backward).  The Python loops over blocks ARE the
algorithm (on a GPU each query block is a thread block); everything inside a
block is vectorised over the leading axes.  In NumPy the per-block overhead is
a few microseconds of interpreter time per operation, so blocks must be large
(hundreds of rows) for the tiled version to keep up with the naive one.
"""
from __future__ import annotations

import math

import numpy as np

from ..nn.functional import unbroadcast
from ..nn.validate import as_float_array, shape_error
from .scaled_dot_product import check_qkv

__all__ = ["flash_attention", "flash_attention_backward", "DEFAULT_BLOCK_SIZE"]

#: Rows per query block and per key block.  The papers' 64 suits GPU SRAM; in
#: NumPy the interpreter overhead per block dominates unless blocks are large,
#: so ``python -m attention_np.bench efficient`` passes 512 (512 x 512 float32
#: scores are 1 MiB per buffer, still O(1) in n).
DEFAULT_BLOCK_SIZE = 64     # the documented default; the benchmark uses 512, see bench/efficient.py


def _setup(q, k, v, causal, block_size):
    q, k, v, lead = check_qkv(q, k, v)
    n, m = q.shape[-2], k.shape[-2]
    if isinstance(block_size, bool) or int(block_size) != block_size or block_size < 1:
        raise ValueError(f"block_size must be a positive integer, got {block_size!r}")
    if causal and m < n:
        raise ValueError(
            f"causal attention needs at least as many keys as queries (m >= n), got n={n}, m={m}"
        )
    # broadcast views (no copies), so every block has the full leading shape
    q = np.broadcast_to(q, lead + q.shape[-2:])                      # (..., n, d_k)
    k = np.broadcast_to(k, lead + k.shape[-2:])                      # (..., m, d_k)
    v = np.broadcast_to(v, lead + v.shape[-2:])                      # (..., m, d_v)
    return q, k, v, lead, int(block_size)


def _diagonal_mask(i0, i1, j0, j1, offset):
    """Boolean ``(B_r, B_c)`` causal mask of one block: key ``j`` allowed iff ``j <= i + offset``."""
    return np.arange(j0, j1)[None, :] <= np.arange(i0, i1)[:, None] + offset


def _key_end(i1, m, causal, offset):
    """Keys ``j >= i1 + offset`` are above the diagonal for every query row before ``i1``."""
    return min(m, i1 + offset) if causal else m


def flash_attention(q, k, v, causal: bool = False, block_size: int = DEFAULT_BLOCK_SIZE,
                    scale: float | None = None):
    """Return ``(out (..., n, d_v), lse (..., n))``, equal to softmax attention.

    ``q (..., n, d_k)``, ``k (..., m, d_k)``, ``v (..., m, d_v)``; leading axes
    broadcast.  No mask argument: ``causal=True`` lets query ``i`` see keys
    ``j <= i + (m - n)`` (needs ``m >= n``).

    ``lse[..., i]`` is the log-sum-exp of query ``i``'s (scaled, masked)
    scores; the backward needs it.  ``block_size`` is both ``B_r`` and ``B_c``.
    """
    q, k, v, lead, block = _setup(q, k, v, causal, block_size)
    n, m, d_v = q.shape[-2], k.shape[-2], v.shape[-1]
    scale = 1.0 / math.sqrt(q.shape[-1]) if scale is None else float(scale)   # python float keeps float32
    dtype = np.result_type(q, k, v)
    offset = m - n                                                   # cached prefix length (0 for self-attention)
    out = np.empty(lead + (n, d_v), dtype=dtype)                     # (..., n, d_v)
    lse = np.empty(lead + (n,), dtype=dtype)                         # (..., n)
    k_t = np.swapaxes(k, -1, -2)                                     # (..., d_k, m), a view
    # The loops over blocks are the point of FlashAttention (see the module docstring).
    for i0 in range(0, n, block):
        i1 = min(i0 + block, n)
        q_i = q[..., i0:i1, :] * scale                               # (..., B_r, d_k), scale folded into Q
        row_max = np.full(lead + (i1 - i0,), -np.inf, dtype=dtype)   # m, (..., B_r)
        row_sum = np.zeros(lead + (i1 - i0,), dtype=dtype)           # l, (..., B_r)
        acc = np.zeros(lead + (i1 - i0, d_v), dtype=dtype)           # Acc, (..., B_r, d_v)
        j_end = _key_end(i1, m, causal, offset)                      # skip blocks above the diagonal
        for j0 in range(0, j_end, block):
            j1 = min(j0 + block, j_end)
            s = q_i @ k_t[..., :, j0:j1]                             # (..., B_r, d_k) @ (..., d_k, B_c) -> (..., B_r, B_c)
            if causal and j1 - 1 > i0 + offset:                      # block straddles the diagonal
                s = np.where(_diagonal_mask(i0, i1, j0, j1, offset), s, -np.inf)
            # Every row sees key 0 (offset >= 0), which sits in the first block, so
            # row_max is finite from the first block on and no -inf - -inf occurs.
            new_max = np.maximum(row_max, s.max(axis=-1))            # m', (..., B_r)
            alpha = np.exp(row_max - new_max)                        # e^{m - m'}; 0 on the first block
            s -= new_max[..., None]
            p = np.exp(s, out=s)                                     # P~, (..., B_r, B_c), in place
            row_sum = alpha * row_sum + p.sum(axis=-1)               # l, (..., B_r)
            acc *= alpha[..., None]
            acc += p @ v[..., j0:j1, :]                              # (..., B_r, B_c) @ (..., B_c, d_v)
            row_max = new_max
        out[..., i0:i1, :] = acc / row_sum[..., None]                # O_i = Acc / l
        lse[..., i0:i1] = row_max + np.log(row_sum)                  # LSE_i = m + log l
    return out, lse


def flash_attention_backward(dout, q, k, v, out, lse, causal: bool = False,
                             block_size: int = DEFAULT_BLOCK_SIZE, scale: float | None = None):
    """Return ``(dq, dk, dv)`` with the shapes of ``q, k, v``.

    ``dout (..., n, d_v)``; ``q (..., n, d_k)``, ``k (..., m, d_k)``,
    ``v (..., m, d_v)``, ``causal``, ``block_size`` and ``scale`` as in the
    forward; ``out (..., n, d_v)`` and ``lse (..., n)`` are the forward's outputs; score blocks are recomputed
    from ``lse``, so no ``n x m`` array is stored or allocated.  The loop order
    follows FlashAttention-2: key blocks outside (``dK_j, dV_j`` accumulate
    locally), query blocks inside (``dQ_i`` accumulates into ``dq``).
    """
    shapes = (np.shape(q), np.shape(k), np.shape(v))
    q, k, v, lead, block = _setup(q, k, v, causal, block_size)
    n, m, d_k, d_v = q.shape[-2], k.shape[-2], q.shape[-1], v.shape[-1]
    dout, out, lse = as_float_array(dout, "dout"), as_float_array(out, "out"), as_float_array(lse, "lse")
    if dout.shape != lead + (n, d_v):
        raise shape_error("dout", str(lead + (n, d_v)), dout)
    if out.shape != lead + (n, d_v):
        raise shape_error("out", str(lead + (n, d_v)), out)
    if lse.shape != lead + (n,):
        raise shape_error("lse", str(lead + (n,)), lse)
    scale = 1.0 / math.sqrt(d_k) if scale is None else float(scale)
    dtype = np.result_type(q, k, v, dout)
    offset = m - n
    delta = np.sum(dout * out, axis=-1)                              # D, (..., n)
    dq = np.zeros(lead + (n, d_k), dtype=dtype)                      # (..., n, d_k)
    dk = np.zeros(lead + (m, d_k), dtype=dtype)                      # (..., m, d_k)
    dv = np.zeros(lead + (m, d_v), dtype=dtype)                      # (..., m, d_v)
    # The loops over blocks are the point of FlashAttention (see the module docstring).
    for j0 in range(0, m, block):
        j1 = min(j0 + block, m)
        k_j, v_j = k[..., j0:j1, :], v[..., j0:j1, :]                # (..., B_c, d_k), (..., B_c, d_v)
        k_jt, v_jt = np.swapaxes(k_j, -1, -2), np.swapaxes(v_j, -1, -2)
        dk_j = np.zeros(lead + (j1 - j0, d_k), dtype=dtype)          # (..., B_c, d_k)
        dv_j = np.zeros(lead + (j1 - j0, d_v), dtype=dtype)          # (..., B_c, d_v)
        # causal: query i sees key j0 only if i + offset >= j0; earlier query blocks are skipped
        first = max(0, j0 - offset) // block * block if causal else 0
        for i0 in range(first, n, block):
            i1 = min(i0 + block, n)
            q_i = q[..., i0:i1, :]                                   # (..., B_r, d_k)
            dout_i = dout[..., i0:i1, :]                             # (..., B_r, d_v)
            s = (q_i * scale) @ k_jt                                 # (..., B_r, B_c), recomputed
            if causal and j1 - 1 > i0 + offset:                      # block straddles the diagonal:
                s = np.where(_diagonal_mask(i0, i1, j0, j1, offset), s, -np.inf)  # mask before exp (no overflow)
            s -= lse[..., i0:i1, None]
            p = np.exp(s, out=s)                                     # P = exp(S - LSE), (..., B_r, B_c)
            dv_j += np.swapaxes(p, -1, -2) @ dout_i                  # (..., B_c, B_r) @ (..., B_r, d_v)
            dp = dout_i @ v_jt                                       # dP, (..., B_r, B_c)
            dp -= delta[..., i0:i1, None]
            ds = p * dp                                              # dS = P (dP - D_i), (..., B_r, B_c)
            ds *= scale                                              # fold the 1/sqrt(d_k) into dS
            dq[..., i0:i1, :] += ds @ k_j                            # (..., B_r, B_c) @ (..., B_c, d_k)
            dk_j += np.swapaxes(ds, -1, -2) @ q_i                    # (..., B_c, B_r) @ (..., B_r, d_k)
        dk[..., j0:j1, :] = dk_j
        dv[..., j0:j1, :] = dv_j
    return unbroadcast(dq, shapes[0]), unbroadcast(dk, shapes[1]), unbroadcast(dv, shapes[2])
