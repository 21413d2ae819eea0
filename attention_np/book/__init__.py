"""The book as an offline HTML edition: ``python -m attention_np.book build [OUT]``.

Renders ``chapters/*.ipynb`` in order, from their stored outputs (nothing is executed), with
nbconvert's own exporter and ``lab`` template: a contents page with the English and Chinese
titles, previous/next links, figures embedded with alt text, links between chapters
rewritten to the pages, and equations typeset by a MathJax copy shipped with the site (from
the ``jupyter-server-mathjax`` package), so that opening a page needs no network.
"""
from .site import Chapter, build, chapters, figure_titles, mathjax_files, mathjax_source

__all__ = ["Chapter", "build", "chapters", "figure_titles", "mathjax_files", "mathjax_source"]
