"""Run one submission's nbval process isolated with the operating system's own mechanisms.

What a submission's code gets (Linux, bubblewrap or ``unshare`` available):

* the file system read-only (bubblewrap) or the course folders read-only (``unshare``); the
  solutions folder and the submissions' folders are hidden (bubblewrap); a private writable
  working folder and ``HOME`` (the grader's temporary folder for this submission), a private ``/tmp``;
* its own network namespace: only a loopback of its own (the kernel talks to nbval over it), no
  route to the machine's loopback or the outside;
* its own PID namespace: when the run ends, every process it started is killed by the kernel
  of the operating system (a detached ``sleep`` included);
* a memory limit per process (``RLIMIT_AS``): an allocation beyond it raises ``MemoryError``,
  which the grader reports as "memory limit".

Without bubblewrap or ``unshare`` (another OS, a container that forbids namespaces) the grader
still grades, with process groups and the memory limit only, and says once what is not isolated.
"""
from __future__ import annotations

import os
import re
import shutil
import subprocess
import sys
from dataclasses import dataclass, field
from pathlib import Path

DEFAULT_MEMORY_LIMIT = 4 * 2**30
# What student code must not read and then print into a report a student sees: the grader's
# credentials (folders under its HOME, hidden by bubblewrap) and secret-looking variables
# (dropped from the kernel's environment in every mode).
SECRET_DIRS = (".ssh", ".gnupg", ".aws", ".azure", ".config/gcloud", ".docker", ".kube", ".netrc.d",
               ".local/share/keyrings", ".password-store")
SECRET_ENV = re.compile(r"TOKEN|SECRET|PASSW|CREDENTIAL|API_?KEY|ACCESS_KEY|PRIVATE|^AWS_|^SSH_AUTH_SOCK$|"
                        r"^GITHUB_|^GH_|^GITLAB_|^CI_JOB_JWT", re.IGNORECASE)


def parse_size(text: str) -> int | None:
    """``"4G"``, ``"512M"``, ``"1.5GiB"``, ``"0"``/``"none"`` (no limit) -> bytes."""
    s = str(text).strip().lower().replace("ib", "").replace("b", "")
    if s in ("", "0", "none", "off"):
        return None
    units = {"k": 2**10, "m": 2**20, "g": 2**30, "t": 2**40}
    factor = units.get(s[-1], 1)
    number = s[:-1] if s[-1] in units else s
    try:
        value = float(number)
    except ValueError:
        raise ValueError(f"not a memory size: {text!r} (use e.g. 4G or 512M)") from None
    if value <= 0:
        return None
    return int(value * factor)


def format_size(n: int | None) -> str:
    if n is None:
        return "none"
    for unit, size in (("GiB", 2**30), ("MiB", 2**20), ("KiB", 2**10)):
        if n >= size:
            return f"{n / size:g} {unit}"
    return f"{n} bytes"


@dataclass
class Sandbox:
    """How submissions are run: ``method`` is ``bubblewrap``, ``unshare`` or ``none``."""
    method: str
    memory_limit: int | None = DEFAULT_MEMORY_LIMIT
    hidden: list = field(default_factory=list)      # folders student code must not see
    readonly: list = field(default_factory=list)    # folders student code may read but not change

    @property
    def isolated(self) -> bool:
        return self.method != "none"

    def describe(self) -> str:
        """One line for the grader's output: what is isolated and what is not."""
        mem = f"memory limit {format_size(self.memory_limit)} per process"
        if self.method == "bubblewrap":
            return (f"isolation: bubblewrap (read-only files, solutions and submissions hidden, no network, "
                    f"own processes killed at the end, private HOME and /tmp), {mem}")
        if self.method == "unshare":
            return (f"isolation: unshare (course folders read-only, no network, own processes killed at "
                    f"the end, private HOME), {mem}; other files are writable as by the grader's user")
        return (f"warning: submissions are NOT isolated: student code can read and write every file the "
                f"grader can, use the network and leave processes behind once a run ends "
                f"(only its process group is killed); {mem}. Grade in a container or a throwaway account.")

    # ------------------------------------------------------------------ commands
    def wrap(self, cmd: list, workdir: Path, env: dict) -> tuple[list, dict]:
        """The command and environment that run ``cmd`` inside the sandbox (``workdir`` writable)."""
        workdir = Path(workdir).resolve()
        home = workdir / "home"
        home.mkdir(exist_ok=True)
        env = {k: v for k, v in env.items() if not SECRET_ENV.search(k)}
        env.update(HOME=str(home), TMPDIR=str(workdir / "tmp"), JUPYTER_RUNTIME_DIR=str(home / "runtime"),
                   IPYTHONDIR=str(home / ".ipython"), MPLCONFIGDIR=str(home / ".matplotlib"),
                   JUPYTER_CONFIG_DIR=str(home / ".jupyter"), JUPYTER_DATA_DIR=str(home / ".jupyter-data"))
        (workdir / "tmp").mkdir(exist_ok=True)
        if self.method == "bubblewrap":
            hidden = list(self.hidden) + [Path.home() / d for d in SECRET_DIRS]
            args = ["bwrap", "--die-with-parent", "--new-session", "--unshare-all", "--cap-drop", "ALL",
                    "--ro-bind", "/", "/", "--dev", "/dev", "--proc", "/proc", "--tmpfs", "/tmp",
                    "--tmpfs", "/dev/shm"]
            args += _rebind_under_tmp()                   # a venv or checkout under /tmp must stay visible
            for folder in _visible_safe(hidden, workdir):
                args += ["--tmpfs", str(folder)]
            args += ["--bind", str(workdir), str(workdir), "--chdir", str(workdir), "--"]
            return args + list(cmd), env
        if self.method == "unshare":
            ro = [str(p) for p in _existing(self.readonly + self.hidden) if not _contains(p, workdir)]
            args = ["unshare", "--user", "--map-root-user", "--net", "--pid", "--fork", "--kill-child",
                    "--mount", "--mount-proc", "--propagation", "private",
                    sys.executable, "-m", "attention_np.grading._sandbox_init", *ro, "--"]
            return args + list(cmd), env
        return list(cmd), env

    def preexec(self):
        """``preexec_fn`` for the sandboxed process: the memory limit (inherited by the kernel)."""
        limit = self.memory_limit
        if limit is None:
            return None

        def set_limit():
            import resource
            try:
                resource.setrlimit(resource.RLIMIT_AS, (limit, limit))
            except (ValueError, OSError):
                pass
        return set_limit


