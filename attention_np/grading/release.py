"""Generate ``exercises/`` from ``solutions/``, and execute solutions cleanly.

``python -m attention_np.release [--check [--execute] [--seed N]] [SOLUTIONS_DIR] [EXERCISES_DIR]``
``python -m attention_np.release --execute SOLUTION.ipynb [...]``

Each ``solutions/NN_slug.ipynb`` becomes ``exercises/NN_slug.ipynb``: solution regions become
``# YOUR CODE HERE`` + ``raise NotImplementedError()``, every check cell is replaced by a short
comment-only note (the graded check stays hidden; the grader runs it from ``solutions/``),
``selfcheck`` cells are copied, and no cell keeps an output or an execution count.  Every cell keeps
its id, tags and metadata.  The output is deterministic, so running the release twice changes
nothing.  The release refuses a solution notebook with authoring mistakes (see
:func:`attention_np.grading.notebook.validate_solution` and ``release_problems``) and an exercise
that a hidden check's source would reach.

``--check`` writes nothing and exits 1 if ``exercises/`` differs from what would be generated or
stores an output.  ``--check --execute`` also runs every solution twice (the default grading seed
and ``--seed``, default the default + 1) and exits 1 if a stored output is stale (differs from a
fresh run) or a check/locked cell prints output that depends on the seed.

``--execute FILE ...`` executes solution notebooks in place the way the book stores them: a fresh
kernel in the notebook's folder, ``ATTENTION_NP_GRADE_SEED`` ignored (the stored outputs are the
default seed's), no nbclient timestamps.

Exit codes: 0 done / in sync, 1 invalid solutions or out of date, 2 usage error.
"""
from __future__ import annotations

import argparse
import copy
import os
import re
import sys
from pathlib import Path

import nbformat

from .checks import DEFAULT_SEED, SEED_ENV
from .notebook import (
    NotebookError,
    cell_kind,
    describe_cell,
    exercises,
    hidden_check_leaks,
    load_solution,
    make_exercise,
    release_problems,
    stored_outputs,
    write_text,
)

EXECUTE_TIMEOUT = 600


# ------------------------------------------------------------------------------ generate
def generate(solutions_dir) -> dict:
    """``{file name: exercise text}`` for every solution notebook; raises NotebookError listing all problems."""
    solutions_dir = Path(solutions_dir)
    result, errors = {}, []
    for path in sorted(solutions_dir.glob("*.ipynb")):
        try:
            nb = load_solution(path)
        except NotebookError as exc:
            errors.append(str(exc))
            continue
        problems = release_problems(nb, str(path))
        exercise = make_exercise(nb)
        problems += hidden_check_leaks(nb, exercise, str(path))
        if problems:
            errors.extend(problems)
            continue
        result[path.name] = write_text(exercise)
    if errors:
        raise NotebookError("\n".join(errors))
    return result


def out_of_date(generated: dict, exercises_dir) -> list:
    """Messages for every exercise that is missing, differs, stores outputs, or has no solution."""
    exercises_dir = Path(exercises_dir)
    problems = []
    for name, text in generated.items():
        target = exercises_dir / name
        if not target.exists():
            problems.append(f"{target}: missing")
            continue
        current = target.read_text(encoding="utf-8")
        if current != text:
            problems.append(f"{target}: differs from its solution's release")
        try:
            stored = stored_outputs(nbformat.reads(current, as_version=4))
        except Exception:  # noqa: BLE001 - an unreadable exercise already differs
            stored = []
        if stored:
            problems.append(f"{target}: stores outputs or execution counts ({', '.join(stored[:3])}"
                            f"{' ...' if len(stored) > 3 else ''}); released exercises store none")
    if exercises_dir.is_dir():
        for path in sorted(exercises_dir.glob("*.ipynb")):
            if path.name not in generated:
                problems.append(f"{path}: has no solution in the solutions folder")
    return problems


# ------------------------------------------------------------------------------ execute
def kernel_env(seed=None) -> dict:
    """The kernel's environment: a shell-wide ``ATTENTION_NP_GRADE_SEED`` is ignored unless ``seed`` is given."""
    env = {k: v for k, v in os.environ.items() if k != SEED_ENV}
    if seed is not None:
        env[SEED_ENV] = str(int(seed))
    return env


