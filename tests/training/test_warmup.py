"""Warmup: checkpoint layout, LR weights from the schedule, and resuming an interrupted run exactly."""

from __future__ import annotations

import json
import math
import random
import shutil

import pytest
import torch
from helpers import chat_records, crash_on_second_save, write_jsonl
from safetensors.torch import load_file
from transformers import get_linear_schedule_with_warmup

import gradsift.training.loop as warmup_module
from gradsift.config import BuildConfig, WarmupConfig
from gradsift.features.build import build
from gradsift.training.loop import learning_rate_factor
from gradsift.training.run import Run
from gradsift.training.warmup import warmup
from gradsift.utils.errors import ConfigError, StoreMismatchError

N_EXAMPLES = 18  # 5 steps of 4 per epoch, the last one partial


@pytest.fixture(scope="module")
def pool(tmp_path_factory):
    return write_jsonl(tmp_path_factory.mktemp("warmup-data") / "pool.jsonl",
                       chat_records(random.Random(11), N_EXAMPLES, "p"))


def make_config(model_dir, pool, output, **overrides) -> WarmupConfig:
    settings = dict(model=str(model_dir), train=[pool], output=output, fraction=1.0, epochs=3, lora_r=4,
                    lora_alpha=8.0, lora_dropout=0.1, learning_rate=5e-3, warmup_ratio=0.2, batch_size=4,
                    micro_batch_size=2, max_length=64, seed=5, device="cpu")
    settings.update(overrides)
    return WarmupConfig(**settings)


@pytest.fixture(scope="module")
def full_run(tiny_model_dir, pool, tmp_path_factory):
    return warmup(make_config(tiny_model_dir, pool, tmp_path_factory.mktemp("full") / "run"))


def expected_epoch_lrs(config: dict, n_examples: int) -> list[float]:
    """Mean LR of each epoch's optimizer steps, by hand: step k (from 0) of T with W warmup steps trains at
    peak * (k+1)/W while k < W, then at peak * (T-k)/(T-W)."""
    steps_per_epoch = math.ceil(n_examples / config["batch_size"])
    total = steps_per_epoch * config["epochs"]
    warm = math.ceil(config["warmup_ratio"] * total)
    lrs = [config["learning_rate"] * ((k + 1) / warm if k < warm else (total - k) / (total - warm)) for k in range(total)]
    return [sum(lrs[e * steps_per_epoch: (e + 1) * steps_per_epoch]) / steps_per_epoch
            for e in range(config["epochs"])]


def test_the_schedule_is_transformers_linear_one_without_its_step_at_lr_0():
    optimizer = torch.optim.SGD([torch.nn.Parameter(torch.zeros(1))], lr=1.0)
    for warm, total in [(0, 5), (1, 1), (2, 2), (3, 10), (1, 7)]:
        theirs = get_linear_schedule_with_warmup(optimizer, warm, total).lr_lambdas[0]
        ours = [learning_rate_factor(k, warm, total) for k in range(total)]
        assert all(f > 0 for f in ours)  # every optimizer step trains; theirs(0) is 0 whenever warm > 0
        assert ours[warm - 1: warm] in ([], [1.0])  # the rise ends at the peak
        if warm < total:  # the rise is theirs one step early; the decay is theirs
            assert ours == pytest.approx([theirs(k + 1) if k < warm else theirs(k) for k in range(total)])


def test_a_warmup_inside_the_lr_ramp_still_trains_and_lr_0_is_a_one_line_error(tiny_model_dir, pool, tmp_path):
    # one optimizer step, all of it inside the LR warmup: transformers' schedule would train it at LR 0
    short = warmup(make_config(tiny_model_dir, pool, tmp_path / "short", epochs=1, batch_size=64, warmup_ratio=0.5))
    assert len(short.checkpoints) == 1 and short.checkpoints[0].lr == pytest.approx(5e-3)
    with pytest.raises(ConfigError, match=r"--learning-rate must be a positive number, got 0.0"):
        make_config(tiny_model_dir, pool, tmp_path / "zero", epochs=1, batch_size=64, learning_rate=0.0)
    # a run that trained at LR 0 all the same (made before that check) cannot weigh a store's checkpoints
    zero = tmp_path / "zero"
    shutil.copytree(short.path, zero)
    meta = json.loads((zero / "run.json").read_text())
    meta["checkpoints"] = [{**c, "lr": 0.0} for c in meta["checkpoints"]]
    (zero / "run.json").write_text(json.dumps(meta))
    with pytest.raises(StoreMismatchError, match="learning rate 0"):
        build(BuildConfig(run=zero, data=[pool], output=tmp_path / "store", dim=64, device="cpu"))


