"""An instructor adds a fifth exercise to chapter 02 by following only the README's "For instructors" steps.

Steps, each exactly as the README gives it (the commands run in fresh processes, real kernels):

1. edit a copy of ``solutions/02_scaled_dot_product.ipynb``: a markdown cell, a solution cell tagged
   ``solution`` with ``### BEGIN/END SOLUTION``, a hidden check cell tagged ``check`` with grade metadata
   (id, points, off_limits) that reaches the library through ``reference(...)`` and draws its inputs from
   ``check_rng(5)``; cell ids from ``nbformat.v4``;
2. ``python -m attention_np.release --execute <solution>``;
3. ``python -m attention_np.release SOLUTIONS EXERCISES``;
4. ``python -m attention_np.release --check --execute SOLUTIONS EXERCISES`` (two seeds, stale outputs);
5. grade a class with ``--seed``: the solution gets full marks (the new exercise included), the released
   exercise gets 0, and the new exercise is graded (its points appear in the report).

A mistake the README warns about (a check printing a seed-dependent value) must be refused at step 4.
"""
import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import nbformat
import pytest

ROOT = Path(__file__).resolve().parents[1]
CHAPTER = "02_scaled_dot_product.ipynb"
GRADE_SEED = 12345

SOLUTION = '''\
import numpy as np


def tempered_weights(scores, temperature):
    """Softmax of scores / temperature along the last axis, stable for large scores."""
    ### BEGIN SOLUTION
    z = np.asarray(scores, dtype=np.float64) / temperature
    z = z - z.max(axis=-1, keepdims=True)
    e = np.exp(z)
    return e / e.sum(axis=-1, keepdims=True)
    ### END SOLUTION
'''

CHECK = '''\
import numpy as np
from attention_np.grading import assert_close, check_rng, reference
ref_softmax = reference("attention_np.nn.functional.softmax")
rng = check_rng(5)
scores = 30.0 * rng.standard_normal((3, 4, 6))
for T in (0.5, 1.0, 4.0):
    assert_close(tempered_weights(scores, T), ref_softmax(scores / T), f"tempered_weights(scores, {T})")
print("ex5 tempered weights: ok")
'''


def points_in(path: Path) -> int:
    nb = nbformat.read(path, as_version=4)
    return sum(c.metadata["grade"]["points"] for c in nb.cells if "check" in c.metadata.get("tags", []))


def run(args, cwd, check=True):
    env = {k: v for k, v in os.environ.items() if k != "ATTENTION_NP_GRADE_SEED"}
    proc = subprocess.run([sys.executable, "-m", *map(str, args)], cwd=cwd, env=env,
                          capture_output=True, text=True, timeout=600)
    if check:
        assert proc.returncode == 0, f"{args}: exit {proc.returncode}\n{proc.stdout}\n{proc.stderr}"
    return proc


def add_exercise(path: Path, check_source: str) -> None:
    nb = nbformat.read(path, as_version=4)
    markdown = nbformat.v4.new_markdown_cell(
        "### Exercise 5 (2 points): tempered weights\n\nWrite `tempered_weights(scores, temperature)`.")
    solution = nbformat.v4.new_code_cell(SOLUTION)
    solution.metadata["tags"] = ["solution"]
    check = nbformat.v4.new_code_cell(check_source)
    check.metadata["tags"] = ["check"]
    check.metadata["grade"] = {"id": "ex5", "points": 2, "off_limits": ["attention_np.nn.functional.softmax"]}
    # after the last check cell, as the README's "a solution cell belongs to the next check cell" asks
    last_check = max(i for i, c in enumerate(nb.cells) if "check" in c.metadata.get("tags", []))
    nb.cells[last_check + 1:last_check + 1] = [markdown, solution, check]
    nbformat.write(nb, path)


@pytest.fixture(scope="module")
def course(tmp_path_factory):
    root = tmp_path_factory.mktemp("course")
    sol, ex = root / "solutions", root / "exercises"
    sol.mkdir()
    shutil.copy(ROOT / "solutions" / CHAPTER, sol / CHAPTER)
    add_exercise(sol / CHAPTER, CHECK)
    run(["attention_np.release", "--execute", sol / CHAPTER], root)
    run(["attention_np.release", sol, ex], root)
    checked = run(["attention_np.release", "--check", "--execute", sol, ex], root)
    return {"root": root, "sol": sol, "ex": ex, "checked": checked}


def graded(course, submission: Path, student: str) -> dict:
    root = course["root"]
    folder = root / "class" / student
    folder.mkdir(parents=True)
    shutil.copy(submission, folder / CHAPTER)
    out = folder / "report.json"
    run(["attention_np.grade", folder / CHAPTER, "--solutions", course["sol"], "--seed", GRADE_SEED,
         "--json", out], root)
    [report] = json.loads(out.read_text())["submissions"]
    return report


def test_the_new_exercise_is_released_without_its_answer_or_check(course):
    nb = nbformat.read(course["ex"] / CHAPTER, as_version=4)
    text = "\n".join(c.source for c in nb.cells)
    assert "def tempered_weights" in text
    assert "z - z.max" not in text                      # the answer is stripped
    assert "ref_softmax(scores / T)" not in text        # the hidden check is not shown
    assert all(not c.get("outputs") for c in nb.cells if c.cell_type == "code")


def test_a_solution_scores_full_marks_with_the_new_exercise_under_a_seed(course):
    report = graded(course, course["sol"] / CHAPTER, "ann")
    by_id = {e["id"]: e for e in report["exercises"]}
    assert report["seed"] == GRADE_SEED
    assert by_id["ex5"]["points"] == by_id["ex5"]["max_points"] == 2, by_id["ex5"]
    assert report["total"] == report["max_points"] == sum(e["max_points"] for e in report["exercises"]) == points_in(ROOT / "solutions" / CHAPTER) + 2, report


def test_the_released_exercise_scores_zero(course):
    report = graded(course, course["ex"] / CHAPTER, "bob")
    assert {e["id"] for e in report["exercises"]} >= {"ex1", "ex2", "ex3", "ex4", "ex5"}
    assert report["total"] == 0, report


def test_a_seed_dependent_check_print_is_refused_before_grading(tmp_path):
    sol, ex = tmp_path / "solutions", tmp_path / "exercises"
    sol.mkdir()
    shutil.copy(ROOT / "solutions" / CHAPTER, sol / CHAPTER)
    add_exercise(sol / CHAPTER, CHECK + 'print(f"largest score {scores.max():.3f}")\n')
    run(["attention_np.release", "--execute", sol / CHAPTER], tmp_path)
    run(["attention_np.release", sol, ex], tmp_path)
    proc = run(["attention_np.release", "--check", "--execute", sol, ex], tmp_path, check=False)
    assert proc.returncode != 0
    assert "ex5" in proc.stdout + proc.stderr and "seed" in proc.stdout + proc.stderr, proc.stdout + proc.stderr
