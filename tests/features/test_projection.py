"""Random projections: pure functions of (shapes, dim, seed), applied parameter by parameter, JL maps.

Every kind (dense Rademacher, sparse JL, Kronecker) is checked on a LoRA-like layout: A (r, in) and
B (out, r) factors with r = 8 and in/out in 64..96, 6336 coordinates in all, so that dense blocks of
1024 rows straddle parameter boundaries and the last block is partial.
"""

from __future__ import annotations

import math
import subprocess
import sys

import numpy as np
import pytest
import torch

from gradsift.features.projection import (
    PROJECTORS,
    DenseRademacherProjector,
    KroneckerProjector,
    SparseJLProjector,
    make_projector,
    rademacher,
)

KINDS = ("dense", "sparse", "kronecker")
SHAPES = [(8, 64), (64, 8), (8, 64), (96, 8), (8, 96), (64, 8), (8, 96), (96, 8), (8, 80), (72, 8)]
INPUT_DIM = sum(math.prod(s) for s in SHAPES)  # 6336: 6 full dense blocks and one of 192 rows
OFFSETS = np.cumsum([0] + [math.prod(s) for s in SHAPES[:-1]]).tolist()
DIM = 1024
# Every scale is a power of two at this dim (dense 1/16, sparse 1/2, kronecker 1/4 on each side: 16 x 16),
# so on small-integer inputs every product and partial sum is exact in float32: the result cannot depend
# on summation order (threads, BLAS, parameter order) -- only on the map.
EXACT_DIM = 256


def integer_vectors(dim: int = INPUT_DIM) -> torch.Tensor:
    g = np.random.default_rng(123)
    return torch.from_numpy(g.integers(-3, 4, size=(3, dim)).astype(np.float32))


def random_vectors(n: int, seed: int = 0) -> torch.Tensor:
    return torch.randn(n, INPUT_DIM, generator=torch.Generator().manual_seed(seed))


def materialize(p) -> torch.Tensor:
    """The (input_dim, dim) matrix of a projector, built parameter by parameter from unit vectors."""
    rows = []
    for i, n in enumerate(p.numels):
        out = torch.zeros(n, p.dim)
        p.accumulate(out, i, torch.eye(n))
        rows.append(out)
    return torch.cat(rows)


# --- determinism -------------------------------------------------------------------------------------


@pytest.mark.parametrize("kind", KINDS)
def test_deterministic_for_a_seed(kind):
    x = random_vectors(4)
    a, b = make_projector(kind, SHAPES, DIM, 7), make_projector(kind, SHAPES, DIM, 7)
    assert type(a) is PROJECTORS[kind] and a.input_dim == INPUT_DIM
    first = a.project(x)
    assert first.shape == (4, DIM) and first.dtype == torch.float32
    assert torch.equal(first, a.project(x))  # second call (cached matrices)
    assert torch.equal(first, b.project(x))  # second instance
    assert first.abs().sum() > 0
    # float64 or float16 input: projected in float32
    assert a.project(x.double()).dtype == torch.float32
    assert a.project(x.half()).dtype == torch.float32
    other = make_projector(kind, SHAPES, DIM, 8).project(x)
    assert not torch.allclose(first, other, atol=0.1)  # not a near-copy either


@pytest.fixture(scope="module")
def projected_elsewhere() -> dict[str, bytes]:
    """The three kinds' outputs on integer vectors, computed by a fresh interpreter with 2 threads."""
    code = (
        "import sys, numpy as np, torch\n"
        "from gradsift.features.projection import DenseRademacherProjector, make_projector\n"
        "torch.set_num_threads(2)\n"
        "g = np.random.default_rng(123)\n"
        f"x = torch.from_numpy(g.integers(-3, 4, size=(3, {INPUT_DIM})).astype(np.float32))\n"
        f"shapes = {SHAPES!r}\n"
        f"for kind in {KINDS!r}:\n"
        f"    p = (DenseRademacherProjector(shapes, {EXACT_DIM}, 11, cache_bytes=0) if kind == 'dense'\n"
        f"         else make_projector(kind, shapes, {EXACT_DIM}, 11))\n"
        "    sys.stdout.buffer.write(p.project(x).numpy().tobytes())\n"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, check=True, timeout=120).stdout
    size = 3 * EXACT_DIM * 4
    assert len(out) == len(KINDS) * size
    return {kind: out[k * size: (k + 1) * size] for k, kind in enumerate(KINDS)}


