"""The one shape every selection method has: a pool and targets in, one score per pool row per target out,
and the one registry of methods (``METHODS``, filled by ``@register``).

Ranking, ties, the selection size and the output files are shared (``gradsift.selection.select``); a method only
scores. Its class says what it reads (records files or gradient stores, a warmup run, a selector model,
a benchmark's labels), whether it is seeded and whether it takes the whole pool; ``select``, ``experiment``,
the config checks and the command line ask the registry and never name a method. Methods that compare
each pool row with each target example (less, bm25, rds, exact) subclass ``SimilarityMethod`` and share
the aggregation over target subtasks.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Iterator
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import ClassVar, Literal, TypeVar

import numpy as np
import torch

from gradsift.config import TOKEN_LIMIT, SelectConfig
from gradsift.data.chat import ChatEncoder
from gradsift.data.index import StoreIndex, index_examples
from gradsift.data.records import ExampleRef
from gradsift.selection.scoring import ROUND_ROBINS, Aggregate, aggregate, round_robin, subtask_means
from gradsift.store.datastore import GradientStore
from gradsift.utils.errors import ConfigError


def subtask_of(ref: ExampleRef) -> str:
    """A target example's subtask: its ``subtask`` field, else its file."""
    return ref.subtask or Path(ref.file).stem


def _store_files(store: GradientStore) -> dict[str, str]:
    return {f["path"]: f["sha256"] for f in store.manifest["files"]}


STORE_HINT_ROWS = 10_000  # from here on, a pool's in-memory index or embeddings cost minutes a selection


@dataclass
class Pool:
    refs: StoreIndex  # one per row, made on demand (a pool may have millions)
    scorable: np.ndarray  # (rows,) bool: rows a method may score and select
    file_sha256: dict[str, str]  # the records files, in order, with their content hashes
    bad_records: list[dict] = field(default_factory=list)  # skipped malformed records: file, line, problem
    store: GradientStore | None = None  # the gradient store the rows come from (less)

    @classmethod
    def from_files(cls, paths: list[Path], skip_bad: bool = False, encoder: ChatEncoder | None = None) -> Pool:
        """Every parsed record is a row (text methods read records, they do not tokenize them). With an
        ``encoder`` (methods that take gradients) rows are tokenized, and one left without label tokens
        is not scorable, as in a store."""
        refs, bad, files = index_examples(paths, encoder, skip_bad)
        if not refs:
            raise ConfigError(f"no pool records in {[str(p) for p in paths]}")
        index = StoreIndex.from_refs(refs)
        scorable = index.ok_mask() if encoder is not None else np.ones(len(refs), bool)
        return cls(index, scorable, {f.path: f.sha256 for f in files}, [asdict(b) for b in bad])

    @classmethod
    def from_store(cls, store: GradientStore) -> Pool:
        return cls(store.index, store.ok_mask(), _store_files(store), store.manifest["bad_records"], store)

    @property
    def files(self) -> list[str]:
        return list(self.file_sha256)

    def say_a_store_would_be_faster(self, method: str, work: str) -> None:
        """One line, for a pool of records files large enough that redoing ``work`` at every selection
        costs: a pool store keeps it (``gradsift build`` stores embeddings and a BM25 index)."""
        if self.store is None and len(self.refs) >= STORE_HINT_ROWS:
            print(f"{method}: {work} {len(self.refs):,} records in memory, as at every selection from records files; "
                  f"a pool store keeps this (`gradsift build`, then `select --train-store`) for every later target")


