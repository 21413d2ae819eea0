"""Grade exercise notebooks against the solutions with ``pytest --nbval``.

``python -m attention_np.grade SUBMISSION.ipynb [...] [--solutions DIR] [--jobs N]
[--cell-timeout S] [--timeout S] [--memory-limit 4G] [--no-isolation] [--shard K/N]
[--csv FILE [--format detail|canvas|moodle]] [--json FILE] [--summary-png PNG] [--seed N]``
and ``python -m attention_np.grade --merge PART.csv ... --csv ALL.csv``

nbval compares a notebook's re-run outputs with the outputs stored in the same
file, so a submission is never run as it is. For each submission the grader

1. reads it (malformed JSON or a non-notebook gives a one-line verdict);
2. matches it to ``solutions/NN_slug.ipynb`` (file name, else shared cell ids);
3. builds the graded notebook in a temporary folder: the solution's cells, with
   each ``solution`` cell's source taken from the submission (by cell id, else by
   order; no stored outputs, so nbval runs it without comparing), and locked and
   check cells always from the solution with its outputs and execution counts;
   deleted, edited, re-tagged or duplicated check cells change nothing and are
   reported as warnings; extra cells the student added are not run;
4. runs ``pytest --nbval --nbval-current-env`` on it in its own process group with
   a per-cell timeout, a sanitizer, ``--color=no``, ``--junitxml``, warnings
   silenced in the kernel, an overall time limit (the group and the kernel's group
   are killed), and a plugin that notices a dead kernel within a fraction of a second;
5. maps each check cell (``file.ipynb::Cell N``, N counting code cells from 0) to
   its exercise: points, and the first line of the failure.

Each run is isolated (:mod:`.isolation`: bubblewrap or ``unshare``, a memory limit); a failure
outside the student's code (no result, the kernel did not start, a locked cell failing before
any answer ran) is retried once and then reported as ``not graded: <reason>``, never as a 0.
The modules, in the order of the protocol: this one (matching, building, ``grade_one``, the
command line); :mod:`.run` (the isolated nbval run) with :mod:`.isolation` and the plugin
:mod:`._nbplugin`; :mod:`.scoring` (cells -> exercises, reasons, grader failures); :mod:`.report`
(tables, per-student lines, gradebooks, the class picture); :mod:`.shard` (``--shard``,
``--merge``); :mod:`.names` (students and LMS layouts).

The submission file is only read. Exit code 0 when grading ran, whatever the scores; 2 when
the grader could not run (no solutions folder, no submission found, an invalid solution
notebook: nothing is graded then).
"""
from __future__ import annotations

import argparse
import copy
import json
import re
import sys
import tempfile
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import nbformat

from . import isolation, report, shard
from .run import kill_active_runs, run_nbval
from .scoring import _locked_failure_warnings, grader_failure, score, syntax_message  # noqa: F401
from .report import ExerciseResult, Report, fmt_points  # noqa: F401 - re-exported for callers
from .names import identify, student_name
from .checks import SEED_ENV, grading_seed
from .notebook import (
    NotebookError,
    add_guard,
    hidden_check_note,
    cell_kind,
    cell_source,
    cell_tags,
    exercises,
    grade_info,
    load_solution,
    strip_solution,
)

DEFAULT_CELL_TIMEOUT = 30.0
DEFAULT_TIMEOUT = 300.0
PACKAGE_PARENT = Path(__file__).resolve().parents[2]   # the folder that holds attention_np/
IGNORE_OUTPUT_TAG = "nbval-ignore-output"


class SubmissionError(Exception):
    """The submission cannot be read as a notebook; the message is the verdict."""


# -------------------------------------------------------------------------- solutions
def default_solutions_dir() -> Path | None:
    """``solutions/`` in the current folder, else the repository's ``solutions/`` beside the package."""
    for candidate in (Path("solutions"), PACKAGE_PARENT / "solutions"):
        if candidate.is_dir():
            return candidate
    return None


