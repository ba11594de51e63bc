"""warmup -> build -> select through the command line on the real SmolLM2-135M and real records (a
record of each family of the demo's pool, gradsift/demo_data)."""

from __future__ import annotations

import csv
import json
import math
import os
from pathlib import Path

import pytest
import torch

from gradsift.cli import main

pytestmark = pytest.mark.integration


@pytest.fixture
def all_threads():
    before = torch.get_num_threads()
    torch.set_num_threads(os.cpu_count() or 1)  # a real model: use the cores
    yield
    torch.set_num_threads(before)


def test_real_model_pipeline(tmp_path, all_threads):
    data = Path(__file__).resolve().parents[1] / "gradsift" / "demo_data"
    # ~40 short records; the pool's BBH chain-of-thought shots (bbh.jsonl) would make the run several times longer
    pool = []
    for family in sorted((data / "pool").glob("*.jsonl")):
        if family.stem != "bbh":
            pool.append(str(tmp_path / "pool" / family.name))
            (tmp_path / "pool").mkdir(exist_ok=True)
            Path(pool[-1]).write_text(family.read_text().splitlines()[0] + "\n")
    target = data / "targets" / "quantity_comparison" / "fewshot.jsonl"  # ten short examples, three subtasks
    run, pool_store, target_store, out = (tmp_path / n for n in ("run", "pool", "target", "selection"))

    assert main(["warmup", "--model", "smollm2-135m", "--train", *pool, "--output", str(run), "--fraction", "0.25",
                 "--epochs", "2", "--lora-r", "4", "--lora-alpha", "16", "--batch-size", "4",
                 "--learning-rate", "1e-4", "--max-length", "256"]) == 0
    common = ["--run", str(run), "--dim", "256", "--batch-size", "8"]
    assert main(["build", *common, "--data", *pool, "--output", str(pool_store)]) == 0
    assert main(["build", *common, "--data", str(target), "--output", str(target_store), "--gradient", "sgd"]) == 0
    assert main(["select", "--method", "less", "--train-store", str(pool_store), "--target-store", str(target_store),
                 "--output", str(out), "--fraction", "0.1"]) == 0
    fused = tmp_path / "fusion"  # the default method: less, bm25 and rds (the stores' model) fused
    assert main(["select", "--train-store", str(pool_store), "--target-store", str(target_store),
                 "--output", str(fused), "--fraction", "0.1"]) == 0

    run_meta = json.loads((run / "run.json").read_text())
    assert [c["epoch"] for c in run_meta["checkpoints"]] == [1, 2]
    manifest = json.loads((pool_store / "manifest.json").read_text())
    assert manifest["status"] == "complete" and manifest["projection"]["dim"] == 256
    assert [c["lr"] for c in manifest["checkpoints"]] == [c["lr"] for c in run_meta["checkpoints"]]

    n_pool = sum(len(open(p).readlines()) for p in pool)
    rows = list(csv.DictReader(open(out / "scores.csv")))
    assert len(rows) == n_pool
    scores = [float(r["score"]) for r in rows if r["status"] == "ok"]
    assert scores and all(math.isfinite(s) and -1.0 <= s <= 1.0 for s in scores)
    assert len(set(scores)) > 1  # real features differ between examples

    selected = (out / "selected.jsonl").read_text().splitlines()
    assert len(selected) == round(0.1 * n_pool)
    source_lines = {line for p in pool for line in open(p).read().splitlines()}
    assert all(line in source_lines for line in selected)  # verbatim records
    best = sorted((r for r in rows if r["rank"]), key=lambda r: int(r["rank"]))[: len(selected)]
    assert [r["selected"] for r in best] == ["1"] * len(selected)

    summary = json.loads((fused / "summary.json").read_text())
    assert summary["method"] == "fusion" and summary["method_settings"]["members"] == ["less", "bm25", "rds"]
    fused_rows = list(csv.DictReader(open(fused / "scores.csv")))
    ok = [r for r in fused_rows if r["status"] == "ok"]
    assert sorted(int(float(r["score"])) for r in ok) == list(range(1, len(ok) + 1))  # n - fused rank
    assert all(int(float(r["score"])) == len(ok) + 1 - int(r["rank"]) for r in ok)
