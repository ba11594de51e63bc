"""Would the targets' own examples have picked the selection that trains best? From a finished
experiment's trained models, with no new training.

Every cell of `gradsift experiment` trains a model on a selection and evaluates it on the target's
held-out test set. This evaluates the same trained models on the target's few-shot examples (what a
user gives gradsift, never trained on: a selector only compares pool records with them) and asks,
target by target and seed by seed, whether the selection with the lowest few-shot loss is the one
with the lowest test loss. If it is, choosing among candidate selections by the loss on the user's
own examples is a selector that needs no labels.

    python experiments/validation.py experiments/restated.yaml --output /work/runs/restated
        [--methods fusion less bm25 rds fusion-rrf]

Writes OUTPUT/validation.csv (one row per target, method, seed: few-shot loss, its mean over the
few-shot subtasks and per subtask, test loss) and prints, and writes to OUTPUT/validation.md, per
target: each method's mean of those over seeds, and per seed which method each would pick. The evaluations go
where the experiment's do (OUTPUT/eval/TARGET/, under another key); one already done is reused.
"""

from __future__ import annotations

import argparse
import csv
import io
import json
from dataclasses import replace
from pathlib import Path

import numpy as np

from gradsift.experiment import Experiment, load_experiment
from gradsift.utils.files import atomic_write_bytes


def fewshot_losses(config_path: Path, output: Path, methods: list[str] | None) -> list[dict]:
    config = load_experiment(config_path)
    experiment = Experiment(config, output)
    results = list(csv.DictReader(open(output / "results.csv")))
    test = {(r["target"], r["method"], r["seed"]): float(r["loss"]) for r in results if r["method"] != "base"}
    rows = []
    methods = methods or [m.label for m in config.methods if m.method not in ("random", "full", "oracle")]
    for job in experiment.cells():
        if job["method"] not in methods or job["model"] != config.model:
            continue
        if any((t.name, job["method"], str(job["seed"])) not in test for t in config.targets):
            continue  # the cell has not run yet
        spec = next(m for m in config.methods if m.label == job["method"])
        chosen = experiment.selections(spec, job["fraction"], job["seed"])  # done: read back, not selected again
        for target in config.targets:
            trained = experiment.trained(job["model"], chosen[target.name], job["seed"], job["train"])
            # the experiment's own evaluation, of the few-shot file, loss only (its folder is the test's
            # name with another key)
            fewshot = replace(target, test=target.fewshot, evaluate={**target.evaluate, "max_new_tokens": 0})
            _, summary = experiment.evaluated(fewshot, job["model"], trained)
            by_subtask = {name: round(v["loss"], 6) for name, v in summary["by_subtask"].items()}
            rows.append({"target": target.name, "method": job["method"], "seed": job["seed"],
                         "fewshot_loss": summary["loss"], "subtask_loss": float(np.mean(list(by_subtask.values()))),
                         "test_loss": test[target.name, job["method"], str(job["seed"])],
                         "by_subtask": by_subtask})
    return rows


def report(rows: list[dict]) -> str:
    lines = []
    for target in dict.fromkeys(r["target"] for r in rows):
        mine = [r for r in rows if r["target"] == target]
        methods = list(dict.fromkeys(r["method"] for r in mine))
        seeds = sorted({r["seed"] for r in mine})
        cell = {(r["method"], r["seed"]): r for r in mine}
        subtasks = list(mine[0]["by_subtask"])
        lines += [f"### {target}", "", "| method | few-shot loss | mean over subtasks | "
                  + " | ".join(subtasks) + " | test loss |", "|---|---|---|" + "---|" * len(subtasks) + "---|"]
        for m in methods:
            mean = lambda key: np.mean([cell[m, s][key] for s in seeds if (m, s) in cell])  # noqa: E731
            parts = [np.mean([cell[m, s]["by_subtask"][t] for s in seeds if (m, s) in cell]) for t in subtasks]
            lines.append(f"| {m} | {mean('fewshot_loss'):.3f} | {mean('subtask_loss'):.3f} | "
                         + " | ".join(f"{v:.3f}" for v in parts) + f" | {mean('test_loss'):.3f} |")
        lines += ["", "| seed | lowest few-shot loss: test loss | lowest mean over subtasks: test loss | lowest test loss |",
                  "|---|---|---|---|"]
        for s in seeds:
            here = [cell[m, s] for m in methods if (m, s) in cell]
            pick = lambda key: min(here, key=lambda r: r[key])  # noqa: E731
            lines.append(" | ".join([f"| {s}"] + [f"{pick(k)['method']}: {pick(k)['test_loss']:.3f}"
                                                  for k in ("fewshot_loss", "subtask_loss", "test_loss")]) + " |")
        lines.append("")
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("config", type=Path, help="the experiment's YAML")
    parser.add_argument("--output", type=Path, required=True, help="the experiment's folder")
    parser.add_argument("--methods", nargs="+", help="method labels to compare (default: all but random, full, oracle)")
    args = parser.parse_args()
    rows = fewshot_losses(args.config, args.output.resolve(), args.methods)
    text = io.StringIO()
    writer = csv.DictWriter(text, ["target", "method", "seed", "fewshot_loss", "subtask_loss", "test_loss", "by_subtask"],
                            lineterminator="\n")
    writer.writeheader()
    writer.writerows({**r, "by_subtask": json.dumps(r["by_subtask"])} for r in rows)
    atomic_write_bytes(args.output / "validation.csv", text.getvalue().encode())
    md = report(rows)
    atomic_write_bytes(args.output / "validation.md", md.encode())
    print(md)


if __name__ == "__main__":
    main()
