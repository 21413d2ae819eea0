"""Jinja templates of the HTML edition (kept in Python so that any install of the package carries them).

``CHAPTER`` extends nbconvert's own ``lab`` template and changes only what an offline book needs:

* no ``<script>`` that fetches anything from the network: require.js (only needed by
  ipywidgets' embedding), the ipywidgets HTML manager and mermaid.js are dropped, and
  MathJax is loaded from the copy under ``mathjax/`` next to the pages;
* MathJax 2.7 as shipped by the ``jupyter-server-mathjax`` package: TeX input, HTML-CSS
  output with the STIX-Web web fonts it ships (no local-font probing, no image fonts), in
  one pass (no fast preview, no automatic line breaking: both multiply the typesetting time
  of a chapter's few hundred formulas; all formulas in one chunk, with no pause between
  chunks); when typesetting has finished,
  ``<html data-mathjax="done">`` is set;
* JupyterLab's style sheets are written once, to ``lab.css`` next to the pages, instead of
  being copied into every page;
* code cells are highlighted by Pygments (whose output escapes the source) without the
  extra HTML sanitizer pass nbconvert runs on it, which dominated the build time;
* previous / contents / next links at the top and the bottom of every page;
* every PNG gets the alt text stored in its output metadata (``image/png`` -> ``alt``).

``INDEX`` is the contents page.
"""

MATHJAX_CONFIG = "TeX-AMS-MML_HTMLorMML-full,Safe"

CHAPTER = r"""{%- extends 'lab/index.html.j2' -%}

{%- block html_head_js -%}{%- endblock html_head_js -%}
{%- block jupyter_widgets -%}{%- endblock jupyter_widgets -%}
{%- block html_head_js_mermaidjs -%}{%- endblock html_head_js_mermaidjs -%}

{%- block html_head_js_mathjax -%}
<script type="text/x-mathjax-config">
MathJax.Hub.Config({
    tex2jax: {
        inlineMath: [["$", "$"], ["\\(", "\\)"]],
        displayMath: [["$$", "$$"], ["\\[", "\\]"]],
        processEscapes: true,
        processEnvironments: true
    },
    TeX: {equationNumbers: {autoNumber: "AMS", useLabelIds: true}},
    displayAlign: "center",
    messageStyle: "none",
    "fast-preview": {disabled: true},
    "HTML-CSS": {
        availableFonts: [],
        preferredFont: null,
        webFont: "STIX-Web",
        imageFont: null,
        EqnChunk: 10000,
        EqnChunkDelay: 0
    },
    MathMenu: {showRenderer: false, showFontMenu: false, showLocale: false},
    menuSettings: {locale: "en"}
});
MathJax.Hub.Register.StartupHook("End", function () {
    document.documentElement.setAttribute("data-mathjax", "done");
});
</script>
<script src="{{ resources.book.mathjax_url }}"></script>
{%- endblock html_head_js_mathjax -%}

{% block notebook_css %}
<link rel="stylesheet" type="text/css" href="lab.css">
{% endblock notebook_css %}

{% block input %}
<div class="jp-CodeMirrorEditor jp-Editor jp-InputArea-editor" data-type="inline">
     <div class="cm-editor cm-s-jupyter">
{{ cell.source | highlight_code(metadata=cell.metadata) }}
     </div>
</div>
{%- endblock input %}

{%- block body_header -%}
{{ super() }}
{{ resources.book.nav_top }}
{%- endblock body_header -%}

{% block body_footer %}
{{ resources.book.nav_bottom }}
{{ super() }}
{% endblock body_footer %}

{% block data_png scoped %}
<div class="jp-RenderedImage jp-OutputArea-output {{ extra_class }}">
<img src="data:image/png;base64,{{ output.data['image/png'] | escape_html }}"
{%- set alttext = output | get_metadata('alt', 'image/png') -%}
{%- if alttext %}
alt="{{ alttext | escape_html }}"
{%- endif %}
{%- set width = output | get_metadata('width', 'image/png') -%}
{%- if width is not none %}
width={{ width | escape_html }}
{%- endif %}
{%- set height = output | get_metadata('height', 'image/png') -%}
{%- if height is not none %}
height={{ height | escape_html }}
{%- endif %}
class="
{%- if output | get_metadata('unconfined', 'image/png') %}
unconfined
{%- endif %}
"
>
</div>
{%- endblock data_png %}
"""

