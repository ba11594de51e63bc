"""Stage 1, warmup: LoRA-train the base model on a random fraction of the pool, one checkpoint per epoch.

A run folder holds ``run.json`` (config, model identity, the list of checkpoints) and one
``checkpoint-<step>/`` per epoch with:

- ``adapter_model.safetensors`` + ``adapter_config.json``: the LoRA adapter (peft format);
- ``optimizer.safetensors``: Adam's ``exp_avg.<name>`` and ``exp_avg_sq.<name>`` for every LoRA
  parameter, keyed by parameter name (readable with no particular launcher or FSDP);
- ``state.json``: epoch, optimizer step count, betas, eps, and the mean learning rate of the epoch,
  which later weighs the checkpoint in the scores.

An interrupted warmup resumes from its last complete epoch and ends as the uninterrupted one would.
"""

from __future__ import annotations

import math
import shutil
import tempfile
import uuid
import warnings
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np
import torch
from safetensors.torch import load_file, save_file
from tqdm.auto import tqdm

from .data import ChatEncoder, collate, encode_refs, index_examples, per_example_loss
from .errors import ConfigError
from .features import AdamState
from .files import atomic_write_json, read_json
from .models import ModelInfo, load_model, pick_device

RUN_FORMAT = 1


@dataclass
class WarmupConfig:
    model: str = field(metadata={"help": "Hugging Face folder, GGUF file, or alias (smollm2-135m, gemma3-270m)"})
    train: list[Path] = field(metadata={"help": "pool files (JSON Lines, JSON array or Parquet); the warmup samples from their union"})
    output: Path = field(metadata={"help": "run folder to write"})
    fraction: float = field(default=0.05, metadata={"help": "fraction of the pool to warm up on"})
    epochs: int = field(default=4, metadata={"help": "epochs; one checkpoint per epoch"})
    lora_r: int = field(default=128, metadata={"help": "LoRA rank"})
    lora_alpha: float = field(default=512.0, metadata={"help": "LoRA alpha"})
    lora_dropout: float = field(default=0.1, metadata={"help": "LoRA dropout"})
    lora_targets: list[str] = field(
        default_factory=lambda: ["q_proj", "k_proj", "v_proj", "o_proj"], metadata={"help": "modules given LoRA"}
    )
    learning_rate: float = field(default=2e-5, metadata={"help": "peak learning rate (linear decay)"})
    warmup_ratio: float = field(default=0.03, metadata={"help": "fraction of steps with linear LR warmup"})
    weight_decay: float = field(default=0.0, metadata={"help": "AdamW weight decay"})
    batch_size: int = field(default=128, metadata={"help": "examples per optimizer step"})
    micro_batch_size: int = field(default=8, metadata={"help": "examples per forward/backward pass"})
    max_length: int = field(default=2048, metadata={"help": "truncate examples to this many tokens"})
    seed: int = field(default=0, metadata={"help": "seed for the sample, the LoRA init, the data order and dropout"})
    skip_bad_records: bool = field(default=False, metadata={"help": "skip malformed records (counted) instead of failing"})
    device: str = field(default="auto", metadata={"help": "auto, cpu, cuda, cuda:1, ..."})

    def fingerprint(self) -> dict:
        """The settings that must agree for a resumed run to continue this one."""
        d = asdict(self)
        for volatile in ("output", "device", "micro_batch_size"):
            d.pop(volatile)
        d["train"] = [str(p) for p in self.train]
        return d


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

    def adam_state(self, names: list[str]) -> tuple[torch.Tensor, torch.Tensor]:
        """exp_avg and exp_avg_sq flattened in the order of ``names``."""
        state = load_file(self.path / "optimizer.safetensors")
        missing = [n for n in names if f"exp_avg.{n}" not in state]
        if missing:
            raise ConfigError(f"{self.path}/optimizer.safetensors has no Adam state for {missing[:3]} ...")
        flat = lambda key: torch.cat([state[f"{key}.{n}"].flatten().float() for n in names])  # noqa: E731
        return flat("exp_avg"), flat("exp_avg_sq")

    def adam(self, names: list[str], device: torch.device | str = "cpu") -> AdamState:
        """The moments with this checkpoint's step, betas and eps: what Adam features need."""
        m, v = self.adam_state(names)
        return AdamState(m.to(device), v.to(device), self.step, self.betas, self.eps)


