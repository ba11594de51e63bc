"""Atomic file writes (a reader sees the old file or the new one, never half of either) and file hashes."""

from __future__ import annotations

import glob
import hashlib
import json
import os
import shutil
import tempfile
from pathlib import Path

from gradsift.utils.errors import DataError
from gradsift.utils.faults import stop_point

# In the name of every temporary file or folder a stage writes before renaming it into place: what a
# killed writer leaves behind, removed by the next writer of the folder (``remove_partial_writes``).
PARTIAL = ".gradsift-tmp-"


def partial_name(name: str) -> str:
    return f".{name}{PARTIAL}"


def remove_partial_writes(folder: Path) -> list[Path]:
    """Delete the temporary files and folders a killed writer left in FOLDER and its direct subfolders
    (run by the folder's lock holder: no live writer owns them)."""
    found = sorted(set(Path(folder).glob(f"*{PARTIAL}*")) | set(Path(folder).glob(f"*/*{PARTIAL}*")))
    for path in found:
        shutil.rmtree(path) if path.is_dir() else path.unlink(missing_ok=True)
    return found


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


def atomic_write(path: Path, write) -> None:
    """Write PATH through a temporary file beside it (``write(file)`` fills it), synced, then renamed
    into place: PATH is whole or absent. A failed write leaves no temporary file."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=partial_name(path.name))
    try:
        os.fchmod(fd, 0o666 & ~_umask())  # mkstemp makes 0600: outputs get the mode any new file would
        with os.fdopen(fd, "wb") as f:
            write(f)
            f.flush()
            os.fsync(f.fileno())
        stop_point(f"replace:{path.name}")
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def atomic_write_bytes(path: Path, data: bytes) -> None:
    atomic_write(path, lambda f: f.write(data))


def atomic_write_chunks(path: Path, chunks) -> str:
    """Write the byte strings of CHUNKS one after the other, atomically (a large output is never whole
    in memory); returns the file's sha256."""
    digest = hashlib.sha256()

    def write(f) -> None:
        for chunk in chunks:
            digest.update(chunk)
            f.write(chunk)

    atomic_write(path, write)
    return digest.hexdigest()


def atomic_copy(source: Path, path: Path) -> None:
    """Copy SOURCE to PATH atomically (PATH is whole or absent)."""

    def copy(f) -> None:
        with open(source, "rb") as src:
            shutil.copyfileobj(src, f)

    atomic_write(path, copy)


def atomic_write_json(path: Path, obj) -> None:
    atomic_write_bytes(path, (json.dumps(obj, indent=2, ensure_ascii=False) + "\n").encode())


# json.dumps keeps these raw, but str.splitlines() breaks lines at them; escaped, a string is the same JSON.
_LINE_BREAKS = str.maketrans({"\x85": "\\u0085", "\u2028": "\\u2028", "\u2029": "\\u2029"})


def atomic_write_jsonl(path: Path, records) -> None:
    """One JSON record per line, whichever way a reader splits lines."""
    text = "".join(json.dumps(record, ensure_ascii=False) + "\n" for record in records)
    atomic_write_bytes(path, text.translate(_LINE_BREAKS).encode())


def slug(text: str) -> str:
    """TEXT as a name for a file or an HTML id: each character other than a letter, a digit, ``-``, ``_`` or
    ``.`` becomes ``-``, one for one (for a model path, pass ``Path(model).name``)."""
    return "".join(c if c.isalnum() or c in "-_." else "-" for c in text)


def read_json(path: Path):
    return json.loads(Path(path).read_text())


def file_sha256(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        while block := f.read(1 << 22):
            h.update(block)
    return h.hexdigest()


DATA_SUFFIXES = (".jsonl.gz", ".json.gz", ".jsonl", ".json", ".parquet", ".arrow")  # compound ones first


def data_suffix(path: Path) -> str:
    """The data format suffix of a file name (``.jsonl.gz`` counts as one), or "" for another file."""
    return next((s for s in DATA_SUFFIXES if Path(path).name.endswith(s)), "")


def data_stem(path: Path) -> str:
    """A data file's name without its format suffix (``pool.jsonl.gz`` -> ``pool``)."""
    name, suffix = Path(path).name, data_suffix(path)
    return name[: len(name) - len(suffix)] if suffix else Path(path).stem


def require_data_file(path: Path) -> None:
    """A data file given by the user must be a file: a clear error for a folder or a missing path."""
    if Path(path).is_dir():
        raise DataError(path, 0, "is a directory, not a data file")
    if not Path(path).is_file():
        raise DataError(path, 0, "no such data file")


def saved_dataset(folder: Path) -> bool:
    """Whether FOLDER was written by Hugging Face datasets' ``save_to_disk`` (its state.json lists its shards)."""
    return (Path(folder) / "state.json").is_file()


def data_files(paths) -> list[Path]:
    """The data files that the user's paths name, resolved, in order: a file as it is; a folder written by
    Hugging Face datasets' ``save_to_disk``, its Arrow shards in the order its state.json lists them;
    another folder, its data files (``DATA_SUFFIXES``) sorted by name (a folder of the Hub's Parquet
    shards); a quoted glob pattern, the files it matches, sorted."""
    out = []
    for given in map(Path, paths):
        if given.is_dir():
            if saved_dataset(given):
                state = json.loads((given / "state.json").read_text())
                out += [given / f["filename"] for f in state.get("_data_files", [])]
                continue
            found = sorted(p for p in given.iterdir() if p.is_file() and data_suffix(p))
            if not found:
                raise DataError(given.resolve(), 0, "is a directory with no data files (" + ", ".join(DATA_SUFFIXES) + ")")
            out += found
        elif not given.exists() and any(c in str(given) for c in "*?["):
            found = sorted(Path(p) for p in glob.glob(str(given)) if Path(p).is_file())
            if not found:
                raise DataError(given, 0, "matches no file")
            out += found
        else:
            out.append(given)
    return [p.resolve() for p in out]


def checksums(folder: Path, names) -> dict[str, str]:
    """sha256 of each named file of FOLDER, keyed by its name: what a finished stage records of its own
    outputs so that ``gradsift inspect --verify`` can tell later whether they are still what was written."""
    return {name: file_sha256(Path(folder) / name) for name in names}
