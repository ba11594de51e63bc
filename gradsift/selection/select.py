"""Stage 3, select: score every pool example against each target and keep the global top fraction.

Every method (``gradsift.selection.methods``: less from gradient stores; random, bm25, rds, full from records
files) only scores; ranking, ties, the selection's size and the output files are this module's.
Writes, per target, ``selected.jsonl`` (records verbatim, best first; JSON-array records and Parquet
rows as one-line JSON), ``scores.csv`` (one row per pool example) and ``summary.json``. With one
target they go in OUTPUT/; with several target stores, in OUTPUT/<target store name>/, all from one
pass over the pool.
"""

from __future__ import annotations

import csv
import io
from collections import Counter
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from gradsift.config import SelectConfig
from gradsift.data.index import ROWS_AT_ONCE
from gradsift.data.records import STATUSES, print_skips, read_records
from gradsift.selection.balance import Balanced, balance_answers
from gradsift.selection.dedup import Deduplicated, skip_near_duplicates
from gradsift.selection.methods import (
    Pool,
    SelectionMethod,
    Target,
    TargetScores,
    method_class,
)
from gradsift.selection.scoring import top_k
from gradsift.store.datastore import GradientStore
from gradsift.utils.errors import ConfigError
from gradsift.utils.files import atomic_write_chunks, atomic_write_json
from gradsift.utils.locks import folder_lock


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


def make_method(config: SelectConfig, labels: dict[str, set[str]] | None = None) -> SelectionMethod:
    """The configured method, with the settings it uses."""
    cls = method_class(config.method)
    for flag, given in (("--dedup", config.dedup is not None), ("--balance", config.balance is True)):
        if given and cls.selects_all:
            raise ConfigError(f"{flag} walks a ranking, and --method {config.method} selects the whole pool: drop {flag}")
    return cls.from_config(config, labels)


def balances(config: SelectConfig) -> bool:
    """Whether the selection gives labels equal shares: --balance / --no-balance, else the method's way."""
    return method_class(config.method).balances if config.balance is None else config.balance


def load_inputs(config: SelectConfig) -> tuple[Pool, list[Target]]:
    """The pool and targets: gradient stores for methods that read them, records files for the others."""
    cls = method_class(config.method)
    stores_given = config.train_store is not None or bool(config.target_store)
    if stores_given and cls.reads == "records" and not cls.reads_stores_too:
        raise ConfigError(f"--method {config.method} reads records files, not stores: give --pool and --target")
    if stores_given and (config.pool or config.target):
        raise ConfigError("give stores (--train-store, --target-store) or records files (--pool, --target), not both")
    if cls.reads == "stores" or stores_given:
        if config.train_store is None or not config.target_store:
            raise ConfigError(f"--method {config.method} selects from gradient stores: give --train-store and "
                              "--target-store (or --pool and --target with --method bm25, rds or random)")
        pool = GradientStore.open(config.train_store)  # Less checks that the stores can be compared
        return Pool.from_store(pool), [Target.from_store(GradientStore.open(p)) for p in config.target_store]
    if not config.pool or not config.target:
        raise ConfigError(f"--method {config.method} reads records files: give --pool and --target")
    encoder = cls.encoder(config)
    pool = Pool.from_files(config.pool, config.skip_bad_records, encoder)
    return pool, [Target.from_files(Path(config.target[0]).stem, config.target, config.skip_bad_records, encoder)]


def select(config: SelectConfig) -> list[Selection]:
    output = Path(config.output)
    with folder_lock(output):
        method = make_method(config)
        pool, targets = load_inputs(config)
        outputs = [output] if len(targets) == 1 else [output / t.name for t in targets]
        print_skips("select", pool.bad_records + [b for t in targets for b in t.bad_records], 0,
                    " and ".join(f"{o}/summary.json" for o in outputs))
        return run_selection(method, pool, targets, outputs, config.fraction, config.count, config.dedup,
                             balances(config))


def selection_size(pool: Pool, fraction: float | None, count: int | None) -> int:
    n = count if count is not None else round((fraction or 0) * len(pool.refs))
    if not 0 < n <= pool.scorable.sum():
        raise ConfigError(f"cannot select {n} of {pool.scorable.sum()} scorable pool examples; check --fraction/--count")
    return n


def run_selection(method: SelectionMethod, pool: Pool, targets: list[Target], outputs: list[Path],
                  fraction: float | None = 0.05, count: int | None = None,
                  dedup: float | None = None, balance: bool = False) -> list[Selection]:
    """Score the pool with ``method`` against every target, rank, and write each target's three files
    into its folder of ``outputs``. With ``dedup`` (a Jaccard similarity), a row that nearly repeats one
    selected before it gives its place to the next (``dedup.skip_near_duplicates``); with ``balance``,
    first, labels among the selected answers get equal shares (``balance.balance_answers``)."""
    names = [t.name for t in targets]
    if len(set(names)) != len(names):
        raise ConfigError(f"targets need distinct names (target store folder names), got {names}")
    n_select = int(pool.scorable.sum()) if method.selects_all else selection_size(pool, fraction, count)
    candidates = np.flatnonzero(pool.scorable).astype(np.int32)  # row numbers: a pool holds fewer than 2^31
    selections = []
    for target, out, result in zip(targets, outputs, method.score(pool, targets)):
        if not np.isfinite(result.scores[candidates]).all():
            raise ConfigError(f"{method.name} gave a non-finite score for target {target.name}")
        ranking = candidates[top_k(result.scores[candidates], len(candidates))]
        balanced = balance_answers(ranking, pool.refs, n_select) if balance else None
        if balanced is not None:
            ranking = balanced.ranking
        deduplicated = None
        if dedup is not None:  # after balancing: a passed-over row's place goes to the next of the balanced ranking
            deduplicated = skip_near_duplicates(ranking, pool.refs, n_select, dedup)
            if deduplicated.kept < n_select:
                raise ConfigError(f"cannot select {n_select} rows for target {target.name}: only "
                                  f"{deduplicated.kept} scorable pool rows are not near duplicates of each other at "
                                  f"--dedup {dedup:g}; lower --fraction/--count or raise --dedup")
            ranking = deduplicated.ranking
        selection = Selection(target.name, result.scores, pool.scorable, ranking, n_select, out)
        _write(selection, method, pool, target, result, deduplicated, balanced)
        selections.append(selection)
    return selections


