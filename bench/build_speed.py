"""Benchmark of gradient features (`gradsift build`), all in one run.

On the same machine and the same examples (the longest few-shot examples and pool records of the
benchmark, ``experiments/benchmark.py``, cut to --length 256 tokens), SmolLM2-135M with LoRA r=128 on q,k,v,o, dim 8192:

  training   a plain batched LoRA training pass (forward, backward, AdamW step; no dropout): the floor
             (timed from loading the model, as build is timed from its start)
  reference  the reference LESS method written in our code: batch size 1, autograd gradient,
             Adam feature, dense Rademacher projection
  <kind>     `gradsift build` (the Python API) with each projection kind, store written

Each variant runs in its own process, so its peak memory is its own; `sparse` is built again on
--memory-examples examples to show that peak memory does not grow with the pool. The LoRA state is
the last checkpoint of --run, or of a short real warmup the benchmark makes first.

The quality part scores --quality-pool benchmark pool examples against the few-shot examples of all
its targets and selects the top 5% as `gradsift select` does (subtask mean, max over subtasks). It compares
each projection's cosines and selection with the exact (unprojected) ones, and with the dense
reference's. Dense Gaussian projections are simulated exactly from the features' Gram matrix for
--dense-seeds seeds (the real dense projection is slow; --dense-quality adds one real one to check
the simulation): that also measures how far the reference's own selection moves with its seed.
Each real projection's rows are also stored as every `build --dtype` (float16, int8, bit) and
decoded as `select` reads them: each dtype's bytes per row and its top-5% agreement with the exact
selection and with the undecoded float32 rows.

    python bench/build_speed.py                      # everything, results to bench/results.json
    python bench/build_speed.py --skip training dense sparse kronecker reference --run RUN \
        --seeds 3 --quality-dims 8192 65536 --dense-quality --dense-seeds 20 --out bench/quality.json
"""

from __future__ import annotations

import argparse
import json
import math
import os
import platform
import shutil
import subprocess
import sys
import time
from datetime import date
from pathlib import Path

import numpy as np
import torch
from memory import peak_rss_gib
from peft import set_peft_model_state_dict
from tqdm.auto import tqdm

from gradsift.config import BuildConfig, WarmupConfig
from gradsift.data.chat import ChatEncoder, collate, encode_refs, per_example_loss
from gradsift.data.index import index_examples
from gradsift.data.records import read_records
from gradsift.features.adam import normalize_rows
from gradsift.features.build import build
from gradsift.features.engine import checkpoint_adam
from gradsift.features.gradients import PerExampleGradients
from gradsift.features.projection import PROJECTORS, make_projector
from gradsift.selection.methods import subtask_of
from gradsift.selection.scoring import aggregate, top_k
from gradsift.store.compact import DTYPES, decode_rows, encode_rows, has_scale, numpy_dtype, sign_cosine, stored_shape
from gradsift.training.lora import lora_parameters
from gradsift.training.run import Run
from gradsift.training.warmup import warmup
from gradsift.utils.files import atomic_write_bytes
from gradsift.utils.models import load_model, pick_device

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "experiments"))  # the benchmark builder
from benchmark import build_benchmark  # noqa: E402


def prepare(args) -> None:
    """Once, before any timed child: the warmup run (a short real one unless --run is given) and the
    speed data files, the --examples (and --memory-examples) longest examples, cut to --length."""
    pool, targets = bench_data(args)
    if not args.run:  # 1 epoch on ~90 pool examples: a real adapter and real Adam moments, in about a minute
        args.run = str(Path(args.workdir) / "run")
        warmup(WarmupConfig(model="smollm2-135m", train=pool, output=Path(args.run), fraction=0.08,
                            epochs=1, batch_size=16, max_length=args.length, device=args.device))
    _, tokenizer, _ = load_model(Run.open(args.run).model.name, torch.device("cpu"))
    encoder = ChatEncoder(tokenizer, args.length)
    refs = usable(targets + pool, encoder)
    refs.sort(key=lambda r: (-r.tokens, r.file, r.line))
    for n in {args.examples, args.memory_examples} - {None}:
        atomic_write_bytes(speed_file(args, n), b"".join(r + b"\n" for r in read_records(refs[:n])))


