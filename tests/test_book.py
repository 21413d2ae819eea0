"""The offline HTML edition: ``python -m attention_np.book build [OUT]`` (issue 14, item 1).

The site is built twice by the command a reader types (in a subprocess), and the two trees
must be byte-identical.  The pages are then read as files: contents, titles, navigation,
figures and their alt text, links, and that nothing in a page would fetch anything from the
network.  What a browser makes of the pages is tested in test_browser.py.
"""
from __future__ import annotations

import json
import re
from html.parser import HTMLParser
import subprocess
import sys
import time
from pathlib import Path

import nbformat
import pytest

from attention_np.book import site
from attention_np.book.site import Chapter, figure_titles, parse_heading, prepare, rewrite_links

ROOT = Path(__file__).resolve().parents[1]
CHAPTER_FILES = sorted((ROOT / "chapters").glob("[0-9][0-9]_*.ipynb"))


def stored_pngs(path: Path) -> int:
    """PNG outputs stored in a notebook, counted from the raw JSON (not through the code under test)."""
    nb = json.loads(path.read_text(encoding="utf-8"))
    return sum("image/png" in out.get("data", {})
               for cell in nb["cells"] if cell["cell_type"] == "code" for out in cell.get("outputs", []))


class Tags(HTMLParser):
    """Every start tag of a page with its attributes, in order."""

    def __init__(self, text: str):
        super().__init__(convert_charrefs=True)
        self.tags: list[tuple[str, dict]] = []
        self.feed(text)

    def handle_starttag(self, tag, attrs):
        self.tags.append((tag, dict(attrs)))

    def find(self, tag: str) -> list[dict]:
        return [attrs for t, attrs in self.tags if t == tag]


def run_build(out: Path):
    start = time.perf_counter()
    proc = subprocess.run([sys.executable, "-m", "attention_np.book", "build", str(out)], cwd=ROOT,
                          capture_output=True, text=True, timeout=300)
    return proc, time.perf_counter() - start


@pytest.fixture(scope="module")
def built(tmp_path_factory):
    out = tmp_path_factory.mktemp("book") / "site"
    proc, seconds = run_build(out)
    assert proc.returncode == 0, proc.stderr
    return out, proc, seconds


def tree(path: Path) -> dict[str, bytes]:
    return {p.relative_to(path).as_posix(): p.read_bytes() for p in sorted(path.rglob("*")) if p.is_file()}


def test_build_prints_one_line_per_chapter_no_stderr_and_is_quick(built):
    out, proc, seconds = built
    assert proc.stderr == ""
    lines = proc.stdout.splitlines()
    progress = [m.group(1) for m in map(re.compile(r"^\[\s*\d+/\d+\] (chapters/\S+)").match, lines) if m]
    assert progress == [f"chapters/{p.name}" for p in CHAPTER_FILES]
    print(f"build: {seconds:.1f} s")
    assert seconds < 60, f"the build took {seconds:.1f} s (target: well under a minute)"


def test_building_twice_gives_byte_identical_trees(built, tmp_path):
    first, _, _ = built
    proc, _ = run_build(tmp_path / "again")
    assert proc.returncode == 0, proc.stderr
    a, b = tree(first), tree(tmp_path / "again")
    assert sorted(a) == sorted(b)
    differing = [name for name in a if a[name] != b[name]]
    assert differing == []


def test_rebuilding_replaces_the_site_but_never_a_foreign_directory(built, tmp_path):
    out, _, _ = built
    assert (out / site.MARKER).is_file()
    foreign = tmp_path / "notes"
    foreign.mkdir()
    (foreign / "mine.txt").write_text("keep me")
    with pytest.raises(FileExistsError, match="not made by attention_np.book"):
        site.build(foreign, root=ROOT, log=False)
    assert (foreign / "mine.txt").read_text() == "keep me"


def test_contents_page_lists_every_chapter_with_both_titles_as_in_the_readme(built):
    out, _, _ = built
    index = (out / "index.html").read_text(encoding="utf-8")
    rows = re.findall(r'<td class="num">(\d+)</td><td><a class="book-chapter" href="([^"]+)">([^<]+)</a></td>'
                      r'<td lang="zh">([^<]+)</td>', index)
    assert [href for _, href, _, _ in rows] == [p.stem + ".html" for p in CHAPTER_FILES]
    readme = (ROOT / "README.md").read_text(encoding="utf-8")
    readme_zh = dict(re.findall(r"^\| (\d\d) \|[^|]*\| ([^|]+?) \| \[chapter\]", readme, re.M))
    assert len(readme_zh) == len(CHAPTER_FILES)
    for number, href, english, chinese in rows:
        first = json.loads((ROOT / "chapters" / href.replace(".html", ".ipynb")).read_text())["cells"][0]
        heading = "".join(first["source"]).splitlines()[0]
        assert english in heading and f"({chinese})" in heading, (href, heading)
        assert readme_zh[number] == chinese, f"README says {readme_zh[number]!r} for {number}, the chapter {chinese!r}"


