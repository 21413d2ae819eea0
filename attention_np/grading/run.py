"""Run ``pytest --nbval`` on one built notebook, isolated, and read back what happened per cell.

The command: ``pytest NB.ipynb --nbval --nbval-current-env`` with our plugin (dead kernels in a
fraction of a second, a grace for busy machines, one JSON line per cell in ``--grade-log``), a
per-cell timeout, a sanitizer, ``--junitxml``; warnings silenced in the kernel (nbval compares
stderr). It runs in its own process group under an overall time limit, wrapped by the
:class:`~attention_np.grading.isolation.Sandbox` (namespaces, memory limit); whatever is left
is killed at the end.
"""
from __future__ import annotations

import json
import os
import re
import signal
import subprocess
import sys
import threading
import xml.etree.ElementTree as ET
from pathlib import Path

from . import isolation
from .checks import SEED_ENV

PACKAGE_PARENT = Path(__file__).resolve().parents[2]   # the folder that holds attention_np/
SANITIZE_PATTERNS = [
    # memory addresses such as <object at 0x7f3a2c1b9d60>
    (r"0x[0-9a-fA-F]{6,}", "0xADDRESS"),
]
_ENV_DROP = ("MPLBACKEND", "PYTEST_ADDOPTS", "PYTEST_PLUGINS", "PYTHONSTARTUP", "JPY_PARENT_PID",
             "JPY_SESSION_NAME", "PYTHONBREAKPOINT", "COV_CORE_SOURCE")


def _kernel_env(seed):
    env = {k: v for k, v in os.environ.items() if k not in _ENV_DROP}
    env["PYTHONWARNINGS"] = "ignore"           # nbval compares stderr: no warnings may reach it
    env["PYTHONDONTWRITEBYTECODE"] = "1"
    env["PYTEST_DISABLE_PLUGIN_AUTOLOAD"] = "1"  # only nbval and our plugin: fast and predictable
    env["PYDEVD_DISABLE_FILE_VALIDATION"] = "1"
    env["PYTHONPATH"] = os.pathsep.join(p for p in (str(PACKAGE_PARENT), env.get("PYTHONPATH", "")) if p)
    if seed is not None:
        env[SEED_ENV] = str(seed)
    return env


def _kill_group(pgid):
    killpg = getattr(os, "killpg", None)   # POSIX; elsewhere only the direct child can be killed
    if killpg is None:
        return
    try:
        killpg(pgid, signal.SIGKILL)
    except OSError:
        pass


_ACTIVE, _ACTIVE_LOCK = {}, threading.Lock()   # running nbval processes: pid -> grade log (for Ctrl-C)


def _kernel_pids(log: Path) -> list:
    return [r["pid"] for r in _read_log(log) if r.get("event") == "kernel" and isinstance(r.get("pid"), int)]


def kill_active_runs():
    """Kill every running nbval process group and its kernel's group (the grader was interrupted)."""
    with _ACTIVE_LOCK:
        active = list(_ACTIVE.items())
    for pid, (proc, log) in active:
        _kill_group(pid)
        proc.kill()
        for kernel in (_kernel_pids(log) if log is not None else []):
            _kill_group(kernel)


def run_nbval(nb_path: Path, workdir: Path, cell_timeout: float, timeout: float, seed, sandbox=None):
    """Run nbval on a built notebook; ``(results by code-cell number, killed, exit code, output tail)``.

    With an isolating ``sandbox`` the whole run (pytest, nbval, the kernel, anything the student's
    code starts) lives in its own namespaces and dies with it; see :mod:`.isolation`."""
    sandbox = sandbox or isolation.Sandbox("none", None)
    ini = workdir / "pytest.ini"
    ini.write_text("[pytest]\n", encoding="utf-8")
    sanitize = workdir / "sanitize.cfg"
    sanitize.write_text("".join(f"[{i}]\nregex: {rx}\nreplace: {rep}\n\n"
                                for i, (rx, rep) in enumerate(SANITIZE_PATTERNS)), encoding="utf-8")
    junit, log, out = workdir / "junit.xml", workdir / "cells.jsonl", workdir / "pytest.out"
    cmd = [sys.executable, "-m", "pytest", nb_path.name,
           "-c", str(ini), "--rootdir", str(workdir),
           "-p", "attention_np.grading._nbplugin", "-p", "nbval.plugin", "-p", "no:cacheprovider",
           "--nbval", "--nbval-current-env", "--nbval-cell-timeout", f"{cell_timeout:g}",
           "--nbval-sanitize-with", str(sanitize), "--color=no", "--junitxml", str(junit),
           "--grade-log", str(log), "-q", "--tb=no", "-p", "no:warnings"]
    cmd, env = sandbox.wrap(cmd, workdir, _kernel_env(seed))
    killed = False
    with open(out, "wb") as out_f:
        proc = subprocess.Popen(cmd, cwd=workdir, env=env, stdin=subprocess.DEVNULL, stdout=out_f,
                                stderr=subprocess.STDOUT, start_new_session=True, preexec_fn=sandbox.preexec())
        with _ACTIVE_LOCK:
            _ACTIVE[proc.pid] = (proc, log if not sandbox.isolated else None)
        try:
            proc.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            killed = True
            _kill_group(proc.pid)
            proc.kill()
            proc.wait()
        finally:
            _kill_group(proc.pid)     # anything the run left behind in its group
            with _ACTIVE_LOCK:
                _ACTIVE.pop(proc.pid, None)
    if not sandbox.isolated:              # inside a PID namespace these pids are not the host's
        for kernel in _kernel_pids(log):
            _kill_group(kernel)           # the kernel runs in its own session (jupyter_client)
    records = _read_log(log)
    # The plugin's log decides (the cell's own run; a setup failure when it never ran); the
    # junit report fills in any cell the log lacks.
    results = {}
    for rec in records:
        if rec.get("event") == "cell" and isinstance(rec.get("cell"), int):
            if rec.get("when") == "call" or rec["cell"] not in results:
                results[rec["cell"]] = rec
    for cell, outcome, message in _read_junit(junit):
        if cell not in results:
            results[cell] = {"cell": cell, "outcome": outcome, "reason": message,
                             "kind": "pass" if outcome == "passed" else "error"}
    try:
        tail = out.read_bytes()[-2000:].decode("utf-8", "replace").strip().splitlines()
    except OSError:
        tail = []
    return results, killed, proc.returncode, (tail[-1] if tail else "")


def _read_log(path: Path) -> list:
    records = []
    try:
        with open(path, encoding="utf-8") as f:
            for line in f:
                try:
                    records.append(json.loads(line))
                except ValueError:
                    continue
    except OSError:
        pass
    return records


_CELL_NAME = re.compile(r"Cell (\d+)$")


def _read_junit(path: Path):
    """``(code cell number, outcome, first line of message)`` per ``file.ipynb::Cell N`` test case."""
    try:
        root = ET.parse(path).getroot()
    except (OSError, ET.ParseError):
        return []
    rows = []
    for case in root.iter("testcase"):
        m = _CELL_NAME.search(case.get("name", ""))
        if not m:
            continue
        outcome, message = "passed", ""
        for tag in ("failure", "error", "skipped"):
            node = case.find(tag)
            if node is not None:
                outcome = {"failure": "failed", "error": "failed", "skipped": "skipped"}[tag]
                message = (node.get("message") or "").strip().splitlines()[:1]
                message = message[0] if message else ""
                break
        rows.append((int(m.group(1)), outcome, message))
    return rows