def _write(sel: Selection, method: SelectionMethod, pool: Pool, target: Target, result: TargetScores,
           deduplicated: Deduplicated | None = None, balanced: Balanced | None = None) -> None:
    index = pool.refs
    checksums = {"selected.jsonl": atomic_write_chunks(sel.output / "selected.jsonl", (
        b"".join(r + b"\n" for r in read_records(index.take(sel.selected[start: start + ROWS_AT_ONCE])))
        for start in range(0, len(sel.selected), ROWS_AT_ONCE)))}

    ok = sel.scored
    statuses = index.status_codes()
    ranks = np.zeros(len(index), dtype=np.int32)
    ranks[sel.ranking] = np.arange(1, len(sel.ranking) + 1, dtype=np.int32)
    names = np.asarray(result.subtasks, dtype=object)

    def scores_csv(start: int) -> bytes:
        rows = slice(start, start + ROWS_AT_ONCE)
        part, scored = index.table.slice(start, ROWS_AT_ONCE), ok[rows]
        columns = {
            **{name: part.column(name).to_pylist() for name in ("file", "line", "id", "source")},
            "score": np.where(scored, np.char.mod("%.7g", sel.scores[rows].astype(np.float64)), "").tolist(),
            "rank": np.where(scored, ranks[rows].astype(str), "").tolist(),
            "selected": (scored & (ranks[rows] <= sel.count) & (ranks[rows] > 0)).astype(int).tolist(),
            "status": np.where(scored, "ok", np.asarray(STATUSES)[statuses[rows]]).tolist(),
            "subtask": np.where(scored, names[result.closest[rows]], "").tolist() if result.closest is not None
            else [""] * len(part),
            "chars": part.column("chars").to_pylist(),
        }
        text = io.StringIO()
        writer = csv.writer(text, lineterminator="\n")
        if start == 0:
            writer.writerow(list(columns))
        writer.writerows(zip(*columns.values()))
        return text.getvalue().encode()

    checksums["scores.csv"] = atomic_write_chunks(sel.output / "scores.csv",
                                                  map(scores_csv, range(0, len(index), ROWS_AT_ONCE)))

    pool_sources, picked_sources = index.counts("source"), index.counts("source", sel.selected)
    valid = sel.scores[sel.scored]
    summary = {
        "target": sel.target,
        "method": method.name,
        "method_settings": method.settings(),
        "aggregate": method.settings().get("aggregate"),
        "pool_files": pool.files,
        "target_files": target.files,
        "file_sha256": {**pool.file_sha256, **target.file_sha256},
        "pool": {"examples": len(index), "scored": int(sel.scored.sum()),
                 "skipped": {**{s: int((statuses[~ok] == STATUSES.index(s)).sum())
                                for s in ("no_label_tokens", "non_finite_gradient")},
                             "bad_records": len(pool.bad_records)}},
        "selected": len(sel.selected),
        "sources": {
            s: {"pool": n, "selected": picked_sources.get(s, 0), "pool_share": n / len(index),
                "selected_share": picked_sources.get(s, 0) / len(sel.selected)}
            for s, n in sorted(pool_sources.items())
        },
        "scores": {"min": float(valid.min()), "max": float(valid.max()), "mean": float(valid.mean()),
                   "threshold": float(sel.scores[sel.selected[-1]])},
        "target_examples": {"usable": len(target.refs), "skipped": target.skipped,
                            "subtasks": dict(sorted(Counter(target.subtasks).items()))},
        "bad_records": pool.bad_records + target.bad_records,
        "checksums": checksums,
    }
    if deduplicated is not None:
        def where(row: int) -> dict:
            ref = index[row]
            return {"file": ref.file, "line": ref.line, "id": ref.id}
        summary["dedup"] = {"jaccard": deduplicated.jaccard, "passed_over": len(deduplicated.duplicates),
                            "duplicates": [{**where(r), "repeats": where(k)} for r, k in deduplicated.duplicates]}
    if balanced is not None:  # each label's rows in the top before balancing and in the selection
        summary["balance"] = {label: {"before": b, "selected": a} for label, (b, a) in balanced.labels.items()}
    if pool.store is not None:
        summary |= {"pool_store": str(pool.store.path), "target_store": str(target.store.path),
                    "checkpoint_weights": {c["name"]: c["weight"] for c in pool.store.checkpoints},
                    # the part of each reply the stores' gradients take their loss on (build --response)
                    "response": {"pool": pool.store.manifest.get("response"),
                                 "target": target.store.manifest.get("response")}}
    atomic_write_json(sel.output / "summary.json", summary)
