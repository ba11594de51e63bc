"""Stage 2, build: per-example gradient features of a dataset at every checkpoint of a warmup run.

``adam`` (for the pool) turns each gradient into the update Adam would make from the checkpoint's
optimizer state; ``sgd`` (for targets) keeps the plain gradient. Features are projected in float32,
L2-normalised and committed to the datastore chunk by chunk, so an interrupted build resumes where
it stopped and memory does not grow with the pool. A complete store then gets the lexical index
BM25 reads (``gradsift.store.lexical``) and the embeddings rds reads (``features.embeddings``, committed
chunk by chunk as the rows are): a selection for a new target scans stored data only.
"""

from __future__ import annotations

import hashlib
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import asdict
from pathlib import Path

import numpy as np
import torch
from tqdm.auto import tqdm

from gradsift.config import BuildConfig, ModelDtype
from gradsift.data.chat import ChatEncoder
from gradsift.data.index import index_examples
from gradsift.data.records import STATUSES, print_skips
from gradsift.features.embeddings import begin_stored, embed_stores
from gradsift.features.engine import (
    chunk_features,
    features_dtype,
    load_features_model,
    open_run,
    use_checkpoint,
)
from gradsift.features.gradients import PerExampleGradients
from gradsift.features.projection import check_projection, make_projector
from gradsift.store.datastore import GradientStore
from gradsift.training.run import Run
from gradsift.utils.distributed import World, shard_bounds, world_locks
from gradsift.utils.errors import ConfigError, StoreMismatchError
from gradsift.utils.models import load_model, pick_device


def _manifest(config: BuildConfig, run: Run, grads: PerExampleGradients, projection: dict, max_length: int,
              files, bad, index, device: torch.device) -> dict:
    names = hashlib.blake2b("\n".join(f"{n}:{s}" for n, s in zip(grads.names, grads.shapes)).encode(), digest_size=16)
    total_lr = sum(c.lr for c in run.checkpoints)
    if not total_lr > 0:
        raise StoreMismatchError(f"warmup run {run.path}: every checkpoint trained at learning rate 0, so none can "
                                 "weigh the scores; warm up again with a positive --learning-rate")
    statuses = index.status_codes()
    no_labels = np.flatnonzero(statuses == STATUSES.index("no_label_tokens"))
    return {
        "model": {"name": run.model.name, "fingerprint": run.model.fingerprint},
        "run": run.id,
        "checkpoints": [{"name": c.path.name, "step": c.step, "lr": c.lr, "weight": c.lr / total_lr}
                        for c in run.checkpoints],
        "gradient": config.gradient,
        "adam_form": config.adam_form if config.gradient == "adam" else None,
        "projection": projection,
        "dtype": config.dtype,
        "model_dtype": str(features_dtype(device, config.model_dtype)).removeprefix("torch."),
        "max_length": max_length,
        "response": config.response,
        "parameters": {"count": grads.size, "layout": names.hexdigest()},
        "files": [asdict(f) for f in files],
        "counts": {"examples": len(index), "ok": int((statuses == STATUSES.index("ok")).sum()),
                   "no_label_tokens": len(no_labels), "bad_records": len(bad),
                   "non_finite_gradient": 0},  # set when the build finishes (GradientStore.finish)
        "bad_records": [asdict(b) for b in bad],
        "no_label_tokens": [f"{r.file}:{r.line}" for r in index.take(no_labels)],
    }


# Settings that may differ between stores built together from one gradient pass.
PROJECTION_SETTINGS = ("projection", "dim", "seed", "dtype", "output")


def build(config: BuildConfig) -> GradientStore:
    """Build (or resume, or return if complete) the gradient store described by ``config``."""
    return build_together([config])[0]


def build_together(configs: list[BuildConfig]) -> list[GradientStore]:
    """Build several stores of the same run, data and gradient kind that differ only in projection
    (kind, dim, seed) or row dtype from one pass of per-example gradients: the forward, backward and Adam
    transform are shared, only the (cheap) projections are repeated. Each store resumes on its own.

    Under torchrun every process computes one length-balanced shard of the rows (``shard_bounds``)
    into the same files; the main process holds the folders' locks and merges the shards' progress."""
    world = World.current(pick_device(configs[0].device))
    with world_locks(world, [c.output for c in configs]):
        return _build_together(configs, world)


