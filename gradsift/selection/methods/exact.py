"""Exact LESS: the scores LESS gives with no projection at all, for targets known in advance.

At each checkpoint c of the warmup run, every target example's plain gradient g_j^c is normalised and
held in memory as the columns the aggregation needs: each subtask's mean unit gradient when only
subtask means are used (subtask-mean-max, round-robin), else every example's. One pass over the pool
then streams each pool example's Adam feature f_i^c, parameter by parameter, into its dot product with
every column and its own squared norm (``build.chunk_features`` with a ``Cosines`` reducer): neither
the pool's features nor one example's whole feature is ever held, so memory does not grow with the
pool. cos = f_i^c·g_j^c / |f_i^c|, s_ij = sum_c w_c cos: LESS with an identity projection.

The cosines are committed chunk by chunk to a work folder (``gradsift select``: OUTPUT/exact/), so an
interrupted pass resumes from its last committed chunk, and a rerun with another --count, --fraction
or per-example aggregation reads them again for free::

    WORK/
      fingerprint.json   what the cosines come from (run, files, settings, columns); checked on resume
      progress.json      pool rows committed per checkpoint (rows are committed in order)
      <checkpoint>.npy   (rows, columns + 1) float32: the cosine with each column, then the row's norm
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import ClassVar

import numpy as np
import torch
from tqdm.auto import tqdm

from gradsift.config import AdamForm, ModelDtype, SelectConfig
from gradsift.data.chat import ChatEncoder
from gradsift.features.adam import normalize_rows
from gradsift.features.engine import chunk_features, features_dtype, load_features_model, open_run, use_checkpoint
from gradsift.features.gradients import PerExampleGradients
from gradsift.selection.methods.base import Pool, SimilarityMethod, Target, register
from gradsift.selection.scoring import SUBTASK_MEAN_AGGREGATES, checkpoint_weights
from gradsift.training.run import Run
from gradsift.utils.errors import ConfigError
from gradsift.utils.faults import stop_point
from gradsift.utils.files import atomic_write_json, read_json
from gradsift.utils.models import load_tokenizer, pick_device

WORK_FORMAT = 1


def run_encoder(run: Path | None, max_length: int) -> ChatEncoder:
    """How the exact pass tokenizes: the run's tokenizer at ``max_length`` (what the pool's and the
    targets' label counts must be taken with, ``Pool.from_files(..., encoder=...)``)."""
    if run is None:
        raise ConfigError("--method exact needs the warmup run: --run RUN")
    return ChatEncoder(load_tokenizer(Run.open(run).model.name), max_length)


# -- reducers of the gradient pass (``build.RowReducer``) ---------------------------------------------
@dataclass
class UnitGradients:
    """Each row's whole feature vector (all parameters), normalised: what the target columns are made of."""

    offsets: list[int]
    numels: list[int]

    @property
    def dim(self) -> int:
        return sum(self.numels)

    def accumulate(self, out: torch.Tensor, param: int, grad: torch.Tensor) -> None:
        out[:, self.offsets[param]: self.offsets[param] + self.numels[param]] = grad

    def finish(self, out: torch.Tensor) -> torch.Tensor:
        return normalize_rows(out)


@dataclass
class Cosines:
    """Each row's cosine with every column, then its norm: the dot products and the squared norm add up
    parameter by parameter as the features stream, so a row's feature is never held whole."""

    columns: torch.Tensor  # (n_columns, n_params), on the pass's device
    offsets: list[int]
    numels: list[int]

    @property
    def dim(self) -> int:
        return self.columns.shape[0] + 1  # the dot products, then the squared norm

    def accumulate(self, out: torch.Tensor, param: int, grad: torch.Tensor) -> None:
        span = self.columns[:, self.offsets[param]: self.offsets[param] + self.numels[param]]
        out[:, :-1] += grad @ span.T
        out[:, -1] += torch.einsum("bn,bn->b", grad, grad)

    def finish(self, out: torch.Tensor) -> torch.Tensor:
        norm = out[:, -1:].sqrt()
        # a zero row has cosine 0 with everything, never NaN (as ``normalize_rows`` leaves it zero)
        cosine = torch.where(norm > 0, out[:, :-1] / norm.clamp_min(torch.finfo(out.dtype).tiny), 0.0)
        return torch.cat([cosine, norm], dim=1)


def target_columns(refs, groups: list[int], n_columns: int, encoder: ChatEncoder, grads: PerExampleGradients,
                   batch_size: int, device) -> torch.Tensor:
    """(n_columns, n_params): column k is the mean unit plain gradient of the target examples of group k.
    Examples are taken a batch at a time: only the columns and one batch's gradients are held."""
    unit = UnitGradients(grads.offsets, grads.numels)
    sums = torch.zeros(n_columns, grads.size, device=device)
    for start in range(0, len(refs), batch_size):
        (rows,) = chunk_features(refs[start: start + batch_size], encoder, grads, [unit], None, "corrected",
                                 batch_size=batch_size, device=device)
        members = torch.tensor(groups[start: start + batch_size], device=device)
        sums.index_add_(0, members, torch.from_numpy(rows).to(device))
    counts = torch.bincount(torch.tensor(groups), minlength=n_columns).to(device)
    return sums / counts[:, None]


