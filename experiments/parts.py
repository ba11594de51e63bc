"""Which part of an example should the text signals read? Precision and relevance AUC of bm25 and rds
for every (target part, pool part) on benchmark builds with known answers; no training.

    python experiments/parts.py BENCHMARK_DIR... --output experiments/results/parts [--fraction 0.05]

For each build (a folder written by build_benchmark.py) and target, each method scores the pool as
``gradsift select --method bm25|rds --target-part T --pool-part P`` would (the same classes), and the
top fraction is compared with the build's relevance labels. rds's embeddings (SmolLM2-135M, the
experiments' model) are cached per build and part (--cache, default OUTPUT/cache/), so a rerun resumes. Writes
OUTPUT/parts.csv (one row per build, target, method, parts) and OUTPUT/parts.md.
"""

from __future__ import annotations

import argparse
import itertools
import json
from pathlib import Path

import numpy as np
import torch

from gradsift.config import Part
from gradsift.data.chat import ChatEncoder
from gradsift.selection.methods import Bm25, Pool, Rds, Target
from gradsift.selection.scoring import aggregate, relevance_auc, top_k
from gradsift.utils.files import atomic_write_bytes
from gradsift.utils.models import load_model, pick_device

PARTS: tuple[Part, ...] = ("whole", "prompt", "answer")
MODEL = "smollm2-135m"


def load(build: Path) -> tuple[Pool, list[Target], dict[str, set[str]]]:
    pool = Pool.from_files(sorted((build / "pool").glob("*.jsonl")))
    targets = [Target.from_files(t.name, [t / "fewshot.jsonl"]) for t in sorted((build / "targets").iterdir())]
    relevance = {k: set(v) for k, v in json.loads((build / "relevance.json").read_text()).items()}
    return pool, targets, relevance


def rds_embeddings(build: Path, pool: Pool, targets: list[Target], cache: Path) -> dict:
    """{(name, part): unit embeddings}, name "pool" or a target's; computed once per build and part."""
    rds = Rds(model=MODEL, max_length=1024, batch_size=16, device="auto")
    out, model = {}, None
    for (name, refs), part in itertools.product([("pool", pool.refs)] + [(t.name, t.refs) for t in targets], PARTS):
        path = cache / build.name / f"{name}-{part}.npy"
        if not path.exists():
            if model is None:
                device = pick_device("auto")
                model, tokenizer, _ = load_model(MODEL, device)
                encoder = ChatEncoder(tokenizer, rds.max_length)
            emb = rds.embed(refs, encoder, model, device, f"rds {build.name} {name} {part}", part).numpy()
            path.parent.mkdir(parents=True, exist_ok=True)
            np.save(path, emb)
        out[name, part] = torch.from_numpy(np.load(path))
    return out


def measure(scores: np.ndarray, relevant: np.ndarray, k: int) -> dict:
    picked = top_k(scores, k)
    return {"precision": float(relevant[picked].mean()), "auc": relevance_auc(scores, relevant)}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("builds", type=Path, nargs="+", help="benchmark folders (build_benchmark.py)")
    parser.add_argument("--output", type=Path, required=True)
    parser.add_argument("--fraction", type=float, default=0.05)
    parser.add_argument("--cache", type=Path, help="where rds's embeddings are kept (default: OUTPUT/cache)")
    args = parser.parse_args(argv)
    rows = []
    for build in args.builds:
        pool, targets, relevance = load(build)
        k = round(args.fraction * len(pool.refs))
        ids = np.asarray(pool.refs.column("id"))
        emb = rds_embeddings(build, pool, targets, args.cache or args.output / "cache")
        for target, (target_part, pool_part) in itertools.product(targets, itertools.product(PARTS, PARTS)):
            relevant = np.isin(ids, list(relevance[target.name]))
            bm25 = Bm25(target_part=target_part, pool_part=pool_part).score(pool, [target])[0].scores
            sim = emb["pool", pool_part] @ emb[target.name, target_part].T
            rds = aggregate(sim, target.subtasks).numpy()
            for method, scores in (("bm25", bm25), ("rds", rds)):
                rows.append({"build": build.name, "target": target.name, "method": method,
                             "target_part": target_part, "pool_part": pool_part, "selected": k,
                             **measure(scores, relevant, k)})
    header = list(rows[0])
    text = "".join(",".join(str(r[c]) for c in header) + "\n" for r in rows)
    atomic_write_bytes(args.output / "parts.csv", (",".join(header) + "\n" + text).encode())
    lines = [f"Precision of the top {args.fraction:g} (AUC of the relevant records' scores), by target part / pool "
             "part. Made by: python experiments/parts.py " + " ".join(str(b) for b in args.builds)
             + f" --output {args.output}", ""]
    for build, method in itertools.product(dict.fromkeys(r["build"] for r in rows), ("bm25", "rds")):
        mine = [r for r in rows if r["build"] == build and r["method"] == method]
        names = list(dict.fromkeys(r["target"] for r in mine))
        lines += [f"### {build}: {method}", "", "| target part | pool part | " + " | ".join(names) + " | mean P |",
                  "|---|---|" + "---|" * (len(names) + 1)]
        for target_part, pool_part in itertools.product(PARTS, PARTS):
            cells = [next(r for r in mine if r["target"] == n and r["target_part"] == target_part
                          and r["pool_part"] == pool_part) for n in names]
            lines.append(f"| {target_part} | {pool_part} | "
                         + " | ".join(f"{c['precision']:.2f} ({c['auc']:.2f})" for c in cells)
                         + f" | {np.mean([c['precision'] for c in cells]):.2f} |")
        lines.append("")
    atomic_write_bytes(args.output / "parts.md", "\n".join(lines).encode())
    print("\n".join(lines))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