@dataclass
class Target:
    name: str
    refs: list[ExampleRef]  # the usable target examples
    file_sha256: dict[str, str]  # the records files, in order, with their content hashes
    skipped: int = 0  # usable records without label tokens (less)
    bad_records: list[dict] = field(default_factory=list)  # skipped malformed records: file, line, problem
    store: GradientStore | None = None  # less: the target's gradient store (refs are its "ok" rows)
    rows: np.ndarray | None = None  # with a store: the store rows of ``refs``

    @property
    def subtasks(self) -> list[str]:
        return [subtask_of(r) for r in self.refs]

    @classmethod
    def from_files(cls, name: str, paths: list[Path], skip_bad: bool = False,
                   encoder: ChatEncoder | None = None) -> Target:
        """The target's records; with an ``encoder``, tokenized, and those without label tokens skipped."""
        refs, bad, files = index_examples(paths, encoder, skip_bad)
        if not refs:
            raise ConfigError(f"target {name!r} has no records in {[str(p) for p in paths]}")
        usable = refs if encoder is None else [r for r in refs if r.status == "ok"]
        if not usable:
            raise ConfigError(f"target {name!r} has no usable example (all without label tokens after truncation)")
        return cls(name, usable, {f.path: f.sha256 for f in files}, len(refs) - len(usable), [asdict(b) for b in bad])

    @classmethod
    def from_store(cls, store: GradientStore) -> Target:
        ok = store.ok_mask()
        if not ok.any():
            raise ConfigError(f"target store {store.path} has no usable example (all without label tokens)")
        rows = np.flatnonzero(ok)
        return cls(store.name, store.index.take(rows), _store_files(store), int((~ok).sum()),
                   store.manifest["bad_records"], store, rows)

    @property
    def files(self) -> list[str]:
        return list(self.file_sha256)


@dataclass
class TargetScores:
    scores: np.ndarray  # (rows,) float32; meaningful where the pool is scorable
    closest: np.ndarray | None = None  # (rows,) int32: each row's closest target subtask, as a place in
    # ``subtasks`` (methods that compare with examples; a code, not a name: a pool may have millions of rows)
    subtasks: list[str] = field(default_factory=list)  # the target's subtasks, sorted

    @property
    def subtask(self) -> list[str] | None:
        """Each row's closest subtask by name."""
        return None if self.closest is None else np.asarray(self.subtasks, dtype=object)[self.closest].tolist()


class SelectionMethod(ABC):
    name: ClassVar[str]  # its --method name and its label in summary.json
    reads: ClassVar[Literal["records", "stores"]] = "records"  # records files (--pool, --target), or gradient
    # stores (--train-store, --target-store) that an experiment builds from its warmup run
    reads_stores_too: ClassVar[bool] = False  # a records reader that also takes stores (--train-store,
    # --target-store): it reads their rows' records and what the store keeps for it (bm25 its index, rds embeddings)
    reads_run: ClassVar[bool] = False  # a warmup run: its stores, or its checkpoints directly (--run)
    reads_model: ClassVar[bool] = False  # a selector model run over the records (--model; an experiment's own)
    reads_labels: ClassVar[bool] = False  # a benchmark's relevance labels: experiments only, never --method
    seeded: ClassVar[bool] = False  # depends on --seed: an experiment selects once per seed, else once for all
    selects_all: ClassVar[bool] = False  # the selection is the whole pool, whatever --fraction says
    balances: ClassVar[bool] = False  # gives labels equal shares unless --no-balance (selection.balance)

    @classmethod
    def from_config(cls, config: SelectConfig, labels: dict[str, set[str]] | None = None) -> SelectionMethod:
        """The method with the settings it takes from ``config`` (and, for ``reads_labels``, the labels)."""
        return cls()

    @classmethod
    def token_limit(cls, config: SelectConfig) -> int:
        """Tokens an example is truncated to: --max-length (checked positive by the config), else TOKEN_LIMIT."""
        return TOKEN_LIMIT if config.max_length is None else config.max_length

    @classmethod
    def encoder(cls, config: SelectConfig) -> ChatEncoder | None:
        """How the method tokenizes records files: None for methods that read text only (their rows are
        all scorable); one that takes gradients sets aside rows left without label tokens."""
        return None

    @abstractmethod
    def score(self, pool: Pool, targets: list[Target]) -> list[TargetScores]:
        """One TargetScores per target, in order."""

    def settings(self) -> dict:
        """What summary.json records about how this method scored."""
        return {}


