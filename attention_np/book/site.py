"""Build the offline HTML edition of the book from the chapters' stored outputs.

Nothing is executed: every page is rendered by nbconvert's ``HTMLExporter`` (the ``lab``
template, see :mod:`attention_np.book.templates`) from ``chapters/NN_slug.ipynb`` as stored.
Chapter titles come from one place, the first heading of each notebook, written
``# Chapter N · English title (中文)`` (the preface: ``# 00 · Title (中文)``).

The output directory holds ``index.html`` (contents), one ``NN_slug.html`` per chapter and
``mathjax/``, the part of the MathJax 2.7 copy shipped by the ``jupyter-server-mathjax``
package that TeX -> HTML-CSS typesetting loads.  Opening a page makes no network request.
Building twice gives byte-identical trees.
"""
from __future__ import annotations

import ast
import html
import os
import re
import shutil
import sys
from dataclasses import dataclass
from pathlib import Path
from urllib.parse import urlsplit

from . import templates

PACKAGE_ROOT = Path(__file__).resolve().parents[2]
MARKER = ".attention_np-book"           # written into every output directory; only such a directory is replaced
WIDGET_MIME = "application/vnd.jupyter.widget-view+json"
HEADING = re.compile(r"^#\s+(?:Chapter\s+(?P<chapter>\d+)|(?P<number>\d+))\s*·\s*(?P<en>.+?)\s*\((?P<zh>[^()]+)\)\s*$")


def default_root() -> Path:
    """The repository this package was installed from (editable install), else the current directory."""
    for root in (PACKAGE_ROOT, Path.cwd()):
        if (root / "chapters").is_dir():
            return root
    raise FileNotFoundError(f"no chapters/ directory in {PACKAGE_ROOT} or {Path.cwd()}; run from the repository root")


@dataclass(frozen=True)
class Chapter:
    """One notebook of the book: ``chapters/<stem>.ipynb`` rendered to ``<stem>.html``."""

    path: Path
    number: str          # "00" .. "20", the file name's prefix
    title_en: str
    title_zh: str
    heading: str         # the first heading as written, without the leading '#'

    @property
    def stem(self) -> str:
        return self.path.stem

    @property
    def html(self) -> str:
        return self.stem + ".html"

    @property
    def label(self) -> str:
        return f"{self.number} {self.title_en}"


def _read(path: Path):
    import nbformat

    return nbformat.read(path, as_version=4)


def parse_heading(path: Path, nb=None) -> Chapter:
    """The chapter's number and English / Chinese titles from its first markdown heading."""
    nb = _read(path) if nb is None else nb
    first = next((c for c in nb.cells if c.cell_type == "markdown"), None)
    line = next((l for l in (first.source.splitlines() if first else []) if l.strip()), "")
    match = HEADING.match(line.strip())
    number = path.name.split("_", 1)[0]
    if not match or not number.isdigit():
        raise ValueError(f"{path}: the first markdown cell must start with '# Chapter N · English title (中文)' "
                         f"(the preface: '# 00 · Title (中文)'), got {line!r}")
    written = match.group("chapter") or match.group("number")
    if int(written) != int(number):
        raise ValueError(f"{path}: heading says chapter {written}, file name says {number}")
    return Chapter(path=path, number=number, title_en=match.group("en"), title_zh=match.group("zh").strip(),
                   heading=line.lstrip("#").strip())


def chapters(root: Path | None = None) -> list[Chapter]:
    """Every ``chapters/NN_*.ipynb`` of ``root`` in reading order, with its titles."""
    root = Path(root) if root is not None else default_root()
    paths = sorted(p for p in (root / "chapters").glob("[0-9][0-9]_*.ipynb"))
    if not paths:
        raise FileNotFoundError(f"no chapters/NN_slug.ipynb under {root}")
    return [parse_heading(p) for p in paths]


# --------------------------------------------------------------------------- alt text of figures

_TITLE_FUNCS = {"set_title", "title", "suptitle"}
_TITLE_KEYWORDS = {"title", "suptitle"}


def _literal(node) -> str | None:
    """A string literal as written; f-string fields become '…'; anything else None."""
    if isinstance(node, ast.Constant) and isinstance(node.value, str):
        return node.value
    if isinstance(node, ast.JoinedStr):
        parts = [v.value if isinstance(v, ast.Constant) else "…" for v in node.values]
        text = "".join(parts)
        return text if text.replace("…", "").strip(" ,:;=()") else None
    return None


