"""Release: solutions/ -> exercises/ (stubs, cleared outputs, deterministic, --check, validation)."""
import json
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from attention_np.grading.notebook import find_regions, strip_solution
from attention_np.grading.release import main

FIXTURE = Path(__file__).parent / "fixtures" / "grading" / "solutions" / "90_fixture.ipynb"
SOLUTION_BODIES = ["x.sum(axis=-1)", "e / e.sum(axis=-1, keepdims=True)", "math.sqrt(d_k)",
                   "np.tril(", "np.where(mask, scores, value)", "dy * y * (1.0 - y)"]


def source(cell):
    src = cell["source"]
    return "".join(src) if isinstance(src, list) else src


@pytest.fixture
def dirs(tmp_path):
    sol, ex = tmp_path / "solutions", tmp_path / "exercises"
    sol.mkdir()
    shutil.copy(FIXTURE, sol / FIXTURE.name)
    return sol, ex


def released(dirs):
    sol, ex = dirs
    assert main([str(sol), str(ex)]) == 0
    return json.loads((ex / FIXTURE.name).read_text(encoding="utf-8"))


def edit_solution(sol: Path, fn):
    path = sol / FIXTURE.name
    nb = json.loads(path.read_text(encoding="utf-8"))
    fn(nb)
    path.write_text(json.dumps(nb, indent=1), encoding="utf-8")


def by_id(nb, cid):
    return next(c for c in nb["cells"] if c["id"] == cid)


# ------------------------------------------------------------------------- regions
def test_strip_keeps_the_markers_indentation_and_every_region():
    src = ("def f(x):\n    y = 1\n    ### BEGIN SOLUTION\n    return x + y\n    ### END SOLUTION\n\n"
           "### BEGIN SOLUTION\nz = 3\nw = 4\n### END SOLUTION\nprint(z)")
    assert strip_solution(src) == ("def f(x):\n    y = 1\n    # YOUR CODE HERE\n    raise NotImplementedError()\n\n"
                                   "# YOUR CODE HERE\nraise NotImplementedError()\nprint(z)")


@pytest.mark.parametrize("src, message", [
    ("### BEGIN SOLUTION\nx = 1", "without '### END SOLUTION'"),
    ("x = 1\n### END SOLUTION", "without '### BEGIN SOLUTION'"),
    ("### BEGIN SOLUTION\n### BEGIN SOLUTION\n### END SOLUTION", "again before"),
    ("x = 1", "no '### BEGIN SOLUTION'"),
    ("x = 1  ### BEGIN SOLUTION\n### END SOLUTION", "stand alone"),
])
def test_bad_markers_are_rejected(src, message):
    with pytest.raises(ValueError, match=message):
        find_regions(src)


# ------------------------------------------------------------------------- release
def test_exercise_has_no_solution_code_and_no_outputs_in_graded_cells(dirs):
    nb = released(dirs)
    solution = json.loads(FIXTURE.read_text(encoding="utf-8"))
    text = json.dumps(nb)
    for body in SOLUTION_BODIES:
        assert body in json.dumps(solution)            # the fixture really has these solutions
        assert body not in text, body
    assert "BEGIN SOLUTION" not in text and "END SOLUTION" not in text
    graded = [c for c in nb["cells"] if set(c["metadata"].get("tags", [])) & {"solution", "check"}]
    assert len(graded) == 10
    for c in graded:
        assert c["outputs"] == [] and c["execution_count"] is None, c["id"]
    assert source(by_id(nb, "ex1-solution")).endswith("    # YOUR CODE HERE\n    raise NotImplementedError()")
    assert source(by_id(nb, "ex4-solution")).count("    raise NotImplementedError()") == 2
    assert source(by_id(nb, "ex3-solution")) == ('d_k = 16\n# YOUR CODE HERE\nraise NotImplementedError()\n'
                                                 'print(f"d_k = {d_k}")')


def test_ids_tags_metadata_and_locked_outputs_are_preserved(dirs):
    nb = released(dirs)
    solution = json.loads(FIXTURE.read_text(encoding="utf-8"))
    assert [c["id"] for c in nb["cells"]] == [c["id"] for c in solution["cells"]]
    assert [c["metadata"] for c in nb["cells"]] == [c["metadata"] for c in solution["cells"]]
    assert nb["metadata"] == solution["metadata"] and (nb["nbformat"], nb["nbformat_minor"]) == (4, 5)
    assert by_id(nb, "data")["outputs"] == by_id(solution, "data")["outputs"] != []
    assert by_id(nb, "data")["execution_count"] == 2
    assert source(by_id(nb, "ex2-check")) == source(by_id(solution, "ex2-check"))


