"""``gradsift inspect [--verify]`` on every kind of folder from a real (tiny) pipeline: what it shows,
and that one flipped byte, a changed input or a missing file fails --verify naming the file."""

from __future__ import annotations

import json
import random
import shutil

import pytest
from helpers import chat_records, write_jsonl

from gradsift.cli import main
from gradsift.inspection import inspect


@pytest.fixture(scope="module")
def folders(tmp_path_factory, tiny_model_dir):
    """warmup -> build (pool, target) -> select -> train on the selection -> evaluate, by the CLI."""
    root = tmp_path_factory.mktemp("inspect")
    pool = write_jsonl(root / "pool.jsonl", chat_records(random.Random(0), 12, "p"))
    target = write_jsonl(root / "target.jsonl", chat_records(random.Random(1), 3, "t"))
    small = ["--lora-r", "4", "--lora-alpha", "8", "--batch-size", "4", "--max-length", "48", "--device", "cpu"]
    f = {k: root / k for k in ("run", "pool_store", "target_store", "selection", "trained", "evaluation")}
    assert main(["warmup", "--model", str(tiny_model_dir), "--train", str(pool), "--output", str(f["run"]),
                 "--fraction", "1", "--epochs", "2", *small]) == 0
    for name, data, gradient in (("pool_store", pool, "adam"), ("target_store", target, "sgd")):
        assert main(["build", "--run", str(f["run"]), "--data", str(data), "--gradient", gradient, "--dim", "64",
                     "--output", str(f[name]), "--device", "cpu"]) == 0
    assert main(["select", "--method", "less", "--train-store", str(f["pool_store"]), "--target-store", str(f["target_store"]),
                 "--count", "4", "--output", str(f["selection"])]) == 0
    assert main(["train", "--model", str(tiny_model_dir), "--data", str(f["selection"] / "selected.jsonl"),
                 "--output", str(f["trained"]), "--epochs", "2", *small]) == 0
    assert main(["evaluate", "--model", str(tiny_model_dir), "--adapter", str(f["trained"]), "--data", str(target),
                 "--output", str(f["evaluation"]), "--max-new-tokens", "0", "--device", "cpu"]) == 0
    return root, f, pool


@pytest.mark.parametrize("name,kind", [("run", "warmup run"), ("pool_store", "gradient store"),
                                       ("selection", "selection"), ("trained", "training run"),
                                       ("evaluation", "evaluation")])
def test_every_folder_is_recognised_and_verifies(folders, name, kind, capsys):
    _, f, _ = folders
    (found,) = inspect(f[name], verify=True)
    assert found.kind == kind and found.problems == [] and found.verified > 0
    facts = dict(found.facts)
    assert "disk size" in facts
    if kind in ("warmup run", "training run", "gradient store"):
        assert facts["state"] == "complete"
    assert main(["inspect", str(f[name]), "--verify"]) == 0
    assert f"{found.verified} files match their checksums, 0 problems" in capsys.readouterr().out


def copy_of(folders, name, tmp_path):
    _, f, _ = folders
    shutil.copytree(f[name], tmp_path / name)
    return tmp_path / name


def flip_a_byte(path):
    data = bytearray(path.read_bytes())
    data[-3] ^= 0x01
    path.write_bytes(bytes(data))


@pytest.mark.parametrize("name,file", [("pool_store", "features/checkpoint-3.npy"), ("pool_store", "index.parquet"),
                                       ("run", "checkpoint-6/optimizer.safetensors"),
                                       ("run", "checkpoint-3/adapter_model.safetensors"),
                                       ("trained", "adapter_model.safetensors"), ("selection", "scores.csv"),
                                       ("evaluation", "examples.jsonl")])
def test_one_flipped_byte_fails_verify_naming_the_file(folders, name, file, tmp_path, capsys):
    folder = copy_of(folders, name, tmp_path)
    flip_a_byte(folder / file)
    assert main(["inspect", str(folder)]) == 0  # without --verify nothing is hashed
    capsys.readouterr()
    assert main(["inspect", str(folder), "--verify"]) == 1
    err = capsys.readouterr().err
    assert f"{folder / file}: " in err and "changed" in err and "Traceback" not in err


def test_a_changed_input_fails_verify(folders, capsys):
    root, f, pool = folders
    original = pool.read_bytes()
    try:
        pool.write_bytes(original + b"\n")  # one more (blank) line: the same records, another file
        for name in ("pool_store", "run"):
            assert main(["inspect", str(f[name]), "--verify"]) == 1
            assert f"{pool}: data file has changed" in capsys.readouterr().err
    finally:
        pool.write_bytes(original)


def test_a_missing_feature_file_is_named_without_verify(folders, tmp_path, capsys):
    folder = copy_of(folders, "pool_store", tmp_path)
    (folder / "features" / "checkpoint-6.npy").unlink()
    assert main(["inspect", str(folder)]) == 1
    assert f"{folder / 'features' / 'checkpoint-6.npy'}: feature file is missing" in capsys.readouterr().err


def test_a_partial_store_says_how_far_it_got(folders, tmp_path):
    folder = copy_of(folders, "pool_store", tmp_path)
    manifest = json.loads((folder / "manifest.json").read_text())
    (folder / "manifest.json").write_text(json.dumps({**manifest, "status": "building"}))
    (folder / "progress.json").write_text(json.dumps({"checkpoint-3": 12, "checkpoint-6": 5}))
    (found,) = inspect(folder)
    assert dict(found.facts)["state"].startswith("partial: rows committed per checkpoint checkpoint-3 12/12, "
                                                 "checkpoint-6 5/12")


def test_not_a_gradsift_folder_is_a_one_line_error(tmp_path, capsys):
    assert main(["inspect", str(tmp_path)]) == 2
    assert "is not a gradsift folder" in capsys.readouterr().err
