"""Shared notebook helpers for release and grading.

A *solution notebook* (``solutions/NN_slug.ipynb``) has three kinds of cells:

* solution cells: code cells tagged ``solution``; the student's part lies
  between lines ``### BEGIN SOLUTION`` and ``### END SOLUTION`` (a cell may
  hold several regions, markers may be indented inside a function body);
* check cells: code cells tagged ``check`` with metadata
  ``{"grade": {"id": "ex3", "points": 2, "off_limits": ["attention_np.X", ...]}}``
  (hidden from students: the release replaces them by a note);
* self-check cells: code cells tagged ``selfcheck``, public checks copied into the
  exercise, never graded;
* locked cells: everything else.

This module classifies cells, validates solution notebooks, and turns
solution regions into the exercise stub ``# YOUR CODE HERE`` +
``raise NotImplementedError()``.
"""
from __future__ import annotations

import copy
import json
import re
import warnings
from dataclasses import dataclass
from pathlib import Path

import nbformat

SOLUTION_TAG = "solution"
CHECK_TAG = "check"
SELFCHECK_TAG = "selfcheck"
GUARD_MODULE = "attention_np.grading.guard"
BEGIN_MARKER = "### BEGIN SOLUTION"
END_MARKER = "### END SOLUTION"
STUB_LINES = ("# YOUR CODE HERE", "raise NotImplementedError()")
MIN_EXERCISES = 3

_MARKER_RE = re.compile(r"^(?P<indent>[ \t]*)(?P<marker>### (?:BEGIN|END) SOLUTION)[ \t]*$")


class NotebookError(ValueError):
    """A solution notebook breaks the format; the message names the notebook and the cell."""


# --------------------------------------------------------------------------- cells
def cell_tags(cell) -> list:
    """The cell's tags as a list of strings (tolerates missing or malformed metadata)."""
    meta = cell.get("metadata") if isinstance(cell, dict) else None
    tags = meta.get("tags") if isinstance(meta, dict) else None
    if not isinstance(tags, list):
        return []
    return [t for t in tags if isinstance(t, str)]


def cell_source(cell) -> str:
    """The cell's source as one string (nbformat allows a list of lines)."""
    src = cell.get("source", "") if isinstance(cell, dict) else ""
    if isinstance(src, list):
        return "".join(s for s in src if isinstance(s, str))
    return src if isinstance(src, str) else ""


def grade_info(cell):
    """``(grade_id, points)`` from a check cell's metadata, or ``(None, None)``."""
    meta = cell.get("metadata") if isinstance(cell, dict) else None
    grade = meta.get("grade") if isinstance(meta, dict) else None
    if not isinstance(grade, dict):
        return None, None
    gid = grade.get("id")
    points = grade.get("points")
    return (gid if isinstance(gid, str) else None), points


def off_limits_of(cell) -> list:
    """The ``off_limits`` list of a check cell's grade metadata (``[]`` when missing or malformed)."""
    meta = cell.get("metadata") if isinstance(cell, dict) else None
    grade = meta.get("grade") if isinstance(meta, dict) else None
    names = grade.get("off_limits") if isinstance(grade, dict) else None
    if not isinstance(names, list):
        return []
    return [n for n in names if isinstance(n, str)]


def cell_kind(cell) -> str:
    """``"solution"``, ``"check"`` or ``"locked"``."""
    if not isinstance(cell, dict) or cell.get("cell_type") != "code":
        return "locked"
    tags = cell_tags(cell)
    if CHECK_TAG in tags:
        return "check"
    if SOLUTION_TAG in tags:
        return "solution"
    return "locked"


def describe_cell(index: int, cell) -> str:
    """``cell 7 (id 'a1b2')`` — how error messages and warnings name a cell."""
    cid = cell.get("id") if isinstance(cell, dict) else None
    return f"cell {index} (id {cid!r})" if cid else f"cell {index}"


