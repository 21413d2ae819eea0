"""Grading: full marks for the solution, zero for the exercise, and the right verdict for
broken and hostile submissions, which are never modified.

Submissions are generated from the fixture solution ``tests/fixtures/grading/solutions/90_fixture.ipynb``
(5 exercises, 8 points) and graded in two batched CLI runs (``--jobs 2``) to keep the wall time short.
"""
import csv
import hashlib
import json
import os
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest

from attention_np.grading import DEFAULT_SEED
from attention_np.grading.grade import build_graded, read_submission, SubmissionError
from attention_np.grading.notebook import load_solution, make_exercise, write_text

FIXTURES = Path(__file__).parent / "fixtures" / "grading"
SOLUTIONS = FIXTURES / "solutions"
FIXTURE = SOLUTIONS / "90_fixture.ipynb"
CELL_TIMEOUT = 5
OTHER_SEED = 12345
FULL = 8

CORRECT_ROW_SUMS = 'def row_sums(x):\n    return x.sum(axis=-1)'


def solution_json():
    return json.loads(FIXTURE.read_text(encoding="utf-8"))


def exercise_json():
    return json.loads(write_text(make_exercise(load_solution(FIXTURE))))


def cell(nb, cell_id):
    return next(c for c in nb["cells"] if c.get("id") == cell_id)


def source_of(nb, cell_id):
    src = cell(nb, cell_id)["source"]
    return "".join(src) if isinstance(src, list) else src


def set_source(nb, cell_id, source):
    cell(nb, cell_id)["source"] = source
    return nb


def hardcoded_row_sums():
    """row_sums that returns the answer for the default seed's check input: passes only under that seed."""
    x1 = np.random.default_rng(DEFAULT_SEED + 1).normal(size=(3, 4))
    values = ", ".join(repr(float(v)) for v in x1.sum(axis=-1))
    return f"import numpy as np\n\ndef row_sums(x):\n    return np.array([{values}])"