@dataclass
class Run:
    path: Path
    id: str
    model: ModelInfo
    config: dict
    checkpoints: list[Checkpoint]
    complete: bool

    @classmethod
    def open(cls, path: Path) -> "Run":
        path = Path(path)
        if not (path / "run.json").exists():
            raise ConfigError(f"{path} is not a warmup run (no run.json); create one with `gradsift warmup`")
        meta = read_json(path / "run.json")
        checkpoints = [
            Checkpoint(path / c["name"], c["epoch"], c["step"], c["lr"], tuple(c["betas"]), c["eps"])
            for c in meta["checkpoints"]
        ]
        return cls(path, meta["id"], ModelInfo(**meta["model"]), meta["config"], checkpoints, meta["complete"])

    def save(self) -> None:
        atomic_write_json(self.path / "run.json", {
            "format": RUN_FORMAT,
            "id": self.id,
            "model": asdict(self.model),
            "config": self.config,
            "complete": self.complete,
            "checkpoints": [
                {"name": c.path.name, "epoch": c.epoch, "step": c.step, "lr": c.lr, "betas": list(c.betas), "eps": c.eps}
                for c in self.checkpoints
            ],
        })

    def load_model(self, device: torch.device, dtype: torch.dtype = torch.float32):
        """(peft model with the first checkpoint's adapter, tokenizer), checked to be the run's base model."""
        from peft import get_peft_model, set_peft_model_state_dict

        base, tokenizer, info = load_model(self.model.name, device, dtype)
        if info.fingerprint != self.model.fingerprint:
            raise ConfigError(f"model {self.model.name!r} is not the one run {self.path} was trained from")
        model = get_peft_model(base, lora_config(self.config))
        set_peft_model_state_dict(model, self.checkpoints[0].adapter_state())
        return model, tokenizer


def lora_config(settings: dict):
    """peft's LoraConfig from a run's settings (``WarmupConfig.fingerprint()``)."""
    from peft import LoraConfig

    return LoraConfig(r=settings["lora_r"], lora_alpha=settings["lora_alpha"], lora_dropout=settings["lora_dropout"],
                      target_modules=list(settings["lora_targets"]), task_type="CAUSAL_LM")


def lora_parameters(model) -> list[tuple[str, torch.nn.Parameter]]:
    """The trainable LoRA parameters in model order: the order of every flattened gradient."""
    return [(n, p) for n, p in model.named_parameters() if p.requires_grad]


def _save_checkpoint(run: Run, model, optimizer, epoch: int, step: int, lr: float) -> Checkpoint:
    params = lora_parameters(model)
    group = optimizer.param_groups[0]
    state = {}
    for name, p in params:
        s = optimizer.state[p]
        state[f"exp_avg.{name}"] = s["exp_avg"].detach().float().cpu().contiguous()
        state[f"exp_avg_sq.{name}"] = s["exp_avg_sq"].detach().float().cpu().contiguous()
    adam_steps = {int(optimizer.state[p]["step"]) for _, p in params}
    assert adam_steps == {step}, f"Adam step counts {adam_steps} differ from the run's {step}"
    final = run.path / f"checkpoint-{step}"
    tmp = Path(tempfile.mkdtemp(dir=run.path, prefix=".tmp-checkpoint-"))
    model.save_pretrained(tmp)
    save_file(state, tmp / "optimizer.safetensors")
    betas, eps = tuple(group["betas"]), group["eps"]
    atomic_write_json(tmp / "state.json", {"epoch": epoch, "step": step, "lr": lr, "betas": list(betas), "eps": eps,
                                           "weight_decay": group["weight_decay"]})
    if final.exists():  # a leftover of an interrupted save that never reached run.json
        shutil.rmtree(final)
    tmp.rename(final)
    return Checkpoint(final, epoch, step, lr, betas, eps)


def _restore(model, optimizer, checkpoint: Checkpoint) -> None:
    from peft import set_peft_model_state_dict

    set_peft_model_state_dict(model, checkpoint.adapter_state())
    params = lora_parameters(model)
    m, v = checkpoint.adam_state([n for n, _ in params])
    offset = 0
    for _, p in params:
        n = p.numel()
        optimizer.state[p] = {
            "step": torch.tensor(float(checkpoint.step)),
            "exp_avg": m[offset: offset + n].view_as(p).to(p.device, p.dtype).clone(),
            "exp_avg_sq": v[offset: offset + n].view_as(p).to(p.device, p.dtype).clone(),
        }
        offset += n


