"""Reports of a selection or an experiment: console tables, and one self-contained HTML page.

- ``print_selection``: a selection's composition against the pool and its best examples, on the console.
- ``write_report(DIR)`` (``gradsift report DIR``): ``DIR/report.html`` for a selection folder (what
  ``gradsift select`` writes), a folder of them (one per target) or an experiment folder (what
  ``gradsift experiment`` writes). One file: CSS inline, plots as base64 PNG data URIs, no script,
  nothing fetched. It reads the files the stages wrote and computes nothing new (no model, no scores).

The page is built by pure functions, one per section, each taking what was read and returning HTML:
``selection_header``, ``score_section``, ``composition_section``, ``examples_section``,
``length_section`` (together ``selection_section``), ``results_table`` and ``experiment_section``.
matplotlib is imported only when a plot is drawn, so importing this module stays cheap; plots are
drawn on ``matplotlib.figure.Figure`` with the Agg canvas, never through pyplot, so a notebook's own
backend is left as it was.
"""

from __future__ import annotations

import base64
import csv
import io
import json
import re
import statistics
from dataclasses import dataclass, field
from html import escape
from pathlib import Path
from typing import TYPE_CHECKING

from gradsift import __version__
from gradsift.utils.errors import ConfigError, GradsiftError
from gradsift.utils.files import atomic_write_bytes, read_json

if TYPE_CHECKING:
    from rich.console import Console

PREVIEW_CHARS = 300  # characters of a user turn or answer shown in the HTML report
TARGET_SHOWN = 3  # target examples shown per subtask
TOP_PER_SUBTASK = 5  # selected examples shown per subtask
TOP_OVERALL = 10  # selected examples shown when the method has no per-subtask scores
CHART_SOURCES = 15  # sources drawn in the composition chart (the table lists all)
OPEN_SUBTASKS = 5  # subtask blocks start open when there are at most this many

POOL_COLOUR, SELECTED_COLOUR, THRESHOLD_COLOUR = "#a8a8a8", "#2b6cb0", "#c53030"
PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"


# --- console ---------------------------------------------------------------------------------------

def _preview(raw: str, width: int = 110) -> str:
    from gradsift.data.records import to_messages

    messages = to_messages(json.loads(raw))
    user = next((m["content"] for m in messages if m["role"] == "user"), messages[0]["content"])
    text = " ".join(user.split())
    return text if len(text) <= width else text[: width - 1] + "…"


def print_selection(selection, top: int = 5, console: Console | None = None) -> None:
    from rich.console import Console
    from rich.table import Table

    console = console or Console()
    summary = read_json(selection.output / "summary.json")
    console.print(f"\n[bold]target {summary['target']}[/bold]: selected {summary['selected']} of "
                  f"{summary['pool']['examples']} pool examples -> {selection.output}/selected.jsonl")
    table = Table("source", "pool", "pool %", "selected", "selected %", "lift")
    for source, s in sorted(summary["sources"].items(), key=lambda kv: -kv[1]["selected_share"]):
        lift = s["selected_share"] / s["pool_share"] if s["pool_share"] else 0.0
        table.add_row(source, str(s["pool"]), f"{100 * s['pool_share']:.1f}", str(s["selected"]),
                      f"{100 * s['selected_share']:.1f}", f"{lift:.2f}x")
    console.print(table)
    best = Table("rank", "score", "example (user turn)")
    with open(selection.output / "selected.jsonl", encoding="utf-8") as f:
        for rank, (row, line) in enumerate(zip(selection.selected[:top], f), 1):
            best.add_row(str(rank), f"{selection.scores[row]:.4f}", _preview(line))
    console.print(best)


# --- reading what the stages wrote ------------------------------------------------------------------

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
    from gradsift.data.records import to_messages

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
    from gradsift.data.records import scan_file

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


# --- HTML building blocks ---------------------------------------------------------------------------

