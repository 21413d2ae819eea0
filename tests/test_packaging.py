"""environment.yml and pyproject.toml must name the same packages; the README starts with the two commands."""
import re
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def _name(requirement: str) -> str:
    return re.split(r"[<>=!~\[ ;]", requirement.strip(), maxsplit=1)[0].lower().replace("_", "-")


def _pyproject_packages():
    text = (ROOT / "pyproject.toml").read_text()
    try:
        import tomllib
    except ModuleNotFoundError:                       # Python 3.10: read the two lists by hand
        def block(header):
            body = text.split(header, 1)[1].split("]", 1)[0]
            return re.findall(r'"([^"]+)"', body)
        return block("dependencies = ["), block("dev = [")
    data = tomllib.loads(text)
    return data["project"]["dependencies"], data["project"]["optional-dependencies"]["dev"]


def _environment_packages():
    conda, pip, in_deps, in_pip = [], [], False, False
    for line in (ROOT / "environment.yml").read_text().splitlines():
        stripped = line.split("#", 1)[0].rstrip()
        if not stripped:
            continue
        if re.match(r"^dependencies:", stripped):
            in_deps = True
            continue
        if in_deps and re.match(r"^\S", stripped):
            in_deps = False
        if not in_deps:
            continue
        item = stripped.strip()
        if item == "- pip:":
            in_pip = True
            continue
        if item.startswith("- "):
            (pip if in_pip and line.startswith("      ") else conda).append(item[2:].strip())
    return conda, pip


def test_environment_and_pyproject_name_the_same_packages():
    run, dev = _pyproject_packages()
    conda, pip = _environment_packages()
    conda_names = {_name(r) for r in conda} - {"python", "pip"}
    assert conda_names == {_name(r) for r in run + dev}
    assert pip == ["-e ."]
    # the version floors agree too
    spec = {_name(r): r.replace(" ", "") for r in run + dev}
    for r in conda:
        if _name(r) in spec:
            assert r.replace(" ", "") == spec[_name(r)], (r, spec[_name(r)])


def test_runtime_dependencies_are_only_numpy_matplotlib_seaborn():
    run, dev = _pyproject_packages()
    assert {_name(r) for r in run} == {"numpy", "matplotlib", "seaborn"}
    assert {"jupyter", "nbval", "pytest"} <= {_name(r) for r in dev}


def test_readme_opens_with_the_two_commands():
    lines = [l for l in (ROOT / "README.md").read_text().splitlines() if l.strip()]
    commands = [l.split("#", 1)[0].strip() for l in lines[:6] if not l.startswith(("#", "```"))]
    assert commands[:2] == ['python -m pip install -e ".[dev]"', "pytest"]


def test_ci_script_uses_the_readme_commands_and_rejects_no_tests():
    ci = (ROOT / ".ci" / "run").read_text()
    assert "set -euo pipefail" in ci
    assert 'python -m pip install -e ".[dev]"' in ci
    assert re.search(r"^pytest$", ci, re.M)
    assert '"$code" -eq 5' in ci


def test_library_imports_no_autograd_framework():
    forbidden = re.compile(r"^\s*(import|from)\s+(torch|jax|autograd|tensorflow)\b", re.M)
    offenders = [p.relative_to(ROOT).as_posix() for p in (ROOT / "attention_np").rglob("*.py")
                 if forbidden.search(p.read_text())]
    assert offenders == []


def test_readme_tour_runs():
    """The README's ten-line tour must stay true."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    text = (ROOT / "README.md").read_text()
    block = text.split("## The library in ten lines", 1)[1].split("```python", 1)[1].split("```", 1)[0]
    namespace: dict = {}
    exec(compile(block, "README-tour", "exec"), namespace)
    assert namespace["check_function"](namespace["fwd"], namespace["bwd"], namespace["q"], namespace["k"],
                                       namespace["v"]) < 1e-7
    plt.close("all")
