"""Structure of every notebook in chapters/, solutions/ and exercises/ (issue: the book's rules).

Replaying the notebooks is nbval's job (a bare `pytest` runs `--nbval` over
chapters/ and solutions/); these tests check what nbval cannot: format, stored
execution order, outputs that would not reproduce elsewhere, and that every
chapter has its exercise pair.
"""
import json
import re
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
CHAPTERS = sorted((ROOT / "chapters").glob("*.ipynb"))
SOLUTIONS = sorted((ROOT / "solutions").glob("*.ipynb"))
EXERCISES = sorted((ROOT / "exercises").glob("*.ipynb"))
ALL = CHAPTERS + SOLUTIONS + EXERCISES
SLUG = re.compile(r"^\d\d_[a-z0-9_]+\.ipynb$")
# Outputs that would not reproduce on another machine, or that NumPy 2 prints as scalar reprs.
NON_PORTABLE = [
    (re.compile(r"np\.(float|int|bool|complex)\w*\("), "a NumPy scalar repr such as np.float64(...)"),
    (re.compile(r" at 0x[0-9a-fA-F]{6,}"), "a memory address"),
    (re.compile(r"(/home/|/tmp/|/work/|/Users/|[A-Z]:\\\\)"), "an absolute path"),
    (re.compile(r"\b\d+(\.\d+)? ?(ms|µs|us|ns) ± "), "a timing"),
]


def _id(path):
    return path.relative_to(ROOT).as_posix()


JUPYTERLAB_KERNELSPEC = {"display_name": "Python 3 (ipykernel)", "language": "python", "name": "python3"}


def test_kernelspec_matches_the_installed_kernel():
    """The stored display name is the one the installed ipykernel spec declares (what JupyterLab writes)."""
    from jupyter_client.kernelspec import KernelSpecManager

    spec = KernelSpecManager().get_kernel_spec("python3")
    assert spec.display_name == JUPYTERLAB_KERNELSPEC["display_name"], spec.display_name


def _load(path):
    return json.loads(path.read_text(encoding="utf-8"))


def test_there_are_notebooks():
    assert CHAPTERS, "chapters/ has no notebooks"


@pytest.mark.parametrize("path", ALL, ids=_id)
def test_format_kernel_and_ids(path):
    nb = _load(path)
    assert SLUG.match(path.name), f"{path.name} must be named NN_slug.ipynb"
    assert (nb["nbformat"], nb["nbformat_minor"]) == (4, 5)
    # JupyterLab 4 rewrites a notebook whose kernelspec differs from the running kernel's, marking it
    # modified the moment a reader opens it: store exactly what ipykernel's spec declares.
    assert nb["metadata"]["kernelspec"] == JUPYTERLAB_KERNELSPEC, (
        f"kernelspec {nb['metadata'].get('kernelspec')}: store {JUPYTERLAB_KERNELSPEC} (what JupyterLab writes)")
    info = nb["metadata"].get("language_info", {})
    assert info.get("name") == "python" and "codemirror_mode" in info, "language_info missing: execute the notebook"
    ids = [c.get("id") for c in nb["cells"]]
    assert all(ids) and len(set(ids)) == len(ids), "every cell needs a unique id"
    stamped = [i for i, c in enumerate(nb["cells"]) if "execution" in c.get("metadata", {})]
    assert not stamped, f"cells {stamped} carry nbclient timestamps (metadata.execution): strip them"


@pytest.mark.parametrize("path", CHAPTERS + SOLUTIONS, ids=_id)
def test_executed_top_to_bottom(path):
    counts = [c.get("execution_count") for c in _load(path)["cells"] if c["cell_type"] == "code"]
    assert counts == list(range(1, len(counts) + 1)), f"execution counts {counts}: re-run the notebook top to bottom"


@pytest.mark.parametrize("path", ALL, ids=_id)
def test_outputs_are_clean_and_portable(path):
    for i, cell in enumerate(_load(path)["cells"]):
        for out in cell.get("outputs", []):
            assert out["output_type"] != "error", f"cell {i} stores an error"
            assert not (out["output_type"] == "stream" and out.get("name") == "stderr"), \
                f"cell {i} stores stderr: {''.join(out.get('text', ''))[:200]!r}"
            texts = [out.get("text", "")] + [out.get("data", {}).get(k, "") for k in ("text/plain", "text/html")]
            text = "".join("".join(t) if isinstance(t, list) else t for t in texts)
            for pattern, what in NON_PORTABLE:
                assert not pattern.search(text), f"cell {i} output contains {what}: {text[:200]!r}"
            assert "image/svg+xml" not in out.get("data", {}), f"cell {i}: figures must be PNG (nbval compares SVG)"


@pytest.mark.parametrize("path", CHAPTERS, ids=_id)
def test_every_chapter_shows_a_png_and_states_its_chinese_term(path):
    nb = _load(path)
    pngs = sum("image/png" in o.get("data", {}) for c in nb["cells"] for o in c.get("outputs", []))
    assert pngs >= 1, "every chapter shows at least one plot"
    title = "".join(nb["cells"][0]["source"])
    assert nb["cells"][0]["cell_type"] == "markdown" and title.startswith("# ")
    assert re.search(r"[\u4e00-\u9fff]", title), "the chapter title gives the Chinese term"


@pytest.mark.parametrize("path", [p for p in CHAPTERS if not p.name.startswith("00_")], ids=_id)
def test_every_chapter_has_solution_exercise_and_sections(path):
    assert (ROOT / "solutions" / path.name).exists(), f"solutions/{path.name} is missing"
    assert (ROOT / "exercises" / path.name).exists(), f"exercises/{path.name} is missing"
    text = "\n".join("".join(c["source"]) for c in _load(path)["cells"] if c["cell_type"] == "markdown")
    assert re.search(r"^#+ .*Common misconceptions", text, re.M | re.I)
    assert re.search(r"^#+ .*Check your understanding", text, re.M | re.I)
    assert f"exercises/{path.name}" in text, "the chapter links its exercise notebook"


@pytest.mark.parametrize("path", SOLUTIONS, ids=_id)
def test_solutions_have_a_chapter(path):
    assert (ROOT / "chapters" / path.name).exists()


def test_chapter_pairs_match():
    assert {p.name for p in SOLUTIONS} == {p.name for p in EXERCISES}


def test_grading_every_solution_gives_full_marks_and_every_exercise_zero(tmp_path):
    """The book's own exercises: solutions score full marks (also under another seed), exercises score 0."""
    import subprocess
    import sys

    if not SOLUTIONS:
        pytest.fail("solutions/ has no notebooks")
    report = tmp_path / "grades.json"
    files = [str(p) for p in SOLUTIONS + EXERCISES]
    proc = subprocess.run([sys.executable, "-m", "attention_np.grade", *files, "--solutions", str(ROOT / "solutions"),
                           "--jobs", "2", "--seed", "4242", "--json", str(report)],
                          capture_output=True, text=True, timeout=600, cwd=tmp_path)
    assert proc.returncode == 0, proc.stdout[-2000:] + proc.stderr[-2000:]
    results = {Path(s["file"]).parent.name + "/" + s["notebook"]: s for s in json.loads(report.read_text())["submissions"]}
    assert len(results) == len(files)
    for name, s in results.items():
        assert s["status"] == "graded", (name, s["status"])
        if name.startswith("solutions/"):
            assert s["total"] == s["max_points"] > 0, (name, s["exercises"])
        else:
            assert s["total"] == 0, (name, s["exercises"])
            assert all("NotImplementedError" in e["reason"] for e in s["exercises"]), (name, s["exercises"])
