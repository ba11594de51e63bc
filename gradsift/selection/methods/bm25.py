"""BM25 (Okapi, via the ``bm25s`` library): each target example's text is a query against the pool's
texts; a row's score is its query scores aggregated over the target's subtasks like any similarity.
``target_part`` and ``pool_part`` say which turns are read (``data.records.example_part``): a worked
answer's words are noise to a lexical match when the pool's relevant records answer directly.

A pool read from a gradient store is scored with the store's own index of its records
(``gradsift.store.lexical``, written by ``gradsift build``); a pool of records files, or a store built
before stores held one, is indexed in memory. Both give the same scores to the bit (``lexical.QueryScores``)."""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass
from typing import ClassVar

import torch

from gradsift.config import Part, SelectConfig
from gradsift.data.records import record_text
from gradsift.selection.methods.base import Pool, SimilarityMethod, Target, register
from gradsift.store import lexical


@register
@dataclass
class Bm25(SimilarityMethod):
    name: ClassVar[str] = "bm25"
    reads_stores_too: ClassVar[bool] = True  # a store's index / embeddings: no model, no re-indexing
    k1: float = lexical.K1
    b: float = lexical.B
    target_part: Part = "prompt"  # the task as asked, not a worked answer's form (docs/methods.md)
    pool_part: Part = "prompt"

    def similarities(self, pool: Pool, targets: list[Target]) -> Iterator[tuple[int, list[torch.Tensor]]]:
        # a store's index was built by `gradsift build` from the same texts: read, never rebuilt
        index = pool.store.lexical_index(self.pool_part, self.k1, self.b) if pool.store is not None else None
        if index is None:
            if pool.store is not None:
                print(f"bm25: indexing {pool.store.path} in memory, as it holds no {self.pool_part} index with k1 "
                      f"{self.k1:g}, b {self.b:g} and today's tokenizer (rerun its `gradsift build` with the same "
                      "arguments to add one; no gradient is recomputed)")
            pool.say_a_store_would_be_faster("bm25", "indexing")
            index = lexical.build_index([record_text(r, self.pool_part) for r in pool.refs], self.k1, self.b)
        scorers = [lexical.QueryScores(index, lexical.query_ids(index, [record_text(r, self.target_part) for r in t.refs]))
                   for t in targets]
        for start in range(0, len(pool.refs), self.chunk_rows):  # only a chunk of rows x target examples is held
            stop = min(len(pool.refs), start + self.chunk_rows)
            yield start, [torch.from_numpy(score(start, stop)) for score in scorers]

    def settings(self) -> dict:
        return {**super().settings(), "k1": self.k1, "b": self.b, "target_part": self.target_part,
                "pool_part": self.pool_part}

    @classmethod
    def from_config(cls, config: SelectConfig, labels: dict[str, set[str]] | None = None) -> Bm25:
        return cls(**cls.similarity_settings(config), **cls.part_settings(config))
