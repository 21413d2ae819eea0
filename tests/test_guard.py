"""The off-limits guard (attention_np.grading.guard): an answer cannot call the reference it is asked to write.

Two layers of tests:

* the guard itself, in a fresh Python process (installing it rewires attention_np, so never in pytest's
  own process): code compiled under the file names ipykernel gives cells stands for solution and check
  cells, and every route to an off-limits object is tried;
* the whole path through the grader with real kernels: a small solution notebook is built and executed,
  then an honest answer gets full marks, the released exercise 0, and answers that reach the reference
  directly, through an alias, through importlib, sys.modules or reference(), or that tamper with the
  grading helpers, get 0 on that exercise with the reason.
"""
import json
import subprocess
import sys
import textwrap
from pathlib import Path

import nbformat
import pytest

from attention_np.grading.notebook import add_guard, write_text
from attention_np.grading.release import execute
from attention_np.grading.release import main as release_main

ROOT = Path(__file__).resolve().parents[1]
SOFTMAX = "attention_np.nn.functional.softmax"
FORWARD = "attention_np.mechanisms.multihead.MultiHeadAttention.forward"


def run_script(body: str) -> dict:
    """Run ``body`` in a fresh interpreter after the cell helpers below; return the JSON it prints last."""
    prelude = textwrap.dedent('''
        import json, sys
        import numpy as np
        from attention_np.grading import guard
        from attention_np.grading.guard import cell_file_name

        def cell(src):
            """Code compiled under the file name ipykernel gives a cell with this source."""
            return compile(src, f"/tmp/ipykernel_4242/{cell_file_name(src)}", "exec")

        def attempt(code, ns):
            try:
                exec(code, ns)
                return "ok"
            except Exception as exc:
                return f"{type(exc).__name__}: {exc}"
    ''')
    proc = subprocess.run([sys.executable, "-c", prelude + textwrap.dedent(body)], capture_output=True,
                          text=True, cwd=ROOT, timeout=120)
    assert proc.returncode == 0, proc.stderr
    return json.loads(proc.stdout.strip().splitlines()[-1])


STUDENT_EX1 = '''
import importlib, sys
import attention_np as anp
import attention_np.nn
def direct(x): return anp.softmax(x)
def reexport(x): return attention_np.nn.softmax(x)
def via_importlib(x): return importlib.import_module("attention_np.nn.functional").softmax(x)
def via_sys_modules(x): return getattr(sys.modules["attention_np.nn.functional"], "softmax")(x)
def via_exec(x): return eval("anp.softmax(x)")
def via_library(x): return anp.masked_softmax(x, np.ones(x.shape, dtype=bool))
def via_layer(layer, x): return layer(x)
def building_block(x): return np.exp(x - anp.nn.functional.logsumexp(x, axis=-1, keepdims=True))
def via_reference(x):
    from attention_np.grading import reference
    return reference("attention_np.nn.functional.softmax")(x)
'''
STUDENT_EX1_ALIAS = "from attention_np.nn.functional import softmax as sm\ndef alias(x): return sm(x)\n"
STUDENT_EX2 = "import attention_np as anp\ndef other_exercise(x): return anp.softmax(x)\n"