class Solutions:
    """The solution notebooks of a folder, read and validated on first use (thread safe)."""

    def __init__(self, folder):
        self.folder = Path(folder)
        self.names = sorted(p.stem for p in self.folder.glob("*.ipynb"))
        self._cache, self._ids, self._lock = {}, {}, threading.Lock()

    def get(self, name):
        """``(notebook, None)`` or ``(None, error message)``."""
        with self._lock:
            if name not in self._cache:
                try:
                    self._cache[name] = (load_solution(self.folder / f"{name}.ipynb"), None)
                except NotebookError as exc:
                    self._cache[name] = (None, str(exc).splitlines()[0])
            return self._cache[name]

    def broken(self, names) -> list:
        """``[(name, first line of the error)]`` for the named solutions that do not load."""
        return [(n, self.get(n)[1]) for n in sorted(names) if self.get(n)[0] is None]

    def cell_ids(self, name):
        with self._lock:
            if name not in self._ids:
                try:
                    nb = json.loads((self.folder / f"{name}.ipynb").read_text(encoding="utf-8"))
                    self._ids[name] = {c.get("id") for c in nb.get("cells", []) if isinstance(c, dict)} - {None}
                except (OSError, ValueError, AttributeError):
                    self._ids[name] = set()
            return self._ids[name]

    def match(self, path: Path, cells) -> str | None:
        """The solution a submission belongs to: by file name (whole stem, contained stem, ``NN_``
        prefix), else by cell ids when nearly all of one solution's ids are present (ids such as
        ``ex1-check`` may recur across chapters, so a partial overlap is not enough)."""
        stem = path.stem
        if stem in self.names:
            return stem
        inside = [n for n in self.names if n in stem]
        if inside:
            return max(inside, key=len)
        numbers = set(re.findall(r"(?<!\d)(\d{2})(?=_)", stem))
        by_number = [n for n in self.names if n[:2] in numbers and n[2:3] == "_"]
        if len(by_number) == 1:
            return by_number[0]
        ids = {c.get("id") for c in cells} - {None}
        scored = sorted(((len(ids & self.cell_ids(n)) / max(1, len(self.cell_ids(n))), n) for n in self.names),
                        reverse=True)
        if scored and scored[0][0] >= 0.8 and (len(scored) == 1 or scored[1][0] < scored[0][0]):
            return scored[0][1]
        return None


# ------------------------------------------------------------------------- submissions
def read_submission(path: Path) -> list:
    """The submission's cells as plain dicts (tolerant; never executes anything)."""
    try:
        data = path.read_bytes()
    except OSError as exc:
        raise SubmissionError(f"cannot read file: {exc.strerror or exc}") from None
    try:
        nb = json.loads(data.decode("utf-8"))
    except UnicodeDecodeError:
        raise SubmissionError("not a notebook: the file is not UTF-8 text") from None
    except ValueError as exc:
        raise SubmissionError(f"malformed JSON: {exc}") from None
    if not isinstance(nb, dict) or not isinstance(nb.get("cells"), list):
        raise SubmissionError("not a Jupyter notebook: the JSON has no list of cells")
    if nb.get("nbformat") != 4:
        raise SubmissionError(f"not a Jupyter notebook in format 4 (nbformat={nb.get('nbformat')!r})")
    cells = []
    for c in nb["cells"]:
        if not isinstance(c, dict):
            continue
        cid = c.get("id")
        cells.append({
            "id": cid if isinstance(cid, str) and cid else None,
            "cell_type": c.get("cell_type"),
            "source": cell_source(c),
            "tags": cell_tags(c),
            "grade_id": grade_info(c)[0],
            "metadata": c.get("metadata") if isinstance(c.get("metadata"), dict) else {},
        })
    return cells


def _same_source(a: str, b: str) -> bool:
    return a.strip() == b.strip()


