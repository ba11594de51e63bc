"""How a store keeps its unit-norm feature rows (``gradsift build --dtype``), as pure functions.

- ``float16``: the rows themselves (2 bytes a dimension).
- ``int8``: each row scaled so its largest entry is 127 and rounded (1 byte a dimension), with one
  float32 per row, 1/||q||, that makes the decoded row unit-norm again.
- ``bit``: the signs, packed 8 to a byte (1/8 byte a dimension). For two sign vectors that disagree
  in h of d dimensions, cos(pi h / d) estimates the cosine of the rows they came from (random
  hyperplane hashing: the projection is random, so each sign is a random hyperplane's side).

A non-finite row (a NaN or infinite gradient) is kept as NaN: in the row itself for float16, in its
per-row scale otherwise, so that the store can find and set it aside when the build finishes.
"""

from __future__ import annotations

import math
from typing import get_args

import numpy as np
import torch

from gradsift.config import StoreDtype

DTYPES: tuple[str, ...] = get_args(StoreDtype)


def stored_shape(dtype: str, rows: int, dim: int) -> tuple[int, int]:
    return (rows, (dim + 7) // 8) if dtype == "bit" else (rows, dim)


def numpy_dtype(dtype: str) -> np.dtype:
    return np.dtype({"float16": np.float16, "int8": np.int8, "bit": np.uint8}[dtype])


def has_scale(dtype: str) -> bool:
    """Whether rows of this kind come with one float32 per row."""
    return dtype != "float16"


def encode_rows(rows: np.ndarray, dtype: str) -> tuple[np.ndarray, np.ndarray | None]:
    """(stored rows, per-row scale or None) of float32 unit-norm (or zero, or non-finite) rows."""
    rows = np.asarray(rows, dtype=np.float32)
    finite = np.isfinite(rows).all(axis=1)
    clean = np.where(finite[:, None], rows, 0.0)
    if dtype == "float16":
        return rows.astype(np.float16), None
    if dtype == "int8":
        peak = np.abs(clean).max(axis=1, keepdims=True)
        q = np.rint(clean * (127.0 / np.where(peak > 0, peak, 1.0))).astype(np.int8)
        norm = np.linalg.norm(q.astype(np.float32), axis=1)
        scale = np.where(norm > 0, 1.0 / np.where(norm > 0, norm, 1.0), 0.0)
    else:
        q = np.packbits(clean > 0, axis=1)
        scale = (np.abs(clean).max(axis=1) > 0).astype(np.float64)  # 1 for a real row, 0 for an empty one
    return q, np.where(finite, scale, np.nan).astype(np.float32)


def decode_rows(stored: np.ndarray, scale: np.ndarray | None, dtype: str, dim: int,
                out: torch.Tensor | None = None) -> np.ndarray:
    """float32 rows for scoring: unit rows for float16 and int8; for bit, the signs as +-1/sqrt(dim)
    (their dot product is 1 - 2h/d; ``sign_cosine`` turns it into a cosine estimate). With ``out``
    (a float32 tensor of at least as many rows), into it: a scan that decodes chunk after chunk
    into one buffer spends no time faulting in fresh pages (4x faster than a new array each time)."""
    n = stored.shape[0]
    rows = torch.empty(n, dim) if out is None else out[:n]
    if dtype == "bit":
        rows.copy_(torch.from_numpy(np.unpackbits(np.asarray(stored), axis=1, count=dim))).mul_(2).sub_(1)
        scale = np.asarray(scale, dtype=np.float32) / math.sqrt(dim)
    else:  # torch converts on every core, NumPy on one
        rows.copy_(torch.from_numpy(np.require(stored, requirements=["C", "W"])))
    if scale is not None:
        rows.mul_(torch.from_numpy(np.require(scale, np.float32, ["C", "W"]))[:, None])
    return rows.numpy()


def as_signs(rows: np.ndarray) -> np.ndarray:
    """Float rows as the +-1/sqrt(d) sign vectors a bit store would give (to compare with one)."""
    return decode_rows(*encode_rows(rows, "bit"), "bit", rows.shape[1])


def sign_cosine(dot):
    """The cosine estimate from the dot product of two +-1/sqrt(d) sign vectors: cos(pi h / d) with
    h / d = (1 - dot) / 2. Works on NumPy arrays and torch tensors alike."""
    return (dot * (math.pi / 2)).sin() if hasattr(dot, "sin") else np.sin(dot * (math.pi / 2))
