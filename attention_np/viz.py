"""Seaborn heatmaps of attention weights: keys on the x axis, queries on the y axis.

Every function draws on a Matplotlib Axes/Figure and returns it; nothing is
written to stderr.  Colour limits are fixed to [0, 1] so that two heatmaps of
attention weights are always comparable.  Tick labels should be ASCII (the
default font has no CJK glyphs).
"""
from __future__ import annotations

from typing import Sequence

import numpy as np


def _labels(labels, size, name):
    if labels is None:
        return "auto"
    labels = list(labels)
    if len(labels) != size:
        raise ValueError(f"{name} must have {size} entries (one per {'key' if name == 'x_labels' else 'query'}), got {len(labels)}")
    return [str(x) for x in labels]


def plot_attention(weights, x_labels: Sequence | None = None, y_labels: Sequence | None = None,
                   ax=None, title: str | None = None, cmap: str = "viridis", annot: bool = False,
                   cbar: bool = True, vmin: float = 0.0, vmax: float = 1.0, fmt: str = ".2f"):
    """Heatmap of ``weights (n, m)``: rows are queries (y), columns are keys (x). Returns the Axes."""
    import matplotlib.pyplot as plt
    import seaborn as sns

    w = np.asarray(weights, dtype=np.float64)
    if w.ndim != 2:
        raise ValueError(f"weights must have shape (n, m), got {w.shape}")
    if ax is None:
        n, m = w.shape
        _, ax = plt.subplots(figsize=(min(max(3.8, 1.4 + 0.5 * m), 12), min(max(3.0, 1.0 + 0.45 * n), 10)))
    sns.heatmap(w, ax=ax, vmin=vmin, vmax=vmax, cmap=cmap, annot=annot, fmt=fmt, cbar=cbar,
                square=False, xticklabels=_labels(x_labels, w.shape[1], "x_labels"),
                yticklabels=_labels(y_labels, w.shape[0], "y_labels"), linewidths=0.0)
    ax.set_xlabel("keys")
    ax.set_ylabel("queries")
    longest = max((len(str(t)) for t in x_labels), default=0) if x_labels is not None else 0
    ax.tick_params(axis="x", labelrotation=90 if longest * w.shape[1] > 36 else 0)
    ax.tick_params(axis="y", labelrotation=0)
    if title:
        ax.set_title(title)
    return ax


def plot_heads(weights, x_labels: Sequence | None = None, y_labels: Sequence | None = None,
               titles: Sequence[str] | None = None, ncols: int = 4, panel_size: float = 2.6,
               cmap: str = "viridis", suptitle: str | None = None):
    """One heatmap panel per head for ``weights (H, n, m)``; a shared colour bar. Returns the Figure."""
    import matplotlib.pyplot as plt

    w = np.asarray(weights, dtype=np.float64)
    if w.ndim != 3:
        raise ValueError(f"weights must have shape (H, n, m), got {w.shape}")
    H = w.shape[0]
    if titles is not None and len(titles) != H:
        raise ValueError(f"titles must have H={H} entries, got {len(titles)}")
    ncols = max(1, min(ncols, H))
    nrows = int(np.ceil(H / ncols))
    fig, axes = plt.subplots(nrows, ncols, figsize=(panel_size * ncols + 1.0, panel_size * nrows),
                             squeeze=False, constrained_layout=True)
    for h in range(H):                                  # one panel per head: a plotting loop, not math
        ax = axes[h // ncols][h % ncols]
        plot_attention(w[h], x_labels, y_labels, ax=ax, cmap=cmap, cbar=False,
                       title=titles[h] if titles is not None else f"head {h}")
        if h % ncols:
            ax.set_ylabel("")
    for h in range(H, nrows * ncols):
        axes[h // ncols][h % ncols].axis("off")
    mappable = axes[0][0].collections[0]
    fig.colorbar(mappable, ax=axes, shrink=0.8)
    if suptitle:
        fig.suptitle(suptitle)
    return fig
