"""What the grader reports: per-notebook tables, per-student lines, the closing count, gradebooks
(the detailed CSV, Canvas's and Moodle's import formats, JSON) and the class picture.

Statuses of a submission: ``graded``; ``time limit: ...`` (graded up to the overall limit);
``invalid: ...`` (not a readable notebook: scores 0); ``unknown notebook: ...``;
``not graded: ...`` (the grader failed twice outside the student's code: no score at all,
never a 0).
"""
from __future__ import annotations

import csv
import json
import time
from dataclasses import asdict, dataclass, field


@dataclass
class ExerciseResult:
    id: str
    points: float
    max_points: float
    status: str          # pass / fail / timeout / kernel died / not reached / not graded
    reason: str = ""
    note: str = ""       # e.g. extra printed lines that were not compared


@dataclass
class Report:
    file: str
    student: str
    notebook: str | None = None
    status: str = "graded"
    exercises: list = field(default_factory=list)
    total: float = 0.0
    max_points: float = 0.0
    warnings: list = field(default_factory=list)
    seconds: float = 0.0
    seed: int | None = None
    lms: str = ""            # canvas / moodle / "" (see names.py)
    lms_id: str = ""
    late: bool = False
    attempts: int = 1        # 2 when a failure outside the student's code was retried

    def as_dict(self):
        return asdict(self)

    @classmethod
    def from_dict(cls, d: dict) -> "Report":
        d = dict(d)
        d["exercises"] = [ExerciseResult(**e) for e in d.get("exercises", [])]
        known = set(cls.__dataclass_fields__)
        return cls(**{k: v for k, v in d.items() if k in known})


def fmt_points(x) -> str:
    return f"{x:g}" if isinstance(x, (int, float)) else ""


# ------------------------------------------------------------------------------ tables
def format_report(r: Report) -> str:
    head = f"{r.file}  (student: {r.student}"
    if r.lms_id:
        head += f", {r.lms} id: {r.lms_id}" + (", LATE" if r.late else "")
    head += f", notebook: {r.notebook})" if r.notebook else ")"
    lines = [head]
    if r.status != "graded":
        lines.append(f"  status: {r.status}")
    width = max([len(e.id) for e in r.exercises] + [5])
    not_graded = r.status.startswith("not graded")
    for e in r.exercises:
        pts = "-" if not_graded else f"{fmt_points(e.points)}"
        pts = f"{pts}/{fmt_points(e.max_points)}"
        lines.append(f"  {e.id:<{width}}  {pts:>7}  {e.status:<12} {e.reason}".rstrip())
        if e.note:
            lines.append(f"  {'':<{width}}  {'':>7}  note: {e.note}")
    if r.exercises:
        total = "-" if not_graded else fmt_points(r.total)
        lines.append(f"  {'total':<{width}}  {total + '/' + fmt_points(r.max_points):>7}")
    for w in r.warnings:
        lines.append(f"  warning: {w}")
    return "\n".join(lines)


def progress_line(r: Report, done: int, n: int) -> str:
    if r.status.startswith("not graded"):
        score = "not graded"
    else:
        score = f"{fmt_points(r.total)}/{fmt_points(r.max_points)}" if r.exercises else "-"
    extra = "" if r.status == "graded" else f"  [{r.status}]"
    return f"[{done}/{n}] {r.file}: {score} ({r.seconds:.1f} s){extra}"


def student_key(r: Report):
    return (r.lms_id or "", r.student)


def per_student(reports) -> dict:
    """``{(lms id, student): {notebook: report}}`` in first-seen order (a later file of the same
    notebook replaces an earlier one, as an LMS keeps the last submission)."""
    out = {}
    for r in reports:
        if r.notebook:
            out.setdefault(student_key(r), {})[r.notebook] = r
    return out


def student_lines(reports) -> list:
    """One line per student: points per notebook and the total."""
    lines = []
    for (lms_id, student), books in per_student(reports).items():
        parts, total, top = [], 0.0, 0.0
        for name, r in sorted(books.items()):
            if r.status.startswith("not graded"):
                parts.append(f"{name} not graded")
                continue
            parts.append(f"{name} {fmt_points(r.total)}/{fmt_points(r.max_points)}")
            total += r.total
            top += r.max_points
        who = f"{student} ({lms_id})" if lms_id else student
        lines.append(f"{who}: " + ", ".join(parts) + f"; total {fmt_points(total)}/{fmt_points(top)}")
    return lines


def closing_line(reports) -> str:
    """``12 submission(s): 10 graded (4 full marks, 5 partial, 1 zero), 1 unreadable, 1 not graded``."""
    graded = [r for r in reports if r.exercises and (r.status == "graded" or r.status.startswith("time limit"))]
    full = sum(r.total == r.max_points and r.max_points > 0 for r in graded)
    zero = sum(r.total == 0 for r in graded)
    partial = len(graded) - full - zero
    unreadable = sum(r.status.startswith(("invalid", "unknown notebook")) for r in reports)
    not_graded = sum(r.status.startswith("not graded") for r in reports)
    line = (f"{len(reports)} submission(s): {len(graded)} graded ({full} full marks, {partial} partial, "
            f"{zero} zero), {unreadable} unreadable")
    if not_graded:
        line += f", {not_graded} NOT GRADED (the grader failed; see 'not graded' above)"
    return line