@pytest.fixture(scope="module")
def guarded():
    return run_script(f'''
        ex1, alias, ex2 = {STUDENT_EX1!r}, {STUDENT_EX1_ALIAS!r}, {STUDENT_EX2!r}
        rebind = "from attention_np import softmax\\ndef uses_global(x): return softmax(x)"
        guard.install({{"ex1": {{"off_limits": ["{SOFTMAX}", "{FORWARD}"],
                                 "cells": [cell_file_name(ex1), cell_file_name(alias), cell_file_name(rebind)]}},
                       "ex2": {{"off_limits": ["attention_np.nn.functional.causal_mask"],
                                "cells": [cell_file_name(ex2)]}}}})
        ns = {{"np": np}}
        for src in (ex1, alias, ex2):
            exec(cell(src), ns)
        from attention_np.mechanisms.multihead import MultiHeadAttention
        ns["layer"] = MultiHeadAttention(4, 2, rng=np.random.default_rng(0))
        ns["x"] = np.arange(6.0).reshape(1, 3, 2)
        ns["x4"] = np.ones((1, 3, 4))
        out = {{}}
        # what a check cell calls: its code lives in another cell file
        for name in ("direct", "reexport", "via_importlib", "via_sys_modules", "via_exec", "via_library",
                     "building_block", "via_reference", "alias", "other_exercise"):
            out[name] = attempt(cell(f"r = {{name}}(x)"), ns)
        out["via_layer"] = attempt(cell("r = via_layer(layer, x4)"), ns)
        out["check_calls_softmax"] = attempt(cell("import attention_np as anp\\nr = anp.softmax(x)"), ns)
        out["check_calls_forward"] = attempt(cell("r = layer(x4)"), ns)
        from attention_np.grading import reference
        import attention_np.nn.functional as F
        original = reference("{SOFTMAX}")
        out["reference_is_original"] = original is not F.softmax and original.__module__ == F.__name__
        exec(cell("import attention_np.nn.functional as F2\\nF2.softmax = lambda x: x * 0"), ns)   # a rebinding
        out["reference_after_rebinding"] = reference("{SOFTMAX}") is original
        F.softmax = guard._STATE.protected[F.__name__][1]["softmax"]   # undo it (the snapshot holds the proxy)
        # a check that binds the reference to the very name an answer uses must not unguard it
        exec(cell(rebind), ns)
        out["check_rebinds_name"] = attempt(cell(
            "from attention_np.grading import reference\\n"
            "softmax = reference('{SOFTMAX}')\\n"
            "expected = softmax(x)\\n"
            "r = uses_global(x)"), ns)
        out["enter_ex1"] = attempt(cell("guard.enter_check('ex1')"), {{"guard": guard}})
        out["enter_ex2"] = attempt(cell("guard.enter_check('ex2')"), {{"guard": guard}})
        print(json.dumps(out))
    ''')


REASON = "OffLimitsError: ex1 calls attention_np's softmax, which this exercise asks you to write"


@pytest.mark.parametrize("route", ["direct", "reexport", "alias", "via_importlib", "via_sys_modules", "via_exec",
                                   "via_library"])
def test_every_route_to_an_off_limits_function_fails_with_the_reason(guarded, route):
    assert guarded[route] == REASON


def test_an_off_limits_method_is_caught_through_the_librarys_call(guarded):
    assert guarded["via_layer"] == ("OffLimitsError: ex1 calls attention_np's MultiHeadAttention.forward, "
                                    "which this exercise asks you to write")


def test_building_blocks_and_other_exercises_and_checks_may_call_it(guarded):
    assert guarded["building_block"] == "ok"               # logsumexp is not listed
    assert guarded["other_exercise"] == "ok"               # softmax is off limits for ex1 only
    assert guarded["check_calls_softmax"] == "ok" and guarded["check_calls_forward"] == "ok"


def test_reference_is_the_original_and_refuses_student_code(guarded):
    assert guarded["reference_is_original"] is True
    assert guarded["reference_after_rebinding"] is True
    assert guarded["via_reference"] == ("OffLimitsError: ex1 calls attention_np.grading.reference, "
                                        "which only the hidden check cells may use")


def test_a_check_binding_the_reference_to_an_answers_name_does_not_unguard_it(guarded):
    """``softmax = reference(...)`` in a check rebinds the notebook global the answer calls."""
    assert guarded["check_rebinds_name"] == REASON


def test_a_caught_violation_still_fails_the_check(guarded):
    assert guarded["enter_ex1"].startswith("OffLimitsError: ex1 calls attention_np's softmax")
    assert guarded["enter_ex2"] == "ok"


