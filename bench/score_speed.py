"""Benchmark of scoring a large store (`gradsift select`), every signal and the default, all in one run.

It writes synthetic pool stores with every signal `gradsift build` stores: random unit gradient rows
(two checkpoints, the columnar index, memory-mapped feature files), RDS+ embeddings (--embedding-dim,
float32 as beside float16 rows) and a BM25 index of the records' prompts (bm25s, over synthetic
records of Zipf-distributed words); and a target store of --targets rows in --target-subtasks
subtasks. For each scale of --scales (ROWSxDIM: 1M x 8192 and 10M x 64 by default), each in a fresh
process, with the store's files evicted from the page cache first:

  read      the gradient and embedding files read once from disk: the disk's read bandwidth, measured
            in the same run
  less, bm25, rds, fusion (the default)
            `gradsift select` (the Python API) of the top 5% from the stores: seconds, rows/s, the
            bytes of the files that method reads per second as a fraction of the disk's bandwidth, and
            the peak RSS of that process. bm25 touches only the postings of the queries' words, so its
            "bytes" is the whole prompt index: an upper bound.

The dims of the 10M-row scale are small so that its gradient files fit the scratch disk (10M x 8192
float16 is 164 GB a checkpoint): what it measures is what the row count costs each signal (index,
embeddings, BM25 postings, ranks, fusion, a 10M-line scores.csv); the gradient scan's cost per byte
comes from the 1M x 8192 scale. With --dtypes, LESS alone is also timed per store dtype at the first
scale, and with --index-rows the index alone is opened, and that many records indexed from their
files as `gradsift build` and every text method read a pool (`data.index_examples`). Synthetic rows
say nothing of selection quality (that is bench/build_speed.py's quality part); they load the disk,
the decoding and the arithmetic as a real store of that size does.

    python bench/score_speed.py                                        # 1M x 8192 and 10M x 64, every signal
    python bench/score_speed.py --scales 100000x1024 --out /tmp/small.json   # a quick look
    python bench/score_speed.py --scales 1000000x8192 --dtypes float16 int8 bit --index-rows 10000000
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


RECORD = 200  # bytes a synthetic record takes in its file, newline included
VOCABULARY = 30_000  # synthetic words, drawn Zipf-distributed as words in text are
PROMPT_WORDS, ANSWER_WORDS = 16, 4


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
    """Row n is line n // 100 + 1 of part-(n % 100): a prompt and an answer of Zipf-distributed words."""
    pool.mkdir(parents=True, exist_ok=True)
    words = np.array([f"w{k}" for k in range(VOCABULARY)])
    for k in range(100):
        count = len(range(k, rows, 100))
        rng = np.random.default_rng([0, k])
        drawn = words[(rng.zipf(1.3, (count, PROMPT_WORDS + ANSWER_WORDS)) - 1) % VOCABULARY]
        with open(pool / f"part-{k:03d}.jsonl", "w") as f:
            for line, row in enumerate(drawn.tolist()):
                text = json.dumps({"id": f"r{line * 100 + k}", "prompt": " ".join(row[:PROMPT_WORDS]),
                                   "completion": " ".join(row[PROMPT_WORDS:])})
                f.write(text.ljust(RECORD - 1)[: RECORD - 1] + "\n")


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


