"""Compact rows (``build --dtype int8|bit``): the encodings by themselves, then int8 and 1-bit stores
built in the same gradient pass as a float16 one, their LESS scores against a direct computation from
the stored bytes, and their sizes."""

from __future__ import annotations

import math
import shutil

import numpy as np
import pytest
import torch
from helpers import pool_config, target_config

from gradsift.features.build import build_together
from gradsift.selection.methods import Less, Pool, Target
from gradsift.selection.scoring import checkpoint_weights
from gradsift.store.compact import decode_rows, encode_rows, sign_cosine
from gradsift.store.datastore import GradientStore, read_npy_rows
from gradsift.utils.errors import StoreMismatchError


def unit_rows(n: int, d: int, seed: int = 0) -> np.ndarray:
    x = np.random.default_rng(seed).standard_normal((n, d)).astype(np.float32)
    return x / np.linalg.norm(x, axis=1, keepdims=True)


def test_int8_rows_decode_to_unit_rows_within_rounding():
    x = unit_rows(50, 300)
    q, scale = encode_rows(x, "int8")
    assert q.dtype == np.int8 and np.abs(q).max(axis=1).tolist() == [127] * 50
    y = decode_rows(q, scale, "int8", 300)
    np.testing.assert_allclose(np.linalg.norm(y, axis=1), 1.0, rtol=1e-5)
    peak = np.abs(x).max(axis=1, keepdims=True)
    assert (np.abs(y - x) <= peak / 127 * 1.5).all()  # rounding error of about half a step, after renormalising
    assert (x * y).sum(axis=1).min() > 0.999


def test_bit_rows_are_packed_signs_and_their_cosine_estimate():
    x = unit_rows(4, 21)
    packed, scale = encode_rows(x, "bit")
    assert packed.shape == (4, 3) and packed.dtype == np.uint8
    signs = decode_rows(packed, scale, "bit", 21)
    np.testing.assert_array_equal(np.sign(signs), np.where(x > 0, 1.0, -1.0))
    # cos(pi h / d) from the Hamming distance h, by hand
    h = np.unpackbits(packed[0] ^ packed[1], count=21).sum()
    assert sign_cosine(signs[0] @ signs[1]) == pytest.approx(math.cos(math.pi * h / 21), abs=1e-6)
    assert sign_cosine(np.float64(1.0)) == pytest.approx(1.0) and sign_cosine(np.float64(-1.0)) == pytest.approx(-1.0)
    # on many random dimensions the estimate approaches the true cosine
    a, b = unit_rows(2, 20000, seed=3)
    b = 0.6 * a + 0.8 * b
    s = decode_rows(*encode_rows(np.stack([a, b]), "bit"), "bit", 20000)
    assert sign_cosine(s[0] @ s[1]) == pytest.approx(float(a @ b), abs=0.03)


@pytest.mark.parametrize("dtype", ["int8", "bit"])
def test_a_non_finite_row_is_marked_in_its_scale_and_empty_rows_stay_empty(dtype):
    x = unit_rows(3, 16)
    x[1, 4] = np.nan
    x[2] = 0
    _, scale = encode_rows(x, dtype)
    assert scale[0] > 0 and np.isnan(scale[1]) and scale[2] == 0


@pytest.fixture(scope="module")
def compact_stores(run, data):  # noqa: F811
    root = data["root"]
    pools = build_together([pool_config(run, data, root / f"pool-{d}", dtype=d) for d in ("float16", "int8", "bit")])
    targets = build_together([target_config(run, data, root / f"target-{d}", dtype=d) for d in ("float16", "bit")])
    return dict(zip(("float16", "int8", "bit"), pools)), dict(zip(("float16", "bit"), targets))


def less_scores(pool_store, target_store) -> torch.Tensor:
    (result,) = Less().score(Pool.from_store(pool_store), [Target.from_store(target_store)])
    return torch.as_tensor(result.scores)


def by_hand(pool_store, target_store, similarity) -> np.ndarray:
    """The paper's score from the raw stored arrays: sum_c w_c similarity, mean per subtask, max over them."""
    weights = checkpoint_weights([c["lr"] for c in pool_store.checkpoints])
    ok = target_store.ok_mask()
    subtasks = [r.subtask for r, keep in zip(target_store.index, ok) if keep]
    total = 0
    for c, w in zip(pool_store.checkpoints, weights):
        total = total + w * similarity(pool_store, target_store, c["name"], ok)
    names = sorted(set(subtasks))
    means = np.stack([total[:, [s == n for s in subtasks]].mean(axis=1) for n in names], axis=1)
    return means.max(axis=1)


def test_int8_scores_equal_a_direct_computation(compact_stores):
    pools, targets = compact_stores

    def cosine(pool, target, name, ok):
        q = np.asarray(pool.features(name), np.float64)
        t = np.asarray(target.features(name), np.float64)[ok]
        norms = np.linalg.norm(q, axis=1, keepdims=True)
        return (q / np.where(norms > 0, norms, 1)) @ t.T

    scores = less_scores(pools["int8"], targets["float16"]).numpy()
    scored = pools["int8"].ok_mask()
    np.testing.assert_allclose(scores[scored], by_hand(pools["int8"], targets["float16"], cosine)[scored], atol=2e-5)
    exact = less_scores(pools["float16"], targets["float16"]).numpy()
    assert np.abs(scores - exact)[scored].max() < 0.02  # int8 rounding barely moves a score