def submissions():
    """{student folder: bytes of 90_fixture.ipynb} for the batched hostile run."""
    subs = {}

    def put(name, nb_or_bytes, filename="90_fixture.ipynb"):
        data = nb_or_bytes if isinstance(nb_or_bytes, bytes) else json.dumps(nb_or_bytes, indent=1).encode()
        subs[(name, filename)] = data

    put("full", solution_json())
    put("untouched", exercise_json())
    put("malformed", b'{"cells": [{"cell_type": "code", "source": "print(1)"')
    put("not_a_notebook", b'{"name": "alice", "answers": [1, 2, 3]}')

    nb = solution_json()
    nb["cells"] = [c for c in nb["cells"] if c.get("id") != "ex2-check"]
    put("deleted_check", nb)

    nb = solution_json()
    set_source(nb, "ex2-solution", "def softmax_rows(z):\n    return z")
    set_source(nb, "ex2-check", 'print("ex2 softmax: ok")')
    cell(nb, "ex4-check")["metadata"] = {"tags": []}          # re-tagged: no longer a check cell
    put("edited_check", nb)

    nb = exercise_json()                                          # stubs, but outputs faked from the solution
    sol = solution_json()
    for c in nb["cells"]:
        if c["cell_type"] == "code":
            ref = cell(sol, c["id"])
            c["outputs"], c["execution_count"] = ref["outputs"], ref["execution_count"]
    put("faked_outputs", nb)

    put("hardcoded", set_source(solution_json(), "ex1-solution", hardcoded_row_sums()))
    put("infinite_loop", set_source(solution_json(), "ex2-solution",
                                    "def softmax_rows(z):\n    while True:\n        pass"))
    put("ignores_sigint", set_source(solution_json(), "ex2-solution",
                                     "import signal\n\n\ndef softmax_rows(z):\n"
                                     "    signal.signal(signal.SIGINT, signal.SIG_IGN)\n"
                                     "    while True:\n        pass"))
    put("raises", set_source(solution_json(), "ex1-solution",
                             'def row_sums(x):\n    raise ValueError("row_sums is broken")'))
    put("warns", set_source(solution_json(), "ex1-solution",
                            "import warnings\n\nimport numpy as np\n\n\ndef row_sums(x):\n"
                            '    warnings.warn("row_sums: consider keepdims", UserWarning)\n'
                            "    np.log(np.zeros(1))  # RuntimeWarning: divide by zero\n"
                            "    return x.sum(axis=-1)"))
    nb = solution_json()
    set_source(nb, "ex2-solution", source_of(nb, "ex2-solution") + '\nprint("x" * (10 * 2**20))')  # harmless
    set_source(nb, "ex4-solution", source_of(nb, "ex4-solution").replace(
        "return np.tril", 'print("y" * (10 * 2**20))\n    return np.tril'))  # 10 MB inside a check: a note
    put("big_output", nb)

    nb = solution_json()                          # a stray debug print inside a correct function
    set_source(nb, "ex5-solution", source_of(nb, "ex5-solution").replace(
        "return dy", 'print("debug: shape", dy.shape)\n    return dy'))
    put("stray_print", nb)

    nb = solution_json()                          # swallows the check's own "ok" line: output differs
    set_source(nb, "ex5-solution", "import io\nimport sys\n\n" + source_of(nb, "ex5-solution").replace(
        "return dy", "sys.stdout = io.StringIO()\n    return dy"))
    put("silenced", nb)

    put("syntax_error", set_source(solution_json(), "ex3-solution",
                                   "d_k = 16\nscale = (1.0 / math.sqrt(d_k)\nprint(d_k)"))
    put("copied", solution_json(), filename="90_fixture-Copy1.ipynb")
    nb = solution_json()                          # a plot drawn inside a correct function
    set_source(nb, "ex2-solution", "import matplotlib.pyplot as plt\n\n" + source_of(nb, "ex2-solution").replace(
        '"""\n', '"""\n    plt.plot(z.reshape(-1)[:5])\n    plt.show()\n', 1))
    put("plots", nb)

    nb = solution_json()
    nb["metadata"]["kernelspec"] = {"name": "julia-1.9", "display_name": "Julia 1.9", "language": "julia"}
    put("foreign_kernel", nb)

    nb = solution_json()
    scratch = [{"cell_type": "code", "id": "scratch-1", "metadata": {}, "execution_count": 3, "outputs": [],
                "source": "1 / 0"},
               {"cell_type": "code", "id": "scratch-2", "metadata": {}, "execution_count": None, "outputs": [],
                "source": 'print("trying things out")\nrow_sums = None'},
               {"cell_type": "markdown", "id": "scratch-3", "metadata": {}, "source": "my notes"}]
    nb["cells"][5:5] = scratch
    put("scratch_cells", nb)

    nb = solution_json()                      # an older nbformat without cell ids: matched by order
    nb["nbformat_minor"] = 4
    for c in nb["cells"]:
        c.pop("id", None)
    put("no_cell_ids", nb)

    nb = solution_json()
    for c in nb["cells"]:
        c["id"] = "x-" + c["id"]
    put("unknown", nb, filename="77_unknown.ipynb")
    return subs


def write_submissions(root: Path, subs):
    paths = {}
    for (name, filename), data in subs.items():
        p = root / name / filename
        p.parent.mkdir(parents=True)
        p.write_bytes(data)
        paths[name] = p
    return paths


def fingerprint(path: Path):
    st = path.stat()
    return hashlib.sha256(path.read_bytes()).hexdigest(), st.st_mtime_ns, st.st_size


def run_grade(args, cwd):
    """The grader's CLI in a fresh process, from an unrelated current directory."""
    env = {k: v for k, v in os.environ.items() if k != "ATTENTION_NP_GRADE_SEED"}
    start = time.monotonic()
    proc = subprocess.run([sys.executable, "-m", "attention_np.grade", *map(str, args)],
                          cwd=cwd, env=env, capture_output=True, text=True, timeout=300)
    return proc, time.monotonic() - start


