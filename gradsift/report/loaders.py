"""Reading what the stages wrote, for the report: a selection folder (summary.json, scores.csv,
selected.jsonl and the target's records files) and an experiment's results.csv. Nothing is computed
anew. An unreadable summary.json is a ``ConfigError``; a missing or inconsistent scores.csv,
selected.jsonl or target file is noted in ``SelectionData.notes``, not fatal.
"""

from __future__ import annotations

import csv
import json
from dataclasses import dataclass, field
from pathlib import Path

from gradsift.data.records import scan_file, to_messages
from gradsift.utils.errors import ConfigError, GradsiftError
from gradsift.utils.files import read_json

TOP_PER_SUBTASK = 5  # selected examples shown per subtask
TOP_OVERALL = 10  # selected examples shown when the method has no per-subtask scores


@dataclass(slots=True)
class PoolRow:
    """One row of scores.csv."""

    file: str
    line: str
    id: str
    source: str
    score: float | None
    rank: int | None
    selected: bool
    status: str
    subtask: str
    chars: int | None


@dataclass
class Example:
    """A record shown in the report: a target example, or a selected pool example."""

    messages: list[dict] | None  # None when the record could not be read as a record
    raw: str = ""  # the text shown instead when messages is None
    subtask: str = ""
    id: str = ""
    position: int = 0  # selected examples: 1-based place in selected.jsonl (0 for a target example)
    rank: int | None = None
    score: float | None = None
    source: str = ""


@dataclass
class SelectionData:
    """Everything the report shows of one selection folder, as read from its three files."""

    path: Path
    summary: dict
    rows: list[PoolRow]
    columns: list[str]  # the columns scores.csv has
    targets: list[Example]  # the target's few-shot examples, in file order
    top: list[Example]  # selected examples shown (best first), each with its scores.csv row
    notes: list[str] = field(default_factory=list)  # what was missing or inconsistent

    @property
    def name(self) -> str:
        return str(self.summary.get("target") or self.path.name)

    @property
    def method(self) -> str:
        return str(self.summary.get("method") or "less")

    @property
    def selected(self) -> list[PoolRow]:
        return [r for r in self.rows if r.selected]


def _float(value) -> float | None:
    try:
        x = float(value)
    except (TypeError, ValueError):
        return None
    return x if x == x and abs(x) != float("inf") else None


def _int(value) -> int | None:
    x = _float(value)
    return int(x) if x is not None else None


def is_selection_dir(path: Path) -> bool:
    return (Path(path) / "summary.json").is_file()


def is_experiment_dir(path: Path) -> bool:
    return (Path(path) / "results.csv").is_file()


def selection_dirs(path: Path) -> list[Path]:
    """The selection folders of DIR: DIR itself, or its subfolders that are (one per target)."""
    path = Path(path)
    if is_selection_dir(path):
        return [path]
    if not path.is_dir():
        return []
    return sorted(p for p in path.iterdir() if p.is_dir() and is_selection_dir(p))


def read_scores(path: Path) -> tuple[list[PoolRow], list[str]]:
    """scores.csv's rows and column names; a missing optional column reads as empty."""
    with open(path, newline="", encoding="utf-8") as f:
        reader = csv.DictReader(f)
        rows = [
            PoolRow(file=r.get("file") or "", line=r.get("line") or "", id=r.get("id") or "",
                    source=r.get("source") or "", score=_float(r.get("score")), rank=_int(r.get("rank")),
                    selected=(r.get("selected") or "").strip().lower() in ("1", "true", "yes"),
                    status=r.get("status") or "ok", subtask=r.get("subtask") or "", chars=_int(r.get("chars")))
            for r in reader
        ]
        return rows, list(reader.fieldnames or [])


def _parse_record(raw: str) -> tuple[dict, list[dict] | None]:
    """(the record, its messages); ({}, None) for what is not a record of a known format."""
    try:
        record = json.loads(raw)
        return record, to_messages(record)
    except ValueError:
        return {}, None


def best_first(rows: list[PoolRow]) -> list[PoolRow]:
    """The selected rows in selected.jsonl's order: by rank, unranked ones last in pool order."""
    return sorted((r for r in rows if r.selected), key=lambda r: (r.rank is None, r.rank or 0))


