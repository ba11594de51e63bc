"""Ablations computed from an experiment's own files, with no model run: the fusion's rule (which
methods to fuse, and how), and transforms of LESS's stored features (centring, whitening).

A fused selection is a function of its members' scores alone (``gradsift.selection.scoring.fuse_ranks``), and
every selection's scores.csv holds every pool row's score. So each rule's precision and AUC of the
relevant records follow from the less, bm25 and rds selections of an experiment, with no model run:

    python experiments/ablations.py methods     # the folder of `gradsift experiment experiments/methods.yaml`

Prints two markdown tables (also written to FOLDER/ablations.md): per target, the precision of the
top 5% and the AUC of the relevant records for each fusion rule over each set of members, beside the
members alone; and for LESS's scores (subtask-mean-max) from the experiment's 8192-dim stores with
the pool's features centred on their mean, or whitened (as TAROT does) with a ridge of a fraction of
the mean eigenvalue, ``(Σ + λI)^(-1/2)`` through the pool's SVD, targets transformed alike; and
each selection's share of the target's test families and its records outside the default's.
"""

from __future__ import annotations

import argparse
import csv
import itertools
import json
from pathlib import Path

import numpy as np
import torch
from benchmark import RESTATED_SUFFIX

from gradsift.selection.methods import Target
from gradsift.selection.scoring import (
    agreeing,
    fuse_ranks,
    member_ranks,
    rank_tops,
    relevance_auc,
    subtask_mean_rows,
    top_k,
)
from gradsift.store.datastore import GradientStore
from gradsift.utils.files import atomic_write_bytes

MEMBERS = ("less", "bm25", "rds")
RULES = ("zscore", "agreement", "median", "mean", "rrf")


def agreement_weighted(scores: list[np.ndarray], candidates: np.ndarray) -> np.ndarray:
    """A candidate rule not kept: each member's ranks weighted by its mean overlap with the others'
    top 5% (``scoring.agreeing``), the weighted mean rank. Higher is better."""
    ranks = member_ranks(scores, candidates)
    _, overlap = agreeing(*rank_tops(ranks))
    weights = overlap.sum(1) / (len(scores) - 1)
    out = np.zeros(len(candidates))
    out[candidates] = -(weights[:, None] * ranks).sum(0) / max(weights.sum(), 1e-12)
    return out


def read_scores(selection: Path) -> tuple[list[str], np.ndarray, np.ndarray]:
    """(ids, scores, scored) of a selection's scores.csv, in pool order."""
    with open(selection / "scores.csv", newline="") as f:
        rows = list(csv.DictReader(f))
    scored = np.array([r["score"] != "" for r in rows])
    return [r["id"] for r in rows], np.array([float(r["score"] or 0) for r in rows]), scored


def ablate(folder: Path, fraction: float = 0.05, labels: tuple[str, ...] = MEMBERS) -> str:
    """Per target: each member alone, then every fusion rule over every set of two or three members
    (``labels``: the selections of the less, bm25 and rds members, in that order)."""
    config = json.loads((folder / "experiment.json").read_text())
    relevance = {k: set(v) for k, v in json.loads(Path(config["relevance"]).read_text()).items()}
    targets = [t["name"] for t in config["targets"]]
    lines = ["| target | members | rule | precision | AUC |", "|---|---|---|---|---|"]
    for target in targets:
        scores, ids, scored = {}, None, None
        for member in labels:
            ids, scores[member], scored = read_scores(folder / "selections" / member / f"{fraction:g}" / target)
        relevant = np.array([i in relevance[target] for i in ids])
        k = round(fraction * len(ids))

        def row(members: str, rule: str, s: np.ndarray) -> str:
            rows = np.flatnonzero(scored)
            picked = rows[top_k(s[rows], k)]
            return (f"| {target} | {members} | {rule} | {relevant[picked].mean():.2f} | "
                    f"{relevance_auc(s[rows], relevant[rows]):.3f} |")

        lines += [row(m, "alone", scores[m]) for m in labels]
        for size in (2, 3):
            for members in itertools.combinations(labels, size):
                for rule in RULES if size == 3 else ("median", "rrf"):  # the median of two is their mean
                    lines.append(row(" + ".join(members), rule,
                                     fuse_ranks([scores[m] for m in members], scored, rule)))
        lines.append(row(" + ".join(labels), "agreement-weighted mean (not kept)",
                         agreement_weighted([scores[m] for m in labels], scored)))
    return "\n".join(lines) + "\n"


def transformed(pool: np.ndarray, targets: np.ndarray, how: str) -> tuple[np.ndarray, np.ndarray]:
    """Pool and target rows (float64) centred on the pool's mean, or whitened by its covariance; unit rows."""
    if how != "plain":
        mean = pool.mean(0)
        pool, targets = pool - mean, targets - mean
    if how.startswith("whiten"):
        _, singular, vt = np.linalg.svd(pool / np.sqrt(len(pool)), full_matrices=False)
        eig = singular ** 2
        ridge = float(how.split("-")[1]) * eig.mean()
        # (Σ + λI)^(-1/2) z = V diag((eig + λ)^(-1/2) - λ^(-1/2)) Vᵀ z + λ^(-1/2) z
        whiten = lambda z: ((z @ vt.T) * (1 / np.sqrt(eig + ridge) - 1 / np.sqrt(ridge))) @ vt + z / np.sqrt(ridge)  # noqa: E731
        pool, targets = whiten(pool), whiten(targets)
    unit = lambda z: z / np.maximum(np.linalg.norm(z, axis=1, keepdims=True), 1e-300)  # noqa: E731
    return unit(pool), unit(targets)