@pytest.fixture(scope="module")
def batch(tmp_path_factory):
    root = tmp_path_factory.mktemp("submissions")
    paths = write_submissions(root, submissions())
    before = {name: fingerprint(p) for name, p in paths.items()}
    out = root / "report.json"
    proc, seconds = run_grade([*paths.values(), "--solutions", SOLUTIONS, "--jobs", 2,
                               "--cell-timeout", CELL_TIMEOUT, "--timeout", 60, "--json", out], cwd=root)
    assert proc.returncode == 0, proc.stderr
    reports = {Path(r["file"]).parent.name: r for r in json.loads(out.read_text())["submissions"]}
    return {"paths": paths, "before": before, "reports": reports, "stdout": proc.stdout,
            "stderr": proc.stderr, "seconds": seconds}


def points(report):
    return {e["id"]: e["points"] for e in report["exercises"]}


def statuses(report):
    return {e["id"]: e["status"] for e in report["exercises"]}


def reasons(report):
    return {e["id"]: e["reason"] for e in report["exercises"]}


def test_every_submission_graded_and_left_unchanged(batch):
    assert set(batch["reports"]) == set(batch["paths"])
    for name, path in batch["paths"].items():
        assert fingerprint(path) == batch["before"][name], f"{name}: the submission file was modified"
    assert "Traceback" not in batch["stderr"]


def test_solution_gets_full_marks(batch):
    r = batch["reports"]["full"]
    assert r["status"] == "graded"
    assert (r["total"], r["max_points"]) == (FULL, FULL)
    assert set(statuses(r).values()) == {"pass"}
    assert r["warnings"] == []


def test_untouched_exercise_gets_zero_with_not_implemented(batch):
    r = batch["reports"]["untouched"]
    assert r["status"] == "graded" and r["total"] == 0 and r["max_points"] == FULL
    assert len(r["exercises"]) == 5
    for e in r["exercises"]:
        assert e["status"] == "fail" and e["reason"].startswith("NotImplementedError"), e


def test_malformed_json_and_non_notebook_get_one_line_verdicts(batch):
    bad = batch["reports"]["malformed"]
    assert bad["status"].startswith("invalid: malformed JSON") and "\n" not in bad["status"]
    assert bad["notebook"] == "90_fixture" and bad["total"] == 0 and bad["max_points"] == FULL
    other = batch["reports"]["not_a_notebook"]
    assert other["status"].startswith("invalid: not a Jupyter notebook")


def test_deleted_check_cell_is_restored_and_warned(batch):
    r = batch["reports"]["deleted_check"]
    assert r["total"] == FULL
    assert any("ex2 was deleted" in w for w in r["warnings"])


def test_edited_and_retagged_check_cells_are_restored_and_warned(batch):
    r = batch["reports"]["edited_check"]
    assert points(r) == {"ex1": 1, "ex2": 0, "ex3": 1, "ex4": 2, "ex5": 2}
    assert reasons(r)["ex2"].startswith("AssertionError: softmax_rows(z)")
    assert any("ex2 was edited" in w for w in r["warnings"])
    assert any("ex4 was re-tagged" in w for w in r["warnings"])


def test_faked_stored_outputs_earn_nothing(batch):
    r = batch["reports"]["faked_outputs"]
    assert r["total"] == 0
    assert all(e["reason"].startswith("NotImplementedError") for e in r["exercises"])


def test_hardcoded_answer_passes_only_under_the_default_seed(batch):
    assert batch["reports"]["hardcoded"]["total"] == FULL   # the fixed default seed: indistinguishable


def test_infinite_loop_times_out_and_later_exercises_are_graded(batch):
    r = batch["reports"]["infinite_loop"]
    assert statuses(r) == {"ex1": "pass", "ex2": "timeout", "ex3": "pass", "ex4": "pass", "ex5": "pass"}
    assert f"timed out after {CELL_TIMEOUT} s" in reasons(r)["ex2"]
    assert r["total"] == FULL - 2


