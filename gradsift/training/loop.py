"""The one training loop of gradsift, shared by ``warmup`` (LESS's step 1) and ``train`` (fine-tuning on
a selection); it writes a run folder (``gradsift.training.run``).

Training is seeded (sample, LoRA init, data order, dropout) and an interrupted run resumes from its
last complete epoch to the same weights as an uninterrupted one.
"""

from __future__ import annotations

import hashlib
import json
import math
import shutil
import tempfile
import uuid
import warnings
from dataclasses import asdict
from pathlib import Path

import numpy as np
import torch
from safetensors.torch import load_file, save_file
from tqdm.auto import tqdm

from gradsift.config import TrainingArguments
from gradsift.data.chat import ChatEncoder, collate, encode_refs, per_example_loss
from gradsift.data.index import index_examples
from gradsift.data.records import print_skips
from gradsift.training.lora import adapted_layers, lora_config, lora_parameters, lora_targets
from gradsift.training.run import Checkpoint, Run
from gradsift.utils.distributed import World
from gradsift.utils.errors import ConfigError
from gradsift.utils.faults import stop_point
from gradsift.utils.files import atomic_write_json, checksums, partial_name, read_json
from gradsift.utils.models import load_model, pick_device


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
    tmp = Path(tempfile.mkdtemp(dir=run.path, prefix=partial_name(final.name)))
    model.save_pretrained(tmp)
    _canonical_adapter_config(tmp / "adapter_config.json")
    save_file(state, tmp / "optimizer.safetensors")
    betas, eps = tuple(group["betas"]), group["eps"]
    atomic_write_json(tmp / "state.json", {"epoch": epoch, "step": step, "lr": lr, "betas": list(betas), "eps": eps,
                                           "weight_decay": group["weight_decay"],
                                           "checksums": checksums(tmp, sorted(p.name for p in tmp.iterdir()))})
    if final.exists():  # a leftover of an interrupted save that never reached run.json
        shutil.rmtree(final)
    tmp.rename(final)
    return Checkpoint(final, epoch, step, lr, betas, eps)


def _canonical_adapter_config(path: Path) -> None:
    """peft writes ``target_modules`` from a set, in an order that varies from process to process (string
    hashing is seeded per process): sorted, a resumed run's checkpoints equal an uninterrupted one's."""
    if not path.exists():  # full fine-tuning: no adapter
        return
    config = read_json(path)
    if isinstance(config.get("target_modules"), list):
        config["target_modules"] = sorted(config["target_modules"])
    path.write_text(json.dumps(config, indent=2, sort_keys=True))


def _drop_optimizer_state(checkpoint: Checkpoint) -> None:
    """Delete a checkpoint's optimizer file (only needed to resume from it) and its checksum."""
    state = read_json(checkpoint.path / "state.json")
    state.get("checksums", {}).pop("optimizer.safetensors", None)
    atomic_write_json(checkpoint.path / "state.json", state)
    (checkpoint.path / "optimizer.safetensors").unlink(missing_ok=True)


def _restore(model, optimizer, checkpoint: Checkpoint, full: bool) -> None:
    if full:  # save_pretrained drops tied copies (lm_head = embeddings): those stay tied
        model.load_state_dict(load_file(checkpoint.path / "model.safetensors"), strict=False)
    else:
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


def learning_rate_factor(step: int, warmup_steps: int, total_steps: int) -> float:
    """The learning rate of optimizer step ``step`` (from 0) as a fraction of the peak: a linear rise over
    ``warmup_steps`` steps, then a linear decay towards 0 at ``total_steps``. Unlike transformers' linear
    schedule, the rise starts at 1/warmup_steps, not at 0: a step at learning rate 0 trains nothing, and a
    warmup whose steps all fell inside the rise would leave checkpoints that cannot weigh any score."""
    if step < warmup_steps:
        return (step + 1) / warmup_steps
    return max(0.0, (total_steps - step) / max(1, total_steps - warmup_steps))


