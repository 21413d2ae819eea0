"""pytest plugin that the grader loads into its nbval run (``-p attention_np.grading._nbplugin``).

It never runs in a normal test session. It fixes three things nbval 0.11 does not do:

* **dead kernels**: nbval waits on the kernel's channels for the whole cell timeout even
  when the kernel process is gone (``os._exit``, a segfault). Here every wait is cut into
  short slices and the kernel process is polled between them, so a crash is reported as
  ``kernel died`` within a fraction of a second.
* **after a timeout**: nbval marks every later cell "expected to fail" once one cell timed
  out. When the interrupt worked, the kernel is fine, so later cells are graded normally;
  when it did not (code that ignores SIGINT), nbval stops the kernel and later cells fail
  with "Kernel dead on test start", which the grader reports as "not reached".
* **a busy machine**: nbval gives up on a cell's output after a fixed few seconds (then stops
  the kernel, so every later exercise fails). While the kernel is alive and was not
  interrupted, waits for output here go on up to ``--grade-output-grace`` seconds; after a
  timeout's interrupt the short limit stays, so code that ignores SIGINT is still caught fast.
* **stray prints**: in a cell with stored outputs, a stream (stdout/stderr) passes when the
  reference's lines appear in it in order; any extra lines (a student's debug print) are
  logged as a note and never compared.
* **reasons**: for every cell it appends one JSON line (cell number, outcome, kind, short
  reason) to the file given by ``--grade-log``, flushed at once, so the grader knows how far
  a run got even when it had to kill it. Output comparisons are summarised in one line
  instead of pytest's full diff, which is slow and huge for megabytes of output.
"""
from __future__ import annotations

import copy
import json
import re
import sys
import time
from queue import Empty

import pytest

# jsonschema (imported by nbformat, imported by nbval) imports the optional package
# rfc3987_syntax, when installed, for an "iri" format check that notebook validation never
# uses; that import builds a parser and costs over a second per run. Skip it in this process.
sys.modules.setdefault("rfc3987_syntax", None)

POLL_SECONDS = 0.1
REASON_CHARS = 240


class KernelDied(RuntimeError):
    """The kernel process exited while a cell was running or being waited for."""


def pytest_addoption(parser):
    group = parser.getgroup("attention_np grading")
    group.addoption("--grade-log", default=None, help="append one JSON line per notebook cell to this file")
    group.addoption("--grade-output-timeout", type=float, default=10.0,
                    help="seconds to wait for output after a timeout's interrupt (nbval's fixed 5 s)")
    group.addoption("--grade-output-grace", type=float, default=120.0,
                    help="seconds to wait for a live, uninterrupted kernel's output (a busy machine)")


def pytest_configure(config):
    try:
        from nbval.plugin import IPyNbCell
    except ImportError:  # pragma: no cover - nbval is a dependency of grading
        return
    if getattr(IPyNbCell, "_attention_np_patched", False):
        return
    original_compare = IPyNbCell.compare_outputs

    def compare_outputs(self, test, ref, skip_compare=None):
        test, extra = tolerate_extra_lines(self, test, ref)
        self._attention_np_note = extra
        ok = original_compare(self, test, ref, skip_compare)
        if not ok:
            self.comparison_traceback = [clip(str(line)) for line in self.comparison_traceback]
        return ok

    def format_output_compare(self, key, left, right):
        self.comparison_traceback.append(f"{key}: {first_difference(left, right)}")

    IPyNbCell.compare_outputs = compare_outputs
    IPyNbCell.format_output_compare = format_output_compare
    IPyNbCell._attention_np_patched = True


def _lines(text) -> list:
    return str(text).splitlines()


def _subsequence(needles, haystack) -> list | None:
    """The haystack lines that are not part of ``needles`` found in order, or None when some is missing."""
    extra, i = [], 0
    for line in haystack:
        if i < len(needles) and line == needles[i]:
            i += 1
        else:
            extra.append(line)
    return extra if i == len(needles) else None


