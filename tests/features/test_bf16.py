"""The GPU's dtype on a CPU: a store built with the model in bfloat16 (feature math in float32, as on a
GPU) stays within a stated tolerance of the float32 build, so CI exercises the GPU path."""

from __future__ import annotations

import numpy as np
import pytest
from helpers import pool_config

from gradsift.features.build import build

# bfloat16 keeps 8 bits of mantissa: each row's direction moves a little. Measured on this tiny model:
# mean cosine with the float32 row 0.9999, worst row 0.9995; the stated tolerance leaves 10x room.
MEAN_COSINE, WORST_COSINE = 0.999, 0.995


@pytest.fixture(scope="module")
def stores(run, data, tmp_path_factory):
    root = tmp_path_factory.mktemp("bf16")
    return {dtype: build(pool_config(run, data, root / dtype, model_dtype=dtype)) for dtype in ("float32", "bfloat16")}


def test_bfloat16_features_stay_close_to_float32(stores):
    full, half = stores["float32"], stores["bfloat16"]
    assert full.manifest["model_dtype"] == "float32" and half.manifest["model_dtype"] == "bfloat16"
    ok = full.ok_mask()
    assert (half.ok_mask() == ok).all()
    for c in full.checkpoints:
        a = np.asarray(full.features(c["name"]), np.float32)[ok]
        b = np.asarray(half.features(c["name"]), np.float32)[ok]
        cosines = (a * b).sum(1) / (np.linalg.norm(a, axis=1) * np.linalg.norm(b, axis=1))
        assert cosines.mean() >= MEAN_COSINE and cosines.min() >= WORST_COSINE, (cosines.mean(), cosines.min())
        assert not np.array_equal(a, b)  # the bfloat16 pass did run in bfloat16


def test_stores_of_either_dtype_compare(stores):
    stores["float32"].check_comparable(stores["bfloat16"])  # the same model, run and projection