CSS = """
body{margin:0;background:#fff;color:#1f2328;font:15px/1.45 system-ui,-apple-system,"Segoe UI",Roboto,
"Helvetica Neue",Arial,sans-serif}
main{max-width:1100px;margin:0 auto;padding:20px 24px 60px}
h1{font-size:1.55em;margin:.3em 0 .2em}
h2{font-size:1.3em;margin:1.8em 0 .5em;padding-bottom:3px;border-bottom:1px solid #d0d7de}
h3{font-size:1.08em;margin:1.4em 0 .4em}
h4{font-size:.95em;margin:.3em 0;color:#444}
p{margin:.4em 0}
a{color:#0969da}
table{border-collapse:collapse;margin:.5em 0 .8em;font-size:.9em}
th,td{border:1px solid #d8dee4;padding:3px 8px;text-align:left;vertical-align:top}
th{background:#f6f8fa;font-weight:600}
td.num,th.num{text-align:right;font-variant-numeric:tabular-nums;white-space:nowrap}
tr.first td{border-top:2px solid #afb8c1}
img{max-width:100%;height:auto;display:block;margin:.4em 0}
code,.path{font-family:ui-monospace,SFMono-Regular,Menlo,Consolas,monospace;font-size:.88em}
pre{background:#f6f8fa;border:1px solid #d8dee4;padding:8px;overflow:auto;font-size:.85em}
.muted{color:#656d76}
.note{background:#fff8c5;border:1px solid #e9d77c;border-radius:3px;padding:4px 8px;margin:.4em 0;font-size:.9em}
dl.kv{display:grid;grid-template-columns:max-content 1fr;gap:1px 14px;margin:.4em 0;font-size:.92em}
dl.kv dt{color:#656d76}
dl.kv dd{margin:0}
.row{display:flex;flex-wrap:wrap;gap:10px 24px;align-items:flex-start}
.row>div{flex:1 1 420px;min-width:0}
.pair{display:grid;grid-template-columns:1fr 1fr;gap:14px}
.ex{border:1px solid #d8dee4;border-radius:4px;padding:5px 8px;margin:5px 0;background:#fafbfc;font-size:.86em}
.ex .meta{color:#656d76;margin-bottom:2px}
.ex .turn{white-space:pre-wrap;overflow-wrap:anywhere;margin:2px 0}
.ex .role{font-weight:600;color:#57606a;margin-right:4px}
details{margin:.4em 0;border:1px solid #e4e8ec;border-radius:4px;padding:3px 10px}
details>summary{cursor:pointer;padding:3px 0}
details[open]>summary{margin-bottom:4px;border-bottom:1px solid #eef1f4}
section.selection{margin-bottom:1.5em}
nav ul{margin:.3em 0;padding-left:1.3em}
footer{margin-top:3em;color:#8c959f;font-size:.85em}
"""


def _e(value) -> str:
    return escape(str(value), quote=True)


def _slug(text: str) -> str:
    return re.sub(r"[^A-Za-z0-9_-]+", "-", text).strip("-") or "x"


def _pct(x: float | None) -> str:
    return "–" if x is None else f"{100 * x:.1f}%"


def _num(x: float | None, digits: int = 4) -> str:
    return "–" if x is None else f"{x:.{digits}g}" if abs(x) >= 1e4 or (x and abs(x) < 1e-3) else f"{x:.{digits}f}"


def _table(header: list[str], rows: list[list[str]], numeric: set[int] = frozenset(),
           row_classes: list[str] | None = None) -> str:
    """A table of already-escaped cells; columns in ``numeric`` are right-aligned."""
    def cls(k):
        return ' class="num"' if k in numeric else ""
    head = "".join(f"<th{cls(k)}>{h}</th>" for k, h in enumerate(header))
    body = []
    for n, row in enumerate(rows):
        rc = f' class="{row_classes[n]}"' if row_classes and row_classes[n] else ""
        body.append(f"<tr{rc}>" + "".join(f"<td{cls(k)}>{c}</td>" for k, c in enumerate(row)) + "</tr>")
    return f"<table><thead><tr>{head}</tr></thead><tbody>{''.join(body)}</tbody></table>"


def _img(png: bytes, alt: str) -> str:
    return f'<img alt="{_e(alt)}" src="data:image/png;base64,{base64.b64encode(png).decode("ascii")}">'


def _notes(notes: list[str]) -> str:
    return "".join(f'<p class="note">{_e(n)}</p>' for n in notes)


def _figure(width: float, height: float):
    from matplotlib.backends.backend_agg import FigureCanvasAgg  # the Agg backend, without pyplot
    from matplotlib.figure import Figure

    fig = Figure(figsize=(width, height), dpi=100)
    FigureCanvasAgg(fig)
    return fig


def _png(fig) -> bytes:
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=110, bbox_inches="tight", facecolor="white")
    return buf.getvalue()


def _style(ax) -> None:
    for side in ("top", "right"):
        ax.spines[side].set_visible(False)
    ax.tick_params(labelsize=8)
    ax.grid(axis="y", color="#eeeeee", linewidth=0.8)
    ax.set_axisbelow(True)


