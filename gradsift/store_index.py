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
from collections.abc import Sequence
from pathlib import Path

import numpy as np

from .data import ExampleRef, example_status

COLUMNS = [f.name for f in dataclasses.fields(ExampleRef)]
_BATCH = 65536  # rows turned into ExampleRefs at a time while iterating


class StoreIndex(Sequence):
    def __init__(self, table):
        self.table = table  # a pyarrow Table with COLUMNS

    @classmethod
    def from_refs(cls, refs) -> "StoreIndex":
        import pyarrow as pa

        if isinstance(refs, StoreIndex):
            return refs
        columns = {name: [getattr(r, name) for r in refs] for name in COLUMNS}
        types = {f.name: pa.bool_() if f.type in ("bool", bool) else pa.int64() if f.type in ("int", int) else
                 pa.string() for f in dataclasses.fields(ExampleRef)}
        return cls(pa.table({n: pa.array(v, type=types[n]) for n, v in columns.items()}))

    @classmethod
    def read(cls, store: Path) -> "StoreIndex":
        import pyarrow.parquet as pq

        if (Path(store) / "index.parquet").exists():
            return cls(pq.read_table(Path(store) / "index.parquet"))
        with open(Path(store) / "index.jsonl") as f:  # format 1
            return cls.from_refs([ExampleRef(**json.loads(line)) for line in f])

    def to_parquet(self) -> bytes:
        import pyarrow.parquet as pq

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
        for start in range(0, len(self), _BATCH):
            yield from self._refs(self.table.slice(start, _BATCH))

    def __eq__(self, other) -> bool:
        if isinstance(other, StoreIndex):
            return self.table.equals(other.table)
        return isinstance(other, (list, tuple)) and list(self) == list(other)

    __hash__ = None  # mutable-looking and compared by content

    def take(self, rows) -> list[ExampleRef]:
        """The refs of the given row numbers, in that order."""
        return self._refs(self.table.take(np.asarray(rows, dtype=np.int64)))

    @staticmethod
    def _refs(table) -> list[ExampleRef]:
        return [ExampleRef(**row) for row in table.to_pylist()]

    # -- whole-store questions ---------------------------------------------------------------
    def column(self, name: str) -> np.ndarray:
        return self.table.column(name).to_numpy(zero_copy_only=False)

    def statuses(self) -> np.ndarray:
        return example_status(self.column("label_tokens"), self.column("non_finite_gradient"))

    def ok_mask(self) -> np.ndarray:
        """Rows with a status of "ok": label tokens left and a finite gradient."""
        return self.statuses() == "ok"

    def with_non_finite(self, rows) -> "StoreIndex":
        import pyarrow as pa

        flags = self.column("non_finite_gradient").astype(bool)
        flags[np.asarray(sorted(rows), dtype=np.int64)] = True
        position = self.table.schema.get_field_index("non_finite_gradient")
        return StoreIndex(self.table.set_column(position, "non_finite_gradient", pa.array(flags)))
