"""Random projections of gradient features to a few thousand dimensions.

Every projector is a pure function of (input_dim, dim, seed): the same matrix for every checkpoint,
for pool and target, and for every process and machine, so stores built apart can be compared.
The math is float32 whatever the model's dtype.
"""

from __future__ import annotations

import math
from abc import ABC, abstractmethod
from typing import ClassVar

import numpy as np
import torch


class Projector(ABC):
    kind: ClassVar[str]

    def __init__(self, input_dim: int, dim: int, seed: int):
        self.input_dim, self.dim, self.seed = input_dim, dim, seed

    @abstractmethod
    def project(self, x: torch.Tensor) -> torch.Tensor:
        """(batch, input_dim) -> (batch, dim), float32."""

    def describe(self) -> dict:
        """What a store records, and compares, about its projection."""
        return {"kind": self.kind, "input_dim": self.input_dim, "dim": self.dim, "seed": self.seed}


class DenseRademacherProjector(Projector):
    """The reference method: a dense matrix of ±1/sqrt(dim) entries (a Johnson-Lindenstrauss map).

    The matrix is never held whole (14.7M x 8192 entries for LoRA r=128): it is generated in blocks
    of ``BLOCK_ROWS`` input rows, each from its own counter-based stream keyed by (seed, block), so any
    block is reproducible alone, in any process, in any order."""

    kind = "dense"
    BLOCK_ROWS = 1024

    def __init__(self, input_dim: int, dim: int, seed: int, cache_bytes: int = 1 << 30):
        super().__init__(input_dim, dim, seed)
        self._cache = {} if input_dim * dim * 4 <= cache_bytes else None

    def block(self, b: int) -> torch.Tensor:
        if self._cache is not None and b in self._cache:
            return self._cache[b]
        rows = min(self.BLOCK_ROWS, self.input_dim - b * self.BLOCK_ROWS)
        rng = np.random.Generator(np.random.Philox(key=[self.seed, b]))
        bits = np.unpackbits(np.frombuffer(rng.bytes(math.ceil(rows * self.dim / 8)), np.uint8), count=rows * self.dim)
        block = torch.from_numpy(bits).view(rows, self.dim).float().mul_(2 / math.sqrt(self.dim)).sub_(1 / math.sqrt(self.dim))
        if self._cache is not None:
            self._cache[b] = block
        return block

    def project(self, x: torch.Tensor) -> torch.Tensor:
        x = x.float()
        out = torch.zeros(x.shape[0], self.dim, device=x.device)
        for b in range(math.ceil(self.input_dim / self.BLOCK_ROWS)):
            rows = slice(b * self.BLOCK_ROWS, (b + 1) * self.BLOCK_ROWS)
            out.addmm_(x[:, rows], self.block(b).to(x.device, non_blocking=True))
        return out


PROJECTORS: dict[str, type[Projector]] = {cls.kind: cls for cls in (DenseRademacherProjector,)}


def make_projector(kind: str, input_dim: int, dim: int, seed: int) -> Projector:
    if kind not in PROJECTORS:
        raise ValueError(f"unknown projection {kind!r}; choose from {sorted(PROJECTORS)}")
    return PROJECTORS[kind](input_dim, dim, seed)
