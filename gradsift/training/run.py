"""A training run folder: ``run.json`` (settings, model identity, the list of checkpoints) and one
``checkpoint-<step>/`` per epoch with:

- the weights being trained: ``adapter_model.safetensors`` + ``adapter_config.json`` (a LoRA adapter,
  peft format) or, for full fine-tuning, ``model.safetensors`` + ``config.json``;
- ``optimizer.safetensors``: Adam's ``exp_avg.<name>`` and ``exp_avg_sq.<name>`` for every trained
  parameter, keyed by parameter name (readable with no particular launcher or FSDP);
- ``state.json``: epoch, optimizer step count, betas, eps, and the mean learning rate of the epoch,
  which later weighs the checkpoint in the scores.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from pathlib import Path

import torch
from safetensors.torch import load_file

from gradsift.training.lora import lora_config
from gradsift.utils.errors import ConfigError
from gradsift.utils.files import atomic_write_json, read_json
from gradsift.utils.models import ModelInfo, load_model

RUN_FORMAT = 1


@dataclass(frozen=True)
class Checkpoint:
    path: Path
    epoch: int
    step: int  # optimizer steps taken when saved
    lr: float  # mean learning rate over the epoch: the checkpoint's weight in scores
    betas: tuple[float, float]
    eps: float

    def adapter_state(self) -> dict[str, torch.Tensor]:
        return load_file(self.path / "adapter_model.safetensors")

    def require_adam_state(self) -> None:
        if not (self.path / "optimizer.safetensors").is_file():
            raise ConfigError(f"{self.path / 'optimizer.safetensors'}: optimizer state is missing (Adam features need "
                              "it; a fine-tuning run keeps only its last)")

    def adam_state(self, names: list[str]) -> tuple[torch.Tensor, torch.Tensor]:
        """exp_avg and exp_avg_sq flattened in the order of ``names``."""
        self.require_adam_state()
        state = load_file(self.path / "optimizer.safetensors")
        missing = [n for n in names if f"exp_avg.{n}" not in state]
        if missing:
            raise ConfigError(f"{self.path}/optimizer.safetensors has no Adam state for {missing[:3]} ...")
        flat = lambda key: torch.cat([state[f"{key}.{n}"].flatten().float() for n in names])  # noqa: E731
        return flat("exp_avg"), flat("exp_avg_sq")


@dataclass
class Run:
    path: Path
    id: str
    model: ModelInfo
    config: dict
    checkpoints: list[Checkpoint]
    complete: bool
    data_files: list[dict] = field(default_factory=list)  # what it trained on: path, sha256, records
    bad_records: list[dict] = field(default_factory=list)  # skipped with --skip-bad-records: file, line, problem
    adapted: dict = field(default_factory=dict)  # LoRA: its targets, the layers they matched, the parameters

    @classmethod
    def open(cls, path: Path) -> Run:
        path = Path(path)
        if not (path / "run.json").exists():
            raise ConfigError(f"{path} is not a warmup run (no run.json); create one with `gradsift warmup`")
        meta = read_json(path / "run.json")
        checkpoints = [
            Checkpoint(path / c["name"], c["epoch"], c["step"], c["lr"], tuple(c["betas"]), c["eps"])
            for c in meta["checkpoints"]
        ]
        return cls(path, meta["id"], ModelInfo(**meta["model"]), meta["config"], checkpoints, meta["complete"],
                   meta.get("data_files", []), meta.get("bad_records", []), meta.get("adapted", {}))

    @property
    def full(self) -> bool:
        """Whether every weight was trained (no LoRA)."""
        return bool(self.config.get("full", False))

    def save(self) -> None:
        atomic_write_json(self.path / "run.json", {
            "format": RUN_FORMAT,
            "id": self.id,
            "model": asdict(self.model),
            "config": self.config,
            "complete": self.complete,
            "data_files": self.data_files,
            "bad_records": self.bad_records,
            "adapted": self.adapted,
            "checkpoints": [
                {"name": c.path.name, "epoch": c.epoch, "step": c.step, "lr": c.lr, "betas": list(c.betas), "eps": c.eps}
                for c in self.checkpoints
            ],
        })

    def load_model(self, device: torch.device, dtype: torch.dtype = torch.float32):
        """(peft model with the first checkpoint's adapter, tokenizer), checked to be the run's base model."""
        from peft import get_peft_model, set_peft_model_state_dict

        if self.full:
            raise ConfigError(f"{self.path} is a full fine-tuning run: gradient features need a LoRA run")
        base, tokenizer, info = load_model(self.model.name, device, dtype)
        if info.fingerprint != self.model.fingerprint:
            raise ConfigError(f"model {self.model.name!r} is not the one run {self.path} was trained from")
        model = get_peft_model(base, lora_config(self.config))
        set_peft_model_state_dict(model, self.checkpoints[0].adapter_state())
        return model, tokenizer