def write_signals(path: Path, dim: int, seed: int, lexical: bool) -> None:
    """The signals a build stores beside the rows: RDS+ embeddings of DIM (random unit vectors, in the
    dtype a build gives them) and, with LEXICAL, the BM25 index of the records' prompts."""
    from gradsift.features.embeddings import stored_settings
    from gradsift.store import lexical as lexical_index
    from gradsift.store.datastore import GradientStore
    from gradsift.utils.models import ModelInfo

    store = GradientStore.open(path)
    rows = len(store.index)
    store.begin_embeddings(stored_settings(ModelInfo("synthetic", "", "0"), dim, store))
    rng = np.random.default_rng(seed)
    block = max(1, (64 << 20) // (4 * dim))
    for start in range(0, rows, block):
        x = rng.standard_normal((min(block, rows - start), dim), dtype=np.float32)
        store.write_embeddings(start, x / np.linalg.norm(x, axis=1, keepdims=True), "progress.json")
    store.finish_embeddings()
    if lexical:  # the part the default reads (a build indexes whole, prompt and answer)
        lexical_index.write_lexical_index(path, store.index, parts=("prompt",))


def write_stores(args, name: str, rows: int, dim: int, dtype: str, signals: bool = False) -> tuple[Path, Path]:
    """A pool store of ROWS x DIM in DTYPE and its float16 target store (--targets rows in
    --target-subtasks subtasks), over the records in WORK/records; with SIGNALS, their embeddings and
    the pool's BM25 index too."""
    store, target, records = args.work / f"pool-{name}", args.work / f"target-{name}", args.work / "records"
    write_store(store, rows, dim, dtype, seed=0, gradient="adam", pool=records)
    write_store(target, args.targets, dim, "float16", seed=1, gradient="sgd", pool=records, subtasks=args.target_subtasks)
    if signals:
        started = time.perf_counter()
        write_signals(store, args.embedding_dim, seed=2, lexical=True)
        write_signals(target, args.embedding_dim, seed=3, lexical=False)
        print(f"  embeddings and BM25 index of {rows:,} rows written in {time.perf_counter() - started:.0f} s")
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


def signal_files(store: Path, method: str) -> list[Path]:
    """The files of STORE a method's selection reads (all but the index, which every method reads)."""
    embeddings = sorted((store / "embeddings").glob("*.npy"))
    lexical = sorted(p for p in (store / "lexical").rglob("*") if p.is_file())
    return {"less": feature_files(store), "rds": embeddings, "bm25": lexical,
            "fusion": feature_files(store) + embeddings + lexical}[method]


# -- the measured steps, each run in its own process (`--step`) ---------------------------------------
def step_read(store: Path) -> dict:
    files = feature_files(store) + signal_files(store, "rds")
    evict(files)
    start, size = time.perf_counter(), 0
    for path in files:
        with open(path, "rb", buffering=0) as f:
            while block := f.read(16 << 20):
                size += len(block)
    seconds = time.perf_counter() - start
    return {"bytes": size, "seconds": seconds, "bytes_per_s": size / seconds}


def step_select(method: str, store: Path, target: Path, out: Path) -> dict:
    from gradsift.config import SelectConfig
    from gradsift.selection.select import select

    evict(signal_files(store, "fusion") + signal_files(target, "fusion"))
    start = time.perf_counter()
    select(SelectConfig(method=method, train_store=store, target_store=[target], output=out, fraction=0.05))
    seconds = time.perf_counter() - start
    rows = json.loads((store / "manifest.json").read_text())["rows"]
    size = sum(p.stat().st_size for p in signal_files(store, method))
    return {"seconds": seconds, "rows_per_s": rows / seconds, "bytes": size, "bytes_per_s": size / seconds,
            "peak_rss_gib": peak_rss_gib()}


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


METHODS = ["less", "bm25", "rds", "fusion"]  # every signal, and the default that fuses them


def scale(text: str) -> tuple[int, int]:
    rows, dim = text.lower().split("x")
    return int(rows), int(dim)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--scales", nargs="*", type=scale, default=[(1_000_000, 8192), (10_000_000, 64)],
                        help="ROWSxDIM of each pool store every signal and the default are timed on")
    parser.add_argument("--embedding-dim", type=int, default=576, help="the stored embeddings' dims (SmolLM2-135M's)")
    parser.add_argument("--targets", type=int, default=300)
    parser.add_argument("--target-subtasks", type=int, default=10, help="the targets' subtasks (BBH has 27)")
    parser.add_argument("--methods", nargs="+", default=METHODS, choices=METHODS)
    parser.add_argument("--dtypes", nargs="*", default=[], help="also time LESS on the first scale in these dtypes")
    parser.add_argument("--index-rows", type=int, default=0, help="also open an index of this many rows alone")
    parser.add_argument("--work", type=Path, default=Path("bench-score-work"), help="scratch folder (deleted after)")
    parser.add_argument("--out", type=Path, default=Path("bench/score_results.json"))
    parser.add_argument("--step", nargs="+", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.step:
        kind, *rest = args.step
        result = {"read": lambda: step_read(Path(rest[0])),
                  "select": lambda: step_select(rest[0], Path(rest[1]), Path(rest[2]), Path(rest[3])),
                  "write-index": lambda: step_write_index(int(rest[0]), Path(rest[1])),
                  "read-index": lambda: step_read_index(Path(rest[0])),
                  "index-pool": lambda: step_index_pool(Path(rest[0]))}[kind]()
        print(json.dumps(result))
        return

    args.work.mkdir(parents=True, exist_ok=True)
    results = {"date": str(date.today()), "machine": f"{platform.machine()}, {os.cpu_count()} cores",
               "command": " ".join(sys.argv), "targets": args.targets, "target_subtasks": args.target_subtasks,
               "embedding_dim": args.embedding_dim, "scales": {}, "dtypes": {}}
    try:
        for rows, dim in args.scales:
            key = f"{rows}x{dim}"
            write_pool_files(rows, args.work / "records")
            store, target = write_stores(args, key, rows, dim, "float16", signals=True)
            read = in_process("read", store)
            found = results["scales"][key] = {"rows": rows, "dim": dim, "disk_read": read, "methods": {}}
            for method in args.methods:
                chosen = in_process("select", method, store, target, args.work / f"selection-{key}-{method}")
                chosen["fraction_of_disk_bandwidth"] = chosen["bytes_per_s"] / read["bytes_per_s"]
                found["methods"][method] = chosen
                print(f"{key} {method}: {chosen['seconds']:.1f} s, {chosen['rows_per_s']:,.0f} rows/s, "
                      f"{chosen['fraction_of_disk_bandwidth']:.2f} of the disk's {read['bytes_per_s'] / 2**20:,.0f} "
                      f"MiB/s, peak RSS {chosen['peak_rss_gib']:.2f} GiB")
            if "less" in found["methods"] and "fusion" in found["methods"]:
                found["fusion_vs_less"] = found["methods"]["fusion"]["seconds"] / found["methods"]["less"]["seconds"]
                print(f"{key}: the default takes {found['fusion_vs_less']:.2f}x the LESS scan")
            shutil.rmtree(store)
            shutil.rmtree(target)
            if args.dtypes and (rows, dim) == args.scales[0]:
                for dtype in args.dtypes:
                    store, target = write_stores(args, dtype, rows, dim, dtype)
                    read = in_process("read", store)
                    chosen = in_process("select", "less", store, target, args.work / f"selection-{dtype}")
                    results["dtypes"][dtype] = {"store_bytes": chosen["bytes"], "disk_read": read, "select": chosen,
                                                "fraction_of_disk_bandwidth": chosen["bytes_per_s"] / read["bytes_per_s"]}
                    print(f"{dtype}: {chosen['bytes'] / 2**30:.2f} GiB, {chosen['rows_per_s']:,.0f} rows/s, "
                          f"{results['dtypes'][dtype]['fraction_of_disk_bandwidth']:.2f} of the disk's "
                          f"{read['bytes_per_s'] / 2**20:,.0f} MiB/s, peak RSS {chosen['peak_rss_gib']:.2f} GiB")
                    shutil.rmtree(store)
                    shutil.rmtree(target)
            shutil.rmtree(args.work / "records")
        if args.index_rows:
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
    finally:
        shutil.rmtree(args.work, ignore_errors=True)
    args.out.write_text(json.dumps(results, indent=2) + "\n")
    print(f"results: {args.out}")


if __name__ == "__main__":
    main()