# --- plots (each returns PNG bytes) -----------------------------------------------------------------

def score_histogram(unselected: list[float], selected: list[float], threshold: float | None) -> bytes:
    """Scores of all scored pool rows, the selected ones stacked in their own colour, the threshold a line."""
    fig = _figure(7.2, 2.6)
    ax = fig.add_subplot()
    lo, hi = min(unselected + selected), max(unselected + selected)
    bins = 50 if hi > lo else 1
    ax.hist([unselected, selected], bins=bins, range=(lo, hi) if hi > lo else None, stacked=True,
            color=[POOL_COLOUR, SELECTED_COLOUR], label=["not selected", "selected"])
    if threshold is not None:
        ax.axvline(threshold, color=THRESHOLD_COLOUR, linestyle="--", linewidth=1.2, label=f"threshold {threshold:.4g}")
    ax.set_xlabel("score", fontsize=9)
    ax.set_ylabel("pool examples", fontsize=9)
    ax.yaxis.get_major_locator().set_params(integer=True)
    _style(ax)
    ax.legend(fontsize=8, frameon=False)
    return _png(fig)


def composition_chart(sources: list[tuple[str, float, float]]) -> bytes:
    """Grouped horizontal bars: (source, pool share, selected share), drawn top to bottom."""
    n = len(sources)
    fig = _figure(6.4, 0.9 + 0.34 * n)
    ax = fig.add_subplot()
    y = list(range(n))
    h = 0.38
    ax.barh([k - h / 2 for k in y], [s[1] for s in sources], height=h, color=POOL_COLOUR, label="pool share")
    ax.barh([k + h / 2 for k in y], [s[2] for s in sources], height=h, color=SELECTED_COLOUR, label="selected share")
    ax.set_yticks(y, [_clip(s[0], 28, one_line=True) for s in sources])
    ax.invert_yaxis()
    ax.xaxis.set_major_formatter(lambda x, _: f"{100 * x:.0f}%")
    ax.set_xlim(0, max(0.05, max(max(s[1], s[2]) for s in sources) * 1.08))
    _style(ax)
    ax.grid(axis="y", visible=False)
    ax.grid(axis="x", color="#eeeeee", linewidth=0.8)
    ax.legend(fontsize=8, frameon=False, loc="lower left", bbox_to_anchor=(0, 1), ncol=2, borderaxespad=0.2)
    return _png(fig)


def length_histogram(pool: list[int], selected: list[int]) -> bytes:
    """Overlaid length (chars) histograms of the pool and the selection, each normalised to its own size."""
    import numpy as np

    fig = _figure(6.4, 2.6)
    ax = fig.add_subplot()
    lo, hi = max(1, min(pool + selected)), max(pool + selected)
    log = hi / lo > 20
    n_bins = min(40, max(12, round(len(pool) ** 0.5)))
    bins = np.geomspace(lo, hi + 1, n_bins) if log else np.linspace(lo, hi + 1, n_bins)
    clip = [max(lo, x) for x in pool], [max(lo, x) for x in selected]
    ax.hist(clip[0], bins=bins, density=True, color=POOL_COLOUR, alpha=0.75, label=f"pool ({len(pool)})")
    ax.hist(clip[1], bins=bins, density=True, histtype="step", linewidth=1.8, color=SELECTED_COLOUR,
            label=f"selected ({len(selected)})")
    for values, colour in ((pool, "#6e6e6e"), (selected, SELECTED_COLOUR)):
        ax.axvline(statistics.median(values), color=colour, linestyle=":", linewidth=1.3)
    if log:
        ax.set_xscale("log")
    ax.set_xlabel("characters (dotted: medians)", fontsize=9)
    ax.set_ylabel("density", fontsize=9)
    ax.set_yticks([])
    _style(ax)
    ax.legend(fontsize=8, frameon=False)
    return _png(fig)


# --- selection sections (pure: data in, HTML out) ---------------------------------------------------

def _settings(settings) -> str:
    if not settings:
        return '<span class="muted">–</span>'
    if not isinstance(settings, dict):
        return _e(settings)
    return ", ".join(f"<code>{_e(k)}={_e(json.dumps(v) if not isinstance(v, str) else v)}</code>"
                     for k, v in settings.items())


