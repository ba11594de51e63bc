"""The experiment runner on a tiny model: every method trained and evaluated, cells shared and resumed,
relevance precision and recall against the labels, and the results files."""

from __future__ import annotations

import csv
import json
import random
import shutil
from pathlib import Path

import numpy as np
import pytest
import yaml
from helpers import WORDS, write_jsonl

from gradsift.cli import main
from gradsift.experiment import Experiment, load_experiment, run_experiment, summarize
from gradsift.experiment.results import results_markdown
from gradsift.utils.errors import ConfigError

SKILL = "translate french hello world yes no".split()
OTHER = [w for w in WORDS if w not in SKILL]


def chat(rng, words, rid, **extra) -> dict:
    say = lambda lo, hi: " ".join(rng.choice(words) for _ in range(rng.randint(lo, hi)))  # noqa: E731
    return {"id": rid, "messages": [{"role": "user", "content": say(3, 10)},
                                    {"role": "assistant", "content": say(2, 6)}], **extra}


@pytest.fixture(scope="module")
def bench(tmp_path_factory, tiny_model_dir):
    """A pool of 40 records, 6 of them relevant to target 'skill'; two targets with few-shot and test files."""
    root = tmp_path_factory.mktemp("experiment")
    rng = random.Random(3)
    relevant = [chat(rng, SKILL, f"rel{k}", source="skillful") for k in range(6)]
    other = [chat(rng, OTHER, f"oth{k}", source="general") for k in range(34)]
    write_jsonl(root / "pool" / "a.jsonl", relevant[:3] + other[:17])
    write_jsonl(root / "pool" / "b.jsonl", relevant[3:] + other[17:])
    for name, words in (("skill", SKILL), ("other", OTHER)):
        write_jsonl(root / name / "fewshot.jsonl", [chat(rng, words, f"{name}-f{k}", subtask=f"s{k % 2}") for k in range(4)])
        write_jsonl(root / name / "test.jsonl", [chat(rng, words, f"{name}-t{k}") for k in range(5)])
    (root / "relevance.json").write_text(json.dumps({"skill": [r["id"] for r in relevant], "other": []}))
    config = {
        "model": str(tiny_model_dir),
        "pool": ["pool/*.jsonl"],
        "targets": {n: {"fewshot": [f"{n}/fewshot.jsonl"], "test": [f"{n}/test.jsonl"]} for n in ("skill", "other")},
        "relevance": "relevance.json",
        "methods": ["random", "bm25", {"method": "full", "seeds": [0]},
                    {"method": "less", "label": "less-d256", "build": {"dim": 256}},
                    {"method": "less", "label": "less-d512", "build": {"dim": 512}}, "rds",
                    {"method": "fusion", "build": {"dim": 256}, "seeds": [0]},
                    {"method": "less", "label": "less-answer", "build": {"dim": 256},
                     "target_build": {"response": "answer"}, "seeds": [0]}, {"method": "exact", "seeds": [0]},
                    {"method": "less", "label": "less-r2", "build": {"dim": 256}, "warmup": {"lora_r": 2, "lora_alpha": 4},
                     "seeds": [0]},
                    {"method": "oracle", "seeds": [0]}],
        "fractions": [0.1],
        "seeds": [0, 1],
        "warmup": {"fraction": 0.5, "epochs": 1, "lora_r": 4, "lora_alpha": 8, "learning_rate": 1e-2,
                   "batch_size": 4, "max_length": 64, "device": "cpu"},
        "build": {"batch_size": 8, "device": "cpu"},
        "select": {"device": "cpu"},
        "train": {"epochs": 1, "lora_r": 4, "lora_alpha": 8, "learning_rate": 1e-2, "batch_size": 4, "warmup_ratio": 0.0,
                  "max_length": 64, "device": "cpu"},
        "evaluate": {"max_new_tokens": 0, "device": "cpu"},
        "transfer": [{"model": str(tiny_model_dir), "methods": ["random"], "train": {"lora_r": 2}}],
    }
    path = root / "experiment.yaml"
    path.write_text(yaml.safe_dump(config))
    return root, path


@pytest.fixture(scope="module")
def finished(bench):
    root, path = bench
    out = root / "out"
    assert main(["experiment", str(path), "--output", str(out)]) == 0
    return out, list(csv.DictReader(open(out / "results.csv")))


