"""gradsift's default selection: the ranks of three scores of different kinds, fused.

LESS (gradients), BM25 (words) and RDS (hidden states) fail in different places: gradient similarity
follows the answer's form (a worked target draws worked or merely short answers of unrelated skills),
words miss what is phrased differently, and hidden states blur near topics. Each pool row's fused
score comes from its rank under each method (``scoring.fuse_ranks``), so a row one method alone puts
first does not make the cut, and no method's score scale dominates another's.

Inputs are the gradient stores LESS reads: their rows point at the records the other two read. BM25
reads a store's lexical index and RDS its stored embeddings (of the store's own model unless ``model``
names another) where the stores hold them, so that on stores built by this gradsift a selection runs no
model at all.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import ClassVar

from gradsift.config import TOKEN_LIMIT, Aggregate, Fuse, Part, SelectConfig
from gradsift.selection.methods.base import Pool, SelectionMethod, SimilarityMethod, Target, TargetScores, register
from gradsift.selection.methods.bm25 import Bm25
from gradsift.selection.methods.less import Less
from gradsift.selection.methods.rds import Rds
from gradsift.selection.scoring import fuse_ranks


@register
@dataclass
class Fusion(SelectionMethod):
    name: ClassVar[str] = "fusion"
    reads: ClassVar[str] = "stores"
    reads_run: ClassVar[bool] = True
    reads_model: ClassVar[bool] = True
    aggregate: Aggregate = "subtask-mean-max"
    fuse: Fuse = "median"
    model: str = ""  # rds's model; default: the pool store's
    max_length: int = TOKEN_LIMIT
    batch_size: int = 16
    device: str = "auto"
    chunk_rows: int = field(default=16384)
    target_part: Part = "prompt"  # the task as asked, not a worked answer's form (docs/methods.md)
    pool_part: Part = "prompt"

    def members(self, pool: Pool) -> list[SelectionMethod]:
        similarity = {"aggregate": self.aggregate, "chunk_rows": self.chunk_rows}
        model = self.model or pool.store.manifest["model"]["name"]
        parts = {"target_part": self.target_part, "pool_part": self.pool_part}
        return [Less(**similarity), Bm25(**similarity, **parts),
                Rds(**similarity, **parts, model=model, max_length=self.max_length, batch_size=self.batch_size,
                    device=self.device)]

    def score(self, pool: Pool, targets: list[Target]) -> list[TargetScores]:
        members = self.members(pool)
        results = [m.score(pool, targets) for m in members]
        return [TargetScores(fuse_ranks([r[k].scores for r in results], pool.scorable, self.fuse),
                             results[0][k].subtask)  # the subtask a row is closest to, by its gradient
                for k in range(len(targets))]

    def settings(self) -> dict:
        return {"aggregate": self.aggregate, "fuse": self.fuse, "members": ["less", "bm25", "rds"],
                "model": self.model or None, "max_length": self.max_length, "target_part": self.target_part,
                "pool_part": self.pool_part}

    @classmethod
    def from_config(cls, config: SelectConfig, labels: dict[str, set[str]] | None = None) -> Fusion:
        return cls(**SimilarityMethod.similarity_settings(config), **SimilarityMethod.part_settings(config),
                   fuse=config.fuse, model=config.model or "",
                   max_length=cls.token_limit(config), batch_size=config.batch_size, device=config.device)