def selection_header(summary: dict, path: Path, rows: list[PoolRow]) -> str:
    """Target, method, settings, pool size and selected count."""
    pool = summary.get("pool") or {}
    n_pool = pool.get("examples", len(rows))
    k = summary.get("selected", sum(r.selected for r in rows))
    share = f" ({_pct(k / n_pool)} of the pool)" if n_pool else ""
    skipped = {s: n for s, n in (pool.get("skipped") or {}).items() if n}
    pool_text = f"{n_pool} examples"
    if "scored" in pool:
        pool_text += f", {pool['scored']} scored"
    if skipped:
        pool_text += " (skipped: " + ", ".join(f"{_e(s)} {n}" for s, n in skipped.items()) + ")"
    items = [("target", f"<b>{_e(summary.get('target', path.name))}</b>"),
             ("method", f"<b>{_e(summary.get('method', 'less'))}</b>"),
             ("settings", _settings(summary.get("method_settings")))]
    if summary.get("aggregate"):
        items.append(("aggregate", _e(summary["aggregate"])))
    items += [("pool", pool_text), ("selected", f"<b>{_e(k)}</b>{share}")]
    te = summary.get("target_examples") or {}
    if te:
        subtasks = te.get("subtasks") or {}
        text = f"{te.get('usable', '?')} usable"
        if te.get("skipped"):
            text += f", {te['skipped']} skipped"
        if subtasks:
            text += f", {len(subtasks)} subtask{'s' if len(subtasks) != 1 else ''}"
        items.append(("target examples", text))
    files = summary.get("target_files") or []
    if files:
        items.append(("target files", ", ".join(f'<span class="path" title="{_e(f)}">{_e(Path(f).name)}</span>'
                                                 for f in files)))
    items.append(("folder", f'<span class="path">{_e(path)}</span>'))
    return '<dl class="kv">' + "".join(f"<dt>{a}</dt><dd>{b}</dd>" for a, b in items) + "</dl>"


def score_section(rows: list[PoolRow], summary: dict) -> str:
    """Histogram of the scores of all scored pool rows, the selected ones in their own colour."""
    scored = [r.score for r in rows if r.score is not None]
    head = "<h3>Score distribution</h3>"
    if not scored:
        return head + (f'<p class="muted">No scores: method {_e(summary.get("method", "?"))} does not score '
                       "pool examples.</p>")
    stats = summary.get("scores") or {}
    picked = [r.score for r in rows if r.selected and r.score is not None]
    threshold = _float(stats.get("threshold"))
    if threshold is None and picked:
        threshold = min(picked)
    png = score_histogram([r.score for r in rows if not r.selected and r.score is not None], picked, threshold)
    text = ", ".join(f"{name} {_num(_float(stats.get(name)))}" for name in ("min", "mean", "max") if name in stats)
    line = f"{len(scored)} scored pool examples" + (f"; {text}" if text else "")
    if threshold is not None:
        line += f"; threshold (lowest selected score) {_num(threshold)}"
    return head + _img(png, "histogram of pool scores") + f'<p class="muted">{_e(line)}.</p>'


def source_shares(summary: dict, rows: list[PoolRow]) -> list[tuple[str, int, int, float, float]]:
    """(source, pool, selected, pool share, selected share) from summary.json, else counted from scores.csv."""
    sources = summary.get("sources")
    if not sources and rows:
        from collections import Counter

        pool, picked = Counter(r.source for r in rows), Counter(r.source for r in rows if r.selected)
        k = sum(picked.values())
        sources = {s: {"pool": n, "selected": picked[s], "pool_share": n / len(rows),
                       "selected_share": picked[s] / k if k else 0.0} for s, n in pool.items()}
    out = []
    for name, s in (sources or {}).items():
        out.append((str(name), _int(s.get("pool")) or 0, _int(s.get("selected")) or 0,
                    _float(s.get("pool_share")) or 0.0, _float(s.get("selected_share")) or 0.0))
    return sorted(out, key=lambda s: (-s[4], -s[3], s[0]))


def composition_section(summary: dict, rows: list[PoolRow]) -> str:
    """The selection's sources against the pool's: a chart of shares and a table with counts and lift."""
    head = "<h3>Composition by source</h3>"
    shares = source_shares(summary, rows)
    if not shares:
        return head + '<p class="muted">No per-source counts in summary.json or scores.csv.</p>'
    chart = sorted(shares, key=lambda s: -max(s[3], s[4]))[:CHART_SOURCES]
    png = composition_chart([(s[0], s[3], s[4]) for s in chart])
    table_rows = []
    for name, pool, picked, ps, ss in shares:
        lift = f"{ss / ps:.2f}×" if ps else "–"
        table_rows.append([_e(name), str(pool), _pct(ps), str(picked), _pct(ss), lift])
    table = _table(["source", "pool", "pool share", "selected", "selected share", "lift"], table_rows, {1, 2, 3, 4, 5})
    more = (f'<p class="muted">The chart shows the {CHART_SOURCES} largest of {len(shares)} sources.</p>'
            if len(shares) > CHART_SOURCES else "")
    return (head + f'<div class="row"><div>{_img(png, "pool share and selected share per source")}</div>'
            f'<div>{table}<p class="muted">lift = selected share / pool share</p></div></div>' + more)