def _ranked(ordered: list[PoolRow]) -> bool:
    return bool(ordered) and all(r.rank is not None for r in ordered)


def _shown_positions(ordered: list[PoolRow]) -> list[int]:
    """Positions (in best-first order) of the selected examples the report shows."""
    if _ranked(ordered) and any(r.subtask for r in ordered):
        seen: dict[str, int] = {}
        keep = []
        for k, r in enumerate(ordered):
            if seen.get(r.subtask, 0) < TOP_PER_SUBTASK:
                seen[r.subtask] = seen.get(r.subtask, 0) + 1
                keep.append(k)
        return keep
    return list(range(min(TOP_OVERALL, len(ordered))))


def _read_selected(path: Path, ordered: list[PoolRow], notes: list[str]) -> list[Example]:
    """The shown selected examples, read from selected.jsonl by their best-first position. When the
    selected rows are ranked, the k-th record is the row of rank k; when they are not (a method
    without scores), nothing in scores.csv says which record is which row, so an example shows only
    what its record holds (its ``id`` and ``source`` fields)."""
    if not path.is_file():
        notes.append(f"{path.name} is missing: no selected example can be shown")
        return []
    wanted = set(_shown_positions(ordered))
    found: dict[int, str] = {}
    count = 0
    with open(path, encoding="utf-8", errors="replace") as f:
        for raw in f:
            if not raw.strip():
                continue
            if count in wanted:
                found[count] = raw.strip()
            count += 1
    ranked = _ranked(ordered)
    if count != len(ordered) and ranked:
        notes.append(f"selected.jsonl holds {count} records but scores.csv marks {len(ordered)} selected: "
                     "examples are matched to rows by rank and may be misattributed")
    out = []
    for k in sorted(found):
        record, messages = _parse_record(found[k])
        if ranked:
            r = ordered[k]
            out.append(Example(messages, found[k], r.subtask, r.id, k + 1, r.rank, r.score, r.source))
        else:
            out.append(Example(messages, found[k], id=str(record.get("id", "")), position=k + 1,
                               source=str(record.get("source", ""))))
    return out


def read_targets(files: list[str], base: Path, notes: list[str]) -> list[Example]:
    """The target's examples from its records files; a record without ``subtask`` belongs to the
    subtask named after its file's stem. A file that is gone is noted, not fatal."""
    out = []
    for name in files:
        path = Path(name) if Path(name).is_absolute() else base / name
        if not path.is_file():
            notes.append(f"target file {name} not found: its examples are not shown")
            continue
        try:
            for ref, messages, bad in scan_file(path, skip_bad=True):
                if bad is None:
                    out.append(Example(messages, subtask=ref.subtask or Path(name).stem, id=ref.id))
        except GradsiftError as e:
            notes.append(f"target file {name}: {e}")
    return out


def load_selection(path: Path) -> SelectionData:
    """Read a selection folder (summary.json, scores.csv, selected.jsonl); the last two may be missing."""
    path = Path(path)
    try:
        summary = read_json(path / "summary.json")
    except (OSError, ValueError) as e:
        raise ConfigError(f"{path / 'summary.json'}: cannot read: {e}") from None
    if not isinstance(summary, dict):
        raise ConfigError(f"{path / 'summary.json'}: expected a JSON object")
    notes: list[str] = []
    rows, columns = [], []
    if (path / "scores.csv").is_file():
        rows, columns = read_scores(path / "scores.csv")
    else:
        notes.append("scores.csv is missing: no score, length or per-subtask view")
    top = _read_selected(path / "selected.jsonl", best_first(rows), notes) if rows else []
    targets = read_targets([str(f) for f in summary.get("target_files") or []], path, notes)
    return SelectionData(path, summary, rows, columns, targets, top, notes)


def read_results(path: Path) -> list[dict[str, str]]:
    with open(path, newline="", encoding="utf-8") as f:
        return [{k: (v or "").strip() for k, v in row.items() if k is not None} for row in csv.DictReader(f)]
