"""The dense Rademacher projection: a pure function of (input_dim, dim, seed), and a JL map."""

from __future__ import annotations

import math
import subprocess
import sys

import numpy as np
import pytest
import torch

from gradsift.projection import DenseRademacherProjector, make_projector

INPUT_DIM, DIM = 5000, 1024  # 5 blocks, the last one partial


def fixed_vectors() -> torch.Tensor:
    # small integers: every product with ±1/32 and every partial sum is exact in float32, so the
    # result cannot depend on summation order (threads, BLAS) -- only on the matrix
    g = np.random.default_rng(123)
    return torch.from_numpy(g.integers(-3, 4, size=(3, INPUT_DIM)).astype(np.float32))


def test_deterministic_for_a_seed():
    x = torch.randn(4, INPUT_DIM, generator=torch.Generator().manual_seed(0))
    a, b = DenseRademacherProjector(INPUT_DIM, DIM, seed=7), DenseRademacherProjector(INPUT_DIM, DIM, seed=7)
    first = a.project(x)
    assert first.shape == (4, DIM) and first.dtype == torch.float32
    assert torch.equal(first, a.project(x))
    assert torch.equal(first, b.project(x))
    assert torch.equal(first, make_projector("dense", INPUT_DIM, DIM, 7).project(x))
    # float64 or float16 input: projected in float32
    assert a.project(x.double()).dtype == torch.float32


def test_identical_in_a_separate_process():
    x = fixed_vectors()
    here = DenseRademacherProjector(INPUT_DIM, DIM, seed=11).project(x).numpy().tobytes()
    code = (
        "import sys, numpy as np, torch\n"
        "from gradsift.projection import DenseRademacherProjector\n"
        f"g = np.random.default_rng(123)\n"
        f"x = torch.from_numpy(g.integers(-3, 4, size=(3, {INPUT_DIM})).astype(np.float32))\n"
        "torch.set_num_threads(2)\n"
        f"p = DenseRademacherProjector({INPUT_DIM}, {DIM}, seed=11, cache_bytes=0)\n"
        "sys.stdout.buffer.write(p.project(x).numpy().tobytes())\n"
    )
    there = subprocess.run([sys.executable, "-c", code], capture_output=True, check=True, timeout=120).stdout
    assert len(there) == 3 * DIM * 4
    assert there == here


def test_other_seed_other_matrix():
    a, b = DenseRademacherProjector(INPUT_DIM, DIM, seed=0), DenseRademacherProjector(INPUT_DIM, DIM, seed=1)
    for k in range(5):
        agree = (a.block(k) == b.block(k)).float().mean().item()
        assert 0.45 < agree < 0.55  # independent signs
    x = fixed_vectors()
    assert not torch.equal(a.project(x), b.project(x))


def test_blocks_do_not_depend_on_cache_or_order():
    cached = DenseRademacherProjector(INPUT_DIM, DIM, seed=3)
    uncached = DenseRademacherProjector(INPUT_DIM, DIM, seed=3, cache_bytes=0)
    assert uncached._cache is None and cached._cache is not None
    n_blocks = math.ceil(INPUT_DIM / DenseRademacherProjector.BLOCK_ROWS)
    for k in reversed(range(n_blocks)):  # generated in reverse order, each alone
        assert torch.equal(uncached.block(k), cached.block(k))
    assert torch.equal(cached.block(2), cached.block(2))
    assert cached.block(n_blocks - 1).shape == (INPUT_DIM - (n_blocks - 1) * DenseRademacherProjector.BLOCK_ROWS, DIM)
    x = torch.randn(2, INPUT_DIM, generator=torch.Generator().manual_seed(5))
    assert torch.equal(cached.project(x), uncached.project(x))
    # a smaller input keeps the first rows of the same matrix
    small = DenseRademacherProjector(1500, DIM, seed=3)
    assert torch.equal(small.block(0), cached.block(0))
    assert torch.equal(small.block(1), cached.block(1)[:476])


