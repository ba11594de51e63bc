"""Benchmark of gradient-feature extraction (`gradsift build`'s inner loop), all in one run.

On the same machine and the same 256-token examples (BBH and MMLU chain-of-thought shots from the
demo data, truncated to 256 tokens) with SmolLM2-135M and LoRA r=128 on q,k,v,o:

  training   a plain batched LoRA training pass (forward, backward, AdamW step): the floor
  reference  the reference LESS method written in our code: batch size 1, autograd gradient,
             Adam feature, dense Rademacher projection
  <kind>     gradsift's batched per-example gradients + Adam feature + each projection kind

Each variant runs in its own process (so its peak memory is its own) and reports examples/s. The
quality part then compares, on demo-pool examples (nine task families) against BBH shots (one per
task), each projection's pool-target cosines and top-5% selection with the exact (unprojected)
ones, and with the dense projection's when --dense-quality is given.

The LoRA state stands in for a warmup: B ~ N(0, 0.02²) (peft starts it at 0), Adam moments from
one optimizer step on the first batch.

    python bench/build_speed.py                      # everything, results to bench/results.json
"""

from __future__ import annotations

import argparse
import json
import math
import os
import platform
import subprocess
import sys
import time
from datetime import date
from pathlib import Path

import numpy as np
import torch

from gradsift.build import batch_features
from gradsift.data import ChatEncoder, collate, encode_refs, index_examples, per_example_loss
from gradsift.demo_data import build_demo_data
from gradsift.features import AdamState, normalize_rows
from gradsift.gradients import PerExampleGradients
from gradsift.models import load_model, pick_device
from gradsift.projection import PROJECTORS, make_projector
from gradsift.warmup import lora_config, lora_parameters

LORA = {"lora_r": 128, "lora_alpha": 512, "lora_dropout": 0.0, "lora_targets": ["q_proj", "k_proj", "v_proj", "o_proj"]}


def setup(args):
    device = pick_device(args.device)
    dtype = torch.bfloat16 if device.type == "cuda" else torch.float32
    from peft import get_peft_model

    base, tokenizer, _ = load_model("smollm2-135m", device, dtype)
    torch.manual_seed(0)
    model = get_peft_model(base, lora_config(LORA))
    with torch.no_grad():
        for name, p in lora_parameters(model):
            if "lora_B" in name:
                p.normal_(0, 0.02)
    model.eval()
    data = build_demo_data(Path(args.workdir) / "data")
    encoder = ChatEncoder(tokenizer, args.length)

    def usable(files):
        refs, _, _ = index_examples(files, encoder)
        return [r for r in refs if r.label_tokens > 0]

    targets, pool = usable(data.targets["bbh"] + data.targets["mmlu"]), usable(data.pool_files)
    encoded = {
        "speed": encode_refs(sorted(targets + pool, key=lambda r: -r.tokens), encoder),  # 256-token examples
        "targets": encode_refs(targets[::3], encoder),  # one shot per BBH task, then MMLU subjects
        "pool": encode_refs([pool[i] for i in np.random.default_rng(0).permutation(len(pool))], encoder),
    }
    pad = tokenizer.pad_token_id

    def batches(examples, size):
        for k in range(0, len(examples), size):
            yield {n: t.to(device) for n, t in collate(examples[k: k + size], pad).items()}

    return model, device, encoded, batches


def adam_state(model, batch, device) -> AdamState:
    """Moments after one AdamW step on ``batch``: a stand-in for a warmup checkpoint."""
    with PerExampleGradients(model) as grads:
        g = grads.compute(batch).mean(0)
    b1, b2 = 0.9, 0.999
    return AdamState((1 - b1) * g, (1 - b2) * g.square(), 1, (b1, b2), 1e-8)


