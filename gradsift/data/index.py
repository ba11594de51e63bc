"""A store's index: one row per example (where it lives, its ids, its token counts, its status), kept
as columns in ``index.parquet`` so that a store of 10M rows opens in a moment and in little memory.

It reads like a list of ``ExampleRef`` (``index[i]``, slices, iteration, all made on demand) and
answers the whole-store questions (which rows are scorable, a column as an array) without making any.
A store of format 1 keeps its ``index.jsonl``: it opens the same way.
"""

from __future__ import annotations

import dataclasses
import io
import json
from collections.abc import Callable, Sequence
from dataclasses import replace
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq

from gradsift.data.chat import ChatEncoder, label_count
from gradsift.data.records import BadRecord, DataFile, ExampleRef, scan_file, status_codes
from gradsift.utils.errors import DataError
from gradsift.utils.files import data_files, file_sha256

# How the columns are held, 40 bytes a row plus the ids (10M rows: about 0.5 GiB). The few distinct
# files, sources and subtasks of a pool are a dictionary of the values and an int32 code per row, not
# one string per row (10M paths would take ~1 GiB); counts are int32, byte offsets int64.
_CODED = pa.dictionary(pa.int32(), pa.string())
SCHEMA = pa.schema([("file", _CODED), ("line", pa.int32()), ("offset", pa.int64()), ("length", pa.int32()),
                    ("id", pa.string()), ("source", _CODED), ("subtask", _CODED), ("tokens", pa.int32()),
                    ("label_tokens", pa.int32()), ("chars", pa.int32()), ("non_finite_gradient", pa.bool_())])
COLUMNS = SCHEMA.names
assert COLUMNS == [f.name for f in dataclasses.fields(ExampleRef)], "SCHEMA lists ExampleRef's fields in order"
REPEATED = [f.name for f in SCHEMA if f.type == _CODED]
ROWS_AT_ONCE = 65536  # rows held as Python objects at a time: a pool of millions never becomes millions of them


def _values(column):
    """A column as plain values (a dictionary column decoded)."""
    return column.cast(column.type.value_type) if pa.types.is_dictionary(column.type) else column


class StoreIndex(Sequence):
    def __init__(self, table):
        self.table = table if table.schema.equals(SCHEMA) else table.cast(SCHEMA)  # a store of any version

    @classmethod
    def from_refs(cls, refs) -> StoreIndex:
        if isinstance(refs, StoreIndex):
            return refs
        return cls(pa.table({f.name: pa.array([getattr(r, f.name) for r in refs], type=f.type) for f in SCHEMA}))

    @classmethod
    def concat(cls, parts: list[StoreIndex]) -> StoreIndex:
        """The rows of ``parts`` one after the other, their chunks kept (joining them would copy the whole
        index), with one dictionary per coded column."""
        return cls(pa.concat_tables([p.table for p in parts]).unify_dictionaries())

    @classmethod
    def read(cls, store: Path) -> StoreIndex:
        if (Path(store) / "index.parquet").exists():
            return cls(pq.read_table(Path(store) / "index.parquet", read_dictionary=REPEATED))
        with open(Path(store) / "index.jsonl") as f:  # format 1
            return cls.from_refs([ExampleRef(**json.loads(line)) for line in f])

    def to_parquet(self) -> bytes:
        buffer = io.BytesIO()
        pq.write_table(self.table, buffer, compression="zstd")
        return buffer.getvalue()

    def to_jsonl(self) -> bytes:
        return "".join(json.dumps(dataclasses.asdict(r), ensure_ascii=False) + "\n" for r in self).encode()

    # -- the list view -----------------------------------------------------------------------
    def __len__(self) -> int:
        return self.table.num_rows

    def __getitem__(self, which):
        if isinstance(which, slice):
            start, stop, step = which.indices(len(self))
            if step != 1:
                return [self[i] for i in range(start, stop, step)]
            return self._refs(self.table.slice(start, max(0, stop - start)))
        if which < 0:
            which += len(self)
        if not 0 <= which < len(self):
            raise IndexError(which)
        return self._refs(self.table.slice(which, 1))[0]

    def __iter__(self):
        for start in range(0, len(self), ROWS_AT_ONCE):
            yield from self._refs(self.table.slice(start, ROWS_AT_ONCE))

    def __eq__(self, other) -> bool:
        if isinstance(other, StoreIndex):  # by value: two dictionaries may list the same values in another order
            return len(self) == len(other) and all(_values(self.table.column(n)).equals(_values(other.table.column(n)))
                                                   for n in COLUMNS)
        return isinstance(other, (list, tuple)) and list(self) == list(other)

    __hash__ = None  # mutable-looking and compared by content

    def take(self, rows) -> list[ExampleRef]:
        """The refs of the given row numbers, in that order."""
        return self._refs(self.table.take(np.asarray(rows, dtype=np.int64)))

    @staticmethod
    def _refs(table) -> list[ExampleRef]:
        return [ExampleRef(*row) for row in zip(*(table.column(name).to_pylist() for name in COLUMNS))]

    # -- whole-store questions ---------------------------------------------------------------
    def column(self, name: str) -> np.ndarray:
        return self.table.column(name).to_numpy(zero_copy_only=False)

    def counts(self, name: str, rows=None) -> dict[str, int]:
        """How many rows (of all, or of row numbers ``rows``) hold each value of column NAME."""
        column = self.table.column(name) if rows is None else self.table.column(name).take(np.asarray(rows, np.int64))
        return {c["values"]: c["counts"] for c in pc.value_counts(column).to_pylist()}

    def status_codes(self) -> np.ndarray:
        """Each row's status as its position in ``data.STATUSES`` (int8)."""
        return status_codes(self.column("label_tokens"), self.column("non_finite_gradient"))

    def ok_mask(self) -> np.ndarray:
        """Rows with a status of "ok": label tokens left and a finite gradient."""
        return self.status_codes() == 0

    def with_non_finite(self, rows) -> StoreIndex:
        flags = self.column("non_finite_gradient").astype(bool)
        flags[np.asarray(sorted(rows), dtype=np.int64)] = True
        position = self.table.schema.get_field_index("non_finite_gradient")
        return StoreIndex(self.table.set_column(position, "non_finite_gradient", pa.array(flags)))