def warmup(config: WarmupConfig) -> Run:
    """Train the warmup LoRA and write one checkpoint per epoch; resume or skip if already (partly) done."""
    from peft import get_peft_model
    from transformers import get_linear_schedule_with_warmup

    output = Path(config.output)
    existing = Run.open(output) if (output / "run.json").exists() else None
    if existing is not None:
        if existing.config != config.fingerprint():
            diff = {k for k in config.fingerprint() if existing.config.get(k) != config.fingerprint()[k]}
            raise ConfigError(f"{output} holds a run with other settings ({sorted(diff)}); choose another --output")
        if existing.complete:
            return existing

    device = pick_device(config.device)
    base, tokenizer, info = load_model(config.model, device)
    if existing is not None and existing.model.fingerprint != info.fingerprint:
        raise ConfigError(f"{output} was trained from another model ({existing.model.name})")
    encoder = ChatEncoder(tokenizer, config.max_length)
    examples, bad, _ = index_examples(config.train, encoder, config.skip_bad_records)
    usable = [e for e in examples if e.label_tokens > 0]
    if bad or len(usable) < len(examples):
        print(f"warmup: skipped {len(bad)} malformed records and {len(examples) - len(usable)} without label tokens")
    if not usable:
        raise ConfigError("no usable training examples in the warmup data")
    rng = np.random.default_rng(config.seed)
    size = max(1, round(config.fraction * len(usable)))
    sample = [usable[i] for i in sorted(rng.choice(len(usable), size=size, replace=False))]
    encoded = encode_refs(sample, encoder)

    torch.manual_seed(config.seed)  # LoRA's initial A: the same run from the same config
    model = get_peft_model(base, lora_config(config.fingerprint()))
    params = [p for _, p in lora_parameters(model)]
    optimizer = torch.optim.AdamW(params, lr=config.learning_rate, weight_decay=config.weight_decay)
    steps_per_epoch = math.ceil(len(encoded) / config.batch_size)
    total = steps_per_epoch * config.epochs
    scheduler = get_linear_schedule_with_warmup(optimizer, math.ceil(config.warmup_ratio * total), total)

    run = existing or Run(output, uuid.uuid4().hex, info, config.fingerprint(), [], False)
    output.mkdir(parents=True, exist_ok=True)
    if run.checkpoints:
        _restore(model, optimizer, run.checkpoints[-1])
        with warnings.catch_warnings():  # fast-forwarding the schedule is not a skipped optimizer step
            warnings.simplefilter("ignore", UserWarning)
            for _ in range(run.checkpoints[-1].step):
                scheduler.step()
    run.save()

    autocast = torch.autocast("cuda", dtype=torch.bfloat16, enabled=device.type == "cuda")
    model.train()
    for epoch in range(len(run.checkpoints) + 1, config.epochs + 1):
        torch.manual_seed(config.seed * 1000 + epoch)  # dropout: the same whether or not the run resumed
        order = np.random.default_rng([config.seed, epoch]).permutation(len(encoded))
        lrs = []
        bar = tqdm(range(steps_per_epoch), desc=f"warmup epoch {epoch}/{config.epochs}", unit="step")
        for step in bar:
            chosen = order[step * config.batch_size: (step + 1) * config.batch_size]
            lrs.append(scheduler.get_last_lr()[0])
            total_loss = 0.0
            for k in range(0, len(chosen), config.micro_batch_size):
                batch = collate([encoded[i] for i in chosen[k: k + config.micro_batch_size]], tokenizer.pad_token_id)
                with autocast:
                    loss = per_example_loss(model, {n: t.to(device) for n, t in batch.items()}).sum() / len(chosen)
                loss.backward()
                total_loss += loss.item()
            optimizer.step()
            scheduler.step()
            optimizer.zero_grad(set_to_none=True)
            bar.set_postfix(loss=f"{total_loss:.3f}", lr=f"{lrs[-1]:.2e}")
        step_count = epoch * steps_per_epoch
        run.checkpoints.append(_save_checkpoint(run, model, optimizer, epoch, step_count, float(np.mean(lrs))))
        run.save()
    run.complete = True
    run.save()
    return run