def run_variant(args) -> dict:
    """Time one variant over --examples examples; runs in a child process."""
    torch.set_num_threads(os.cpu_count())
    model, device, encoded, batches = setup(args)
    examples = encoded["speed"][: args.reference_examples if args.variant == "reference" else args.examples]
    sync = torch.cuda.synchronize if device.type == "cuda" else (lambda: None)
    adam = adam_state(model, next(batches(examples, args.batch_size)), device)
    shapes = [tuple(p.shape) for _, p in lora_parameters(model)]
    projector = None if args.variant == "training" else make_projector(
        "dense" if args.variant == "reference" else args.variant, shapes, args.dim, 0)
    sync()
    start = time.perf_counter()
    if args.variant == "training":
        params = [p for _, p in lora_parameters(model)]
        optimizer = torch.optim.AdamW(params, lr=1e-5)
        model.train()
        for batch in batches(examples, args.batch_size):
            per_example_loss(model, batch).mean().backward()
            optimizer.step()
            optimizer.zero_grad(set_to_none=True)
        n = len(examples)
    elif args.variant == "reference":
        params = [p for _, p in lora_parameters(model)]
        for batch in batches(examples, 1):  # the reference loops one example at a time
            loss = per_example_loss(model, batch).sum()
            g = torch.cat([t.flatten() for t in torch.autograd.grad(loss, params)]).float()
            normalize_rows(projector.project(adam.feature(g, slice(None), "corrected")[None]))
        n = len(examples)
    else:
        with PerExampleGradients(model) as grads:
            for batch in batches(examples, args.batch_size):
                batch_features(grads, projector, batch, adam)
        n = len(examples)
    sync()
    seconds = time.perf_counter() - start
    peak_gpu = torch.cuda.max_memory_allocated() / 2**30 if device.type == "cuda" else None
    tokens = sum(len(ids) for ids, _ in examples) / len(examples)
    return {"variant": args.variant, "examples": n, "tokens_per_example": tokens,
            "seconds": seconds, "examples_per_s": n / seconds, "peak_gpu_gib": peak_gpu}


def child(args, variant: str, **overrides) -> dict:
    """Run one variant in a fresh process; add its peak resident memory."""
    cmd = [sys.executable, __file__, "--variant", variant]
    for key, value in {**vars(args), **overrides}.items():
        flag = "--" + key.replace("_", "-")
        if key in ("variant", "out", "skip") or value is None or value is False:
            continue
        if isinstance(value, list):
            cmd += [flag, *map(str, value)] if value else []
        else:
            cmd += [flag] if value is True else [f"{flag}={value}"]
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, text=True)
    out = proc.stdout.read()
    _, status, usage = os.wait4(proc.pid, 0)
    if status != 0:
        raise SystemExit(f"variant {variant} failed:\n{out}")
    result = json.loads(out.strip().splitlines()[-1])
    result["peak_rss_gib"] = usage.ru_maxrss / 2**20  # kilobytes on Linux
    return result