def build_graded(solution, cells):
    """The notebook to run (solution cells from the submission, the rest from the solution) and warnings."""
    nb = copy.deepcopy(solution)
    warnings = []
    sol_ids = {c.get("id") for c in nb.cells}
    by_id = {}
    for c in cells:
        if c["id"] is not None:
            by_id.setdefault(c["id"], c)
    used = set()
    grade_of = {}  # solution-cell index -> the exercise it belongs to
    for ex in exercises(nb):
        for i in ex.solution_indices:
            grade_of[i] = ex.grade_id

    # 1. solution cells, by cell id
    sol_indices = [i for i, c in enumerate(nb.cells) if cell_kind(c) == "solution"]
    source_for = {}
    for i in sol_indices:
        cid = nb.cells[i].get("id")
        sub = by_id.get(cid)
        if sub is not None and sub["cell_type"] == "code":
            source_for[i] = sub["source"]
            used.add(id(sub))
    # 2. the rest by order among the submission's solution-tagged cells with unknown ids
    spare = [c for c in cells if c["cell_type"] == "code" and "solution" in c["tags"]
             and c["id"] not in sol_ids and id(c) not in used]
    for i in sol_indices:
        if i not in source_for and spare:
            c = spare.pop(0)
            source_for[i] = c["source"]
            used.add(id(c))
    for i in sol_indices:
        cell = nb.cells[i]
        if i in source_for:
            cell.source = source_for[i]
        else:
            cell.source = strip_solution(cell_source(cell))
            ex = grade_of.get(i)
            warnings.append(f"solution cell {cell.get('id')!r}{f' ({ex})' if ex else ''} is missing "
                            "from the submission; graded as unanswered")
        cell.outputs = []
        cell.execution_count = None          # nbval does not compare unrun cells
        tags = list(cell.metadata.get("tags", []))
        if IGNORE_OUTPUT_TAG not in tags:
            cell.metadata["tags"] = tags + [IGNORE_OUTPUT_TAG]

    # 3. check cells: always the solution's; report what the student did to them
    for ex in exercises(nb):
        check = nb.cells[ex.check_index]
        same_id = by_id.get(ex.check_id)
        with_grade = [c for c in cells if c["grade_id"] == ex.grade_id]
        if same_id is None and not with_grade:
            warnings.append(f"check cell of {ex.grade_id} was deleted; the original was used")
            continue
        found = same_id if same_id is not None else with_grade[0]
        if not (_same_source(found["source"], cell_source(check))          # the released exercise shows a note
                or _same_source(found["source"], hidden_check_note(check))):
            warnings.append(f"check cell of {ex.grade_id} was edited; the original was used")
        if "check" not in found["tags"] or found["grade_id"] != ex.grade_id:
            warnings.append(f"check cell of {ex.grade_id} was re-tagged; the original was used")
        if len(with_grade) > 1:
            warnings.append(f"check cell of {ex.grade_id} appears {len(with_grade)} times; the original was used once")

    # 4. locked code cells edited, extra cells added
    for i, cell in enumerate(nb.cells):
        if cell_kind(cell) == "locked" and cell.cell_type == "code":
            sub = by_id.get(cell.get("id"))
            if sub is not None and not _same_source(sub["source"], cell_source(cell)):
                warnings.append(f"locked cell {cell.get('id')!r} was edited; the original was used")
    known_sources = {cell_source(c).strip() for c in solution.cells}
    extra = [c for c in cells if c["cell_type"] == "code" and c["source"].strip()
             and c["id"] not in sol_ids and id(c) not in used and c["grade_id"] is None
             and c["source"].strip() not in known_sources]   # a locked cell that lost its id is not extra
    if extra:
        names = ", ".join(repr(c["id"]) if c["id"] else "(no id)" for c in extra[:5])
        more = "" if len(extra) <= 5 else f" and {len(extra) - 5} more"
        warnings.append(f"{len(extra)} extra code cell(s) added to the notebook were not run: {names}{more} "
                        "(code a solution needs belongs inside its solution cell)")
    warnings.extend(add_guard(nb))     # off-limits guard and check prologues (grading.notebook / grading.guard)
    return nb, warnings


# ------------------------------------------------------------------------------ grading
def grade_one(path, solutions: Solutions, cell_timeout=DEFAULT_CELL_TIMEOUT, timeout=DEFAULT_TIMEOUT, seed=None,
              sandbox=None, retries=1):
    """Grade one submission; never raises for anything the submission contains."""
    path = Path(path)
    start = time.monotonic()
    report = Report(file=str(path), student=student_name(path, None),
                    seed=seed if seed is not None else _safe_seed())
    try:
        return _grade_one(path, solutions, cell_timeout, timeout, seed, report, sandbox, retries)
    except Exception as exc:  # noqa: BLE001 - one broken submission must not stop a batch
        report.status = f"not graded: the grader failed on this file: {type(exc).__name__}: {exc}"
        for e in report.exercises:
            e.points, e.status, e.reason = 0, "not graded", report.status
        report.total = 0
        return report
    finally:
        report.seconds = round(time.monotonic() - start, 2)


def _safe_seed():
    try:
        return grading_seed()
    except ValueError:
        return None


