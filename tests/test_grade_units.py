"""In-process units of the grader: student names and LMS layouts, sharding, messages (syntax
errors, knock-on failures, "× expected"), the closing count. No kernels: fast."""
import time
from pathlib import Path
from queue import Empty

import numpy as np
import pytest

from attention_np.grading import assert_close
from attention_np.grading._nbplugin import _patch_kernel
from attention_np.grading.scoring import _locked_failure_warnings, syntax_message
from attention_np.grading.names import identify
from attention_np.grading.notebook import load_solution
from attention_np.grading.report import ExerciseResult, Report, closing_line
from attention_np.grading.shard import parse_shard, select

FIXTURE = Path(__file__).parent / "fixtures" / "grading" / "solutions" / "90_fixture.ipynb"


@pytest.mark.parametrize("path, notebook, expected", [
    ("class/alice/02_scaled_dot_product.ipynb", "02_scaled_dot_product", ("alice", "", "", False)),
    ("class/alice/02_scaled_dot_product-Copy1.ipynb", "02_scaled_dot_product", ("alice", "", "", False)),
    ("class/x/bob_02_scaled_dot_product-Copy2.ipynb", "02_scaled_dot_product", ("bob", "", "", False)),
    ("class/x/02_scaled_dot_product (1).ipynb", "02_scaled_dot_product", ("x", "", "", False)),
    ("dl/smithalice_12345_67890_02_scaled_dot_product.ipynb", "02_scaled_dot_product",
     ("smithalice", "canvas", "12345", False)),
    ("dl/smithalice_LATE_12345_67890_02_scaled_dot_product-1.ipynb", "02_scaled_dot_product",
     ("smithalice", "canvas", "12345", True)),
    ("dl/Alice Smith_123456_assignsubmission_file_/02_scaled_dot_product.ipynb", "02_scaled_dot_product",
     ("Alice Smith", "moodle", "123456", False)),
])
def test_student_names_and_lms_layouts(path, notebook, expected):
    who = identify(Path(path), notebook)
    assert (who.student, who.lms, who.lms_id, who.late) == expected


def test_shards_are_interleaved_shares_of_the_sorted_list():
    files = [f"s{i:02d}.ipynb" for i in range(10)][::-1]
    shares = [select(files, k, 3) for k in (1, 2, 3)]
    assert shares[0] == ["s00.ipynb", "s03.ipynb", "s06.ipynb", "s09.ipynb"]
    assert sorted(sum(shares, [])) == sorted(files)
    assert parse_shard("2/3") == (2, 3)
    for bad in ("0/3", "4/3", "x"):
        with pytest.raises(ValueError):
            parse_shard(bad)


def test_syntax_message_is_pythons_own():
    assert syntax_message("x = (1 +\ny = 2") == "line 1: '(' was never closed"
    assert syntax_message("def f():\nreturn 1") == "line 2: expected an indented block after function definition on line 1"
    assert syntax_message("x = 1") is None


def test_knock_on_failures_of_locked_cells_collapse_into_one_line():
    nb = load_solution(FIXTURE)
    code = [c for c in nb.cells if c.cell_type == "code"]
    ids = [c.get("id") for c in code]
    results = {ids.index("ex1-solution"): {"outcome": "failed", "kind": "error", "reason": "SyntaxError: x"}}
    for cell_id in ("ex2-solution", "ex3-solution"):      # stand-ins for locked demo cells after the answer
        code[ids.index(cell_id)].metadata["tags"] = []
        results[ids.index(cell_id)] = {"outcome": "failed", "kind": "error",
                                       "reason": "NameError: name 'row_sums' is not defined"}
    warnings = _locked_failure_warnings(nb, results)
    assert warnings == ["2 locked cells failed after a failed answer (first: 'ex2-solution' failed: "
                        "NameError: name 'row_sums' is not defined)"]


def test_answer_off_by_a_constant_factor_says_so():
    expected = np.random.default_rng(0).normal(size=(2, 3))
    with pytest.raises(AssertionError, match=r"got 2\.00 × expected"):
        assert_close(2 * expected, expected, "attention")
    with pytest.raises(AssertionError) as info:
        assert_close(expected + 1, expected, "attention")
    assert "× expected" not in str(info.value)


def test_closing_line_counts_and_never_says_graded_fully_when_all_are_zero():
    def rep(total, status="graded"):
        return Report("f", "s", "n", status, [ExerciseResult("ex1", total, 2, "pass")], total, 2)
    line = closing_line([rep(0), rep(0), rep(0, "invalid: malformed JSON")])
    assert line == "3 submission(s): 2 graded (0 full marks, 0 partial, 2 zero), 1 unreadable"
    line = closing_line([rep(2), rep(1), rep(0, "not graded: kernel did not start")])
    assert line.startswith("3 submission(s): 2 graded (1 full marks, 1 partial, 0 zero), 0 unreadable, 1 NOT GRADED")


class _SlowKernel:
    """A live kernel whose output arrives ``delay`` seconds late (a machine under load)."""

    def __init__(self, delay):
        self.ready_at = time.monotonic() + delay

    def get_message(self, stream, timeout=None):
        if time.monotonic() < self.ready_at:
            time.sleep(min(timeout or 0.05, 0.05))
            raise Empty
        return {"stream": stream}

    def is_alive(self):
        return True

    def interrupt(self):
        pass


def test_late_output_of_a_live_kernel_is_waited_for_unless_it_was_interrupted():
    # nbval gives up on output after a few seconds and stops the kernel: every later exercise
    # then failed, a correct notebook scored 0 on a busy machine. The plugin waits longer ...
    kernel = _SlowKernel(delay=0.6)
    _patch_kernel(kernel, grace=5.0)
    assert kernel.get_message("iopub", timeout=0.2) == {"stream": "iopub"}
    # ... but not after a timeout's interrupt (code that ignores SIGINT is still caught fast) ...
    kernel = _SlowKernel(delay=0.6)
    _patch_kernel(kernel, grace=5.0)
    kernel.interrupt()
    with pytest.raises(Empty):
        kernel.get_message("iopub", timeout=0.2)
    # ... and never for the shell channel, whose timeout is the cell timeout itself.
    kernel = _SlowKernel(delay=0.6)
    _patch_kernel(kernel, grace=5.0)
    with pytest.raises(Empty):
        kernel.get_message("shell", timeout=0.2)