@pytest.mark.parametrize("kind", KINDS)
def test_identical_in_a_separate_process(kind, projected_elsewhere):
    here = make_projector(kind, SHAPES, EXACT_DIM, 11).project(integer_vectors())
    assert here.abs().sum() > 0
    assert here.numpy().tobytes() == projected_elsewhere[kind]


# --- project = sum of per-parameter accumulations, a linear map -----------------------------------------


@pytest.mark.parametrize("kind", KINDS)
def test_project_is_the_sum_of_accumulations_in_any_order(kind):
    p = make_projector(kind, SHAPES, DIM, 3)
    x = random_vectors(5, seed=1)
    whole = p.project(x)
    for order in (range(len(SHAPES)), reversed(range(len(SHAPES))), np.random.default_rng(0).permutation(len(SHAPES))):
        out = torch.zeros(5, DIM)
        for i in order:
            i = int(i)
            p.accumulate(out, i, x[:, OFFSETS[i]: OFFSETS[i] + p.numels[i]].contiguous())
        torch.testing.assert_close(out, whole, rtol=1e-5, atol=1e-4)
    # accumulate adds to what is there
    out = torch.ones(5, DIM)
    p.accumulate(out, 4, x[:, OFFSETS[4]: OFFSETS[4] + p.numels[4]].contiguous())
    alone = torch.zeros(5, DIM)
    p.accumulate(alone, 4, x[:, OFFSETS[4]: OFFSETS[4] + p.numels[4]].contiguous())
    torch.testing.assert_close(out, alone + 1)
    # on integer inputs the arithmetic is exact: any order gives the same bits (a fresh instance, too)
    e = make_projector(kind, SHAPES, EXACT_DIM, 3)
    xi = integer_vectors()
    out = torch.zeros(3, EXACT_DIM)
    for i in reversed(range(len(SHAPES))):
        e.accumulate(out, i, xi[:, OFFSETS[i]: OFFSETS[i] + e.numels[i]].contiguous())
    assert torch.equal(out, make_projector(kind, SHAPES, EXACT_DIM, 3).project(xi))


@pytest.mark.parametrize("kind", KINDS)
def test_linear_and_equal_to_its_matrix(kind):
    p = make_projector(kind, SHAPES, DIM, 5)
    x, y = random_vectors(3, seed=2), random_vectors(3, seed=3)
    a, b = 0.7, -1.3
    torch.testing.assert_close(p.project(a * x + b * y), a * p.project(x) + b * p.project(y), rtol=1e-4, atol=1e-4)
    matrix = materialize(p)
    assert matrix.shape == (INPUT_DIM, DIM)
    torch.testing.assert_close(p.project(x), x @ matrix, rtol=1e-4, atol=1e-4)
    # every input coordinate has a unit-norm image (all three constructions are exactly norm 1 per coordinate)
    torch.testing.assert_close(matrix.norm(dim=1), torch.ones(INPUT_DIM))
    # and no two coordinates share an image (a stream reused across parameters or blocks would)
    assert len(torch.unique(matrix, dim=0)) == INPUT_DIM


# --- Johnson-Lindenstrauss -----------------------------------------------------------------------------

# Bounds in units of 1/sqrt(dim). A pair's cosine error has std about sqrt((1 + cos^2) / dim). Calibrated
# over 1000 seeds (projector and vectors): dense and sparse reach at most nmax 3.1, nmean 0.48, emax 5.9,
# estd 1.15 (mean 1.00, sd 0.05); kronecker, whose rank-one components have relative variance about
# 2/a + 2/b per parameter, at most nmax 4.4, nmean 0.77, emax 8.6, estd 1.47 (mean 1.21, sd 0.06).
JL_BOUNDS = {
    "dense": dict(nmax=4.5, nmean=1.2, emax=7.0, estd=1.3),
    "sparse": dict(nmax=4.5, nmean=1.2, emax=7.0, estd=1.3),
    "kronecker": dict(nmax=6.5, nmean=1.5, emax=11.0, estd=1.7),
}