# Appended to JupyterLab's style sheets in lab.css: what nbconvert's lab template adds inline,
# then the book's navigation.  Also used by the contents page.
LAB_EXTRA_CSS = """\
a.anchor-link { display: none; }
.jp-InputArea, .jp-InputArea-editor { overflow: hidden; }
.cm-editor.cm-s-jupyter .highlight pre { padding: var(--jp-code-padding) 4px; margin: 0;
  font-family: inherit; font-size: inherit; line-height: inherit; color: inherit; }
.jp-OutputArea-output pre { line-height: inherit; font-family: inherit; }
.jp-RenderedText pre { color: var(--jp-content-font-color1); font-size: var(--jp-code-font-size); }
.jp-Collapser { display: none; }
@media print { .jp-Cell-inputWrapper, .jp-Cell-outputWrapper { display: block; } }
"""

CSS = """\
nav.book-nav { display: flex; justify-content: space-between; gap: 1em; flex-wrap: wrap;
  font-family: var(--jp-ui-font-family, sans-serif); font-size: 0.95em;
  margin: 0.5em auto; padding: 0.5em 1em; max-width: 1100px;
  border-bottom: 1px solid #ddd; }
nav.book-nav.bottom { border-bottom: none; border-top: 1px solid #ddd; margin-top: 2em; }
nav.book-nav a { text-decoration: none; }
nav.book-nav .book-nav-none { color: #999; }
aside.book-notebooks { max-width: 1100px; margin: 1.5em auto; padding: 0.8em 1em;
  background: #f6f8fa; border: 1px solid #ddd; border-radius: 4px;
  font-family: var(--jp-ui-font-family, sans-serif); }
aside.book-notebooks code { font-size: 0.95em; }"""

INDEX = """<!DOCTYPE html>
<html lang="en">
<head>
<meta charset="utf-8">
<meta name="viewport" content="width=device-width, initial-scale=1.0">
<meta name="generator" content="attention_np.book">
<title>{{ title }}</title>
<style type="text/css">
body { font-family: -apple-system, "Segoe UI", Roboto, "Noto Sans", "Noto Sans CJK SC", sans-serif;
  max-width: 60em; margin: 2em auto; padding: 0 1em; line-height: 1.5; color: #222; }
h1 { font-size: 1.8em; margin-bottom: 0.2em; }
table.contents { border-collapse: collapse; width: 100%; margin: 1.5em 0; }
table.contents th, table.contents td { text-align: left; padding: 0.35em 0.6em; border-bottom: 1px solid #e4e4e4;
  vertical-align: top; }
table.contents td.num { font-variant-numeric: tabular-nums; color: #666; }
code { background: #f3f3f3; padding: 0 0.2em; }
{{ css }}
</style>
</head>
<body>
<nav class="book-nav top"><span class="book-nav-none">&larr; previous</span><span>Contents</span><a class="book-next" href="{{ chapters[0].html }}" rel="next">next: {{ chapters[0].label }} &rarr;</a></nav>
<h1>{{ title }}</h1>
<p>{{ subtitle }}</p>
<table class="contents">
<thead><tr><th>#</th><th>chapter</th><th lang="zh">中文</th></tr></thead>
<tbody>
{%- for ch in chapters %}
<tr><td class="num">{{ ch.number }}</td><td><a class="book-chapter" href="{{ ch.html }}">{{ ch.title_en }}</a></td><td lang="zh">{{ ch.title_zh }}</td></tr>
{%- endfor %}
</tbody>
</table>
<aside class="book-notebooks">
<p>{{ notebooks_note }}</p>
</aside>
</body>
</html>
"""