class _SeenIds:
    """The ids indexed so far, each with its row: those of the block being made in a dict, earlier blocks'
    as sorted 64-bit hashes beside their rows (16 bytes an id, where a dict of 10M ids takes ~1.4 GiB).
    A hash that matches is checked against the id itself (``id_at``): a collision is never a duplicate."""

    def __init__(self, id_at: Callable[[int], str]):
        self.id_at, self.recent = id_at, {}
        self.hashes, self.rows = np.empty(0, np.int64), np.empty(0, np.int64)

    def first_row(self, id: str) -> int | None:
        if id in self.recent:
            return self.recent[id]
        h = hash(id)
        for at in range(int(np.searchsorted(self.hashes, h)), len(self.hashes)):
            if self.hashes[at] != h:
                break
            if self.id_at(int(self.rows[at])) == id:
                return int(self.rows[at])
        return None

    def add(self, id: str, row: int) -> None:
        self.recent[id] = row

    def seal(self) -> None:
        """Move the recent ids into the sorted arrays (a merge: linear in the ids seen)."""
        hashes = np.fromiter(map(hash, self.recent), np.int64, len(self.recent))
        order = np.argsort(hashes, kind="stable")
        rows = np.fromiter(self.recent.values(), np.int64, len(self.recent))[order]
        at = np.searchsorted(self.hashes, hashes[order])
        self.hashes, self.rows = np.insert(self.hashes, at, hashes[order]), np.insert(self.rows, at, rows)
        self.recent.clear()


def index_examples(
    paths: list[Path], encoder: ChatEncoder | None, skip_bad: bool = False
) -> tuple[StoreIndex, list[BadRecord], list[DataFile]]:
    """Read, validate and tokenize every record of the files (streaming: only counts are kept).
    Without an encoder (methods that read text only) records are validated but not tokenized.

    The examples come back as a columnar ``StoreIndex``, made a block of rows at a time: a pool of 10M
    records is never 10M ExampleRefs, nor a dict of its ids."""
    blocks, block, bad, files = [], [], [], []

    def ref_at(row: int) -> ExampleRef:
        k, i = divmod(row, ROWS_AT_ONCE)
        return blocks[k][i] if k < len(blocks) else block[i]

    seen = _SeenIds(lambda row: ref_at(row).id)
    for path in data_files(paths):  # absolute: stores are read from anywhere
        bad_before = len(bad)
        count = 0
        for ref, messages, problem in scan_file(path, skip_bad):
            if problem is None and (first_row := seen.first_row(ref.id)) is not None:
                first = ref_at(first_row)
                problem = BadRecord(str(path), ref.line, f"duplicate id {ref.id!r} (first at {first.file}:{first.line})")
                if not skip_bad:
                    raise DataError(path, ref.line, problem.problem)
            if problem is not None:
                bad.append(problem)
                continue
            seen.add(ref.id, len(blocks) * ROWS_AT_ONCE + len(block))
            if encoder is not None:
                try:
                    ids, labels = encoder.encode(messages)
                except ValueError as e:
                    raise DataError(path, ref.line, str(e)) from None
                ref = replace(ref, tokens=len(ids), label_tokens=label_count(labels))
            block.append(ref)
            if len(block) == ROWS_AT_ONCE:
                blocks.append(StoreIndex.from_refs(block))
                block = []
                seen.seal()
            count += 1
        if count == 0 and len(bad) == bad_before:
            raise DataError(path, 0, "no records (the file is empty or blank)")
        files.append(DataFile(path=str(path), sha256=file_sha256(path), records=count))
    return StoreIndex.concat(blocks + [StoreIndex.from_refs(block)]), bad, files