def _clip(text: str, width: int = PREVIEW_CHARS, one_line: bool = False) -> str:
    text = re.sub(r"[ \t]+", " ", text.strip())
    text = re.sub(r"\s*\n\s*", " " if one_line else "\n", text)
    return text if len(text) <= width else text[: width - 1].rstrip() + "…"


def _turns(messages: list[dict]) -> tuple[str, str]:
    """The first user turn and the answer that follows it."""
    k = next((i for i, m in enumerate(messages) if m["role"] == "user"), -1)
    user = messages[k]["content"] if k >= 0 else ""
    answer = next((m["content"] for m in messages[k + 1:] if m["role"] == "assistant"), "")
    return user, answer


def example_card(example: Example) -> str:
    """One example: its rank, score, source and id (pool) or id (target), then its user turn and answer."""
    meta = []
    if example.position:
        meta.append(f"#{example.rank}" if example.rank is not None else f"record {example.position} of selected.jsonl")
        if example.score is not None:
            meta.append(f"score {_num(example.score)}")
        meta.append(f"source {example.source}" if example.source else "")
    meta.append(f"id {example.id}" if example.id else "")
    head = f'<div class="meta">{_e(" · ".join(m for m in meta if m))}</div>'
    if example.messages is None:
        return f'<div class="ex">{head}<div class="turn">{_e(_clip(example.raw))}</div></div>'
    user, answer = _turns(example.messages)
    return (f'<div class="ex">{head}<div class="turn"><span class="role">user</span>{_e(_clip(user))}</div>'
            f'<div class="turn"><span class="role">answer</span>{_e(_clip(answer))}</div></div>')


def _subtask_names(summary: dict, targets: list[Example], selected: list[PoolRow]) -> list[str]:
    names = list(((summary.get("target_examples") or {}).get("subtasks") or {}).keys())
    names += [t.subtask for t in targets] + [r.subtask for r in selected if r.subtask]
    return list(dict.fromkeys(str(n) for n in names))


def examples_section(summary: dict, targets: list[Example], top: list[Example], selected: list[PoolRow],
                     open_blocks: bool | None = None) -> str:
    """Per target subtask, a few target examples beside the best selected examples attributed to it
    (does the selection share the target's reasoning or only its surface form?). For methods without
    per-subtask scores, the overall best selected examples once. ``open_blocks`` opens or closes the
    blocks (default: open when there are few subtasks)."""
    head = "<h3>Target examples and the selected examples closest to them</h3>"
    counts = (summary.get("target_examples") or {}).get("subtasks") or {}
    if not (any(x.subtask for x in top) if top else any(r.subtask for r in selected)):
        shown = targets[: TARGET_SHOWN * 2]
        left = "".join(example_card(t) for t in shown) or '<p class="muted">no target example could be read</p>'
        right = "".join(example_card(x) for x in top[:TOP_OVERALL]) or '<p class="muted">none</p>'
        note = (f"method {summary.get('method', '?')} has no per-subtask scores: the first {len(top)} records of "
                "selected.jsonl (best first where the method ranks)")
        pair = (f'<div class="pair"><div><h4>target examples ({len(shown)} of {len(targets)})</h4>{left}</div>'
                f'<div><h4>top selected</h4>{right}</div></div>')
        if open_blocks is False:
            return head + f'<details><summary class="muted">{_e(note)}</summary>{pair}</details>'
        return head + f'<p class="muted">{_e(note[0].upper() + note[1:])}.</p>' + pair
    names = _subtask_names(summary, targets, selected)
    is_open = open_blocks if open_blocks is not None else len(names) <= OPEN_SUBTASKS
    n_selected = {}
    for r in selected:
        n_selected[r.subtask] = n_selected.get(r.subtask, 0) + 1
    blocks = []
    for name in names:
        mine = [t for t in targets if t.subtask == name]
        best = [x for x in top if x.subtask == name][:TOP_PER_SUBTASK]
        n_target = counts.get(name, len(mine))
        k = n_selected.get(name, 0)
        left = ("".join(example_card(t) for t in mine[:TARGET_SHOWN])
                or '<p class="muted">no target example of this subtask could be read</p>')
        right = ("".join(example_card(x) for x in best)
                 or '<p class="muted">no selected example scored highest against this subtask</p>')
        blocks.append(
            f'<details{" open" if is_open else ""}><summary><b>{_e(name)}</b> '
            f'<span class="muted">· {_e(n_target)} target example{"" if n_target == 1 else "s"} · {k} selected '
            f'example{"" if k == 1 else "s"} scored highest against it</span></summary>'
            f'<div class="pair"><div><h4>target examples ({min(TARGET_SHOWN, len(mine))} of {_e(n_target)})</h4>'
            f'{left}</div><div><h4>top selected ({f"{len(best)} of {k}" if k else "none"})</h4>{right}</div></div>'
            "</details>")
    return head + "".join(blocks)


