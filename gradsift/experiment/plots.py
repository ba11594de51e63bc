"""``results.png``: test loss per method and target, mean ± std over seeds: bars, or with several
fractions, a curve of test loss against the fraction selected per method ("5%, or more?").
"""

from __future__ import annotations

import io
from pathlib import Path

from gradsift.utils.files import atomic_write_bytes


def fraction_curves(stats: list[dict]) -> dict[str, dict[str, list[tuple[float, float, float]]]]:
    """Per target, per method (and model, where there are several): (fraction, mean loss, std) points in
    order of fraction (``results.summarize``'s entries, the untrained model left out)."""
    several_models = len({s["model"] for s in stats}) > 1
    curves: dict[str, dict[str, list]] = {}
    for s in stats:
        if s["method"] == "base" or s["loss"] is None:
            continue
        label = s["method"] + (f" ({Path(s['model']).name})" if several_models else "")
        curves.setdefault(s["target"], {}).setdefault(label, []).append((s["fraction"], s["loss"], s["loss_std"] or 0.0))
    return {t: {m: sorted(points) for m, points in methods.items()} for t, methods in curves.items()}


def results_plot(stats: list[dict], path: Path) -> None:
    """Test loss per method (mean ± std over seeds: ``results.summarize``'s entries), one panel per target;
    the untrained model as a line. With several fractions, a curve per method against the fraction."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    if len({s["fraction"] for s in stats if s["method"] != "base"} - {1.0}) > 1:
        fig = _curves(plt, stats)
    else:
        fig = _bars(plt, stats)
    buffer = io.BytesIO()
    fig.savefig(buffer, format="png", dpi=110)
    plt.close(fig)
    atomic_write_bytes(path, buffer.getvalue())


def _curves(plt, stats: list[dict]):
    curves = fraction_curves(stats)
    targets = list(curves)
    fig, axes = plt.subplots(1, len(targets), figsize=(4.2 * len(targets), 3.8), squeeze=False)
    for ax, target in zip(axes[0], targets):
        for k, (method, points) in enumerate(curves[target].items()):
            fractions, losses, stds = zip(*points)
            ax.errorbar(fractions, losses, yerr=stds, marker="o", capsize=3, color=f"C{k % 10}", label=method)
        for s in stats:
            if s["method"] == "base" and s["target"] == target and s["loss"] is not None:
                ax.axhline(s["loss"], color="grey", linestyle="--", linewidth=1)
        ax.set_xscale("log")
        ax.set_xlabel("fraction of the pool selected")
        ax.set_ylabel("test loss (lower is better)")
        ax.set_title(target)
        ax.legend(fontsize=7)
    fig.suptitle("test loss against the fraction selected\n(dashed: the untrained model)", fontsize=9)
    fig.tight_layout()
    return fig


def _bars(plt, stats: list[dict]):
    targets = list(dict.fromkeys(s["target"] for s in stats))
    fig, axes = plt.subplots(1, len(targets), figsize=(4.2 * len(targets), 3.8), squeeze=False)
    for ax, target in zip(axes[0], targets):
        mine = [s for s in stats if s["target"] == target and s["loss"] is not None]
        bars = [s for s in mine if s["method"] != "base"]
        names = [f"{s['method']}" + ("" if s["model"] == bars[0]["model"] else f"\n{Path(s['model']).name}")
                 + ("" if s["fraction"] in (1.0,) or len({b['fraction'] for b in bars}) == 1 else f" {s['fraction']:g}")
                 for s in bars] if bars else []
        ax.bar(range(len(bars)), [s["loss"] for s in bars], yerr=[s["loss_std"] for s in bars], capsize=3,
               color=[f"C{k % 10}" for k in range(len(bars))])
        for s in mine:
            if s["method"] == "base":
                ax.axhline(s["loss"], color="grey", linestyle="--", linewidth=1)
        ax.set_xticks(range(len(bars)), names, rotation=45, ha="right", fontsize=8)
        ax.set_title(target)
        ax.set_ylabel("test loss (lower is better)")
        if bars:
            low = min(s["loss"] - (s["loss_std"] or 0) for s in mine)
            ax.set_ylim(bottom=max(0.0, low - 0.1 * abs(low)))
    fig.suptitle("test loss after training on each selection\n(dashed: the untrained model)", fontsize=9)
    fig.tight_layout()
    return fig