WIDGET_VIEW = "application/vnd.jupyter.widget-view+json"


def execute(nb, cwd, seed=None, timeout=EXECUTE_TIMEOUT):
    """A copy of ``nb`` executed top to bottom in a fresh kernel (errors stop it), stored clean.

    Clean means: no timestamps, no widget state, and no outputs in a cell that displayed a widget (a slider's
    view needs the kernel that made it; JupyterLab would otherwise restore or rewrite it when a reader opens
    the notebook, and the chapters keep a static figure just before every slider).
    """
    from nbclient import NotebookClient

    nb = copy.deepcopy(nb)
    client = NotebookClient(nb, timeout=timeout, kernel_name="python3", record_timing=False,
                            resources={"metadata": {"path": str(cwd)}})
    client.execute(env=kernel_env(seed))
    for cell in nb.cells:
        cell.get("metadata", {}).pop("execution", None)
        if any(WIDGET_VIEW in out.get("data", {}) for out in cell.get("outputs", [])):
            cell["outputs"] = []
    nb.metadata.pop("widgets", None)
    return nb


_ADDRESS = re.compile(r" at 0x[0-9a-fA-F]+")


def output_signature(cell) -> list:
    """What nbval compares, roughly: stream text and the text/plain of results (images left out)."""
    sig = []
    for out in cell.get("outputs", []):
        kind = out.get("output_type")
        if kind == "stream":               # consecutive chunks of one stream are one output (as nbval sees them)
            text = out.get("text", "")
            text = _ADDRESS.sub(" at 0x?", "".join(text) if isinstance(text, list) else text)
            if sig and sig[-1][0] == out.get("name"):
                sig[-1] = (out.get("name"), sig[-1][1] + text)
            else:
                sig.append((out.get("name"), text))
        elif kind in ("execute_result", "display_data"):
            plain = out.get("data", {}).get("text/plain", "")
            sig.append((kind, _ADDRESS.sub(" at 0x?", "".join(plain) if isinstance(plain, list) else plain)))
        elif kind == "error":
            sig.append(("error", out.get("ename"), out.get("evalue")))
    return sig


def _first_difference(a, b) -> str:
    for x, y in zip(a, b):
        if x != y:
            return f"expected {str(x[-1])[:70]!r}, got {str(y[-1])[:70]!r}"
    return f"{len(a)} output(s) stored, {len(b)} produced"


def execution_problems(path, other_seed=None, stale=True) -> list:
    """Run a solution at the default seed and at ``other_seed``; stale stored outputs, seed-dependent output."""
    path = Path(path)
    nb = nbformat.read(path, as_version=4)
    other_seed = DEFAULT_SEED + 1 if other_seed is None else int(other_seed)
    name = str(path)
    problems = []
    try:
        fresh = execute(nb, path.parent)
        other = execute(nb, path.parent, seed=other_seed)
    except Exception as exc:  # noqa: BLE001 - nbclient's CellExecutionError and kernel failures
        first = str(exc).strip().splitlines()
        return [f"{name}: executing the solution failed: {first[-1] if first else type(exc).__name__}"]
    check_gid = {ex.check_index: ex.grade_id for ex in exercises(nb)}
    for i, (stored, a, b) in enumerate(zip(nb.cells, fresh.cells, other.cells)):
        if stored.get("cell_type") != "code":
            continue
        where = f"{name}: {describe_cell(i, stored)}"
        if stale and (output_signature(stored) != output_signature(a)
                      or stored.get("execution_count") != a.get("execution_count")):
            problems.append(f"{where}: stored outputs are stale ({_first_difference(output_signature(stored), output_signature(a))}); "
                            f"re-execute with `python -m attention_np.release --execute {name}`")
        if cell_kind(stored) != "solution" and output_signature(a) != output_signature(b):
            detail = _first_difference(output_signature(a), output_signature(b))
            what = f"{check_gid[i]}'s check" if i in check_gid else "this cell"
            problems.append(f"{where}: {what} prints output that depends on the seed "
                            f"(seed {DEFAULT_SEED} vs {other_seed}: {detail}); print only seed-independent lines "
                            "such as 'ex5 ...: ok'")
    return problems