def length_section(rows: list[PoolRow]) -> str:
    """Lengths (chars) of selected against pool examples: a method may win by picking short records."""
    head = "<h3>Length of selected and pool examples</h3>"
    pool = [r.chars for r in rows if r.chars is not None]
    picked = [r.chars for r in rows if r.selected and r.chars is not None]
    if not pool:
        return head + '<p class="muted">scores.csv has no <code>chars</code> column: lengths unknown.</p>'
    if not picked:
        return head + '<p class="muted">No selected example has a length in scores.csv.</p>'

    def quart(values):
        q = statistics.quantiles(values, n=4) if len(values) > 1 else [values[0]] * 3
        return [str(len(values)), f"{q[0]:.0f}", f"{statistics.median(values):.0f}", f"{q[2]:.0f}",
                f"{statistics.fmean(values):.0f}"]

    ratio = statistics.median(picked) / statistics.median(pool) if statistics.median(pool) else None
    text = (f"Median length: selected {statistics.median(picked):.0f} chars, pool {statistics.median(pool):.0f} "
            f"chars" + (f" (the selection's is {ratio:.2f}× the pool's)." if ratio is not None else "."))
    table = _table(["", "examples", "25%", "median", "75%", "mean"],
                   [["pool"] + quart(pool), ["selected"] + quart(picked)], {1, 2, 3, 4, 5})
    return (head + f'<div class="row"><div>{_img(length_histogram(pool, picked), "length histogram")}</div>'
            f"<div><p><b>{_e(text)}</b></p>{table}</div></div>")


def selection_section(data: SelectionData, compact: bool = False, heading: str | None = None) -> str:
    """All sections of one selection; ``compact`` (in an experiment report) keeps header, composition,
    length and top examples, with every subtask block closed."""
    rows, summary = data.rows, data.summary
    parts = [f"<h2>{_e(heading)}</h2>" if heading else "", selection_header(summary, data.path, rows),
             _notes(data.notes)]
    if not compact:
        parts.append(score_section(rows, summary))
    parts += [composition_section(summary, rows), length_section(rows),
              examples_section(summary, data.targets, data.top, data.selected, open_blocks=False if compact else None)]
    anchor = _slug("sel-" + data.name + "-" + data.method)
    return f'<section class="selection" id="{_e(anchor)}">{"".join(parts)}</section>'


def _one_line_summary(data: SelectionData) -> str:
    pool = (data.summary.get("pool") or {}).get("examples", len(data.rows))
    k = data.summary.get("selected", len(data.selected))
    text = f"{k} of {pool} selected"
    shares = source_shares(data.summary, data.rows)
    if shares and shares[0][3]:
        s = shares[0]
        text += f" · largest source {s[0]} {_pct(s[4])} ({s[4] / s[3]:.1f}× its pool share)"
    chars = [r.chars for r in data.rows if r.chars is not None]
    picked = [r.chars for r in data.selected if r.chars is not None]
    if chars and picked:
        text += f" · median length {statistics.median(picked):.0f} vs {statistics.median(chars):.0f} chars"
    return text


# --- experiment sections ----------------------------------------------------------------------------

def _mean_std(values: list[float], digits: int) -> str:
    if not values:
        return "–"
    if len(values) == 1:
        return f"{values[0]:.{digits}f}"
    return f"{statistics.fmean(values):.{digits}f} ± {statistics.stdev(values):.{digits}f}"