def figure_titles(source: str) -> list[str]:
    """Titles a plotting cell gives its figure: ``suptitle`` first, then ``set_title``/``plt.title``/``title=``.

    Only string literals count (an f-string's fields are shown as '…'); a cell that does not
    parse as Python (a magic) gives no title.
    """
    try:
        tree = ast.parse(source)
    except SyntaxError:
        return []
    sup, other = [], []
    for node in ast.walk(tree):
        if not isinstance(node, ast.Call):
            continue
        name = node.func.attr if isinstance(node.func, ast.Attribute) else getattr(node.func, "id", "")
        found = []
        if name in _TITLE_FUNCS and node.args:
            found.append((name == "suptitle", node.args[0], node.lineno, node.col_offset))
        for kw in node.keywords:
            if kw.arg in _TITLE_KEYWORDS:
                found.append((kw.arg == "suptitle", kw.value, kw.value.lineno, kw.value.col_offset))
        for is_sup, value, line, col in found:
            text = _literal(value)
            if text:
                (sup if is_sup else other).append((line, col, " ".join(text.split())))
    titles = []
    for _, _, text in sorted(sup) + sorted(other):
        if text not in titles:
            titles.append(text)
    return titles


def _plain(markdown_heading: str) -> str:
    """A heading as plain text: no '#', link targets, code ticks, emphasis or TeX delimiters."""
    text = markdown_heading.lstrip("#").strip()
    text = re.sub(r"\[([^\]]*)\]\([^)]*\)", r"\1", text)          # links -> their text
    text = re.sub(r"\\sqrt\{([^{}]*)\}", r"√\1", text)               # $\sqrt{d_k}$ -> √d_k
    text = re.sub(r"\\([A-Za-z]+)", r"\1", text)                     # other TeX commands -> their names
    return re.sub(r"[`$]|\*\*", "", text).strip()


def alt_text(chapter: Chapter, k: int, section: str, titles: list[str]) -> str:
    """``Figure k, chapter NN: <section> — <titles>`` (titles left out when the cell sets none)."""
    alt = f"Figure {k}, chapter {chapter.number}: {section}"
    if titles:
        shown = titles[:4] + (["…"] if len(titles) > 4 else [])
        alt += " — " + "; ".join(shown)
    return alt


def prepare(nb, chapter: Chapter) -> int:
    """Adjust an in-memory copy of a chapter for the site; returns the number of PNG figures.

    * every ``image/png`` output gets alt text (an ``alt`` already stored in the output's metadata wins);
    * an interactive widget output (which needs a kernel) is replaced by a note saying so;
    * the page title is the chapter's heading.
    """
    import nbformat

    nb.metadata["title"] = chapter.heading
    nb.metadata.pop("widgets", None)
    section, k = chapter.title_en, 0
    for cell in nb.cells:
        if cell.cell_type == "markdown":
            for line in cell.source.splitlines():
                if re.match(r"^#{1,6}\s", line):
                    section = _plain(line)
            continue
        if cell.cell_type != "code":
            continue
        titles = None
        outputs = []
        for out in cell.get("outputs", []):
            data = out.get("data", {})
            if WIDGET_MIME in data:
                outputs.append(nbformat.v4.new_output(
                    "display_data", data={"text/html": "<p class=\"book-widget-note\"><em>Interactive figure: "
                                                       "open this chapter in JupyterLab and run it to move the "
                                                       "slider.</em></p>"}))
                continue
            if "image/png" in data:
                k += 1
                if titles is None:
                    titles = figure_titles(cell.source)
                meta = out.setdefault("metadata", {}).setdefault("image/png", {})
                meta.setdefault("alt", alt_text(chapter, k, section, titles))
            outputs.append(out)
        cell["outputs"] = outputs
    return k


# --------------------------------------------------------------------------- links

_HREF = re.compile(r'(<a\b[^>]*?\bhref=")([^"]*)(")')


NOTEBOOK_NOTE = (
    "Exercises and solutions are Jupyter notebooks in the repository "
    "(<code>exercises/NN_slug.ipynb</code>, <code>solutions/NN_slug.ipynb</code>); a link to one opens the "
    "file itself. To work on an exercise, run <code>jupyter lab exercises/NN_slug.ipynb</code> from the "
    "repository's root and check your answers with "
    "<code>python -m attention_np.grade exercises/NN_slug.ipynb</code>. Every chapter is a notebook too "
    "(<code>chapters/NN_slug.ipynb</code>): open it in JupyterLab to run the cells and change the code.")