def bench_data(args) -> tuple[list[Path], list[Path]]:
    """The benchmark, built in --workdir: its pool files and its targets' few-shot files (subtasks differ
    between targets, so together they are one target of many subtasks)."""
    data = Path(args.workdir) / "data"
    build_benchmark(data)
    return sorted((data / "pool").glob("*.jsonl")), sorted((data / "targets").glob("*/fewshot.jsonl"))


def speed_file(args, n: int) -> Path:
    return Path(args.workdir) / f"speed-{n}.jsonl"


def usable(files, encoder) -> list:
    refs, _, _ = index_examples(files, encoder)
    return [r for r in refs if r.label_tokens > 0]


def load(args):
    """(model with the run's last checkpoint, its Adam state, tokenizer, device), in eval mode."""
    run = Run.open(args.run)
    device = pick_device(args.device)
    model, tokenizer = run.load_model(device, torch.bfloat16 if device.type == "cuda" else torch.float32)
    last = run.checkpoints[-1]
    set_peft_model_state_dict(model, last.adapter_state())
    model.eval()
    return model, checkpoint_adam(last, [n for n, _ in lora_parameters(model)], device), tokenizer, device


def batches(examples, size, pad: int, device):
    for k in range(0, len(examples), size):
        yield {n: t.to(device) for n, t in collate(examples[k: k + size], pad).items()}


def run_variant(args) -> dict:
    """Time one variant over the speed examples; runs in a child process.

    The projection kinds run `gradsift build` itself (every checkpoint of the run, store written);
    training and the reference loop run on the run's last checkpoint."""
    torch.set_num_threads(os.cpu_count())
    device = pick_device(args.device)
    sync = torch.cuda.synchronize if device.type == "cuda" else (lambda: None)
    if args.variant in PROJECTORS:
        output = Path(args.workdir) / f"store-{args.variant}-{args.examples}"
        shutil.rmtree(output, ignore_errors=True)
        start = time.perf_counter()
        store = build(BuildConfig(run=Path(args.run), data=[speed_file(args, args.examples)], output=output,
                                  projection=args.variant, dim=args.dim, max_length=args.length,
                                  batch_size=args.batch_size, device=args.device))
        sync()
        seconds = time.perf_counter() - start
        rows = len(store.index) * len(store.manifest["checkpoints"])
        tokens = np.mean([r.tokens for r in store.index])
    else:  # timed from the start too (model load, tokenizing), as build is: the ratio compares whole runs
        start = time.perf_counter()
        model, adam, tokenizer, device = load(args)
        encoder = ChatEncoder(tokenizer, args.length)
        refs = usable([speed_file(args, args.examples)], encoder)
        examples = encode_refs(refs[: args.reference_examples if args.variant == "reference" else None], encoder)
        params = [p for _, p in lora_parameters(model)]
        if args.variant == "training":
            optimizer = torch.optim.AdamW(params, lr=1e-5)  # model stays in eval mode: no dropout, as in build
            for batch in batches(examples, args.batch_size, tokenizer.pad_token_id, device):
                per_example_loss(model, batch).mean().backward()
                optimizer.step()
                optimizer.zero_grad(set_to_none=True)
        else:  # the reference loops one example at a time
            projector = make_projector("dense", [tuple(p.shape) for p in params], args.dim, 0)
            for batch in batches(examples, 1, tokenizer.pad_token_id, device):
                loss = per_example_loss(model, batch).sum()
                g = torch.cat([t.flatten() for t in torch.autograd.grad(loss, params)]).float()
                normalize_rows(projector.project(adam.feature(g, slice(None), "corrected")[None]))
        sync()
        seconds = time.perf_counter() - start
        rows, tokens = len(examples), np.mean([len(ids) for ids, _ in examples])
    peak_gpu = torch.cuda.max_memory_allocated() / 2**30 if device.type == "cuda" else None
    return {"variant": args.variant, "examples": rows, "tokens_per_example": float(tokens),
            "seconds": seconds, "examples_per_s": rows / seconds, "peak_gpu_gib": peak_gpu}


def report(result: dict) -> None:
    """A variant's result, as the last line of its process's output, with that process's peak memory."""
    print(json.dumps({**result, "peak_rss_gib": peak_rss_gib()}))


