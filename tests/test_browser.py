"""The book in a real browser (issue 14, item 3): headless Chromium on the HTML edition and in JupyterLab.

Chromium is driven over the DevTools protocol through a pipe (``--remote-debugging-pipe``:
no debugging port, no extra Python package).  Every browser and server these tests start
is stopped in a fixture finaliser or a ``finally`` block, failures included; Chromium also
exits by itself when this process dies (its end of the pipe closes).

Without Chromium the tests skip with a one-line reason, except when ``CI=true``: then they fail.
"""
from __future__ import annotations

import fcntl
import hashlib
import json
import os
import re
import secrets
import select
import shutil
import signal
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
from pathlib import Path

import pytest

from attention_np.book import site

ROOT = Path(__file__).resolve().parents[1]
CHAPTER_FILES = sorted((ROOT / "chapters").glob("[0-9][0-9]_*.ipynb"))
LAB_CHAPTER = "chapters/02_scaled_dot_product.ipynb"
FLAGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
         "--disable-background-networking", "--disable-component-update", "--disable-sync",
         # pages load in several tabs at once; a background tab must not have its timers throttled
         "--disable-background-timer-throttling", "--disable-renderer-backgrounding",
         "--disable-backgrounding-occluded-windows"]
TABS = 2                     # pages typeset in parallel (one per core of the CI machine)
PAGE_TIMEOUT = 30.0          # seconds for one page to load and typeset


def find_chromium() -> str | None:
    return shutil.which("chromium") or shutil.which("chromium-browser")


@pytest.fixture(scope="module")
def chromium() -> str:
    path = find_chromium()
    if path is None:
        reason = "chromium not installed (Debian: apt-get install chromium)"
        if os.environ.get("CI") == "true":
            pytest.fail(reason + "; CI=true, and CI must run the browser tests")
        pytest.skip(reason + "; browser tests not run")
    return path


def _kill_group(proc: subprocess.Popen, grace: float = 5.0) -> None:
    """SIGTERM to the process group, SIGKILL after ``grace`` seconds."""
    if proc.poll() is not None:
        return
    for sig, wait in ((signal.SIGTERM, grace), (signal.SIGKILL, 5.0)):
        try:
            os.killpg(proc.pid, sig)
        except ProcessLookupError:
            return
        try:
            proc.wait(wait)
            return
        except subprocess.TimeoutExpired:
            continue