def test_entries_are_plus_minus_one_over_sqrt_dim():
    p = DenseRademacherProjector(INPUT_DIM, DIM, seed=0)
    matrix = torch.cat([p.block(k) for k in range(5)])
    assert matrix.shape == (INPUT_DIM, DIM)
    assert set(matrix.unique().tolist()) == {-1 / math.sqrt(DIM), 1 / math.sqrt(DIM)}
    signs = (matrix > 0).float()
    assert abs(signs.mean().item() - 0.5) < 0.005  # balanced overall
    assert (signs.mean(0) - 0.5).abs().max() < 0.05  # and in every column (5000 draws each)
    # columns are not copies of each other: near-orthogonal
    gram = matrix.T @ matrix  # diagonal = INPUT_DIM / DIM
    off = gram - torch.diag(torch.diag(gram))
    assert torch.allclose(torch.diag(gram), torch.full((DIM,), INPUT_DIM / DIM))
    assert off.abs().max() < 6 * math.sqrt(INPUT_DIM) / DIM


def test_preserves_norms_and_inner_products():
    """Johnson-Lindenstrauss: |<Px,Py> - <x,y>| is about sqrt((1 + cos^2) / dim) |x||y|."""
    generator = torch.Generator().manual_seed(42)
    base = torch.randn(20, INPUT_DIM, generator=generator)
    # pairs with known high similarity, and a few heavy-tailed/sparse vectors
    near = base[:5] + 0.3 * torch.randn(5, INPUT_DIM, generator=generator)
    sparse = torch.zeros(5, INPUT_DIM)
    sparse[torch.arange(5), torch.arange(5) * 997] = 1.0
    sparse[torch.arange(5), torch.arange(5) * 991 + 3] = -2.0
    x = torch.cat([base, near, sparse]).double()
    px = DenseRademacherProjector(INPUT_DIM, DIM, seed=9).project(x).double()

    norm_ratio = px.norm(dim=1) / x.norm(dim=1)
    bound = 4 / math.sqrt(DIM)  # 0.125; the norm's relative error has std ~ 1/sqrt(dim) ~ 0.031
    assert (norm_ratio - 1).abs().max() < bound
    assert abs(norm_ratio.mean().item() - 1) < 1.5 / math.sqrt(DIM)

    unit = x / x.norm(dim=1, keepdim=True)
    cos = unit @ unit.T
    pcos = (px @ px.T) / (x.norm(dim=1)[:, None] * x.norm(dim=1)[None, :])
    i, j = torch.triu_indices(len(x), len(x), offset=1)
    err = (pcos - cos)[i, j]
    assert err.abs().max() < 5 / math.sqrt(DIM)
    assert (err.abs() < 3 / math.sqrt(DIM)).float().mean() > 0.98
    assert err.std().item() < 1.5 / math.sqrt(DIM)
    # the designed near-duplicates stay near-duplicates, and unrelated vectors stay unrelated
    projected_cos = torch.nn.functional.cosine_similarity(px[:5], px[20:25])
    assert torch.allclose(projected_cos, torch.nn.functional.cosine_similarity(x[:5], x[20:25]), atol=0.05)


@pytest.mark.parametrize("broken", ["zeros", "same-columns"])
def test_jl_check_would_catch_a_broken_projector(broken):
    """The bounds above are not vacuous: a degenerate matrix violates them."""
    generator = torch.Generator().manual_seed(42)
    x = torch.randn(20, INPUT_DIM, generator=generator).double()
    if broken == "zeros":
        px = torch.zeros(20, DIM, dtype=torch.float64)
    else:
        column = DenseRademacherProjector(INPUT_DIM, DIM, seed=9).block(0)[:, :1]
        signs = torch.cat([column, column, column, column, column[: INPUT_DIM - 4096]]).double()
        px = (x @ signs).repeat(1, DIM)
    norm_ratio = px.norm(dim=1) / x.norm(dim=1)
    assert (norm_ratio - 1).abs().max() >= 4 / math.sqrt(DIM)


def test_unknown_projection_kind():
    with pytest.raises(ValueError, match="unknown projection"):
        make_projector("nope", 10, 4, 0)
    assert DenseRademacherProjector(10, 4, 5).describe() == {"kind": "dense", "input_dim": 10, "dim": 4, "seed": 5}