def test_every_page_links_previous_contents_and_next(built):
    out, _, _ = built
    stems = [p.stem for p in CHAPTER_FILES]
    for i, stem in enumerate(stems):
        page = (out / f"{stem}.html").read_text(encoding="utf-8")
        prev = f"{stems[i - 1]}.html" if i else "index.html"
        assert page.count(f'class="book-prev" href="{prev}"') == 2, stem          # top and bottom
        assert page.count('class="book-contents" href="index.html"') == 2, stem
        if i + 1 < len(stems):
            assert page.count(f'class="book-next" href="{stems[i + 1]}.html"') == 2, stem
        else:
            assert 'class="book-next"' not in page
    assert 'class="book-next" href="%s.html"' % stems[0] in (out / "index.html").read_text(encoding="utf-8")


def test_every_stored_figure_is_embedded_with_alt_text(built):
    out, _, _ = built
    for path in CHAPTER_FILES:
        page = (out / f"{path.stem}.html").read_text(encoding="utf-8")
        imgs = Tags(page).find("img")
        assert len(imgs) == stored_pngs(path), path.name
        for k, img in enumerate(imgs, start=1):
            assert img["src"].startswith("data:image/png;base64,")
            assert img.get("alt", "").startswith(f"Figure {k}, chapter {path.name[:2]}: "), (path.name, img.get("alt"))
            assert "$" not in img["alt"]


def test_no_page_fetches_anything_from_the_network(built):
    out, _, _ = built
    loads = re.compile(r"""(<script\b[^>]*\bsrc|<link\b[^>]*\bhref|<img\b[^>]*\bsrc|<iframe\b[^>]*\bsrc)\s*=\s*["']?"""
                       r"""(?P<url>[^"'\s>]*)|url\(\s*["']?(?P<css>[^"')\s]*)|@import\s+["']?(?P<imp>[^"';\s]*)"""
                       r"""|import\(\s*["'](?P<mod>[^"']*)""", re.I)
    files = sorted(out.glob("*.html")) + [out / "lab.css"]
    assert len(files) == len(CHAPTER_FILES) + 2
    for path in files:
        text = path.read_text(encoding="utf-8")
        for match in loads.finditer(text):
            url = next(g for g in match.group("url", "css", "imp", "mod") if g is not None)
            assert not re.match(r"^(https?:)?//", url, re.I), (path.name, match.group(0)[:120])
            if url and not url.startswith(("data:", "#")):
                assert (out / url.split("?")[0]).is_file(), (path.name, url)
        for word in ("cdnjs", "cdn.jsdelivr", "unpkg.com", "require.js", "require.min.js", "googleapis", "mermaid",
                     "@jupyter-widgets/html-manager"):
            assert word not in text, (path.name, word)
    page = (out / CHAPTER_FILES[1].with_suffix(".html").name).read_text(encoding="utf-8")
    assert '<script src="mathjax/MathJax.js?config=TeX-AMS-MML_HTMLorMML-full,Safe"></script>' in page


def test_mathjax_ships_with_the_site_trimmed_to_what_typesetting_loads(built):
    out, _, _ = built
    static = site.mathjax_source()
    shipped = sorted(p.relative_to(out / "mathjax").as_posix() for p in (out / "mathjax").rglob("*") if p.is_file())
    assert shipped == site.mathjax_files(static)
    for rel in shipped:
        assert (out / "mathjax" / rel).read_bytes() == (static / rel).read_bytes(), rel
    size = sum((out / "mathjax" / rel).stat().st_size for rel in shipped)
    full = sum(p.stat().st_size for p in static.rglob("*") if p.is_file())
    assert size < full / 3, f"{size} of {full} bytes copied"
    assert not any(rel.startswith(("localization/", "jax/output/SVG/")) for rel in shipped)


def test_links_between_chapters_lead_to_pages_and_anchors_that_exist(built):
    out, _, _ = built
    tags = {p.name: Tags(p.read_text(encoding="utf-8")).tags for p in out.glob("*.html")}
    ids = {name: {attrs["id"] for _, attrs in page if "id" in attrs} for name, page in tags.items()}
    checked = 0
    for path in CHAPTER_FILES:
        for href in (a["href"] for a in Tags((out / f"{path.stem}.html").read_text(encoding="utf-8")).find("a")
                     if "href" in a):
            if re.match(r"^[a-z]+:", href):
                continue
            target, _, fragment = href.partition("#")
            assert not target.endswith(".ipynb") or "/" in target, f"{path.name}: chapter link not rewritten: {href}"
            if target.endswith(".html"):
                assert target in ids, (path.name, href)
                checked += 1
            if fragment:
                assert fragment in ids[target or f"{path.stem}.html"], (path.name, href)
    assert checked > 2 * len(CHAPTER_FILES)