# ------------------------------------------------------------------ solution regions
def find_regions(source: str):
    """Solution regions of a cell as ``[(begin_line, end_line, indent), ...]``.

    Raises ``ValueError`` (without the cell's name; the caller adds it) when the
    markers are missing, unbalanced or nested.
    """
    regions, begin, indent = [], None, ""
    lines = source.split("\n")
    for i, line in enumerate(lines):
        m = _MARKER_RE.match(line)
        if not m:
            if BEGIN_MARKER in line or END_MARKER in line:
                raise ValueError(f"line {i + 1}: a solution marker must stand alone on its line: {line.strip()!r}")
            continue
        if m.group("marker") == BEGIN_MARKER:
            if begin is not None:
                raise ValueError(f"line {i + 1}: '{BEGIN_MARKER}' again before '{END_MARKER}'")
            begin, indent = i, m.group("indent")
        else:
            if begin is None:
                raise ValueError(f"line {i + 1}: '{END_MARKER}' without '{BEGIN_MARKER}'")
            regions.append((begin, i, indent))
            begin = None
    if begin is not None:
        raise ValueError(f"line {begin + 1}: '{BEGIN_MARKER}' without '{END_MARKER}'")
    if not regions:
        raise ValueError(f"no '{BEGIN_MARKER}' ... '{END_MARKER}' region")
    return regions


def strip_solution(source: str) -> str:
    """Replace every solution region (markers included) by the exercise stub, keeping indentation."""
    lines = source.split("\n")
    out, last = [], 0
    for begin, end, indent in find_regions(source):
        out.extend(lines[last:begin])
        out.extend(indent + stub for stub in STUB_LINES)
        last = end + 1
    out.extend(lines[last:])
    return "\n".join(out)


# ------------------------------------------------------------------- notebooks
@dataclass
class Exercise:
    grade_id: str
    points: float
    check_index: int        # index of the check cell in nb.cells
    check_id: str
    solution_indices: list  # solution cells between the previous check cell and this one


def write_text(nb) -> str:
    """The canonical text of a notebook (deterministic: sorted keys, trailing newline)."""
    text = nbformat.writes(nb)
    return text if text.endswith("\n") else text + "\n"


def exercises(nb) -> list:
    """The graded exercises of a (validated) solution notebook, in notebook order."""
    result, pending = [], []
    for i, cell in enumerate(nb.cells):
        kind = cell_kind(cell)
        if kind == "solution":
            pending.append(i)
        elif kind == "check":
            gid, points = grade_info(cell)
            result.append(Exercise(gid, points, i, cell.get("id"), pending))
            pending = []
    return result


