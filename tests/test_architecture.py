"""DESIGN.md's layering: which part of attention_np may import which.

mechanisms -> nn, train -> nn, bench -> mechanisms/nn; viz, grading and book stand alone.
Never nn -> mechanisms (blocks know no mechanism), never mechanisms -> viz (math
knows no screen), never mechanisms/nn -> train or grading (the library does not
know it is trained or graded).
"""
import ast
from pathlib import Path

import pytest

PKG = Path(__file__).resolve().parents[1] / "attention_np"

ALLOWED = {            # top-level part -> parts of attention_np it may import
    "nn": {"nn"},
    "mechanisms": {"nn", "mechanisms"},
    "train": {"nn", "train"},
    "viz": {"viz"},
    # the grader's guard loads the package at run time, inside the kernel, to wrap the off-limits objects
    # and keep the references for the checks; the library itself never imports grading
    "grading": {"grading", "attention_np"},
    "bench": {"bench", "mechanisms", "nn"},
    # the HTML edition renders stored notebooks: it never runs or imports the library it describes
    "book": {"book"},
}


def _part(path: Path) -> str:
    rel = path.relative_to(PKG)
    return rel.parts[0] if len(rel.parts) > 1 else rel.stem


def _imported_parts(path: Path):
    tree = ast.parse(path.read_text())
    here = path.relative_to(PKG).parts[:-1]                 # package of this module, inside attention_np
    for node in ast.walk(tree):
        if isinstance(node, ast.ImportFrom):
            if node.level:                                   # relative import: resolve against this package
                base = list(here[: len(here) - (node.level - 1)])
                target = base + (node.module.split(".") if node.module else [])
                if not target:                               # `from .. import x`: x is the part
                    yield from (alias.name for alias in node.names)
                else:
                    yield target[0]
            elif node.module and node.module.split(".")[0] == "attention_np":
                parts = node.module.split(".")
                yield parts[1] if len(parts) > 1 else "attention_np"
        elif isinstance(node, ast.Import):
            for alias in node.names:
                parts = alias.name.split(".")
                if parts[0] == "attention_np":
                    yield parts[1] if len(parts) > 1 else "attention_np"


MODULES = sorted(p for p in PKG.rglob("*.py") if _part(p) in ALLOWED)


@pytest.mark.parametrize("path", MODULES, ids=lambda p: p.relative_to(PKG).as_posix())
def test_module_imports_only_what_its_layer_may(path):
    part = _part(path)
    bad = sorted(set(_imported_parts(path)) - ALLOWED[part])
    assert not bad, f"{path.relative_to(PKG)} ({part}) imports {bad}; allowed: {sorted(ALLOWED[part])}"


def test_the_rules_see_every_layer():
    assert {_part(p) for p in MODULES} == set(ALLOWED)