def test_exercise_links_point_to_the_notebook_or_explain_how_to_open_it(tmp_path):
    chapter = parse_heading(ROOT / "chapters" / "02_scaled_dot_product.ipynb")
    by_stem = {p.stem: parse_heading(p) for p in CHAPTER_FILES}
    page = ('<a href="../exercises/02_scaled_dot_product.ipynb">exercises</a> '
            '<a href="03_additive.ipynb#The-idea">next</a> <a href="https://arxiv.org/abs/1706.03762">paper</a>')
    inside = rewrite_links(page, chapter, by_stem, ROOT, ROOT / "build" / "book")
    assert ('title="exercises/02_scaled_dot_product.ipynb in the repository" '
            'href="../../exercises/02_scaled_dot_product.ipynb"') in inside
    assert 'href="03_additive.html#The-idea"' in inside
    assert 'href="https://arxiv.org/abs/1706.03762"' in inside
    outside = rewrite_links(page, chapter, by_stem, ROOT, tmp_path / "site")
    assert 'href="#opening-notebooks"' in outside
    with pytest.raises(ValueError, match="missing"):
        rewrite_links('<a href="../exercises/99_nothing.ipynb">x</a>', chapter, by_stem, ROOT, tmp_path)


def test_chapter_page_explains_how_to_open_the_notebooks(built):
    out, _, _ = built
    page = (out / "02_scaled_dot_product.html").read_text(encoding="utf-8")
    assert 'id="opening-notebooks"' in page
    assert "jupyter lab exercises/NN_slug.ipynb" in page


def test_headings_give_number_and_both_titles_and_a_bad_heading_is_refused(tmp_path):
    ch = parse_heading(ROOT / "chapters" / "02_scaled_dot_product.ipynb")
    assert (ch.number, ch.html) == ("02", "02_scaled_dot_product.html")
    assert ch.title_en and ch.title_zh and ch.title_en in ch.heading and ch.title_zh in ch.heading
    bad = nbformat.v4.new_notebook(cells=[nbformat.v4.new_markdown_cell("# Scaled attention")])
    with pytest.raises(ValueError, match="first markdown cell"):
        parse_heading(tmp_path / "02_x.ipynb", bad)
    wrong = nbformat.v4.new_notebook(cells=[nbformat.v4.new_markdown_cell("# Chapter 3 · Additive (加性注意力)")])
    with pytest.raises(ValueError, match="file name says 02"):
        parse_heading(tmp_path / "02_x.ipynb", wrong)


def test_figure_titles_come_from_the_plotting_calls():
    source = ('fig, axes = plt.subplots(1, 2)\n'
              'plot_attention(w, ax=axes[0], title="before training")\n'
              'axes[1].set_title(f"after {n} steps")\n'
              'fig.suptitle("weights of one head")\n'
              'ax.set_title(name)\n')
    assert figure_titles(source) == ["weights of one head", "before training", "after … steps"]
    assert figure_titles("%matplotlib inline\nplt.plot(x)") == []


def test_prepare_adds_alt_text_keeps_an_authors_alt_and_replaces_widgets():
    png = "iVBORw0KGgo="
    nb = nbformat.v4.new_notebook(cells=[
        nbformat.v4.new_markdown_cell("# Chapter 2 · Scaled (缩放点积注意力)"),
        nbformat.v4.new_markdown_cell("## 2.4 Why divide by $\\sqrt{d_k}$?"),
        nbformat.v4.new_code_cell('plt.title("spread of the scores")', outputs=[
            nbformat.v4.new_output("display_data", data={"image/png": png})]),
        nbformat.v4.new_code_cell("plt.plot(x)", outputs=[
            nbformat.v4.new_output("display_data", data={"image/png": png},
                                   metadata={"image/png": {"alt": "the author's words"}})]),
        nbformat.v4.new_code_cell("interact(f)", outputs=[
            nbformat.v4.new_output("display_data", data={
                "text/plain": "interactive(children=...)",
                "application/vnd.jupyter.widget-view+json": {"model_id": "abc", "version_major": 2}})]),
    ])
    nb.metadata["widgets"] = {"application/vnd.jupyter.widget-state+json": {}}
    chapter = Chapter(Path("02_x.ipynb"), "02", "Scaled", "缩放点积注意力", "Chapter 2 · Scaled (缩放点积注意力)")
    assert prepare(nb, chapter) == 2
    alts = [c.outputs[0].metadata["image/png"]["alt"] for c in nb.cells[2:4]]
    assert alts == ["Figure 1, chapter 02: 2.4 Why divide by √d_k? — spread of the scores", "the author's words"]
    widget = nb.cells[4].outputs[0]
    assert list(widget.data) == ["text/html"] and "JupyterLab" in widget.data["text/html"]
    assert "widgets" not in nb.metadata


def test_the_mathjax_package_is_a_development_dependency_in_both_files():
    pyproject = (ROOT / "pyproject.toml").read_text()
    environment = (ROOT / "environment.yml").read_text()
    assert re.search(r'"jupyter-server-mathjax[>=<~!\d.,]*"', pyproject.split("dev = [", 1)[1].split("]", 1)[0])
    assert re.search(r"^\s+- jupyter-server-mathjax", environment, re.M)