def jl_vectors(seed: int) -> torch.Tensor:
    """Gaussian vectors, near-duplicates of the first 6, vectors with a nonzero mean (a missing sign would
    add them up coherently), vectors tiled across same-shaped parameters with equal or alternating signs
    (a map shared between parameters would add or cancel them), and two vectors on 64 coordinates."""
    g = torch.Generator().manual_seed(seed)
    base = torch.randn(16, INPUT_DIM, generator=g, dtype=torch.float64)
    near = base[:6] + 0.3 * torch.randn(6, INPUT_DIM, generator=g, dtype=torch.float64)
    biased = torch.randn(4, INPUT_DIM, generator=g, dtype=torch.float64) + 1.0
    patterns = {s: torch.randn(4, math.prod(s), generator=g, dtype=torch.float64) for s in sorted(set(SHAPES))}
    tiled = torch.stack([torch.cat([patterns[s][k] * (1 if k < 2 or i % 2 == 0 else -1) for i, s in enumerate(SHAPES)])
                         for k in range(4)])
    sparse = torch.zeros(2, INPUT_DIM, dtype=torch.float64)
    for r in range(2):
        sparse[r, torch.randperm(INPUT_DIM, generator=g)[:64]] = torch.randn(64, generator=g, dtype=torch.float64)
    return torch.cat([base, near, biased, tiled, sparse])


def jl_violations(x: torch.Tensor, px: torch.Tensor, kind: str) -> list[str]:
    bounds, scale = JL_BOUNDS[kind], math.sqrt(px.shape[1])
    px = px.double()
    norms = x.norm(dim=1)
    ratio = px.norm(dim=1) / norms
    cos = (x @ x.T) / (norms[:, None] * norms[None, :])
    pcos = (px @ px.T) / (norms[:, None] * norms[None, :])
    i, j = torch.triu_indices(len(x), len(x), offset=1)
    err = (pcos - cos)[i, j]
    near = torch.nn.functional.cosine_similarity
    stats = {
        "nmax": (ratio - 1).abs().max().item() * scale,  # worst norm
        "nmean": abs(ratio.mean().item() - 1) * scale,  # norms unbiased
        "emax": err.abs().max().item() * scale,  # worst inner product
        "estd": err.std().item() * scale,  # inner products' spread: as good as a dim-dimensional JL map
    }
    bad = [f"{k} = {v:.2f} >= {bounds[k]}" for k, v in stats.items() if not v < bounds[k]]
    # the designed near-duplicates stay near-duplicates
    if not (near(px[:6], px[16:22]) - near(x[:6], x[16:22])).abs().max() < 0.03:
        bad.append("near-duplicates not preserved")
    return bad


@pytest.mark.parametrize("seed", [0, 9])
@pytest.mark.parametrize("kind", KINDS)
def test_preserves_norms_and_inner_products(kind, seed):
    x = jl_vectors(42 + seed)
    px = make_projector(kind, SHAPES, DIM, seed).project(x.float())
    assert jl_violations(x, px, kind) == []


class _Zeros:
    def accumulate(self, out, param, grad):
        pass


class DenseZeros(_Zeros, DenseRademacherProjector):
    pass


class DenseSameColumns(DenseRademacherProjector):
    def block(self, b, device="cpu"):
        block = super().block(b, device)
        return block[:, :1].expand_as(block).contiguous()


class DenseNoSigns(DenseRademacherProjector):
    def block(self, b, device="cpu"):
        return super().block(b, device).abs()


class DenseSameBlock(DenseRademacherProjector):  # every block drawn from the same stream
    def block(self, b, device="cpu"):
        rows = min(self.BLOCK_ROWS, self.input_dim - b * self.BLOCK_ROWS)
        return rademacher(self.seed, 0, (self.BLOCK_ROWS, self.dim), 1 / math.sqrt(self.dim))[:rows]


class SparseZeros(_Zeros, SparseJLProjector):
    pass


class SparseNoSigns(SparseJLProjector):
    def _map(self, param):
        buckets, signs = super()._map(param)
        return buckets, signs.abs()