def _grade_one(path, solutions, cell_timeout, timeout, seed, report, sandbox, retries):
    if not path.is_file():
        report.status = "invalid: file not found"
        return report
    try:
        cells = read_submission(path)
    except SubmissionError as exc:
        cells, problem = None, str(exc)
    name = solutions.match(path, cells or [])
    report.notebook = name
    who = identify(path, name)
    report.student, report.lms, report.lms_id, report.late = who.student, who.lms, who.lms_id, who.late
    solution, error = solutions.get(name) if name else (None, None)
    if solution is not None:
        report.exercises = [ExerciseResult(e.grade_id, 0, e.points, "not graded", "")
                            for e in exercises(solution)]
        report.max_points = sum(e.points for e in exercises(solution))
    if cells is None:
        report.status = f"invalid: {problem}"
        return report
    if name is None:
        report.status = (f"unknown notebook: no solution in {solutions.folder} matches "
                         f"{path.name!r} by name or by cell ids")
        return report
    if solution is None:
        report.status = f"not graded: the solution notebook is invalid: {error}"
        return report

    sandbox = sandbox or isolation.Sandbox("none", None)
    graded, report.warnings = build_graded(solution, cells)
    failure = None
    for attempt in range(1 + max(0, retries)):
        with tempfile.TemporaryDirectory(prefix="attention_np_grade_", ignore_cleanup_errors=True) as tmp:
            workdir = Path(tmp)
            nb_path = workdir / f"{name}.ipynb"
            nbformat.write(graded, str(nb_path))
            results, killed, code, tail = run_nbval(nb_path, workdir, cell_timeout, timeout, seed, sandbox)
        failure = grader_failure(graded, results, killed, code)
        if failure is None:
            break
        if tail and failure.startswith("nbval produced no results"):
            failure += f": {tail}"
        report.attempts = attempt + 2 if attempt < retries else attempt + 1
    if failure is not None:              # twice outside the student's code: not the student's zero
        report.status = f"not graded: {failure}"
        for e in report.exercises:
            e.points, e.status, e.reason = 0, "not graded", failure
        return report
    if not results:
        report.status = f"time limit: the overall limit of {timeout:g} s was exceeded before any cell ran"
        for e in report.exercises:
            e.status, e.reason = "not reached", report.status
        return report
    report.exercises = score(graded, results, killed, timeout, sandbox.memory_limit)
    report.total = sum(e.points for e in report.exercises)
    report.warnings += _locked_failure_warnings(graded, results)
    if killed:
        report.status = f"time limit: the overall limit of {timeout:g} s was exceeded; later exercises not reached"
    return report


# ------------------------------------------------------------------------------- command
def _expand(paths):
    files = []
    for p in map(Path, paths):
        if p.is_dir():
            files.extend(q for q in p.rglob("*.ipynb") if ".ipynb_checkpoints" not in q.parts)
        else:
            files.append(p)
    return sorted(dict.fromkeys(files), key=shard.sort_key)


def _parser():
    parser = argparse.ArgumentParser(
        prog="python -m attention_np.grade",
        description="Grade exercise notebooks against the solutions, each submission isolated "
                    "(bubblewrap or unshare on Linux; see the README's threat model).")
    parser.add_argument("submissions", nargs="*", help="submission notebooks (or folders of them)")
    parser.add_argument("--solutions", default=None,
                        help="solutions folder (default: ./solutions, else the repository's solutions/)")
    parser.add_argument("--jobs", "-j", type=int, default=1, help="submissions graded in parallel (default 1)")
    parser.add_argument("--cell-timeout", type=float, default=DEFAULT_CELL_TIMEOUT,
                        help=f"seconds per cell (default {DEFAULT_CELL_TIMEOUT:g})")
    parser.add_argument("--timeout", type=float, default=DEFAULT_TIMEOUT,
                        help=f"seconds per submission in all (default {DEFAULT_TIMEOUT:g})")
    parser.add_argument("--memory-limit", default="4G",
                        help="memory per process of a submission, e.g. 4G, 512M, 0 for none (default 4G)")
    parser.add_argument("--no-isolation", action="store_true",
                        help="run student code with the grader's own rights (not recommended)")
    parser.add_argument("--shard", default=None, metavar="K/N",
                        help="grade only the K-th of N interleaved shares of the sorted submission list")
    parser.add_argument("--merge", nargs="+", metavar="PART", default=None,
                        help="join the --csv (or --json) files of shards instead of grading")
    parser.add_argument("--csv", help="write a gradebook: one row per submission (or --format's import file)")
    parser.add_argument("--format", choices=["detail", "canvas", "moodle"], default="detail",
                        help="--csv layout: per-exercise detail (default), or Canvas's / Moodle's import file")
    parser.add_argument("--json", help="write the full report as JSON")
    parser.add_argument("--summary-png", metavar="PATH", help="draw the per-exercise score distribution")
    parser.add_argument("--seed", type=int, default=None,
                        help=f"seed for the check inputs (sets ${SEED_ENV}; default: the fixed default seed)")
    return parser


