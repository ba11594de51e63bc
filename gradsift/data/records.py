"""Records: reading pool and target files, whatever their format, as chat messages.

Files are JSON Lines (``.jsonl``, or gzip-compressed ``.jsonl.gz``), a JSON array (``.json``,
``.json.gz``), Parquet rows (``.parquet``) or the Arrow shards of a Hugging Face dataset saved with
``save_to_disk`` (``.arrow``); a folder or a quoted glob names its files (``utils.files.data_files``).
A record is in one of four formats:

- ``{"messages": [{"role": ..., "content": ...}, ...]}`` (tulu / open-instruct)
- ``{"conversations": [{"from": "human" | "gpt" | "system", "value": ...}, ...]}`` (ShareGPT: LLaMA-Factory,
  axolotl; the aliases ``user``, ``assistant``, ``bot``, ``chatgpt``, ``model`` too)
- ``{"instruction": ..., "input": ..., "output": ...}`` (Alpaca)
- ``{"prompt": ..., "completion": ...}``

with optional ``id``, ``source`` and (for targets) ``subtask``. A record of a plain JSON Lines file is
re-read by its byte span; one of any other file has no byte span of its own: it is re-read by its
1-based number and written back as one-line JSON.
"""

from __future__ import annotations

import gzip
import json
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path

import numpy as np

from gradsift.config import Part
from gradsift.utils.errors import DataError
from gradsift.utils.files import data_stem, data_suffix, require_data_file, saved_dataset

ROLES = ("system", "user", "assistant")
# ShareGPT's speakers (``from``) as roles: the common spellings of LLaMA-Factory, axolotl and FastChat
SHAREGPT_ROLES = {"system": "system", "human": "user", "user": "user", "gpt": "assistant", "assistant": "assistant",
                  "bot": "assistant", "chatgpt": "assistant", "model": "assistant"}


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
    try:
        value.encode("utf-8")
    except UnicodeEncodeError as e:  # JSON's "\\ud800" escape alone: no character, nothing can print or tokenize it
        raise ValueError(f"field {field!r} holds an unpaired UTF-16 surrogate "
                         f"({e.object[e.start:e.end].encode('unicode_escape').decode()}), which is not text") from None
    return value


def _turns(record: dict, field: str, speaker: str, text: str, roles: dict[str, str]) -> list[dict[str, str]]:
    """A list of turns (``messages``, ShareGPT's ``conversations``) as messages; ValueError says what is wrong."""
    items = record[field]
    if not isinstance(items, list) or not items:
        raise ValueError(f"'{field}' must be a non-empty list")
    out = []
    for k, m in enumerate(items):
        if not isinstance(m, dict) or speaker not in m or text not in m:
            raise ValueError(f"{field}[{k}] must be an object with '{speaker}' and '{text}'")
        if m[speaker] not in roles:
            said = "has role" if speaker == "role" else "is from"
            raise ValueError(f"{field}[{k}] {said} {m[speaker]!r}; expected one of {tuple(roles)}")
        out.append({"role": roles[m[speaker]], "content": _text(m[text], f"{field}[{k}].{text}")})
    return out


def to_messages(record: object) -> list[dict[str, str]]:
    """Normalise a record of any supported format to chat messages; ValueError says what is wrong."""
    if not isinstance(record, dict):
        raise ValueError(f"a record must be a JSON object, got {type(record).__name__}")
    if "messages" in record:
        out = _turns(record, "messages", "role", "content", {r: r for r in ROLES})
    elif "conversations" in record:
        out = _turns(record, "conversations", "from", "value", SHAREGPT_ROLES)
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
            "unknown record format: expected 'messages', 'conversations', 'instruction'+'output', or "
            "'prompt'+'completion'; "
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


def _read_bytes(path: Path) -> bytes:
    """A file's bytes, decompressed when it is gzip-compressed (``.gz``)."""
    if path.name.endswith(".gz"):
        try:
            return gzip.decompress(path.read_bytes())
        except (OSError, EOFError) as e:  # BadGzipFile is an OSError
            raise DataError(path, 0, f"cannot decompress gzip: {e}") from None
    return path.read_bytes()