def test_checkpoint_lr_is_mean_of_the_epochs_schedule(full_run):
    run = Run.open(full_run.path)
    expected = expected_epoch_lrs(run.config, N_EXAMPLES)
    assert [c.lr for c in run.checkpoints] == pytest.approx(expected, rel=1e-9)
    # the warmup ramp keeps epoch 1 below the peak, then the LR decays
    assert run.config["learning_rate"] > run.checkpoints[0].lr > run.checkpoints[1].lr > run.checkpoints[2].lr > 0


def test_one_checkpoint_per_epoch_with_adapter_and_named_optimizer_state(full_run):
    run = Run.open(full_run.path)
    assert run.complete and len(run.checkpoints) == 3
    assert [c.epoch for c in run.checkpoints] == [1, 2, 3]
    assert [c.step for c in run.checkpoints] == [5, 10, 15]
    model, _ = run.load_model(torch.device("cpu"))
    names = [n for n, p in model.named_parameters() if p.requires_grad]
    assert len(names) == 2 * 4 * 2  # A and B, 4 projections, 2 layers
    previous = None
    for c in run.checkpoints:
        assert c.path.name == f"checkpoint-{c.step}"
        assert (c.path / "adapter_model.safetensors").is_file() and (c.path / "adapter_config.json").is_file()
        adapter_config = json.loads((c.path / "adapter_config.json").read_text())
        assert adapter_config["r"] == 4 and set(adapter_config["target_modules"]) == {"q_proj", "k_proj", "v_proj", "o_proj"}
        optimizer = load_file(c.path / "optimizer.safetensors")
        assert set(optimizer) == {f"{k}.{n}" for k in ("exp_avg", "exp_avg_sq") for n in names}
        params = dict(model.named_parameters())
        assert all(optimizer[f"exp_avg.{n}"].shape == params[n].shape for n in names)
        assert all((optimizer[f"exp_avg_sq.{n}"] >= 0).all() for n in names)
        state = json.loads((c.path / "state.json").read_text())
        assert state["epoch"] == c.epoch and state["step"] == c.step
        assert state["betas"] == [0.9, 0.999] and state["eps"] == 1e-8 and state["lr"] == c.lr
        assert (tuple(state["betas"]), state["eps"]) == (c.betas, c.eps)
        adapter = c.adapter_state()
        if previous is not None:  # training moved the adapter
            assert any(not torch.equal(adapter[k], previous[k]) for k in adapter)
        previous = adapter
    # no temporary folders left behind
    assert sorted(p.name for p in run.path.iterdir()) == ["checkpoint-10", "checkpoint-15", "checkpoint-5", "run.json"]


def test_interrupted_warmup_resumes_to_the_uninterrupted_result(tiny_model_dir, pool, full_run, tmp_path, monkeypatch):
    output = tmp_path / "run"
    config = make_config(tiny_model_dir, pool, output)
    real_save = crash_on_second_save(monkeypatch)
    with pytest.raises(KeyboardInterrupt):
        warmup(config)
    partial = Run.open(output)
    assert not partial.complete and [c.step for c in partial.checkpoints] == [5]

    monkeypatch.setattr(warmup_module, "_save_checkpoint", real_save)
    resumed = warmup(config)
    assert resumed.complete and resumed.id == partial.id
    assert [c.step for c in resumed.checkpoints] == [5, 10, 15]
    for mine, theirs in zip(resumed.checkpoints, full_run.checkpoints):
        assert mine.lr == pytest.approx(theirs.lr, rel=1e-12)
        a, b = mine.adapter_state(), theirs.adapter_state()
        assert a.keys() == b.keys()
        for k in a:
            torch.testing.assert_close(a[k], b[k], rtol=0, atol=1e-6)
        oa, ob = load_file(mine.path / "optimizer.safetensors"), load_file(theirs.path / "optimizer.safetensors")
        for k in oa:
            torch.testing.assert_close(oa[k], ob[k], rtol=1e-5, atol=1e-9)


def test_complete_run_is_returned_and_other_settings_are_refused(tiny_model_dir, pool, full_run):
    config = make_config(tiny_model_dir, pool, full_run.path)
    before = (full_run.path / "run.json").read_bytes()
    again = warmup(config)
    assert again.id == full_run.id and (full_run.path / "run.json").read_bytes() == before
    with pytest.raises(ConfigError, match="learning_rate"):
        warmup(make_config(tiny_model_dir, pool, full_run.path, learning_rate=1e-3))
    # micro batch size is not part of the run's identity
    assert warmup(make_config(tiny_model_dir, pool, full_run.path, micro_batch_size=4)).id == full_run.id


def test_open_refuses_a_folder_without_run(tmp_path):
    with pytest.raises(ConfigError, match="not a warmup run"):
        Run.open(tmp_path)
