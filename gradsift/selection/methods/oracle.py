"""The answer key as a selection: the records a benchmark labels relevant to each target, and no others.

Only for experiments on a benchmark with known answers (``relevance`` in the experiment's config); no
``--method`` reads labels. Training on it shows what perfect precision is worth in test loss, which a
selector's precision alone cannot say. Where a target has more relevant records than the cut, a seeded
random subset is taken; where it has fewer, the rest are drawn at random from the other records.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import ClassVar

import numpy as np

from gradsift.config import SelectConfig
from gradsift.selection.methods.base import Pool, SelectionMethod, Target, TargetScores, register
from gradsift.utils.errors import ConfigError


@register
@dataclass
class Oracle(SelectionMethod):
    name: ClassVar[str] = "oracle"
    reads_labels: ClassVar[bool] = True
    relevance: dict[str, set[str]] = field(default_factory=dict)  # {target: relevant pool ids}
    seed: int = 0

    def score(self, pool: Pool, targets: list[Target]) -> list[TargetScores]:
        missing = [t.name for t in targets if t.name not in self.relevance]
        if missing:
            raise ConfigError(f"oracle: the relevance labels name no records for targets {missing}")
        ids = pool.refs.column("id")
        order = np.random.default_rng(self.seed).random(len(ids))  # in [0, 1): below every relevant row's 1 +
        return [TargetScores((np.isin(ids, list(self.relevance[t.name])) + order).astype(np.float32))
                for t in targets]

    def settings(self) -> dict:
        return {"seed": self.seed, "relevant": {name: len(ids) for name, ids in sorted(self.relevance.items())}}

    @classmethod
    def from_config(cls, config: SelectConfig, labels: dict[str, set[str]] | None = None) -> Oracle:
        if labels is None:
            raise ConfigError("the oracle selects a benchmark's labelled records: it needs relevance labels")
        return cls(labels)
