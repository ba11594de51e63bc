"""The whole pool: what training on everything does, the bar a 5% selection should reach."""

from __future__ import annotations

from dataclasses import dataclass
from typing import ClassVar

import numpy as np

from gradsift.selection.methods.base import Pool, SelectionMethod, Target, TargetScores, register


@register
@dataclass
class FullPool(SelectionMethod):
    name: ClassVar[str] = "full"
    selects_all: ClassVar[bool] = True

    def score(self, pool: Pool, targets: list[Target]) -> list[TargetScores]:
        # equal scores: ties keep pool order, so the "ranking" is the pool as given
        return [TargetScores(np.zeros(len(pool.refs), np.float32)) for _ in targets]