def test_every_cell_has_a_row(finished):
    out, rows = finished
    methods = {"base", "random", "bm25", "full", "less-d256", "less-d512", "rds", "fusion", "less-answer", "exact",
               "less-r2", "oracle"}
    assert {r["method"] for r in rows} == methods
    # 2 targets x (base x 2 models + 5 methods x 2 seeds + full, fusion, less-answer, exact, less-r2, oracle at
    # seed 0 only + transfer random x 2 seeds)
    assert len(rows) == 2 * (2 + 2 * 5 + 6 + 2)
    # the two less dims share one gradient pass: one warmup, and stores of both dims from it; fusion reads
    # the 256-dim stores, and less-answer the same pool store with target stores of its own; less-r2 has
    # its own warmup, so stores of its own
    grid = {s for s in (out / "stores").iterdir() if _store_run(s / "pool") == _run_id(out / "run")}
    stores = sorted(p.name for p in grid)
    assert len(stores) == 2 and stores[0].startswith("sparse-256") and stores[1].startswith("sparse-512")
    assert sorted(p.name.split("-")[0] for p in (out / "stores" / stores[0]).iterdir()) == ["pool", "targets", "targets"]
    answer = next(p for p in (out / "stores" / stores[0]).iterdir() if p.name.startswith("targets-"))
    assert json.loads((answer / "skill" / "manifest.json").read_text())["response"] == "answer"
    fusion = json.loads((out / next(r for r in rows if r["method"] == "fusion")["selection"] / "summary.json").read_text())
    assert fusion["method"] == "fusion" and fusion["pool_store"].endswith(f"{stores[0]}/pool")
    assert all(float(r["loss"]) > 0 for r in rows)
    assert all(r["accuracy"] == "" for r in rows)  # no choices, no generation
    full = [r for r in rows if r["method"] == "full"]
    assert {r["selected"] for r in full} == {"40"} and {r["fraction"] for r in full} == {"1"}
    assert {r["seed"] for r in full} == {"0"}


def _run_id(run) -> str:
    return json.loads((run / "run.json").read_text())["id"]


def _store_run(store) -> str:
    return json.loads((store / "manifest.json").read_text())["run"]


def test_a_method_with_its_own_warmup_has_its_own_run_and_stores(finished):
    out, rows = finished
    runs = {p.name: json.loads((p / "run.json").read_text()) for p in out.glob("run*")}
    assert len(runs) == 2 and runs["run"]["config"]["lora_r"] == 4
    own = next(meta for name, meta in runs.items() if name != "run")
    # the override, over the grid's other warmup settings
    assert own["config"]["lora_r"] == 2 and own["config"]["lora_alpha"] == 4
    assert {k: v for k, v in own["config"].items() if k not in ("lora_r", "lora_alpha", "output")} == \
        {k: v for k, v in runs["run"]["config"].items() if k not in ("lora_r", "lora_alpha", "output")}
    row = next(r for r in rows if r["method"] == "less-r2")
    summary = json.loads((out / row["selection"] / "summary.json").read_text())
    assert _store_run(Path(summary["pool_store"])) == own["id"]
    assert _store_run(Path(summary["target_store"])) == own["id"]
    # LoRA rank 2 has half the parameters of rank 4: its gradients are other features, not a copy
    grid = next(r for r in rows if r["method"] == "less-d256")
    grid_store = json.loads((out / grid["selection"] / "summary.json").read_text())["pool_store"]
    count = lambda store: json.loads((Path(store) / "manifest.json").read_text())["parameters"]["count"]  # noqa: E731
    assert count(summary["pool_store"]) * 2 == count(grid_store)


def test_training_changes_the_loss_and_identical_selections_train_once(finished):
    out, rows = finished
    base = {r["target"]: float(r["loss"]) for r in rows if r["method"] == "base" and r["model"] == rows[0]["model"]}
    trained = [r for r in rows if r["method"] == "bm25"]
    assert all(float(r["loss"]) != base[r["target"]] for r in trained)
    # random selections do not depend on the target and full is the whole pool: one training run per
    # (model, records, settings, seed), however many targets share it
    runs = [p for p in (out / "train").iterdir() if p.is_dir()]
    random_rows = {(r["target"], r["seed"], r["model"]): r for r in rows if r["method"] == "random"}
    skill, other = random_rows[("skill", "0", rows[0]["model"])], random_rows[("other", "0", rows[0]["model"])]
    trained_model = lambda row: (out / row["evaluation"]).name.rsplit("-", 1)[0]  # noqa: E731  (eval folder: <trained>-<settings>)
    assert skill["loss"] != "" and trained_model(skill) == trained_model(other)
    # seeds x (random, bm25, full, less, rds) per target for the deterministic ones, shared for random/full,
    # plus the transfer model's random runs
    assert len(runs) <= 2 * (1 + 1 + 2 * 4) + 2


