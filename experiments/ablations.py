"""The fusion's rule, ablated from an experiment's own files: which methods to fuse, and how.

A fused selection is a function of its members' scores alone (``gradsift.scoring.fuse_ranks``), and
every selection's scores.csv holds every pool row's score. So each rule's precision and AUC of the
relevant records follow from the less, bm25 and rds selections of an experiment, with no model run:

    python experiments/ablations.py methods     # the folder of `gradsift experiment experiments/methods.yaml`

Prints a markdown table (also written to FOLDER/fusion-ablation.md): per target, the precision of the
top 5% and the AUC of each fusion rule over each set of members, beside the members alone.
"""

from __future__ import annotations

import argparse
import csv
import itertools
import json
from pathlib import Path

import numpy as np

from gradsift.files import atomic_write_bytes
from gradsift.scoring import fuse_ranks, relevance_auc, top_k

MEMBERS = ("less", "bm25", "rds")
RULES = ("median", "mean", "rrf")


def read_scores(selection: Path) -> tuple[list[str], np.ndarray, np.ndarray]:
    """(ids, scores, scored) of a selection's scores.csv, in pool order."""
    with open(selection / "scores.csv", newline="") as f:
        rows = list(csv.DictReader(f))
    scored = np.array([r["score"] != "" for r in rows])
    return [r["id"] for r in rows], np.array([float(r["score"] or 0) for r in rows]), scored


def ablate(folder: Path, fraction: float = 0.05) -> str:
    config = json.loads((folder / "experiment.json").read_text())
    relevance = {k: set(v) for k, v in json.loads(Path(config["relevance"]).read_text()).items()}
    targets = [t["name"] for t in config["targets"]]
    lines = ["| target | members | rule | precision | AUC |", "|---|---|---|---|---|"]
    for target in targets:
        scores, ids, scored = {}, None, None
        for member in MEMBERS:
            ids, scores[member], scored = read_scores(folder / "selections" / member / f"{fraction:g}" / target)
        relevant = np.array([i in relevance[target] for i in ids])
        k = round(fraction * len(ids))

        def row(members: str, rule: str, s: np.ndarray) -> str:
            rows = np.flatnonzero(scored)
            picked = rows[top_k(s[rows], k)]
            return (f"| {target} | {members} | {rule} | {relevant[picked].mean():.2f} | "
                    f"{relevance_auc(s[rows], relevant[rows]):.3f} |")

        lines += [row(m, "alone", scores[m]) for m in MEMBERS]
        for size in (2, 3):
            for members in itertools.combinations(MEMBERS, size):
                for rule in RULES if size == 3 else ("median", "rrf"):  # the median of two is their mean
                    lines.append(row(" + ".join(members), rule,
                                     fuse_ranks([scores[m] for m in members], scored, rule)))
    return "\n".join(lines) + "\n"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("folder", type=Path, help="an experiment folder with less, bm25 and rds selections")
    parser.add_argument("--fraction", type=float, default=0.05)
    args = parser.parse_args()
    table = ablate(args.folder, args.fraction)
    atomic_write_bytes(args.folder / "fusion-ablation.md", table.encode())
    print(table)


if __name__ == "__main__":
    main()