@pytest.mark.parametrize("tamper, what", [
    ("np.allclose = lambda *a, **k: True", "numpy.allclose"),
    ("import attention_np.grading as g\ng.assert_close = lambda *a, **k: None", "attention_np.grading.assert_close"),
    ("import builtins\nbuiltins.abs = lambda x: 0", "builtins.abs"),
    ("import sys, types\nsys.modules['attention_np.grading'] = types.ModuleType('fake')",
     "sys.modules['attention_np.grading']"),
    # check_function (a reference) reads gradcheck.numerical_gradient: a fake one would pass any backward
    ("import attention_np.train.gradcheck as gc\ngc.numerical_gradient = lambda f, x, eps=1e-6: x * 0",
     "attention_np.train.gradcheck.numerical_gradient"),
    # a reference class's method, rebound on the class that the check's reference() also returns
    ("from attention_np.mechanisms import MultiHeadAttention\nMultiHeadAttention.backward = lambda self, d: None",
     "attention_np.mechanisms.multihead.MultiHeadAttention.backward"),
])
def test_tampering_with_what_checks_rely_on_fails_the_check(tamper, what):
    out = run_script(f'''
        src = {tamper!r}
        guard.install({{"ex1": {{"off_limits": ["{SOFTMAX}"], "cells": [cell_file_name(src)]}}}})
        out = {{"solution": attempt(cell(src), {{"np": np}}),
                "check": attempt(cell("guard.enter_check('ex1')"), {{"guard": guard}})}}
        print(json.dumps(out))
    ''')
    assert out["solution"] == "ok"
    assert out["check"] == (f"TamperingError: ex1: a solution cell replaced {what}, which the checks rely on; "
                            "the check cannot be trusted")


def test_a_global_hiding_a_builtin_the_check_uses_fails_the_check():
    out = run_script(f'''
        src = "def isinstance(*args):\\n    return True"
        guard.install({{"ex1": {{"off_limits": ["{SOFTMAX}"], "cells": [cell_file_name(src)]}}}})
        ns = {{"np": np, "guard": guard}}
        exec(cell(src), ns)
        out = {{"uses_it": attempt(cell("guard.enter_check('ex1', ['isinstance', 'len'])"), ns),
                "does_not": attempt(cell("guard.enter_check('ex2', ['len'])"), ns)}}
        print(json.dumps(out))
    ''')
    assert out["uses_it"] == ("TamperingError: ex1: the notebook defines 'isinstance', which hides Python's "
                              "built-in the check uses; rename it in your code")
    assert out["does_not"] == "ok"


def test_add_guard_keeps_cell_numbers_and_wraps_each_check():
    nb = nbformat.v4.new_notebook()
    nb.cells = [nbformat.v4.new_code_cell("import numpy as np"),
                nbformat.v4.new_code_cell("def f():\n    return 1"),
                nbformat.v4.new_code_cell("assert f() == 1\nprint('ex1: ok')"),
                nbformat.v4.new_code_cell("print('public')")]
    nb.cells[1].metadata["tags"] = ["solution"]
    nb.cells[2].metadata.update(tags=["check"], grade={"id": "ex1", "points": 1, "off_limits": [SOFTMAX]})
    nb.cells[3].metadata["tags"] = ["selfcheck"]
    nb.cells[3].outputs = [nbformat.v4.new_output("stream", text="public\n")]
    warnings = add_guard(nb)
    assert warnings == [] and len(nb.cells) == 4
    assert nb.cells[0].source.startswith("__import__('attention_np.grading.guard', fromlist=['install']).install(")
    assert nb.cells[0].source.endswith("\nimport numpy as np")
    lines = nb.cells[2].source.splitlines()
    assert lines[0].endswith(".enter_check('ex1', ['print'], ['f'])") and lines[-1].endswith(".leave_check('ex1')")
    assert nb.cells[3].source == "" and nb.cells[3].outputs == []     # self-checks are not run
    nb.cells[0].source = "from __future__ import annotations"            # must stay the first statement
    nb.cells[2].metadata["tags"] = ["check"]
    add_guard(nb)
    assert len(nb.cells) == 5 and nb.cells[1].source == "from __future__ import annotations"
    assert ".install(" in nb.cells[0].source and nb.cells[0].metadata["tags"] == ["nbval-ignore-output"]


