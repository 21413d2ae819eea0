"""Exercise results from the per-cell results of a run: points, statuses and reasons that say what
happened (Python's own syntax message, "memory limit", "(raised in the solution cell)"), warnings
for locked cells (knock-on failures after a failed answer collapsed into one line), and whether a
run failed outside the student's code (then it is retried, and reported as "not graded").
"""
from __future__ import annotations

from . import isolation
from .notebook import cell_kind, cell_source, exercises
from .report import ExerciseResult


def _code_numbers(nb) -> dict:
    """notebook cell index -> nbval's code-cell number."""
    numbers, n = {}, 0
    for i, cell in enumerate(nb.cells):
        if cell.cell_type == "code":
            numbers[i] = n
            n += 1
    return numbers


def syntax_message(source: str) -> str | None:
    """``line 3: '(' was never closed`` for a solution cell Python cannot compile, else None."""
    try:
        compile(source, "<solution cell>", "exec")
    except SyntaxError as exc:
        return f"line {exc.lineno}: {exc.msg}" if exc.lineno else exc.msg
    except (ValueError, OverflowError):
        return None
    return None


def _explain(kind: str, reason: str, memory_limit) -> str:
    """Reasons that name the grader's limits: a MemoryError under the memory limit says so."""
    if memory_limit and reason.startswith("MemoryError"):
        return f"memory limit: the code needed more than {isolation.format_size(memory_limit)} ({reason})"
    if memory_limit and kind == "kernel died":
        return f"{reason}; possibly the memory limit of {isolation.format_size(memory_limit)}"
    return reason


def score(nb, results, killed: bool, timeout: float, memory_limit=None):
    """Exercise results from per-cell results of the built notebook."""
    code_number = _code_numbers(nb)

    def cell_result(i):
        return results.get(code_number.get(i))

    rows, region_start = [], 0
    for ex in exercises(nb):
        res = cell_result(ex.check_index)
        # the cells this exercise owns: everything after the previous check cell
        own = [i for i in range(region_start, ex.check_index) if i in code_number]
        region_start = ex.check_index + 1
        own_failures = [cell_result(i) for i in own
                        if cell_result(i) is not None and cell_result(i).get("outcome") == "failed"]
        if res is None:
            reason = f"not reached: the overall time limit of {timeout:g} s was exceeded" if killed else "not reached"
            rows.append(ExerciseResult(ex.grade_id, 0, ex.points, "not reached", reason))
            continue
        note = res.get("note", "") or ""
        if res.get("outcome") == "passed":
            rows.append(ExerciseResult(ex.grade_id, ex.points, ex.points, "pass", "", note))
            continue
        kind, reason = res.get("kind", "error"), res.get("reason", "") or "failed"
        stopped = [r for r in own_failures if r.get("kind") in ("timeout", "kernel died")]
        raised = [(i, cell_result(i)) for i in ex.solution_indices
                  if cell_result(i) is not None and cell_result(i).get("outcome") == "failed"
                  and cell_result(i).get("kind") == "error"]
        if kind == "not reached" and stopped:
            kind, reason = stopped[0]["kind"], stopped[0]["reason"] + " (in a cell before the check)"
        elif kind == "error" and raised:
            i, failed = raised[0]
            syntax = syntax_message(cell_source(nb.cells[i])) if failed["reason"].startswith(
                ("SyntaxError", "IndentationError", "TabError")) else None
            reason = (f"SyntaxError in the solution cell, {syntax}" if syntax
                      else f"{failed['reason']} (raised in the solution cell)")
        reason = _explain(kind, reason, memory_limit)
        status = kind if kind in ("timeout", "kernel died", "not reached") else "fail"
        rows.append(ExerciseResult(ex.grade_id, 0, ex.points, status, reason, note))
    return rows


def _locked_failure_warnings(nb, results) -> list:
    """Failed locked cells: one line each, except knock-on failures after a failed answer, which are
    collapsed into one line (a NameError because the student's function is missing tells nothing new)."""
    warnings, knock_on, answer_failed = [], [], False
    code_number = _code_numbers(nb)
    for i, cell in enumerate(nb.cells):
        if i not in code_number:
            continue
        res = results.get(code_number[i])
        failed = res is not None and res.get("outcome") == "failed"
        if cell_kind(cell) == "solution" and failed:
            answer_failed = True
        if cell_kind(cell) == "locked" and failed and res.get("kind") != "not reached" \
                and not res.get("reason", "").startswith("NotImplementedError"):  # an unanswered exercise
            line = f"locked cell {cell.get('id')!r} failed: {res.get('reason', '')}"
            (knock_on if answer_failed else warnings).append(line)
    if len(knock_on) == 1:
        warnings.append(knock_on[0] + " (after a failed answer)")
    elif knock_on:
        warnings.append(f"{len(knock_on)} locked cells failed after a failed answer (first: "
                        f"{knock_on[0].removeprefix('locked cell ')})")
    return warnings[:3]


def grader_failure(nb, results, killed: bool, code) -> str | None:
    """Why a run failed outside the student's code, or None: no result at all, the kernel or
    notebook did not start, nbval/pytest/the plugin failed (exit code 3/4), or a locked cell
    failed before any student cell ran (the solution never fails there)."""
    if killed:
        return None
    if not results:
        return f"nbval produced no results (exit code {code})"
    if code in (3, 4):
        return f"pytest/nbval internal error (exit code {code})"
    code_number = _code_numbers(nb)
    for i, cell in enumerate(nb.cells):
        if i not in code_number:
            continue
        res = results.get(code_number[i])
        if res is not None and res.get("reason", "").startswith("the notebook could not be started"):
            return res["reason"]
        if cell_kind(cell) == "solution":
            return None
        if res is None:
            return f"cell {cell.get('id')!r} before the first answer has no result"
        if res.get("outcome") == "failed":
            return f"locked cell {cell.get('id')!r} failed before any answer ran: {res.get('reason', '')}"
    return None
