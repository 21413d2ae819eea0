"""Class scale: ``--shard K/N`` grades the K-th of N interleaved shares of the sorted submission
list; ``--merge part1.csv part2.csv ...`` (or the parts' ``.json`` reports) joins the shares
into the gradebook a single run over the whole list would have written.

Any scheduler can run the shares: a Slurm job array (``--shard $SLURM_ARRAY_TASK_ID/N``), a CI
matrix, a Kubernetes indexed job. Interleaving spreads slow chapters over all shares.
"""
from __future__ import annotations

import csv
import json
import re
from pathlib import Path

from .report import CSV_HEAD, CSV_TAIL, ExerciseResult, Report


def parse_shard(text: str) -> tuple[int, int]:
    m = re.fullmatch(r"\s*(\d+)\s*/\s*(\d+)\s*", str(text))
    if not m or not 1 <= int(m[1]) <= int(m[2]):
        raise ValueError(f"--shard takes K/N with 1 <= K <= N (e.g. 2/8), got {text!r}")
    return int(m[1]), int(m[2])


def sort_key(path) -> str:
    return str(path)


def select(files, k: int, n: int) -> list:
    """The K-th (from 1) of N interleaved shares of the sorted list: items K-1, K-1+N, K-1+2N, ..."""
    return sorted(files, key=sort_key)[k - 1::n]


def _float(text: str):
    try:
        value = float(text)
    except ValueError:
        return 0.0
    return int(value) if value.is_integer() else value


def reports_from_csv(path) -> list:
    """Reports rebuilt from a detailed gradebook (points only: the CSV holds no reasons)."""
    with open(path, newline="", encoding="utf-8") as f:
        rows = list(csv.reader(f))
    if not rows:
        return []
    head = rows[0]
    if head[:len(CSV_HEAD)] != CSV_HEAD or head[-len(CSV_TAIL):] != CSV_TAIL:
        raise ValueError(f"{path}: not a gradebook written by the grader's --csv (columns {head[:4]}...)")
    cols = head[len(CSV_HEAD):-len(CSV_TAIL)]
    reports = []
    for row in rows[1:]:
        rec = dict(zip(head, row))
        values = row[len(CSV_HEAD):-len(CSV_TAIL)]
        notebook = rec["notebook"] or None
        exercises = []
        if notebook and rec["max"] != "":
            for col, value in zip(cols, values):
                book, _, ex_id = col.rpartition(":")
                if book and book != notebook:
                    continue
                exercises.append(ExerciseResult(ex_id, _float(value) if value else 0, 0,
                                                 "not graded" if rec["status"].startswith("not graded") else ""))
        reports.append(Report(file=rec["file"], student=rec["student"], notebook=notebook, status=rec["status"],
                              exercises=exercises, total=_float(rec["total"]) if rec["total"] else 0,
                              max_points=_float(rec["max"]) if rec["max"] else 0, lms_id=rec["lms_id"]))
    return reports


def reports_from_json(path) -> list:
    data = json.loads(Path(path).read_text(encoding="utf-8"))
    return [Report.from_dict(d) for d in data.get("submissions", [])]


def merge(paths) -> list:
    """All reports of the parts, in the order of a single run over the sorted submission list."""
    reports = []
    for p in paths:
        p = Path(p)
        reports += reports_from_json(p) if p.suffix.lower() == ".json" else reports_from_csv(p)
    seen, out = set(), []
    for r in sorted(reports, key=lambda r: sort_key(r.file)):
        if r.file in seen:
            raise ValueError(f"{r.file} appears in more than one part: were the shares overlapping?")
        seen.add(r.file)
        out.append(r)
    return out