class SparseNoBlockOffset(SparseJLProjector):  # all NNZ buckets drawn in the first block: collisions
    def _map(self, param):
        buckets, signs = super()._map(param)
        return buckets % (self.dim // self.NNZ), signs


class SparseSharedMap(SparseJLProjector):  # the map not keyed by parameter
    def _map(self, param):
        return SparseJLProjector._map(SparseJLProjector([self.shapes[param]], self.dim, self.seed), 0)


class KroneckerZeros(_Zeros, KroneckerProjector):
    pass


class KroneckerNoSigns(KroneckerProjector):
    def _matrices(self, param, device):
        p_out, p_in = super()._matrices(param, device)
        return p_out.abs(), p_in.abs()


class KroneckerSharedMatrices(KroneckerProjector):  # the matrices not keyed by parameter
    def _matrices(self, param, device):
        return KroneckerProjector([self.shapes[param]], self.dim, self.seed)._matrices(0, device)


@pytest.mark.parametrize("broken", [DenseZeros, DenseSameColumns, DenseNoSigns, DenseSameBlock, SparseZeros, SparseNoSigns,
                                    SparseNoBlockOffset, SparseSharedMap, KroneckerZeros, KroneckerNoSigns,
                                    KroneckerSharedMatrices], ids=lambda c: c.__name__)
def test_jl_check_would_catch_a_broken_projector(broken):
    """The bounds above are not vacuous: each degenerate map violates them, for every seed tried."""
    x = jl_vectors(42)
    for seed in (0, 9):
        assert jl_violations(x, broken(SHAPES, DIM, seed).project(x.float()), broken.kind) != []


# --- dense ---------------------------------------------------------------------------------------------


def test_dense_blocks_do_not_depend_on_cache_order_or_layout():
    rows = DenseRademacherProjector.BLOCK_ROWS
    cached = DenseRademacherProjector(SHAPES, DIM, seed=3)
    uncached = DenseRademacherProjector(SHAPES, DIM, seed=3, cache_bytes=0)
    assert uncached._cache is None and cached._cache is not None
    n_blocks = math.ceil(INPUT_DIM / rows)
    for k in reversed(range(n_blocks)):  # generated in reverse order, each alone
        assert torch.equal(uncached.block(k), cached.block(k))
    assert torch.equal(cached.block(2), cached.block(2))
    assert cached.block(n_blocks - 1).shape == (INPUT_DIM - (n_blocks - 1) * rows, DIM)
    x = random_vectors(2, seed=5)
    assert torch.equal(cached.project(x), uncached.project(x))
    # a prefix of the layout keeps the first rows of the same matrix
    small = DenseRademacherProjector(SHAPES[:3], DIM, seed=3)  # 1536 coordinates
    assert torch.equal(small.block(0), cached.block(0))
    assert torch.equal(small.block(1), cached.block(1)[:512])
    # the dense matrix depends on the coordinates only, not on how they split into parameters
    flat = DenseRademacherProjector([(INPUT_DIM,)], DIM, seed=3)
    torch.testing.assert_close(flat.project(x), cached.project(x), rtol=1e-5, atol=1e-4)


def test_dense_entries_are_plus_minus_one_over_sqrt_dim():
    p = DenseRademacherProjector(SHAPES, DIM, seed=0)
    matrix = torch.cat([p.block(k) for k in range(math.ceil(INPUT_DIM / p.BLOCK_ROWS))])
    assert matrix.shape == (INPUT_DIM, DIM)
    assert torch.equal(matrix, materialize(p))
    assert set(matrix.unique().tolist()) == {-1 / math.sqrt(DIM), 1 / math.sqrt(DIM)}
    signs = (matrix > 0).float()
    assert abs(signs.mean().item() - 0.5) < 0.005  # balanced overall (sd 0.0002)
    assert (signs.mean(0) - 0.5).abs().max() < 0.05  # and in every column (6336 draws each, sd 0.006)
    # blocks are independent of each other and of another seed's
    other = DenseRademacherProjector(SHAPES, DIM, seed=1)
    for k in range(5):
        assert 0.48 < (p.block(k) == p.block(k + 1)).float().mean().item() < 0.52
        assert 0.48 < (p.block(k) == other.block(k)).float().mean().item() < 0.52
    # columns are not copies of each other: near-orthogonal
    gram = matrix.T @ matrix  # diagonal = INPUT_DIM / DIM
    off = gram - torch.diag(torch.diag(gram))
    torch.testing.assert_close(torch.diag(gram), torch.full((DIM,), INPUT_DIM / DIM))
    assert off.abs().max() < 6.5 * math.sqrt(INPUT_DIM) / DIM


# --- sparse --------------------------------------------------------------------------------------------


def test_sparse_every_coordinate_hits_one_bucket_per_block():
    nnz = SparseJLProjector.NNZ
    shapes = [(2, 3), (4, 2), (3, 3), (1, 5)]  # 28 coordinates
    for dim in (16, 32):
        width = dim // nnz
        p = make_projector("sparse", shapes, dim, seed=4)
        images = p.project(torch.eye(p.input_dim)).view(p.input_dim, nnz, width)
        hit = images != 0
        assert torch.equal(hit.sum(dim=2), torch.ones(p.input_dim, nnz, dtype=torch.long))  # one per block
        assert set(images[hit].abs().unique().tolist()) == {1 / math.sqrt(nnz)}
        assert (images > 0).any() and (images < 0).any()
    # on the full layout: exactly NNZ distinct outputs per coordinate, signs balanced, every output used
    p = make_projector("sparse", SHAPES, DIM, seed=4)
    matrix = materialize(p).view(INPUT_DIM, nnz, DIM // nnz)
    assert torch.equal((matrix != 0).sum(dim=2), torch.ones(INPUT_DIM, nnz, dtype=torch.long))
    assert set(matrix[matrix != 0].abs().unique().tolist()) == {0.5}
    assert abs((matrix > 0).sum().item() / (INPUT_DIM * nnz) - 0.5) < 0.02  # 25344 signs, sd 0.003
    load = (matrix != 0).sum(dim=0).flatten()  # coordinates per output: ~ Binomial(6336, 1/256), mean 24.75
    assert load.min() > 0 and load.max() < 60


def test_sparse_describe_and_dim():
    p = make_projector("sparse", SHAPES, DIM, 2)
    assert p.describe() == {"kind": "sparse", "input_dim": INPUT_DIM, "dim": DIM, "seed": 2, "nnz": SparseJLProjector.NNZ}
    with pytest.raises(ValueError, match="divisible"):
        make_projector("sparse", SHAPES, 1022, 2)


# --- kronecker -----------------------------------------------------------------------------------------


@pytest.mark.parametrize("dim", [512, 1024])
def test_kronecker_is_the_two_sided_projection(dim):
    p = make_projector("kronecker", SHAPES, dim, 6)
    assert math.prod(p.factors) == dim and p.factors[0] <= p.factors[1]
    g = torch.Generator().manual_seed(0)
    for param in (0, 3):  # A (8, 64) and B (96, 8)
        rows, cols = SHAPES[param]
        p_out, p_in = p._matrices(param, "cpu")
        a, b = p_out.shape[1], p_in.shape[1]
        assert p_out.shape[0] == rows and p_in.shape[0] == cols and a * b == dim
        assert a <= b if rows <= cols else a >= b  # the larger side of the gradient gets the larger factor
        for m, k in ((p_out, a), (p_in, b)):  # ±1/sqrt(k) in float32, both signs
            assert torch.equal(m.abs().unique(), torch.tensor([1 / math.sqrt(k)])) and (m > 0).any() and (m < 0).any()
        grads = torch.randn(3, rows, cols, generator=g, dtype=torch.float64)
        expected = torch.stack([(p_out.double().T @ G @ p_in.double()).flatten() for G in grads])
        # the same thing as a Kronecker product acting on the row-major vec(G)
        kron = torch.kron(p_out.double(), p_in.double())  # (rows*cols, a*b)
        torch.testing.assert_close(grads.flatten(1) @ kron, expected)
        out = torch.zeros(3, dim)
        p.accumulate(out, param, grads.flatten(1).float())
        torch.testing.assert_close(out.double(), expected, rtol=1e-5, atol=1e-5)
        # through project: a vector nonzero on this parameter only
        x = torch.zeros(3, INPUT_DIM, dtype=torch.float64)
        x[:, OFFSETS[param]: OFFSETS[param] + rows * cols] = grads.flatten(1)
        torch.testing.assert_close(p.project(x).double(), expected, rtol=1e-5, atol=1e-5)
    # independent matrices for two parameters of the same shape
    assert not torch.equal(p._matrices(0, "cpu")[0], p._matrices(2, "cpu")[0])


def test_kronecker_refuses_non_2d_shapes():
    with pytest.raises(ValueError, match="2-D"):
        make_projector("kronecker", [(8, 64), (64,)], DIM, 0)
    with pytest.raises(ValueError, match="2-D"):
        make_projector("kronecker", [(2, 8, 64)], DIM, 0)
    make_projector("dense", [(8, 64), (64,), (2, 8, 4)], DIM, 0)  # the others take any shapes
    make_projector("sparse", [(8, 64), (64,), (2, 8, 4)], DIM, 0)


# --- factory -------------------------------------------------------------------------------------------


def test_unknown_projection_kind():
    with pytest.raises(ValueError, match="unknown projection"):
        make_projector("nope", SHAPES, DIM, 0)
    assert set(PROJECTORS) == set(KINDS)
    for kind in KINDS:
        described = make_projector(kind, [(2, 5)], 4, 5).describe()
        expected = {"kind": kind, "input_dim": 10, "dim": 4, "seed": 5}
        assert {k: described[k] for k in ("kind", "input_dim", "dim", "seed")} == expected
