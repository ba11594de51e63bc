"""LESS (Xia et al., 2024): LR-weighted cosine of the pool's Adam gradient features and the targets'
plain gradients over the warmup checkpoints, read from gradient stores (``gradsift build``)."""

from __future__ import annotations

from dataclasses import dataclass
from typing import ClassVar, Iterator

import numpy as np
import torch
from tqdm.auto import tqdm

from ..errors import ConfigError
from ..scoring import checkpoint_weights, weighted_similarity
from .base import Pool, SimilarityMethod, Target


@dataclass
class Less(SimilarityMethod):
    name: ClassVar[str] = "less"

    def similarities(self, pool: Pool, targets: list[Target]) -> Iterator[tuple[int, list[torch.Tensor]]]:
        if pool.store is None or any(t.store is None for t in targets):
            raise ConfigError("less scores gradient stores: give --train-store and --target-store")
        for target in targets:
            pool.store.check_comparable(target.store)
        weights = checkpoint_weights([c["lr"] for c in pool.store.checkpoints])
        names = [c["name"] for c in pool.store.checkpoints]
        rows = [np.flatnonzero(t.store.ok_mask()) for t in targets]
        target_feats = [[torch.from_numpy(np.asarray(t.store.features(c)[r], np.float32)) for c in names]
                        for t, r in zip(targets, rows)]
        pool_feats = [pool.store.features(c) for c in names]
        n = len(pool.refs)
        for start in tqdm(range(0, n, self.chunk_rows), desc="score", unit="chunk", disable=n <= self.chunk_rows):
            chunk = [torch.from_numpy(np.asarray(f[start: start + self.chunk_rows], np.float32)) for f in pool_feats]
            yield start, [weighted_similarity(chunk, feats, weights) for feats in target_feats]
