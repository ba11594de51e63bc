"""BM25 (Okapi, via the ``bm25s`` library): each target example's text is a query against the pool's
texts; a row's score is its query scores aggregated over the target's subtasks like any similarity."""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass
from typing import ClassVar

import numpy as np
import torch

from gradsift.data.records import ExampleRef, read_messages
from gradsift.selection.methods.base import Pool, SimilarityMethod, Target, register


def record_text(ref: ExampleRef) -> str:
    """Every turn's content, prompt and answer: what a lexical or embedding method reads."""
    return "\n".join(m["content"] for m in read_messages(ref))


@register
@dataclass
class Bm25(SimilarityMethod):
    name: ClassVar[str] = "bm25"
    about: ClassVar[str] = "BM25 of each target example's text against the pool's texts (records)"
    k1: float = 1.5
    b: float = 0.75

    def similarities(self, pool: Pool, targets: list[Target]) -> Iterator[tuple[int, list[torch.Tensor]]]:
        import bm25s

        retriever = bm25s.BM25(k1=self.k1, b=self.b)
        retriever.index(bm25s.tokenize([record_text(r) for r in pool.refs], stopwords="en", show_progress=False),
                        show_progress=False)
        sims = []
        for target in targets:
            queries = bm25s.tokenize([record_text(r) for r in target.refs], stopwords="en", return_ids=False,
                                     show_progress=False)
            # a query with no token left (all stopwords or one-letter words) matches nothing; bm25s's
            # get_scores cannot take an empty query
            zeros = np.zeros(len(pool.refs), np.float32)
            sims.append(torch.from_numpy(np.stack([retriever.get_scores(q) if q else zeros for q in queries], axis=1)))
        yield 0, sims  # the index is in memory anyway: one chunk

    def settings(self) -> dict:
        return {**super().settings(), "k1": self.k1, "b": self.b}