class Browser:
    """Headless Chromium and a minimal DevTools client over ``--remote-debugging-pipe`` (fd 3 in, fd 4 out)."""

    def __init__(self, exe: str, profile: Path):
        cmd_r, cmd_w = os.pipe()
        out_r, out_w = os.pipe()

        def child():                                   # runs in the child before exec: pipe ends -> fds 3, 4
            a, b = fcntl.fcntl(cmd_r, fcntl.F_DUPFD, 10), fcntl.fcntl(out_w, fcntl.F_DUPFD, 10)
            os.dup2(a, 3)
            os.dup2(b, 4)

        self.log = profile.with_suffix(".log")
        with open(self.log, "wb") as log:
            self.proc = subprocess.Popen([exe, *FLAGS, f"--user-data-dir={profile}", "--remote-debugging-pipe",
                                          "about:blank"], stdin=subprocess.DEVNULL, stdout=log, stderr=log,
                                         preexec_fn=child, close_fds=False, start_new_session=True)
        os.close(cmd_r)
        os.close(out_w)
        self._w, self._r = cmd_w, out_r
        self._buffer = b""
        self._id = 0
        self.events: list[dict] = []

    def _message(self, deadline: float) -> dict:
        while b"\0" not in self._buffer:
            left = deadline - time.monotonic()
            if left <= 0:
                raise TimeoutError("Chromium did not answer in time")
            if select.select([self._r], [], [], left)[0]:
                chunk = os.read(self._r, 1 << 20)
                if not chunk:
                    raise RuntimeError(f"Chromium exited; its log: {self.log.read_text(errors='replace')[-2000:]}")
                self._buffer += chunk
        message, self._buffer = self._buffer.split(b"\0", 1)
        return json.loads(message)

    def send(self, method: str, params: dict | None = None, session: str | None = None, timeout: float = 20.0):
        self._id += 1
        message = {"id": self._id, "method": method, "params": params or {}}
        if session:
            message["sessionId"] = session
        os.write(self._w, json.dumps(message).encode() + b"\0")
        deadline = time.monotonic() + timeout
        while True:
            reply = self._message(deadline)
            if reply.get("id") == self._id:
                if "error" in reply:
                    raise RuntimeError(f"{method}: {reply['error']}")
                return reply["result"]
            self.events.append(reply)

    def tab(self) -> str:
        """A new tab with the Network and Runtime domains on; returns its session id."""
        target = self.send("Target.createTarget", {"url": "about:blank"})["targetId"]
        session = self.send("Target.attachToTarget", {"targetId": target, "flatten": True})["sessionId"]
        self.send("Network.enable", session=session)
        self.send("Runtime.enable", session=session)
        return session

    def eval(self, session: str, expression: str):
        result = self.send("Runtime.evaluate", {"expression": expression, "returnByValue": True,
                                                "awaitPromise": True}, session=session)
        if "exceptionDetails" in result:
            return None                                # e.g. the document is being replaced
        return result["result"].get("value")

    def requests(self, session: str | None = None) -> list[str]:
        return [e["params"]["request"]["url"] for e in self.events
                if e.get("method") == "Network.requestWillBeSent" and session in (None, e.get("sessionId"))]

    def failed_requests(self) -> list[tuple[str, str]]:
        """(url, error) of every request that failed (a navigation away aborts about:blank, for one)."""
        urls = {e["params"]["requestId"]: e["params"]["request"]["url"] for e in self.events
                if e.get("method") == "Network.requestWillBeSent"}
        return [(urls.get(e["params"]["requestId"], "?"), e["params"].get("errorText", "")) for e in self.events
                if e.get("method") == "Network.loadingFailed"]

    def close(self) -> None:
        try:
            self.send("Browser.close", timeout=5)
        except Exception:                              # already gone, or not answering: the signals below
            pass
        try:
            self.proc.wait(5)
        except subprocess.TimeoutExpired:
            pass
        _kill_group(self.proc)
        for fd in (self._w, self._r):
            try:
                os.close(fd)
            except OSError:
                pass


@pytest.fixture(scope="module")
def browser(chromium, tmp_path_factory):
    b = Browser(chromium, tmp_path_factory.mktemp("chromium") / "profile")
    try:
        yield b
    finally:
        b.close()


@pytest.fixture(scope="module")
def edition(tmp_path_factory):
    out = tmp_path_factory.mktemp("edition") / "book"
    site.build(out, root=ROOT, log=False)
    return out


# --------------------------------------------------------------------------- the HTML edition

PAGE_STATE = """(() => {
  const mj = document.documentElement.getAttribute('data-mathjax');
  return [location.href, document.readyState, mj, typeof window.MathJax];
})()"""

PAGE_REPORT = r"""(() => {
  const markdown = [...document.querySelectorAll('.jp-RenderedMarkdown')].map(e => e.innerText).join('\n');
  const imgs = [...document.querySelectorAll('.jp-OutputArea img')];
  return {
    typeset: document.querySelectorAll('span.MathJax').length,
    sources: document.querySelectorAll('script[type^="math/tex"]').length,
    errors: [...document.querySelectorAll('.noError, .MathJax_Error, merror')].map(e => e.textContent.slice(0, 80)),
    raw_display_math: (markdown.match(/\$\$/g) || []).length,
    images: imgs.map(i => ({loaded: i.complete && i.naturalWidth > 0 && i.naturalHeight > 0, alt: i.alt})),
    chapters: [...document.querySelectorAll('a.book-chapter')].map(a => a.getAttribute('href')),
  };
})()"""


def notebook_facts(path: Path) -> tuple[int, bool]:
    """(stored PNG outputs, whether the markdown holds TeX), read from the raw notebook."""
    nb = json.loads(path.read_text(encoding="utf-8"))
    pngs = sum("image/png" in o.get("data", {}) for c in nb["cells"] if c["cell_type"] == "code"
               for o in c.get("outputs", []))
    tex = any("$" in "".join(c["source"]) for c in nb["cells"] if c["cell_type"] == "markdown")
    return pngs, tex