def test_bit_scores_equal_the_hamming_estimate(compact_stores):
    pools, targets = compact_stores
    dim = pools["bit"].manifest["projection"]["dim"]

    def hamming_cosine(pool, target, name, ok):
        p = np.asarray(pool.features(name))
        t = np.asarray(target.features(name))[ok]
        h = np.unpackbits(p[:, None, :] ^ t[None, :, :], axis=2, count=dim).sum(axis=2)
        return np.cos(np.pi * h / dim)

    scores = less_scores(pools["bit"], targets["bit"]).numpy()
    scored = pools["bit"].ok_mask()
    np.testing.assert_allclose(scores[scored], by_hand(pools["bit"], targets["bit"], hamming_cosine)[scored], atol=2e-5)
    # a float16 target compared with a bit pool is compared by its signs: the same scores
    np.testing.assert_allclose(less_scores(pools["bit"], targets["float16"]).numpy()[scored], scores[scored], atol=2e-6)


def test_compact_stores_are_smaller_by_their_bytes_per_dimension(compact_stores):
    pools, _ = compact_stores
    size = {d: sum(f.stat().st_size for f in (s.path / "features").iterdir()) for d, s in pools.items()}
    rows, dim = len(pools["float16"].index), pools["float16"].manifest["projection"]["dim"]
    assert size["float16"] == pytest.approx(2 * rows * dim * 2, rel=0.02)  # 2 checkpoints
    assert size["int8"] == pytest.approx(size["float16"] / 2, rel=0.02)
    assert size["bit"] == pytest.approx(size["float16"] / 16, rel=0.1)


@pytest.mark.parametrize("dtype", ["float16", "int8", "bit"])
def test_rows_read_from_the_file_equal_the_memory_mapped_ones(compact_stores, dtype):
    pool = compact_stores[0][dtype]
    name, n = pool.checkpoints[0]["name"], len(pool.index)
    scales = pool.scales(name)
    mapped = lambda which: decode_rows(pool.features(name)[which], None if scales is None else scales[which],  # noqa: E731
                                       dtype, pool.manifest["projection"]["dim"])
    buffers = pool.row_buffers(n)
    for which in (slice(None), slice(3, 11), slice(n - 2, n + 5), slice(n, None), slice(0, 0)):
        np.testing.assert_array_equal(pool.rows(name, which), mapped(which))  # bit for bit
        # and read into reused buffers, as a scan does (dirty from the previous slice)
        np.testing.assert_array_equal(pool.decode(*pool.stored_rows(name, which, buffers)), mapped(which))
    picks = np.array([n - 1, 0, 4])
    np.testing.assert_array_equal(pool.rows(name, picks), mapped(picks))


def test_a_truncated_feature_file_is_named(compact_stores, tmp_path):
    pool = compact_stores[0]["float16"]
    file = tmp_path / "cut.npy"
    shutil.copy(pool.path / "features" / f"{pool.checkpoints[0]['name']}.npy", file)
    with open(file, "r+b") as f:
        f.truncate(file.stat().st_size - 10)
    with pytest.raises(StoreMismatchError, match=r"cut\.npy: ends before row"):
        read_npy_rows(file, 0, None)
    with pytest.raises(StoreMismatchError, match=r"cut\.npy: ends before row"):  # into a buffer too
        read_npy_rows(file, 0, None, pool.row_buffers(len(pool.index))[0])


@pytest.mark.parametrize("dtype", ["float16", "int8", "bit"])
def test_non_finite_rows_are_found_across_read_chunks(compact_stores, dtype, tmp_path):
    """finish() reads the rows (or the scales) a chunk at a time into one buffer: rows poisoned in
    the first, a middle and the last chunk, chunks of 2 rows, are all flagged and zeroed."""
    shutil.copytree(compact_stores[0][dtype].path, tmp_path / "store")
    store = GradientStore.open(tmp_path / "store")
    n, poisoned = len(store.index), [0, 5, len(store.index) - 1]
    for checkpoint in store.checkpoints[:1]:
        values = store.scales(checkpoint["name"], mode="r+") if dtype != "float16" else \
            store.features(checkpoint["name"], mode="r+")
        values[poisoned] = np.nan
        values.flush()
    width = 4 if dtype != "float16" else 2 * store.manifest["projection"]["dim"]
    store._set_aside_non_finite_rows(chunk_bytes=2 * width)
    store = GradientStore.open(tmp_path / "store")
    assert np.flatnonzero(store.index.column("non_finite_gradient")).tolist() == poisoned
    for checkpoint in store.checkpoints:
        rows = store.rows(checkpoint["name"])
        assert np.isfinite(rows).all() and not rows[poisoned].any() and rows[[1, n - 2]].any()