def _json_array(path: Path) -> list:
    try:
        items = json.loads(_read_bytes(path))
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


def _arrow_rows(path: Path) -> Iterator[tuple[int, dict]]:
    """(row number, row) of an Arrow shard of a ``save_to_disk`` dataset (the IPC stream format)."""
    import pyarrow as pa

    line = 0
    try:
        with pa.memory_map(str(path)) as source:
            for batch in pa.ipc.open_stream(source):
                for row in batch.to_pylist():
                    line += 1
                    yield line, row
    except pa.ArrowException as e:
        raise DataError(path, line + 1 if line else 0, f"cannot read Arrow: {e}") from None


def _lines(data: bytes) -> Iterator[tuple[int, bytes]]:
    """(line number, record bytes) of every non-blank line of decompressed JSON Lines."""
    for number, raw in enumerate(data.split(b"\n"), 1):
        record = raw.rstrip(b"\r")
        if record.strip():
            yield number, record


def _iter_raw(path: Path) -> Iterator[tuple[int, int, bytes]]:
    """(line number, byte offset, raw record bytes) for every non-blank record of a file."""
    suffix = data_suffix(path)
    if suffix in (".json", ".json.gz"):
        for k, item in enumerate(_json_array(path), 1):
            yield k, -1, _dumps(item)
        return
    if suffix in (".parquet", ".arrow"):
        for k, row in (_parquet_rows if suffix == ".parquet" else _arrow_rows)(path):
            yield k, -1, _row_bytes(row)
        return
    if suffix == ".jsonl.gz":
        for k, record in _lines(_read_bytes(path)):
            yield k, -1, record
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
    # a record's default source: its file's name, or for a saved dataset's shard, the dataset's folder
    stem = path.parent.name if path.suffix == ".arrow" and saved_dataset(path.parent) else data_stem(path)
    for line, offset, raw in _iter_raw(path):
        try:
            record = json.loads(raw)
            messages = to_messages(record)
            rid = record.get("id", f"{stem}:{line}")
            ref = ExampleRef(
                file=str(path), line=line, offset=offset, length=len(raw),
                id=str(rid), source=str(record.get("source", stem)), subtask=str(record.get("subtask", "")),
                chars=sum(len(m["content"]) for m in messages),
            )
            for name in ("id", "source", "subtask"):
                _text(getattr(ref, name), name)
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
    """Record number -> bytes for a file whose records have no byte span (JSON array, gzip, Parquet,
    Arrow), parsed once and kept while it is one of the last two files read (size and mtime in the key:
    an edited file is parsed anew)."""
    suffix = data_suffix(Path(path))
    if suffix in (".json", ".json.gz"):
        items = _json_array(Path(path))
        return lambda line: _dumps(items[line - 1])
    if suffix == ".jsonl.gz":
        records = dict(_lines(_read_bytes(Path(path))))
        return records.__getitem__
    import pyarrow as pa
    import pyarrow.parquet as pq

    try:  # columnar: far smaller than the rows as Python objects
        if suffix == ".arrow":
            with pa.memory_map(path) as source:
                table = pa.ipc.open_stream(source).read_all()
        else:
            table = pq.read_table(path)
    except pa.ArrowException as e:
        raise DataError(path, 0, f"cannot read {'Arrow' if suffix == '.arrow' else 'Parquet'}: {e}") from None
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


def part_text(messages: list[dict[str, str]], part: Part) -> str:
    """The content of the turns a lexical signal reads (``example_part``), one turn a line."""
    return "\n".join(m["content"] for m in example_part(messages, part))


def record_text(ref: ExampleRef, part: Part = "whole") -> str:
    """The content of the turns a lexical method reads: every turn's (``whole``), the prompt's or the answer's."""
    return part_text(read_messages(ref), part)


def print_skips(stage: str, bad: list, no_label_tokens: int, listed_in: str) -> None:
    """One line saying what a stage skipped, and where the skipped records are listed."""
    if bad or no_label_tokens:
        print(f"{stage}: skipped {len(bad)} malformed records and {no_label_tokens} without label tokens "
              f"(left after truncation; the malformed ones are listed in {listed_in})")
