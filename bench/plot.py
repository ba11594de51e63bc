"""Plots of build_speed.py's records: throughput of each variant (bench/build_speed.png) and, when
the record has a quality part, each projection's agreement with the exact selection (…_quality.png).

    python bench/plot.py [bench/results.json] [bench/build_speed.png]
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402


def plot_speed(record: dict, out: Path) -> None:
    speed = record["speed"]
    names = list(speed)
    rates = [speed[n]["examples_per_s"] for n in names]
    fig, ax = plt.subplots(figsize=(7, 3.2))
    bars = ax.barh(names, rates, color=["0.6" if n in ("training", "reference") else "C0" for n in names])
    ax.set_xscale("log")
    ax.set_xlabel("examples / s (log scale)")
    ax.bar_label(bars, labels=[f"{r:.3g}/s, {speed[n]['peak_rss_gib']:.1f} GiB" for n, r in zip(names, rates)],
                 padding=3, fontsize=8)
    ax.set_xlim(min(rates) / 2, max(rates) * 8)
    s = record["settings"]
    ax.set_title(f"SmolLM2-135M, LoRA r=128, dim {s['dim']}, {s['length']}-token examples\n{record['machine']}",
                 fontsize=9)
    fig.tight_layout()
    fig.savefig(out, dpi=120)
    print(f"wrote {out}")


def plot_quality(quality: dict, out: Path) -> None:
    """Top-5% Jaccard with the exact selection and Pearson of cosines, mean and range over seeds."""
    names = sorted(quality["vs_exact"], key=lambda n: (int(n.rsplit("-d", 1)[1]), n))  # by dims, then kind
    fig, axes = plt.subplots(1, 2, figsize=(9, 0.45 * len(names) + 1.4), sharey=True)
    for ax, metric, label in zip(axes, ("top5_jaccard", "pearson"), ("top-5% Jaccard", "Pearson of cosines")):
        stats = [quality["vs_exact"][n][metric] for n in names]
        mean = [s["mean"] for s in stats]
        err = [[m - s["min"] for m, s in zip(mean, stats)], [s["max"] - m for m, s in zip(mean, stats)]]
        ax.barh(names, mean, xerr=err, capsize=3,
                color=["0.6" if n.startswith("dense") else "C0" for n in names])
        ax.set_xlim(0, 1)
        ax.set_xlabel(f"{label} vs exact")
    axes[0].invert_yaxis()
    fig.suptitle(f"{quality['pool']} pool examples x {quality['targets']} BBH shots, top {quality['top_k']}: "
                 "mean and range over projection seeds (grey: the dense reference)", fontsize=9)
    fig.tight_layout()
    fig.savefig(out, dpi=120)
    print(f"wrote {out}")


def main(results: Path, out: Path) -> None:
    record = json.loads(results.read_text())
    if record.get("speed"):
        plot_speed(record, out)
    if "quality" in record:  # beside the speed plot, or in its place when the record has no speed part
        plot_quality(record["quality"], out.with_name(out.stem + "_quality.png") if record.get("speed") else out)


if __name__ == "__main__":
    here = Path(__file__).parent
    main(Path(sys.argv[1]) if len(sys.argv) > 1 else here / "results.json",
         Path(sys.argv[2]) if len(sys.argv) > 2 else here / "build_speed.png")
