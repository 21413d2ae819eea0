"""Time SDPA forward+backward against a matmul-only lower bound (printed, never asserted).

The lower bound times the same six matrix products alone (``Q Kᵀ`` and ``P V``
forward; ``dO Vᵀ``, ``Pᵀ dO``, ``dS K`` and ``dSᵀ Q`` backward).  Everything
else — scaling, the stable softmax, its backward — is elementwise work on the
``n × m`` matrix, so the ratio says how much that overhead costs.  Target: ≤ 3.

    python -m attention_np.bench sdpa [--shape B H n d] [--repeats R]
"""
from __future__ import annotations

import argparse
import time

import numpy as np

from ..mechanisms.scaled_dot_product import (
    scaled_dot_product_attention, scaled_dot_product_attention_backward,
)


def _median_time(fn, repeats: int) -> float:
    fn()                                                     # warm-up (allocations, BLAS threads)
    times = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t0)
    return float(np.median(times))


def measure(shape=(4, 8, 512, 64), dtype=np.float32, repeats: int = 5, seed: int = 0) -> dict:
    """Return median seconds for SDPA fwd+bwd and for the six matmuls alone, and their ratio."""
    rng = np.random.default_rng(seed)
    q, k, v, dout = (rng.standard_normal(shape).astype(dtype) for _ in range(4))
    kt = np.swapaxes(k, -1, -2)

    def full():
        out, w = scaled_dot_product_attention(q, k, v)
        scaled_dot_product_attention_backward(dout, q, k, v, w)

    _, p = scaled_dot_product_attention(q, k, v)             # real (..., n, m) weights as the operand
    pt = np.swapaxes(p, -1, -2)

    def matmuls():
        q @ kt
        p @ v
        dout @ np.swapaxes(v, -1, -2)
        pt @ dout
        p @ k
        pt @ q

    t_full = _median_time(full, repeats)
    t_mm = _median_time(matmuls, repeats)
    return {"shape": tuple(shape), "dtype": np.dtype(dtype).name, "sdpa_seconds": t_full,
            "matmul_seconds": t_mm, "ratio": t_full / t_mm}


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(prog="python -m attention_np.bench sdpa", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--shape", type=int, nargs=4, default=[4, 8, 512, 64], metavar=("B", "H", "n", "d"))
    parser.add_argument("--repeats", type=int, default=5)
    args = parser.parse_args(argv)
    print(f"SDPA forward+backward vs the same six matmuls alone, q/k/v shape {tuple(args.shape)}, "
          f"median of {args.repeats}")
    print(f"{'dtype':>8} {'sdpa ms':>10} {'matmul ms':>10} {'ratio':>7}  (target <= 3)")
    for dtype in (np.float32, np.float64):
        r = measure(tuple(args.shape), dtype, args.repeats)
        print(f"{r['dtype']:>8} {1e3 * r['sdpa_seconds']:10.1f} {1e3 * r['matmul_seconds']:10.1f} {r['ratio']:7.2f}")
    return 0
