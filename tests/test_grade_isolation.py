"""Isolation of student code while grading (issue 11): with each available sandbox (bubblewrap,
unshare), a submission cannot change the solutions or another submission, cannot reach a server
on the machine's loopback, leaves no process behind, and an allocation past the memory limit
fails with "memory limit" -- while the rest of its exercises are graded normally.

One batched CLI run per sandbox method (``--jobs 2``) grades four hostile submissions.
"""
import hashlib
import json
import os
import shutil
import socket
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest

from attention_np.grading import isolation

FIXTURES = Path(__file__).parent / "fixtures" / "grading"
FIXTURE = FIXTURES / "solutions" / "90_fixture.ipynb"
SLEEP_MARK = "313.25"          # a detached `sleep 313.25` must not survive grading
FULL = 8


def solution_json():
    return json.loads(FIXTURE.read_text(encoding="utf-8"))


def with_prefix(cell_id, code):
    nb = solution_json()
    for c in nb["cells"]:
        if c.get("id") == cell_id:
            src = "".join(c["source"]) if isinstance(c["source"], list) else c["source"]
            c["source"] = code + "\n\n" + src
    return nb


def tree_digest(folder: Path):
    return {str(p.relative_to(folder)): hashlib.sha256(p.read_bytes()).hexdigest()
            for p in sorted(folder.rglob("*")) if p.is_file()}


def sleepers():
    found = []
    for proc in Path("/proc").iterdir():
        if proc.name.isdigit():
            try:
                cmd = (proc / "cmdline").read_bytes().split(b"\0")
                status = (proc / "status").read_text()
            except OSError:
                continue
            if SLEEP_MARK.encode() in cmd and "zombie" not in status:
                found.append(int(proc.name))
    return found


class Server:
    """A TCP server on the machine's loopback, outside any sandbox, that records connections."""

    def __init__(self):
        self.sock = socket.socket()
        self.sock.bind(("127.0.0.1", 0))
        self.sock.listen(8)
        self.sock.settimeout(0.2)
        self.port = self.sock.getsockname()[1]
        self.connections, self.stop = 0, False
        self.thread = threading.Thread(target=self.run, daemon=True)
        self.thread.start()

    def run(self):
        while not self.stop:
            try:
                conn, _ = self.sock.accept()
            except OSError:
                continue
            self.connections += 1
            conn.close()

    def close(self):
        self.stop = True
        self.thread.join()
        self.sock.close()


def run_batch(root: Path, method: str, extra=()):
    solutions = root / "solutions"
    shutil.copytree(FIXTURES / "solutions", solutions)
    server = Server()
    victim = root / "victim" / "90_fixture.ipynb"
    subs = {
        "victim": solution_json(),
        "writer": with_prefix("ex1-solution", "\n".join([
            "import pathlib",
            f"for target in [pathlib.Path({str(solutions / '90_fixture.ipynb')!r}), pathlib.Path({str(victim)!r}),",
            f"               pathlib.Path({str(solutions / 'evil.ipynb')!r})]:",
            "    try:",
            "        with open(target, 'a') as f:",
            "            f.write('tampered')",
            "    except OSError as exc:",
            "        print('blocked:', exc)"])),
        "network": with_prefix("ex1-solution", "\n".join([
            "import socket",
            "try:",
            f"    socket.create_connection(('127.0.0.1', {server.port}), timeout=3).close()",
            "except OSError as exc:",
            "    print('no network:', exc)"])),
        "sleeper": with_prefix("ex1-solution", "\n".join([
            "import subprocess",
            f"subprocess.Popen(['sleep', '{SLEEP_MARK}'], start_new_session=True, stdin=subprocess.DEVNULL,",
            "                 stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)",
            f"subprocess.run('nohup sleep {SLEEP_MARK} >/dev/null 2>&1 &', shell=True)"])),
        "snoop": with_prefix("ex1-solution", "\n".join([
            "import os, pathlib",
            "assert 'hunter2' not in str(os.environ), 'a secret reached the kernel'",
            f"assert pathlib.Path.home() != pathlib.Path({str(Path.home())!r}), 'HOME is the grader\\'s'",
            "pathlib.Path.home().joinpath('scratch.txt').write_text('a private HOME is writable')"])),
        "hog": with_prefix("ex2-solution", "\n".join([
            "import numpy as np",
            "hoard = np.empty(6 * 2**30, dtype=np.uint8)   # 6 GiB: past the default 4 GiB limit"])),
    }
    paths = {}
    for name, nb in subs.items():
        p = root / name / "90_fixture.ipynb"
        p.parent.mkdir()
        p.write_text(json.dumps(nb), encoding="utf-8")
        paths[name] = p
    before = {"solutions": tree_digest(solutions), "victim": victim.read_bytes()}
    env = dict(os.environ, ATTENTION_NP_GRADE_SANDBOX=method, COURSE_API_TOKEN="hunter2")
    env.pop("ATTENTION_NP_GRADE_SEED", None)
    out = root / "report.json"
    try:
        proc = subprocess.run([sys.executable, "-m", "attention_np.grade", *map(str, paths.values()),
                               "--solutions", str(solutions), "--jobs", "2", "--cell-timeout", "20",
                               "--json", str(out), *extra], cwd=root, env=env, capture_output=True, text=True,
                              timeout=300)
    finally:
        server.close()
    assert proc.returncode == 0, proc.stderr
    reports = {Path(r["file"]).parent.name: r for r in json.loads(out.read_text())["submissions"]}
    return {"reports": reports, "before": before, "solutions": solutions, "victim": victim,
            "connections": server.connections, "stdout": proc.stdout, "sleepers": sleepers()}