def feature_ablation(folder: Path, fraction: float = 0.05) -> str:
    config = json.loads((folder / "experiment.json").read_text())
    relevance = {k: set(v) for k, v in json.loads(Path(config["relevance"]).read_text()).items()}
    stores = folder / "stores" / next(p.name for p in sorted((folder / "stores").iterdir())
                                      if p.name.startswith("sparse-8192-"))
    pool = GradientStore.open(stores / "pool")
    ids, ok = pool.index.column("id"), pool.ok_mask()
    rows = np.flatnonzero(ok)
    checkpoints = [(c["name"], c["weight"]) for c in pool.checkpoints]
    features = {name: pool.rows(name)[rows].astype(np.float64) for name, _ in checkpoints}
    lines = ["| features | " + " | ".join(f"{t['name']} precision / AUC" for t in config["targets"]) + " |",
             "|---|" + "---|" * len(config["targets"])]
    for how in ("plain", "centred", "whiten-0.1", "whiten-0.01"):
        cells = []
        for t in config["targets"]:
            store = GradientStore.open(stores / "targets" / t["name"])
            target = Target.from_store(store)
            score = 0.0
            for name, weight in checkpoints:
                x, g = transformed(features[name], store.rows(name, np.flatnonzero(store.ok_mask())).astype(np.float64), how)
                means = subtask_mean_rows(torch.from_numpy(g), target.subtasks).numpy()
                score = score + weight * (x @ means.T)
            score = score.max(1)
            relevant = np.array([ids[i] in relevance[t["name"]] for i in rows])
            picked = top_k(score, round(fraction * len(ids)))
            cells.append(f"{relevant[picked].mean():.2f} / {relevance_auc(score, relevant):.3f}")
        lines.append(f"| {how} | " + " | ".join(cells) + " |")
    return "\n".join(lines) + "\n"


def overlap(folder: Path, fraction: float = 0.05, reference: str = "fusion") -> str:
    """Per target and selection: how many of its picks come from the families of the target's own test
    set (and, on the restated benchmark, from those families asked in other words), and how many it
    does not share with ``reference``'s (selections of a few different records cannot differ in loss
    by more than those records make)."""
    config = json.loads((folder / "experiment.json").read_text())
    labels = [m["label"] for m in config["methods"] if m["method"] not in ("random", "full")]
    lines = ["| selection | " + " | ".join(f"{t['name']}: test families / not in {reference}'s"
                                          for t in config["targets"]) + " |", "|---|" + "---|" * len(config["targets"])]
    picks = {}
    for label in labels:
        for t in config["targets"]:
            path = folder / "selections" / label / f"{fraction:g}" / t["name"] / "scores.csv"
            if path.exists():
                with open(path, newline="") as f:
                    picks[label, t["name"]] = [(r["id"], r["source"]) for r in csv.DictReader(f) if r["selected"] == "1"]
    families = {}
    for t in config["targets"]:
        with open(t["test"][0]) as f:
            families[t["name"]] = {json.loads(line)["source"] for line in f if line.strip()}
    for label in labels:
        cells = []
        for t in config["targets"]:
            if (label, t["name"]) not in picks or (reference, t["name"]) not in picks:
                cells.append("–")
                continue
            mine, theirs = picks[label, t["name"]], {i for i, _ in picks[reference, t["name"]]}
            own = sum(s in families[t["name"]] for _, s in mine)
            restated = sum(s.removesuffix(RESTATED_SUFFIX) in families[t["name"]] for _, s in mine if s.endswith(RESTATED_SUFFIX))
            cells.append(f"{own}{f' (+{restated} restated)' if restated else ''} / {sum(i not in theirs for i, _ in mine)}")
        lines.append(f"| {label} | " + " | ".join(cells) + " |")
    return "\n".join(lines) + "\n"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("folder", type=Path, help="an experiment folder with less, bm25 and rds selections")
    parser.add_argument("--fraction", type=float, default=0.05)
    parser.add_argument("--members", default=",".join(MEMBERS),
                        help="the labels of the less, bm25 and rds selections (default: less,bm25,rds)")
    parser.add_argument("--rules-only", action="store_true", help="only the fusion rules' table")
    args = parser.parse_args()
    rules = ablate(args.folder, args.fraction, tuple(args.members.split(",")))
    tables = rules if args.rules_only else "\n".join(
        [rules, feature_ablation(args.folder, args.fraction), overlap(args.folder, args.fraction)])
    atomic_write_bytes(args.folder / ("fusion-rules.md" if args.rules_only else "ablations.md"), tables.encode())
    print(tables)


if __name__ == "__main__":
    main()
