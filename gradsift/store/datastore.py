"""The gradient datastore: one folder per (model, warmup run, dataset, gradient kind, projection).

On disk (format version ``STORE_FORMAT``)::

    STORE/
      manifest.json            everything that decides whether two stores can be compared
      index.parquet            one row per example (``gradsift.data.index``): file, line, byte
                               span, id, source, subtask, tokens, label_tokens, chars, and whether
                               its gradient was non-finite (a format-1 store has index.jsonl)
      features/<checkpoint>.npy  the L2-normalised rows, memory-mappable, as the manifest's dtype
                               says (``gradsift.store.compact``): float16 (rows, dim), int8 (rows, dim)
                               or bit (rows, dim/8 packed signs)
      features/<checkpoint>.scale.npy  (rows,) float32, for int8 and bit rows
      progress.json            rows committed per checkpoint (rows are committed in order)
      lexical/                 BM25 indexes of the rows' record texts (``gradsift.store.lexical``),
                               written once the store is complete; absent in stores built before it
      embeddings/              each row's RDS+ embedding (``gradsift.store.embeddings``), written once
                               the store is complete; absent in stores built before it

Once complete, the manifest records the sha256 of the index and of every feature file (``checksums``).

Rows follow the data files in the order given, records in file order. A row whose status is not
"ok" stays all-zero and is never scored. Only this class reads or writes these files.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np

from gradsift.config import Part
from gradsift.data.index import StoreIndex
from gradsift.data.records import ExampleRef
from gradsift.store import embeddings
from gradsift.store.compact import decode_rows, encode_rows, has_scale, numpy_dtype, stored_shape
from gradsift.store.lexical import K1, B, open_lexical_index, write_lexical_index
from gradsift.utils.errors import ConfigError, StoreMismatchError
from gradsift.utils.faults import stop_point
from gradsift.utils.files import atomic_write_bytes, atomic_write_json, checksums, read_json

if TYPE_CHECKING:
    import bm25s

STORE_FORMAT = 2
READABLE_FORMATS = (1, 2)  # 1: the index as JSON lines

# Manifest fields that must agree between a pool store and a target store before they are compared.
COMPARABLE = ("model", "run", "checkpoints", "projection", "max_length", "parameters")


def _index_name(store_format: int) -> str:
    return "index.parquet" if store_format >= 2 else "index.jsonl"


def _feature_file(path: Path, checkpoint: str) -> Path:
    return Path(path) / "features" / f"{checkpoint}.npy"


def _scale_file(path: Path, checkpoint: str) -> Path:
    return Path(path) / "features" / f"{checkpoint}.scale.npy"


def read_npy_rows(file: Path, start: int, stop: int | None, out: np.ndarray | None = None) -> np.ndarray:
    """Rows [start, stop) of a .npy file (C order), read into memory: into the front of ``out`` (a
    flat array of the file's dtype) when given, so a scan reuses its buffers instead of faulting in
    fresh pages for every chunk."""
    with open(file, "rb") as f:
        version = np.lib.format.read_magic(f)
        header = np.lib.format.read_array_header_1_0 if version == (1, 0) else np.lib.format.read_array_header_2_0
        shape, fortran, dtype = header(f)
        if fortran:
            raise StoreMismatchError(f"{file}: Fortran-ordered array; a store's files are C-ordered")
        stop = shape[0] if stop is None else min(stop, shape[0])
        row = int(np.prod(shape[1:], dtype=np.int64))
        f.seek(start * row * dtype.itemsize, 1)
        count = max(0, stop - start) * row
        if out is None:
            rows = np.fromfile(f, dtype=dtype, count=count)
        else:
            rows = out[:count]
            rows = rows[: f.readinto(memoryview(rows).cast("B")) // dtype.itemsize]
        if rows.size != count:
            raise StoreMismatchError(f"{file}: ends before row {stop} (truncated?)")
        return rows.reshape((max(0, stop - start), *shape[1:]))


def store_layout(path: Path, manifest: dict) -> list[tuple[Path, tuple, np.dtype]]:
    """(file, shape, dtype) of every feature and scale file a store's manifest calls for."""
    rows, dim, dtype = manifest["rows"], manifest["projection"]["dim"], manifest.get("dtype", "float16")
    out = []
    for c in manifest["checkpoints"]:
        out.append((_feature_file(path, c["name"]), stored_shape(dtype, rows, dim), numpy_dtype(dtype)))
        if has_scale(dtype):
            out.append((_scale_file(path, c["name"]), (rows,), np.dtype(np.float32)))
    return out


def layout_problems(path: Path, manifest: dict) -> list[str]:
    """What is wrong with the store's feature files: missing, unreadable, or not the manifest's shape."""
    problems = []
    for file, shape, _ in store_layout(path, manifest):
        if not file.is_file():
            problems.append(f"{file}: feature file is missing; rebuild the store with `gradsift build`")
            continue
        try:
            found = np.load(file, mmap_mode="r").shape
        except (OSError, ValueError) as e:
            problems.append(f"{file}: feature file is truncated or damaged ({e}); rebuild the store")
            continue
        if found != shape:
            problems.append(f"{file}: feature file has shape {found}, the manifest says {shape}; rebuild the store")
    return problems


class GradientStore:
    def __init__(self, path: Path, manifest: dict, index: StoreIndex):
        self.path, self.manifest, self.index = Path(path), manifest, index

    # -- creating and opening ------------------------------------------------------------------
    @classmethod
    def create(cls, path: Path, manifest: dict, index: list[ExampleRef]) -> GradientStore:
        """Lay out a new, empty store (status "building") with zero-filled feature files."""
        path = Path(path)
        (path / "features").mkdir(parents=True, exist_ok=True)
        manifest = {**manifest, "format": STORE_FORMAT, "status": "building", "rows": len(index)}
        index = StoreIndex.from_refs(index)
        cls._write_index(path, index, STORE_FORMAT)
        for file, shape, dtype in store_layout(path, manifest):
            np.lib.format.open_memmap(file, mode="w+", dtype=dtype, shape=shape).flush()
        atomic_write_json(path / "progress.json", {c["name"]: 0 for c in manifest["checkpoints"]})
        atomic_write_json(path / "manifest.json", manifest)  # last: its presence means the layout is whole
        return cls(path, manifest, index)

    @classmethod
    def open(cls, path: Path) -> GradientStore:
        path = Path(path)
        if not (path / "manifest.json").exists():
            raise ConfigError(f"{path} is not a gradient store (no manifest.json); build one with `gradsift build`")
        manifest = read_json(path / "manifest.json")
        if manifest.get("format") not in READABLE_FORMATS:
            raise ConfigError(f"{path}: store format {manifest.get('format')} is not one this gradsift reads "
                              f"({READABLE_FORMATS}); upgrade gradsift or rebuild the store")
        index_file = path / _index_name(manifest["format"])
        try:
            index = StoreIndex.read(path)
        except (OSError, ValueError) as e:  # pyarrow's errors are OSError or ValueError subclasses
            raise ConfigError(f"{index_file}: cannot read the store's index ({e}); rebuild the store") from None
        if len(index) != manifest["rows"]:
            raise ConfigError(f"{index_file}: {len(index)} rows, the manifest says {manifest['rows']}")
        problems = layout_problems(path, manifest)  # every feature file there, whole, with the manifest's shape
        if problems:
            raise ConfigError(problems[0])
        return cls(path, manifest, index)

    # -- reading ---------------------------------------------------------------------------------
    @property
    def name(self) -> str:
        return self.path.name

    @property
    def checkpoints(self) -> list[dict]:
        return self.manifest["checkpoints"]

    @property
    def complete(self) -> bool:
        return self.manifest["status"] == "complete"

    @property
    def dtype(self) -> str:
        return self.manifest.get("dtype", "float16")

    def features(self, checkpoint: str, mode: str = "r") -> np.memmap:
        """The stored rows as they are on disk (see ``dtype``); ``rows`` decodes them."""
        return np.load(_feature_file(self.path, checkpoint), mmap_mode=mode)

    def scales(self, checkpoint: str, mode: str = "r") -> np.memmap | None:
        return np.load(_scale_file(self.path, checkpoint), mmap_mode=mode) if has_scale(self.dtype) else None

    def rows(self, checkpoint: str, which=slice(None)) -> np.ndarray:
        """Rows ``which`` (a slice or an index array) as float32 for scoring."""
        return self.decode(*self.stored_rows(checkpoint, which))

    def stored_rows(self, checkpoint: str, which=slice(None), into: tuple | None = None) -> tuple[np.ndarray, np.ndarray | None]:
        """Rows ``which`` as stored, and their scales (None for float16): ``decode`` makes them float32.
        A slice is read from the file, not through a memory map: mapped pages stay in the process's
        resident memory until the kernel needs them, so scanning a large store that way looks like
        holding all of it. ``into``: (rows, scales) buffers from ``row_buffers`` to read a slice into."""
        rows_out, scales_out = into or (None, None)
        if isinstance(which, slice) and which.step in (None, 1):
            read = lambda file, out: read_npy_rows(file, which.start or 0, which.stop, out)  # noqa: E731
        else:  # picked rows: gathered from the map, no buffer
            read = lambda file, out: np.load(file, mmap_mode="r")[which]  # noqa: E731
        scales = read(_scale_file(self.path, checkpoint), scales_out) if has_scale(self.dtype) else None
        return read(_feature_file(self.path, checkpoint), rows_out), scales

    def row_buffers(self, rows: int) -> tuple[np.ndarray, np.ndarray | None]:
        """Flat (stored rows, scales) buffers that hold ``rows`` rows as stored, for ``stored_rows``."""
        width = stored_shape(self.dtype, 1, self.manifest["projection"]["dim"])[1]
        return (np.empty(rows * width, numpy_dtype(self.dtype)),
                np.empty(rows, np.float32) if has_scale(self.dtype) else None)

    def decode(self, stored: np.ndarray, scales: np.ndarray | None, out=None) -> np.ndarray:
        return decode_rows(stored, scales, self.dtype, self.manifest["projection"]["dim"], out)

    def ok_mask(self) -> np.ndarray:
        return self.index.ok_mask()

    # -- writing (resumable) ---------------------------------------------------------------------
    def committed(self, progress_file: str = "progress.json") -> dict[str, int]:
        """The end of the committed rows per checkpoint (in a shard's file: of that shard's rows)."""
        return {k: v for k, v in read_json(self.path / progress_file).items() if k in self._names()}

    def _names(self) -> set[str]:
        return {c["name"] for c in self.checkpoints}

    # A process of a sharded build commits its rows [start, end) to its own progress file; the main
    # process merges them into progress.json once every shard is written.
    def shard_files(self) -> list[Path]:
        return sorted(self.path.glob("progress.shard-*-of-*.json"))

    def begin_shard(self, rank: int, size: int, start: int, end: int) -> str:
        """This process's progress file for rows [start, end), created (from whatever progress.json
        already holds) unless a relaunch finds it."""
        name = f"progress.shard-{rank}-of-{size}.json"
        others = [p.name for p in self.shard_files() if not p.name.endswith(f"-of-{size}.json")]
        if others:
            raise ConfigError(f"{self.path} was being built by another number of processes ({others[0]}); relaunch "
                              "with that many, or delete its progress.shard-* files to redo those rows")
        if not (self.path / name).exists():
            done = self.committed()
            atomic_write_json(self.path / name, {"start": start, "end": end,
                                                 **{c: min(end, max(start, done[c])) for c in sorted(self._names())}})
        shard = read_json(self.path / name)
        if (shard["start"], shard["end"]) != (start, end):
            raise ConfigError(f"{self.path / name} holds rows {shard['start']}..{shard['end']}, not {start}..{end}: "
                              "relaunch on the same data with the same number of processes")
        return name

    def merge_shards(self) -> None:
        """progress.json from the shard files, once each has committed all of its rows."""
        shards = [read_json(p) for p in self.shard_files()]
        short = [(s["start"], s["end"]) for s in shards for c in self._names() if s[c] != s["end"]]
        if short or sum(s["end"] - s["start"] for s in shards) != len(self.index):
            raise RuntimeError(f"{self.path}: cannot merge shards, rows not all written: {short}")
        atomic_write_json(self.path / "progress.json", {c: len(self.index) for c in self.committed()})
        for path in self.shard_files():
            path.unlink()

    def write_rows(self, checkpoint: str, start: int, rows: np.ndarray, progress_file: str = "progress.json") -> None:
        """Write rows [start, start+len(rows)) and commit them: after this returns they are durable, and
        the progress file (rewritten atomically after the data is flushed) never claims rows not on disk."""
        progress = read_json(self.path / progress_file)
        if start != progress[checkpoint]:
            raise RuntimeError(f"{self.path}: rows of {checkpoint} must be committed in order "
                               f"(next is {progress[checkpoint]}, got {start})")
        stored, scale = encode_rows(rows, self.dtype)
        features = self.features(checkpoint, mode="r+")
        features[start: start + len(rows)] = stored
        features.flush()
        del features
        if scale is not None:
            scales = self.scales(checkpoint, mode="r+")
            scales[start: start + len(rows)] = scale
            scales.flush()
            del scales
        stop_point("store:rows-written")  # on disk, not yet committed
        progress[checkpoint] = start + len(rows)
        atomic_write_json(self.path / progress_file, progress)
        stop_point("store:rows-committed")

    def finish(self) -> None:
        progress = self.committed()
        short = {c: n for c, n in progress.items() if n != len(self.index)}
        if short:
            raise RuntimeError(f"{self.path}: cannot finish, checkpoints not fully written: {short}")
        self._set_aside_non_finite_rows()
        self.manifest["status"] = "complete"
        self.manifest["checksums"] = checksums(self.path, self.stored_files())
        atomic_write_json(self.path / "manifest.json", self.manifest)

    def _set_aside_non_finite_rows(self, chunk_bytes: int = 1 << 26) -> None:
        """Rows whose feature holds a NaN or infinity (a non-finite gradient) get status
        "non_finite_gradient" and become zero, so no score ever sees them. The index is rewritten before
        the rows are zeroed: a build killed in between finds the status already recorded."""
        found = set()
        # Read into one buffer of chunk_bytes, not mapped (see stored_rows). Compact rows keep a
        # non-finite row's NaN in its scale, float16 rows in the row.
        file_of, width, dtype = ((_scale_file, 1, np.dtype(np.float32)) if has_scale(self.dtype) else
                                 (_feature_file, self.manifest["projection"]["dim"], numpy_dtype(self.dtype)))
        chunk = max(1, chunk_bytes // (dtype.itemsize * width))
        buffer = np.empty(chunk * width, dtype)
        for checkpoint in self.checkpoints:
            file = file_of(self.path, checkpoint["name"])
            for start in range(0, len(self.index), chunk):
                block = read_npy_rows(file, start, start + chunk, buffer)
                found.update((start + np.flatnonzero(~np.isfinite(block.reshape(len(block), -1)).all(axis=1))).tolist())
        rows = sorted(found)
        if not self.index.column("non_finite_gradient")[rows].all():  # not yet recorded (a rerun finds it so)
            self.index = self.index.with_non_finite(rows)
            self._write_index(self.path, self.index, self.manifest["format"])
        if rows:
            for checkpoint in self.checkpoints:
                for values in (self.features(checkpoint["name"], mode="r+"), self.scales(checkpoint["name"], mode="r+")):
                    if values is not None:
                        values[rows] = 0
                        values.flush()
        flagged = self.index.take(np.flatnonzero(self.index.column("non_finite_gradient")))
        self.manifest["counts"] = {**self.manifest["counts"], "ok": int(self.ok_mask().sum()),
                                   "non_finite_gradient": len(flagged)}
        self.manifest["non_finite_gradient"] = [f"{ref.file}:{ref.line}" for ref in flagged]

    @staticmethod
    def _write_index(path: Path, index: StoreIndex, store_format: int) -> None:
        data = index.to_parquet() if store_format >= 2 else index.to_jsonl()
        atomic_write_bytes(path / _index_name(store_format), data)

    def stored_files(self) -> list[str]:
        """The store's data files, relative to its folder: the index, the feature (and scale) files."""
        return [_index_name(self.manifest["format"])] + [str(f.relative_to(self.path))
                                                          for f, _, _ in store_layout(self.path, self.manifest)]

    # -- the lexical index (``gradsift.store.lexical``) -------------------------------------------
    def write_lexical_index(self) -> bool:
        """Index each row's record text for BM25 once the rows are complete; False if it already was."""
        if not self.complete:
            raise RuntimeError(f"{self.path}: the lexical index is written once the store is complete")
        return write_lexical_index(self.path, self.index)

    def lexical_index(self, part: Part, k1: float = K1, b: float = B) -> bm25s.BM25 | None:
        """The stored BM25 index of PART (a memory-mapped ``bm25s.BM25``), or None if the store has none
        made with these k1 and b."""
        return open_lexical_index(self.path, part, len(self.index), k1, b)

    # -- the RDS+ embeddings (``gradsift.store.embeddings``), written by build's embedding pass ---------
    def embeddings_meta(self) -> dict | None:
        return embeddings.embeddings_meta(self.path)

    def has_embeddings(self, model: str, part: Part, max_length: int) -> bool:
        """Whether the store holds complete embeddings of PART by MODEL at MAX_LENGTH tokens."""
        return embeddings.matches(self.embeddings_meta(), model, part, max_length, len(self.index))

    def embedding_rows(self, which=slice(None)) -> np.ndarray:
        """Stored vectors ``which`` (a slice, read from the file as ``stored_rows`` does, or an index array)
        as float32."""
        file = embeddings.vectors_file(self.path, self.embeddings_meta())
        if isinstance(which, slice) and which.step in (None, 1):
            rows = read_npy_rows(file, which.start or 0, which.stop)
        else:
            rows = np.load(file, mmap_mode="r")[which]
        return rows.astype(np.float32, copy=False)

    def begin_embeddings(self, settings: dict) -> bool:
        """Lay out embeddings of SETTINGS unless there (one process); False if they are complete."""
        if not self.complete:
            raise RuntimeError(f"{self.path}: embeddings are written once the store is complete")
        return embeddings.begin(self.path, settings)

    def begin_embedding_shard(self, rank: int, size: int, start: int, end: int) -> str:
        return embeddings.begin_shard(self.path, rank, size, start, end)

    def committed_embeddings(self, progress_file: str) -> int:
        return embeddings.committed(self.path, progress_file)

    def write_embeddings(self, start: int, rows: np.ndarray, progress_file: str) -> None:
        embeddings.write_rows(self.path, start, rows, progress_file)

    def finish_embeddings(self) -> None:
        embeddings.finish(self.path)

    # -- comparing -------------------------------------------------------------------------------
    def check_comparable(self, other: GradientStore) -> None:
        """Refuse to compare stores whose model, run, checkpoints, projection or parameters differ."""
        differ = [k for k in COMPARABLE if self.manifest.get(k) != other.manifest.get(k)]
        if differ:
            shown = "; ".join(f"{k} {json.dumps(self.manifest.get(k))[:80]} vs {json.dumps(other.manifest.get(k))[:80]}"
                              for k in differ)
            raise StoreMismatchError(f"stores {self.path} and {other.path} cannot be compared: they differ in {shown}")
        for store in (self, other):
            if not store.complete:
                raise StoreMismatchError(f"store {store.path} is not complete; finish it with `gradsift build`")
