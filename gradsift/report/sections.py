"""The sections of a selection's report, each a pure function from what was read to HTML:
``selection_header``, ``score_section``, ``composition_section``, ``examples_section`` and
``length_section``, together ``selection_section``.
"""

from __future__ import annotations

import json
import statistics
from collections import Counter
from pathlib import Path

from gradsift.report.charts import composition_chart, length_histogram, score_histogram
from gradsift.report.loaders import TOP_OVERALL, TOP_PER_SUBTASK, Example, PoolRow, SelectionData, _float, _int
from gradsift.report.markup import _clip, _e, _img, _notes, _num, _pct, _table
from gradsift.utils.files import slug

TARGET_SHOWN = 3  # target examples shown per subtask
CHART_SOURCES = 15  # sources drawn in the composition chart (the table lists all)
OPEN_SUBTASKS = 5  # subtask blocks start open when there are at most this many


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
    anchor = slug("sel-" + data.name + "-" + data.method)
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
