"""Benchmark of exact (unprojected) LESS scores (`gradsift select --method exact`), all in one run.

On the same machine and the same examples as bench/build_speed.py (the --examples longest few-shot
examples and pool records of the benchmark, cut to --length tokens; SmolLM2-135M, LoRA r=128 on
q,k,v,o, the LoRA state of --run or of a short real warmup made first), each in its own process:

  training   a plain batched LoRA training pass (forward, backward, AdamW step; no dropout): the floor
  exact      `gradsift select --method exact` (the Python API) with those examples as the pool and
             --targets few-shot examples as the target: tokenizing, the targets' gradients, the pool's
             Adam features streamed into their cosines at every checkpoint, the three files written

Examples/s counts pool rows x checkpoints, as build_speed does for a store; the goal is exact within
1.2x the training pass's time per example. The targets' gradients cost the same whatever the pool's
size (once per checkpoint): they are timed apart too (``target_seconds``, ``time_vs_training_without_targets``).

    python bench/exact_speed.py                  # 32 examples, 256 tokens, 8 targets -> bench/exact_speed.json
    python bench/exact_speed.py --examples 4 --targets 2 --out /tmp/exact_speed.json   # a quick check
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import time
from pathlib import Path

import numpy as np
import torch
from build_speed import bench_data, child, prepare, report, run_record, run_variant, speed_file, usable

from gradsift.config import SelectConfig
from gradsift.data.chat import ChatEncoder
from gradsift.data.records import read_records
from gradsift.selection.methods import exact
from gradsift.selection.methods.exact import run_encoder
from gradsift.selection.select import select
from gradsift.training.run import Run
from gradsift.utils.files import atomic_write_bytes
from gradsift.utils.models import load_tokenizer, pick_device


def target_file(args) -> Path:
    return Path(args.workdir) / f"exact-targets-{args.targets}.jsonl"


def prepare_targets(args) -> None:
    """The first --targets usable few-shot examples of the benchmark's targets, as one target file."""
    encoder = ChatEncoder(load_tokenizer(Run.open(args.run).model.name), args.length)
    refs = usable(bench_data(args)[1], encoder)[: args.targets]
    atomic_write_bytes(target_file(args), b"".join(r + b"\n" for r in read_records(refs)))


def run_exact(args) -> dict:
    """Time `select --method exact` over the speed examples; runs in a child process. The targets'
    gradients (``exact.target_columns``, once per checkpoint whatever the pool's size) are timed apart."""
    torch.set_num_threads(os.cpu_count())
    device = pick_device(args.device)
    sync = torch.cuda.synchronize if device.type == "cuda" else (lambda: None)
    target_seconds, columns = [], exact.target_columns

    def timed_columns(*a, **k):
        start = time.perf_counter()
        out = columns(*a, **k)
        sync()
        target_seconds.append(time.perf_counter() - start)
        return out

    exact.target_columns = timed_columns
    output = Path(args.workdir) / f"exact-{args.examples}"
    shutil.rmtree(output, ignore_errors=True)  # the whole pass, not a resume of an earlier one
    start = time.perf_counter()
    (selection,) = select(SelectConfig(method="exact", run=Path(args.run), pool=[speed_file(args, args.examples)],
                                       target=[target_file(args)], output=output, count=1, max_length=args.length,
                                       batch_size=args.batch_size, device=args.device))
    sync()
    seconds = time.perf_counter() - start
    summary = json.loads((output / "summary.json").read_text())
    checkpoints = len(summary["method_settings"]["checkpoint_weights"])
    rows = int(selection.scored.sum()) * checkpoints
    tokens = float(np.mean([r.tokens for r in usable([speed_file(args, args.examples)],
                                                      run_encoder(Path(args.run), args.length))]))
    peak_gpu = torch.cuda.max_memory_allocated() / 2**30 if device.type == "cuda" else None
    return {"variant": "exact", "examples": rows, "checkpoints": checkpoints,
            "targets": summary["target_examples"]["usable"], "tokens_per_example": tokens, "seconds": seconds,
            "examples_per_s": rows / seconds, "target_seconds": sum(target_seconds),
            "pool_examples_per_s": rows / (seconds - sum(target_seconds)), "peak_gpu_gib": peak_gpu}


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--examples", type=int, default=32, help="pool examples (the training pass's too)")
    parser.add_argument("--targets", type=int, default=8, help="few-shot target examples")
    parser.add_argument("--batch-size", type=int, default=16)
    parser.add_argument("--length", type=int, default=256, help="max tokens per example")
    parser.add_argument("--run", help="warmup run to use (default: a short one made in --workdir)")
    parser.add_argument("--device", default="auto")
    parser.add_argument("--workdir", default="/tmp/gradsift-bench")
    parser.add_argument("--variant", help=argparse.SUPPRESS)
    parser.add_argument("--out", default=str(Path(__file__).with_name("exact_speed.json")))
    parser.set_defaults(memory_examples=None)  # build_speed's prepare: no memory-check file here
    args = parser.parse_args()
    if args.variant == "training":
        report(run_variant(args))
        return
    if args.variant == "exact":
        report(run_exact(args))
        return

    prepare(args)
    prepare_targets(args)
    results = {}
    for variant in ("training", "exact"):
        results[variant] = child(args, variant, script=__file__)
        print(json.dumps(results[variant]), flush=True)
    floor = results["training"]["examples_per_s"]
    ratio = floor / results["exact"]["examples_per_s"]
    results["exact"]["time_vs_training"] = ratio
    results["exact"]["time_vs_training_without_targets"] = floor / results["exact"]["pool_examples_per_s"]
    record = run_record("bench/exact_speed.py", args, results)
    Path(args.out).write_text(json.dumps(record, indent=2) + "\n")
    print(f"exact: {results['exact']['examples_per_s']:.3g} examples/s, training: {floor:.3g} examples/s: "
          f"{ratio:.2f}x the training pass (goal <= 1.2x; "
          f"{results['exact']['time_vs_training_without_targets']:.2f}x without the targets' "
          f"{results['exact']['target_seconds']:.1f} s); wrote {args.out}")


if __name__ == "__main__":
    main()