def test_code_ignoring_sigint_leaves_later_exercises_not_reached(batch):
    r = batch["reports"]["ignores_sigint"]
    assert statuses(r) == {"ex1": "pass", "ex2": "timeout", "ex3": "not reached", "ex4": "not reached",
                           "ex5": "not reached"}
    assert "ignored the interrupt" in reasons(r)["ex2"]
    assert r["total"] == 1
    assert r["seconds"] < CELL_TIMEOUT + 25        # cell timeout + a few seconds, not the overall limit


def test_cell_that_raises_fails_only_its_exercise(batch):
    r = batch["reports"]["raises"]
    assert reasons(r)["ex1"] == "ValueError: row_sums is broken"
    assert points(r) == {"ex1": 0, "ex2": 2, "ex3": 1, "ex4": 2, "ex5": 2}


def test_warnings_do_not_reach_stderr_or_cost_points(batch):
    assert batch["reports"]["warns"]["total"] == FULL


def test_ten_megabytes_of_output(batch):
    r = batch["reports"]["big_output"]
    assert r["total"] == FULL                      # extra output is a note, never compared
    note = next(e["note"] for e in r["exercises"] if e["id"] == "ex4")
    assert note.startswith("1 extra line(s) on stdout") and len(note) < 300


def test_stray_print_in_a_correct_function_costs_nothing_and_is_noted(batch):
    r = batch["reports"]["stray_print"]
    assert r["total"] == FULL and set(statuses(r).values()) == {"pass"}
    note = next(e["note"] for e in r["exercises"] if e["id"] == "ex5")
    assert "extra line(s) on stdout" in note and "debug: shape" in note
    assert "note: " in batch["stdout"]


def test_a_plot_inside_a_correct_function_costs_nothing(batch):
    r = batch["reports"]["plots"]
    assert r["total"] == FULL, r["exercises"]
    note = next(e["note"] for e in r["exercises"] if e["id"] == "ex2")
    assert "extra display output(s)" in note


def test_the_checks_own_output_must_still_appear(batch):
    r = batch["reports"]["silenced"]
    assert points(r)["ex5"] == 0 and reasons(r)["ex5"].startswith("output differs")
    assert r["total"] == FULL - 2


def test_syntax_error_names_the_solution_line_and_pythons_message(batch):
    r = batch["reports"]["syntax_error"]
    assert reasons(r)["ex3"] == "SyntaxError in the solution cell, line 2: '(' was never closed"
    assert points(r) == {"ex1": 1, "ex2": 2, "ex3": 0, "ex4": 2, "ex5": 2}


def test_copy_suffix_is_not_the_student_name(batch):
    assert batch["reports"]["copied"]["student"] == "copied"
    assert batch["reports"]["copied"]["total"] == FULL


def test_foreign_kernelspec_is_ignored(batch):
    assert batch["reports"]["foreign_kernel"]["total"] == FULL


def test_extra_scratch_cells_neither_earn_nor_cost(batch):
    r = batch["reports"]["scratch_cells"]
    assert r["total"] == FULL
    assert any("2 extra code cell(s)" in w for w in r["warnings"])


def test_notebook_without_cell_ids_is_matched_by_order(batch):
    r = batch["reports"]["no_cell_ids"]
    assert r["total"] == FULL and r["warnings"] == []


def test_student_name_from_folder_and_unknown_notebook(batch):
    assert batch["reports"]["full"]["student"] == "full"
    unknown = batch["reports"]["unknown"]
    assert unknown["status"].startswith("unknown notebook") and unknown["exercises"] == []


def test_progress_lines_and_tables_on_stdout(batch):
    out = batch["stdout"]
    n = len(batch["paths"])
    assert f"[{n}/{n}] " in out
    assert "NotImplementedError" in out and "total      8/8" in out
    assert "per student:" in out and "\n  full: 90_fixture 8/8; total 8/8\n" in out
    graded = sum(1 for r in batch["reports"].values() if r["status"] == "graded")
    closing = next(line for line in out.splitlines() if line.startswith(f"{n} submission(s): "))
    assert closing.startswith(f"{n} submission(s): {graded} graded (") and closing.endswith(", 3 unreadable")
    assert "graded fully" not in out


