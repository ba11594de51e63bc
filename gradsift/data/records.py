"""Instruction data: reading pool and target files, chat formatting, and label masking.

Records are JSON Lines, a JSON array (``.json``) or Parquet rows (``.parquet``) in one of three formats:

- ``{"messages": [{"role": ..., "content": ...}, ...]}`` (tulu / open-instruct)
- ``{"instruction": ..., "input": ..., "output": ...}`` (Alpaca)
- ``{"prompt": ..., "completion": ...}``

with optional ``id``, ``source`` and (for targets) ``subtask``. Each example is rendered with the
model's chat template (``FALLBACK_CHAT_TEMPLATE`` when it has none); only assistant tokens carry a
label, and the loss is the mean over an example's label tokens. A JSON-array record or a Parquet row
has no byte span of its own: it is re-read by its 1-based number and written back as one-line JSON.
"""

from __future__ import annotations

import json
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path

import numpy as np

from gradsift.config import Part
from gradsift.utils.errors import DataError
from gradsift.utils.files import require_data_file

ROLES = ("system", "user", "assistant")


@dataclass(frozen=True, slots=True)  # slots: a selection of a 10M-row pool makes 500k of them
class ExampleRef:
    """Where one example lives: enough to re-read it and to write it back verbatim."""

    file: str  # path as given by the user
    line: int  # 1-based line (JSONL) or record number (JSON array, Parquet row)
    offset: int  # byte offset of the record in the file (-1 for JSON arrays and Parquet)
    length: int  # byte length of the record (without its newline)
    id: str
    source: str
    subtask: str
    tokens: int = 0  # after truncation
    label_tokens: int = 0  # tokens that carry a loss; 0 means the example is skipped, never scored
    chars: int = 0  # characters of all its turns' contents: its length before any tokenizer
    non_finite_gradient: bool = False  # its gradient held a NaN or infinity at some checkpoint (set by build)

    @property
    def status(self) -> str:
        return str(example_status(self.label_tokens, self.non_finite_gradient))


STATUSES = ("ok", "no_label_tokens", "non_finite_gradient")


def status_codes(label_tokens, non_finite_gradient) -> np.ndarray:
    """Each example's status as its position in STATUSES (0, "ok", is scored), elementwise on the
    columns of a whole index: one byte a row, where the names would take 76."""
    codes = np.where(np.asarray(non_finite_gradient, dtype=bool), np.int8(2), np.int8(0))
    codes[np.asarray(label_tokens) == 0] = 1  # no label tokens: never scored, so never a gradient to flag
    return codes


def example_status(label_tokens, non_finite_gradient):
    """An example's status by name, elementwise on arrays too."""
    return np.asarray(STATUSES)[status_codes(label_tokens, non_finite_gradient)]


@dataclass(frozen=True)
class BadRecord:
    file: str
    line: int
    problem: str


@dataclass
class DataFile:
    path: str
    sha256: str
    records: int


def _text(value, field: str) -> str:
    if not isinstance(value, str):
        raise ValueError(f"field {field!r} must be a string, got {type(value).__name__}")
    return value


def to_messages(record: object) -> list[dict[str, str]]:
    """Normalise a record of any supported format to chat messages; ValueError says what is wrong."""
    if not isinstance(record, dict):
        raise ValueError(f"a record must be a JSON object, got {type(record).__name__}")
    if "messages" in record:
        messages = record["messages"]
        if not isinstance(messages, list) or not messages:
            raise ValueError("'messages' must be a non-empty list")
        out = []
        for k, m in enumerate(messages):
            if not isinstance(m, dict) or "role" not in m or "content" not in m:
                raise ValueError(f"messages[{k}] must be an object with 'role' and 'content'")
            if m["role"] not in ROLES:
                raise ValueError(f"messages[{k}] has role {m['role']!r}; expected one of {ROLES}")
            out.append({"role": m["role"], "content": _text(m["content"], f"messages[{k}].content")})
    elif "instruction" in record and "output" in record:
        prompt = _text(record["instruction"], "instruction")
        extra = _text(record.get("input") or "", "input")
        user = f"{prompt}\n\n{extra}" if extra else prompt
        out = [{"role": "user", "content": user}, {"role": "assistant", "content": _text(record["output"], "output")}]
    elif "prompt" in record and "completion" in record:
        out = [
            {"role": "user", "content": _text(record["prompt"], "prompt")},
            {"role": "assistant", "content": _text(record["completion"], "completion")},
        ]
    else:
        raise ValueError(
            "unknown record format: expected 'messages', 'instruction'+'output', or 'prompt'+'completion'; "
            f"found keys {sorted(record)[:8]}"
        )
    if not any(m["role"] == "assistant" for m in out):
        raise ValueError("no assistant message: nothing to compute a loss on")
    for k, m in enumerate(out):
        if m["role"] == "assistant" and not m["content"].strip():
            raise ValueError(f"assistant message {k} is empty: nothing to compute a loss on")
    return out


def _dumps(record: object) -> bytes:
    # default=str: Parquet cells may be dates, decimals or bytes, which have no JSON type
    return json.dumps(record, ensure_ascii=False, default=str).encode()


def _row_bytes(row: dict) -> bytes:
    """A Parquet row as JSON. A null cell is an absent field: files mixing formats (or with an
    optional ``id``) have every format's columns, null where a row does not use them."""
    return _dumps({k: v for k, v in row.items() if v is not None})