def _build_together(configs: list[BuildConfig], world: World) -> list[GradientStore]:
    shared = [{k: v for k, v in asdict(c).items() if k not in PROJECTION_SETTINGS} for c in configs]
    if any(s != shared[0] for s in shared):
        raise ConfigError("stores built together must differ only in projection, dim, seed and dtype")
    if len({Path(c.output).resolve() for c in configs}) != len(configs):
        raise ConfigError("stores built together need distinct outputs")
    for c in configs:
        check_projection(c.projection, c.dim)
    config = configs[0]
    run = open_run(config.run, adam=config.gradient == "adam")
    device = world.device(pick_device(config.device))
    model, tokenizer = load_features_model(run, device, config.model_dtype)
    max_length = config.max_length or run.config["max_length"]
    encoder = ChatEncoder(tokenizer, max_length, config.response)
    index, bad, files = index_examples(config.data, encoder, config.skip_bad_records)

    with PerExampleGradients(model) as grads:
        projectors = [make_projector(c.projection, grads.shapes, c.dim, c.seed) for c in configs]
        manifests = [_manifest(c, run, grads, p.describe(), max_length, files, bad, index, device)
                     for c, p in zip(configs, projectors)]
        open_stores = lambda: [_open_or_create(Path(c.output), m, index) for c, m in zip(configs, manifests)]  # noqa: E731
        stores = open_stores() if world.main else None
        world.barrier()  # the main process lays the stores out; the others open them
        stores = stores or open_stores()
        todo = [k for k, store in enumerate(stores) if not store.complete]
        if todo:
            if world.main:
                _report_skips(manifests[0], Path(configs[0].output))
            first_row, end_row = shard_bounds(index.column("tokens"), config.chunk_size, world.size)[world.rank]
            for k in todo:
                if world.size == 1 and stores[k].shard_files():
                    raise ConfigError(f"{stores[k].path} was being built by several processes "
                                      f"({stores[k].shard_files()[0].name}); relaunch it with torchrun")
            progress = {k: "progress.json" if world.size == 1 else
                        stores[k].begin_shard(world.rank, world.size, first_row, end_row) for k in todo}
            done = {k: stores[k].committed(progress[k]) for k in todo}
            names = " + ".join(stores[k].name for k in todo)
            bar = tqdm(total=(end_row - first_row) * len(run.checkpoints),
                       initial=sum(min(done[k][c.path.name] for k in todo) - first_row for c in run.checkpoints),
                       unit="ex", desc=f"build {names} ({config.gradient})", smoothing=0.1, disable=not world.main)
            for checkpoint in run.checkpoints:
                name = checkpoint.path.name
                first = min(done[k][name] for k in todo)
                if first == end_row:
                    continue
                adam = use_checkpoint(model, checkpoint, grads, device, adam=config.gradient == "adam")
                for start in range(first, end_row, config.chunk_size):
                    refs = index[start: min(start + config.chunk_size, end_row)]
                    needing = [k for k in todo if done[k][name] <= start]  # rows are committed in order
                    features = chunk_features(refs, encoder, grads, [projectors[k] for k in needing], adam,
                                              config.adam_form, batch_size=config.batch_size, device=device)
                    for k, rows in zip(needing, features):
                        stores[k].write_rows(name, start, rows, progress[k])
                    bar.update(len(refs))
            bar.close()
    if todo:
        world.barrier()  # every shard written
        if world.main:
            for k in todo:
                if world.size > 1:
                    stores[k].merge_shards()
                stores[k].finish()
        world.barrier()
        stores = [GradientStore.open(c.output) for c in configs]
    # Signals other methods read, added once the rows are complete, and to a store built before it held them.
    _index_texts(stores, world)
    todo = begin_stored(stores, run.model, model.config.hidden_size, world)
    if todo:
        with _rds_model(model, run, device, config.model_dtype) as base:
            embed_stores(stores, todo, base, tokenizer, device, world, chunk_size=config.chunk_size,
                         batch_size=config.batch_size)
    return stores


@contextmanager
def _rds_model(model, run: Run, device: torch.device, model_dtype: ModelDtype) -> Iterator:
    """The run's base model as rds loads it (float32, no adapter), for the stored embeddings: the features
    model with its LoRA disabled where it is float32 (a CPU build), else the base model loaded in float32."""
    if features_dtype(device, model_dtype) == torch.float32:
        with model.disable_adapter():
            yield model
    else:
        base, _, _ = load_model(run.model.name, device)
        yield base
        del base


def _index_texts(stores: list[GradientStore], world: World) -> None:
    """The main process indexes each complete store's record texts for BM25 (``store.lexical``), once:
    after the rows, which a selection cannot do without, and never again on a rerun."""
    if world.main:
        for store in stores:
            store.write_lexical_index()


def _open_or_create(path: Path, manifest: dict, index) -> GradientStore:
    if not (path / "manifest.json").exists():
        return GradientStore.create(path, manifest, index)
    store = GradientStore.open(path)
    earlier = {"response": "full", "model_dtype": "float32"}  # settings added since, as older stores hold them
    # finish() adds the counts
    differ = [k for k in manifest if k != "counts" and store.manifest.get(k, earlier.get(k)) != manifest[k]]
    if differ:
        raise StoreMismatchError(
            f"{path} holds a different build (differs in {', '.join(differ)}); "
            "choose another --output or delete it to rebuild"
        )
    return store


def _report_skips(manifest: dict, store: Path) -> None:
    print_skips("build", manifest["bad_records"], manifest["counts"]["no_label_tokens"],
                f"{store}/manifest.json; they get no score")