def validate_solution(nb, name: str) -> list:
    """Every problem of a solution notebook, as messages naming the notebook and the cell."""
    errors = []

    def err(index, cell, msg):
        errors.append(f"{name}: {describe_cell(index, cell)}: {msg}")

    if nb.get("nbformat") != 4 or nb.get("nbformat_minor", 0) < 5:
        errors.append(f"{name}: must be nbformat 4.5 or later (with cell ids), "
                      f"got {nb.get('nbformat')}.{nb.get('nbformat_minor')}")
    seen_ids, seen_grades = {}, {}
    for i, cell in enumerate(nb.cells):
        cid = cell.get("id")
        if not cid:
            err(i, cell, "has no cell id")
        elif cid in seen_ids:
            err(i, cell, f"duplicate cell id (also cell {seen_ids[cid]})")
        else:
            seen_ids[cid] = i
        tags = cell_tags(cell)
        if CHECK_TAG not in tags and isinstance((cell.get("metadata") or {}).get("grade"), dict):
            err(i, cell, "has grade metadata but is not tagged 'check' (set the tag too: Jupyter keeps "
                         "tags and metadata apart)")
        for out in cell.get("outputs", []) if cell.get("cell_type") == "code" else []:
            if isinstance(out, dict) and out.get("output_type") == "error":
                err(i, cell, f"stores an error output ({out.get('ename')}: {out.get('evalue')}); fix the cell "
                             "and re-execute the notebook")
                break
        if SOLUTION_TAG in tags and CHECK_TAG in tags:
            err(i, cell, "is tagged both 'solution' and 'check'")
            continue
        if (SOLUTION_TAG in tags or CHECK_TAG in tags) and cell.get("cell_type") != "code":
            err(i, cell, f"is a {cell.get('cell_type')} cell tagged {tags}; only code cells can be graded")
            continue
        kind = cell_kind(cell)
        if kind == "solution":
            try:
                find_regions(cell_source(cell))
            except ValueError as exc:
                err(i, cell, f"solution cell: {exc}")
        elif kind == "check":
            gid, points = grade_info(cell)
            if gid is None:
                err(i, cell, 'check cell needs metadata {"grade": {"id": "exN", "points": P}}')
                continue
            if gid in seen_grades:
                err(i, cell, f"duplicate grade id {gid!r} (also cell {seen_grades[gid]})")
            else:
                seen_grades[gid] = i
            if isinstance(points, bool) or not isinstance(points, (int, float)) or not points > 0:
                err(i, cell, f"check cell {gid!r} needs a positive number of points, got {points!r}")
            if cell.get("execution_count") is None:
                err(i, cell, f"check cell {gid!r} has no execution count: execute the solution notebook "
                             "so its outputs become the reference")
            elif not cell.get("outputs"):
                err(i, cell, f"check cell {gid!r} has no stored output: re-execute the solution notebook "
                             "(a check prints what it verified, e.g. 'ex1 ...: ok')")
            if BEGIN_MARKER in cell_source(cell) or END_MARKER in cell_source(cell):
                err(i, cell, f"check cell {gid!r} contains solution markers")
        else:
            src = cell_source(cell)
            if cell.get("cell_type") == "code" and (BEGIN_MARKER in src or END_MARKER in src):
                err(i, cell, "has solution markers but is not tagged 'solution'")
    pending = []
    for i, cell in enumerate(nb.cells):
        kind = cell_kind(cell)
        if kind == "solution":
            pending.append(i)
        elif kind == "check":
            pending = []
    for i in pending:
        err(i, nb.cells[i], "solution cell has no check cell after it (a solution cell belongs to the next "
                            "check cell)")
    n = len(seen_grades)
    if n < MIN_EXERCISES:
        errors.append(f"{name}: has {n} graded exercise(s); at least {MIN_EXERCISES} check cells are required")
    return errors


def load_solution(path):
    """Read and validate a solution notebook; raise :class:`NotebookError` listing every problem."""
    path = Path(path)
    try:
        text = path.read_text(encoding="utf-8")
        raw = json.loads(text)
        with warnings.catch_warnings():
            # nbformat silently renames duplicate cell ids; they are reported below instead
            warnings.simplefilter("ignore")
            nb = nbformat.reads(text, as_version=4)
    except Exception as exc:  # noqa: BLE001 - any reading problem is reported the same way
        raise NotebookError(f"{path}: cannot read notebook: {exc}") from None
    raw_cells = raw.get("cells") if isinstance(raw, dict) else None
    raw_ids = [c.get("id") if isinstance(c, dict) else None for c in raw_cells or []]
    if len(raw_ids) == len(nb.cells):
        for cell, cid in zip(nb.cells, raw_ids):   # validate the ids as written in the file
            if cid is None:
                cell.pop("id", None)
            else:
                cell["id"] = cid
    errors = validate_solution(nb, str(path))
    if errors:
        raise NotebookError("\n".join(errors))
    return nb