def tolerate_extra_lines(item, test, ref):
    """``(test outputs with extra stream lines removed, note)``: a stream passes when the reference's
    lines (sanitized) appear in it in order; the extra lines become a note and are not compared."""
    ref_streams = {o.get("name"): o for o in ref if o.get("output_type") == "stream"}
    ref_displays = any(o.get("output_type") == "display_data" for o in ref)
    out, notes, displays = [], [], 0
    for o in test:
        if o.get("output_type") == "display_data" and not ref_displays:
            displays += 1                     # a student's plot or display() inside a check
            continue
        if o.get("output_type") != "stream" or not str(o.get("text", "")):
            out.append(o)
            continue
        expected = ref_streams.get(o.get("name"))
        want = _lines(item.sanitize(expected.get("text", ""))) if expected is not None else []
        got = _lines(o.get("text", ""))
        extra = _subsequence(want, [item.sanitize(line) for line in got])
        if extra is None:
            out.append(o)               # the reference's own lines are missing: compared as usual
            continue
        if extra:
            notes.append(f"{len(extra)} extra line(s) on {o.get('name')} not compared, first: "
                         f"{clip(repr(extra[0]), 80)}")
        if expected is not None:
            fixed = copy.copy(o)
            fixed["text"] = expected.get("text", "")
            out.append(fixed)
    if displays:
        notes.append(f"{displays} extra display output(s) (e.g. a plot) not compared")
    return out, "; ".join(notes)


def clip(text: str, n: int = REASON_CHARS) -> str:
    text = re.sub(r"\x1b\[[0-9;]*[A-Za-z]", "", text)
    return text if len(text) <= n else text[: n - 3] + "..."


def first_line(text: str) -> str:
    for line in str(text).splitlines():
        if line.strip():
            return clip(line.strip())
    return ""


def first_difference(expected, got) -> str:
    """``expected 'a: ok', got 'a: wrong'`` for the first line where two outputs differ."""
    if not isinstance(expected, str) or not isinstance(got, str):
        return f"expected {clip(repr(expected), 100)}, got {clip(repr(got), 100)}"
    exp_lines, got_lines = expected.splitlines(), got.splitlines()
    for i in range(max(len(exp_lines), len(got_lines))):
        e = exp_lines[i] if i < len(exp_lines) else None
        g = got_lines[i] if i < len(got_lines) else None
        if e != g:
            where = f"line {i + 1}: "
            if e is None:
                return where + f"unexpected extra output {clip(repr(g), 100)}"
            if g is None:
                return where + f"expected {clip(repr(e), 100)}, got nothing more"
            return where + f"expected {clip(repr(e), 100)}, got {clip(repr(g), 100)}"
    return "outputs differ in whitespace"


def _is_nbval_cell(item) -> bool:
    return hasattr(item, "cell_num") and hasattr(getattr(item, "parent", None), "kernel")


def _kernel_alive(kernel) -> bool:
    try:
        return bool(kernel.is_alive())
    except Exception:  # noqa: BLE001 - a broken manager means a dead kernel
        return False


def _patch_kernel(kernel, grace: float = 0.0) -> None:
    """Make every wait on the kernel's channels notice within POLL_SECONDS that the kernel died, and
    let a wait for output (iopub) of a live kernel that was not interrupted go on up to ``grace`` s."""
    if getattr(kernel, "_attention_np_patched", False):
        return
    original, original_interrupt = kernel.get_message, kernel.interrupt
    kernel._attention_np_interrupted = False

    def interrupt():
        kernel._attention_np_interrupted = True
        return original_interrupt()

    def get_message(stream, timeout=None):
        start = time.monotonic()
        deadline = None if timeout is None else start + timeout
        while True:
            step = POLL_SECONDS if deadline is None else max(0.0, min(POLL_SECONDS, deadline - time.monotonic()))
            try:
                return original(stream, timeout=step)
            except Empty:
                if not _kernel_alive(kernel):
                    raise KernelDied("kernel died (its process exited or crashed)") from None
                if deadline is not None and time.monotonic() >= deadline:
                    if stream == "iopub" and not kernel._attention_np_interrupted \
                            and time.monotonic() - start < max(grace, timeout):
                        deadline = start + max(grace, timeout)     # a busy machine, not a stuck cell
                        continue
                    raise

    kernel.get_message = get_message
    kernel.interrupt = interrupt
    kernel._attention_np_patched = True


