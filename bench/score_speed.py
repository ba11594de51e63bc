"""Benchmark of scoring a large store (`gradsift select`, LESS), all in one run.

It writes a synthetic gradient store of --rows random unit rows x --dim dims with two checkpoints
(the layout `gradsift build` writes: columnar index, memory-mapped feature files), one per
--dtypes, and a target store of --targets rows, then for each dtype, in a fresh process:

  read      the feature files read once from disk (evicted from the page cache first): the disk's
            read bandwidth, measured in the same run
  select    `gradsift select` (the Python API) of the top 5% over the whole store: rows/s, the
            fraction of the disk bandwidth it reaches, peak RSS of that process

and, for --index-rows (10M by default), how long the index alone takes to open and the memory it
takes, and the same `gradsift select` of a whole store of that many rows at --index-dim (64) float16
dims: what memory the row count alone costs a selection (its index, scores, ranking and the 10M-line
scores.csv it writes), with the features small enough to fit the scratch disk. Before that select,
the same --index-rows records are indexed from their files as `gradsift build` and every text method
read a pool (`data.index_examples`, without the tokenizer, which adds only time): its peak RSS.
Synthetic rows say nothing of selection quality (that is bench/build_speed.py's quality part); they
load the disk, the decoding and the matrix products exactly as a real store of that size does.

    python bench/score_speed.py                         # 1M x 8192, float16 int8 bit; 10M-row index
    python bench/score_speed.py --rows 100000 --index-rows 1000000 --out bench/score_small.json
    python bench/score_speed.py --dtypes --out bench/score_rows.json    # only the 10M-row parts
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import shutil
import subprocess
import sys
import time
from datetime import date
from pathlib import Path

import numpy as np
from memory import peak_rss_gib

CHECKPOINTS = ["checkpoint-1", "checkpoint-2"]


RECORD = 120  # bytes a synthetic record takes in its file, newline included


def synthetic_index(rows: int, pool: Path, subtasks: int = 0):
    """A StoreIndex of ``rows`` examples spread over 100 files under POOL, built from columns (no
    ExampleRef); the files hold the records (a selection copies the chosen ones out of them)."""
    import pyarrow as pa

    from gradsift.data.index import StoreIndex

    n = np.arange(rows)
    names = [str(pool / f"part-{k:03d}.jsonl") for k in range(100)]
    table = pa.table({
        "file": pa.DictionaryArray.from_arrays(pa.array(n % 100, pa.int32()), pa.array(names)).cast(pa.string()),
        "line": pa.array(n // 100 + 1), "offset": pa.array((n // 100) * RECORD),
        "length": pa.array(np.full(rows, RECORD - 1)), "id": pa.array([f"r{k}" for k in range(rows)]),
        "source": pa.array([f"source-{k % 20}" for k in range(rows)]),
        "subtask": pa.array([f"subtask-{k % subtasks}" if subtasks else "" for k in range(rows)]),
        "tokens": pa.array(np.full(rows, 256)), "label_tokens": pa.array(np.full(rows, 128)),
        "chars": pa.array(np.full(rows, 60)), "non_finite_gradient": pa.array(np.zeros(rows, bool)),
    })
    return StoreIndex(table)


def write_pool_files(rows: int, pool: Path) -> None:
    pool.mkdir(parents=True, exist_ok=True)
    for k in range(100):
        with open(pool / f"part-{k:03d}.jsonl", "w") as f:
            for line in range(len(range(k, rows, 100))):
                text = json.dumps({"id": f"r{line * 100 + k}", "prompt": "q", "completion": "a"})
                f.write(text.ljust(RECORD - 1) + "\n")


def write_store(path: Path, rows: int, dim: int, dtype: str, seed: int, gradient: str, pool: Path,
                subtasks: int = 0) -> None:
    """A complete store, written in blocks of unit rows through GradientStore's own writer."""
    from gradsift.store.datastore import GradientStore

    manifest = {"model": {"name": "synthetic", "fingerprint": "0"}, "run": "synthetic",
                "checkpoints": [{"name": c, "step": k + 1, "lr": 1.0, "weight": 0.5} for k, c in enumerate(CHECKPOINTS)],
                "gradient": gradient, "adam_form": None, "projection": {"kind": "sparse", "dim": dim, "seed": 0},
                "dtype": dtype, "max_length": 256, "parameters": {"count": 0, "layout": "synthetic"}, "files": [],
                "counts": {"examples": rows, "ok": rows, "no_label_tokens": 0, "bad_records": 0,
                           "non_finite_gradient": 0}, "bad_records": [], "no_label_tokens": []}
    store = GradientStore.create(path, manifest, synthetic_index(rows, pool, subtasks))
    rng = np.random.default_rng(seed)
    block = max(1, (64 << 20) // (4 * dim))
    for name in CHECKPOINTS:
        for start in range(0, rows, block):
            x = rng.standard_normal((min(block, rows - start), dim), dtype=np.float32)
            store.write_rows(name, start, x / np.linalg.norm(x, axis=1, keepdims=True))
    store.finish()


def write_stores(args, name: str, rows: int, dim: int, dtype: str) -> tuple[Path, Path]:
    """A pool store of ROWS x DIM in DTYPE and its float16 target store (--targets rows in
    --target-subtasks subtasks), over the records in WORK/records."""
    store, target, records = args.work / f"pool-{name}", args.work / f"target-{name}", args.work / "records"
    write_store(store, rows, dim, dtype, seed=0, gradient="adam", pool=records)
    write_store(target, args.targets, dim, "float16", seed=1, gradient="sgd", pool=records, subtasks=args.target_subtasks)
    return store, target


def evict(paths: list[Path]) -> None:
    """Drop the files from the page cache, so that the next read comes from the disk."""
    for path in paths:
        fd = os.open(path, os.O_RDONLY)
        try:
            os.fsync(fd)
            os.posix_fadvise(fd, 0, 0, os.POSIX_FADV_DONTNEED)
        finally:
            os.close(fd)


def feature_files(store: Path) -> list[Path]:
    return sorted((store / "features").glob("*.npy"))


# -- the measured steps, each run in its own process (`--step`) ---------------------------------------
def step_read(store: Path) -> dict:
    files = feature_files(store)
    evict(files)
    start, size = time.perf_counter(), 0
    for path in files:
        with open(path, "rb", buffering=0) as f:
            while block := f.read(16 << 20):
                size += len(block)
    seconds = time.perf_counter() - start
    return {"bytes": size, "seconds": seconds, "bytes_per_s": size / seconds}


def step_select(store: Path, target: Path, out: Path) -> dict:
    from gradsift.config import SelectConfig
    from gradsift.selection.select import select

    evict(feature_files(store))
    start = time.perf_counter()
    select(SelectConfig(method="less", train_store=store, target_store=[target], output=out, fraction=0.05))
    seconds = time.perf_counter() - start
    rows = json.loads((store / "manifest.json").read_text())["rows"]
    size = sum(p.stat().st_size for p in feature_files(store))
    return {"seconds": seconds, "rows_per_s": rows / seconds, "bytes_per_s": size / seconds, "peak_rss_gib": peak_rss_gib()}


def step_write_index(rows: int, folder: Path) -> dict:
    """Only the setup of step_read_index (making the index is not what is measured)."""
    (folder / "index.parquet").write_bytes(synthetic_index(rows, folder).to_parquet())
    return {"rows": rows, "bytes": (folder / "index.parquet").stat().st_size}


def step_read_index(folder: Path) -> dict:
    from gradsift.data.index import StoreIndex

    start = time.perf_counter()
    index = StoreIndex.read(folder)
    scorable = int(index.ok_mask().sum())
    return {"seconds": time.perf_counter() - start, "rows": len(index), "scorable": scorable,
            "peak_rss_gib": peak_rss_gib()}


def step_index_pool(records: Path) -> dict:
    from gradsift.data.index import index_examples

    start = time.perf_counter()
    index, bad, _ = index_examples(sorted(records.glob("*.jsonl")), None)
    return {"seconds": time.perf_counter() - start, "rows": len(index), "bad": len(bad), "peak_rss_gib": peak_rss_gib()}


def in_process(*argv) -> dict:
    done = subprocess.run([sys.executable, __file__, "--step", *map(str, argv)], capture_output=True, text=True)
    if done.returncode:
        raise RuntimeError(f"step {argv} failed:\n{done.stderr[-3000:]}")
    return json.loads(done.stdout.strip().splitlines()[-1])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--rows", type=int, default=1_000_000)
    parser.add_argument("--dim", type=int, default=8192)
    parser.add_argument("--targets", type=int, default=300)
    parser.add_argument("--target-subtasks", type=int, default=10, help="the targets' subtasks (BBH has 27)")
    parser.add_argument("--dtypes", nargs="*", default=["float16", "int8", "bit"])
    parser.add_argument("--index-rows", type=int, default=10_000_000)
    parser.add_argument("--index-dim", type=int, default=64, help="dims of the --index-rows store that is selected from")
    parser.add_argument("--work", type=Path, default=Path("bench-score-work"), help="scratch folder (deleted after)")
    parser.add_argument("--out", type=Path, default=Path("bench/score_results.json"))
    parser.add_argument("--step", nargs="+", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.step:
        kind, *rest = args.step
        result = {"read": lambda: step_read(Path(rest[0])),
                  "select": lambda: step_select(Path(rest[0]), Path(rest[1]), Path(rest[2])),
                  "write-index": lambda: step_write_index(int(rest[0]), Path(rest[1])),
                  "read-index": lambda: step_read_index(Path(rest[0])),
                  "index-pool": lambda: step_index_pool(Path(rest[0]))}[kind]()
        print(json.dumps(result))
        return

    args.work.mkdir(parents=True, exist_ok=True)
    results = {"date": str(date.today()), "machine": f"{platform.machine()}, {os.cpu_count()} cores",
               "command": " ".join(sys.argv), "rows": args.rows, "dim": args.dim, "targets": args.targets,
               "target_subtasks": args.target_subtasks,
               "dtypes": {}}
    try:
        if args.dtypes:
            write_pool_files(args.rows, args.work / "records")
        for dtype in args.dtypes:
            store, target = write_stores(args, dtype, args.rows, args.dim, dtype)
            read = in_process("read", store)
            chosen = in_process("select", store, target, args.work / f"selection-{dtype}")
            size = sum(p.stat().st_size for p in feature_files(store))
            results["dtypes"][dtype] = {"store_bytes": size, "disk_read": read, "select": chosen,
                                        "fraction_of_disk_bandwidth": chosen["bytes_per_s"] / read["bytes_per_s"]}
            print(f"{dtype}: {size / 2**30:.2f} GiB, {chosen['rows_per_s']:,.0f} rows/s, "
                  f"{results['dtypes'][dtype]['fraction_of_disk_bandwidth']:.2f} of the disk's "
                  f"{read['bytes_per_s'] / 2**20:,.0f} MiB/s, peak RSS {chosen['peak_rss_gib']:.2f} GiB")
            shutil.rmtree(store)
            shutil.rmtree(target)
        folder = args.work / "index"
        folder.mkdir(exist_ok=True)
        in_process("write-index", args.index_rows, folder)
        results["index"] = in_process("read-index", folder)
        print(f"index of {args.index_rows:,} rows: opened in {results['index']['seconds']:.2f} s, "
              f"peak RSS {results['index']['peak_rss_gib']:.2f} GiB")
        shutil.rmtree(folder)
        write_pool_files(args.index_rows, args.work / "records")
        results["pool_index"] = in_process("index-pool", args.work / "records")
        print(f"index_examples of {args.index_rows:,} records: {results['pool_index']['seconds']:.1f} s, "
              f"peak RSS {results['pool_index']['peak_rss_gib']:.2f} GiB")
        store, target = write_stores(args, "rows", args.index_rows, args.index_dim, "float16")
        results["rows_select"] = {"rows": args.index_rows, "dim": args.index_dim,
                                  **in_process("select", store, target, args.work / "rows-selection")}
        print(f"select of {args.index_rows:,} rows x {args.index_dim} float16 dims: "
              f"{results['rows_select']['seconds']:.1f} s, peak RSS {results['rows_select']['peak_rss_gib']:.2f} GiB")
    finally:
        shutil.rmtree(args.work, ignore_errors=True)
    args.out.write_text(json.dumps(results, indent=2) + "\n")
    print(f"results: {args.out}")


if __name__ == "__main__":
    main()
