"""Benchmark of gradient-feature extraction (`gradsift build`'s inner loop), all in one run.

On the same machine and the same 256-token examples (BBH and MMLU chain-of-thought shots from the
demo data, truncated to 256 tokens) with SmolLM2-135M and LoRA r=128 on q,k,v,o:

  training   a plain batched LoRA training pass (forward, backward, AdamW step): the floor
  reference  the reference LESS method written in our code: batch size 1, autograd gradient,
             Adam feature, dense Rademacher projection
  <kind>     gradsift's batched per-example gradients + Adam feature + each projection kind

Each variant runs in its own process (so its peak memory is its own) and reports examples/s.

The quality part scores demo-pool examples (nine task families) against every BBH chain-of-thought
shot and selects the top 5% as `gradsift select` does. It compares each projection's cosines and
selection with the exact (unprojected) ones, and with the dense reference's. Dense Gaussian
projections are simulated exactly from the features' Gram matrix for many seeds (the real dense
projection is slow; --dense-quality adds one real run to check the simulation), which also measures
how much the reference's own selection moves when only its seed changes.

The LoRA state is a real warmup run's last checkpoint with --run, else a stand-in (random LoRA B,
the moments of one Adam step).

    python bench/build_speed.py                      # everything, results to bench/results.json
    python bench/build_speed.py --skip training dense sparse kronecker reference --run RUN \
        --seeds 3 --quality-dims 8192 32768 --dense-quality --out bench/quality.json
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

from peft import get_peft_model, set_peft_model_state_dict
from tqdm.auto import tqdm

from gradsift.build import batch_features
from gradsift.data import ChatEncoder, collate, encode_refs, index_examples, per_example_loss
from gradsift.demo_data import build_demo_data
from gradsift.features import AdamState, normalize_rows
from gradsift.gradients import PerExampleGradients
from gradsift.models import load_model, pick_device
from gradsift.projection import PROJECTORS, make_projector
from gradsift.scoring import aggregate, top_k
from gradsift.select import subtask_of
from gradsift.warmup import Run, lora_config, lora_parameters

LORA = {"lora_r": 128, "lora_alpha": 512, "lora_dropout": 0.0, "lora_targets": ["q_proj", "k_proj", "v_proj", "o_proj"]}


def setup(args):
    """(model, device, encoded examples, batches(), Adam state, BBH subtasks) for a variant.

    With --run: the last checkpoint of a real warmup run (adapter and Adam moments). Without: a
    stand-in, B ~ N(0, 0.02²) (peft starts it at 0) and the moments of one Adam step."""
    device = pick_device(args.device)
    dtype = torch.bfloat16 if device.type == "cuda" else torch.float32
    if args.run:
        run = Run.open(args.run)
        model, tokenizer = run.load_model(device, dtype)
        set_peft_model_state_dict(model, run.checkpoints[-1].adapter_state())
    else:
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

    bbh, mmlu, pool = usable(data.targets["bbh"]), usable(data.targets["mmlu"]), usable(data.pool_files)
    encoded = {
        "speed": encode_refs(sorted(bbh + mmlu + pool, key=lambda r: -r.tokens), encoder),  # 256-token examples
        "targets": encode_refs(bbh, encoder),
        "pool": encode_refs([pool[i] for i in np.random.default_rng(0).permutation(len(pool))], encoder),
    }
    pad = tokenizer.pad_token_id

    def batches(examples, size):
        for k in range(0, len(examples), size):
            yield {n: t.to(device) for n, t in collate(examples[k: k + size], pad).items()}

    names = [n for n, _ in lora_parameters(model)]
    if args.run:
        adam = run.checkpoints[-1].adam(names, device)
    else:  # the moments after one AdamW step on the first pool batch
        with PerExampleGradients(model) as grads:
            g = grads.compute(next(batches(encoded["pool"], args.batch_size))).mean(0)
        b1, b2 = 0.9, 0.999
        adam = AdamState((1 - b1) * g, (1 - b2) * g.square(), 1, (b1, b2), 1e-8)
    return model, device, encoded, batches, adam, [subtask_of(r) for r in bbh]


def run_variant(args) -> dict:
    """Time one variant over --examples examples; runs in a child process."""
    torch.set_num_threads(os.cpu_count())
    model, device, encoded, batches, adam, _ = setup(args)
    examples = encoded["speed"][: args.reference_examples if args.variant == "reference" else args.examples]
    sync = torch.cuda.synchronize if device.type == "cuda" else (lambda: None)
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


def exact_features(model, adam, pool, targets, batches, batch_size, path: Path) -> list[np.ndarray]:
    """The unprojected features (Adam for the pool, plain gradients for the targets) of every row, in
    a float32 file laid out parameter-major: block p is (rows, numel_p), so one pass over the blocks
    feeds the Gram matrix and every projector without ever holding all rows x 14.7M in memory."""
    rows = len(pool) + len(targets)
    with PerExampleGradients(model) as grads:
        numels, offsets = grads.numels, grads.offsets
        flat = np.lib.format.open_memmap(path, mode="w+", dtype=np.float32, shape=(rows * grads.size,))
        blocks = [flat[rows * o: rows * (o + n)].reshape(rows, n) for o, n in zip(offsets, numels)]
        row = 0
        bar = tqdm(total=rows, unit="ex", desc="exact features")
        for examples, is_pool in ((pool, True), (targets, False)):
            for batch in batches(examples, batch_size):
                size = batch["input_ids"].shape[0]

                def write(p: int, grad: torch.Tensor) -> None:
                    if is_pool:
                        grad = adam.feature(grad, slice(offsets[p], offsets[p] + numels[p]), "corrected")
                    blocks[p][row: row + size] = grad.cpu().numpy()

                grads.backward(batch, write)
                row += size
                bar.update(size)
        bar.close()
    flat.flush()
    return blocks


def simulated_dense(gram: torch.Tensor, dim: int, seed: int) -> torch.Tensor:
    """Rows distributed exactly as a dense Gaussian JL projection of the features with Gram matrix
    ``gram``: P f_i depends on the features only through their inner products, so P Fᵀ has the law of
    Z Lᵀ for any L with L Lᵀ = gram and Z (dim, rows) i.i.d. normal. Cheap enough for many seeds."""
    w, v = torch.linalg.eigh(gram)
    factor = v * w.clamp_min(0).sqrt()
    z = torch.randn(gram.shape[0], dim, generator=torch.Generator().manual_seed(seed), dtype=gram.dtype)
    return factor @ z / math.sqrt(dim)


def quality(args) -> dict:
    """Pool-target cosines and the resulting selection of each projection, against the exact ones.

    The pool is scored against every BBH shot and ranked as `gradsift select` does (subtask mean,
    max over subtasks; top 5%). Projections applied for real: sparse and kronecker at each
    --quality-dims and seed, dense at --dim (seed 0) with --dense-quality. Dense Gaussian projections
    are also simulated exactly from the Gram matrix for --dense-seeds seeds, which measures how far
    the reference method's own selection moves when only its seed changes."""
    torch.set_num_threads(os.cpu_count())
    model, device, encoded, batches, adam, subtasks = setup(args)
    targets, pool = encoded["targets"], encoded["pool"][: args.quality_pool]
    n = len(pool)
    shapes = [tuple(p.shape) for _, p in lora_parameters(model)]
    blocks = exact_features(model, adam, pool, targets, batches, args.batch_size, Path(args.workdir) / "exact.npy")
    del model

    dims = args.quality_dims or [args.dim]
    real = [(k, d, s) for k in PROJECTORS if k != "dense" for d in dims for s in range(args.seeds)]
    real += [("dense", args.dim, 0)] if args.dense_quality else []
    projectors = {v: make_projector(v[0], shapes, v[1], v[2]) for v in real}
    projected = {v: torch.zeros(n + len(targets), v[1]) for v in real}
    gram = torch.zeros(n + len(targets), n + len(targets), dtype=torch.float64)
    for p, block in enumerate(tqdm(blocks, unit="param", desc="gram and projections")):
        x = torch.from_numpy(np.ascontiguousarray(block))
        gram += (x @ x.T).double()
        for v, projector in projectors.items():
            projector.accumulate(projected[v], p, x)
    (Path(args.workdir) / "exact.npy").unlink()

    norms = gram.diagonal().sqrt()
    unit_gram = gram / norms[:, None] / norms[None, :]
    cos = {("exact", 0, 0): unit_gram[:n, n:]}
    for v, y in projected.items():
        y = normalize_rows(y).double()
        cos[v] = y[:n] @ y[n:].T
    simulated = [("dense-simulated", d, s) for d in sorted({args.dim, *dims}) for s in range(args.dense_seeds)]
    for v in simulated:
        y = normalize_rows(simulated_dense(unit_gram, v[1], 1000 + v[2]))
        cos[v] = y[:n] @ y[n:].T
    k_top = max(1, round(0.05 * n))
    top = {v: set(top_k(aggregate(c, subtasks).numpy(), k_top).tolist()) for v, c in cos.items()}

    def agreement(a, b) -> dict:
        return {
            "mean_row_cosine": torch.nn.functional.cosine_similarity(cos[a], cos[b], dim=1).mean().item(),
            "pearson": np.corrcoef(cos[a].flatten(), cos[b].flatten())[0, 1].item(),
            "mean_abs_error": (cos[a] - cos[b]).abs().mean().item(),
            "top5_jaccard": len(top[a] & top[b]) / len(top[a] | top[b]),
        }

    def summary(pairs) -> dict:
        runs = [agreement(a, b) for a, b in pairs]
        return {m: {"mean": float(np.mean([r[m] for r in runs])), "min": min(r[m] for r in runs),
                    "max": max(r[m] for r in runs), "runs": len(runs)} for m in runs[0]}

    exact = cos["exact", 0, 0]
    report = {"pool": n, "targets": len(targets), "subtasks": len(set(subtasks)), "top_k": k_top,
              "warmup": str(args.run) if args.run else "stand-in",
              "exact_cosine": {"mean": exact.mean().item(), "std": exact.std().item()},
              "vs_exact": {}, "vs_dense": {}}
    references = [v for v in simulated if v[1] == args.dim]  # the reference method at its dim, many seeds
    for kind, dim in dict.fromkeys((k, d) for k, d, _ in real + simulated):
        runs = [v for v in real + simulated if v[:2] == (kind, dim)]
        report["vs_exact"][f"{kind}-d{dim}"] = summary([(v, ("exact", 0, 0)) for v in runs])
        report["vs_dense"][f"{kind}-d{dim}"] = summary([(v, r) for v in runs for r in references if v != r])
        if args.dense_quality:
            report["vs_dense"][f"{kind}-d{dim}"]["real_dense_top5_jaccard"] = float(np.mean(
                [agreement(v, ("dense", args.dim, 0))["top5_jaccard"] for v in runs if v != ("dense", args.dim, 0)]
                or [1.0]))
    return report


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--examples", type=int, default=32, help="examples per speed variant")
    parser.add_argument("--reference-examples", type=int, default=2, help="examples for the (slow) reference")
    parser.add_argument("--batch-size", type=int, default=16)
    parser.add_argument("--dim", type=int, default=8192)
    parser.add_argument("--length", type=int, default=256, help="max tokens per example")
    parser.add_argument("--quality-pool", type=int, default=160)
    parser.add_argument("--dense-quality", action="store_true", help="include the (slow) dense projection in quality")
    parser.add_argument("--seeds", type=int, default=1, help="projection seeds for the fast kinds in quality")
    parser.add_argument("--dense-seeds", type=int, default=10, help="simulated dense projections in quality")
    parser.add_argument("--run", help="warmup run whose last checkpoint to use (default: a stand-in state)")
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
