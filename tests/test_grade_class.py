"""Class scale and gradebooks (issue 11 items 4-5, issue 16 items 7-8), with real kernels:

* ``--shard K/N`` for K = 1..3, then ``--merge``, equals one run (CSV and JSON);
* a Canvas download (``name_[LATE_]userid_submissionid_file.ipynb``) of two chapters gives
  ``--format canvas`` with one row per student, the Canvas user id, one column per chapter;
* a Moodle download (``Full Name_participant_assignsubmission_file_/``) gives the grading
  worksheet (``Identifier`` ``Participant N``, ``Grade``, ``Last modified (grade)``);
* per-student lines, the closing count and ``--summary-png``.
"""
import csv
import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from attention_np.grading.notebook import load_solution, make_exercise, write_text

FIXTURES = Path(__file__).parent / "fixtures" / "grading"
FIXTURE = FIXTURES / "solutions" / "90_fixture.ipynb"


def grade(args, cwd):
    env = {k: v for k, v in os.environ.items() if k != "ATTENTION_NP_GRADE_SEED"}
    proc = subprocess.run([sys.executable, "-m", "attention_np.grade", *map(str, args)], cwd=cwd, env=env,
                          capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stderr
    return proc


def read_csv(path):
    with open(path, newline="", encoding="utf-8") as f:
        return list(csv.reader(f))


@pytest.fixture(scope="module")
def canvas(tmp_path_factory):
    root = tmp_path_factory.mktemp("canvas")
    solutions = root / "solutions"
    solutions.mkdir()
    shutil.copy(FIXTURE, solutions / "90_fixture.ipynb")
    shutil.copy(FIXTURE, solutions / "91_fixture.ipynb")          # a second chapter
    stub = write_text(make_exercise(load_solution(FIXTURE)))
    downloads = root / "submissions"
    downloads.mkdir()
    files = {"smithalice_12345_67890_90_fixture.ipynb": FIXTURE.read_text(),
             "smithalice_12345_67891_91_fixture-1.ipynb": FIXTURE.read_text(),   # a resubmission
             "jonesbob_LATE_23456_67892_90_fixture.ipynb": stub,
             "jonesbob_23456_67893_91_fixture.ipynb": FIXTURE.read_text(),
             "leecarol_34567_67894_90_fixture.ipynb": '{"cells": ['}
    for name, text in files.items():
        (downloads / name).write_text(text)
    png = root / "class.png"
    whole = grade([downloads, "--solutions", solutions, "--jobs", 2, "--csv", root / "all.csv",
                   "--json", root / "all.json", "--summary-png", png], root)
    lms = grade(["--merge", root / "all.json", "--format", "canvas", "--csv", root / "canvas.csv"], root)
    for k in (1, 2, 3):
        grade([downloads, "--solutions", solutions, "--jobs", 2, "--shard", f"{k}/3",
               "--csv", root / f"part{k}.csv", "--json", root / f"part{k}.json"], root)
    merged_csv = grade(["--merge", *(root / f"part{k}.csv" for k in (1, 2, 3)), "--csv", root / "merged.csv"], root)
    grade(["--merge", *(root / f"part{k}.json" for k in (1, 2, 3)), "--json", root / "merged.json"], root)
    return {"root": root, "whole": whole, "lms": lms, "merged_csv": merged_csv, "png": png}


def _without_times(path):
    data = json.loads(Path(path).read_text())
    for r in data["submissions"]:
        r.pop("seconds")
    return data["submissions"]


def test_three_shards_merged_equal_one_run(canvas):
    root = canvas["root"]
    parts = [read_csv(root / f"part{k}.csv") for k in (1, 2, 3)]
    assert sorted(len(p) - 1 for p in parts) == [1, 2, 2]          # 5 submissions, interleaved
    assert read_csv(root / "merged.csv") == read_csv(root / "all.csv")
    assert _without_times(root / "merged.json") == _without_times(root / "all.json")


def test_canvas_layout_names_ids_and_late(canvas):
    rows = {r["file"].rsplit("/", 1)[-1]: r for r in json.loads((canvas["root"] / "all.json").read_text())["submissions"]}
    alice = rows["smithalice_12345_67890_90_fixture.ipynb"]
    assert (alice["student"], alice["lms"], alice["lms_id"], alice["late"]) == ("smithalice", "canvas", "12345", False)
    bob = rows["jonesbob_LATE_23456_67892_90_fixture.ipynb"]
    assert (bob["student"], bob["lms_id"], bob["late"], bob["total"]) == ("jonesbob", "23456", True, 0)
    assert rows["smithalice_12345_67891_91_fixture-1.ipynb"]["notebook"] == "91_fixture"


def test_canvas_import_has_one_row_per_student_and_one_column_per_chapter(canvas):
    rows = read_csv(canvas["root"] / "canvas.csv")
    assert rows[0] == ["Student", "ID", "SIS User ID", "SIS Login ID", "Section", "90_fixture", "91_fixture"]
    assert rows[1:] == [["jonesbob", "23456", "", "", "", "0", "8"],
                        ["leecarol", "34567", "", "", "", "0", ""],
                        ["smithalice", "12345", "", "", "", "8", "8"]]


def test_detailed_gradebook_of_two_chapters_names_columns_by_chapter(canvas):
    head = read_csv(canvas["root"] / "all.csv")[0]
    assert head[:4] == ["student", "lms_id", "notebook", "90_fixture:ex1"]
    assert "91_fixture:ex5" in head and "ex1" not in head


def test_per_student_lines_and_closing_count(canvas):
    out = canvas["whole"].stdout
    assert "per student:" in out
    assert "  smithalice (12345): 90_fixture 8/8, 91_fixture 8/8; total 16/16\n" in out
    assert "  jonesbob (23456): 90_fixture 0/8, 91_fixture 8/8; total 8/16\n" in out
    assert "5 submission(s): 4 graded (3 full marks, 0 partial, 1 zero), 1 unreadable" in out


def test_summary_png_is_written(canvas):
    data = canvas["png"].read_bytes()
    assert data[:8] == b"\x89PNG\r\n\x1a\n" and len(data) > 5000


def test_moodle_worksheet(tmp_path):
    folder = tmp_path / "Alice Smith_123456_assignsubmission_file_"
    folder.mkdir()
    shutil.copy(FIXTURE, folder / "90_fixture.ipynb")
    other = tmp_path / "Bob Jones_234567_assignsubmission_file_"
    other.mkdir()
    (other / "90_fixture-Copy1.ipynb").write_text(write_text(make_exercise(load_solution(FIXTURE))))
    out = tmp_path / "moodle.csv"
    grade([tmp_path, "--solutions", FIXTURES / "solutions", "--jobs", 2, "--format", "moodle", "--csv", out],
          tmp_path)
    rows = read_csv(out)
    assert rows[0] == ["Identifier", "Full name", "Grade", "Last modified (grade)", "90_fixture"]
    assert [(r[0], r[1], r[2], r[4]) for r in rows[1:]] == [("Participant 123456", "Alice Smith", "8", "8"),
                                                          ("Participant 234567", "Bob Jones", "0", "0")]
    assert all(len(r[3]) == 19 for r in rows[1:])           # 2026-01-31 12:00:00
