"""The report's plots, each returned as PNG bytes. matplotlib is imported only when a plot is drawn, so
importing the report stays cheap; plots are drawn on ``matplotlib.figure.Figure`` with the Agg canvas,
never through pyplot, so a notebook's own backend is left as it was.
"""

from __future__ import annotations

import io
import statistics

from gradsift.report.markup import _clip

POOL_COLOUR, SELECTED_COLOUR, THRESHOLD_COLOUR = "#a8a8a8", "#2b6cb0", "#c53030"


def _figure(width: float, height: float):
    from matplotlib.backends.backend_agg import FigureCanvasAgg  # the Agg backend, without pyplot
    from matplotlib.figure import Figure

    fig = Figure(figsize=(width, height), dpi=100)
    FigureCanvasAgg(fig)
    return fig


def _png(fig) -> bytes:
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=110, bbox_inches="tight", facecolor="white")
    return buf.getvalue()


def _style(ax) -> None:
    for side in ("top", "right"):
        ax.spines[side].set_visible(False)
    ax.tick_params(labelsize=8)
    ax.grid(axis="y", color="#eeeeee", linewidth=0.8)
    ax.set_axisbelow(True)


def score_histogram(unselected: list[float], selected: list[float], threshold: float | None) -> bytes:
    """Scores of all scored pool rows, the selected ones stacked in their own colour, the threshold a line."""
    fig = _figure(7.2, 2.6)
    ax = fig.add_subplot()
    lo, hi = min(unselected + selected), max(unselected + selected)
    bins = 50 if hi > lo else 1
    ax.hist([unselected, selected], bins=bins, range=(lo, hi) if hi > lo else None, stacked=True,
            color=[POOL_COLOUR, SELECTED_COLOUR], label=["not selected", "selected"])
    if threshold is not None:
        ax.axvline(threshold, color=THRESHOLD_COLOUR, linestyle="--", linewidth=1.2, label=f"threshold {threshold:.4g}")
    ax.set_xlabel("score", fontsize=9)
    ax.set_ylabel("pool examples", fontsize=9)
    ax.yaxis.get_major_locator().set_params(integer=True)
    _style(ax)
    ax.legend(fontsize=8, frameon=False)
    return _png(fig)


def composition_chart(sources: list[tuple[str, float, float]]) -> bytes:
    """Grouped horizontal bars: (source, pool share, selected share), drawn top to bottom."""
    n = len(sources)
    fig = _figure(6.4, 0.9 + 0.34 * n)
    ax = fig.add_subplot()
    y = list(range(n))
    h = 0.38
    ax.barh([k - h / 2 for k in y], [s[1] for s in sources], height=h, color=POOL_COLOUR, label="pool share")
    ax.barh([k + h / 2 for k in y], [s[2] for s in sources], height=h, color=SELECTED_COLOUR, label="selected share")
    ax.set_yticks(y, [_clip(s[0], 28, one_line=True) for s in sources])
    ax.invert_yaxis()
    ax.xaxis.set_major_formatter(lambda x, _: f"{100 * x:.0f}%")
    ax.set_xlim(0, max(0.05, max(max(s[1], s[2]) for s in sources) * 1.08))
    _style(ax)
    ax.grid(axis="y", visible=False)
    ax.grid(axis="x", color="#eeeeee", linewidth=0.8)
    ax.legend(fontsize=8, frameon=False, loc="lower left", bbox_to_anchor=(0, 1), ncol=2, borderaxespad=0.2)
    return _png(fig)


def length_histogram(pool: list[int], selected: list[int]) -> bytes:
    """Overlaid length (chars) histograms of the pool and the selection, each normalised to its own size."""
    import numpy as np

    fig = _figure(6.4, 2.6)
    ax = fig.add_subplot()
    lo, hi = max(1, min(pool + selected)), max(pool + selected)
    log = hi / lo > 20
    n_bins = min(40, max(12, round(len(pool) ** 0.5)))
    bins = np.geomspace(lo, hi + 1, n_bins) if log else np.linspace(lo, hi + 1, n_bins)
    clip = [max(lo, x) for x in pool], [max(lo, x) for x in selected]
    ax.hist(clip[0], bins=bins, density=True, color=POOL_COLOUR, alpha=0.75, label=f"pool ({len(pool)})")
    ax.hist(clip[1], bins=bins, density=True, histtype="step", linewidth=1.8, color=SELECTED_COLOUR,
            label=f"selected ({len(selected)})")
    for values, colour in ((pool, "#6e6e6e"), (selected, SELECTED_COLOUR)):
        ax.axvline(statistics.median(values), color=colour, linestyle=":", linewidth=1.3)
    if log:
        ax.set_xscale("log")
    ax.set_xlabel("characters (dotted: medians)", fontsize=9)
    ax.set_ylabel("density", fontsize=9)
    ax.set_yticks([])
    _style(ax)
    ax.legend(fontsize=8, frameon=False)
    return _png(fig)