def child(args, variant: str, script: str = __file__, **overrides) -> dict:
    """Run one variant in a fresh process of SCRIPT (this one, or a bench script that imports it): its
    result, with its own peak resident memory (``report``)."""
    cmd = [sys.executable, script, "--variant", variant]
    for key, value in {**vars(args), **overrides}.items():
        flag = "--" + key.replace("_", "-")
        if key in ("variant", "out", "skip") or value is None or value is False:
            continue
        if isinstance(value, list):
            cmd += [flag, *map(str, value)] if value else []
        else:
            cmd += [flag] if value is True else [f"{flag}={value}"]
    done = subprocess.run(cmd, stdout=subprocess.PIPE, text=True)
    if done.returncode != 0:
        raise SystemExit(f"variant {variant} failed:\n{done.stdout}")
    return json.loads(done.stdout.strip().splitlines()[-1])


def exact_features(model, adam, pool, targets, batches, path: Path) -> list[np.ndarray]:
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
            for batch in batches(examples):
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


def stored_cosines(pool: torch.Tensor, targets: torch.Tensor, dtype: str) -> torch.Tensor:
    """Pool-target cosines of unit rows stored as DTYPE and decoded, as `gradsift select` scores them."""
    def stored(rows: torch.Tensor) -> torch.Tensor:
        return torch.from_numpy(decode_rows(*encode_rows(rows.numpy(), dtype), dtype, rows.shape[1]))

    dot = (stored(pool) @ stored(targets).T).double()
    return sign_cosine(dot) if dtype == "bit" else dot


def row_bytes(dtype: str, dim: int) -> int:
    """Bytes a store of DTYPE spends on one row of one checkpoint, its per-row scale included."""
    return stored_shape(dtype, 1, dim)[1] * numpy_dtype(dtype).itemsize + 4 * has_scale(dtype)


def quality(args) -> dict:
    """Pool-target cosines and the resulting selection of each projection, against the exact ones.

    The pool is scored against every target's few-shot examples and ranked as `gradsift select`
    does (subtask mean, max over subtasks; top 5%). Projections applied for real: sparse and kronecker at each
    --quality-dims and seed, dense at --dim (seed 0) with --dense-quality. Dense Gaussian projections
    are also simulated exactly from the Gram matrix for --dense-seeds seeds, which measures how far
    the reference method's own selection moves when only its seed changes."""
    torch.set_num_threads(os.cpu_count())
    model, adam, tokenizer, device = load(args)
    encoder = ChatEncoder(tokenizer, args.length)
    pool, targets = bench_data(args)
    fewshot, pool = usable(targets, encoder), usable(pool, encoder)
    pool = [pool[i] for i in np.random.default_rng(0).permutation(len(pool))[: args.quality_pool]]
    subtasks, n = [subtask_of(r) for r in fewshot], len(pool)
    shapes = [tuple(p.shape) for _, p in lora_parameters(model)]
    blocks = exact_features(model, adam, encode_refs(pool, encoder), encode_refs(fewshot, encoder),
                            lambda ex: batches(ex, args.batch_size, tokenizer.pad_token_id, device),
                            Path(args.workdir) / "exact.npy")
    del model

    dims = args.quality_dims or [args.dim]
    real = [(k, d, s) for k in PROJECTORS if k != "dense" for d in dims for s in range(args.seeds)]
    real += [("dense", args.dim, 0)] if args.dense_quality else []
    projectors = {v: make_projector(v[0], shapes, v[1], v[2]) for v in real}
    rows = blocks[0].shape[0]  # pool, then targets
    projected = {v: torch.zeros(rows, v[1]) for v in real}
    gram = torch.zeros(rows, rows, dtype=torch.float64)
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
        y = normalize_rows(y)
        cos[v] = y[:n].double() @ y[n:].double().T
        for dtype in DTYPES:  # the rows as a store of each --dtype keeps them, pool and targets alike
            cos[(v[0] + "-" + dtype, *v[1:])] = stored_cosines(y[:n], y[n:], dtype)
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
    report = {"pool": n, "targets": len(fewshot), "subtasks": len(set(subtasks)), "top_k": k_top,
              "warmup": args.run,
              "exact_cosine": {"mean": exact.mean().item(), "std": exact.std().item()},
              "vs_exact": {}, "vs_dense": {}}
    references = [v for v in simulated if v[1] == args.dim]  # the reference method at its dim, many seeds
    report["dtypes"] = {}
    for kind, dim in dict.fromkeys((k, d) for k, d, _ in real):
        runs = [v for v in real if v[:2] == (kind, dim)]
        for dtype in DTYPES:
            stored = [(f"{kind}-{dtype}", *v[1:]) for v in runs]
            report["dtypes"][f"{kind}-d{dim}-{dtype}"] = {
                "bytes_per_row": row_bytes(dtype, dim),
                "vs_exact": summary([(v, ("exact", 0, 0)) for v in stored]),
                "vs_float32": summary(list(zip(stored, runs))),
            }
    for kind, dim in dict.fromkeys((k, d) for k, d, _ in real + simulated):
        runs = [v for v in real + simulated if v[:2] == (kind, dim)]
        report["vs_exact"][f"{kind}-d{dim}"] = summary([(v, ("exact", 0, 0)) for v in runs])
        report["vs_dense"][f"{kind}-d{dim}"] = summary([(v, r) for v in runs for r in references if v != r])
        if args.dense_quality:
            report["vs_dense"][f"{kind}-d{dim}"]["real_dense_top5_jaccard"] = float(np.mean(
                [agreement(v, ("dense", args.dim, 0))["top5_jaccard"] for v in runs if v != ("dense", args.dim, 0)]
                or [1.0]))
    return report


