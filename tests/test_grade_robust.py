"""No zero for the grader's own failure (issue 11 item 6, issue 16 item 5).

* Correct notebooks graded repeatedly with ``--jobs 2`` while the CPU is saturated get full marks
  every time (the chapter solutions once, the small fixture many times).
* A failure outside the student's code (here: a locked cell that fails before any answer ran)
  is retried once; a flaky one then grades normally, a persistent one is reported as
  ``not graded: <reason>`` with empty scores in the CSV, never as a 0.
* An invalid solution notebook: exit code 2, nothing graded.
"""
import csv
import json
import multiprocessing
import os
import shutil
import subprocess
import sys
import time
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
FIXTURES = Path(__file__).parent / "fixtures" / "grading"
FIXTURE = FIXTURES / "solutions" / "90_fixture.ipynb"
FULL = 8


def grade(args, cwd, timeout=600):
    env = {k: v for k, v in os.environ.items() if k != "ATTENTION_NP_GRADE_SEED"}
    return subprocess.run([sys.executable, "-m", "attention_np.grade", *map(str, args)], cwd=cwd, env=env,
                          capture_output=True, text=True, timeout=timeout)


def _spin(seconds):
    end = time.monotonic() + seconds
    while time.monotonic() < end:
        pass


@pytest.fixture()
def cpu_load():
    """Two busy processes (one per core of the reference machine) for the duration of the test."""
    procs = [multiprocessing.Process(target=_spin, args=(300,), daemon=True) for _ in range(2)]
    for p in procs:
        p.start()
    yield
    for p in procs:
        p.kill()
        p.join()


def test_correct_notebooks_get_full_marks_every_time_under_load(tmp_path, cpu_load):
    subs = []
    for i in range(8):                                   # the fixture, 8 times
        p = tmp_path / f"s{i}" / "90_fixture.ipynb"
        p.parent.mkdir()
        shutil.copy(FIXTURE, p)
        subs.append(p)
    out = tmp_path / "fixture.json"
    proc = grade([*subs, "--solutions", FIXTURES / "solutions", "--jobs", 2, "--json", out], tmp_path)
    assert proc.returncode == 0, proc.stderr
    reports = json.loads(out.read_text())["submissions"]
    assert [(r["total"], r["max_points"], r["status"]) for r in reports] == [(FULL, FULL, "graded")] * 8

    # every chapter's solution, as submissions, under a non-default seed: full marks also prove that no
    # check of the book prints seed-dependent output (what `release --check --execute` looks for)
    out = tmp_path / "chapters.json"
    solutions = sorted((ROOT / "solutions").glob("*.ipynb"))
    proc = grade([*solutions, "--solutions", ROOT / "solutions", "--jobs", 2, "--seed", 777, "--json", out],
                 tmp_path)
    assert proc.returncode == 0, proc.stderr
    reports = json.loads(out.read_text())["submissions"]
    assert len(reports) == len(solutions)
    wrong = [(r["notebook"], r["total"], r["max_points"], r["status"]) for r in reports
             if r["total"] != r["max_points"] or r["status"] != "graded"]
    assert wrong == []


def _with_imports(tmp_path, source):
    folder = tmp_path / "solutions"
    folder.mkdir()
    nb = json.loads(FIXTURE.read_text())
    for c in nb["cells"]:
        if c.get("id") == "imports":
            c["source"] = source + "\n" + ("".join(c["source"]) if isinstance(c["source"], list) else c["source"])
    (folder / "90_fixture.ipynb").write_text(json.dumps(nb, indent=1))
    sub = tmp_path / "eve" / "90_fixture.ipynb"
    sub.parent.mkdir()
    shutil.copy(FIXTURE, sub)
    return folder, sub


def test_failure_before_any_answer_is_retried_once(tmp_path):
    marker = tmp_path / "first-attempt-done"
    folder, sub = _with_imports(tmp_path, "import pathlib\n"
                                          f"_m = pathlib.Path({str(marker)!r})\n"
                                          "if not _m.exists():\n"
                                          "    _m.write_text('x')\n"
                                          "    raise RuntimeError('flaky start')")
    out = tmp_path / "r.json"
    proc = grade([sub, "--solutions", folder, "--json", out, "--no-isolation"], tmp_path)   # the marker outlives a run
    assert proc.returncode == 0, proc.stderr
    r = json.loads(out.read_text())["submissions"][0]
    assert (r["status"], r["total"], r["attempts"]) == ("graded", FULL, 2)


def test_persistent_failure_outside_the_students_code_is_not_graded_never_zero(tmp_path):
    folder, sub = _with_imports(tmp_path, "raise RuntimeError('the course environment is broken')")
    out, book = tmp_path / "r.json", tmp_path / "grades.csv"
    proc = grade([sub, "--solutions", folder, "--json", out, "--csv", book], tmp_path)
    assert proc.returncode == 0, proc.stderr
    r = json.loads(out.read_text())["submissions"][0]
    assert r["status"].startswith("not graded: locked cell 'imports' failed before any answer ran: RuntimeError")
    assert r["attempts"] == 2
    assert {e["status"] for e in r["exercises"]} == {"not graded"}
    with open(book, newline="") as f:
        row = next(csv.DictReader(f))
    assert row["status"].startswith("not graded") and row["total"] == "" and row["ex1"] == ""
    assert "total      -/8" in proc.stdout


def test_invalid_solution_notebook_exits_2_and_grades_nothing(tmp_path):
    folder = tmp_path / "solutions"
    folder.mkdir()
    (folder / "90_fixture.ipynb").write_text('{"cells": [')
    sub = tmp_path / "eve" / "90_fixture.ipynb"
    sub.parent.mkdir()
    shutil.copy(FIXTURE, sub)
    book = tmp_path / "grades.csv"
    proc = grade([sub, "--solutions", folder, "--csv", book], tmp_path, timeout=120)
    assert proc.returncode == 2
    assert "90_fixture.ipynb is invalid" in proc.stderr and "nothing graded" in proc.stderr
    assert not book.exists()