def _log(config, record) -> None:
    path = config.getoption("grade_log")
    if not path:
        return
    with open(path, "a", encoding="utf-8") as f:
        f.write(json.dumps(record) + "\n")
        f.flush()


@pytest.hookimpl(wrapper=True)
def pytest_runtest_setup(item):
    if _is_nbval_cell(item):
        # An interrupted timeout leaves a working kernel: do not mark later cells xfail.
        item.parent.timed_out = False
        kernel = getattr(item.parent, "kernel", None)
        if kernel is not None:
            kernel._attention_np_interrupted = False   # a new cell: the long wait for output again
        item.output_timeout = item.config.getoption("grade_output_timeout")
    try:
        return (yield)
    finally:
        kernel = getattr(getattr(item, "parent", None), "kernel", None)
        if kernel is not None and not getattr(kernel, "_attention_np_patched", False):
            _patch_kernel(kernel, item.config.getoption("grade_output_grace"))
            pid = None
            try:
                pid = kernel.km.provisioner.pid
            except Exception:  # noqa: BLE001 - the pid is only used to clean up
                pass
            _log(item.config, {"event": "kernel", "pid": pid})


def classify(item, call, report):
    """``(kind, reason)`` for a cell's report: pass / error / output differs / timeout / kernel died / not reached."""
    if report.passed:
        return "pass", ""
    if report.skipped:
        return "skipped", first_line(getattr(report, "wasxfail", "") or report.longrepr or "")
    exc = call.excinfo.value if call.excinfo is not None else None
    if isinstance(exc, KernelDied):
        return "kernel died", "kernel died (its process exited or crashed)"
    msg = str(exc) if exc is not None else ""
    if "Kernel dead on test start" in msg:
        return "not reached", "not reached: the kernel had stopped"
    if call.when == "setup":
        return "error", "the notebook could not be started: " + first_line(msg)
    if msg.startswith("Timeout of"):
        seconds = item.config.getoption("nbval_cell_timeout")
        if "Failed to interrupt" in msg:
            return "timeout", (f"timed out after {seconds:g} s; the code ignored the interrupt, "
                               "so the kernel was stopped")
        if "waiting for output" in msg:
            return "timeout", "timed out waiting for the kernel's output"
        return "timeout", f"timed out after {seconds:g} s"
    if "Cell outputs differ" in msg:
        lines = [line for line in getattr(item, "comparison_traceback", []) if str(line).strip()]
        return "output differs", "output differs: " + (first_line(lines[0]) if lines else "")
    if "Cell execution caused an exception" in msg:
        for out in getattr(item, "test_outputs", None) or []:
            if out.get("output_type") == "error":
                ename, evalue = str(out.get("ename", "")), first_line(out.get("evalue", ""))
                return "error", clip(f"{ename}: {evalue}" if evalue else ename)
        return "error", "the cell raised an exception"
    return "error", first_line(msg) or (type(exc).__name__ if exc is not None else "failed")


@pytest.hookimpl(wrapper=True)
def pytest_runtest_makereport(item, call):
    report = yield
    if _is_nbval_cell(item) and (call.when == "call" or not report.passed):
        kind, reason = classify(item, call, report)
        _log(item.config, {"event": "cell", "cell": item.cell_num, "when": call.when,
                           "outcome": report.outcome, "kind": kind, "reason": reason,
                           "note": getattr(item, "_attention_np_note", "") or ""})
    return report