def rewrite_links(page: str, chapter: Chapter, by_stem: dict[str, Chapter], root: Path, out: Path) -> str:
    """Links to chapter notebooks -> their pages; links to other repository files -> the file, relative to ``out``.

    A link to a repository file gets a ``title`` naming the file.  When ``out`` is outside the
    repository, such a link leads to the page's note on opening notebooks instead.  A relative
    link to a file that does not exist is an error.
    """
    root, out = root.resolve(), out.resolve()
    here = chapter.path.parent.resolve()
    inside = _is_relative_to(out, root)
    broken = []

    def fix(match):
        href = html.unescape(match.group(2))
        parts = urlsplit(href)
        if parts.scheme or parts.netloc or href.startswith("#") or not parts.path or 'class="book-' in match.group(1):
            return match.group(0)                       # external, in-page, or the site's own navigation
        target = (here / parts.path).resolve()
        fragment = "#" + parts.fragment if parts.fragment else ""
        if target.parent == here and target.suffix == ".ipynb" and target.stem in by_stem:
            return match.group(1) + html.escape(by_stem[target.stem].html + fragment) + match.group(3)
        if not target.exists() or not _is_relative_to(target, root):
            broken.append(href)
            return match.group(0)
        new = Path(os.path.relpath(target, out)).as_posix() + fragment if inside else "#opening-notebooks"
        title = f"{target.relative_to(root).as_posix()} in the repository"
        return (match.group(1)[:-len('href="')] + f'title="{html.escape(title)}" href="' + html.escape(new)
                + match.group(3))

    page = _HREF.sub(fix, page)
    if broken:
        raise ValueError(f"{chapter.path}: links to files missing from the repository: {sorted(set(broken))}")
    return page


def _is_relative_to(path: Path, root: Path) -> bool:
    try:
        path.relative_to(root)
        return True
    except ValueError:
        return False


# --------------------------------------------------------------------------- navigation

def _nav(where: str, prev: Chapter | None, nxt: Chapter | None) -> str:
    esc = html.escape
    left = (f'<a class="book-prev" href="{prev.html}" rel="prev">&larr; previous: {esc(prev.label)}</a>' if prev
            else '<a class="book-prev" href="index.html" rel="prev">&larr; previous: contents</a>')
    right = (f'<a class="book-next" href="{nxt.html}" rel="next">next: {esc(nxt.label)} &rarr;</a>' if nxt
             else '<span class="book-nav-none">next &rarr;</span>')
    return (f'<nav class="book-nav {where}">{left}<a class="book-contents" href="index.html">Contents</a>'
            f'{right}</nav>')


# --------------------------------------------------------------------------- MathJax

def mathjax_source() -> Path:
    """The ``static`` directory of the installed ``jupyter_server_mathjax`` package (MathJax 2.7)."""
    try:
        import jupyter_server_mathjax
    except ImportError as err:
        raise ModuleNotFoundError(
            "the HTML edition needs the jupyter-server-mathjax package (MathJax shipped with the site); "
            "install the development extras: python -m pip install -e \".[dev]\"") from err
    static = Path(jupyter_server_mathjax.__file__).resolve().parent / "static"
    if not (static / "MathJax.js").is_file():
        raise FileNotFoundError(f"{static}/MathJax.js is missing; reinstall jupyter-server-mathjax")
    return static


# What TeX -> HTML-CSS typesetting loads, relative to MathJax's root: the loader, the combined
# configuration (TeX input + HTML-CSS output, preloaded) and Safe mode, the TeX extensions
# loaded on demand (\boldsymbol, \cancel, ...), the HTML-CSS output's autoloaded parts and
# STIX-Web font data, the web fonts themselves, the operator dictionary and the accessibility
# menu the configuration adds.  Not copied: SVG/other outputs, other configurations,
# translations (the menu is pinned to English), the speech-rule engine behind the
# accessibility explorer, and MathML input extensions.
MATHJAX_PARTS = (
    "LICENSE",
    "MathJax.js",
    "config/" + templates.MATHJAX_CONFIG.split(",")[0] + ".js",
    "config/Safe.js",
    "extensions/Safe.js",
    "extensions/HelpDialog.js",
    "extensions/a11y/accessibility-menu.js",
    "extensions/TeX/",
    "extensions/HTML-CSS/",
    "jax/element/mml/optable/",
    "jax/output/HTML-CSS/",
    "fonts/HTML-CSS/STIX-Web/woff/",
)


def mathjax_files(static: Path) -> list[str]:
    """Relative paths of the MathJax files the site ships (sorted; a missing part is an error)."""
    files = []
    for part in MATHJAX_PARTS:
        path = static / part
        if part.endswith("/"):
            if not path.is_dir():
                raise FileNotFoundError(f"MathJax copy incomplete: {path} is missing")
            files += [p.relative_to(static).as_posix() for p in path.rglob("*") if p.is_file()]
        elif path.is_file():
            files.append(part)
        else:
            raise FileNotFoundError(f"MathJax copy incomplete: {path} is missing")
    return sorted(set(files))