def open_pages(browser: Browser, pages: list[Path]) -> dict[str, dict]:
    """Load every page from disk, TABS at a time; page name -> PAGE_REPORT plus ``mathjax``:
    "done", "missing" (MathJax.js did not load), "timeout", or "none" (the contents page has no maths)."""
    tabs = [browser.tab() for _ in range(min(TABS, len(pages)))]
    todo, busy, reports = list(pages), {}, {}
    while todo or busy:
        for tab in tabs:
            if tab not in busy and todo:
                page = todo.pop(0)
                browser.send("Page.navigate", {"url": page.as_uri()}, session=tab)
                busy[tab] = (page, time.monotonic())
        time.sleep(0.05)
        for tab, (page, start) in list(busy.items()):
            state = browser.eval(tab, PAGE_STATE)
            mathjax = None
            if state and state[0] == page.as_uri() and state[1] == "complete":
                if page.name == "index.html":
                    mathjax = "none"
                elif state[2] == "done":
                    mathjax = "done"
                elif state[3] == "undefined":
                    mathjax = "missing"
            if mathjax is None and time.monotonic() - start > PAGE_TIMEOUT:
                mathjax = "timeout"
            if mathjax is not None:
                reports[page.name] = dict(browser.eval(tab, PAGE_REPORT) or {}, mathjax=mathjax)
                del busy[tab]
    return reports


def page_problems(reports: dict, expected: dict[str, tuple[int, bool]]) -> list[str]:
    """What is wrong with the loaded chapter pages; ``expected``: page name -> notebook_facts."""
    problems = []
    for name, (pngs, tex) in expected.items():
        report = reports.get(name)
        if not report or "images" not in report:
            problems.append(f"{name}: not loaded")
            continue
        if report["mathjax"] == "missing":
            problems.append(f"{name}: MathJax did not load")
        elif report["mathjax"] != "done":
            problems.append(f"{name}: MathJax not finished after {PAGE_TIMEOUT:.0f} s")
        elif tex and report["sources"] == 0:
            problems.append(f"{name}: no formula found by MathJax although the chapter has TeX")
        if report["typeset"] != report["sources"]:
            problems.append(f"{name}: {report['typeset']} of {report['sources']} formulas typeset")
        if report["errors"]:
            problems.append(f"{name}: TeX errors {report['errors'][:3]}")
        if report["raw_display_math"]:
            problems.append(f"{name}: {report['raw_display_math']} raw '$$' left in the text")
        loaded = [i for i in report["images"] if i["loaded"]]
        if len(loaded) != pngs or len(report["images"]) != pngs:
            problems.append(f"{name}: {len(loaded)} figures shown ({len(report['images'])} <img>), "
                            f"the notebook stores {pngs}")
        if any(not i["alt"] for i in report["images"]):
            problems.append(f"{name}: a figure without alt text")
    return problems


def test_html_edition_renders_equations_and_figures_offline(browser, edition):
    pages = [edition / "index.html"] + [edition / f"{p.stem}.html" for p in CHAPTER_FILES]
    browser.events.clear()
    start = time.monotonic()
    reports = open_pages(browser, pages)
    print(f"{len(pages)} pages loaded and typeset in {time.monotonic() - start:.1f} s")
    expected = {f"{p.stem}.html": notebook_facts(p) for p in CHAPTER_FILES}
    assert page_problems(reports, expected) == []
    assert sum(r["typeset"] for n, r in reports.items() if n != "index.html") > 1000
    # the contents page links every chapter
    assert reports["index.html"]["chapters"] == [f"{p.stem}.html" for p in CHAPTER_FILES]
    # nothing left the machine: every request was for a file of the site or inline data
    outside = sorted({u for u in browser.requests() if not u.startswith(("file://", "data:", "about:"))})
    assert outside == []
    files = {u.split("?")[0] for u in browser.requests() if u.startswith("file://")}
    assert any(u.endswith("/mathjax/MathJax.js") for u in files) and any(u.endswith(".woff") for u in files)
    # a file that failed to load is one the MathJax package itself does not ship (MathJax's native-MathML
    # styles name TeX fonts the package leaves out), never one the site's copy dropped
    static = site.mathjax_source()
    failed = [(url, error) for url, error in browser.failed_requests() if url.startswith("file://")]
    print("failed loads:", sorted(set(failed)))
    for url, error in failed:
        path = Path(urllib.request.url2pathname(url.split("?")[0].removeprefix("file://")))
        assert path.is_relative_to(edition / "mathjax"), (url, error)
        rel = path.relative_to(edition / "mathjax").as_posix()
        assert not (static / rel).exists(), f"{rel} is in the MathJax package but not in the site ({error})"