def results_table(rows: list[dict[str, str]]) -> str:
    """Mean ± std over seeds per target × method × model × fraction; the lowest mean loss of each
    target and model in bold (losses of different models are not comparable: their tokenisers differ)."""
    groups: dict[tuple, list[dict]] = {}
    for r in rows:
        fraction = _float(r.get("fraction"))
        key = (r.get("target", ""), r.get("model", ""), r.get("method", ""),
               f"{fraction:g}" if fraction is not None else r.get("fraction", ""))
        groups.setdefault(key, []).append(r)
    order = {name: {v: k for k, v in enumerate(dict.fromkeys(r.get(name, "") for r in rows))}
             for name in ("target", "model", "method")}
    keys = sorted(groups, key=lambda g: (order["target"][g[0]], order["model"][g[1]], order["method"][g[2]],
                                         _float(g[3]) if _float(g[3]) is not None else 0.0))
    means = {g: statistics.fmean(v) for g in keys
             if (v := [x for r in groups[g] if (x := _float(r.get("loss"))) is not None])}
    best = {}
    for g, m in means.items():
        best[g[:2]] = min(best.get(g[:2], m), m)
    out, classes, prev = [], [], None
    for g in keys:
        cells = groups[g]

        def values(name):
            return [x for r in cells if (x := _float(r.get(name))) is not None]

        selected = values("selected")
        sel_text = "–" if not selected else (f"{selected[0]:.0f}" if len(set(selected)) == 1
                                             else f"{statistics.fmean(selected):.1f}")
        is_best = g in means and means[g] <= best[g[:2]] + 1e-12
        loss = _mean_std(values("loss"), 4)
        out.append([_e(g[0]), _e(g[2]), _e(g[1]), _e(g[3]), str(len(cells)), sel_text,
                    f"<b>{loss}</b>" if is_best else loss, _mean_std(values("accuracy"), 3),
                    _mean_std(values("precision"), 3), _mean_std(values("recall"), 3), _mean_std(values("auc"), 3),
                    _mean_std(values("length"), 2)])
        classes.append("first" if prev is not None and g[0] != prev else "")
        prev = g[0]
    table = _table(["target", "method", "model", "fraction", "seeds", "selected", "loss ↓", "accuracy",
                    "precision", "recall", "AUC", "length"], out, {3, 4, 5, 6, 7, 8, 9, 10, 11}, classes)
    return ("<h2>Results</h2>" + table +
            '<p class="muted">Mean ± standard deviation over seeds of the loss and accuracy on each target\'s '
            "held-out test set, and of the selection's precision and recall against relevance labels, "
            "with the AUC of the relevant records' scores (0.5: chance; – where unknown), and the selection's "
            "median length over the pool's (below 1: shorter records than the pool's). Bold: the lowest mean loss per target and model (lower is better).</p>")


def pick_selections(rows: list[dict[str, str]]) -> dict[str, list[tuple[str, dict]]]:
    """Per target, one row per method with a selection: the lowest seed (then the smallest fraction)."""
    out: dict[str, dict[str, dict]] = {}
    for r in rows:
        if not r.get("selection"):
            continue
        key = (_float(r.get("seed")) if _float(r.get("seed")) is not None else float("inf"),
               _float(r.get("fraction")) or 0.0)
        mine = out.setdefault(r.get("target", ""), {})
        old = mine.get(r.get("method", ""))
        if old is None or key < old[0]:
            mine[r.get("method", "")] = (key, r)
    return {t: [(m, kr[1]) for m, kr in methods.items()] for t, methods in out.items()}


def _resolve_selection(root: Path, rel: str, target: str) -> Path | None:
    path = Path(rel) if Path(rel).is_absolute() else root / rel
    if is_selection_dir(path):
        return path
    if is_selection_dir(path / target):
        return path / target
    return None


def experiment_section(root: Path, rows: list[dict[str, str]]) -> str:
    """Per target, the selection of each method (lowest seed), compactly, each in a collapsible block."""
    parts = []
    picks = pick_selections(rows)
    for target in dict.fromkeys(r.get("target", "") for r in rows):
        if target not in picks:
            continue
        parts.append(f'<h2 id="{_e(_slug("target-" + target))}">Selections for {_e(target)}</h2>')
        for k, (method, row) in enumerate(picks[target]):
            label = f"{method} (seed {row.get('seed', '?')}, fraction {row.get('fraction', '?')})"
            path = _resolve_selection(root, row["selection"], target)
            if path is None:
                parts.append(f'<p class="note">{_e(label)}: selection folder {_e(row["selection"])} not found.</p>')
                continue
            try:
                data = load_selection(path)
            except ConfigError as e:
                parts.append(f'<p class="note">{_e(label)}: {_e(e)}</p>')
                continue
            parts.append(f'<details{" open" if k == 0 else ""}><summary><b>{_e(method)}</b> '
                         f'<span class="muted">· seed {_e(row.get("seed", "?"))} · {_e(_one_line_summary(data))}'
                         f"</span></summary>{selection_section(data, compact=True)}</details>")
    return "".join(parts)