def test_release_is_deterministic_and_check_passes_when_in_sync(dirs, capsys):
    sol, ex = dirs
    released(dirs)
    first = (ex / FIXTURE.name).read_bytes()
    assert main([str(sol), str(ex)]) == 0
    assert (ex / FIXTURE.name).read_bytes() == first
    assert main(["--check", str(sol), str(ex)]) == 0
    assert "up to date" in capsys.readouterr().out


def test_check_fails_after_a_solution_edit_and_writes_nothing(dirs, capsys):
    sol, ex = dirs
    released(dirs)
    before = (ex / FIXTURE.name).read_bytes()
    edit_solution(sol, lambda nb: by_id(nb, "intro").update(source="# A changed title"))
    capsys.readouterr()
    assert main(["--check", str(sol), str(ex)]) == 1
    err = capsys.readouterr().err
    assert "90_fixture.ipynb" in err and "differs" in err
    assert (ex / FIXTURE.name).read_bytes() == before
    assert main([str(sol), str(ex)]) == 0 and main(["--check", str(sol), str(ex)]) == 0


def test_check_fails_for_missing_and_orphaned_exercises(dirs, capsys):
    sol, ex = dirs
    assert main(["--check", str(sol), str(ex)]) == 1
    assert "missing" in capsys.readouterr().err
    released(dirs)
    shutil.copy(ex / FIXTURE.name, ex / "91_orphan.ipynb")
    assert main(["--check", str(sol), str(ex)]) == 1
    assert "91_orphan.ipynb: has no solution" in capsys.readouterr().err


def _duplicate_grade_id(nb):
    by_id(nb, "ex4-check")["metadata"]["grade"]["id"] = "ex2"


def _missing_end_marker(nb):
    by_id(nb, "ex2-solution")["source"] = source(by_id(nb, "ex2-solution")).replace("    ### END SOLUTION", "")


def _no_points(nb):
    del by_id(nb, "ex5-check")["metadata"]["grade"]["points"]


def _duplicate_cell_id(nb):
    by_id(nb, "ex5-text")["id"] = "ex4-text"


def _two_exercises(nb):
    for cid in ("ex3-check", "ex4-check", "ex5-check"):
        by_id(nb, cid)["metadata"] = {}


def _unexecuted_check(nb):
    by_id(nb, "ex1-check")["execution_count"] = None


@pytest.mark.parametrize("breaks, expected", [
    (_duplicate_grade_id, "cell 14 (id 'ex4-check'): duplicate grade id 'ex2' (also cell 8)"),
    (_missing_end_marker, "cell 7 (id 'ex2-solution'): solution cell: line 3: '### BEGIN SOLUTION' without '### END SOLUTION'"),
    (_no_points, "cell 17 (id 'ex5-check'): check cell 'ex5' needs a positive number of points"),
    (_duplicate_cell_id, "(id 'ex4-text'): duplicate cell id (also cell 12)"),
    (_two_exercises, "has 2 graded exercise(s); at least 3"),
    (_unexecuted_check, "(id 'ex1-check'): check cell 'ex1' has no execution count"),
])
def test_invalid_solutions_are_rejected_naming_notebook_and_cell(dirs, capsys, breaks, expected):
    sol, ex = dirs
    edit_solution(sol, breaks)
    assert main([str(sol), str(ex)]) == 1
    err = capsys.readouterr().err
    assert "90_fixture.ipynb" in err and expected in err, err
    assert not (ex / FIXTURE.name).exists()
    assert main(["--check", str(sol), str(ex)]) == 1


def test_cli_from_another_directory(tmp_path):
    sol = tmp_path / "course" / "solutions"
    sol.mkdir(parents=True)
    shutil.copy(FIXTURE, sol / FIXTURE.name)
    run = [sys.executable, "-m", "attention_np.release"]
    assert subprocess.run(run, cwd=tmp_path / "course", capture_output=True).returncode == 0
    assert (tmp_path / "course" / "exercises" / FIXTURE.name).is_file()
    check = subprocess.run([*run, "--check"], cwd=tmp_path / "course", capture_output=True, text=True)
    assert check.returncode == 0, check.stderr
    missing = subprocess.run([*run, "--check", "nowhere"], cwd=tmp_path, capture_output=True, text=True)
    assert missing.returncode == 2 and "not found" in missing.stderr
