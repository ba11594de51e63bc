"""Stage 1, warmup: LoRA-train the base model on a random fraction of the pool, one checkpoint per epoch.

The run folder (``gradsift.training.run``) keeps, for every epoch, the adapter, Adam's moments keyed by
parameter name, and the epoch's mean learning rate: what ``build`` needs for Adam-aware gradient
features and checkpoint weights. An interrupted warmup resumes from its last complete epoch.
"""

from __future__ import annotations

from gradsift.config import WarmupConfig
from gradsift.training.loop import train_run
from gradsift.training.run import Run
from gradsift.utils.distributed import World, world_locks
from gradsift.utils.models import pick_device

__all__ = ["WarmupConfig", "warmup"]


def warmup(config: WarmupConfig) -> Run:
    """Train the warmup LoRA and write one checkpoint per epoch; resume or skip if already (partly) done."""
    with world_locks(World.current(pick_device(config.device)), [config.output]):
        return train_run(config, config.model, config.train, config.output, fraction=config.fraction)
