"""The report page: ``write_report(DIR)`` (``gradsift report DIR``) writes ``DIR/report.html`` for a
selection folder (what ``gradsift select`` writes), a folder of them (one per target) or an experiment
folder (what ``gradsift experiment`` writes). One file: CSS inline, plots as base64 PNG data URIs, no
script, nothing fetched. It reads the files the stages wrote and computes nothing new (no model, no
scores).

The page is built by pure functions, one per section, each taking what was read and returning HTML:
the selection sections (``gradsift.report.sections``), ``results_table`` and ``experiment_section``.
"""

from __future__ import annotations

import csv
import json
from pathlib import Path

from gradsift import __version__
from gradsift.experiment.results import summarize, target_table
from gradsift.report.loaders import (
    _float,
    is_experiment_dir,
    is_selection_dir,
    load_selection,
    read_results,
    selection_dirs,
)
from gradsift.report.markup import PNG_SIGNATURE, _e, _img, _table
from gradsift.report.sections import _one_line_summary, selection_section
from gradsift.utils.errors import ConfigError
from gradsift.utils.files import atomic_write_bytes, read_json, slug

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


# --- experiment sections ----------------------------------------------------------------------------

def results_table(rows: list[dict[str, str]]) -> str:
    """The experiment's results (``results.csv`` rows), one table per target as ``results.md`` has them
    (``experiment.results.target_table``); the lowest mean loss of each target and model in bold."""
    stats = summarize(rows)
    tables = []
    for target in dict.fromkeys(s["target"] for s in stats):
        header, cells, lowest = target_table(stats, target)
        cells = [[_e(c) for c in row] for row in cells]
        for row, bold in zip(cells, lowest):
            row[5] = f"<b>{row[5]}</b>" if bold else row[5]
        tables.append(f"<h3>{_e(target)}</h3>" + _table([_e(h) for h in header], cells, set(range(2, 12))))
    return ("<h2>Results</h2>" + "".join(tables) +
            '<p class="muted">Mean ± standard deviation over seeds of the loss and accuracy on each target\'s '
            "held-out test set, its paired difference from the grid's first method at the same seed, the "
            "selection's precision and recall against relevance labels, the AUC of the relevant records' scores "
            "(0.5: chance; – where unknown), and the selection's median length over the pool's (below 1: shorter "
            "records than the pool's). Bold: the lowest mean loss per target and model (lower is better).</p>")


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
        parts.append(f'<h2 id="{_e(slug("target-" + target))}">Selections for {_e(target)}</h2>')
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


# --- pages ------------------------------------------------------------------------------------------

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
                     "".join(f'<li><a href="#{_e(slug("target-" + t))}">Selections for {_e(t)}</a></li>'
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
    ids = [slug("sel-" + s.name + "-" + s.method) for s in sections]
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
