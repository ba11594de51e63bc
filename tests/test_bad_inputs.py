"""The bad-input corpus (``tests/bad_inputs/``) against every command that reads records: each case is
either a one-line error naming the file, the line (or row) and the problem, or, with
``--skip-bad-records``, a skip that is counted and listed. Never a traceback (in-process, one would fail
the test), never a silent drop. Then damaged stores, runs and config files."""

from __future__ import annotations

import dataclasses
import json
import random
import shutil
from pathlib import Path

import numpy as np
import pyarrow.parquet as pq
import pytest
import torch
import yaml
from helpers import chat_records, write_jsonl, write_parquet

from gradsift.cli import main

CORPUS = Path(__file__).parent / "bad_inputs"
# file -> words the error must contain (besides FILE:3:)
RECORD_CASES = {
    "malformed_json.jsonl": "not valid JSON",
    "not_an_object.jsonl": "must be a JSON object",
    "wrong_field_type.jsonl": "must be a string",
    "missing_messages.jsonl": "unknown record format",
    "empty_messages.jsonl": "non-empty list",
    "unknown_role.jsonl": "has role 'robot'",
    "no_assistant_turn.jsonl": "no assistant message",
    "empty_assistant_turn.jsonl": "is empty",
    "non_utf8.jsonl": "not valid UTF-8",
    "duplicate_ids.jsonl": "duplicate id 'g2'",
    "sharegpt_unknown_speaker.jsonl": "is from 'robot'",
    "malformed_json_gzip.jsonl.gz": "not valid JSON",
    "lone_surrogate.jsonl": "unpaired UTF-16 surrogate (\\ud800)",
}
SMALL = ["--lora-r", "4", "--lora-alpha", "8", "--batch-size", "4", "--max-length", "64", "--device", "cpu"]


@pytest.fixture(scope="module")
def ctx(tmp_path_factory, tiny_model_dir):
    root = tmp_path_factory.mktemp("bad")
    good = write_jsonl(root / "good.jsonl", chat_records(random.Random(0), 8, "p"))
    assert main(["warmup", "--model", str(tiny_model_dir), "--train", str(good), "--output", str(root / "run"),
                 "--fraction", "1", "--epochs", "1", *SMALL]) == 0
    return {"root": root, "good": good, "model": str(tiny_model_dir), "run": root / "run"}


def commands(ctx, data: Path, out: Path) -> dict[str, list[str]]:
    """Every command that reads records, reading DATA (select: as the pool and as the target)."""
    m, good = ctx["model"], str(ctx["good"])
    return {
        "warmup": ["warmup", "--model", m, "--train", str(data), "--output", str(out), "--fraction", "1", "--epochs",
                   "1", *SMALL],
        "build": ["build", "--run", str(ctx["run"]), "--data", str(data), "--dim", "32", "--output", str(out),
                  "--device", "cpu"],
        "select-pool": ["select", "--method", "bm25", "--pool", str(data), "--target", good, "--count", "2",
                        "--output", str(out)],
        "select-target": ["select", "--method", "bm25", "--pool", good, "--target", str(data), "--count", "2",
                          "--output", str(out)],
        "train": ["train", "--model", m, "--data", str(data), "--output", str(out), "--epochs", "1", *SMALL],
        "evaluate": ["evaluate", "--model", m, "--data", str(data), "--output", str(out), "--max-new-tokens", "2",
                     "--max-length", "64", "--device", "cpu"],
    }


COMMAND_NAMES = ["warmup", "build", "select-pool", "select-target", "train", "evaluate"]


def one_line_error(capsys, *fragments) -> str:
    """The command's error: one line, the last one (progress bars may precede it), no traceback."""
    err = capsys.readouterr().err
    errors = [line for line in err.splitlines() if line.startswith("gradsift ")]
    assert len(errors) == 1 and err.rstrip().endswith(errors[0]) and "Traceback" not in err, err
    for fragment in fragments:
        assert fragment in errors[0], err
    return errors[0]


