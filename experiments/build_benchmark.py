"""Build gradsift's benchmark with known answers (``experiments/benchmark.py``) into a folder.

    python experiments/build_benchmark.py [--output experiments/benchmark] [--seed 0]
                                          [--unrelated-per-family 30] [--relevant-scale 1]
                                          [--variant standard|restated|worked]

The same arguments write the same bytes. What it writes and how: ``experiments/BENCHMARK.md``.
"""

from __future__ import annotations

import argparse
from pathlib import Path

from benchmark import UNRELATED_PER_FAMILY, VARIANTS, build_benchmark


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--output", type=Path, default=Path(__file__).resolve().parent / "benchmark",
                        help="folder to write (default: experiments/benchmark)")
    parser.add_argument("--seed", type=int, default=0, help="seed of every family's random order")
    parser.add_argument("--unrelated-per-family", type=int, default=UNRELATED_PER_FAMILY,
                        help=f"unrelated pool records per family (default: {UNRELATED_PER_FAMILY})")
    parser.add_argument("--relevant-scale", type=float, default=1.0,
                        help="scale of each target's relevant pool records (default: 1)")
    parser.add_argument("--variant", choices=list(VARIANTS), default="standard",
                        help="standard; restated: most relevant records in other words than the targets' and "
                             "look-alike families in the pool; worked: every few-shot item a worked "
                             "(chain-of-thought) answer, the relevant records direct (default: standard)")
    args = parser.parse_args(argv)
    summary = build_benchmark(args.output, args.seed, args.unrelated_per_family, args.relevant_scale,
                              args.variant)
    pool = summary["pool"]
    print(f"pool: {pool['size']} records in {pool['families']} families ({pool['unrelated_records']} unrelated)")
    for name, t in summary["targets"].items():
        c = t["counts"]
        print(f"{name}: {c['fewshot']} few-shot, {c['test']} test, {c['relevant']} relevant "
              f"({100 * c['relevant_fraction_of_pool']:.1f}% of the pool)")
    check = summary["contamination_check"]
    print(f"contamination check passed; dropped while drawing: {sum(check['dropped_while_drawing'].values())}")
    print(f"wrote {args.output}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
