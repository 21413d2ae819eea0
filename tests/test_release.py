"""Release: solutions/ -> exercises/ (stubs, hidden checks, no outputs, deterministic, --check, validation).

The fixture (tests/fixtures/release/solutions/90_fixture.ipynb) is a small executed solution notebook with
five exercises (each naming its off_limits) and one public self-check.  Each authoring mistake the release
must refuse is built from a copy of it.  The --execute tests start real kernels (a few seconds each).
"""
import json
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from attention_np.grading.notebook import find_regions, strip_solution
from attention_np.grading.release import main

FIXTURE = Path(__file__).parent / "fixtures" / "release" / "solutions" / "90_fixture.ipynb"
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
def test_exercise_has_no_solution_code_and_no_outputs_at_all(dirs):
    nb = released(dirs)
    solution = json.loads(FIXTURE.read_text(encoding="utf-8"))
    text = json.dumps(nb)
    for body in SOLUTION_BODIES:
        assert body in json.dumps(solution)            # the fixture really has these solutions
        assert body not in text, body
    assert "BEGIN SOLUTION" not in text and "END SOLUTION" not in text
    assert any(c.get("outputs") for c in solution["cells"] if "solution" not in c["metadata"].get("tags", []))
    code = [c for c in nb["cells"] if c["cell_type"] == "code"]
    assert len(code) == 13
    for c in code:                                     # locked and self-check cells too
        assert c["outputs"] == [] and c["execution_count"] is None, c["id"]
    assert source(by_id(nb, "ex1-solution")).endswith("    # YOUR CODE HERE\n    raise NotImplementedError()")
    assert source(by_id(nb, "ex4-solution")).count("    raise NotImplementedError()") == 2
    assert source(by_id(nb, "ex3-solution")) == ('d_k = 16\n# YOUR CODE HERE\nraise NotImplementedError()\n'
                                                 'print(f"d_k = {d_k}")')


def test_ids_tags_and_metadata_are_preserved(dirs):
    nb = released(dirs)
    solution = json.loads(FIXTURE.read_text(encoding="utf-8"))
    assert [c["id"] for c in nb["cells"]] == [c["id"] for c in solution["cells"]]
    assert [c["metadata"] for c in nb["cells"]] == [c["metadata"] for c in solution["cells"]]
    assert nb["metadata"] == solution["metadata"] and (nb["nbformat"], nb["nbformat_minor"]) == (4, 5)
    assert source(by_id(nb, "data")) == source(by_id(solution, "data"))


def test_check_cells_are_hidden_and_self_checks_copied(dirs):
    nb = released(dirs)
    solution = json.loads(FIXTURE.read_text(encoding="utf-8"))
    checks = [c for c in solution["cells"] if "check" in c["metadata"].get("tags", [])]
    assert len(checks) == 5
    for check in checks:
        note = source(by_id(nb, check["id"]))
        gid = check["metadata"]["grade"]["id"]
        assert note.startswith(f"# {gid} (") and "python -m attention_np.grade" in note, note
        assert all(line.startswith("#") for line in note.splitlines()), note      # nothing runs
        for line in source(check).splitlines():
            if len(line.strip()) > 12:
                assert line.strip() not in json.dumps(nb), line                  # no line of the check
    assert "sigmoid_backward" in source(by_id(nb, "ex5-check"))                  # the off-limits name is shown
    assert source(by_id(nb, "ex5-selfcheck")) == source(by_id(solution, "ex5-selfcheck"))
    assert by_id(nb, "ex5-selfcheck")["metadata"]["tags"] == ["selfcheck"]


def _selfcheck_copies_the_check(nb):
    line = source(by_id(nb, "ex2-check")).splitlines()[3]
    assert len(line) > 30
    by_id(nb, "ex5-selfcheck")["source"] = source(by_id(nb, "ex5-selfcheck")) + "\n" + line


