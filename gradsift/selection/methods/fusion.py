"""gradsift's default selection: three scores of different kinds, fused over the members that agree.

LESS (gradients), BM25 (words) and RDS (hidden states) fail in different places: gradient similarity
follows the answer's form (a worked target draws worked or merely short answers of unrelated skills),
words miss what is phrased differently, and hidden states blur near topics. First, a member whose top
rows no other member shares (``scoring.agreeing``), such as LESS drawn to worked answers by worked
targets, is left out for that target, and a line says so. Then (``--fuse zscore``, the default) each
pool row's score is the sum of the kept members' standardized scores (``scoring.standardized``): a
member whose top rows stand far above its other rows weighs more on that target than one whose scores
are flat, as BM25 does where the target's words pick out its records and does not where they are
restated (``scoring.fuse_standardized``). ``--fuse agreement`` takes the kept members' median rank instead
(``scoring.fuse_member_ranks``).
Where the selected answers are labels, each label gets an equal share (``selection.balance``; ``--no-balance``
keeps the fused ranking's top).

Inputs are the gradient stores LESS reads: their rows point at the records the other two read. BM25
reads a store's lexical index and RDS its stored embeddings (of the store's own model unless ``model``
names another) where the stores hold them, so that on stores built by this gradsift a selection runs no
model at all.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import ClassVar

import numpy as np

from gradsift.config import TOKEN_LIMIT, Aggregate, Fuse, Part, SelectConfig
from gradsift.selection.methods.base import Pool, SelectionMethod, SimilarityMethod, Target, TargetScores, register
from gradsift.selection.methods.bm25 import Bm25
from gradsift.selection.methods.less import Less
from gradsift.selection.methods.rds import Rds
from gradsift.selection.scoring import (
    AGREEMENT_SHARE,
    GATED_FUSES,
    agreeing,
    candidate_ranks,
    fuse_member_ranks,
    fuse_standardized,
    rank_tops,
    standardized,
    value_tops,
)


@register
@dataclass
class Fusion(SelectionMethod):
    name: ClassVar[str] = "fusion"
    reads: ClassVar[str] = "stores"
    reads_run: ClassVar[bool] = True
    reads_model: ClassVar[bool] = True
    balances: ClassVar[bool] = True  # the examples' label mix is chance: not copied into the selection
    aggregate: Aggregate = "subtask-mean-max"
    fuse: Fuse = "zscore"  # over the members that agree (scoring.agreeing), their standardized scores summed
    model: str = ""  # rds's model; default: the pool store's
    max_length: int = TOKEN_LIMIT
    batch_size: int = 16
    device: str = "auto"
    chunk_rows: int = field(default=16384)
    target_part: Part = "prompt"  # the task as asked, not a worked answer's form (docs/methods.md)
    pool_part: Part = "prompt"

    def members(self) -> list[SelectionMethod]:
        similarity = {"aggregate": self.aggregate, "chunk_rows": self.chunk_rows}
        parts = {"target_part": self.target_part, "pool_part": self.pool_part}
        return [Less(**similarity), Bm25(**similarity, **parts),
                Rds(**similarity, **parts, model=self.model, max_length=self.max_length, batch_size=self.batch_size,
                    device=self.device)]  # rds's model, unless given: the pool store's

    def score(self, pool: Pool, targets: list[Target]) -> list[TargetScores]:
        members = self.members()
        # per target and member, 4 bytes a candidate: standardized scores (zscore) or ranks (the other rules)
        held: list[list[np.ndarray]] = [[] for _ in targets]
        for i, member in enumerate(members):  # one member's scores held at a time, then let go
            scored = member.score(pool, targets)
            if i == 0:
                nearest = [(s.closest, s.subtasks) for s in scored]  # the subtask a row is closest to, by its gradient
            for k, result in enumerate(scored):
                held[k].append(standardized(result.scores[pool.scorable]) if self.fuse == "zscore"
                               else candidate_ranks(result.scores, pool.scorable))
            del scored
        fused, names = [], [m.name for m in members]
        for k, target in enumerate(targets):
            if self.fuse == "zscore":  # the gate reads each member's top rows; nothing is ranked whole
                kept, overlap = agreeing(*value_tops(held[k]))
                print_agreement(target.name, names, kept, overlap)
                scores = fuse_standardized(held[k], pool.scorable, kept)
            else:
                ranks, kept = np.stack(held[k]), None
                if self.fuse in GATED_FUSES:
                    kept, overlap = agreeing(*rank_tops(ranks))
                    print_agreement(target.name, names, kept, overlap)
                scores = fuse_member_ranks(ranks, pool.scorable, self.fuse, kept=kept)
                del ranks
            held[k] = []
            fused.append(TargetScores(scores, *nearest[k]))
        return fused

    def settings(self) -> dict:
        return {"aggregate": self.aggregate, "fuse": self.fuse, "members": ["less", "bm25", "rds"],
                "model": self.model or None, "max_length": self.max_length, "target_part": self.target_part,
                "pool_part": self.pool_part}

    @classmethod
    def from_config(cls, config: SelectConfig, labels: dict[str, set[str]] | None = None) -> Fusion:
        return cls(**SimilarityMethod.similarity_settings(config), **SimilarityMethod.part_settings(config),
                   fuse=config.fuse, model=config.model or "",
                   max_length=cls.token_limit(config), batch_size=config.batch_size, device=config.device)


def print_agreement(target: str, names: list[str], kept: list[int], overlap: np.ndarray) -> None:
    """One line per target naming a member the agreement rule leaves out (``scoring.agreeing``), and why."""
    out = [i for i in range(len(names)) if i not in kept]
    if out:
        shares = ", ".join(f"{names[i]} {overlap[i].max():.2f}" for i in out)
        pair = overlap[np.ix_(kept, kept)].max()
        print(f"fusion: {target}: left out {shares} (the most of its top {AGREEMENT_SHARE:.0%} another member shares; "
              f"{' and '.join(names[i] for i in kept)} share {pair:.2f})")
