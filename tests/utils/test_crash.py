"""Proof against crashes: a real ``gradsift`` process is SIGKILLed at named points (``GRADSIFT_STOP_AT``)
and the same command run again; the result must equal an uninterrupted run byte for byte, with no
temporary file or lock left behind."""

from __future__ import annotations

import random
from pathlib import Path

import pytest
from helpers import SMALL, chat_records, contents, killed_at, write_jsonl

from gradsift.cli import main


@pytest.fixture(scope="module")
def setup(tmp_path_factory, tiny_model_dir):
    root = tmp_path_factory.mktemp("crash")
    pool = write_jsonl(root / "pool.jsonl", chat_records(random.Random(0), 14, "p"))
    target = write_jsonl(root / "target.jsonl", chat_records(random.Random(1), 3, "t"))
    warm = ["warmup", "--model", str(tiny_model_dir), "--train", str(pool), "--fraction", "1", "--epochs", "2", *SMALL]
    assert main([*warm, "--output", str(root / "run")]) == 0
    return {"root": root, "pool": pool, "target": target, "warmup": warm, "model": tiny_model_dir}


# -- build -----------------------------------------------------------------------------------------
def build_argv(setup, output: Path) -> list[str]:
    return ["build", "--run", str(setup["root"] / "run"), "--data", str(setup["pool"]), "--dim", "64",
            "--chunk-size", "4", "--batch-size", "2", "--device", "cpu", "--output", str(output)]


@pytest.fixture(scope="module")
def reference_store(setup):
    out = setup["root"] / "store-reference"
    assert main(build_argv(setup, out)) == 0
    return contents(out)


@pytest.mark.parametrize("point", [
    "store:rows-written@3",      # inside a chunk: rows on disk, not committed
    "store:rows-committed@2",    # between chunks
    "replace:progress.json@4",   # while the progress file is replaced
    "replace:manifest.json@2",   # during the final manifest write (the first is the layout's)
    "replace:index.parquet@1",   # while laying out the store
    "lexical:written@1",         # the complete store's lexical index written, not yet renamed into place
    "embeddings:rows-written@2", # embeddings of a chunk on disk, not committed
    "embeddings:rows-committed@3",  # between chunks of embeddings
    "replace:embeddings.json@2", # while the embeddings are marked complete (the first is their layout's)
])
def test_a_killed_build_resumes_to_the_same_store(setup, reference_store, point, tmp_path):
    out = tmp_path / "store"
    killed_at(point, build_argv(setup, out))
    assert main(build_argv(setup, out)) == 0
    assert contents(out) == reference_store


# -- warmup ----------------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def reference_run(setup):
    return contents(setup["root"] / "run", drop_run_id=True)


@pytest.mark.parametrize("point", [
    "train:step@2",                         # mid-epoch
    "train:checkpoint-saved@1",             # between epochs: checkpoint whole, run.json not yet listing it
    "train:epoch-done@1",                   # between epochs: listed
    "replace:state.json@2",                 # inside the second checkpoint's save
    "replace:run.json@1",                   # before the run's first record
])
def test_a_killed_warmup_resumes_to_the_same_checkpoints(setup, reference_run, point, tmp_path):
    out = tmp_path / "run"
    killed_at(point, [*setup["warmup"], "--output", str(out)])
    assert main([*setup["warmup"], "--output", str(out)]) == 0
    assert contents(out, drop_run_id=True) == reference_run


# -- select and train: no half-written output survives, a rerun finishes -----------------------------
def select_argv(setup, output: Path) -> list[str]:
    return ["select", "--method", "bm25", "--pool", str(setup["pool"]), "--target", str(setup["target"]),
            "--count", "3", "--output", str(output)]


def killed_then_rerun(argv, point: str, tmp_path, finished_marker: str, drop_run_id: bool = False) -> None:
    """Kill ARGV at POINT: the file written last must be absent; a rerun ends equal to an uninterrupted run."""
    reference, out = tmp_path / "reference", tmp_path / "out"
    assert main(argv(reference)) == 0
    killed_at(point, argv(out))
    assert not (out / finished_marker).exists()  # written last: its absence says the job is unfinished
    assert main(argv(out)) == 0
    assert contents(out, drop_run_id) == contents(reference, drop_run_id)


@pytest.mark.parametrize("point", ["replace:scores.csv@1", "replace:summary.json@1"])
def test_a_killed_select_leaves_no_finished_looking_output(setup, point, tmp_path):
    killed_then_rerun(lambda out: select_argv(setup, out), point, tmp_path, "summary.json")


def train_argv(setup, output: Path) -> list[str]:
    return ["train", "--model", str(setup["model"]), "--data", str(setup["pool"]), "--epochs", "2", *SMALL,
            "--output", str(output)]


@pytest.mark.parametrize("point", ["train:step@5", "replace:adapter_model.safetensors@1"])
def test_a_killed_train_resumes_to_the_same_adapter(setup, point, tmp_path):
    killed_then_rerun(lambda out: train_argv(setup, out), point, tmp_path, "adapter_model.safetensors", drop_run_id=True)