def test_precision_and_recall_follow_the_labels(finished, bench):
    out, rows = finished
    root, _ = bench
    relevant = set(json.loads((root / "relevance.json").read_text())["skill"])
    for r in rows:
        if r["target"] != "skill" or r["method"] == "base":
            continue
        picked = {s["id"] for s in csv.DictReader(open(out / r["selection"] / "scores.csv")) if s["selected"] == "1"}
        assert float(r["precision"]) == pytest.approx(len(picked & relevant) / len(picked), rel=1e-5)
        assert float(r["recall"]) == pytest.approx(len(picked & relevant) / len(relevant), rel=1e-5)
        scored = [s for s in csv.DictReader(open(out / r["selection"] / "scores.csv")) if s["score"] != ""]
        pairs = [(float(a["score"]) > float(b["score"])) + 0.5 * (a["score"] == b["score"])  # every relevant-other pair
                 for a in scored if a["id"] in relevant for b in scored if b["id"] not in relevant]
        assert float(r["auc"]) == pytest.approx(sum(pairs) / len(pairs), rel=1e-6)
        chars = lambda rows: float(np.median([int(s["chars"]) for s in rows]))  # noqa: E731
        assert float(r["length"]) == pytest.approx(chars([s for s in scored if s["selected"] == "1"]) / chars(scored),
                                                   rel=1e-5)
    bm25 = [r for r in rows if r["target"] == "skill" and r["method"] == "bm25"]
    assert float(bm25[0]["precision"]) == 1.0  # the skill's own words: BM25 finds them
    oracle = next(r for r in rows if r["target"] == "skill" and r["method"] == "oracle")
    assert float(oracle["precision"]) == 1.0 and float(oracle["auc"]) == 1.0  # the labels themselves


