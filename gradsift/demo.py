"""``gradsift demo``: the whole pipeline on the bundled SmolLM2-135M with real pool and target data.

Sized for about 20 minutes on 2 CPU cores: a 540-example pool from nine task families, the 81 BBH
and 49 MMLU chain-of-thought shots as targets, a 2-epoch warmup on 10% of the pool and LoRA r=8
(the paper's r=128 is the CLI default; on a GPU use it), features projected to the default 8192 dims.
Everything it writes, including the pipeline YAML to re-run or edit, goes under the output folder.
"""

from __future__ import annotations

import time
from pathlib import Path

import yaml
from rich.console import Console

from .demo_data import build_demo_data
from .pipeline import load_pipeline, run_pipeline
from .report import print_selection

DEMO_SETTINGS = {
    "model": "smollm2-135m",
    "workdir": ".",
    "warmup": {"fraction": 0.1, "epochs": 2, "lora_r": 8, "lora_alpha": 32, "learning_rate": 2e-4,
               "batch_size": 8, "micro_batch_size": 8, "max_length": 384},
    "pool": {"batch_size": 16},
    "select": {"fraction": 0.05},
}


def demo(output: Path = Path("gradsift-demo"), pool_per_source: int = 60) -> list:
    console = Console()
    started = time.time()
    output = Path(output)
    data = build_demo_data(output / "data", pool_per_source=pool_per_source)
    settings = {
        **DEMO_SETTINGS,
        "pool": {**DEMO_SETTINGS["pool"], "data": [str(p.relative_to(output)) for p in data.pool_files]},
        "targets": {name: {"data": [str(p.relative_to(output)) for p in files]} for name, files in data.targets.items()},
    }
    config_path = output / "pipeline.yaml"
    config_path.write_text(yaml.safe_dump(settings, sort_keys=False))
    console.print(f"[bold]gradsift demo[/bold]: {sum(1 for p in data.pool_files for _ in open(p))} pool examples in "
                  f"{len(data.pool_files)} files, targets {', '.join(data.targets)}; pipeline in {config_path}")
    selections = run_pipeline(load_pipeline(config_path))
    for selection in selections:
        print_selection(selection, console=console)
    console.print(f"\ndone in {(time.time() - started) / 60:.1f} min. Outputs: run {output / 'run'}, stores "
                  f"{output / 'stores'}, selections {output / 'selection'}/<target>/. Re-run or edit: "
                  f"gradsift run {config_path}")
    return selections
