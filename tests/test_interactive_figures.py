"""Interactive figures (ipywidgets sliders) in the chapters (issue 14, item 2).

A slider cell needs a running kernel, so it must never be the only way to see its figure, and what it stores must
not change the notebook when a reader merely opens it: it keeps no outputs (a stored widget view or widget state
would have to be restored, or rewritten, by JupyterLab) and nbval does not compare what it prints.
"""
import json
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
CHAPTERS = sorted((ROOT / "chapters").glob("*.ipynb"))
WITH_SLIDERS = {"02_scaled_dot_product", "09_positional_encoding", "16_sparse"}


def _cells(path):
    return json.loads(path.read_text(encoding="utf-8"))["cells"]


def _is_interactive(cell):
    return cell["cell_type"] == "code" and "import ipywidgets" in "".join(cell["source"])


def _has_png(cell):
    return any("image/png" in out.get("data", {}) for out in cell.get("outputs", []))


def interactive_cells(path):
    """(index, cell) of every slider cell of a notebook."""
    return [(i, c) for i, c in enumerate(_cells(path)) if _is_interactive(c)]


def problems(path):
    """What is wrong with the slider cells of one notebook (an empty list when nothing is)."""
    nb = json.loads(path.read_text(encoding="utf-8"))
    found = []
    if "widgets" in nb["metadata"]:
        found.append("the notebook stores widget state (metadata.widgets): strip it")
    cells = nb["cells"]
    for i, cell in interactive_cells(path):
        if "nbval-ignore-output" not in cell.get("metadata", {}).get("tags", []):
            found.append(f"cell {i}: a slider cell must be tagged nbval-ignore-output")
        if cell.get("outputs"):
            found.append(f"cell {i}: a slider cell must store no outputs (a widget view needs the kernel that made it)")
        if i == 0 or cells[i - 1]["cell_type"] != "markdown" or "Try" not in "".join(cells[i - 1]["source"]):
            found.append(f"cell {i}: a markdown cell right before the slider must tell the reader what to try")
        if not any(_has_png(c) for c in cells[max(0, i - 3):i]):
            found.append(f"cell {i}: a static figure (a stored PNG) must come just before the slider")
    return found


@pytest.mark.parametrize("path", CHAPTERS, ids=lambda p: p.name)
def test_slider_cells_are_safe_to_open_and_have_a_static_figure(path):
    assert problems(path) == []


def test_the_chapters_named_in_the_issue_have_sliders():
    have = {p.stem for p in CHAPTERS if interactive_cells(p)}
    assert WITH_SLIDERS <= have, f"missing sliders in {sorted(WITH_SLIDERS - have)}"


def test_the_check_catches_a_stored_widget(tmp_path):
    """A slider cell executed and saved as nbclient leaves it (view + state) is reported."""
    source = ROOT / "chapters" / "16_sparse.ipynb"
    nb = json.loads(source.read_text(encoding="utf-8"))
    i = next(j for j, c in enumerate(nb["cells"]) if _is_interactive(c))
    nb["cells"][i]["outputs"] = [{"output_type": "display_data", "metadata": {}, "data": {
        "application/vnd.jupyter.widget-view+json": {"model_id": "abc", "version_major": 2, "version_minor": 0},
        "text/plain": "interactive(children=(FloatLogSlider(value=1.0),))"}}]
    nb["metadata"]["widgets"] = {"application/vnd.jupyter.widget-state+json": {"state": {}}}
    broken = tmp_path / source.name
    broken.write_text(json.dumps(nb), encoding="utf-8")
    found = problems(broken)
    assert any("metadata.widgets" in p for p in found) and any("store no outputs" in p for p in found), found