def release_problems(nb, name: str) -> list:
    """Authoring problems that only the release refuses (the grader can still run such a notebook).

    Every check cell must name its ``off_limits`` (existing attention_np objects); nbclient's
    timestamps must be stripped; ``selfcheck`` cells are plain code cells.
    """
    from .guard import resolve

    errors = []
    stamped = [i for i, cell in enumerate(nb.cells) if "execution" in (cell.get("metadata") or {})]
    if stamped:
        errors.append(f"{name}: {len(stamped)} cell(s) carry nbclient timestamps (metadata.execution, first: "
                      f"{describe_cell(stamped[0], nb.cells[stamped[0]])}); execute solutions with "
                      f"`python -m attention_np.release --execute {name}`, which strips them")
    for i, cell in enumerate(nb.cells):
        where = f"{name}: {describe_cell(i, cell)}"
        tags = cell_tags(cell)
        if SELFCHECK_TAG in tags and (cell.get("cell_type") != "code" or cell_kind(cell) != "locked"):
            errors.append(f"{where}: a 'selfcheck' cell must be a code cell without the 'solution' or 'check' tag")
        if cell_kind(cell) != "check":
            continue
        gid = grade_info(cell)[0]
        grade = (cell.get("metadata") or {}).get("grade") or {}
        names = grade.get("off_limits")
        if not isinstance(names, list) or not names or not all(isinstance(n, str) for n in names):
            errors.append(f"{where}: check cell {gid!r} needs \"off_limits\" in its grade metadata: the dotted "
                          "names of the attention_np objects an answer may not call, e.g. "
                          "[\"attention_np.mechanisms.scaled_dot_product.scaled_dot_product_attention\"]")
            continue
        for dotted in names:
            try:
                resolve(dotted, callable_only=True)
            except ValueError as exc:
                errors.append(f"{where}: check cell {gid!r}: off_limits names no existing object: {exc}")
    return errors


def hidden_check_note(cell) -> str:
    """The comment-only source that replaces a check cell in the released exercise."""
    gid, points = grade_info(cell)
    def short(dotted):                           # "MultiHeadAttention.forward" for a method, else the last name
        parts = dotted.split(".")
        return ".".join(parts[-2:]) if len(parts) > 2 and parts[-2][:1].isupper() else parts[-1]

    names = ", ".join(short(n) for n in off_limits_of(cell))
    pts = f"{points:g}" if isinstance(points, (int, float)) else str(points)
    lines = [f"# {gid} ({pts} point{'s' if points != 1 else ''}) is graded by a hidden check.",
             "# See your points and the reason for any failure with:",
             "#     python -m attention_np.grade <this notebook>"]
    if names:
        lines.append(f"# Off limits for this exercise (write them yourself): attention_np's {names}.")
    return "\n".join(lines)


def make_exercise(nb):
    """The exercise generated from a validated solution notebook (a new notebook object).

    Solution regions become the stub; every check cell is replaced by a comment-only note
    (:func:`hidden_check_note`; same cell id, tags and grade metadata) so the graded check stays
    hidden; ``selfcheck`` cells are copied; no cell keeps an output or an execution count; every
    cell keeps its id, tags and metadata (except nbclient's ``metadata.execution`` timestamps).
    """
    ex = nbformat.from_dict(copy.deepcopy(nb))
    for cell in ex.cells:
        # nbclient's per-cell timing record changes at every execution of the solution:
        # it is execution output, not authored metadata, so it is not released.
        cell.get("metadata", {}).pop("execution", None)
        kind = cell_kind(cell)
        if kind == "solution":
            cell.source = strip_solution(cell_source(cell))
        elif kind == "check":
            cell.source = hidden_check_note(cell)
        if cell.get("cell_type") == "code":
            cell.outputs = []
            cell.execution_count = None
    return ex


MIN_LEAK_CHARS = 24


def hidden_check_leaks(solution, exercise, name: str) -> list:
    """Problems if a line of a hidden check cell appears in the released exercise.

    Lines shorter than ``MIN_LEAK_CHARS``, imports, comments, and lines the solution also shows in a
    locked cell or in its text do not count; a self-check that copies the hidden check does.
    """
    text = [(i, c, cell_source(c)) for i, c in enumerate(exercise.cells)]
    # a line the author also wrote in a locked cell or in the text is shown on purpose
    shown = "\n".join(cell_source(c) for c in solution.cells
                      if cell_kind(c) == "locked" and SELFCHECK_TAG not in cell_tags(c))
    problems = []
    for ex in exercises(solution):
        for line in cell_source(solution.cells[ex.check_index]).split("\n"):
            line = line.strip()
            if len(line) < MIN_LEAK_CHARS or line.startswith(("#", "import ", "from ")) or line in shown:
                continue
            for i, cell, src in text:
                if line in src:
                    problems.append(f"{name}: {describe_cell(i, cell)}: {ex.grade_id}'s hidden check reaches the "
                                    f"exercise: {line[:60]!r}")
                    break
            else:
                continue
            break
    return problems


