"""Smoke test of ``python -m attention_np.bench efficient`` on tiny sizes (structure, never timings)."""
import re

import numpy as np

from attention_np.bench.__main__ import main as bench_main
from attention_np.bench import efficient
from attention_np.bench.efficient import METHODS, main, measure

TINY = ["--sizes", "32", "80", "--d", "8", "--block-size", "16", "--repeats", "1"]


def test_measure_reports_time_and_memory_per_method():
    n = 128
    r = measure(n, d=8, dtype=np.float64, block_size=32, repeats=1)
    assert set(r) == set(METHODS) == {"naive", "flash", "linear"}
    for name in METHODS:
        assert r[name]["seconds"] > 0
        assert isinstance(r[name]["peak_bytes"], int) and r[name]["peak_bytes"] > 0
    assert r["naive"]["peak_bytes"] >= n * n * 8              # the n x n weights are seen
    assert r["flash"]["peak_bytes"] < r["naive"]["peak_bytes"] / 4


def test_cli_table_in_process(capsys):
    assert main(TINY + ["--threads", "0"]) == 0
    out = capsys.readouterr().out
    lines = out.splitlines()
    assert "naive ms" in out and "flash MiB" in out and "default BLAS threads" in out
    rows = [line for line in lines if re.match(r"^\s*\d+ \|", line)]
    assert [int(row.split("|")[0]) for row in rows] == [32, 80]
    assert all(len(row.split("|")) == 4 and len(row.split("|")[1].split()) == 3 for row in rows)
    assert re.search(r"at n = 80: flash peak memory / naive = [0-9.]+ \(target <= 0.125\): (True|False)", out)
    assert re.search(r"at n = 80: flash time / naive = [0-9.]+ \(target <= 2\): (True|False)", out)
    assert "linear attention time grows" in out


def test_cli_causal(capsys):
    assert main(["--sizes", "40", "--d", "4", "--block-size", "8", "--repeats", "1", "--threads", "0",
                 "--causal"]) == 0
    out = capsys.readouterr().out
    assert "causal" in out.splitlines()[0] and "non-causal" not in out
    assert "linear attention time grows" not in out           # one size: no growth line


def test_dispatcher_runs_single_threaded_child(capsys):
    assert bench_main(["efficient"] + TINY) == 0
    out = capsys.readouterr().out
    assert "1 BLAS thread(s)" in out
    assert len([line for line in out.splitlines() if re.match(r"^\s*\d+ \|", line)]) == 2


def test_defaults_follow_the_issue(monkeypatch, capsys):
    # one head, d = 64, float32, n in {1024, 4096, 8192}, non-causal; flash at the benchmark's block 512
    calls = []

    def fake(n, d, dtype, block_size, repeats, causal):
        calls.append((n, d, np.dtype(dtype), block_size, causal))
        return {name: {"seconds": 1.0, "peak_bytes": 1} for name in METHODS}

    monkeypatch.setattr(efficient, "measure", fake)
    assert main(["--threads", "0"]) == 0
    assert calls == [(n, 64, np.dtype(np.float32), 512, False) for n in (1024, 4096, 8192)]
    assert "d = 64, float32" in capsys.readouterr().out

