"""gradsift train: the shared training loop on records, LoRA or full, resumable, exported for evaluate."""

from __future__ import annotations

import random

import pytest
import torch
from helpers import chat_records, crash_on_second_save, write_jsonl
from safetensors.torch import load_file

import gradsift.training.loop as training
from gradsift.cli import main
from gradsift.config import EvaluateConfig, TrainConfig
from gradsift.evaluation.evaluate import evaluate
from gradsift.training.run import Run
from gradsift.training.train import train
from gradsift.utils.errors import DataError


@pytest.fixture(scope="module")
def records(tmp_path_factory):
    root = tmp_path_factory.mktemp("train-data")
    rng = random.Random(2)
    train = write_jsonl(root / "train.jsonl", chat_records(rng, 12, "t"))
    return train, write_jsonl(root / "test.jsonl", chat_records(rng, 6, "x"))


def config(model_dir, data, output, **overrides) -> TrainConfig:
    settings = dict(model=str(model_dir), data=[data], output=output, epochs=2, lora_r=4, lora_alpha=8.0,
                    lora_dropout=0.0, learning_rate=1e-2, warmup_ratio=0.0, batch_size=4, micro_batch_size=2,
                    max_length=64, seed=1, device="cpu")
    return TrainConfig(**{**settings, **overrides})


@pytest.fixture(scope="module")
def lora_run(tiny_model_dir, records, tmp_path_factory):
    out = tmp_path_factory.mktemp("lora") / "trained"
    assert main(["train", "--model", str(tiny_model_dir), "--data", str(records[0]), "--output", str(out),
                 "--epochs", "2", "--lora-r", "4", "--lora-alpha", "8", "--lora-dropout", "0", "--learning-rate", "1e-2",
                 "--warmup-ratio", "0", "--batch-size", "4", "--micro-batch-size", "2", "--max-length", "64",
                 "--seed", "1", "--device", "cpu"]) == 0
    return Run.open(out)


def test_output_holds_the_final_adapter_and_only_the_last_optimizer_state(lora_run):
    assert lora_run.complete and [c.step for c in lora_run.checkpoints] == [3, 6]
    final = load_file(lora_run.path / "adapter_model.safetensors")
    last = lora_run.checkpoints[-1].adapter_state()
    assert final.keys() == last.keys() and all(torch.equal(final[k], last[k]) for k in final)
    assert (lora_run.path / "adapter_config.json").is_file()
    assert not (lora_run.checkpoints[0].path / "optimizer.safetensors").exists()
    assert (lora_run.checkpoints[-1].path / "optimizer.safetensors").exists()


def test_training_lowers_the_loss_on_its_own_records(lora_run, tiny_model_dir, records, tmp_path):
    base = evaluate(EvaluateConfig(model=str(tiny_model_dir), data=[records[0]], output=tmp_path / "base",
                                   max_new_tokens=0, device="cpu"))
    tuned = evaluate(EvaluateConfig(model=str(tiny_model_dir), adapter=lora_run.path, data=[records[0]],
                                    output=tmp_path / "tuned", max_new_tokens=0, device="cpu"))
    assert tuned["loss"] < base["loss"] - 0.1


def test_interrupted_training_resumes_to_the_uninterrupted_result(lora_run, tiny_model_dir, records, tmp_path, monkeypatch):
    real_save = crash_on_second_save(monkeypatch)
    with pytest.raises(KeyboardInterrupt):
        train(config(tiny_model_dir, records[0], tmp_path / "run"))
    assert not (tmp_path / "run" / "adapter_model.safetensors").exists()  # no final weights from a partial run
    monkeypatch.setattr(training, "_save_checkpoint", real_save)
    resumed = train(config(tiny_model_dir, records[0], tmp_path / "run"))
    a, b = load_file(resumed.path / "adapter_model.safetensors"), load_file(lora_run.path / "adapter_model.safetensors")
    for k in a:
        torch.testing.assert_close(a[k], b[k], rtol=0, atol=1e-6)


