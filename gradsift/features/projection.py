"""Random projections of gradient features to a few thousand dimensions.

A projector is a pure function of (parameter shapes, dim, seed): the same map for every checkpoint,
for pool and target, in every process and on every machine, so stores built apart can be compared.
It is applied parameter by parameter (``accumulate``), so the whole (batch, n_params) feature
matrix never has to exist; the math is float32 whatever the model's dtype.

- ``dense``: the reference method, a dense Rademacher (±1/sqrt(dim)) Johnson-Lindenstrauss matrix.
  Generated block by block, it costs n_params x dim multiply-adds and random signs per batch.
- ``sparse``: sparse JL (block construction): every input coordinate lands, with a random sign, in
  one bucket of each of ``NNZ`` blocks of dim/NNZ; ``NNZ`` = 1 is CountSketch. n_params x NNZ adds.
- ``kronecker``: per-parameter two-sided projection vec(P_outᵀ G P_in) with small Rademacher
  P_out (out x a), P_in (in x b), a·b = dim, summed over parameters. About n_params x (b + a·out/in)
  multiply-adds, from matrices of a few thousand entries.
"""

from __future__ import annotations

import math
import warnings
from abc import ABC, abstractmethod
from collections.abc import Sequence
from typing import ClassVar

import numpy as np
import torch

from gradsift.features.adam import flat_layout, normalize_rows
from gradsift.utils.errors import ConfigError


def _stream(seed: int, stream: int) -> np.random.Generator:
    """A counter-based Philox stream keyed by (seed, stream): the same numbers in any process or machine."""
    return np.random.Generator(np.random.Philox(key=[seed, stream]))


def rademacher(seed: int, stream: int, shape: tuple[int, ...], scale: float) -> torch.Tensor:
    """±scale entries from the stream (seed, stream)."""
    rng = _stream(seed, stream)
    n = math.prod(shape)
    bits = np.unpackbits(np.frombuffer(rng.bytes(math.ceil(n / 8)), np.uint8), count=n)
    return torch.from_numpy(bits).view(shape).float().mul_(2 * scale).sub_(scale)


class Projector(ABC):
    kind: ClassVar[str]

    def __init__(self, shapes: Sequence[tuple[int, ...]], dim: int, seed: int):
        self.shapes, self.dim, self.seed = [tuple(s) for s in shapes], dim, seed
        self.numels, self.offsets = flat_layout(self.shapes)
        self.input_dim = sum(self.numels)

    @abstractmethod
    def accumulate(self, out: torch.Tensor, param: int, grad: torch.Tensor) -> None:
        """out (batch, dim) += projection of parameter ``param``'s features ``grad`` (batch, numel)."""

    def project(self, x: torch.Tensor) -> torch.Tensor:
        """(batch, input_dim) -> (batch, dim), float32."""
        out = torch.zeros(x.shape[0], self.dim, device=x.device)
        for i, (offset, n) in enumerate(zip(self.offsets, self.numels)):
            self.accumulate(out, i, x[:, offset: offset + n].float())
        return out

    def finish(self, out: torch.Tensor) -> torch.Tensor:
        """The rows a store keeps of the accumulated projections: unit length, so dot products are cosines."""
        return normalize_rows(out)

    def describe(self) -> dict:
        """What a store records, and compares, about its projection."""
        return {"kind": self.kind, "input_dim": self.input_dim, "dim": self.dim, "seed": self.seed}