def skipped_lines(command: str, out: Path) -> list[int]:
    """The lines a finished command lists as skipped bad records, from its own output files."""
    if command == "build":
        listed = json.loads((out / "manifest.json").read_text())["bad_records"]
    elif command.startswith("select"):
        listed = json.loads((out / "summary.json").read_text())["bad_records"]
    elif command == "evaluate":
        listed = json.loads((out / "summary.json").read_text())["bad_records"]
    else:
        listed = json.loads((out / "run.json").read_text())["bad_records"]
    return [b["line"] for b in listed]


@pytest.mark.parametrize("case", list(RECORD_CASES))
@pytest.mark.parametrize("command", COMMAND_NAMES)
def test_a_bad_record_is_a_one_line_error_or_a_listed_skip(ctx, case, command, tmp_path, capsys):
    data = CORPUS / case
    argv = commands(ctx, data, tmp_path / "out")[command]
    assert main(argv) == 2
    one_line_error(capsys, f"{data.resolve()}:3: ", RECORD_CASES[case])
    assert main(argv + ["--skip-bad-records"]) == 0
    assert skipped_lines(command, tmp_path / "out") == [3]
    assert "skipped 1 malformed record" in capsys.readouterr().out


@pytest.mark.parametrize("form", ["save_to_disk", "parquet shards"])
def test_a_bad_record_in_a_dataset_folder_names_its_shard_and_row(ctx, form, tmp_path, capsys):
    """The folders of the Hugging Face formats: a record with an unknown role, in the second shard, is a one-line
    error naming that shard and its row, or with --skip-bad-records a listed skip."""
    records = [json.loads(line) for line in (CORPUS / "unknown_role.jsonl").read_text().splitlines()]  # bad: the third
    folder = tmp_path / "pool"
    if form == "save_to_disk":
        datasets = pytest.importorskip("datasets")
        datasets.Dataset.from_list(records[2:] + records[:2]).save_to_disk(str(folder), num_shards=2)  # bad: row 1
        shard = sorted(folder.glob("*.arrow"))[0]
    else:
        write_parquet(folder / "train-00000-of-00002.parquet", records[3:])
        shard = write_parquet(folder / "train-00001-of-00002.parquet", records[:3])  # bad: row 3
    argv = commands(ctx, folder, tmp_path / "out")["select-pool"]
    assert main(argv) == 2
    error = one_line_error(capsys, str(shard.resolve()), "has role 'robot'")
    assert main(argv + ["--skip-bad-records"]) == 0
    listed = json.loads((tmp_path / "out" / "summary.json").read_text())["bad_records"]
    assert len(listed) == 1 and listed[0]["file"] == str(shard.resolve()) and f":{listed[0]['line']}:" in error


@pytest.mark.parametrize("command", COMMAND_NAMES)
def test_an_empty_file_a_directory_and_a_missing_file_are_named(ctx, command, tmp_path, capsys):
    for data, problem in [(CORPUS / "empty.jsonl", "no records"), (tmp_path, "is a directory"),
                          (tmp_path / "nope.jsonl", "no such data file")]:
        assert main(commands(ctx, data, tmp_path / "out")[command]) == 2
        one_line_error(capsys, str(data.resolve()), problem)


@pytest.mark.parametrize("command", ["warmup", "build", "train", "evaluate"])
def test_a_fully_truncated_answer_is_counted_not_trained_on(ctx, command, tmp_path, capsys):
    out = tmp_path / "out"
    assert main(commands(ctx, CORPUS / "fully_truncated_assistant.jsonl", out)[command]) == 0
    if command == "build":
        assert json.loads((out / "manifest.json").read_text())["counts"]["no_label_tokens"] == 1
    elif command == "evaluate":
        assert json.loads((out / "summary.json").read_text())["skipped"]["no_label_tokens"] == 1
    else:
        assert "1 without label tokens" in capsys.readouterr().out


@pytest.mark.parametrize("command", COMMAND_NAMES)
def test_a_million_character_record_is_read(ctx, command, tmp_path):
    records = chat_records(random.Random(2), 4, "p")
    records[1]["messages"][1]["content"] = "word " * 200_000  # truncated to --max-length, not rejected
    data = write_jsonl(tmp_path / "huge.jsonl", records)
    assert main(commands(ctx, data, tmp_path / "out")[command]) == 0


