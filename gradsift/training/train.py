"""Fine-tune a model on records (a selection's ``selected.jsonl``, or any pool file): LoRA by default,
every weight with ``--full``; the same chat formatting, label masking and training loop as warmup
(``gradsift.training.loop``), seeded and resumable per epoch.

OUTPUT holds the run (``run.json``, ``checkpoint-<step>/`` per epoch; only the last keeps its
optimizer state) and, once training is complete, the final weights at its top level: a peft adapter
(``adapter_config.json``, ``adapter_model.safetensors``) for ``gradsift evaluate --adapter OUTPUT``,
or, with ``--full``, a model folder with its tokenizer for ``gradsift evaluate --model OUTPUT``.
"""

from __future__ import annotations

import shutil
import tempfile
from pathlib import Path

from gradsift.config import TrainConfig
from gradsift.training.loop import train_run
from gradsift.training.run import Run
from gradsift.utils.distributed import World, world_locks
from gradsift.utils.files import atomic_copy, partial_name
from gradsift.utils.models import pick_device

FINAL_FILES = {False: ("adapter_config.json", "adapter_model.safetensors"), True: ("config.json", "model.safetensors")}


def train(config: TrainConfig) -> Run:
    """Train (or resume, or return if complete) and put the final weights at the top of OUTPUT."""
    world = World.current(pick_device(config.device))
    with world_locks(world, [config.output]):
        # a selection's records in any order train the same run; selections that share records, alike
        run = train_run(config, config.model, config.data, config.output, full=config.full,
                        keep_optimizer_states=False, order_by_content=True)
        if world.main:
            _export_final(run)
        world.barrier()
    return run


def _export_final(run: Run) -> None:
    """Copy the last checkpoint's weights (and, for a full model, the tokenizer) to the run folder's top,
    atomically file by file: the adapter_model/model file, written last, says the export is whole."""
    names = FINAL_FILES[run.full]
    if (run.path / names[-1]).exists():
        return
    last = run.checkpoints[-1].path
    files = [p for p in sorted(last.iterdir()) if p.name not in ("optimizer.safetensors", "state.json")]
    if run.full:
        from transformers import AutoTokenizer

        tokenizer_dir = Path(tempfile.mkdtemp(dir=run.path, prefix=partial_name("tokenizer")))
        AutoTokenizer.from_pretrained(run.model.path).save_pretrained(tokenizer_dir)
        files = list(sorted(tokenizer_dir.iterdir())) + files
    for src in sorted(files, key=lambda p: p.name == names[-1]):
        atomic_copy(src, run.path / src.name)
    if run.full:
        shutil.rmtree(tokenizer_dir)
