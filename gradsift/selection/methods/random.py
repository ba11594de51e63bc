"""Random selection, seeded: the baseline every method must beat. The same seed gives every target the
same scores, so a random selection does not depend on the target."""

from __future__ import annotations

from dataclasses import dataclass
from typing import ClassVar

import numpy as np

from gradsift.config import SelectConfig
from gradsift.selection.methods.base import Pool, SelectionMethod, Target, TargetScores, register


@register
@dataclass
class RandomSelection(SelectionMethod):
    name: ClassVar[str] = "random"
    seeded: ClassVar[bool] = True
    seed: int = 0

    def score(self, pool: Pool, targets: list[Target]) -> list[TargetScores]:
        scores = np.random.default_rng(self.seed).random(len(pool.refs)).astype(np.float32)
        return [TargetScores(scores.copy()) for _ in targets]

    def settings(self) -> dict:
        return {"seed": self.seed}

    @classmethod
    def from_config(cls, config: SelectConfig, labels: dict[str, set[str]] | None = None) -> RandomSelection:
        return cls(seed=config.seed)