@pytest.mark.parametrize("command", COMMAND_NAMES)
def test_a_parquet_column_of_the_wrong_type_names_the_row(ctx, command, tmp_path, capsys):
    records = [{"id": f"r{k}", "prompt": f"question {k}", "completion": k} for k in range(4)]  # ints, not strings
    data = write_parquet(tmp_path / "typed.parquet", records)
    assert main(commands(ctx, data, tmp_path / "out")[command]) == 2
    one_line_error(capsys, f"{data.resolve()}:1: ", "'completion' must be a string")


# -- damaged stores, runs and configs --------------------------------------------------------------
@pytest.fixture(scope="module")
def stores(ctx):
    root = ctx["root"]
    for name, gradient in (("pool", "adam"), ("target", "sgd")):
        assert main(["build", "--run", str(ctx["run"]), "--data", str(ctx["good"]), "--gradient", gradient,
                     "--dim", "32", "--output", str(root / name), "--device", "cpu"]) == 0
    other = root / "other-run"
    assert main(["warmup", "--model", ctx["model"], "--train", str(ctx["good"]), "--output", str(other),
                 "--fraction", "1", "--epochs", "1", "--seed", "9", *SMALL]) == 0
    assert main(["build", "--run", str(other), "--data", str(ctx["good"]), "--gradient", "sgd", "--dim", "32",
                 "--output", str(root / "target-other"), "--device", "cpu"]) == 0
    return root


def select_stores(pool: Path, target: Path, out: Path) -> list[str]:
    return ["select", "--method", "less", "--train-store", str(pool), "--target-store", str(target), "--count", "2",
            "--output", str(out)]


def test_a_target_store_of_another_run_is_refused(stores, tmp_path, capsys):
    assert main(select_stores(stores / "pool", stores / "target-other", tmp_path / "out")) == 2
    one_line_error(capsys, "cannot be compared", "run")


@pytest.mark.parametrize("damage", ["missing", "truncated"])
def test_a_missing_or_truncated_feature_file_is_named(stores, damage, tmp_path, capsys):
    pool = tmp_path / "pool"
    shutil.copytree(stores / "pool", pool)
    (feature,) = (pool / "features").iterdir()
    if damage == "missing":
        feature.unlink()
    else:
        feature.write_bytes(feature.read_bytes()[:200])
    assert main(select_stores(pool, stores / "target", tmp_path / "out")) == 2
    one_line_error(capsys, str(feature), damage)


def test_a_run_without_its_optimizer_file_is_named(ctx, tmp_path, capsys):
    run = tmp_path / "run"
    shutil.copytree(ctx["run"], run)
    (optimizer,) = run.glob("checkpoint-*/optimizer.safetensors")
    optimizer.unlink()
    assert main(["build", "--run", str(run), "--data", str(ctx["good"]), "--dim", "32", "--output",
                 str(tmp_path / "store"), "--device", "cpu"]) == 2
    one_line_error(capsys, str(optimizer), "missing")


@pytest.mark.parametrize("change,problem", [({"warmup": {"epochz": 2}}, "epochz"),
                                            ({"warmup": {"epochs": "two"}}, "epochs"),
                                            ({"select": {"fraction": [0.1]}}, "fraction")])
def test_a_bad_config_file_names_the_key(ctx, change, problem, tmp_path, capsys):
    config = {"model": ctx["model"], "workdir": str(tmp_path / "w"), "pool": {"data": [str(ctx["good"])]},
              "targets": {"t": {"data": [str(ctx["good"])]}}}
    for stage, values in change.items():
        config[stage] = values
    path = tmp_path / "pipeline.yaml"
    path.write_text(yaml.safe_dump(config))
    assert main(["run", str(path)]) == 2
    one_line_error(capsys, problem)