@dataclass
class SimilarityMethod(SelectionMethod):
    """Scores a pool row by its similarity to every target example, aggregated over the target's subtasks
    (``subtask-mean-max``: the mean over each subtask's examples, then the max over subtasks)."""

    aggregate: Aggregate = "subtask-mean-max"
    chunk_rows: int = field(default=16384)

    @abstractmethod
    def similarities(self, pool: Pool, targets: list[Target]) -> Iterator[tuple[int, list[torch.Tensor]]]:
        """(first row, [similarity (chunk rows, target examples) per target]) for consecutive row chunks."""

    def columns(self, pool: Pool, target: Target) -> list[str]:
        """The subtask of each column ``similarities`` gives for this target: one per target example,
        unless a method compares with each subtask's mean example directly (see ``Less``)."""
        return target.subtasks

    def score(self, pool: Pool, targets: list[Target]) -> list[TargetScores]:
        rows = len(pool.refs)
        columns = [self.columns(pool, t) for t in targets]
        out = [TargetScores(np.zeros(rows, np.float32), np.zeros(rows, np.int32), sorted(set(c))) for c in columns]
        # a round-robin ranks whole columns: keep every row's subtask means (rows x subtasks, small), or for
        # example-round-robin every row's similarity to each target example (rows x examples)
        per_example = self.aggregate == "example-round-robin"
        kept = [np.zeros((rows, len(c) if per_example else len(set(c))), np.float32) for c in columns] \
            if self.aggregate in ROUND_ROBINS else []
        for start, chunk in self.similarities(pool, targets):
            for k, (subtasks, sim, result) in enumerate(zip(columns, chunk, out)):
                end, sim = start + sim.shape[0], sim.float()
                means = subtask_means(sim, subtasks)[0]
                if kept:
                    kept[k][start:end] = (sim if per_example else means).numpy()
                else:
                    result.scores[start:end] = aggregate(sim, subtasks, self.aggregate, means).numpy()
                result.closest[start:end] = means.argmax(1).numpy()
        for result, m in zip(out, kept):
            result.scores[:] = round_robin(m, pool.scorable)
        return out

    def settings(self) -> dict:
        return {"aggregate": self.aggregate}

    @classmethod
    def from_config(cls, config: SelectConfig, labels: dict[str, set[str]] | None = None) -> SelectionMethod:
        return cls(**cls.similarity_settings(config))

    @staticmethod
    def similarity_settings(config: SelectConfig) -> dict:
        return {"aggregate": config.aggregate, "chunk_rows": config.chunk_rows}

    @staticmethod
    def part_settings(config: SelectConfig) -> dict:
        """Which part of the target examples and of the pool records a text signal reads."""
        return {"target_part": config.target_part, "pool_part": config.pool_part}


Method = TypeVar("Method", bound=type[SelectionMethod])
METHODS: dict[str, type[SelectionMethod]] = {}  # --method name -> class: every method gradsift knows


def register(cls: Method) -> Method:
    """Class decorator: make a method known to ``select --method``, experiments and the config checks."""
    if cls.name in METHODS and METHODS[cls.name] is not cls:
        raise ValueError(f"a selection method named {cls.name!r} is already registered ({METHODS[cls.name]})")
    METHODS[cls.name] = cls
    return cls


def method_class(name: str) -> type[SelectionMethod]:
    """The registered method of that name; an unknown name is a ConfigError listing the known ones."""
    if name not in METHODS:
        raise ConfigError(f"unknown method {name!r}; known: {', '.join(sorted(METHODS))}")
    return METHODS[name]


def selectable() -> list[str]:
    """The methods ``select --method`` offers: every registered one but those that read labels."""
    return sorted(name for name, cls in METHODS.items() if not cls.reads_labels)