def run_record(script: str, args, results: dict) -> dict:
    """What a benchmark run records beside its figures: the command, date, machine and settings."""
    return {
        "command": " ".join(["python", script, *sys.argv[1:]]),
        "date": str(date.today()),
        "machine": f"{platform.machine()}, {os.cpu_count()} cores, torch {torch.__version__}, "
                   f"{torch.cuda.get_device_name() if torch.cuda.is_available() else 'no GPU'}",
        "settings": {k: v for k, v in vars(args).items() if k not in ("variant", "out")},
        "speed": results,
    }


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--examples", type=int, default=32, help="examples per speed variant")
    parser.add_argument("--reference-examples", type=int, default=2, help="examples for the (slow) reference")
    parser.add_argument("--batch-size", type=int, default=16)
    parser.add_argument("--dim", type=int, default=8192)
    parser.add_argument("--length", type=int, default=256, help="max tokens per example")
    parser.add_argument("--quality-pool", type=int, default=480, help="pool examples (needs ~60 MB of disk each)")
    parser.add_argument("--dense-quality", action="store_true", help="include the (slow) dense projection in quality")
    parser.add_argument("--seeds", type=int, default=1, help="projection seeds for the fast kinds in quality")
    parser.add_argument("--dense-seeds", type=int, default=10, help="simulated dense projections in quality")
    parser.add_argument("--run", help="warmup run to use (default: a short one made in --workdir)")
    parser.add_argument("--memory-examples", type=int, default=128,
                        help="also build sparse features of this many examples: peak memory must not grow")
    parser.add_argument("--quality-dims", type=int, nargs="*", help="dims for the fast kinds in quality (default --dim)")
    parser.add_argument("--skip", nargs="*", default=[], help="variants to leave out")
    parser.add_argument("--device", default="auto")
    parser.add_argument("--workdir", default="/tmp/gradsift-bench")
    parser.add_argument("--variant", help=argparse.SUPPRESS)
    parser.add_argument("--out", default=str(Path(__file__).with_name("results.json")))
    args = parser.parse_args()
    if args.variant == "quality":
        report(quality(args))
        return
    if args.variant:
        report(run_variant(args))
        return

    prepare(args)
    variants = [v for v in ["training", *PROJECTORS, "reference"] if v not in args.skip]
    results = {}
    for v in variants:
        results[v] = child(args, v)
        print(json.dumps(results[v]), flush=True)
    if args.memory_examples and "sparse" in results:
        results[f"sparse-{args.memory_examples}"] = child(args, "sparse", examples=args.memory_examples)
        print(json.dumps(results[f"sparse-{args.memory_examples}"]), flush=True)
    if "training" in results:
        floor = results["training"]["examples_per_s"]
        for r in results.values():
            r["time_vs_training"] = floor / r["examples_per_s"]
    if "reference" in results:
        for r in results.values():
            r["speedup_vs_reference"] = r["examples_per_s"] / results["reference"]["examples_per_s"]
    record = run_record("bench/build_speed.py", args, results)
    if "quality" not in args.skip:
        record["quality"] = child(args, "quality")
        print(json.dumps(record["quality"]), flush=True)
    Path(args.out).write_text(json.dumps(record, indent=2) + "\n")
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
