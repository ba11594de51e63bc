"""BM25 (Okapi, via the ``bm25s`` library): each target example's text is a query against the pool's
texts; a row's score is its query scores aggregated over the target's subtasks like any similarity.
``target_part`` and ``pool_part`` say which turns are read (``data.records.example_part``): a worked
answer's words are noise to a lexical match when the pool's relevant records answer directly."""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass
from typing import ClassVar

import numpy as np
import torch

from gradsift.config import Part, SelectConfig
from gradsift.data.records import record_text
from gradsift.selection.methods.base import Pool, SimilarityMethod, Target, register


@register
@dataclass
class Bm25(SimilarityMethod):
    name: ClassVar[str] = "bm25"
    k1: float = 1.5
    b: float = 0.75
    target_part: Part = "whole"
    pool_part: Part = "whole"

    def similarities(self, pool: Pool, targets: list[Target]) -> Iterator[tuple[int, list[torch.Tensor]]]:
        import bm25s

        retriever = bm25s.BM25(k1=self.k1, b=self.b)
        retriever.index(bm25s.tokenize([record_text(r, self.pool_part) for r in pool.refs], stopwords="en", show_progress=False),
                        show_progress=False)
        sims = []
        for target in targets:
            queries = bm25s.tokenize([record_text(r, self.target_part) for r in target.refs], stopwords="en", return_ids=False,
                                     show_progress=False)
            # a query with no token left (all stopwords or one-letter words) matches nothing; bm25s's
            # get_scores cannot take an empty query
            zeros = np.zeros(len(pool.refs), np.float32)
            sims.append(torch.from_numpy(np.stack([retriever.get_scores(q) if q else zeros for q in queries], axis=1)))
        yield 0, sims  # the index is in memory anyway: one chunk

    def settings(self) -> dict:
        return {**super().settings(), "k1": self.k1, "b": self.b, "target_part": self.target_part,
                "pool_part": self.pool_part}

    @classmethod
    def from_config(cls, config: SelectConfig, labels: dict[str, set[str]] | None = None) -> Bm25:
        return cls(**cls.similarity_settings(config), **cls.part_settings(config))