def execute_in_place(path) -> None:
    """Execute a solution or chapter notebook and store it clean (canonical text, no timestamps, no widget
    state, default seed)."""
    path = Path(path)
    nb = execute(nbformat.read(path, as_version=4), path.parent)
    path.write_text(write_text(nb), encoding="utf-8")


# ------------------------------------------------------------------------------ command line
def main(argv=None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m attention_np.release",
        description="Generate exercise notebooks from solution notebooks; execute solution notebooks.")
    parser.add_argument("paths", nargs="*",
                        help="SOLUTIONS_DIR [EXERCISES_DIR] (default: solutions/ exercises/); "
                             "with --execute alone: solution or chapter notebooks to execute in place")
    parser.add_argument("--check", action="store_true",
                        help="write nothing; exit 1 if the exercises folder is out of date or stores outputs")
    parser.add_argument("--execute", action="store_true",
                        help="with --check: also run every solution (two seeds) to find stale or seed-dependent "
                             "outputs; alone: execute the given solution or chapter notebooks in place, cleanly")
    parser.add_argument("--seed", type=int, default=None,
                        help=f"the second seed for --check --execute (default {DEFAULT_SEED + 1})")
    args = parser.parse_args(argv)

    if args.execute and not args.check:
        files = [Path(p) for p in args.paths]
        if not files or not all(p.suffix == ".ipynb" and p.is_file() for p in files):
            print("error: --execute takes solution or chapter notebooks, e.g. "
                  "`python -m attention_np.release --execute solutions/02_scaled_dot_product.ipynb`", file=sys.stderr)
            return 2
        failed = 0
        for path in files:
            try:
                execute_in_place(path)
            except Exception as exc:  # noqa: BLE001
                lines = str(exc).strip().splitlines()
                print(f"error: {path}: {lines[-1] if lines else type(exc).__name__}", file=sys.stderr)
                failed += 1
                continue
            print(f"executed {path}")
        if not failed and any(p.resolve().parent.name == "solutions" for p in files):
            print("now run `python -m attention_np.release` to regenerate the exercises")
        return 1 if failed else 0

    if len(args.paths) > 2:
        parser.error("at most two folders: SOLUTIONS_DIR EXERCISES_DIR")
    solutions_dir = Path(args.paths[0] if args.paths else "solutions")
    exercises_dir = Path(args.paths[1] if len(args.paths) > 1 else "exercises")
    if not solutions_dir.is_dir():
        print(f"error: solutions folder {solutions_dir} not found", file=sys.stderr)
        return 2
    try:
        generated = generate(solutions_dir)
    except NotebookError as exc:
        print("error: invalid solution notebook(s):", file=sys.stderr)
        for line in str(exc).splitlines():
            print(f"  {line}", file=sys.stderr)
        return 1

    problems = out_of_date(generated, exercises_dir)
    if args.check:
        if args.execute:
            for name in generated:
                print(f"executing {solutions_dir / name} (two seeds)", flush=True)
                problems += execution_problems(solutions_dir / name, args.seed)
        if problems:
            print("exercises are out of date or solutions need work; fix the solution, run "
                  "`python -m attention_np.release`:", file=sys.stderr)
            for line in problems:
                print(f"  {line}", file=sys.stderr)
            return 1
        print(f"exercises up to date ({len(generated)} notebook(s))")
        return 0

    exercises_dir.mkdir(parents=True, exist_ok=True)
    written = 0
    for name, text in generated.items():
        target = exercises_dir / name
        if not target.exists() or target.read_text(encoding="utf-8") != text:
            target.write_text(text, encoding="utf-8")
            print(f"wrote {target}")
            written += 1
    for line in problems:
        if line.endswith("has no solution in the solutions folder"):
            print(f"warning: {line}", file=sys.stderr)
    print(f"{len(generated)} exercise notebook(s), {written} written")
    return 0


if __name__ == "__main__":
    sys.exit(main())