@pytest.fixture(scope="module")
def slow_batch(tmp_path_factory):
    """A long cell timeout: a crashed kernel must be noticed in seconds. Also another --seed, and the CSV."""
    root = tmp_path_factory.mktemp("batch")
    crash = set_source(solution_json(), "ex2-solution",
                       "import os\n\n\ndef softmax_rows(z):\n    os._exit(1)")
    subs = {("submitted", "ann_90_fixture.ipynb"): json.dumps(solution_json()).encode(),   # student from file name
            ("bob", "90_fixture.ipynb"): json.dumps(set_source(solution_json(), "ex1-solution",
                                                                hardcoded_row_sums())).encode(),
            ("cid", "90_fixture.ipynb"): json.dumps(crash).encode()}
    paths = write_submissions(root, subs)
    before = {name: fingerprint(p) for name, p in paths.items()}
    gradebook = root / "grades.csv"
    report = root / "report.json"
    proc, seconds = run_grade([*paths.values(), "--solutions", SOLUTIONS, "--jobs", 2, "--cell-timeout", 120,
                               "--seed", OTHER_SEED, "--csv", gradebook, "--json", report], cwd=root)
    assert proc.returncode == 0, proc.stderr
    for name, p in paths.items():
        assert fingerprint(p) == before[name]
    reports = {r["student"]: r for r in json.loads(report.read_text())["submissions"]}
    with open(gradebook, newline="") as f:
        rows = list(csv.DictReader(f))
    return {"reports": reports, "rows": rows, "seconds": seconds}


def test_kernel_crash_is_detected_in_seconds(slow_batch):
    r = slow_batch["reports"]["cid"]
    assert statuses(r) == {"ex1": "pass", "ex2": "kernel died", "ex3": "not reached", "ex4": "not reached",
                           "ex5": "not reached"}
    assert r["seconds"] < 30                       # the cell timeout is 120 s


def test_hardcoded_answer_fails_under_another_seed(slow_batch):
    r = slow_batch["reports"]["bob"]
    assert r["seed"] == OTHER_SEED
    assert points(r) == {"ex1": 0, "ex2": 2, "ex3": 1, "ex4": 2, "ex5": 2}
    assert reasons(r)["ex1"].startswith("AssertionError: row_sums(x): values differ")
    assert slow_batch["reports"]["ann"]["total"] == FULL   # honest code passes under any seed


def test_csv_gradebook_has_one_row_per_submission(slow_batch):
    rows = slow_batch["rows"]
    assert [r["student"] for r in rows] == ["bob", "cid", "ann"]        # sorted by path
    assert rows[2]["file"].endswith("ann_90_fixture.ipynb")
    assert list(rows[0]) == ["student", "lms_id", "notebook", "ex1", "ex2", "ex3", "ex4", "ex5", "total", "max",
                             "status", "file"]
    assert [(r["total"], r["max"]) for r in rows] == [("7", "8"), ("1", "8"), ("8", "8")]
    assert [r["ex2"] for r in rows] == ["2", "0", "2"]
    assert {r["notebook"] for r in rows} == {"90_fixture"} and {r["status"] for r in rows} == {"graded"}


# ----------------------------------------------------------------------- in-process units
def test_read_submission_verdicts(tmp_path):
    cases = {b"\xff\xfe": "not a notebook", b"[1, 2": "malformed JSON", b"[1, 2]": "not a Jupyter notebook",
             b'{"cells": [], "nbformat": 3}': "format 4"}
    for data, expected in cases.items():
        p = tmp_path / "x.ipynb"
        p.write_bytes(data)
        with pytest.raises(SubmissionError, match=expected):
            read_submission(p)


