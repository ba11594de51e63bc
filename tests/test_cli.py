"""The command line and the pipeline config on the tiny model: contracts, errors, stage skipping."""

from __future__ import annotations

import json
import os
import random
import subprocess
import sys

import pytest
import yaml
from helpers import chat_records, write_jsonl

from gradsift.cli import build_parser, main
from gradsift.pipeline import load_pipeline

COMMANDS = ("warmup", "build", "select", "train", "evaluate", "experiment", "report", "inspect", "run", "demo")


def test_help_lists_every_command(capsys):
    with pytest.raises(SystemExit):
        main(["--help"])
    out = capsys.readouterr().out
    for command in COMMANDS:
        assert command in out
    for command in COMMANDS:
        with pytest.raises(SystemExit) as exit_info:
            main([command, "--help"])
        assert exit_info.value.code == 0


def test_help_loads_no_heavy_library():
    """--help answers at once: no command's help imports torch or transformers (seconds on a cold start),
    but select's, which lists the registered methods (classes whose modules import torch)."""
    light = [c for c in COMMANDS if c != "select"]
    probe = ("import sys\nfrom gradsift.cli import main\n"
             f"for argv in [['--help']] + [[c, '--help'] for c in {light!r}]:\n"
             "    try:\n        main(argv)\n    except SystemExit:\n        pass\n"
             "print(sorted(m for m in ('torch', 'transformers', 'peft', 'numpy') if m in sys.modules))")
    done = subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True, check=True)
    assert done.stdout.strip().splitlines()[-1] == "[]"


def test_a_run_prints_no_library_noise(tmp_path, tiny_model_dir):
    """Only gradsift's own output: no library warnings or weight-loading bars unless --verbose."""
    data = write_jsonl(tmp_path / "test.jsonl", chat_records(random.Random(0), 3, "t"))
    # a fresh environment: main() called in this process (other tests) sets the libraries' quiet switches
    env = {k: v for k, v in os.environ.items() if k not in ("TRANSFORMERS_VERBOSITY", "HF_HUB_DISABLE_PROGRESS_BARS")}
    command = [sys.executable, "-m", "gradsift", "evaluate", "--model", str(tiny_model_dir), "--data", str(data),
               "--max-new-tokens", "0", "--device", "cpu"]
    quiet = subprocess.run(command + ["--output", str(tmp_path / "q")], capture_output=True, text=True, check=True,
                           env=env)
    assert "Warning" not in quiet.stderr and "Loading weights" not in quiet.stderr, quiet.stderr
    assert "evaluated 3 examples" in quiet.stdout
    verbose = subprocess.run(command + ["--output", str(tmp_path / "v"), "--verbose"], capture_output=True, text=True,
                             check=True, env=env)
    assert "Loading weights" in verbose.stderr  # the switch does something: the libraries' own bars come back


def test_contract_flags_parse():
    args = build_parser().parse_args(["select", "--train-store", "P", "--target-store", "A", "B", "--output", "O",
                                      "--count", "7"])
    assert [str(p) for p in args.target_store] == ["A", "B"] and args.count == 7 and args.fraction == 0.05
    args = build_parser().parse_args(["warmup", "--model", "m", "--train", "a", "b", "--output", "r"])
    assert (args.fraction, args.epochs, args.lora_r, args.lora_alpha, args.learning_rate) == (0.05, 4, 128, 512.0, 2e-5)
    args = build_parser().parse_args(["build", "--run", "r", "--data", "d", "--output", "o"])
    assert (args.gradient, args.dim, args.adam_form) == ("adam", 8192, "corrected")


def test_bad_record_is_a_clear_error(tmp_path, tiny_model_dir, capsys):
    pool = write_jsonl(tmp_path / "pool.jsonl", chat_records(random.Random(0), 4, "p"))
    with open(pool, "a") as f:
        f.write('{"messages": [{"role": "user", "content": "hi"}]\n')  # line 5: truncated JSON
    code = main(["warmup", "--model", str(tiny_model_dir), "--train", str(pool), "--output", str(tmp_path / "run")])
    assert code == 2
    err = capsys.readouterr().err
    assert f"{pool}:5:" in err and "Traceback" not in err


def test_unknown_model_is_a_clear_error(tmp_path, capsys):
    pool = write_jsonl(tmp_path / "pool.jsonl", chat_records(random.Random(0), 2, "p"))
    assert main(["warmup", "--model", "no-such-model", "--train", str(pool), "--output", str(tmp_path / "r")]) == 2
    assert "no-such-model" in capsys.readouterr().err


def _pipeline_yaml(tmp_path, model_dir) -> str:
    rng = random.Random(1)
    write_jsonl(tmp_path / "data" / "a.jsonl", chat_records(rng, 20, "a"))
    write_jsonl(tmp_path / "data" / "b.jsonl", chat_records(rng, 20, "b"))
    write_jsonl(tmp_path / "data" / "t.jsonl", chat_records(rng, 3, "t", "s"))
    config = {
        "model": str(model_dir),
        "workdir": "work",
        "warmup": {"fraction": 0.5, "epochs": 2, "lora_r": 4, "lora_alpha": 16, "batch_size": 8},
        "pool": {"data": ["data/a.jsonl", "data/b.jsonl"], "dim": 64},
        "targets": {"tgt": {"data": ["data/t.jsonl"]}},
        "select": {"count": 5},
    }
    path = tmp_path / "pipeline.yaml"
    path.write_text(yaml.safe_dump(config))
    return str(path)


def test_run_pipeline_then_rerun_skips_finished_stages(tmp_path, tiny_model_dir):
    config = _pipeline_yaml(tmp_path, tiny_model_dir)
    assert main(["run", config]) == 0
    work = tmp_path / "work"
    selected = (work / "selection" / "selected.jsonl").read_text().splitlines()
    assert len(selected) == 5
    target_manifest = json.loads((work / "stores" / "tgt" / "manifest.json").read_text())
    assert target_manifest["gradient"] == "sgd" and target_manifest["projection"]["dim"] == 64
    finished = {p: p.stat().st_mtime_ns for p in [*work.rglob("*.npy"), *work.rglob("manifest.json"),
                                                   work / "run" / "run.json"]}
    assert main(["run", config]) == 0
    assert {p: p.stat().st_mtime_ns for p in finished} == finished  # nothing recomputed
    assert (work / "selection" / "selected.jsonl").read_text().splitlines() == selected


def test_pipeline_rejects_unknown_keys(tmp_path, tiny_model_dir):
    config = _pipeline_yaml(tmp_path, tiny_model_dir)
    raw = yaml.safe_load(open(config))
    raw["pool"]["dims"] = 3
    open(config, "w").write(yaml.safe_dump(raw))
    with pytest.raises(Exception, match="unknown keys.*dims"):
        load_pipeline(config).stage_configs()
