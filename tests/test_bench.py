"""The SDPA benchmark runs and reports sane figures (timings are printed, never asserted)."""
import numpy as np

from attention_np.bench.__main__ import main
from attention_np.bench.sdpa import measure


def test_measure_on_a_tiny_shape():
    r = measure((1, 2, 16, 8), np.float64, repeats=2)
    assert r["shape"] == (1, 2, 16, 8) and r["dtype"] == "float64"
    assert r["sdpa_seconds"] > 0 and r["matmul_seconds"] > 0 and r["ratio"] > 0


def test_cli_prints_a_row_per_dtype(capsys):
    assert main(["sdpa", "--shape", "1", "1", "8", "4", "--repeats", "1"]) == 0
    out = capsys.readouterr().out
    assert "float32" in out and "float64" in out and "ratio" in out
