"""Naive SDPA vs FlashAttention vs linear attention: time and peak extra memory (printed, never asserted).

One head, ``q, k, v`` of shape ``(n, d)`` (default d = 64, float32), forward
pass only, for several sequence lengths n.  Time is the best of ``--repeats``
runs; peak extra memory is the peak that ``tracemalloc`` sees during one
further run (the inputs are allocated before tracing starts, so this is what
the method itself allocates; NumPy reports its buffers to tracemalloc).

BLAS threads: by default the measurements run in a child process with one
BLAS thread (``--threads 1``) for all three methods.  Tiled attention issues
hundreds of small matrix products; a multi-threaded BLAS on a busy 2-core
machine makes each small call wait for a second thread, which turns a fair
comparison into a measurement of scheduler contention.  ``--threads 0`` keeps
whatever the environment gives.

Targets at the largest n (issue 7, on a 2-core machine): flash's peak extra
memory <= 1/8 of naive and its time <= 2x naive; linear attention's time grows
linearly in n.  Naive SDPA holds several n x n arrays (scores, exponentials,
weights); flash holds O(block_size^2 + n d); non-causal linear attention holds
O(n d + d^2).

    python -m attention_np.bench efficient [--sizes 1024 4096 8192] [--d 64]
        [--block-size B] [--repeats R] [--dtype float32] [--causal] [--threads T]
"""
from __future__ import annotations

import argparse
import os
import subprocess
import sys
import time
import tracemalloc

import numpy as np

from ..mechanisms.flash import flash_attention
from ..mechanisms.linear_attention import linear_attention
from ..mechanisms.scaled_dot_product import scaled_dot_product_attention
from ..nn.functional import causal_mask

# flash_attention's default block (64, as on a GPU's on-chip memory) leaves NumPy dominated by
# Python overhead per block; 512 keeps each tile's matmul large enough to run at BLAS speed.
BENCH_BLOCK_SIZE = 512

METHODS = ("naive", "flash", "linear")
# BLAS libraries read these when they are loaded, so a thread count needs a fresh process.
_THREAD_VARS = ("OPENBLAS_NUM_THREADS", "OMP_NUM_THREADS", "MKL_NUM_THREADS", "BLIS_NUM_THREADS",
                "VECLIB_MAXIMUM_THREADS")
_CHILD_FLAG = "ATTENTION_NP_BENCH_BLAS_THREADS"


def _peak_bytes(fn) -> int:
    """Peak bytes allocated (as seen by tracemalloc) while ``fn()`` runs."""
    tracemalloc.start()
    try:
        fn()
        return tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()


def _best_time(fn, repeats: int, min_total: float = 0.1, max_runs: int = 50) -> float:
    """Best of at least ``repeats`` runs (more, up to ``max_runs``, while under ``min_total`` seconds)."""
    times = []
    while len(times) < repeats or (sum(times) < min_total and len(times) < max_runs):
        t0 = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t0)
    return min(times)


def _rerun_with_threads(argv, threads: int) -> int:
    """Run this benchmark again in a child process whose BLAS uses ``threads`` threads."""
    env = dict(os.environ, **{var: str(threads) for var in _THREAD_VARS}, **{_CHILD_FLAG: str(threads)})
    proc = subprocess.run([sys.executable, "-m", "attention_np.bench", "efficient", *argv],
                          env=env, capture_output=True, text=True)
    print(proc.stdout, end="")
    if proc.stderr:
        print(proc.stderr, end="", file=sys.stderr)
    return proc.returncode