def test_a_hidden_check_reaching_the_exercise_is_refused(dirs, capsys):
    sol, ex = dirs
    edit_solution(sol, _selfcheck_copies_the_check)
    assert main([str(sol), str(ex)]) == 1
    err = capsys.readouterr().err
    assert "(id 'ex5-selfcheck'): ex2's hidden check reaches the exercise" in err, err
    assert not (ex / FIXTURE.name).exists()


def test_check_fails_when_an_exercise_stores_an_output(dirs, capsys):
    sol, ex = dirs
    released(dirs)
    path = ex / FIXTURE.name
    nb = json.loads(path.read_text(encoding="utf-8"))
    by_id(nb, "data")["outputs"] = [{"name": "stdout", "output_type": "stream", "text": "[[1. 2. 3.]]\n"}]
    path.write_text(json.dumps(nb, indent=1), encoding="utf-8")
    capsys.readouterr()
    assert main(["--check", str(sol), str(ex)]) == 1
    assert "stores outputs or execution counts (cell 2 (id 'data'))" in capsys.readouterr().err


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


def _no_off_limits(nb):
    del by_id(nb, "ex2-check")["metadata"]["grade"]["off_limits"]


def _empty_off_limits(nb):
    by_id(nb, "ex2-check")["metadata"]["grade"]["off_limits"] = []


def _unknown_off_limits(nb):
    by_id(nb, "ex4-check")["metadata"]["grade"]["off_limits"] = ["attention_np.nn.functional.no_such_mask"]


def _grade_metadata_without_tag(nb):
    by_id(nb, "ex3-check")["metadata"]["tags"] = []


def _solution_without_check(nb):
    cells = nb["cells"]
    cells.insert(len(cells) - 1, {"cell_type": "code", "id": "ex6-solution", "metadata": {"tags": ["solution"]},
                                  "execution_count": None, "outputs": [],
                                  "source": "def f():\n    ### BEGIN SOLUTION\n    return 1\n    ### END SOLUTION"})


def _error_output(nb):
    by_id(nb, "data")["outputs"] = [{"output_type": "error", "ename": "NameError", "evalue": "name 'np' is not defined",
                                    "traceback": []}]


def _cleared_check_output(nb):
    by_id(nb, "ex4-check")["outputs"] = []


def _timestamps(nb):
    for c in nb["cells"]:
        c["metadata"]["execution"] = {"iopub.status.busy": "2026-01-01T00:00:00.000000Z"}


