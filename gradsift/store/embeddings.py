"""The RDS+ embeddings of a store: one unit vector per row, written once by build, read by ``rds``.

On disk, in the store's folder (written after the store's rows are complete)::

    STORE/embeddings/
      embeddings.json        what they are: model (name, fingerprint), part, max_length, pooling, dim,
                             dtype, rows, status (``building`` or ``complete``) and, once complete, the
                             sha256 of the vectors file
      <part>.npy             (rows, dim) unit vectors as ``dtype``, row-major, memory-mappable
      progress.json          rows committed ({"start", "end", "rows"}); under torchrun each process
                             commits its shard to progress.shard-<rank>-of-<size>.json until merged

Rows are committed chunk by chunk in order, as a store's feature rows are: a killed build resumes
after the last committed chunk and ends with the same bytes. The vectors are what
``features.embeddings.embed`` computes; ``matches`` says whether they are the ones a selection asks
for (the same model, part and token limit). A store built before this module has none.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from gradsift.utils.errors import ConfigError, StoreMismatchError
from gradsift.utils.faults import stop_point
from gradsift.utils.files import atomic_write_json, checksums, read_json

EMBEDDINGS_DIR = "embeddings"
META = "embeddings.json"
EMBEDDINGS_FORMAT = 1
POOLING = "last hidden state, position-weighted mean over tokens, unit norm (RDS+)"
SETTINGS = ("model", "part", "max_length", "pooling", "dim", "dtype", "rows")  # what a rebuild must agree on


def folder(store: Path) -> Path:
    return Path(store) / EMBEDDINGS_DIR


def vectors_file(store: Path, meta: dict) -> Path:
    return folder(store) / f"{meta['part']}.npy"


def embeddings_meta(store: Path) -> dict | None:
    """What STORE's embeddings are (``embeddings.json``), complete or not; None for a store without them."""
    file = folder(store) / META
    return read_json(file) if file.is_file() else None


def matches(meta: dict | None, model: str, part: str, max_length: int, rows: int) -> bool:
    """Whether META describes complete embeddings that a selection with these settings can read as its own."""
    return (meta is not None and meta["status"] == "complete" and meta["model"]["name"] == model
            and (meta["part"], meta["max_length"], meta["rows"], meta["pooling"]) == (part, max_length, rows, POOLING))


def begin(store: Path, settings: dict) -> bool:
    """Lay out STORE's embeddings for SETTINGS (zero vectors, nothing committed) unless they are there;
    False if they are complete already. Embeddings of other settings are a StoreMismatchError."""
    meta = embeddings_meta(store)
    if meta is not None:
        differ = [k for k in SETTINGS if meta.get(k) != settings[k]]
        if differ:
            raise StoreMismatchError(f"{folder(store)} holds embeddings of other settings ({', '.join(differ)}); "
                                     "delete that folder and rerun `gradsift build` to embed the rows again")
        return meta["status"] != "complete"
    folder(store).mkdir(exist_ok=True)
    shape, dtype = (settings["rows"], settings["dim"]), np.dtype(settings["dtype"])
    np.lib.format.open_memmap(vectors_file(store, settings), mode="w+", dtype=dtype, shape=shape).flush()
    atomic_write_json(folder(store) / "progress.json", {"start": 0, "end": settings["rows"], "rows": 0})
    # last: its presence means the layout is whole
    atomic_write_json(folder(store) / META, {"format": EMBEDDINGS_FORMAT, "status": "building", **settings})
    return True


def shard_files(store: Path) -> list[Path]:
    return sorted(folder(store).glob("progress.shard-*-of-*.json"))