def _existing(paths):
    out = []
    for p in paths:
        try:
            p = Path(p).resolve()
        except OSError:
            continue
        if p.is_dir() and p not in out:
            out.append(p)
    return out


def _contains(folder: Path, path: Path) -> bool:
    try:
        Path(path).resolve().relative_to(folder)
        return True
    except ValueError:
        return False


def _visible_safe(folders, workdir: Path):
    """Folders that can be hidden without hiding what the run needs (the package, Python, the workdir)."""
    needed = [Path(__file__).resolve().parents[2], Path(sys.prefix).resolve(), Path(sys.executable).resolve(),
              Path(sys.base_prefix).resolve(), workdir]
    tmp = Path("/tmp").resolve()
    out = []
    for folder in _existing(folders):
        if folder == Path("/") or _contains(tmp, folder):   # under /tmp: hidden by the private /tmp
            continue
        if any(_contains(folder, n) for n in needed):
            continue
        out.append(folder)
    return out


_PROBES: dict = {}


def _rebind_under_tmp() -> list:
    """``--ro-bind`` arguments for what the sandboxed Python needs that lives under /tmp.

    The sandbox mounts an empty /tmp; a virtual environment or an editable checkout
    created there (CI does both) would vanish and Python could not start.  Hidden
    folders (solutions, submissions) are mounted over again afterwards.
    """
    tmp = Path("/tmp").resolve()
    needed = {Path(sys.prefix).resolve(), Path(sys.base_prefix).resolve(),
              Path(sys.executable).resolve().parent, Path(__file__).resolve().parents[2]}
    args = []
    for path in sorted(needed):
        if path != tmp and tmp in path.parents and path.exists():
            args += ["--ro-bind", str(path), str(path)]
    return args


def _probe(method: str) -> bool:
    """Whether ``method`` can start a process here (cached; a container may forbid namespaces)."""
    if method in _PROBES:
        return _PROBES[method]
    ok = False
    if method == "bubblewrap" and shutil.which("bwrap"):
        cmd = ["bwrap", "--die-with-parent", "--unshare-all", "--cap-drop", "ALL", "--ro-bind", "/", "/",
               "--dev", "/dev", "--proc", "/proc", "--tmpfs", "/tmp", *_rebind_under_tmp(), "--", sys.executable, "-c",
               "import socket; s = socket.socket(); s.bind(('127.0.0.1', 0)); s.listen(); "
               "c = socket.create_connection(s.getsockname(), timeout=5)"]
        ok = _runs(cmd)
    elif method == "unshare" and shutil.which("unshare"):
        cmd = ["unshare", "--user", "--map-root-user", "--net", "--pid", "--fork", "--kill-child", "--mount",
               "--mount-proc", "--propagation", "private", sys.executable, "-m",
               "attention_np.grading._sandbox_init", "--", sys.executable, "-c",
               "import socket; s = socket.socket(); s.bind(('127.0.0.1', 0)); s.listen(); "
               "c = socket.create_connection(s.getsockname(), timeout=5)"]
        ok = _runs(cmd)
    _PROBES[method] = ok
    return ok


def _runs(cmd) -> bool:
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join(p for p in (str(Path(__file__).resolve().parents[2]),
                                                    env.get("PYTHONPATH", "")) if p)
    try:
        return subprocess.run(cmd, stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
                              timeout=30, env=env).returncode == 0
    except (OSError, subprocess.SubprocessError):
        return False


def detect(enabled: bool = True, memory_limit: int | None = DEFAULT_MEMORY_LIMIT, prefer: str | None = None) -> Sandbox:
    """The best sandbox available on this machine (``none`` off Linux, or when ``enabled`` is false)."""
    if not enabled or not sys.platform.startswith("linux"):
        return Sandbox("none", memory_limit)
    prefer = prefer or os.environ.get("ATTENTION_NP_GRADE_SANDBOX") or None   # tests pin one method
    if prefer == "none":
        return Sandbox("none", memory_limit)
    order = [prefer] if prefer else ["bubblewrap", "unshare"]
    for method in order:
        if _probe(method):
            return Sandbox(method, memory_limit)
    return Sandbox("none", memory_limit)
