"""An experiment's results: ``results.csv`` (one row per cell), ``results.md`` (mean ± std over seeds, the
paired difference from the grid's first method, the lowest loss per target and model in bold) and the
plot; every statistic the report shows comes from here.
"""

from __future__ import annotations

import csv
import io
import math
from pathlib import Path

import numpy as np

from gradsift.experiment.plots import results_plot
from gradsift.utils.files import atomic_write_bytes

RESULT_COLUMNS = ["target", "method", "model", "fraction", "seed", "selected", "loss", "accuracy", "precision",
                  "recall", "auc", "length", "selection", "evaluation"]


# -- results ------------------------------------------------------------------------------------
def _number(value) -> str:
    return "" if value is None or value == "" else f"{value:.6g}" if isinstance(value, float) else str(value)


def _mean_std(values: list[float]) -> tuple[float | None, float | None]:
    """Mean and sample std; std is 0 for one value, both None for none."""
    if not values:
        return None, None
    return float(np.mean(values)), float(np.std(values, ddof=1)) if len(values) > 1 else 0.0


def summarize(rows: list[dict]) -> list[dict]:
    """Mean and sample std over seeds of each (target, model, method, fraction), and ``delta``: the mean
    (and std) over seeds of its test loss minus the reference's at the same seed, the reference being
    the grid's first method (its first fraction) for that target and model. Training is seeded and
    orders examples by their content, so a seed's difference is the selections' alone (paired)."""
    groups: dict[tuple, list[dict]] = {}
    for r in rows:
        groups.setdefault((r["target"], r["model"], r["method"], float(r["fraction"])), []).append(r)
    references = {}
    for target, model, method, fraction in groups:
        if method != "base":
            references.setdefault((target, model), (target, model, method, fraction))
    out = []
    for (target, model, method, fraction), members in groups.items():
        entry = {"target": target, "model": model, "method": method, "fraction": fraction, "seeds": len(members),
                 "selected": members[0]["selected"]}
        for metric in ("loss", "accuracy", "precision", "recall", "auc", "length"):
            entry[metric], entry[f"{metric}_std"] = _mean_std([float(m[metric]) for m in members
                                                               if m.get(metric) not in (None, "")])
        reference = {r["seed"]: float(r["loss"]) for r in groups[references[target, model]]} \
            if method != "base" else {}
        entry["reference"] = references[target, model][2] if method != "base" else None
        entry["delta"], entry["delta_std"] = _mean_std([float(m["loss"]) - reference[m["seed"]] for m in members
                                                        if m["seed"] in reference])
        out.append(entry)
    return out


def results_matrix(stats: list[dict]) -> list[str]:
    """Every method against every target at a glance (``summarize``'s entries): mean test loss, its
    paired difference from the reference, precision, and the seeds behind them."""
    targets = list(dict.fromkeys(s["target"] for s in stats))
    cells = {(s["model"], s["method"], s["fraction"]): {} for s in stats}
    for s in stats:
        cells[s["model"], s["method"], s["fraction"]][s["target"]] = s
    several_models = len({model for model, _, _ in cells}) > 1
    several_fractions = len({f for _, m, f in cells if m not in ("base", "full")}) > 1
    lines = ["### Every target: test loss (paired difference from the first method), precision", "",
             "| method | seeds | " + " | ".join(targets) + " |", "|---|---|" + "---|" * len(targets)]
    for (model, method, fraction), by_target in cells.items():
        name = method + (f" {fraction:g}" if several_fractions and method not in ("base", "full") else "") \
            + (f" ({Path(model).name})" if several_models else "")
        row = []
        for target in targets:
            s = by_target.get(target)
            if s is None or s["loss"] is None:
                row.append("–")
                continue
            delta = "" if s["delta"] is None or s["method"] == s["reference"] else f" ({s['delta']:+.3f})"
            precision = "" if s["precision"] is None else f", P {s['precision']:.2f}"
            row.append(f"{s['loss']:.3f}{delta}{precision}")
        seeds = sorted({s["seeds"] for s in by_target.values()})
        lines.append(f"| {name} | {'/'.join(map(str, seeds))} | " + " | ".join(row) + " |")
    return lines + [""]


def target_table(stats: list[dict], target: str) -> tuple[list[str], list[list[str]], list[bool]]:
    """One target's table of ``summarize``'s entries, the one both ``results.md`` and the report show:
    its header, its cells (mean ± std over seeds, the paired difference from the grid's first method),
    and whether each row has the lowest mean loss of its model (losses of different models are not
    comparable: their tokenizers differ), which a renderer emphasises its own way."""
    mine = [s for s in stats if s["target"] == target]
    best: dict[str, float] = {}
    for s in mine:
        if s["method"] != "base" and s["loss"] is not None:
            best[s["model"]] = min(best.get(s["model"], s["loss"]), s["loss"])
    reference = next((s["reference"] for s in mine if s["reference"]), "the first method")
    header = ["model", "method", "fraction", "selected", "seeds", "test loss", f"vs {reference}, paired", "accuracy",
              "precision", "recall", "AUC", "length"]
    rows, lowest = [], []
    for s in mine:
        def cell(m, d=3, sign=""):
            return "–" if s[m] is None else f"{s[m]:{sign}.{d}f} ± {s[m + '_std']:.{d}f}"

        delta = "–" if s["method"] in ("base", s["reference"]) else cell("delta", sign="+")
        rows.append([Path(s["model"]).name, s["method"], f"{s['fraction']:g}", str(s["selected"]), str(s["seeds"]),
                     cell("loss"), delta, cell("accuracy"), cell("precision", 2), cell("recall", 2), cell("auc", 2),
                     cell("length", 2)])
        lowest.append(s["method"] != "base" and s["loss"] is not None and best.get(s["model"]) == s["loss"])
    return header, rows, lowest


def results_markdown(rows: list[dict]) -> str:
    """Every method against every target in one table (``results_matrix``), then one table per target
    (``target_table``), the lowest loss per (target, model) in bold."""
    stats = summarize(rows)
    lines = results_matrix(stats)
    for target in dict.fromkeys(s["target"] for s in stats):
        header, cells, lowest = target_table(stats, target)
        lines += [f"### {target}", "", "| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
        for row, bold in zip(cells, lowest):
            row = row[:5] + [f"**{row[5]}**" if bold else row[5]] + row[6:]
            lines.append("| " + " | ".join(row) + " |")
        lines.append("")
    return "\n".join(lines)


def write_results(out: Path, rows: list[dict]) -> None:
    text = io.StringIO()
    writer = csv.DictWriter(text, RESULT_COLUMNS, lineterminator="\n")
    writer.writeheader()
    for r in rows:
        writer.writerow({k: _number(r[k]) for k in RESULT_COLUMNS})
    atomic_write_bytes(out / "results.csv", text.getvalue().encode())
    atomic_write_bytes(out / "results.md", results_markdown(rows).encode())
    if any(r["loss"] is not None and not (isinstance(r["loss"], float) and math.isnan(r["loss"])) for r in rows):
        results_plot(summarize(rows), out / "results.png")