# -- non-finite gradients ----------------------------------------------------------------------------
def test_a_non_finite_gradient_is_set_aside_and_never_scored(ctx, tmp_path, capsys):
    """A poisoned embedding row (NaN) gives every example that uses its token a NaN gradient: build
    records those rows with their own status, counts and lists them, and select never scores them."""
    import csv

    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    model = AutoModelForCausalLM.from_pretrained(ctx["model"])
    tokenizer = AutoTokenizer.from_pretrained(ctx["model"])
    assert not model.config.tie_word_embeddings  # the LM head stays finite: only inputs with "Z" are poisoned
    with torch.no_grad():
        model.get_input_embeddings().weight[tokenizer.convert_tokens_to_ids("Z")] = float("nan")
    poisoned = tmp_path / "poisoned"
    model.save_pretrained(poisoned)
    tokenizer.save_pretrained(poisoned)
    records = chat_records(random.Random(5), 6, "p")
    records[2]["messages"][1]["content"] += " Z"
    pool = write_jsonl(tmp_path / "pool.jsonl", records)
    run, store, target_store, sel = (tmp_path / n for n in ("run", "store", "target", "sel"))
    assert main(["warmup", "--model", str(poisoned), "--train", str(ctx["good"]), "--output", str(run),
                 "--fraction", "1", "--epochs", "1", *SMALL]) == 0
    for data, out, gradient in ((pool, store, "adam"), (ctx["good"], target_store, "sgd")):
        assert main(["build", "--run", str(run), "--data", str(data), "--dim", "32", "--gradient", gradient,
                     "--output", str(out), "--device", "cpu"]) == 0
    manifest = json.loads((store / "manifest.json").read_text())
    assert manifest["counts"]["non_finite_gradient"] == 1 and manifest["counts"]["ok"] == 5
    assert manifest["non_finite_gradient"] == [f"{pool.resolve()}:3"]
    index = pq.read_table(store / "index.parquet").column("non_finite_gradient").to_pylist()
    assert index == [False, False, True, False, False, False]
    (features,) = (np.load(f) for f in (store / "features").iterdir())
    assert np.isfinite(features).all() and not features[2].any()
    assert main(["select", "--method", "less", "--train-store", str(store), "--target-store", str(target_store), "--count", "2",
                 "--output", str(sel)]) == 0
    rows = list(csv.DictReader(open(sel / "scores.csv")))
    assert rows[2]["status"] == "non_finite_gradient" and rows[2]["score"] == "" and rows[2]["selected"] == "0"
    assert all(np.isfinite(float(r["score"])) for k, r in enumerate(rows) if k != 2)
    assert json.loads((sel / "summary.json").read_text())["pool"]["skipped"]["non_finite_gradient"] == 1
    assert main(["evaluate", "--model", str(poisoned), "--data", str(pool), "--output", str(tmp_path / "e"),
                 "--max-new-tokens", "0", "--device", "cpu"]) == 0
    summary = json.loads((tmp_path / "e" / "summary.json").read_text())
    assert summary["skipped"]["non_finite_loss"] == 1 and summary["scored"] == 5 and np.isfinite(summary["loss"])
    capsys.readouterr()
    # training on that record would turn every weight into NaN: a one-line error instead
    assert main(["train", "--model", str(poisoned), "--data", str(pool), "--output", str(tmp_path / "t"),
                 "--epochs", "1", *SMALL]) == 2
    one_line_error(capsys, "the training loss is nan")


# -- settings that cannot work: refused when the command starts, in one line ----------------------

BAD_SETTINGS = [  # (command, flags, words of the error)
    ("warmup", ["--epochs", "0"], "--epochs must be a positive number, got 0"),
    ("warmup", ["--fraction", "1.5"], "--fraction must be in (0, 1], got 1.5"),
    ("warmup", ["--learning-rate", "nan"], "--learning-rate must be a positive number, got nan"),
    ("warmup", ["--lora-dropout", "1"], "--lora-dropout must be in [0, 1), got 1.0"),
    ("warmup", ["--micro-batch-size", "0"], "--micro-batch-size must be a positive number, got 0"),
    ("train", ["--max-length", "-3"], "--max-length must be a positive number of tokens, got -3"),
    ("build", ["--dim", "0"], "--dim must be a positive number of dimensions, got 0"),
    ("build", ["--dim", "7"], "--projection sparse needs --dim divisible by 4 (e.g. 8), got 7"),
    ("build", ["--chunk-size", "0"], "--chunk-size must be a positive number, got 0"),
    ("select-pool", ["--fraction", "0"], "--fraction must be in (0, 1], got 0.0"),
    ("select-pool", ["--chunk-rows", "-1"], "--chunk-rows must be a positive number, got -1"),
    ("evaluate", ["--max-new-tokens", "-1"], "--max-new-tokens must be zero or more, got -1"),
    ("evaluate", ["--device", "cuda"], "--device cuda: this machine has no CUDA GPU"),
    ("build", ["--device", "gpu"], "--device 'gpu' is not a device"),
]


