"""Generate ``exercises/`` from ``solutions/``.

``python -m attention_np.release [--check] [SOLUTIONS_DIR] [EXERCISES_DIR]``

Each ``solutions/NN_slug.ipynb`` becomes ``exercises/NN_slug.ipynb``: solution
regions become ``# YOUR CODE HERE`` + ``raise NotImplementedError()``, the
outputs and execution counts of solution and check cells are cleared, and every
cell keeps its id, tags and metadata.  The output is deterministic, so running
the release twice changes nothing.  ``--check`` writes nothing and exits 1 if
``exercises/`` differs from what would be generated.

Exit codes: 0 done / in sync, 1 invalid solutions or out of date, 2 usage error.
"""
from __future__ import annotations

import argparse
import sys
from pathlib import Path

from .notebook import NotebookError, load_solution, make_exercise, write_text


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
        result[path.name] = write_text(make_exercise(nb))
    if errors:
        raise NotebookError("\n".join(errors))
    return result


def out_of_date(generated: dict, exercises_dir) -> list:
    """Messages for every exercise that is missing, differs, or has no solution."""
    exercises_dir = Path(exercises_dir)
    problems = []
    for name, text in generated.items():
        target = exercises_dir / name
        if not target.exists():
            problems.append(f"{target}: missing")
        elif target.read_text(encoding="utf-8") != text:
            problems.append(f"{target}: differs from its solution's release")
    if exercises_dir.is_dir():
        for path in sorted(exercises_dir.glob("*.ipynb")):
            if path.name not in generated:
                problems.append(f"{path}: has no solution in the solutions folder")
    return problems


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m attention_np.release",
        description="Generate exercise notebooks from solution notebooks.")
    parser.add_argument("solutions", nargs="?", default="solutions", help="solutions folder (default: solutions/)")
    parser.add_argument("exercises", nargs="?", default="exercises", help="exercises folder (default: exercises/)")
    parser.add_argument("--check", action="store_true",
                        help="write nothing; exit 1 if the exercises folder is out of date")
    args = parser.parse_args(argv)

    solutions_dir, exercises_dir = Path(args.solutions), Path(args.exercises)
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
        if problems:
            print("exercises are out of date; run `python -m attention_np.release`:", file=sys.stderr)
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
    print(f"{len(generated)} exercise(s), {written} updated")
    return 0


if __name__ == "__main__":
    sys.exit(main())