def _available(method):
    return isolation.detect(prefer=method).method == method


@pytest.fixture(scope="module", params=["bubblewrap", "unshare"])
def batch(request, tmp_path_factory):
    if not sys.platform.startswith("linux") or not _available(request.param):
        if os.environ.get("CI") == "true":   # .ci/run installs bubblewrap; CI must never skip isolation
            pytest.fail(f"{request.param} is not available in CI: .ci/run must install it")
        pytest.skip(f"{request.param} is not available here")
    result = run_batch(tmp_path_factory.mktemp(request.param), request.param)
    yield result
    for pid in result["sleepers"]:           # do not leave them behind if the test fails
        try:
            os.kill(pid, 9)
        except OSError:
            pass


def points(r):
    return {e["id"]: e["points"] for e in r["exercises"]}


def test_isolation_is_announced_once(batch):
    assert batch["stdout"].count("isolation: ") == 1
    assert "NOT isolated" not in batch["stdout"]


def test_writing_to_solutions_or_another_submission_changes_nothing(batch):
    assert tree_digest(batch["solutions"]) == batch["before"]["solutions"]
    assert batch["victim"].read_bytes() == batch["before"]["victim"]
    assert batch["reports"]["writer"]["total"] == FULL and batch["reports"]["victim"]["total"] == FULL


def test_loopback_server_outside_the_sandbox_is_unreachable(batch):
    assert batch["connections"] == 0
    assert batch["reports"]["network"]["total"] == FULL     # the kernel's own loopback still works


def test_detached_sleep_is_gone_after_grading(batch):
    assert batch["sleepers"] == []
    assert batch["reports"]["sleeper"]["total"] == FULL


def test_private_home_and_no_secrets_in_the_environment(batch):
    assert batch["reports"]["snoop"]["total"] == FULL, batch["reports"]["snoop"]["exercises"][0]


def test_allocation_past_the_memory_limit_fails_with_memory_limit(batch):
    r = batch["reports"]["hog"]
    ex2 = next(e for e in r["exercises"] if e["id"] == "ex2")
    assert ex2["points"] == 0 and "memory limit" in ex2["reason"], ex2
    assert "4 GiB" in ex2["reason"]
    assert points(r) == {"ex1": 1, "ex2": 0, "ex3": 1, "ex4": 2, "ex5": 2}


def test_without_isolation_the_grader_says_so_once(tmp_path):
    p = tmp_path / "amy" / "90_fixture.ipynb"
    p.parent.mkdir()
    p.write_text(json.dumps(solution_json()))
    proc = subprocess.run([sys.executable, "-m", "attention_np.grade", str(p), "--solutions",
                           str(FIXTURES / "solutions"), "--no-isolation"], cwd=tmp_path, capture_output=True,
                          text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.count("NOT isolated") == 1
    assert "total      8/8" in proc.stdout


def test_memory_sizes():
    assert isolation.parse_size("4G") == 4 * 2**30
    assert isolation.parse_size("512M") == 512 * 2**20
    assert isolation.parse_size("1.5GiB") == int(1.5 * 2**30)
    assert isolation.parse_size("0") is None
    with pytest.raises(ValueError):
        isolation.parse_size("lots")
    assert isolation.format_size(4 * 2**30) == "4 GiB"