def _experiment_page(root: Path) -> str:
    try:
        rows = read_results(root / "results.csv")
    except (OSError, UnicodeDecodeError, csv.Error) as e:
        raise ConfigError(f"{root / 'results.csv'}: cannot read: {e}") from None
    targets = list(dict.fromkeys(r.get("target", "") for r in rows))
    methods = list(dict.fromkeys(r.get("method", "") for r in rows))
    models = list(dict.fromkeys(r.get("model", "") for r in rows))
    parts = [f"<h1>Experiment report</h1><p class=\"muted\"><span class=\"path\">{_e(root)}</span> · "
             f"{len(rows)} cells · targets {_e(', '.join(targets))} · methods {_e(', '.join(methods))} · "
             f"models {_e(', '.join(models))}</p>"]
    if targets:
        parts.append("<nav><ul>" + '<li><a href="#results">Results</a></li>' +
                     "".join(f'<li><a href="#{_e(_slug("target-" + t))}">Selections for {_e(t)}</a></li>'
                             for t in targets) + "</ul></nav>")
    parts.append(f'<div id="results">{results_table(rows)}</div>' if rows else
                 '<p class="note">results.csv has no rows.</p>')
    png = root / "results.png"
    if png.is_file() and png.read_bytes()[:8] == PNG_SIGNATURE:
        parts.append("<h3>The experiment's chart</h3>" + _img(png.read_bytes(), "results chart"))
    config = root / "experiment.json"
    if config.is_file():
        try:
            text = json.dumps(read_json(config), indent=2, ensure_ascii=False)
        except (OSError, ValueError):
            text = config.read_text(errors="replace")
        parts.append(f"<details><summary>Configuration (experiment.json)</summary><pre>{_e(text)}</pre></details>")
    parts.append(experiment_section(root, rows))
    return page(f"gradsift experiment: {root.name}", "".join(parts))


def _selections_page(root: Path, dirs: list[Path]) -> str:
    sections = [load_selection(d) for d in dirs]
    if len(sections) == 1:
        data = sections[0]
        body = (f"<h1>Selection report: {_e(data.name)}</h1>" +
                selection_section(data))
        return page(f"gradsift selection: {data.name}", body)
    ids = [_slug("sel-" + s.name + "-" + s.method) for s in sections]
    nav = "<nav><ul>" + "".join(f'<li><a href="#{_e(i)}">{_e(s.name)}</a> <span class="muted">· '
                                f"{_e(_one_line_summary(s))}</span></li>"
                                for i, s in zip(ids, sections)) + "</ul></nav>"
    body = (f'<h1>Selection report: {len(sections)} targets</h1><p class="muted"><span class="path">{_e(root)}</span>'
            f"</p>{nav}" + "".join(selection_section(s, heading=f"Target: {s.name} ({s.method})") for s in sections))
    return page(f"gradsift selections: {root.name}", body)


def page(title: str, body: str) -> str:
    """A whole HTML document around already-escaped body HTML."""
    return ("<!DOCTYPE html>\n<html lang=\"en\"><head><meta charset=\"utf-8\">"
            "<meta name=\"viewport\" content=\"width=device-width, initial-scale=1\">"
            f"<title>{_e(title)}</title><style>{CSS}</style></head><body><main>{body}"
            f"<footer>gradsift {_e(__version__)} report</footer></main></body></html>\n")


def render_report(path: Path) -> str:
    """The report page of DIR (experiment, selection or folder of selections), as a string."""
    path = Path(path)
    if not path.is_dir():
        raise ConfigError(f"{path} is not a folder")
    if is_experiment_dir(path):
        return _experiment_page(path)
    dirs = selection_dirs(path)
    if dirs:
        return _selections_page(path, dirs)
    raise ConfigError(f"{path} is neither a selection folder (summary.json, scores.csv, selected.jsonl), "
                      "a folder of selection folders, nor an experiment folder (results.csv)")


def write_report(path: Path) -> Path:
    """Write DIR/report.html for a selection folder, a folder of them or an experiment folder; its path."""
    html = render_report(path)
    out = Path(path) / "report.html"
    atomic_write_bytes(out, html.encode("utf-8"))
    return out