def quality(args) -> dict:
    """Cosines and top-5% selections of each projection against the exact, unprojected features.

    The full features are held in memory (quality-pool x 14.7M floats) so that each projection,
    the dense one included, runs once over all rows: the dense matrix is generated once."""
    torch.set_num_threads(os.cpu_count())
    model, device, encoded, batches = setup(args)
    targets, pool = encoded["targets"][: args.quality_targets], encoded["pool"][: args.quality_pool]
    kinds = [k for k in PROJECTORS if k != "dense" or args.dense_quality]
    adam = adam_state(model, next(batches(pool, args.batch_size)), device)
    shapes = [tuple(p.shape) for _, p in lora_parameters(model)]
    full = torch.empty(len(pool) + len(targets), sum(math.prod(s) for s in shapes))  # pool rows, then targets
    with PerExampleGradients(model) as grads:
        row = 0
        for examples, is_pool in ((pool, True), (targets, False)):
            for batch in batches(examples, args.batch_size):
                g = grads.compute(batch)
                if is_pool:
                    g = adam.feature(g, slice(None), "corrected")
                full[row: row + len(g)] = g
                row += len(g)
    n = len(pool)
    norms = full.norm(dim=1)
    cos = {"exact": (full[:n] @ full[n:].T) / (norms[:n, None] * norms[None, n:])}
    variants = [("dense", args.dim, 0)] if args.dense_quality else []
    variants += [(k, d, s) for k in kinds if k != "dense" for d in args.quality_dims or [args.dim]
                 for s in range(args.seeds)]
    for kind, dim, seed in variants:
        both = normalize_rows(make_projector(kind, shapes, dim, seed).project(full))
        cos[kind, dim, seed] = both[:n] @ both[n:].T
    cos = {k: c.double().cpu() for k, c in cos.items()}
    k_top = max(1, round(0.05 * len(pool)))
    top = {k: set(torch.argsort(c.mean(1), descending=True)[:k_top].tolist()) for k, c in cos.items()}

    def agreement(a, b) -> dict:
        return {
            "mean_row_cosine": torch.nn.functional.cosine_similarity(cos[a], cos[b], dim=1).mean().item(),
            "pearson": np.corrcoef(cos[a].flatten(), cos[b].flatten())[0, 1].item(),
            "mean_abs_error": (cos[a] - cos[b]).abs().mean().item(),
            "top5_jaccard": len(top[a] & top[b]) / len(top[a] | top[b]),
        }

    report = {"pool": len(pool), "targets": len(targets), "top_k": k_top,
              "exact_cosine": {"mean": cos["exact"].mean().item(), "std": cos["exact"].std().item()}}
    for kind, dim, seed in variants:
        name = f"{kind}-d{dim}-s{seed}"
        report[f"{name}_vs_exact"] = agreement((kind, dim, seed), "exact")
        if args.dense_quality and kind != "dense" and dim == args.dim and seed == 0:
            report[f"{name}_vs_dense"] = agreement((kind, dim, seed), ("dense", args.dim, 0))
    for kind, dim in dict.fromkeys((k, d) for k, d, _ in variants):  # mean over seeds
        runs = [report[f"{kind}-d{dim}-s{s}_vs_exact"] for k, d, s in variants if (k, d) == (kind, dim)]
        report[f"{kind}-d{dim}_vs_exact_mean"] = {m: float(np.mean([r[m] for r in runs])) for m in runs[0]}
    return report


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--examples", type=int, default=32, help="examples per speed variant")
    parser.add_argument("--reference-examples", type=int, default=2, help="examples for the (slow) reference")
    parser.add_argument("--batch-size", type=int, default=16)
    parser.add_argument("--dim", type=int, default=8192)
    parser.add_argument("--length", type=int, default=256, help="max tokens per example")
    parser.add_argument("--quality-pool", type=int, default=160)
    parser.add_argument("--quality-targets", type=int, default=9)
    parser.add_argument("--dense-quality", action="store_true", help="include the (slow) dense projection in quality")
    parser.add_argument("--seeds", type=int, default=1, help="projection seeds for the fast kinds in quality")
    parser.add_argument("--quality-dims", type=int, nargs="*", help="dims for the fast kinds in quality (default --dim)")
    parser.add_argument("--skip", nargs="*", default=[], help="variants to leave out")
    parser.add_argument("--device", default="auto")
    parser.add_argument("--workdir", default="/tmp/gradsift-bench")
    parser.add_argument("--variant", help=argparse.SUPPRESS)
    parser.add_argument("--out", default=str(Path(__file__).with_name("results.json")))
    args = parser.parse_args()
    if args.variant == "quality":
        print(json.dumps(quality(args)))
        return
    if args.variant:
        print(json.dumps(run_variant(args)))
        return

    variants = [v for v in ["training", *PROJECTORS, "reference"] if v not in args.skip]
    results = {}
    for v in variants:
        results[v] = child(args, v)
        print(json.dumps(results[v]), flush=True)
    if "training" in results:
        floor = results["training"]["examples_per_s"]
        for v, r in results.items():
            r["time_vs_training"] = floor / r["examples_per_s"]
    if "reference" in results:
        for v, r in results.items():
            r["speedup_vs_reference"] = r["examples_per_s"] / results["reference"]["examples_per_s"]
    record = {
        "command": " ".join(["python", "bench/build_speed.py", *sys.argv[1:]]),
        "date": str(date.today()),
        "machine": f"{platform.machine()}, {os.cpu_count()} cores, torch {torch.__version__}, "
                   f"{torch.cuda.get_device_name() if torch.cuda.is_available() else 'no GPU'}",
        "settings": {k: v for k, v in vars(args).items() if k not in ("variant", "out")},
        "speed": results,
    }
    if "quality" not in args.skip:
        record["quality"] = child(args, "quality")
        print(json.dumps(record["quality"]), flush=True)
    Path(args.out).write_text(json.dumps(record, indent=2) + "\n")
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