@pytest.mark.parametrize("breaks, expected", [
    (_duplicate_grade_id, "cell 14 (id 'ex4-check'): duplicate grade id 'ex2' (also cell 8)"),
    (_missing_end_marker, "cell 7 (id 'ex2-solution'): solution cell: line 3: '### BEGIN SOLUTION' without '### END SOLUTION'"),
    (_no_points, "cell 18 (id 'ex5-check'): check cell 'ex5' needs a positive number of points"),
    (_duplicate_cell_id, "(id 'ex4-text'): duplicate cell id (also cell 12)"),
    (_two_exercises, "has 2 graded exercise(s); at least 3"),
    (_unexecuted_check, "(id 'ex1-check'): check cell 'ex1' has no execution count"),
    (_no_off_limits, "(id 'ex2-check'): check cell 'ex2' needs \"off_limits\" in its grade metadata"),
    (_empty_off_limits, "(id 'ex2-check'): check cell 'ex2' needs \"off_limits\" in its grade metadata"),
    (_unknown_off_limits, "(id 'ex4-check'): check cell 'ex4': off_limits names no existing object: "
                          "'attention_np.nn.functional.no_such_mask'"),
    (_grade_metadata_without_tag, "cell 11 (id 'ex3-check'): has grade metadata but is not tagged 'check'"),
    (_solution_without_check, "(id 'ex6-solution'): solution cell has no check cell after it"),
    (_error_output, "cell 2 (id 'data'): stores an error output (NameError: name 'np' is not defined)"),
    (_cleared_check_output, "(id 'ex4-check'): check cell 'ex4' has no stored output"),
    (_timestamps, "cell(s) carry nbclient timestamps (metadata.execution, first: cell 0 (id 'intro')); "
                  "execute solutions with `python -m attention_np.release --execute"),
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


# ------------------------------------------------------------------ executing solutions (real kernels)
def _seed_dependent_and_stale(nb):
    check = by_id(nb, "ex1-check")
    check["source"] = source(check) + '\nprint(f"first input {x1[0, 0]:.3f}")'      # depends on the seed
    check["outputs"][0]["text"] = "ex1 row sums: ok\nfirst input 0.123\n"
    by_id(nb, "ex3-check")["outputs"][0]["text"] = "ex3 scale: OK\n"              # stale: not what runs now


@pytest.fixture(scope="module")
def execution_report(tmp_path_factory):
    from attention_np.grading.release import execution_problems
    sol = tmp_path_factory.mktemp("exec") / "solutions"
    sol.mkdir()
    shutil.copy(FIXTURE, sol / FIXTURE.name)
    edit_solution(sol, _seed_dependent_and_stale)
    return execution_problems(sol / FIXTURE.name)


def test_execute_check_refuses_a_check_printing_seed_dependent_output(execution_report):
    hits = [p for p in execution_report if "depends on the seed" in p]
    assert len(hits) == 1 and "(id 'ex1-check'): ex1's check prints output that depends on the seed" in hits[0], \
        execution_report


def test_execute_check_refuses_stale_outputs(execution_report):
    stale = [p for p in execution_report if "stale" in p]
    assert any("(id 'ex3-check'): stored outputs are stale" in p and "'ex3 scale: OK" in p for p in stale), \
        execution_report
    assert not any("(id 'ex2-check')" in p or "(id 'data')" in p for p in execution_report), execution_report


def test_the_fixture_passes_check_execute(dirs, capsys):
    sol, ex = dirs
    released(dirs)
    assert main(["--check", "--execute", str(sol), str(ex)]) == 0, capsys.readouterr().err


def test_execute_stores_a_clean_notebook_and_ignores_a_shell_wide_seed(tmp_path, monkeypatch):
    import nbformat
    from attention_np.grading.checks import DEFAULT_SEED, SEED_ENV
    nb = nbformat.v4.new_notebook()
    nb.cells = [nbformat.v4.new_markdown_cell("# t"),
                nbformat.v4.new_code_cell("from attention_np.grading import grading_seed\nprint(grading_seed())")]
    path = tmp_path / "91_seed.ipynb"
    nbformat.write(nb, path)
    monkeypatch.setenv(SEED_ENV, "5")
    assert main(["--execute", str(path)]) == 0
    done = json.loads(path.read_text(encoding="utf-8"))
    cell = done["cells"][1]
    assert "".join(cell["outputs"][0]["text"]) == f"{DEFAULT_SEED}\n"
    assert cell["execution_count"] == 1
    assert all("execution" not in c["metadata"] for c in done["cells"])


def test_execute_stores_a_slider_chapter_without_widget_state(tmp_path):
    """A chapter with an ipywidgets slider, executed by the documented command, keeps its static figure's
    output and stores neither the slider's view nor the notebook's widget state (tests/test_interactive_figures.py
    refuses both: JupyterLab would restore or rewrite them when a reader opens the chapter)."""
    import nbformat
    nb = nbformat.v4.new_notebook()
    nb.cells = [nbformat.v4.new_code_cell("print('static figure here')"),
                nbformat.v4.new_code_cell("import ipywidgets as w\nw.interact(lambda t=1.0: print(t), t=(0.5, 2.0))")]
    path = tmp_path / "92_slider.ipynb"
    nbformat.write(nb, path)
    assert main(["--execute", str(path)]) == 0
    done = json.loads(path.read_text(encoding="utf-8"))
    assert "widgets" not in done["metadata"]
    assert "".join(done["cells"][0]["outputs"][0]["text"]) == "static figure here\n"
    assert done["cells"][1]["outputs"] == [] and done["cells"][1]["execution_count"] == 2