def begin_shard(store: Path, rank: int, size: int, start: int, end: int) -> str:
    """The progress file of this process's rows [start, end): progress.json for one process, else its own
    shard file, created from what progress.json committed unless a relaunch finds it."""
    found = shard_files(store)
    if size == 1:
        if found:
            raise ConfigError(f"{folder(store)} was being embedded by several processes ({found[0].name}); "
                              "relaunch it with torchrun")
        return "progress.json"
    name = f"progress.shard-{rank}-of-{size}.json"
    others = [p.name for p in found if not p.name.endswith(f"-of-{size}.json")]
    if others:
        raise ConfigError(f"{folder(store)} was being embedded by another number of processes ({others[0]}); "
                          "relaunch with that many, or delete its progress.shard-* files to redo those rows")
    if not (folder(store) / name).exists():
        done = read_json(folder(store) / "progress.json")["rows"]
        atomic_write_json(folder(store) / name, {"start": start, "end": end, "rows": min(end, max(start, done))})
    shard = read_json(folder(store) / name)
    if (shard["start"], shard["end"]) != (start, end):
        raise ConfigError(f"{folder(store) / name} holds rows {shard['start']}..{shard['end']}, not {start}..{end}: "
                          "relaunch on the same data with the same number of processes")
    return name


def committed(store: Path, progress_file: str) -> int:
    """The end of the rows committed in PROGRESS_FILE."""
    return read_json(folder(store) / progress_file)["rows"]


def write_rows(store: Path, start: int, rows: np.ndarray, progress_file: str) -> None:
    """Write vectors [start, start+len(rows)) and commit them: flushed before the progress file says so."""
    progress = read_json(folder(store) / progress_file)
    if start != progress["rows"]:
        raise RuntimeError(f"{folder(store)}: embeddings must be committed in order (next is {progress['rows']}, "
                           f"got {start})")
    meta = embeddings_meta(store)
    vectors = np.load(vectors_file(store, meta), mmap_mode="r+")
    vectors[start: start + len(rows)] = rows.astype(vectors.dtype)
    vectors.flush()
    del vectors
    stop_point("embeddings:rows-written")  # on disk, not yet committed
    atomic_write_json(folder(store) / progress_file, {**progress, "rows": start + len(rows)})
    stop_point("embeddings:rows-committed")


def finish(store: Path) -> None:
    """Merge the shards' progress (if any), check every row is committed, and mark the embeddings complete
    with the checksum of their vectors (run by one process once every row is written)."""
    meta = embeddings_meta(store)
    shards = [read_json(p) for p in shard_files(store)]
    if shards:
        short = [(s["start"], s["end"]) for s in shards if s["rows"] != s["end"]]
        if short or sum(s["end"] - s["start"] for s in shards) != meta["rows"]:
            raise RuntimeError(f"{folder(store)}: cannot merge shards, rows not all embedded: {short}")
        atomic_write_json(folder(store) / "progress.json", {"start": 0, "end": meta["rows"], "rows": meta["rows"]})
        for path in shard_files(store):
            path.unlink()
    if committed(store, "progress.json") != meta["rows"]:
        raise RuntimeError(f"{folder(store)}: cannot finish, {committed(store, 'progress.json')} of {meta['rows']} "
                           "rows embedded")
    name = vectors_file(store, meta).name
    atomic_write_json(folder(store) / META, {**meta, "status": "complete",
                                             "checksums": checksums(folder(store), [name])})


def check_layout(store: Path, meta: dict) -> list[str]:
    """What is wrong with the vectors file of META: missing, unreadable, or not (rows, dim) of its dtype."""
    file = vectors_file(store, meta)
    try:
        found = np.load(file, mmap_mode="r")
    except (OSError, ValueError) as e:
        return [f"{file}: embeddings file is missing or damaged ({e}); delete {folder(store)} and rerun "
                "`gradsift build` to embed the rows again"]
    if found.shape != (meta["rows"], meta["dim"]) or found.dtype != np.dtype(meta["dtype"]):
        return [f"{file}: embeddings of shape {found.shape} {found.dtype}, {META} says ({meta['rows']}, "
                f"{meta['dim']}) {meta['dtype']}; delete {folder(store)} and rerun `gradsift build`"]
    return []