def test_built_notebook_takes_only_solution_cells_from_the_submission(tmp_path):
    solution = load_solution(FIXTURE)
    sub = solution_json()
    set_source(sub, "ex1-solution", CORRECT_ROW_SUMS)
    set_source(sub, "data", "x = 'changed'")
    cell(sub, "ex1-check")["outputs"] = [{"output_type": "stream", "name": "stdout", "text": "faked\n"}]
    path = tmp_path / "90_fixture.ipynb"
    path.write_text(json.dumps(sub))
    built, warnings = build_graded(solution, read_submission(path))
    by_id = {c["id"]: c for c in built.cells}
    assert [c["id"] for c in built.cells] == [c["id"] for c in solution_json()["cells"]]
    assert by_id["ex1-solution"].source == CORRECT_ROW_SUMS
    assert by_id["ex1-solution"].execution_count is None and by_id["ex1-solution"].outputs == []
    assert by_id["data"].source == source_of(solution_json(), "data")
    reference = next(c for c in solution.cells if c.id == "ex1-check")
    assert by_id["ex1-check"].outputs == reference.outputs and reference.outputs[0]["text"] == "ex1 row sums: ok\n"
    assert by_id["ex1-check"].execution_count == reference.execution_count
    assert any("locked cell 'data' was edited" in w for w in warnings)


def test_missing_solutions_folder_is_a_grader_error(tmp_path):
    proc, _ = run_grade([FIXTURE, "--solutions", tmp_path / "nope"], cwd=tmp_path)
    assert proc.returncode == 2 and "solutions folder" in proc.stderr


def test_overall_time_limit_kills_the_run_and_everything_the_kernel_started(tmp_path):
    pid_file = tmp_path / "child.pid"
    nb = set_source(solution_json(), "ex2-solution",           # a background child of the kernel, then a hang
                    f"import subprocess\nchild = subprocess.Popen(['sleep', '300'])\n"
                    f"open({str(pid_file)!r}, 'w').write(str(child.pid))\n\n\n"
                    "def softmax_rows(z):\n    while True:\n        pass")
    path = tmp_path / "dan" / "90_fixture.ipynb"
    path.parent.mkdir()
    path.write_text(json.dumps(nb))
    report = tmp_path / "report.json"
    proc, seconds = run_grade([path, "--solutions", SOLUTIONS, "--cell-timeout", 120, "--timeout", 10,
                               "--json", report, "--no-isolation"], cwd=tmp_path)   # the process-group path
    assert proc.returncode == 0, proc.stderr
    r = json.loads(report.read_text())["submissions"][0]
    assert r["status"].startswith("time limit")
    assert {e["id"]: e["status"] for e in r["exercises"][1:]} == dict.fromkeys(["ex2", "ex3", "ex4", "ex5"],
                                                                               "not reached")
    assert "overall time limit of 10 s" in r["exercises"][1]["reason"]
    assert seconds < 30
    child = int(pid_file.read_text())
    for _ in range(50):                       # a killed orphan may take a moment to be reaped
        status = Path(f"/proc/{child}/status")
        if not status.exists() or "zombie" in status.read_text():
            break
        time.sleep(0.1)
    else:
        os.kill(child, 9)
        pytest.fail(f"a process started by the student's code (pid {child}) survived the overall time limit")


def test_submissions_are_matched_to_their_solution(tmp_path):
    from attention_np.grading.grade import Solutions
    solutions = Solutions(SOLUTIONS)
    assert solutions.match(Path("90_fixture (1).ipynb"), []) == "90_fixture"
    assert solutions.match(Path("bob-90_fixture.ipynb"), []) == "90_fixture"
    assert solutions.match(Path("hw90_answers.ipynb"), []) == "90_fixture"
    path = tmp_path / "mine.ipynb"
    path.write_text(json.dumps(solution_json()))
    assert solutions.match(path, read_submission(path)) == "90_fixture"       # all cell ids shared
    few = [{"id": "ex1-check"}, {"id": "ex2-check"}, {"id": "intro"}]           # ids that recur across chapters
    assert solutions.match(path, few) is None