def test_the_order_of_the_records_does_not_change_the_run(lora_run, tiny_model_dir, records, tmp_path):
    lines = records[0].read_text().splitlines(keepends=True)
    shuffled = tmp_path / "shuffled.jsonl"
    shuffled.write_text("".join(reversed(lines)))
    run = train(config(tiny_model_dir, shuffled, tmp_path / "run"))
    a, b = load_file(run.path / "adapter_model.safetensors"), load_file(lora_run.path / "adapter_model.safetensors")
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)


def test_content_order_keeps_shared_examples_in_one_relative_order():
    rng = random.Random(0)
    examples = [([rng.randrange(100) for _ in range(5)], [1, 2]) for _ in range(40)]
    subset = examples[1:12:2] + examples[::2]  # overlapping data, in another order
    for seed, epoch in [(0, 1), (3, 2)]:
        whole = [examples[i] for i in training.content_order(examples, seed, epoch)]
        part = [subset[i] for i in training.content_order(subset, seed, epoch)]
        assert [e for e in whole if e in subset] == part
    first = training.content_order(examples, 0, 1)
    assert sorted(first.tolist()) == list(range(40))  # a permutation
    assert first.tolist() != training.content_order(examples, 0, 2).tolist()  # each epoch its own order
    assert first.tolist() != training.content_order(examples, 1, 1).tolist()  # each seed its own order


def test_moved_records_resume_and_a_missing_file_is_a_clear_error(lora_run, tiny_model_dir, records, tmp_path):
    moved = tmp_path / "moved.jsonl"
    moved.write_bytes(records[0].read_bytes())
    assert train(config(tiny_model_dir, moved, lora_run.path)).id == lora_run.id  # same content: the same run
    with pytest.raises(DataError, match="no such data file"):
        train(config(tiny_model_dir, tmp_path / "absent.jsonl", tmp_path / "x"))


def test_full_fine_tuning_exports_a_model_folder(tiny_model_dir, records, tmp_path):
    run = train(config(tiny_model_dir, records[0], tmp_path / "full", full=True, epochs=1, learning_rate=1e-3))
    assert run.full and (run.path / "model.safetensors").is_file() and (run.path / "tokenizer.json").is_file()
    before = load_file(tiny_model_dir / "model.safetensors")
    after = load_file(run.path / "model.safetensors")
    assert any(not torch.equal(before[k], after[k]) for k in after if k in before)  # every weight trains
    base = evaluate(EvaluateConfig(model=str(tiny_model_dir), data=[records[0]], output=tmp_path / "e0",
                                   max_new_tokens=0, device="cpu"))
    tuned = evaluate(EvaluateConfig(model=str(run.path), data=[records[0]], output=tmp_path / "e1",
                                    max_new_tokens=0, device="cpu"))
    assert tuned["loss"] < base["loss"]


def test_a_step_budget_trains_that_many_steps_whatever_the_records(tiny_model_dir, records, tmp_path):
    """Equal compute: --steps N takes N optimizer steps, cycling the records epoch after epoch (the last
    epoch cut short), with the LR schedule over those N steps; without it, --epochs as before."""
    train_file, _ = records  # 12 records, batch 4: 3 steps an epoch
    common = dict(model=str(tiny_model_dir), data=[train_file], lora_r=2, lora_alpha=4.0, batch_size=4,
                  micro_batch_size=4, max_length=64, learning_rate=1e-2, warmup_ratio=0.0, device="cpu")
    run = train(TrainConfig(**common, output=tmp_path / "budget", steps=7, epochs=1))
    assert [c.step for c in run.checkpoints] == [3, 6, 7]  # epochs 1, 2 and a third of one step
    assert run.checkpoints[-1].lr < run.checkpoints[0].lr  # the schedule decays over the 7 steps
    assert "steps" in run.config and run.config["steps"] == 7
    plain = train(TrainConfig(**common, output=tmp_path / "epochs", epochs=2))
    assert [c.step for c in plain.checkpoints] == [3, 6] and "steps" not in plain.config