class DenseRademacherProjector(Projector):
    """Never held whole (14.7M x 8192 entries for LoRA r=128): generated in blocks of ``BLOCK_ROWS``
    input coordinates, each keyed by (seed, block), so any block is reproducible alone."""

    kind = "dense"
    BLOCK_ROWS = 1024

    def __init__(self, shapes, dim: int, seed: int, cache_bytes: int = 1 << 30):
        super().__init__(shapes, dim, seed)
        self._cache = {} if self.input_dim * dim * 4 <= cache_bytes else None

    def block(self, b: int, device: torch.device | str = "cpu") -> torch.Tensor:
        if self._cache is not None and (b, str(device)) in self._cache:
            return self._cache[b, str(device)]
        rows = min(self.BLOCK_ROWS, self.input_dim - b * self.BLOCK_ROWS)
        block = rademacher(self.seed, b, (rows, self.dim), 1 / math.sqrt(self.dim)).to(device)
        if self._cache is not None:
            self._cache[b, str(device)] = block
        return block

    def accumulate(self, out, param, grad):
        start, end = self.offsets[param], self.offsets[param] + self.numels[param]
        for b in range(start // self.BLOCK_ROWS, (end - 1) // self.BLOCK_ROWS + 1):
            lo, hi = max(start, b * self.BLOCK_ROWS), min(end, (b + 1) * self.BLOCK_ROWS)
            rows = self.block(b, out.device)[lo - b * self.BLOCK_ROWS: hi - b * self.BLOCK_ROWS]
            out.addmm_(grad[:, lo - start: hi - start], rows)


class SparseJLProjector(Projector):
    """Each parameter's map is kept as a (dim, numel) CSR matrix with NNZ entries per column, so a
    batch is projected by one sparse-dense product (several times faster on a CPU than scattering
    with index_add, and a cuSPARSE call on a GPU)."""

    kind = "sparse"
    NNZ = 4

    def __init__(self, shapes, dim: int, seed: int):
        super().__init__(shapes, dim, seed)
        if dim % self.NNZ:
            raise ValueError(f"sparse projection needs dim divisible by {self.NNZ}, got {dim}")
        self._matrices: dict = {}

    def _map(self, param: int) -> tuple[torch.Tensor, torch.Tensor]:
        """(NNZ, numel) bucket indices into ``out`` and (NNZ, numel) signed values, keyed by (seed, param)."""
        n, width = self.numels[param], self.dim // self.NNZ
        rng = _stream(self.seed, 2 * param)
        buckets = torch.from_numpy(rng.integers(0, width, size=(self.NNZ, n), dtype=np.int64))
        buckets += torch.arange(self.NNZ).unsqueeze(1) * width  # one bucket in each block
        return buckets, rademacher(self.seed, 2 * param + 1, (self.NNZ, n), 1 / math.sqrt(self.NNZ))

    def _matrix(self, param: int, device) -> torch.Tensor:
        key = (param, str(device))
        if key not in self._matrices:
            buckets, signs = self._map(param)
            rows = buckets.flatten()
            order = torch.argsort(rows, stable=True)
            columns = torch.arange(self.numels[param], dtype=torch.int32).repeat(self.NNZ)[order]
            crow = torch.zeros(self.dim + 1, dtype=torch.int64)
            crow[1:] = torch.bincount(rows, minlength=self.dim).cumsum(0)
            with warnings.catch_warnings():  # "beta" and "invariant checks disabled": built right by construction
                warnings.simplefilter("ignore", UserWarning)
                matrix = torch.sparse_csr_tensor(crow.int(), columns, signs.flatten()[order],
                                                 (self.dim, self.numels[param]))
            self._matrices[key] = matrix.to(device)
        return self._matrices[key]

    def accumulate(self, out, param, grad):
        out += (self._matrix(param, out.device) @ grad.T).T

    def describe(self) -> dict:
        return {**super().describe(), "nnz": self.NNZ}


class KroneckerProjector(Projector):
    kind = "kronecker"

    def __init__(self, shapes, dim: int, seed: int):
        super().__init__(shapes, dim, seed)
        if any(len(s) != 2 for s in self.shapes):
            raise ValueError("kronecker projection needs 2-D parameters (LoRA factors)")
        small = max(f for f in range(1, math.isqrt(dim) + 1) if dim % f == 0)
        self.factors = (small, dim // small)
        self._mats: dict = {}

    def _matrices(self, param: int, device) -> tuple[torch.Tensor, torch.Tensor]:
        key = (param, str(device))
        if key not in self._mats:
            rows, cols = self.shapes[param]
            # the larger side of the gradient gets the larger factor
            a, b = self.factors if rows <= cols else self.factors[::-1]
            p_out = rademacher(self.seed, 2 * param, (rows, a), 1 / math.sqrt(a))
            p_in = rademacher(self.seed, 2 * param + 1, (cols, b), 1 / math.sqrt(b))
            self._mats[key] = (p_out.to(device), p_in.to(device))
        return self._mats[key]

    def accumulate(self, out, param, grad):
        p_out, p_in = self._matrices(param, out.device)
        g = grad.view(grad.shape[0], *self.shapes[param])
        out += (p_out.T @ (g @ p_in)).flatten(1)


PROJECTORS: dict[str, type[Projector]] = {
    cls.kind: cls for cls in (DenseRademacherProjector, SparseJLProjector, KroneckerProjector)
}


def check_projection(kind: str, dim: int) -> None:
    """Settings no projector can take are a ConfigError, said before a build loads anything."""
    if kind not in PROJECTORS:
        raise ConfigError(f"unknown projection {kind!r}; choose from {sorted(PROJECTORS)}")
    if kind == "sparse" and dim % SparseJLProjector.NNZ:
        near = max(SparseJLProjector.NNZ, round(dim / SparseJLProjector.NNZ) * SparseJLProjector.NNZ)
        raise ConfigError(f"--projection sparse needs --dim divisible by {SparseJLProjector.NNZ} (e.g. {near}), "
                          f"got {dim}")


def make_projector(kind: str, shapes: Sequence[tuple[int, ...]], dim: int, seed: int) -> Projector:
    if kind not in PROJECTORS:
        raise ValueError(f"unknown projection {kind!r}; choose from {sorted(PROJECTORS)}")
    return PROJECTORS[kind](shapes, dim, seed)