def _write_outputs(args, reports, solutions_dir) -> None:
    if args.csv:
        if args.format == "detail":
            report.write_csv(reports, args.csv)
        else:
            for w in report.write_lms(reports, args.csv, args.format):
                print(f"warning: {w}")
        print(f"wrote {args.csv}")
    if args.json:
        report.write_json(reports, args.json, solutions_dir)
        print(f"wrote {args.json}")
    if args.summary_png:
        report.summary_png(reports, args.summary_png)
        print(f"wrote {args.summary_png}")


def _print_summary(reports) -> None:
    for r in reports:
        print(report.format_report(r))
        print()
    lines = report.student_lines(reports)
    if len(reports) > 1 and lines:
        print("per student:")
        for line in lines:
            print(f"  {line}")
        print()
    if len(reports) > 1:
        print(report.closing_line(reports))


def main(argv=None) -> int:
    args = _parser().parse_args(argv)
    if args.merge:
        try:
            reports = shard.merge(args.merge)
        except (OSError, ValueError) as exc:
            print(f"error: cannot merge: {exc}", file=sys.stderr)
            return 2
        _print_summary(reports)
        _write_outputs(args, reports, args.solutions or "")
        return 0
    if not args.submissions:
        print("error: no submission given (or use --merge PART ...)", file=sys.stderr)
        return 2
    try:
        memory_limit = isolation.parse_size(args.memory_limit)
        part = shard.parse_shard(args.shard) if args.shard else None
    except ValueError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2

    folder = Path(args.solutions) if args.solutions else default_solutions_dir()
    if folder is None or not folder.is_dir():
        print(f"error: solutions folder {args.solutions or 'solutions/'} not found "
              "(use --solutions DIR)", file=sys.stderr)
        return 2
    solutions = Solutions(folder)
    if not solutions.names:
        print(f"error: no solution notebooks in {folder}", file=sys.stderr)
        return 2
    files = _expand(args.submissions)
    if not files or not any(f.is_file() for f in files):
        print("error: no submission file found", file=sys.stderr)
        return 2
    if args.seed is None:
        try:
            grading_seed()
        except ValueError as exc:
            print(f"error: {exc}", file=sys.stderr)
            return 2
    if part:
        files = shard.select(files, *part)
        print(f"shard {part[0]}/{part[1]}: {len(files)} submission(s)")
    # Nothing can be graded against a broken solution: say so before running anyone's code.
    broken = solutions.broken({solutions.match(f, []) for f in files} - {None})
    if broken:
        for name, error in broken:
            print(f"error: the solution notebook {name}.ipynb is invalid: {error}", file=sys.stderr)
        print("nothing graded: fix the solution notebook(s) first", file=sys.stderr)
        return 2

    sandbox = isolation.detect(not args.no_isolation, memory_limit)
    sandbox.hidden = [folder, *{f.resolve().parent for f in files}]
    sandbox.readonly = [folder, *{f.resolve().parent for f in files}]
    print(sandbox.describe(), flush=True)

    several = len(files) > 1
    done, lock = [0], threading.Lock()

    def job(path):
        r = grade_one(path, solutions, args.cell_timeout, args.timeout, args.seed, sandbox)
        if several:
            with lock:
                done[0] += 1
                print(report.progress_line(r, done[0], len(files)), flush=True)
        return r

    pool = ThreadPoolExecutor(max_workers=max(1, args.jobs))
    try:
        reports = list(pool.map(job, files))
    except KeyboardInterrupt:
        pool.shutdown(wait=False, cancel_futures=True)
        kill_active_runs()
        print("interrupted: running submissions were stopped", file=sys.stderr)
        return 130
    pool.shutdown()

    if several:
        print()
    _print_summary(reports)
    _write_outputs(args, reports, folder)
    return 0


if __name__ == "__main__":
    sys.exit(main())
