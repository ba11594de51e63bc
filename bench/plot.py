"""Plot bench/results.json (from build_speed.py): throughput of each variant relative to training.

    python bench/plot.py [bench/results.json] [bench/build_speed.png]
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402


def main(results: Path, out: Path) -> None:
    record = json.loads(results.read_text())
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


if __name__ == "__main__":
    here = Path(__file__).parent
    main(Path(sys.argv[1]) if len(sys.argv) > 1 else here / "results.json",
         Path(sys.argv[2]) if len(sys.argv) > 2 else here / "build_speed.png")
