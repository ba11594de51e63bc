"""gradsift demo end to end on a tiny model and the data it ships: the proof it prints (untrained,
random, LESS, the default) comes from a real experiment folder, and the report is written."""

from __future__ import annotations

import csv

from gradsift.demo import DEMO_TARGET, demo

TINY = {"warmup": {"fraction": 0.3, "epochs": 1, "lora_r": 2, "lora_alpha": 4, "batch_size": 4, "max_length": 96,
                   "learning_rate": 1e-2, "warmup_ratio": 0.0, "device": "cpu"},
        "build": {"batch_size": 8, "dim": 256, "device": "cpu"}, "select": {"device": "cpu"},
        "train": {"epochs": 1, "lora_r": 2, "lora_alpha": 4, "batch_size": 4, "max_length": 96,
                  "learning_rate": 1e-2, "warmup_ratio": 0.0, "device": "cpu"},
        "evaluate": {"max_new_tokens": 0, "device": "cpu"}}


def test_demo_trains_on_the_default_less_and_random_and_reports(tmp_path, tiny_model_dir, capsys):
    rows = demo(tmp_path / "demo", model=str(tiny_model_dir), settings=TINY)
    assert {r["method"] for r in rows} == {"base", "fusion", "less", "random"}
    assert {r["target"] for r in rows} == {DEMO_TARGET}
    out = capsys.readouterr().out
    assert all(label in out for label in ("untrained model", "LESS selection", "random selection", "default selection"))
    assert "report.html" in out
    experiment = tmp_path / "demo" / "experiment"
    assert (experiment / "report.html").is_file() and (experiment / "results.png").is_file()
    with open(experiment / "results.csv", newline="") as f:
        written = list(csv.DictReader(f))
    assert len(written) == 4 and all(float(r["loss"]) > 0 for r in written)
    assert (tmp_path / "demo" / "experiment.yaml").is_file()
