"""An experiment's compute budget: with budget {steps: N} every cell trains N optimizer steps, a 25% selection
and the whole pool alike, so "5%, or everything at the same cost?" has an answer."""

from __future__ import annotations

import json
import random

import pytest
import yaml
from helpers import chat_records, write_jsonl

from gradsift.cli import main
from gradsift.experiment import load_experiment
from gradsift.utils.errors import ConfigError


@pytest.fixture
def config(tmp_path, tiny_model_dir):
    rng = random.Random(2)
    pool = write_jsonl(tmp_path / "pool.jsonl", chat_records(rng, 16, "p"))
    fewshot = write_jsonl(tmp_path / "fewshot.jsonl", chat_records(rng, 3, "f"))
    test = write_jsonl(tmp_path / "test.jsonl", chat_records(rng, 3, "t"))
    return {"model": str(tiny_model_dir), "pool": [str(pool)], "methods": ["random", "full"], "fractions": [0.25],
            "targets": {"t": {"fewshot": [str(fewshot)], "test": [str(test)]}}, "budget": {"steps": 3},
            "train": {"epochs": 1, "lora_r": 2, "lora_alpha": 4, "batch_size": 2, "micro_batch_size": 2,
                      "max_length": 64, "warmup_ratio": 0.0, "device": "cpu"},
            "evaluate": {"max_new_tokens": 0, "device": "cpu"}}


def test_every_cell_trains_the_budgets_steps(config, tmp_path):
    path = tmp_path / "experiment.yaml"
    path.write_text(yaml.safe_dump(config))
    assert main(["experiment", str(path), "--output", str(tmp_path / "out")]) == 0
    runs = [json.loads(p.read_text()) for p in (tmp_path / "out" / "train").glob("*/run.json")]
    assert len(runs) == 2  # 4 records (2 steps an epoch) and 16 records (8 steps an epoch)
    assert all(r["checkpoints"][-1]["step"] == 3 and r["config"]["steps"] == 3 for r in runs)


@pytest.mark.parametrize("budget", [{"steps": 0}, {"steps": 2.5}, {"epochs": 3}])
def test_a_budget_that_cannot_work_is_refused(config, tmp_path, budget):
    path = tmp_path / "experiment.yaml"
    path.write_text(yaml.safe_dump({**config, "budget": budget}))
    with pytest.raises(ConfigError, match="budget"):
        load_experiment(path)
