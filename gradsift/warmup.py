"""Stage 1, warmup: LoRA-train the base model on a random fraction of the pool, one checkpoint per epoch.

The run folder (``gradsift.training``) keeps, for every epoch, the adapter, Adam's moments keyed by
parameter name, and the epoch's mean learning rate: what ``build`` needs for Adam-aware gradient
features and checkpoint weights. An interrupted warmup resumes from its last complete epoch.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

from .training import Run, TrainingArguments, train_run


@dataclass
class WarmupConfig(TrainingArguments):
    model: str = field(metadata={"help": "Hugging Face folder, GGUF file, or alias (smollm2-135m, gemma3-270m)"})
    train: list[Path] = field(metadata={"help": "pool files (JSON Lines, JSON array or Parquet); the warmup samples from their union"})
    output: Path = field(metadata={"help": "run folder to write"})
    fraction: float = field(default=0.05, metadata={"help": "fraction of the pool to warm up on"})


def warmup(config: WarmupConfig) -> Run:
    """Train the warmup LoRA and write one checkpoint per epoch; resume or skip if already (partly) done."""
    return train_run(config, config.model, config.train, config.output, fraction=config.fraction)
