"""The method registry: a method defined and registered here, in the test alone, is offered by
`select --method` and runs in an experiment, with what its class declares (seeded: one selection per seed)."""

from __future__ import annotations

import csv
import json
import random
from dataclasses import dataclass
from typing import ClassVar

import numpy as np
import pytest
import yaml
from helpers import chat_records, write_jsonl

from gradsift.cli import main
from gradsift.config import SelectConfig
from gradsift.selection.methods import METHODS, Pool, SelectionMethod, Target, TargetScores, register, selectable


@dataclass
class Shortest(SelectionMethod):
    """The shortest records first, ties broken by a seeded draw."""

    name: ClassVar[str] = "shortest"
    seeded: ClassVar[bool] = True
    seed: int = 0

    @classmethod
    def from_config(cls, config: SelectConfig, labels=None) -> Shortest:
        return cls(seed=config.seed)

    def score(self, pool: Pool, targets: list[Target]) -> list[TargetScores]:
        chars = np.asarray(pool.refs.column("chars"), np.float64)
        jitter = np.random.default_rng(self.seed).random(len(chars)) * 0.5
        return [TargetScores((-chars + jitter).astype(np.float32)) for _ in targets]


@pytest.fixture
def shortest():
    register(Shortest)
    yield Shortest
    METHODS.pop(Shortest.name)


@pytest.fixture
def records(tmp_path):
    rng = random.Random(5)
    pool = write_jsonl(tmp_path / "pool.jsonl", chat_records(rng, 12, "p"))
    fewshot = write_jsonl(tmp_path / "fewshot.jsonl", chat_records(rng, 3, "f"))
    test = write_jsonl(tmp_path / "test.jsonl", chat_records(rng, 3, "t"))
    return pool, fewshot, test


def test_a_registered_method_is_offered_by_select(shortest, records, tmp_path, capsys):
    pool, fewshot, _ = records
    assert "shortest" in selectable()
    with pytest.raises(SystemExit):
        main(["select", "--help"])
    assert "shortest" in capsys.readouterr().out
    out = tmp_path / "sel"
    assert main(["select", "--method", "shortest", "--pool", str(pool), "--target", str(fewshot),
                 "--output", str(out), "--count", "4"]) == 0
    lengths = sorted((sum(len(m["content"]) for m in json.loads(line)["messages"]), json.loads(line)["id"])
                     for line in pool.read_text().splitlines())
    picked = [json.loads(line)["id"] for line in (out / "selected.jsonl").read_text().splitlines()]
    assert len(picked) == 4 and {i for _, i in lengths[:4]} >= set(picked[:3])  # the shortest (ties by the draw)
    assert json.loads((out / "summary.json").read_text())["method"] == "shortest"


def test_an_unregistered_method_is_refused(records, tmp_path, capsys):
    pool, fewshot, _ = records
    with pytest.raises(SystemExit):
        main(["select", "--method", "shortest", "--pool", str(pool), "--target", str(fewshot), "--output",
              str(tmp_path / "x")])
    assert "invalid choice: 'shortest'" in capsys.readouterr().err


def test_a_registered_method_runs_in_an_experiment_once_per_seed(shortest, records, tiny_model_dir, tmp_path):
    pool, fewshot, test = records
    training = {"epochs": 1, "lora_r": 2, "lora_alpha": 4, "batch_size": 4, "max_length": 64, "device": "cpu"}
    config = {"model": str(tiny_model_dir), "pool": [str(pool)], "methods": ["shortest"], "seeds": [0, 1],
              "fractions": [0.25], "targets": {"t": {"fewshot": [str(fewshot)], "test": [str(test)]}},
              "train": {**training, "warmup_ratio": 0.0}, "evaluate": {"max_new_tokens": 0, "device": "cpu"}}
    path = tmp_path / "experiment.yaml"
    path.write_text(yaml.safe_dump(config))
    out = tmp_path / "exp"
    assert main(["experiment", str(path), "--output", str(out)]) == 0
    rows = [r for r in csv.DictReader(open(out / "results.csv")) if r["method"] == "shortest"]
    assert sorted(r["seed"] for r in rows) == ["0", "1"] and all(r["selected"] == "3" for r in rows)
    assert {p.name for p in (out / "selections" / "shortest" / "0.25").iterdir()} == {"seed-0", "seed-1"}
