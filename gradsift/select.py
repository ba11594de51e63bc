"""Stage 3, select: score every pool example against each target and keep the global top fraction.

Writes, per target, ``selected.jsonl`` (records verbatim, best first; JSON-array records and Parquet
rows as one-line JSON), ``scores.csv`` (one row per pool example) and ``summary.json``. With one
target they go in OUTPUT/; with several, in OUTPUT/<target store name>/, all from one pass over the
pool store.
"""

from __future__ import annotations

import csv
import io
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch
from tqdm.auto import tqdm

from .data import read_records
from .datastore import GradientStore
from .errors import ConfigError
from .files import atomic_write_bytes, atomic_write_json
from .scoring import Aggregate, aggregate, checkpoint_weights, top_k, weighted_similarity


@dataclass
class SelectConfig:
    train_store: Path = field(metadata={"help": "gradient store of the pool (built with --gradient adam)"})
    target_store: list[Path] = field(metadata={"help": "gradient stores of the targets (--gradient sgd)"})
    output: Path = field(metadata={"help": "folder for selected.jsonl, scores.csv, summary.json"})
    fraction: float | None = field(default=0.05, metadata={"help": "fraction of the pool to select"})
    count: int | None = field(default=None, metadata={"help": "number of examples to select (overrides --fraction)"})
    aggregate: Aggregate = field(default="subtask-mean-max", metadata={
        "help": "subtask-mean-max (paper): mean per subtask, max over subtasks; or mean, max"})
    chunk_rows: int = field(default=16384, metadata={"help": "pool rows scored at a time (bounds memory)"})


@dataclass
class Selection:
    target: str
    scores: np.ndarray  # (rows,) float32; meaningful where scored
    scored: np.ndarray  # (rows,) bool
    ranking: np.ndarray  # every scored row index, best first
    count: int  # how many of the ranking are selected
    output: Path

    @property
    def selected(self) -> np.ndarray:
        return self.ranking[: self.count]


def subtask_of(ref) -> str:
    """A target example's subtask: its ``subtask`` field, else its file."""
    return ref.subtask or Path(ref.file).stem


def score_pool(pool: GradientStore, targets: list[GradientStore], how: Aggregate, chunk_rows: int) -> list[np.ndarray]:
    """Scores of every pool row for each target, streaming the pool store in chunks."""
    weights = checkpoint_weights([c["lr"] for c in pool.checkpoints])
    names = [c["name"] for c in pool.checkpoints]
    target_rows = [np.flatnonzero(t.ok_mask()) for t in targets]
    target_feats = [
        torch.from_numpy(np.concatenate([np.asarray(t.features(c)[rows], np.float32) for t, rows in zip(targets, target_rows)]))
        for c in names
    ]
    bounds = np.cumsum([0] + [len(rows) for rows in target_rows])
    subtasks = [[subtask_of(t.index[i]) for i in rows] for t, rows in zip(targets, target_rows)]
    pool_feats = [pool.features(c) for c in names]
    rows = len(pool.index)
    scores = [np.zeros(rows, np.float32) for _ in targets]
    for start in tqdm(range(0, rows, chunk_rows), desc="score", unit="chunk", disable=rows <= chunk_rows):
        chunk = [torch.from_numpy(np.asarray(f[start: start + chunk_rows], np.float32)) for f in pool_feats]
        sim = weighted_similarity(chunk, target_feats, weights)
        for k in range(len(targets)):
            scores[k][start: start + chunk_rows] = aggregate(sim[:, bounds[k]: bounds[k + 1]], subtasks[k], how).numpy()
    return scores


def select(config: SelectConfig) -> list[Selection]:
    pool = GradientStore.open(config.train_store)
    targets = [GradientStore.open(p) for p in config.target_store]
    for target in targets:
        pool.check_comparable(target)
        if not target.ok_mask().any():
            raise ConfigError(f"target store {target.path} has no usable example (all without label tokens)")
    names = [t.name for t in targets]
    if len(set(names)) != len(names):
        raise ConfigError(f"target stores need distinct folder names, got {names}")
    scored = pool.ok_mask()
    n_select = config.count if config.count is not None else round((config.fraction or 0) * len(pool.index))
    if not 0 < n_select <= scored.sum():
        raise ConfigError(f"cannot select {n_select} of {scored.sum()} scorable pool examples; "
                          "check --fraction/--count")

    all_scores = score_pool(pool, targets, config.aggregate, config.chunk_rows)
    selections = []
    for target, scores in zip(targets, all_scores):
        out = Path(config.output) if len(targets) == 1 else Path(config.output) / target.name
        candidates = np.flatnonzero(scored)
        ranking = candidates[top_k(scores[candidates], len(candidates))]
        selection = Selection(target.name, scores, scored, ranking, n_select, out)
        _write(selection, pool, target, config)
        selections.append(selection)
    return selections


def _write(sel: Selection, pool: GradientStore, target: GradientStore, config: SelectConfig) -> None:
    index = pool.index
    records = read_records([index[i] for i in sel.selected])
    atomic_write_bytes(sel.output / "selected.jsonl", b"".join(r + b"\n" for r in records))

    ranks = np.zeros(len(index), dtype=np.int64)
    ranks[sel.ranking] = np.arange(1, len(sel.ranking) + 1)
    text = io.StringIO()
    writer = csv.writer(text, lineterminator="\n")
    writer.writerow(["file", "line", "id", "source", "score", "rank", "selected", "status"])
    for i, ref in enumerate(index):
        ok = sel.scored[i]
        writer.writerow([ref.file, ref.line, ref.id, ref.source, f"{sel.scores[i]:.7g}" if ok else "",
                         ranks[i] if ok else "", int(ok and ranks[i] <= sel.count), ref.status])
    atomic_write_bytes(sel.output / "scores.csv", text.getvalue().encode())

    pool_sources = Counter(ref.source for ref in index)
    picked_sources = Counter(index[i].source for i in sel.selected)
    valid = sel.scores[sel.scored]
    target_subtasks = Counter(subtask_of(ref) for ref in target.index if ref.status == "ok")
    atomic_write_json(sel.output / "summary.json", {
        "target": sel.target,
        "target_store": str(target.path),
        "pool_store": str(pool.path),
        "aggregate": config.aggregate,
        "checkpoint_weights": {c["name"]: c["weight"] for c in pool.checkpoints},
        "pool": {"examples": len(index), "scored": int(sel.scored.sum()),
                 "skipped": {"no_label_tokens": int((~sel.scored).sum()),
                             "bad_records": pool.manifest["counts"]["bad_records"]}},
        "selected": len(sel.selected),
        "sources": {
            s: {"pool": n, "selected": picked_sources.get(s, 0), "pool_share": n / len(index),
                "selected_share": picked_sources.get(s, 0) / len(sel.selected)}
            for s, n in sorted(pool_sources.items())
        },
        "scores": {"min": float(valid.min()), "max": float(valid.max()), "mean": float(valid.mean()),
                   "threshold": float(sel.scores[sel.selected[-1]])},
        "target_examples": {"usable": int(target.ok_mask().sum()), "skipped": int((~target.ok_mask()).sum()),
                            "subtasks": dict(sorted(target_subtasks.items()))},
    })