# -- the work folder ---------------------------------------------------------------------------------
class CosineWork:
    """The committed cosines of one exact pass (the layout in the module docstring)."""

    def __init__(self, path: Path):
        self.path = Path(path)

    @classmethod
    def open(cls, path: Path, fingerprint: dict, rows: int, width: int, checkpoints: list[str]) -> CosineWork:
        """The work folder for ``fingerprint``, laid out if new; one holding another pass is refused."""
        work = cls(path)
        fingerprint = json.loads(json.dumps(fingerprint))  # as it reads back from disk
        if (work.path / "fingerprint.json").is_file():
            held = {"model_dtype": "float32", **read_json(work.path / "fingerprint.json")}  # before the setting
            differ = [k for k in dict.fromkeys([*fingerprint, *held]) if held.get(k) != fingerprint.get(k)]
            if differ:
                raise ConfigError(f"{work.path} holds the cosines of another exact pass (differs in "
                                  f"{', '.join(differ)}); choose another --output or delete {work.path}")
            return work
        work.path.mkdir(parents=True, exist_ok=True)
        for name in checkpoints:
            np.lib.format.open_memmap(work._file(name), mode="w+", dtype=np.float32, shape=(rows, width)).flush()
        atomic_write_json(work.path / "progress.json", {name: 0 for name in checkpoints})
        atomic_write_json(work.path / "fingerprint.json", fingerprint)  # last: a folder without it is redone
        return work

    def _file(self, checkpoint: str) -> Path:
        return self.path / f"{checkpoint}.npy"

    def committed(self) -> dict[str, int]:
        return read_json(self.path / "progress.json")

    def cosines(self, checkpoint: str) -> np.ndarray:
        return np.load(self._file(checkpoint), mmap_mode="r")

    def write_rows(self, checkpoint: str, start: int, rows: np.ndarray) -> None:
        """Commit rows [start, start + len(rows)) of a checkpoint: the progress file is rewritten only once
        the rows are on disk, so it never claims rows that are not."""
        progress = self.committed()
        if start != progress[checkpoint]:
            raise ConfigError(f"{self.path}: rows of {checkpoint} must be committed in order "
                              f"(next is {progress[checkpoint]}, got {start})")
        cosines = np.load(self._file(checkpoint), mmap_mode="r+")
        cosines[start: start + len(rows)] = rows
        cosines.flush()
        del cosines
        stop_point("exact:rows-written")  # on disk, not yet committed
        progress[checkpoint] = start + len(rows)
        atomic_write_json(self.path / "progress.json", progress)
        stop_point("exact:rows-committed")