# --------------------------------------------------------------------------- gradebooks
def exercise_columns(reports) -> tuple[list, bool]:
    """Exercise column names: ``ex1`` for one notebook, ``NN_slug:ex1`` when several are graded."""
    books = []
    for r in reports:
        if r.notebook and r.notebook not in books:
            books.append(r.notebook)
    several = len(books) > 1
    ids = {}                                   # notebook -> exercise ids in first-seen order
    for r in reports:
        for e in r.exercises:
            seen = ids.setdefault(r.notebook, [])
            if e.id not in seen:
                seen.append(e.id)
    if not several:
        return [i for seen in ids.values() for i in seen], False
    return [f"{book}:{i}" for book in sorted(ids, key=str) for i in ids[book]], True


CSV_HEAD = ["student", "lms_id", "notebook"]
CSV_TAIL = ["total", "max", "status", "file"]


def csv_rows(reports) -> list:
    cols, several = exercise_columns(reports)
    rows = [CSV_HEAD + cols + CSV_TAIL]
    for r in reports:
        blank = r.status.startswith("not graded") or not r.exercises
        pts = {(f"{r.notebook}:{e.id}" if several else e.id): ("" if blank else fmt_points(e.points))
               for e in r.exercises}
        rows.append([r.student, r.lms_id, r.notebook or "", *(pts.get(c, "") for c in cols),
                     "" if blank else fmt_points(r.total), fmt_points(r.max_points) if r.exercises else "",
                     r.status, r.file])
    return rows


def write_csv(reports, path):
    """The detailed gradebook: one row per submission, one column per exercise. A ``not graded``
    row has no points at all (empty cells), so it can never be imported as a 0."""
    _write_rows(path, csv_rows(reports))


def _write_rows(path, rows):
    with open(path, "w", newline="", encoding="utf-8") as f:
        csv.writer(f).writerows(rows)


def lms_rows(reports, fmt: str) -> list:
    """Canvas's gradebook import or Moodle's grading worksheet: one row per student."""
    students = per_student(reports)
    books = sorted({n for b in students.values() for n in b})
    if fmt == "canvas":
        rows = [["Student", "ID", "SIS User ID", "SIS Login ID", "Section", *books]]
        for (lms_id, student), by_book in students.items():
            rows.append([student, lms_id, "", "", "",
                         *(_lms_points(by_book.get(b)) for b in books)])
        return rows
    if fmt == "moodle":
        stamp = time.strftime("%Y-%m-%d %H:%M:%S")
        rows = [["Identifier", "Full name", "Grade", "Last modified (grade)", *books]]
        for (lms_id, student), by_book in students.items():
            scores = [_lms_points(by_book.get(b)) for b in books]
            grade = "" if "" in scores and any(
                r.status.startswith("not graded") for r in by_book.values()) else \
                fmt_points(sum(float(s) for s in scores if s != ""))
            rows.append([f"Participant {lms_id}" if lms_id else "", student, grade, stamp, *scores])
        return rows
    raise ValueError(f"unknown gradebook format {fmt!r} (use canvas or moodle)")


def _lms_points(r) -> str:
    if r is None or r.status.startswith("not graded") or not r.exercises:
        return ""
    return fmt_points(r.total)


def write_lms(reports, path, fmt: str) -> list:
    """Write Canvas's or Moodle's import CSV; returns warnings (students without an LMS id)."""
    rows = lms_rows(reports, fmt)
    _write_rows(path, rows)
    missing = sorted({r.student for r in reports if r.notebook and not r.lms_id})
    return [f"{len(missing)} student(s) have no {fmt} id (not in {fmt}'s download layout): "
            + ", ".join(missing[:5]) + (" ..." if len(missing) > 5 else "")] if missing else []


def write_json(reports, path, solutions_dir):
    data = {"solutions": str(solutions_dir), "submissions": [r.as_dict() for r in reports]}
    with open(path, "w", encoding="utf-8") as f:
        json.dump(data, f, indent=1)
        f.write("\n")


# ------------------------------------------------------------------------------ picture
def summary_png(reports, path) -> None:
    """One panel per notebook; per exercise, how many students got full, partial and no points."""
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    books = {}
    for r in reports:
        if r.notebook and r.exercises and not r.status.startswith("not graded"):
            books.setdefault(r.notebook, []).append(r)
    names = sorted(books) or ["(nothing graded)"]
    ncols = min(3, len(names))
    nrows = -(-len(names) // ncols)
    fig, axes = plt.subplots(nrows, ncols, figsize=(4.2 * ncols, 2.6 * nrows), squeeze=False)
    for k, ax in enumerate(axes.flat):
        if k >= len(names):
            ax.set_visible(False)
            continue
        name = names[k]
        rs = books.get(name, [])
        ids = [e.id for e in rs[0].exercises] if rs else []
        # an exercise's full points: its max, or (a gradebook merged from CSV knows no max) the best seen
        best = {i: max([e.max_points or e.points for r in rs for e in r.exercises if e.id == i] + [0]) for i in ids}
        full = [sum(1 for r in rs for e in r.exercises if e.id == i and best[i] > 0 and e.points >= best[i])
                for i in ids]
        zero = [sum(1 for r in rs for e in r.exercises if e.id == i and e.points == 0) for i in ids]
        part = [len(rs) - f - z for f, z in zip(full, zero)]
        x = range(len(ids))
        ax.bar(x, full, color="#2a9d8f", label="full")
        ax.bar(x, part, bottom=full, color="#e9c46a", label="partial")
        ax.bar(x, zero, bottom=[f + p for f, p in zip(full, part)], color="#e76f51", label="0")
        ax.set_xticks(list(x), ids)
        ax.set_ylabel("students")
        ax.set_title(f"{name} ({len(rs)} graded)", fontsize="medium")
        if k == 0:
            ax.legend(loc="lower right", fontsize="small")
    fig.tight_layout()
    fig.savefig(path, dpi=80)
    plt.close(fig)