@pytest.mark.parametrize(("command", "flags", "words"), BAD_SETTINGS)
def test_settings_that_cannot_work_are_refused_before_any_work(ctx, command, flags, words, tmp_path, capsys):
    if "cuda" in flags and torch.cuda.is_available():
        pytest.skip("this machine has a GPU")
    out = tmp_path / "out"
    argv = commands(ctx, ctx["good"], out)[command]
    if "--count" in flags or "--fraction" in flags:  # select's size: one flag at a time
        argv = [a for k, a in enumerate(argv) if a != "--count" and (k == 0 or argv[k - 1] != "--count")]
    assert main(argv + flags) == 2
    one_line_error(capsys, words)
    assert not (out / "run.json").exists() and not (out / "manifest.json").exists() and not (out / "summary.json").exists()


BAD_VALUES = {"positive": ["0", "-1", "nan", "inf"], "fraction": ["0", "1.5", "nan"], "ratio": ["-0.1", "1.5", "nan"],
              "below_one": ["-0.5", "1", "nan"], "nonnegative": ["-1", "nan", "inf"]}


@pytest.mark.parametrize("command", ["warmup", "train", "build", "select-pool", "evaluate"])
def test_every_numeric_flag_out_of_its_range_is_a_one_line_error(ctx, command, tmp_path, capsys):
    """Every flag with a range in its command's config, given each kind of value outside it (and a word
    where a number goes): exit 2, one line, nothing written."""
    from gradsift.config import BuildConfig, EvaluateConfig, SelectConfig, TrainConfig, WarmupConfig

    config = {"warmup": WarmupConfig, "train": TrainConfig, "build": BuildConfig, "select-pool": SelectConfig,
              "evaluate": EvaluateConfig}[command]
    out = tmp_path / "out"
    tried = 0
    for f in (f for f in dataclasses.fields(config) if "range" in f.metadata):
        flag = "--" + f.name.replace("_", "-")
        argv = commands(ctx, ctx["good"], out)[command]
        given = [k for k, a in enumerate(argv) if a == flag]  # the command's own value of the flag, dropped
        argv = [a for k, a in enumerate(argv) if k not in given and k - 1 not in given]
        for value in BAD_VALUES[f.metadata["range"]] + ["many"]:
            try:
                code = main(argv + [flag, value])
            except SystemExit as e:  # argparse's own refusal of a value its type cannot read: usage, then one line
                code = e.code
            assert code == 2, (flag, value)
            one_line_error(capsys, flag if value != "many" else "invalid")
            tried += 1
    assert tried >= 8 and not out.exists()


def test_an_output_that_is_a_file_and_a_model_without_a_tokenizer(ctx, tmp_path, capsys):
    taken = tmp_path / "taken.txt"
    taken.write_text("mine")
    assert main(commands(ctx, ctx["good"], taken)["select-pool"]) == 2
    one_line_error(capsys, f"{taken} is a file: an output must be a folder")
    assert taken.read_text() == "mine"
    bare = tmp_path / "bare-model"
    shutil.copytree(ctx["model"], bare, ignore=lambda d, names: [n for n in names if n.startswith(("tokenizer",
                                                                                                   "special_tokens"))])
    assert main(["warmup", "--model", str(bare), "--train", str(ctx["good"]), "--output", str(tmp_path / "r")]) == 2
    one_line_error(capsys, "has no tokenizer")
