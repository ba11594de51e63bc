"""``gradsift demo``: the whole method on the bundled SmolLM2-135M and real data, ending with the proof:
does training on the default selection, or on LESS's, beat training on a random one of the same size?

Its data ship with the package (``gradsift/demo_data``: a small copy of the benchmark with known
answers, made by ``experiments/build_benchmark.py``: real records, a pool in which a labelled minority
teaches the target's skill). It runs a one-target experiment (``gradsift.experiment``): LoRA warmup,
gradient stores, the default (fusion), LESS and random selections, a LoRA fine-tune on each, and the
target's held-out test loss for the untrained model and every fine-tune. It writes ``report.html``
(what was picked, against the pool, and why) and prints its path. Sized for under 10 minutes and 8 GB
on 2 CPU cores; everything goes under the output folder, with ``experiment.yaml`` to re-run or vary it
(``gradsift experiment``).
"""

from __future__ import annotations

import json
import shutil
import time
from importlib.resources import files
from pathlib import Path

import yaml
from rich.console import Console

from gradsift.experiment import load_experiment, run_experiment, summarize
from gradsift.report import write_report

DEMO_TARGET = "quantity_comparison"  # yes/no by comparing numbers: accuracy can move, not only loss
# Settings sized for 2 CPU cores (the paper's r=128, 4 epochs and 2048 tokens are the CLI defaults).
TRAINING = {"lora_r": 8, "lora_alpha": 32, "learning_rate": 2e-4, "batch_size": 8, "micro_batch_size": 4,
            "max_length": 256}  # micro-batches of 4: activations stay a few GB
DEMO_EXPERIMENT = {
    "model": "smollm2-135m",
    "methods": ["fusion", "less", "random"],
    "fractions": [0.05],
    "seeds": [0],
    "warmup": {**TRAINING, "fraction": 0.1, "epochs": 2},
    "build": {"batch_size": 4},
    "train": {**TRAINING, "epochs": 3, "warmup_ratio": 0.0},
    "evaluate": {"batch_size": 16, "max_new_tokens": 12},
}
SHOWN = (("base", "untrained model"), ("random", "random selection"), ("less", "LESS selection"),
         ("fusion", "default selection"))


def demo(output: Path = Path("gradsift-demo"), model: str = "smollm2-135m", settings: dict | None = None) -> list[dict]:
    """Run the demo into ``output``; ``settings`` overrides experiment config keys (tests use a tiny model)."""
    console = Console()
    started = time.time()
    output = Path(output)
    data = output / "data"
    if not (data / "benchmark.json").is_file():  # a copy the experiment's config can name beside it
        shutil.copytree(str(files("gradsift") / "demo_data"), data, dirs_exist_ok=True)
    bench = json.loads((data / "benchmark.json").read_text())
    target = bench["targets"][DEMO_TARGET]
    config = {
        **DEMO_EXPERIMENT,
        "model": model,
        **(settings or {}),
        "pool": ["data/pool/*.jsonl"],
        "relevance": "data/relevance.json",
        "targets": {DEMO_TARGET: {"fewshot": [f"data/targets/{DEMO_TARGET}/fewshot.jsonl"],
                                  "test": [f"data/targets/{DEMO_TARGET}/test.jsonl"]}},
    }
    config_path = output / "experiment.yaml"
    config_path.write_text(yaml.safe_dump(config, sort_keys=False))
    console.print(f"[bold]gradsift demo[/bold]: a pool of {bench['pool']['size']} real records from "
                  f"{bench['pool']['families']} task families, {target['counts']['relevant']} of which teach the "
                  f"target [bold]{DEMO_TARGET}[/bold] ({target['skill']}); {target['counts']['fewshot']} few-shot "
                  f"examples, {target['counts']['test']} held-out test items. Experiment in {config_path}",
                  soft_wrap=True)
    rows = run_experiment(load_experiment(config_path), output / "experiment")
    report = write_report(output / "experiment")

    stats = {s["method"]: s for s in summarize(rows)}
    console.print(f"\n[bold]{DEMO_TARGET}[/bold]: held-out test loss on {target['counts']['test']} items "
                  f"(lower is better), after LoRA training on {stats['less']['selected']} selected records", soft_wrap=True)
    for method, label in SHOWN:
        s = stats[method]
        extra = "" if method == "base" else f"   relevant records selected: {s['precision']:.0%}"
        accuracy = "" if s["accuracy"] is None else f"   accuracy {s['accuracy']:.2f}"
        console.print(f"  {label:18s} loss {s['loss']:.3f}{accuracy}{extra}", soft_wrap=True)
    console.print(f"\nreport: {report}\ndone in {(time.time() - started) / 60:.1f} min. Re-run or vary: "
                  f"gradsift experiment {config_path} --output {output / 'experiment'}", soft_wrap=True)
    return rows