# ------------------------------------------------------------------ through the grader, real kernels
SOLUTION_CELLS = [
    ("md", "intro", "# 93 guard: three exercises"),
    ("code", "setup", "import numpy as np\nfrom attention_np.grading import assert_close, check_rng\n\n\n"
                      "def sample(rng, shape):\n    return rng.standard_normal(shape)"),
    ("solution", "ex1-solution", "def my_softmax(x):\n    ### BEGIN SOLUTION\n    e = np.exp(x - x.max(axis=-1, keepdims=True))\n"
                                 "    return e / e.sum(axis=-1, keepdims=True)\n    ### END SOLUTION"),
    ("check", "ex1-check", "import numpy as np\nfrom attention_np.grading import assert_close, check_rng, reference\n"
                           f"ref = reference({SOFTMAX!r})\nx = sample(check_rng(1), (3, 5))\n"
                           "assert_close(my_softmax(x), ref(x), 'my_softmax(x)')\nprint('ex1 softmax: ok')"),
    ("solution", "ex2-solution", "def my_split_heads(x, n_heads):\n    ### BEGIN SOLUTION\n"
                                 "    *lead, n, width = x.shape\n"
                                 "    return np.swapaxes(x.reshape(*lead, n, n_heads, width // n_heads), -2, -3)\n"
                                 "    ### END SOLUTION"),
    ("check", "ex2-check", "import numpy as np\nfrom attention_np.grading import assert_close, check_rng, reference\n"
                           "ref = reference('attention_np.mechanisms.multihead.split_heads')\n"
                           "x = check_rng(2).standard_normal((2, 3, 6))\n"
                           "assert_close(my_split_heads(x, 3), ref(x, 3), 'my_split_heads(x, 3)')\n"
                           "print('ex2 split heads: ok')"),
    ("solution", "ex3-solution", "def my_mask(n):\n    ### BEGIN SOLUTION\n    return np.tril(np.ones((n, n), dtype=bool))\n"
                                 "    ### END SOLUTION"),
    ("check", "ex3-check", "import numpy as np\nfrom attention_np.grading import assert_close, check_rng, reference\n"
                           "ref = reference('attention_np.nn.functional.causal_mask')\n"
                           "n = int(check_rng(3).integers(2, 6))\nassert_close(my_mask(n), ref(n), 'my_mask(n)')\n"
                           "print('ex3 mask: ok')"),
]
OFF_LIMITS = {"ex1": [SOFTMAX], "ex2": ["attention_np.mechanisms.multihead.split_heads"],
              "ex3": ["attention_np.nn.functional.causal_mask"]}


def answer(ex1=None, ex2=None, ex3=None) -> dict:
    return {k: v for k, v in (("ex1-solution", ex1), ("ex2-solution", ex2), ("ex3-solution", ex3)) if v}


SUBMISSIONS = {
    "cheat": answer(
        ex1="import attention_np as anp\ndef my_softmax(x):\n    return anp.softmax(x)",
        ex2="import importlib\ndef my_split_heads(x, n_heads):\n"
            "    return importlib.import_module('attention_np.mechanisms.multihead').split_heads(x, n_heads)",
        ex3="from attention_np.nn import causal_mask as cm\ndef my_mask(n):\n    return cm(n)"),
    "sneaky": answer(
        ex1="import sys\ndef my_softmax(x):\n    return vars(sys.modules['attention_np.nn.functional'])['softmax'](x)",
        ex2="from attention_np.grading import reference\ndef my_split_heads(x, n_heads):\n"
            "    return reference('attention_np.mechanisms.multihead.split_heads')(x, n_heads)",
        ex3="import attention_np.grading as g\ng.assert_close = lambda *a, **k: None\ndef my_mask(n):\n    return None"),
    "helper": answer(     # uniform weights are right only if the check's inputs are all equal
        ex1="def sample(rng, shape):\n    return np.zeros(shape)\n\n\n"
            "def my_softmax(x):\n    return np.full(x.shape, 1 / x.shape[-1])"),
    "building": answer(   # softmax is off limits in ex1 only: ex3 may use anything else of the library
        ex3="import attention_np as anp\ndef my_mask(n):\n    w = anp.softmax(np.zeros((n, n)))\n"
            "    return np.tril(w > 0)"),
}