def test_the_page_check_fails_without_mathjax_and_with_a_figure_dropped(browser, edition, tmp_path):
    name = "02_scaled_dot_product.html"
    page = (edition / name).read_text(encoding="utf-8")
    shutil.copy(edition / "lab.css", tmp_path / "lab.css")
    pngs, tex = notebook_facts(ROOT / "chapters" / "02_scaled_dot_product.ipynb")
    dropped = re.sub(r"<img\b[^>]*>", "", page, count=1)
    assert dropped.count("<img") == page.count("<img") - 1 == pngs - 1
    (tmp_path / name).write_text(dropped, encoding="utf-8")       # and no mathjax/ next to it
    reports = open_pages(browser, [tmp_path / name])
    assert reports[name]["raw_display_math"] > 0
    assert page_problems(reports, {name: (pngs, tex)}) == [
        f"{name}: MathJax did not load",
        f"{name}: {reports[name]['raw_display_math']} raw '$$' left in the text",
        f"{name}: {pngs - 1} figures shown ({pngs - 1} <img>), the notebook stores {pngs}"]


# --------------------------------------------------------------------------- JupyterLab

def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _descendants(pid: int) -> list[int]:
    children: dict[int, list[int]] = {}
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            fields = stat.read_text().rsplit(")", 1)[1].split()
        except OSError:
            continue
        children.setdefault(int(fields[1]), []).append(int(stat.parent.name))
    found, todo = [], [pid]
    while todo:
        for child in children.get(todo.pop(), []):
            found.append(child)
            todo.append(child)
    return found


class Lab:
    """JupyterLab on a free loopback port with a random token, settings and state in a scratch directory."""

    def __init__(self, root: Path, scratch: Path):
        self.port, self.token = _free_port(), secrets.token_hex(16)
        self.base = f"http://127.0.0.1:{self.port}"
        settings = scratch / "settings" / "@jupyterlab" / "docmanager-extension"
        settings.mkdir(parents=True)
        # autosave after 1 s instead of 120 s: a notebook JupyterLab modified on opening reaches the disk at once
        (settings / "plugin.jupyterlab-settings").write_text('{"autosaveInterval": 1}')
        env = dict(os.environ, JUPYTER_RUNTIME_DIR=str(scratch / "runtime"), JUPYTER_CONFIG_DIR=str(scratch / "config"),
                   IPYTHONDIR=str(scratch / "ipython"))
        self.log = scratch / "lab.log"
        with open(self.log, "wb") as log:
            self.proc = subprocess.Popen(
                [sys.executable, "-m", "jupyterlab", "--no-browser", "--allow-root", f"--port={self.port}",
                 "--ServerApp.ip=127.0.0.1", "--ServerApp.port_retries=0", f"--IdentityProvider.token={self.token}",
                 f"--ServerApp.root_dir={root}", f"--LabApp.workspaces_dir={scratch / 'workspaces'}",
                 f"--LabApp.user_settings_dir={scratch / 'settings'}"],
                cwd=root, env=env, stdin=subprocess.DEVNULL, stdout=log, stderr=log, start_new_session=True)

    def get(self, path: str, method: str = "GET"):
        request = urllib.request.Request(self.base + path, method=method,
                                         headers={"Authorization": f"token {self.token}"})
        with urllib.request.urlopen(request, timeout=10) as response:
            return response.status, response.read()

    def wait_until_up(self, timeout: float = 60.0) -> None:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError(f"JupyterLab exited: {self.log.read_text(errors='replace')[-2000:]}")
            try:
                if self.get("/api/status")[0] == 200:
                    return
            except OSError:
                time.sleep(0.1)
        raise TimeoutError(f"JupyterLab not up after {timeout} s: {self.log.read_text(errors='replace')[-2000:]}")

    def stop(self) -> None:
        kernels = _descendants(self.proc.pid)
        try:
            self.get("/api/shutdown", method="POST")     # shuts the kernels down too
            self.proc.wait(15)
        except (OSError, subprocess.TimeoutExpired):
            pass
        _kill_group(self.proc)
        for pid in kernels:                               # kernels run in sessions of their own
            try:
                os.killpg(pid, signal.SIGKILL)
            except (ProcessLookupError, PermissionError):
                pass


