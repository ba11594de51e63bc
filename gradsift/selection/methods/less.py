"""LESS (Xia et al., 2024): LR-weighted cosine of the pool's Adam gradient features and the targets'
plain gradients over the warmup checkpoints, read from gradient stores (``gradsift build``)."""

from __future__ import annotations

from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from typing import ClassVar

import numpy as np
import torch
from tqdm.auto import tqdm

from gradsift.selection.methods.base import Pool, SimilarityMethod, Target, register
from gradsift.selection.scoring import SUBTASK_MEAN_AGGREGATES, checkpoint_weights, subtask_mean_rows, weighted_similarity
from gradsift.store.compact import as_signs, sign_cosine
from gradsift.utils.errors import ConfigError

CHUNK_BYTES = 1 << 28  # decoded pool rows of one chunk (one buffer, and the next chunk as stored): memory stays flat


@register
@dataclass
class Less(SimilarityMethod):
    name: ClassVar[str] = "less"
    reads: ClassVar[str] = "stores"
    reads_run: ClassVar[bool] = True

    def _signs(self, pool: Pool, targets: list[Target]) -> bool:
        """Sign rows (a bit store on either side) are compared as signs, by their Hamming estimate."""
        return "bit" in {pool.store.dtype, *(t.store.dtype for t in targets)}

    def _by_subtask_mean(self, pool: Pool, targets: list[Target]) -> bool:
        """A cosine is linear in the target row, so the mean cosine with a subtask's examples is the dot
        product with their mean row: one column per subtask instead of one per example (300 targets
        in 3 subtasks: 100x fewer operations). Not for sign estimates, which are not linear."""
        return self.aggregate in SUBTASK_MEAN_AGGREGATES and not self._signs(pool, targets)

    def columns(self, pool: Pool, target: Target) -> list[str]:
        return sorted(set(target.subtasks)) if self._by_subtask_mean(pool, [target]) else target.subtasks

    def similarities(self, pool: Pool, targets: list[Target]) -> Iterator[tuple[int, list[torch.Tensor]]]:
        if pool.store is None or any(t.store is None for t in targets):
            raise ConfigError("less scores gradient stores: give --train-store and --target-store")
        for target in targets:
            pool.store.check_comparable(target.store)
        weights = checkpoint_weights([c["lr"] for c in pool.store.checkpoints])
        names = [c["name"] for c in pool.store.checkpoints]
        signs = self._signs(pool, targets)

        def to_signs(store, rows: np.ndarray) -> np.ndarray:
            """A bit store's rows decode to sign vectors already; float rows compared with them become signs."""
            return as_signs(rows) if signs and store.dtype != "bit" else rows

        rows = [np.flatnonzero(t.store.ok_mask()) for t in targets]
        target_feats = [[torch.from_numpy(to_signs(t.store, t.store.rows(c, r))) for c in names] for t, r in zip(targets, rows)]
        if self._by_subtask_mean(pool, targets):
            target_feats = [[subtask_mean_rows(f, t.subtasks) for f in feats] for t, feats in zip(targets, target_feats)]
        n, dim = len(pool.refs), pool.store.manifest["projection"]["dim"]
        step = max(1, min(self.chunk_rows, CHUNK_BYTES // (4 * dim * len(names))))  # decoded rows are float32

        # Every buffer is reused: two sets of stored rows (the chunk being decoded, the next one being
        # read), one of decoded rows (a chunk is scored before the next is decoded).
        stored_buffers = [[pool.store.row_buffers(min(step, n)) for _ in names] for _ in range(2)]
        buffers = [torch.empty(min(step, n), dim) for _ in names]

        def read(start: int) -> list[tuple]:
            into = stored_buffers[(start // step) % 2]
            return [pool.store.stored_rows(c, slice(start, start + step), b) for c, b in zip(names, into)]

        starts = range(0, n, step)
        # the next chunk is read from disk in a thread (a read lets go of the GIL) while this one is
        # decoded and scored on every core: the scan takes the longer of the two, not their sum
        with ThreadPoolExecutor(1) as reader:
            pending = reader.submit(read, 0)
            for k in tqdm(starts, desc="score", unit="chunk", disable=n <= step):
                stored = pending.result()
                if k + step < n:
                    pending = reader.submit(read, k + step)
                chunk = [torch.from_numpy(to_signs(pool.store, pool.store.decode(*s, out))) for s, out in zip(stored, buffers)]
                yield k, [weighted_similarity(chunk, feats, weights, sign_cosine if signs else None)
                          for feats in target_feats]