@pytest.fixture(scope="module")
def graded(tmp_path_factory):
    base = tmp_path_factory.mktemp("guard")
    sol, ex, subs = base / "solutions", base / "exercises", base / "submissions"
    for d in (sol, subs):
        d.mkdir()
    nb = nbformat.v4.new_notebook()
    nb.metadata["kernelspec"] = {"name": "python3", "display_name": "Python 3", "language": "python"}
    for kind, cid, src in SOLUTION_CELLS:
        cell = nbformat.v4.new_markdown_cell(src) if kind == "md" else nbformat.v4.new_code_cell(src)
        cell["id"] = cid
        if kind in ("solution", "check"):
            cell.metadata["tags"] = [kind]
        if kind == "check":
            gid = cid.split("-")[0]
            cell.metadata["grade"] = {"id": gid, "points": 1, "off_limits": OFF_LIMITS[gid]}
        nb.cells.append(cell)
    nb = execute(nb, sol)
    name = "93_guard.ipynb"
    (sol / name).write_text(write_text(nb), encoding="utf-8")
    assert release_main([str(sol), str(ex)]) == 0
    paths = [sol / name, ex / name]
    for student, sources in SUBMISSIONS.items():
        sub = nbformat.reads(write_text(nb), as_version=4)
        for cell in sub.cells:
            if cell.get("id") in sources:
                cell.source = sources[cell["id"]]
        folder = subs / student
        folder.mkdir()
        (folder / name).write_text(write_text(sub), encoding="utf-8")
        paths.append(folder / name)
    report = base / "report.json"
    proc = subprocess.run([sys.executable, "-m", "attention_np.grade", "--solutions", str(sol), "--json", str(report),
                           "--jobs", "2", "--cell-timeout", "60", *map(str, paths)],
                          capture_output=True, text=True, cwd=base, timeout=600)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    data = json.loads(report.read_text(encoding="utf-8"))
    by_file = {Path(s["file"]).parent.name: s for s in data["submissions"]}
    return {who: {e["id"]: (e["points"], e["reason"]) for e in s["exercises"]} for who, s in by_file.items()}


def test_the_solution_gets_full_marks_and_the_exercise_zero(graded):
    assert graded["solutions"] == {"ex1": (1, ""), "ex2": (1, ""), "ex3": (1, "")}
    assert all(points == 0 for points, _ in graded["exercises"].values())


def reason(gid, name):
    return f"OffLimitsError: {gid} calls attention_np's {name}, which this exercise asks you to write"


def test_answers_calling_the_reference_score_zero_with_the_reason(graded):
    got = graded["cheat"]
    assert got["ex1"] == (0, reason("ex1", "softmax"))                      # the package's re-export
    assert got["ex2"] == (0, reason("ex2", "split_heads"))                  # importlib
    assert got["ex3"] == (0, reason("ex3", "causal_mask"))                  # from ... import ... as


def test_sys_modules_reference_and_tampering_score_zero(graded):
    got = graded["sneaky"]
    assert got["ex1"] == (0, reason("ex1", "softmax"))
    assert got["ex2"] == (0, "OffLimitsError: ex2 calls attention_np.grading.reference, "
                             "which only the hidden check cells may use")
    assert got["ex3"][0] == 0 and "replaced attention_np.grading.assert_close" in got["ex3"][1], got["ex3"]


def test_replacing_a_locked_helper_the_check_uses_scores_zero(graded):
    assert graded["helper"]["ex1"] == (0, "TamperingError: ex1: a solution cell (ex1) replaced 'sample', which a "
                                          "locked cell defines and the check uses; rename it in your code")


def test_a_building_block_off_limits_elsewhere_stays_usable(graded):
    assert graded["building"]["ex3"] == (1, "")