def copy_mathjax(out: Path) -> int:
    static = mathjax_source()
    files = mathjax_files(static)
    for rel in files:
        dest = out / "mathjax" / rel
        dest.parent.mkdir(parents=True, exist_ok=True)
        shutil.copyfile(static / rel, dest)
    return len(files)


# --------------------------------------------------------------------------- build

def _prepare_out(out: Path) -> None:
    if out.exists():
        if not out.is_dir():
            raise NotADirectoryError(f"{out} exists and is not a directory")
        if any(out.iterdir()) and not (out / MARKER).is_file():
            raise FileExistsError(f"{out} is not empty and was not made by attention_np.book; "
                                  "choose a new or empty directory")
        shutil.rmtree(out)
    out.mkdir(parents=True)
    (out / MARKER).write_text("Generated by `python -m attention_np.book build`; rebuilding replaces this "
                              "directory.\n", encoding="utf-8")


def _exporter():
    from jinja2 import DictLoader
    from nbconvert import HTMLExporter

    return HTMLExporter(template_name="lab", template_file="book_chapter.html.j2",
                        extra_loaders=[DictLoader({"book_chapter.html.j2": templates.CHAPTER})])


def _write_lab_css(exporter, out: Path) -> None:
    """JupyterLab's light theme as nbconvert's lab template ships it, plus the book's rules, in one file."""
    env = exporter.environment
    sheets = [env.loader.get_source(env, name)[0] for name in ("static/index.css", "static/theme-light.css")]
    (out / "lab.css").write_text("\n".join(sheets + [templates.LAB_EXTRA_CSS, templates.CSS, ""]),
                                 encoding="utf-8")


def build(out: Path | str | None = None, root: Path | str | None = None, log=None) -> list[Path]:
    """Render every chapter of ``root`` (default: this repository) to ``out`` (default ``root/build/book``).

    Prints one progress line per chapter to ``log`` (default stdout; ``log=False`` for silence).
    Returns the pages written, contents page first.
    """
    from jinja2 import Environment
    from markupsafe import Markup

    root = Path(root) if root is not None else default_root()
    out = Path(out) if out is not None else root / "build" / "book"
    if log is None:
        log = sys.stdout
    book = chapters(root)
    by_stem = {c.stem: c for c in book}
    _prepare_out(out)
    n_mathjax = copy_mathjax(out)
    exporter = _exporter()
    _write_lab_css(exporter, out)
    note_html = NOTEBOOK_NOTE
    pages = []
    for i, chapter in enumerate(book):
        nb = _read(chapter.path)
        n_figures = prepare(nb, chapter)
        prev = book[i - 1] if i else None
        nxt = book[i + 1] if i + 1 < len(book) else None
        resources = {
            "metadata": {"name": chapter.stem, "path": str(chapter.path.parent)},
            "book": {
                "mathjax_url": f"mathjax/MathJax.js?config={templates.MATHJAX_CONFIG}",
                "nav_top": Markup(_nav("top", prev, nxt)),
                "nav_bottom": Markup(f'<aside class="book-notebooks" id="opening-notebooks"><p>{note_html}</p>'
                                     f'</aside>' + _nav("bottom", prev, nxt)),
            },
        }
        page, _ = exporter.from_notebook_node(nb, resources=resources)
        page = rewrite_links(page, chapter, by_stem, root, out)
        dest = out / chapter.html
        dest.write_text(page, encoding="utf-8")
        pages.append(dest)
        if log:
            print(f"[{i + 1:2d}/{len(book)}] {chapter.path.relative_to(root).as_posix()} -> {dest.name} "
                  f"({n_figures} figures)", file=log, flush=True)
    env = Environment(autoescape=True)
    index = env.from_string(templates.INDEX).render(
        title="Attention mechanisms from first principles — 注意力机制",
        subtitle=Markup("The book of <code>attention_np</code>: every mechanism in NumPy, down to the gradient. "
                        "This edition shows each chapter with its stored outputs; equations are typeset by a "
                        "MathJax copy shipped with these pages, so nothing is fetched from the network."),
        chapters=book, css=Markup(templates.CSS), notebooks_note=Markup(note_html))
    (out / "index.html").write_text(index, encoding="utf-8")
    if log:
        print(f"contents: {out / 'index.html'} ({len(book)} chapters, {n_mathjax} MathJax files)",
              file=log, flush=True)
    return [out / "index.html"] + pages