def _json_array(path: Path) -> list:
    try:
        items = json.loads(path.read_bytes())
    except ValueError as e:  # JSONDecodeError, UnicodeDecodeError
        raise DataError(path, 0, f"not valid JSON: {e}") from None
    if not isinstance(items, list):
        raise DataError(path, 1, "a .json data file must hold a JSON array of records")
    return items


def _parquet_rows(path: Path) -> Iterator[tuple[int, dict]]:
    """(row number, row) of a Parquet file, streamed one row group's batch at a time."""
    import pyarrow as pa  # imported here: only Parquet input pays its import time
    import pyarrow.parquet as pq

    line = 0  # rows read so far
    try:
        for batch in pq.ParquetFile(path).iter_batches():
            for row in batch.to_pylist():
                line += 1
                yield line, row
    except pa.ArrowException as e:  # before any row it is the file that is unreadable, not a row
        raise DataError(path, line + 1 if line else 0, f"cannot read Parquet: {e}") from None


def _iter_raw(path: Path) -> Iterator[tuple[int, int, bytes]]:
    """(line number, byte offset, raw record bytes) for every non-blank record of a file."""
    if path.suffix == ".json":
        for k, item in enumerate(_json_array(path), 1):
            yield k, -1, _dumps(item)
        return
    if path.suffix == ".parquet":
        for k, row in _parquet_rows(path):
            yield k, -1, _row_bytes(row)
        return
    offset = 0
    with open(path, "rb") as f:
        for number, raw in enumerate(f, 1):
            record = raw.rstrip(b"\r\n")
            if record.strip():
                yield number, offset, record
            offset += len(raw)


def scan_file(path: Path, skip_bad: bool) -> Iterator[tuple[ExampleRef, list[dict] | None, BadRecord | None]]:
    """Parse every record of one file, yielding (ref, messages, None) or (ref, None, bad) when skipping.

    Without ``skip_bad`` a malformed record raises DataError naming the file and line."""
    require_data_file(path)
    for line, offset, raw in _iter_raw(path):
        try:
            record = json.loads(raw)
            messages = to_messages(record)
            rid = record.get("id", f"{path.stem}:{line}")
            ref = ExampleRef(
                file=str(path), line=line, offset=offset, length=len(raw),
                id=str(rid), source=str(record.get("source", path.stem)), subtask=str(record.get("subtask", "")),
                chars=sum(len(m["content"]) for m in messages),
            )
        except (ValueError, UnicodeDecodeError) as e:  # JSONDecodeError is a ValueError
            problem = (f"not valid UTF-8: {e}" if isinstance(e, UnicodeDecodeError) else
                       f"not valid JSON: {e}" if isinstance(e, json.JSONDecodeError) else str(e))
            if not skip_bad:
                raise DataError(path, line, problem) from None
            yield None, None, BadRecord(str(path), line, problem)
            continue
        yield ref, messages, None


@lru_cache(maxsize=2)
def _record_reader(path: str, size: int, mtime_ns: int) -> Callable[[int], bytes]:
    """Record number -> bytes for a JSON array or Parquet file, parsed once and kept while it is one
    of the last two files read (size and mtime in the key: an edited file is parsed anew)."""
    if Path(path).suffix != ".parquet":
        items = _json_array(Path(path))
        return lambda line: _dumps(items[line - 1])
    import pyarrow as pa
    import pyarrow.parquet as pq

    try:
        table = pq.read_table(path)  # columnar: far smaller than the rows as Python objects
    except pa.ArrowException as e:
        raise DataError(path, 0, f"cannot read Parquet: {e}") from None
    return lambda line: _row_bytes(table.slice(line - 1, 1).to_pylist()[0])


def read_record_bytes(ref: ExampleRef) -> bytes:
    """The record exactly as it stands in its source file (as one-line JSON for a JSON array or Parquet)."""
    if ref.offset < 0:
        stat = Path(ref.file).stat()
        return _record_reader(ref.file, stat.st_size, stat.st_mtime_ns)(ref.line)
    with open(ref.file, "rb") as f:
        f.seek(ref.offset)
        return f.read(ref.length)


def read_records(refs: list[ExampleRef]) -> list[bytes]:
    """read_record_bytes of each ref, in order. Files are visited one after the other, so each JSON
    array or Parquet file is parsed once however the refs interleave them (a selection's ranking does)."""
    out = [b""] * len(refs)
    for i in sorted(range(len(refs)), key=lambda i: (refs[i].file, refs[i].line)):
        out[i] = read_record_bytes(refs[i])
    return out


def read_messages(ref: ExampleRef) -> list[dict[str, str]]:
    return to_messages(json.loads(read_record_bytes(ref)))


def example_part(messages: list[dict[str, str]], part: Part) -> list[dict[str, str]]:
    """The turns of a conversation a signal reads: ``whole``, all of them; ``prompt``, those that are not
    the assistant's (system and user: the task as asked); ``answer``, the assistant's replies."""
    if part == "whole":
        return messages
    if part == "prompt":
        return [m for m in messages if m["role"] != "assistant"]
    if part == "answer":
        return [m for m in messages if m["role"] == "assistant"]
    raise ValueError(f"unknown example part {part!r}; known: whole, prompt, answer")


def print_skips(stage: str, bad: list, no_label_tokens: int, listed_in: str) -> None:
    """One line saying what a stage skipped, and where the skipped records are listed."""
    if bad or no_label_tokens:
        print(f"{stage}: skipped {len(bad)} malformed records and {no_label_tokens} without label tokens "
              f"(left after truncation; the malformed ones are listed in {listed_in})")