def content_order(examples: list[tuple[list[int], list[int]]], seed: int, epoch: int) -> np.ndarray:
    """A seeded order of ``examples`` (their positions) decided by each example's tokens, not by its place
    in the data: a run on the same examples in another file order is the same run, and two runs at one
    seed on overlapping data see the examples they share in the same relative order. Comparisons of
    selections then differ by the examples they choose, not by a reshuffle (common random numbers)."""
    def key(example) -> bytes:
        ids, labels = (np.asarray(x, dtype=np.int64).tobytes() for x in example)
        return hashlib.blake2b(ids + b"|" + labels, digest_size=16, key=f"{seed}:{epoch}".encode()).digest()

    keys = [key(e) for e in examples]
    return np.array(sorted(range(len(examples)), key=lambda i: (keys[i], i)), dtype=np.int64)


def train_run(settings: TrainingArguments, model_spec: str, data: list[Path], output: Path, *,
              fraction: float = 1.0, full: bool = False, keep_optimizer_states: bool = True,
              order_by_content: bool = False) -> Run:
    """Train on a seeded ``fraction`` of the usable examples of ``data`` (LoRA, or every weight if
    ``full``), one checkpoint per epoch; resume or return an existing run of the same settings.
    Without ``keep_optimizer_states`` only the last checkpoint keeps its optimizer state (enough to
    resume; gradient features need them all). Each epoch's order is a seeded permutation of the
    examples' places (warmup: the order its recorded runs and stores were made with), or with
    ``order_by_content`` (train) their ``content_order``."""
    from peft import get_peft_model

    output = Path(output)
    fingerprint = settings.fingerprint()
    existing = Run.open(output) if (output / "run.json").exists() else None
    if existing is not None:
        if settings.lora_targets is None:  # the model's attention, as the existing run resolved it
            fingerprint["lora_targets"] = existing.config.get("lora_targets")
        if existing.config != fingerprint:
            diff = {k for k in fingerprint.keys() | existing.config.keys() if existing.config.get(k) != fingerprint.get(k)}
            raise ConfigError(f"{output} holds a run with other settings ({sorted(diff)}); choose another --output")
        if existing.complete:
            return existing

    world = World.current(pick_device(settings.device))
    device = world.device(pick_device(settings.device))
    base, tokenizer, info = load_model(model_spec, device)
    if existing is not None and existing.model.fingerprint != info.fingerprint:
        raise ConfigError(f"{output} was trained from another model ({existing.model.name})")
    if not full:  # which layers get LoRA: checked before any work
        fingerprint["lora_targets"], notice = lora_targets(base, fingerprint["lora_targets"])
        if notice and world.main:
            print(f"{'train' if order_by_content else 'warmup'}: {notice}")
    encoder = ChatEncoder(tokenizer, settings.max_length)
    examples, bad, files = index_examples(data, encoder, settings.skip_bad_records)
    usable = [e for e in examples if e.label_tokens > 0]
    if world.main:
        print_skips("train", bad, len(examples) - len(usable), f"{output}/run.json")
    if not usable:
        raise ConfigError(f"no usable training examples in {[str(p) for p in data]}")
    rng = np.random.default_rng(settings.seed)
    size = max(1, round(fraction * len(usable)))
    sample = [usable[i] for i in sorted(rng.choice(len(usable), size=size, replace=False))]
    encoded = encode_refs(sample, encoder)

    torch.manual_seed(settings.seed)  # LoRA's initial A: the same run from the same config
    adapted = {}
    if full:
        model = base.requires_grad_(True)
    else:
        layers = len(adapted_layers(base, fingerprint["lora_targets"]))
        model = get_peft_model(base, lora_config(fingerprint))
    params = [p for _, p in lora_parameters(model)]
    if not full:
        adapted = {"targets": fingerprint["lora_targets"], "layers": layers, "parameters": sum(p.numel() for p in params)}
    optimizer = torch.optim.AdamW(params, lr=settings.learning_rate, weight_decay=settings.weight_decay)
    steps_per_epoch = math.ceil(len(encoded) / settings.batch_size)
    budget = getattr(settings, "steps", None)  # train's equal-compute mode: a number of steps, not of epochs
    epochs = math.ceil(budget / steps_per_epoch) if budget else settings.epochs
    total = budget or steps_per_epoch * epochs
    warmup_steps = math.ceil(settings.warmup_ratio * total)
    scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, lambda k: learning_rate_factor(k, warmup_steps, total))

    run = existing or Run(output, uuid.uuid4().hex, info, fingerprint, [], False, [asdict(f) for f in files],
                          [asdict(b) for b in bad], adapted)
    run.adapted = run.adapted or adapted  # a run from before this was recorded gets it now
    if run.checkpoints:
        _restore(model, optimizer, run.checkpoints[-1], full)
        with warnings.catch_warnings():  # fast-forwarding the schedule is not a skipped optimizer step
            warnings.simplefilter("ignore", UserWarning)
            for _ in range(run.checkpoints[-1].step):
                scheduler.step()
    if world.main:
        run.save()

    autocast = torch.autocast("cuda", dtype=torch.bfloat16, enabled=device.type == "cuda")
    model.train()
    for epoch in range(len(run.checkpoints) + 1, epochs + 1):
        torch.manual_seed(settings.seed * 1000 + epoch)  # dropout: the same whether or not the run resumed
        order = (content_order(encoded, settings.seed, epoch) if order_by_content else
                 np.random.default_rng([settings.seed, epoch]).permutation(len(encoded)))
        lrs = []
        steps = min(steps_per_epoch, total - (epoch - 1) * steps_per_epoch)  # the budget's last epoch: a part
        bar = tqdm(range(steps), desc=f"{output.name} epoch {epoch}/{epochs}", unit="step",
                   disable=not world.main)
        for step in bar:
            chosen = order[step * settings.batch_size: (step + 1) * settings.batch_size]
            mine = chosen[world.rank::world.size]  # data parallel: each process takes its share of the batch
            lrs.append(scheduler.get_last_lr()[0])
            total_loss = torch.zeros((), dtype=torch.float64, device=device)
            for k in range(0, len(mine), settings.micro_batch_size):
                batch = collate([encoded[i] for i in mine[k: k + settings.micro_batch_size]], tokenizer.pad_token_id)
                with autocast:
                    loss = per_example_loss(model, {n: t.to(device) for n, t in batch.items()}).sum() / len(chosen)
                loss.backward()
                total_loss += loss.detach()
            if world.size > 1:
                for p in params:  # a process whose share was empty still takes part in the sum
                    if p.grad is None:
                        p.grad = torch.zeros_like(p)
                world.sum_([total_loss] + [p.grad for p in params])
            total_loss = total_loss.item()
            if not math.isfinite(total_loss):  # one step would make every weight NaN
                raise ConfigError(f"{output}: the training loss is {total_loss} at epoch {epoch}, step {step + 1}; "
                                  "check the model's weights and lower --learning-rate")
            optimizer.step()
            scheduler.step()
            optimizer.zero_grad(set_to_none=True)
            stop_point("train:step")
            bar.set_postfix(loss=f"{total_loss:.3f}", lr=f"{lrs[-1]:.2e}")
        step_count = (epoch - 1) * steps_per_epoch + steps
        if world.main:  # the processes hold the same weights and moments: one of them writes
            run.checkpoints.append(_save_checkpoint(run, model, optimizer, epoch, step_count, float(np.mean(lrs))))
            stop_point("train:checkpoint-saved")  # the checkpoint folder is whole, run.json does not list it yet
            run.save()
            stop_point("train:epoch-done")
            if not keep_optimizer_states and len(run.checkpoints) > 1:
                _drop_optimizer_state(run.checkpoints[-2])
        world.barrier()
    if world.main:
        run.complete = True
        run.save()
    world.barrier()
    return run if world.main else Run.open(output)