# -- the method --------------------------------------------------------------------------------------
@register
@dataclass
class Exact(SimilarityMethod):
    name: ClassVar[str] = "exact"
    reads_run: ClassVar[bool] = True
    run: Path | None = None  # the warmup run
    work: Path | None = None  # where the cosines are committed (``gradsift select``: OUTPUT/exact)
    adam_form: AdamForm = "corrected"
    max_length: int = 1024  # as the pool and targets were tokenized (``run_encoder``)
    batch_size: int = 16
    chunk_size: int = 256  # pool rows committed at a time
    device: str = "auto"
    model_dtype: ModelDtype = "auto"  # the model's weights in the gradient pass (the feature math is float32)

    def _by_subtask_mean(self) -> bool:
        """A cosine is linear in the unit target gradient: the mean cosine of f with a subtask's examples
        is f·(their mean unit gradient) / |f|, one column per subtask (as ``Less`` does with its rows)."""
        return self.aggregate in SUBTASK_MEAN_AGGREGATES

    def columns(self, pool: Pool, target: Target) -> list[str]:
        return sorted(set(target.subtasks)) if self._by_subtask_mean() else target.subtasks

    def _column_groups(self, target: Target) -> tuple[list[int], list[str]]:
        """Each target example's column, and what names the columns in the fingerprint."""
        if self._by_subtask_mean():
            names = self.columns(None, target)
            return [names.index(s) for s in target.subtasks], [f"subtask {s}" for s in names]
        return list(range(len(target.refs))), [f"{r.file}:{r.line}" for r in target.refs]

    def _model_dtype(self) -> str:
        """The dtype the gradient pass runs the model in, as build's manifest names it."""
        return str(features_dtype(pick_device(self.device), self.model_dtype)).removeprefix("torch.")

    def _run(self) -> tuple[Run, np.ndarray]:
        if self.run is None or self.work is None:
            raise ConfigError("exact needs the warmup run (--run RUN) and a work folder")
        run = open_run(self.run, adam=True)
        try:
            weights = checkpoint_weights([c.lr for c in run.checkpoints])
        except ValueError:
            raise ConfigError(f"warmup run {run.path}: every checkpoint trained at learning rate 0, so none can "
                              "weigh the scores; warm up again with a positive --learning-rate") from None
        return run, weights

    def similarities(self, pool: Pool, targets: list[Target]) -> Iterator[tuple[int, list[torch.Tensor]]]:
        run, weights = self._run()
        if not pool.refs.column("tokens").any() or any(r.status != "ok" for t in targets for r in t.refs):
            raise ConfigError("exact needs pool and targets tokenized with run_encoder (Pool.from_files and "
                              "Target.from_files with encoder=...)")
        groups, names = zip(*(self._column_groups(t) for t in targets))
        widths = [len(n) for n in names]
        bounds = np.cumsum([0, *widths]).tolist()
        checkpoints = [c.path.name for c in run.checkpoints]
        fingerprint = {
            "format": WORK_FORMAT, "run": run.id, "checkpoints": checkpoints, "pool": pool.file_sha256,
            "rows": len(pool.refs), "targets": {t.name: t.file_sha256 for t in targets},
            "adam_form": self.adam_form, "max_length": self.max_length, "model_dtype": self._model_dtype(),
            "columns": {t.name: n for t, n in zip(targets, names)},
        }
        work = CosineWork.open(Path(self.work), fingerprint, len(pool.refs), bounds[-1] + 1, checkpoints)
        all_groups = [bounds[k] + g for k, gs in enumerate(groups) for g in gs]
        self._pass(run, pool, [r for t in targets for r in t.refs], all_groups, bounds[-1], work)

        cosines = [work.cosines(c) for c in checkpoints]
        for start in range(0, len(pool.refs), self.chunk_rows):
            total = torch.zeros(min(self.chunk_rows, len(pool.refs) - start), bounds[-1])
            for cos, w in zip(cosines, weights):
                total += float(w) * torch.from_numpy(np.array(cos[start: start + self.chunk_rows, :-1]))
            yield start, [total[:, a:b] for a, b in zip(bounds, bounds[1:])]

    def _pass(self, run: Run, pool: Pool, target_refs: list, groups: list[int], n_columns: int,
              work: CosineWork) -> None:
        """The pool's cosines at every checkpoint, from the first row not yet committed."""
        rows, done = len(pool.refs), work.committed()
        if all(done[c.path.name] == rows for c in run.checkpoints):
            return
        device = pick_device(self.device)
        model, tokenizer = load_features_model(run, device, self.model_dtype)
        encoder = ChatEncoder(tokenizer, self.max_length)  # the tokenizer run_encoder loads, as the model's
        bar = tqdm(total=rows * len(run.checkpoints), initial=sum(done.values()), unit="ex", desc="exact",
                   smoothing=0.1)
        with PerExampleGradients(model) as grads:
            for checkpoint in run.checkpoints:
                name = checkpoint.path.name
                if done[name] == rows:
                    continue
                adam = use_checkpoint(model, checkpoint, grads, device, adam=True)
                columns = target_columns(target_refs, groups, n_columns, encoder, grads, self.batch_size, device)
                reducer = Cosines(columns, grads.offsets, grads.numels)
                for start in range(done[name], rows, self.chunk_size):
                    refs = pool.refs[start: start + self.chunk_size]
                    (cosines,) = chunk_features(refs, encoder, grads, [reducer], adam, self.adam_form,
                                                batch_size=self.batch_size, device=device)
                    work.write_rows(name, start, cosines)
                    bar.update(len(refs))
                del columns, reducer, adam
        bar.close()

    def settings(self) -> dict:
        run, weights = self._run()
        return {**super().settings(), "run": str(run.path), "adam_form": self.adam_form, "max_length": self.max_length,
                "model_dtype": self._model_dtype(),
                "checkpoint_weights": {c.path.name: float(w) for c, w in zip(run.checkpoints, weights)}}

    @classmethod
    def from_config(cls, config: SelectConfig, labels: dict[str, set[str]] | None = None) -> Exact:
        return cls(**cls.similarity_settings(config), run=config.run, work=Path(config.output) / "exact",
                   adam_form=config.adam_form, max_length=cls.token_limit(config), batch_size=config.batch_size,
                   chunk_size=config.chunk_size, device=config.device, model_dtype=config.model_dtype)

    @classmethod
    def token_limit(cls, config: SelectConfig) -> int:
        """--max-length, else the run's own limit (its stores were tokenized with it)."""
        if config.max_length is None and config.run is not None:
            return Run.open(config.run).config["max_length"]
        return super().token_limit(config)

    @classmethod
    def encoder(cls, config: SelectConfig) -> ChatEncoder:
        """Rows are tokenized as the gradient pass will, and those without label tokens set aside."""
        return run_encoder(config.run, cls.token_limit(config))
