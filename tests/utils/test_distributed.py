"""torchrun: a build sharded over 2 CPU processes (gloo) writes the same store as one process, byte for
byte (its gradient rows and its embeddings), and a relaunch after one rank was killed finishes it; the
shard plan itself."""

from __future__ import annotations

import os
import random
import signal
import subprocess
import sys

import pytest
import torch
from helpers import SMALL, chat_records, contents, write_jsonl
from safetensors.torch import load_file

from gradsift.cli import main
from gradsift.utils.distributed import shard_bounds
from gradsift.utils.faults import STOP_ENV


@pytest.mark.parametrize("rows,chunk,parts", [(10, 3, 2), (100, 8, 3), (5, 4, 4), (0, 4, 2), (33, 1, 5)])
def test_shards_cover_the_rows_at_chunk_boundaries_with_balanced_tokens(rows, chunk, parts):
    tokens = [random.Random(rows).randint(1, 50) for _ in range(rows)]
    bounds = shard_bounds(tokens, chunk, parts)
    assert len(bounds) == parts and bounds[0][0] == 0 and bounds[-1][1] == rows
    assert all(a[1] == b[0] for a, b in zip(bounds, bounds[1:]))  # contiguous, in order
    assert all(start % chunk == 0 or start == rows for start, _ in bounds)
    loads = [sum(tokens[s:e]) for s, e in bounds]
    biggest_chunk = max((sum(tokens[k:k + chunk]) for k in range(0, rows, chunk)), default=0)
    assert max(loads, default=0) - sum(tokens) / parts <= biggest_chunk  # balanced to within one chunk


def torchrun(argv: list[str], **env) -> subprocess.CompletedProcess:
    # "--": torchrun's own parser would take build's --run for an abbreviation of its --run-path
    command = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc-per-node", "2",
               "-m", "gradsift", "--", *argv]
    return subprocess.run(command, env={**os.environ, "OMP_NUM_THREADS": "1", **env}, capture_output=True, text=True)


@pytest.fixture(scope="module")
def setup(tmp_path_factory, tiny_model_dir):
    root = tmp_path_factory.mktemp("ddp")
    pool = write_jsonl(root / "pool.jsonl", chat_records(random.Random(0), 21, "p"))
    assert main(["warmup", "--model", str(tiny_model_dir), "--train", str(pool), "--fraction", "1", "--epochs", "2",
                 "--output", str(root / "run"), *SMALL]) == 0
    argv = lambda out: ["build", "--run", str(root / "run"), "--data", str(pool), "--dim", "64",  # noqa: E731
                        "--chunk-size", "4", "--batch-size", "2", "--device", "cpu", "--output", str(out)]
    assert main(argv(root / "single")) == 0
    return argv, contents(root / "single")


def test_a_two_process_build_equals_the_single_process_one(setup, tmp_path):
    argv, single = setup
    done = torchrun(argv(tmp_path / "store"))
    assert done.returncode == 0, done.stderr[-3000:]
    assert contents(tmp_path / "store") == single


@pytest.mark.parametrize("point,folder", [("store:rows-committed@2", "."),  # in the gradient rows
                                          ("embeddings:rows-committed@1", "embeddings")])  # in the embeddings
def test_a_killed_rank_resumes_on_relaunch(setup, tmp_path, point, folder):
    argv, single = setup
    out = tmp_path / "store"
    killed = torchrun(argv(out), **{STOP_ENV: point, "GRADSIFT_STOP_RANK": "1"})
    assert killed.returncode != 0 and f"exitcode: -{int(signal.SIGKILL)}" in killed.stderr
    assert sorted(p.name for p in (out / folder).glob("progress.shard-*")) == ["progress.shard-0-of-2.json",
                                                                               "progress.shard-1-of-2.json"]
    assert main(argv(out)) == 2  # one process cannot finish a two-process build: it says so
    done = torchrun(argv(out))
    assert done.returncode == 0, done.stderr[-3000:]
    assert contents(out) == single


@pytest.mark.parametrize("command", ["warmup", "train"])
def test_data_parallel_training_matches_one_process(tiny_model_dir, command, tmp_path):
    """Each process takes half of every batch and the gradients are summed: the checkpoints equal a
    one-process run's up to float rounding (no dropout: its masks are drawn per process)."""
    pool = write_jsonl(tmp_path / "pool.jsonl", chat_records(random.Random(3), 14, "p"))
    data = ["--train", str(pool), "--fraction", "1"] if command == "warmup" else ["--data", str(pool)]
    argv = lambda out: [command, "--model", str(tiny_model_dir), *data, "--epochs", "2", "--lora-dropout", "0",  # noqa: E731
                        "--learning-rate", "1e-2", *SMALL, "--output", str(out)]
    assert main(argv(tmp_path / "one")) == 0
    done = torchrun(argv(tmp_path / "two"))
    assert done.returncode == 0, done.stderr[-3000:]
    one, two = (sorted((tmp_path / n).glob("checkpoint-*")) for n in ("one", "two"))
    assert [c.name for c in one] == [c.name for c in two] == ["checkpoint-4", "checkpoint-8"]
    for a, b in zip(one, two):
        for name in ("adapter_model.safetensors", "optimizer.safetensors"):
            if (a / name).exists() or (b / name).exists():
                x, y = load_file(a / name), load_file(b / name)
                assert x.keys() == y.keys()
                for key in x:
                    torch.testing.assert_close(y[key], x[key], rtol=1e-4, atol=1e-6)
    if command == "train":  # the final adapter exported once, at the top
        assert (tmp_path / "two" / "adapter_model.safetensors").exists()