def measure(n: int, d: int = 64, dtype=np.float32, block_size: int = BENCH_BLOCK_SIZE,
            repeats: int = 2, causal: bool = False, seed: int = 0) -> dict:
    """Return ``{method: {"seconds": float, "peak_bytes": int}}`` for the three methods at length ``n``."""
    rng = np.random.default_rng(seed)
    q, k, v = (rng.standard_normal((n, d)).astype(dtype) for _ in range(3))
    mask = causal_mask(n) if causal else None             # built outside the measured region

    runs = {
        "naive": lambda: scaled_dot_product_attention(q, k, v, mask=mask),
        "flash": lambda: flash_attention(q, k, v, causal=causal, block_size=block_size),
        "linear": lambda: linear_attention(q, k, v, causal=causal),
    }
    results = {}
    for name in METHODS:
        peak = _peak_bytes(runs[name])                    # also serves as the warm-up run
        results[name] = {"seconds": _best_time(runs[name], repeats), "peak_bytes": peak}
    return results


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(prog="python -m attention_np.bench efficient", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--sizes", type=int, nargs="+", default=[1024, 4096, 8192], metavar="N")
    parser.add_argument("--d", type=int, default=64)
    parser.add_argument("--block-size", type=int, default=BENCH_BLOCK_SIZE)
    parser.add_argument("--repeats", type=int, default=2)
    parser.add_argument("--dtype", choices=["float32", "float64"], default="float32")
    parser.add_argument("--causal", action="store_true")
    parser.add_argument("--threads", type=int, default=1, help="BLAS threads (0: leave the default)")
    argv = list(sys.argv[1:] if argv is None else argv)
    args = parser.parse_args(argv)
    if min(args.sizes) < 1 or args.d < 1 or args.repeats < 1 or args.block_size < 1 or args.threads < 0:
        parser.error("sizes, d, repeats and block-size must be positive, threads non-negative")
    if args.threads and os.environ.get(_CHILD_FLAG) != str(args.threads):
        return _rerun_with_threads(argv, args.threads)
    threads = f"{args.threads} BLAS thread(s)" if args.threads else "default BLAS threads"

    mib = 2.0 ** 20
    print(f"one head, d = {args.d}, {args.dtype}, {'causal' if args.causal else 'non-causal'}, forward only; "
          f"flash block size {args.block_size}; {threads}; time = best of >= {args.repeats} runs, "
          f"memory = tracemalloc peak")
    print(f"{'n':>6} | {'naive ms':>9} {'flash ms':>9} {'linear ms':>9} | "
          f"{'naive MiB':>9} {'flash MiB':>9} {'linear MiB':>10} | {'flash/naive time':>16} {'flash/naive mem':>15}")
    rows = []
    for n in args.sizes:
        r = measure(n, args.d, np.dtype(args.dtype), args.block_size, args.repeats, args.causal)
        rows.append((n, r))
        t = {name: r[name]["seconds"] for name in METHODS}
        m = {name: r[name]["peak_bytes"] for name in METHODS}
        print(f"{n:>6} | {1e3 * t['naive']:9.1f} {1e3 * t['flash']:9.1f} {1e3 * t['linear']:9.1f} | "
              f"{m['naive'] / mib:9.2f} {m['flash'] / mib:9.2f} {m['linear'] / mib:10.2f} | "
              f"{t['flash'] / t['naive']:16.2f} {m['flash'] / max(m['naive'], 1):15.4f}")

    n, r = rows[-1]
    time_ratio = r["flash"]["seconds"] / r["naive"]["seconds"]
    mem_ratio = r["flash"]["peak_bytes"] / max(r["naive"]["peak_bytes"], 1)
    print(f"at n = {n}: flash peak memory / naive = {mem_ratio:.4f} (target <= 0.125): {mem_ratio <= 0.125}")
    print(f"at n = {n}: flash time / naive = {time_ratio:.2f} (target <= 2): {time_ratio <= 2.0}")
    if len(rows) > 1:
        (n0, r0) = rows[0]
        growth = r["linear"]["seconds"] / r0["linear"]["seconds"]
        print(f"linear attention time grows {growth:.1f}x for {n / n0:.0f}x longer sequences "
              f"(naive: {r['naive']['seconds'] / r0['naive']['seconds']:.1f}x)")
    return 0