def stored_outputs(nb) -> list:
    """Every code cell that stores an output or an execution count, as ``describe_cell`` strings."""
    return [describe_cell(i, c) for i, c in enumerate(nb.cells)
            if c.get("cell_type") == "code" and (c.get("outputs") or c.get("execution_count") is not None)]


# ------------------------------------------------------------------- the guard
def _guard_call(func: str, *args) -> str:
    return f"__import__({GUARD_MODULE!r}, fromlist=[{func!r}]).{func}({', '.join(map(repr, args))})"


def _names_read(source: str):
    """``(built-ins, other globals)`` a check cell reads and never assigns itself."""
    import ast
    import builtins
    try:
        tree = ast.parse(source)
    except SyntaxError:
        return [], []
    loads, stores = set(), set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Name):
            (loads if isinstance(node.ctx, ast.Load) else stores).add(node.id)
        elif isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef, ast.ClassDef)):
            stores.add(node.name)
        elif isinstance(node, ast.arg):
            stores.add(node.arg)
        elif isinstance(node, (ast.Import, ast.ImportFrom)):
            stores.update((a.asname or a.name).split(".")[0] for a in node.names)
    read = loads - stores
    return sorted(read & set(dir(builtins))), sorted(n for n in read - set(dir(builtins)) if not n.startswith("_"))


def _ends_with_expression(source: str) -> bool:
    import ast
    try:
        body = ast.parse(source).body
    except SyntaxError:
        return True
    if not body or not isinstance(body[-1], ast.Expr):
        return False
    value = body[-1].value                    # print(...) displays nothing: treat as a statement
    return not (isinstance(value, ast.Call) and isinstance(value.func, ast.Name) and value.func.id == "print")


def add_guard(nb) -> list:
    """Add the off-limits guard to a built graded notebook (in place); return static warnings.

    The first code cell gets a first line installing :mod:`attention_np.grading.guard` with, per
    exercise, its ``off_limits`` and the code-file names ipykernel will give its solution cells; each
    check cell gets ``enter_check`` as its first line and ``leave_check`` as its last (unless it ends
    with an expression whose value it displays, which the line would hide).  ``selfcheck`` cells are
    emptied (the grader does not run them).  No cell is added, so nbval's cell numbers stay.
    """
    from .guard import cell_file_name, static_warnings

    config, warnings = {}, []
    for ex in exercises(nb):
        check = nb.cells[ex.check_index]
        names = off_limits_of(check)
        sources = [cell_source(nb.cells[i]) for i in ex.solution_indices]
        config[ex.grade_id] = {"off_limits": names, "cells": [cell_file_name(s) for s in sources]}
        for src in sources:
            warnings.extend(static_warnings(ex.grade_id, src, names))
        src = cell_source(check)
        new = _guard_call("enter_check", ex.grade_id, *_names_read(src)) + "\n" + src
        if not _ends_with_expression(src):
            new = new.rstrip("\n") + "\n" + _guard_call("leave_check", ex.grade_id)
        check.source = new
    for cell in nb.cells:                    # public self-checks are for students, never run when grading
        if cell.get("cell_type") == "code" and SELFCHECK_TAG in cell_tags(cell) and cell_kind(cell) == "locked":
            cell.source = ""
            cell.outputs = []
            cell.execution_count = None
    install = _guard_call("install", config)
    first = next((i for i, c in enumerate(nb.cells) if c.get("cell_type") == "code"), None)
    if (first is not None and cell_kind(nb.cells[first]) == "locked"
            and "from __future__" not in cell_source(nb.cells[first])):   # a __future__ import must come first
        nb.cells[first].source = install + "\n" + cell_source(nb.cells[first])
    else:
        cell = nbformat.v4.new_code_cell(install)
        cell["id"] = "grading-guard"
        cell.metadata["tags"] = ["nbval-ignore-output"]
        nb.cells.insert(0, cell)
    return warnings
