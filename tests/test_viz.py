"""Heatmaps: axes orientation, colour limits, labels, and no output on stderr."""
import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt
import numpy as np
import pytest

from attention_np.viz import plot_attention, plot_heads


def test_plot_attention_axes_and_limits(capsys):
    w = np.array([[0.7, 0.2, 0.1], [0.1, 0.1, 0.8]])
    ax = plot_attention(w, x_labels=["a", "b", "c"], y_labels=["q1", "q2"], title="t")
    assert [t.get_text() for t in ax.get_xticklabels()] == ["a", "b", "c"]        # keys on x
    assert [t.get_text() for t in ax.get_yticklabels()] == ["q1", "q2"]           # queries on y
    mesh = ax.collections[0]
    assert mesh.get_clim() == (0.0, 1.0)
    np.testing.assert_allclose(np.asarray(mesh.get_array()).reshape(2, 3), w)
    assert ax.get_xlabel() == "keys" and ax.get_ylabel() == "queries" and ax.get_title() == "t"
    plt.close("all")
    captured = capsys.readouterr()
    assert captured.err == "" and captured.out == ""


def test_plot_heads_one_panel_per_head():
    w = np.random.default_rng(0).dirichlet(np.ones(4), size=(3, 2))     # (H=3, n=2, m=4)
    fig = plot_heads(w, titles=["h0", "h1", "h2"], ncols=2)
    titled = [ax.get_title() for ax in fig.axes if ax.get_title()]
    assert titled == ["h0", "h1", "h2"]
    plt.close(fig)


def test_bad_input():
    with pytest.raises(ValueError, match=r"weights must have shape \(n, m\)"):
        plot_attention(np.zeros(3))
    with pytest.raises(ValueError, match="x_labels must have 2 entries"):
        plot_attention(np.zeros((2, 2)), x_labels=["a"])
    with pytest.raises(ValueError, match=r"weights must have shape \(H, n, m\)"):
        plot_heads(np.zeros((2, 2)))