def test_results_files(finished):
    out, rows = finished
    md = (out / "results.md").read_text()
    assert "### skill" in md and "### other" in md and md.count("**") >= 4  # a best row per target and model
    assert (out / "results.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    stats = summarize(rows)
    bm25 = next(s for s in stats if s["target"] == "skill" and s["method"] == "bm25")
    losses = [float(r["loss"]) for r in rows if r["target"] == "skill" and r["method"] == "bm25"]
    assert bm25["seeds"] == 2 and bm25["loss"] == pytest.approx(sum(losses) / 2)
    assert results_markdown(rows) == md


def test_each_method_is_compared_with_the_first_at_the_same_seed():
    losses = {"fusion": [0.30, 0.40, 0.50], "less": [0.32, 0.41, 0.56]}
    row = lambda method, seed, loss: {"target": "t", "model": "m", "method": method, "fraction": 0.05, "seed": seed,  # noqa: E731
                                      "selected": 5, "loss": loss, "accuracy": None, "precision": 1.0,
                                      "recall": 0.5, "auc": 0.9, "length": 1.0}
    rows = [{**row("base", "", 1.0), "fraction": 0, "precision": None, "recall": None, "auc": None}]
    rows += [row(m, seed, loss) for m, values in losses.items() for seed, loss in enumerate(values)]
    rows.append({**row("full", 2, 0.45), "fraction": 1.0})  # one seed: paired with the reference's seed 2
    stats = {s["method"]: s for s in summarize(rows)}
    differences = np.subtract(losses["less"], losses["fusion"])
    assert stats["less"]["reference"] == "fusion"
    assert stats["less"]["delta"] == pytest.approx(differences.mean())
    assert stats["less"]["delta_std"] == pytest.approx(differences.std(ddof=1))
    assert stats["full"]["delta"] == pytest.approx(0.45 - 0.50) and stats["full"]["delta_std"] == 0
    assert stats["base"]["delta"] is None and stats["fusion"]["delta"] == 0
    table = results_markdown(rows)
    assert "vs fusion, paired" in table and f"+{differences.mean():.3f} ± {differences.std(ddof=1):.3f}" in table
    # the matrix at the top: one row per method, the seeds it stands on, loss (paired difference), precision
    assert "| method | seeds | t |" in table
    assert f"| fusion | 3 | {np.mean(losses['fusion']):.3f}, P 1.00 |" in table
    assert f"| less | 3 | {np.mean(losses['less']):.3f} (+{differences.mean():.3f}), P 1.00 |" in table
    assert "| full | 1 | 0.450 (-0.050), P 1.00 |" in table and "| base | 1 | 1.000 |" in table


def test_selections_of_the_same_records_in_another_order_share_one_training_run(finished, bench, tmp_path):
    out, rows = finished
    _, path = bench
    config = load_experiment(path)
    row = next(r for r in rows if r["method"] == "bm25" and r["seed"] == "0" and r["model"] == config.model)
    lines = (out / row["selection"] / "selected.jsonl").read_text().splitlines(keepends=True)
    assert len(set(lines)) > 1
    (tmp_path / "selected.jsonl").write_text("".join(reversed(lines)))
    folder = Experiment(config, out).trained(config.model, tmp_path, 0, config.train)
    assert folder.name == (out / row["evaluation"]).name.rsplit("-", 1)[0]  # the existing run, not a new one


def test_rerun_skips_finished_cells(finished, bench):
    out, rows = finished
    _, path = bench
    marks = {p: p.stat().st_mtime_ns for p in out.rglob("summary.json")}
    again = run_experiment(load_experiment(path), out)
    assert len(again) == len(rows)
    assert {p: p.stat().st_mtime_ns for p in out.rglob("summary.json")} == marks


def test_an_unfinished_cell_is_redone(finished, bench, tmp_path):
    out, rows = finished
    _, path = bench
    copy = tmp_path / "out"
    shutil.copytree(out, copy)
    victim = next(p for p in (copy / "eval" / "skill").iterdir() if p.name.startswith("base"))
    shutil.rmtree(victim)
    again = run_experiment(load_experiment(path), copy)
    redone = [r for r in again if r["evaluation"] == str(victim.relative_to(copy))]
    original = [r for r in rows if r["evaluation"] == str(victim.relative_to(copy))]
    assert redone and float(redone[0]["loss"]) == pytest.approx(float(original[0]["loss"]), rel=1e-5)


def test_config_errors_name_the_problem(bench, tmp_path):
    root, path = bench
    raw = yaml.safe_load(path.read_text())
    for change, message in [({"methodz": []}, "unknown keys"), ({"methods": ["random", "random"]}, "distinct"),
                            ({"methods": ["magic"]}, "unknown method"), ({"pool": ["nothing/*.jsonl"]}, "matches no file"),
                            ({"transfer": [{"model": "x", "methods": ["bm25x"]}]}, "not in the grid"),
                            ({"methods": [{"method": "full", "seeds": [7]}]}, "not all among the grid's seeds"),
                            ({"methods": ["oracle"], "relevance": None}, "oracle.*needs 'relevance'"),
                            ({"methods": [{"method": "bm25", "bogus": 1}]}, r"methods.bm25: unknown keys \['bogus'\]"),
                            ({"fractions": "x"}, "fractions: expected list of float"),
                            ({"warmup": {"epochs": "two"}}, "warmup.epochs: expected int, got 'two'"),
                            ({"methods": [{"method": "less", "build": {"dimm": 3}}]}, r"methods.less.build: unknown keys"),
                            ({"methods": [{"method": "less", "warmup": {"epochz": 3}}]}, r"methods.less.warmup: unknown keys"),
                            ({"methods": [{"method": "bm25", "warmup": {"epochs": 3}}]}, "bm25.*takes no warmup")]:
        bad = root / "bad.yaml"
        bad.write_text(yaml.safe_dump({**raw, **change}))
        with pytest.raises(ConfigError, match=message):
            load_experiment(bad)


def test_report_of_the_experiment(finished):
    out, _ = finished
    assert main(["report", str(out)]) == 0
    html = (out / "report.html").read_text()
    assert "skill" in html and "bm25" in html and html.count("data:image/png;base64,") >= 2
    assert (out / "report.html").stat().st_mode & 0o044  # readable by others, like any new file
