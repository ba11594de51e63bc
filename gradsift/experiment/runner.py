"""``gradsift experiment CONFIG --output DIR``: does a selection help? For every target, method, fraction
and seed: select, train on the selection, evaluate on the target's held-out test set.

It composes the stages' Python API and shares what can be shared: one warmup, one gradient store per
dataset and build setting, one selection per (method, fraction) for all targets at once (and per seed
for seeded methods), and one training run per distinct (model, selected records, settings, seed), so a random
or full selection trains once whatever the number of targets. Every stage skips what is finished, so
a re-run resumes the grid; results are rewritten after every cell. The config file: ``experiment.config``.
"""

from __future__ import annotations

import csv
import hashlib
import json
from dataclasses import asdict
from pathlib import Path

import numpy as np
from tqdm.auto import tqdm

from gradsift.config import (
    BuildConfig,
    EvaluateConfig,
    SelectConfig,
    TrainConfig,
    WarmupConfig,
    stage_config,
)
from gradsift.evaluation.evaluate import evaluate
from gradsift.experiment.config import ExperimentConfig, MethodSpec, TargetSpec
from gradsift.experiment.results import write_results
from gradsift.features.build import PROJECTION_SETTINGS, build_together
from gradsift.selection.methods import METHODS, Pool, Target
from gradsift.selection.scoring import relevance_auc
from gradsift.selection.select import balances, load_inputs, make_method, run_selection
from gradsift.training.train import train
from gradsift.training.warmup import warmup
from gradsift.utils.files import atomic_write_bytes, atomic_write_json, read_json, slug
from gradsift.utils.locks import folder_lock


def _key(*parts) -> str:
    return hashlib.blake2b(json.dumps(parts, sort_keys=True, default=str).encode(), digest_size=8).hexdigest()