LAB_STATE = """(() => {
  const panel = document.querySelector('.jp-NotebookPanel');
  if (!panel) return null;
  const links = [...panel.querySelectorAll('.jp-RenderedMarkdown a')]
    .filter(a => (a.getAttribute('href') || '').includes('exercises/' + %s));
  return {
    images: panel.querySelectorAll('.jp-OutputArea-output img').length,
    links: links.map(a => ({href: a.href, text: a.textContent})),
    dirty: [...document.querySelectorAll('.jp-mod-dirty')].map(e => e.textContent || e.className),
  };
})()"""

FIRST_FIGURE = """(async () => {
  const img = document.querySelector('.jp-NotebookPanel .jp-OutputArea .jp-OutputArea-output img');
  img.scrollIntoView();
  await new Promise(done => requestAnimationFrame(() => requestAnimationFrame(done)));
  const box = img.getBoundingClientRect();
  return {natural: [img.naturalWidth, img.naturalHeight], shown: [box.width, box.height]};
})()"""


def test_jupyterlab_shows_a_chapter_with_its_figures_and_exercise_link_and_leaves_it_unchanged(
        browser, tmp_path):
    # JupyterLab serves a copy of the repository's book (same layout): if opening ever modified a
    # notebook, the 1 s autosave would write into the copy, never into the working tree.
    root = tmp_path / "repo"
    for part in ("chapters", "exercises", "solutions"):
        shutil.copytree(ROOT / part, root / part)
    notebook = root / LAB_CHAPTER
    original = notebook.read_bytes()
    stem = Path(LAB_CHAPTER).stem
    pngs, _ = notebook_facts(notebook)
    lab = Lab(root, tmp_path / "lab")
    try:
        lab.wait_until_up()
        tab = browser.tab()
        browser.send("Page.navigate", {"url": f"{lab.base}/lab/tree/{LAB_CHAPTER}?token={lab.token}"}, session=tab)
        deadline, state = time.monotonic() + 45, None
        while time.monotonic() < deadline:
            state = browser.eval(tab, LAB_STATE % json.dumps(stem))
            if state and state["images"] == pngs and state["links"]:
                break
            time.sleep(0.1)
        assert state and state["images"] == pngs and state["links"], f"chapter not rendered: {state}"
        # a stored heatmap renders: the first figure, an <img> in an output area, decoded and with a size
        figure = browser.eval(tab, FIRST_FIGURE)
        assert min(figure["natural"]) > 0 and min(figure["shown"]) > 0, figure
        # the exercises link JupyterLab renders leads to the exercise notebook, served by the server
        link = state["links"][0]["href"]
        assert link.startswith(lab.base) and f"exercises/{stem}.ipynb" in link, link
        status, body = lab.get(link.removeprefix(lab.base))
        assert status == 200 and body == (root / "exercises" / f"{stem}.ipynb").read_bytes()
        # once the kernel is idle (JupyterLab has its kernel info: the moment it would rewrite metadata)
        # and past the autosave interval, the tab is clean and the file unchanged
        kernels, deadline = [], time.monotonic() + 30
        while time.monotonic() < deadline:
            kernels = json.loads(lab.get("/api/kernels")[1])
            if kernels and kernels[0]["execution_state"] == "idle":
                break
            time.sleep(0.2)
        assert kernels and kernels[0]["execution_state"] == "idle", kernels
        time.sleep(3)
        dirty = browser.eval(tab, LAB_STATE % json.dumps(stem))["dirty"]
        changed = notebook.read_bytes() != original
        diff = ""
        if changed:
            diff = subprocess.run(["diff", "-u", str(ROOT / LAB_CHAPTER), str(notebook)], capture_output=True,
                                  text=True).stdout[:3000]
        assert dirty == [] and not changed, f"JupyterLab modified {LAB_CHAPTER} on opening (dirty tabs {dirty}):\n{diff}"
        assert hashlib.sha256(notebook.read_bytes()).digest() == hashlib.sha256(original).digest()
    finally:
        lab.stop()
    assert lab.proc.poll() is not None