class Experiment:
    """One experiment folder: the stage folders under it and the way cells reuse them."""

    def __init__(self, config: ExperimentConfig, output: Path):
        self.config, self.out = config, Path(output).resolve()
        self.relevance = {k: set(v) for k, v in read_json(config.relevance).items()} if config.relevance else {}
        self._stores_built = False

    # -- selection -------------------------------------------------------------------------------
    def _store_dirs(self, spec: MethodSpec) -> tuple[Path, dict[str, Path]]:
        settings = {**self.config.build, **spec.build}
        key = _key(settings, self._warmup(spec)) if spec.warmup else _key(settings)  # the grid's run: as before
        folder = self.out / "stores" / f"{settings.get('projection', 'sparse')}-{settings.get('dim', 8192)}-{key}"
        targets = folder / (f"targets-{_key(spec.target_build)}" if spec.target_build else "targets")
        return folder / "pool", {t.name: targets / t.name for t in self.config.targets}

    def _run(self, spec: MethodSpec) -> Path:
        """The warmup run of a method: the grid's, or its own where it overrides warmup settings (done at
        the first need; a finished one is returned as it is)."""
        settings = self._warmup(spec)
        run = self.out / (f"run-{_key(settings)}" if spec.warmup else "run")
        warmup(stage_config(WarmupConfig, f"methods.{spec.label}.warmup" if spec.warmup else "warmup",
                            {"train": self.config.pool, **settings}, model=self.config.model, output=run))
        return run

    def _warmup(self, spec: MethodSpec) -> dict:
        return {**self.config.warmup, **spec.warmup}

    def _stores(self, spec: MethodSpec) -> tuple[Path, dict[str, Path]]:
        """The warmup run, then the pool and target stores of a less method's build settings. Every less
        method's stores are built at the first need, those differing only in projection from one
        gradient pass (``build_together``)."""
        if self._stores_built:  # each build call loads the model and tokenizes the pool, even when complete
            return self._store_dirs(spec)
        c = self.config
        groups: dict[str, list[BuildConfig]] = {}
        for m in (m for m in c.methods if METHODS[m.method].reads == "stores"):
            run = self._run(m)
            settings = {**c.build, **m.build}
            pool, targets = self._store_dirs(m)
            jobs = [stage_config(BuildConfig, f"{m.label}.build", settings, run=run, data=c.pool, output=pool)]
            jobs += [stage_config(BuildConfig, f"{m.label}.build", {**settings, **m.target_build, "gradient": "sgd"},
                                  run=run, data=t.fewshot, output=targets[t.name]) for t in c.targets]
            for job in jobs:
                shared = {k: v for k, v in asdict(job).items() if k not in PROJECTION_SETTINGS}
                group = groups.setdefault(_key(shared), [])
                if all(Path(g.output) != Path(job.output) for g in group):
                    group.append(job)
        for group in groups.values():
            build_together(group)
        self._stores_built = True
        return self._store_dirs(spec)

    def selections(self, spec: MethodSpec, fraction: float, seed: int) -> dict[str, Path]:
        """Each target's selection folder for this method, fraction and seed; selected if not already."""
        c = self.config
        cls = METHODS[spec.method]
        folder = self.out / "selections" / spec.label
        folder = folder if cls.selects_all else folder / f"{fraction:g}"
        folder = folder / f"seed-{seed}" if cls.seeded else folder
        paths = {t.name: folder / t.name for t in c.targets}
        if all((p / "summary.json").exists() for p in paths.values()):
            return paths
        values = {**c.select, **spec.select, "method": spec.method, "fraction": fraction, "seed": seed}
        if cls.reads_model:
            values.setdefault("model", c.model)
        if cls.reads == "stores":
            pool_store, target_stores = self._stores(spec)
            values |= {"train_store": pool_store, "target_store": [target_stores[t.name] for t in c.targets]}
        elif cls.reads_run:  # a run's checkpoints read directly (exact)
            values["run"] = self._run(spec)
        config = stage_config(SelectConfig, f"{spec.label}.select", values, output=folder)
        method = make_method(config, self.relevance if cls.reads_labels else None)
        if cls.reads == "stores":
            pool, targets = load_inputs(config)
        else:  # records files, tokenized where the method takes gradients
            encoder = cls.encoder(config)
            pool = Pool.from_files(c.pool, config.skip_bad_records, encoder)
            targets = [Target.from_files(t.name, t.fewshot, config.skip_bad_records, encoder) for t in c.targets]
        run_selection(method, pool, targets, [paths[t.name] for t in targets], config.fraction, config.count,
                      config.dedup, balances(config))
        return paths

    # -- training and evaluation -----------------------------------------------------------------
    def trained(self, model: str, selection: Path, seed: int, settings: dict) -> Path:
        """The training run of ``model`` on a selection's records; one per distinct (model, records,
        settings, seed), shared by every cell that selected the same records."""
        # sorted: training does not depend on record order, so selections of the same records share one run
        lines = (selection / "selected.jsonl").read_bytes().rstrip(b"\n").split(b"\n")
        records = b"".join(line + b"\n" for line in sorted(lines))
        key = _key(model, hashlib.sha256(records).hexdigest(), settings, seed)
        folder = self.out / "train" / f"{slug(Path(model).name)}-{key}"
        data = self.out / "train" / f"{folder.name}.jsonl"
        if not data.exists():
            atomic_write_bytes(data, records)
        train(stage_config(TrainConfig, "train", {**settings, "seed": seed}, model=model, data=[data], output=folder))
        return folder

    def evaluated(self, target: TargetSpec, model: str, trained: Path | None, full: bool = False) -> tuple[Path, dict]:
        """The evaluation on a target's test set of ``model``, plain or with a trained adapter (with
        ``full``, the trained folder is the model)."""
        settings = {"max_length": self.config.train.get("max_length", 1024), **self.config.evaluate, **target.evaluate}
        name = trained.name if trained is not None else f"base-{slug(Path(model).name)}"
        folder = self.out / "eval" / target.name / f"{name}-{_key(settings, [str(p) for p in target.test])[:8]}"
        if (folder / "summary.json").exists():
            return folder, read_json(folder / "summary.json")
        model, adapter = (str(trained), None) if full else (model, trained)
        config = stage_config(EvaluateConfig, "evaluate", settings, model=model, adapter=adapter, data=target.test,
                              output=folder)
        return folder, evaluate(config)

    def selection_stats(self, target: str, selection: Path) -> dict:
        """Precision and recall of the selected rows, the AUC of the relevant rows' scores (how high the
        method ranks them overall, not only inside the cut), and the selection's median length over the
        pool's (a method may win by picking short records)."""
        with open(selection / "scores.csv", newline="") as f:
            rows = [row for row in csv.DictReader(f) if row["score"] != ""]
        picked = [row for row in rows if row["selected"] == "1"]
        length = float(np.median([int(r["chars"]) for r in picked]) / np.median([int(r["chars"]) for r in rows]))
        relevant = self.relevance.get(target)
        if not relevant:
            return {"precision": None, "recall": None, "auc": None, "length": length}
        hits = len({row["id"] for row in picked} & relevant)
        labels = np.array([row["id"] in relevant for row in rows])
        auc = relevance_auc(np.array([float(row["score"]) for row in rows]), labels) if 0 < labels.sum() < len(rows) else None
        return {"precision": hits / len(picked), "recall": hits / len(relevant), "auc": auc, "length": length}

    # -- the grid --------------------------------------------------------------------------------
    def cells(self) -> list[dict]:
        """Every (model, method, fraction, seed) job in the order it runs: seed by seed, so the first
        complete seed gives a whole table early. A job covers all targets."""
        c = self.config
        models = [(c.model, {}, [m.label for m in c.methods])] + [(t.model, t.train, t.methods) for t in c.transfer]
        jobs = [{"model": m, "method": "base", "seed": None, "fraction": 0.0, "train": {}} for m, _, _ in models]
        for seed in c.seeds:
            for model, train_overrides, labels in models:
                for spec in c.methods:
                    if spec.label not in labels or (spec.seeds is not None and seed not in spec.seeds):
                        continue
                    for fraction in ([1.0] if METHODS[spec.method].selects_all else c.fractions):
                        jobs.append({"model": model, "method": spec.label, "seed": seed, "fraction": fraction,
                                     "train": {**c.train, **train_overrides, **c.budget}})
        return jobs

    def run(self) -> list[dict]:
        c = self.config
        self.out.mkdir(parents=True, exist_ok=True)
        atomic_write_json(self.out / "experiment.json", json.loads(json.dumps(asdict(c), default=str)))
        specs = {m.label: m for m in c.methods}
        rows: list[dict] = []
        jobs = self.cells()
        bar = tqdm(jobs, desc="experiment", unit="cell", position=0)
        for job in bar:
            bar.set_postfix_str(f"{job['method']} {Path(job['model']).name} seed {job['seed']}")
            if job["method"] == "base":
                for t in c.targets:
                    folder, summary = self.evaluated(t, job["model"], None)
                    rows.append(self._row(t.name, "base", job, None, folder, summary))
            else:
                spec = specs[job["method"]]
                chosen = self.selections(spec, job["fraction"], job["seed"])
                for t in c.targets:
                    trained = self.trained(job["model"], chosen[t.name], job["seed"], job["train"])
                    folder, summary = self.evaluated(t, job["model"], trained, job["train"].get("full", False))
                    rows.append(self._row(t.name, spec.label, job, chosen[t.name], folder, summary))
            write_results(self.out, rows)
        return rows

    def _row(self, target: str, label: str, job: dict, selection: Path | None, folder: Path, summary: dict) -> dict:
        stats = dict.fromkeys(("precision", "recall", "auc", "length"))
        selected = 0
        if selection is not None:
            stats = self.selection_stats(target, selection)
            selected = read_json(selection / "summary.json")["selected"]
        rel = lambda p: str(p.relative_to(self.out)) if p is not None else ""  # noqa: E731
        return {"target": target, "method": label, "model": job["model"], "fraction": job["fraction"],
                "seed": "" if job["seed"] is None else job["seed"], "selected": selected,
                "loss": summary["loss"], "accuracy": summary["accuracy"], **stats, "selection": rel(selection),
                "evaluation": rel(folder)}


def run_experiment(config: ExperimentConfig, output: Path) -> list[dict]:
    with folder_lock(output):
        return Experiment(config, output).run()
