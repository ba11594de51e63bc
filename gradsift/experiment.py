"""``gradsift experiment CONFIG --output DIR``: does a selection help? For every target, method, fraction
and seed: select, train on the selection, evaluate on the target's held-out test set.

It composes the stages' Python API and shares what can be shared: one warmup, one gradient store per
dataset and build setting, one selection per (method, fraction) for all targets at once (and per seed
for random), and one training run per distinct (model, selected records, settings, seed), so a random
or full selection trains once whatever the number of targets. Every stage skips what is finished, so
a re-run resumes the grid; results are rewritten after every cell.

Config (YAML; paths relative to the file, globs allowed)::

    model: smollm2-135m                  # the selector model: warmup, stores, rds, and the model trained
    pool: [benchmark/pool/*.jsonl]
    targets:
      boolean: {fewshot: [benchmark/targets/boolean/fewshot.jsonl], test: [benchmark/targets/boolean/test.jsonl],
                evaluate: {max_new_tokens: 8}}     # EvaluateConfig fields for this target only
    relevance: benchmark/relevance.json  # optional {target: [relevant pool ids]}: precision, recall, AUC
    methods: [fusion, less, {method: less, label: less-d1024, build: {dim: 1024}}, bm25, rds, random, exact,
              {method: less, label: less-answer, target_build: {response: answer}},  # target stores only
              {method: less, label: less-r32, warmup: {lora_r: 32}},  # its own warmup run (run-<key>/)
              {method: full, seeds: [0]},      # seeds: this method's subset of the grid's seeds
              oracle]                          # the records `relevance` labels (needs it): a ceiling
    fractions: [0.05]
    seeds: [0, 1, 2]
    warmup: {fraction: 0.05, epochs: 2, lora_r: 8}     # WarmupConfig fields
    build: {batch_size: 16}                            # BuildConfig fields shared by every less method
    select: {aggregate: subtask-mean-max}              # SelectConfig fields shared by every method
    train: {epochs: 2, lora_r: 8, learning_rate: 2e-4} # TrainConfig fields
    evaluate: {max_new_tokens: 16}                     # EvaluateConfig fields
    transfer:                                          # train another model on some methods' selections
      - {model: gemma3-270m, methods: [less, random], train: {micro_batch_size: 4}}

DIR gets ``results.csv`` (one row per cell: loss, accuracy, precision, recall, AUC, and ``length``, the
selection's median length over the pool's), ``results.md`` (mean ± spread over seeds, best loss per
target and model in bold), ``results.png`` (bar chart), ``experiment.json`` (the config it ran), and
the stages' folders: ``run/`` (and ``run-<key>/`` per warmup override), ``stores/``, ``selections/``, ``train/``, ``eval/``.
"""

from __future__ import annotations

import csv
import dataclasses
import glob
import hashlib
import io
import json
import math
import typing
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np
from tqdm.auto import tqdm

from gradsift.config import (
    BuildConfig,
    EvaluateConfig,
    SelectConfig,
    TrainConfig,
    WarmupConfig,
    check_stage_values,
    has_type,
    read_yaml_mapping,
    stage_config,
    type_name,
)
from gradsift.evaluation.evaluate import evaluate
from gradsift.features.build import PROJECTION_SETTINGS, build_together
from gradsift.selection.methods import Oracle, Pool, Target
from gradsift.selection.scoring import relevance_auc
from gradsift.selection.select import load_inputs, make_method, records_encoder, run_selection
from gradsift.training.train import train
from gradsift.training.warmup import warmup
from gradsift.utils.errors import ConfigError
from gradsift.utils.files import atomic_write_bytes, atomic_write_json, read_json
from gradsift.utils.locks import folder_lock

RESULT_COLUMNS = ["target", "method", "model", "fraction", "seed", "selected", "loss", "accuracy", "precision",
                  "recall", "auc", "length", "selection", "evaluation"]
SEEDLESS = ("fusion", "less", "exact", "bm25", "rds", "full", "oracle")  # selections that do not depend on the seed
STORE_METHODS = ("fusion", "less")  # methods that read gradient stores
WARMUP_METHODS = STORE_METHODS + ("exact",)  # methods that read a warmup run


@dataclass
class MethodSpec:
    method: str
    label: str
    warmup: dict = field(default_factory=dict)  # less, fusion, exact: WarmupConfig fields for this method's own run
    build: dict = field(default_factory=dict)  # less, fusion: BuildConfig fields (dim, projection, ...)
    target_build: dict = field(default_factory=dict)  # BuildConfig fields for the target stores only (response)
    select: dict = field(default_factory=dict)  # SelectConfig fields for this method only
    seeds: list[int] | None = None  # a subset of the grid's seeds (full-pool training is costly); None: all


@dataclass
class TargetSpec:
    name: str
    fewshot: list[Path]
    test: list[Path]
    evaluate: dict = field(default_factory=dict)  # EvaluateConfig fields for this target (e.g. max_new_tokens)


@dataclass
class TransferSpec:
    model: str
    methods: list[str]  # method labels whose selections the model is trained on
    train: dict = field(default_factory=dict)


@dataclass
class ExperimentConfig:
    model: str
    pool: list[Path]
    targets: list[TargetSpec]
    methods: list[MethodSpec]
    fractions: list[float] = field(default_factory=lambda: [0.05])
    seeds: list[int] = field(default_factory=lambda: [0])
    relevance: Path | None = None
    warmup: dict = field(default_factory=dict)
    build: dict = field(default_factory=dict)
    select: dict = field(default_factory=dict)
    train: dict = field(default_factory=dict)
    evaluate: dict = field(default_factory=dict)
    transfer: list[TransferSpec] = field(default_factory=list)


def _files(base: Path, patterns, what: str) -> list[Path]:
    if isinstance(patterns, str):
        patterns = [patterns]
    if not isinstance(patterns, list) or not patterns:
        raise ConfigError(f"{what}: expected a list of files")
    out = []
    for pattern in patterns:
        matches = sorted(glob.glob(str(base / pattern))) if glob.has_magic(str(pattern)) else [str(base / pattern)]
        if not matches:
            raise ConfigError(f"{what}: {pattern!r} matches no file")
        out += [Path(m) for m in matches]
    return out


def load_experiment(path: Path) -> ExperimentConfig:
    """Read an experiment YAML; relative paths resolve against its folder; unknown keys are errors."""
    path = Path(path).resolve()  # runs and stores record absolute paths: resuming works from any folder
    raw = read_yaml_mapping(path)
    known = {f.name for f in ExperimentConfig.__dataclass_fields__.values()}
    if set(raw) - known:
        raise ConfigError(f"{path}: unknown keys {sorted(set(raw) - known)}; known: {sorted(known)}")
    base = path.parent
    hints = typing.get_type_hints(ExperimentConfig)
    for name in ("model", "fractions", "seeds", "relevance", "warmup", "build", "select", "train", "evaluate"):
        if name in raw and not has_type(raw[name], hints[name]):
            raise ConfigError(f"{path}: {name}: expected {type_name(hints[name])}, got {raw[name]!r}")
    try:
        targets = []
        for name, spec in (raw.get("targets") or {}).items():
            if set(spec) - {"fewshot", "test", "evaluate"}:
                raise ConfigError(f"targets.{name}: unknown keys {sorted(set(spec) - {'fewshot', 'test', 'evaluate'})}")
            targets.append(TargetSpec(name, _files(base, spec["fewshot"], f"targets.{name}.fewshot"),
                                      _files(base, spec["test"], f"targets.{name}.test"), spec.get("evaluate") or {}))
        methods = []
        for spec in raw.get("methods") or []:
            spec = {"method": spec} if isinstance(spec, str) else dict(spec)
            spec.setdefault("label", spec["method"])
            methods.append(MethodSpec(**_known_keys(MethodSpec, spec, f"methods.{spec['label']}")))
        transfer = [TransferSpec(**_known_keys(TransferSpec, t, "transfer")) for t in raw.get("transfer") or []]
        model = raw["model"]
        config = ExperimentConfig(**{
            **raw, "model": str(base / model) if (base / model).exists() else model,
            "pool": _files(base, raw["pool"], "pool"), "targets": targets, "methods": methods, "transfer": transfer,
            "relevance": base / raw["relevance"] if raw.get("relevance") else None,
        })
    except (KeyError, TypeError) as e:
        raise ConfigError(f"{path}: {type(e).__name__}: {e}") from None
    _check(config, path)
    return config


def _known_keys(cls, spec: dict, where: str) -> dict:
    known = {f.name for f in dataclasses.fields(cls)}
    if set(spec) - known:
        raise ConfigError(f"{where}: unknown keys {sorted(set(spec) - known)}; known: {sorted(known)}")
    return spec


def _check(config: ExperimentConfig, path: Path) -> None:
    labels = [m.label for m in config.methods]
    if not config.targets or not config.methods:
        raise ConfigError(f"{path}: needs at least one target and one method")
    if len(set(labels)) != len(labels):
        raise ConfigError(f"{path}: method labels must be distinct, got {labels} (give each a label)")
    if "base" in labels:
        raise ConfigError(f"{path}: 'base' is the untrained model's row; choose another label")
    for m in config.methods:
        if m.method not in SEEDLESS + ("random",):
            raise ConfigError(f"{path}: unknown method {m.method!r}")
        if m.method == "oracle" and config.relevance is None:
            raise ConfigError(f"{path}: method {m.label!r} (oracle) selects the labelled records: it needs 'relevance'")
        if m.warmup and m.method not in WARMUP_METHODS:
            raise ConfigError(f"{path}: method {m.label!r} ({m.method}) takes no warmup: 'warmup' is for "
                              f"{', '.join(WARMUP_METHODS)}")
        if m.seeds is not None and not set(m.seeds) <= set(config.seeds):
            raise ConfigError(f"{path}: method {m.label!r} seeds {m.seeds} are not all among the grid's seeds "
                              f"{config.seeds}")
    # every stage's settings checked now, not when the grid reaches that stage hours later
    stages = [(WarmupConfig, "warmup", config.warmup), (BuildConfig, "build", config.build),
              (SelectConfig, "select", config.select), (TrainConfig, "train", config.train),
              (EvaluateConfig, "evaluate", config.evaluate)]
    stages += [(WarmupConfig, f"methods.{m.label}.warmup", m.warmup) for m in config.methods]
    stages += [(BuildConfig, f"methods.{m.label}.build", m.build) for m in config.methods]
    stages += [(BuildConfig, f"methods.{m.label}.target_build", m.target_build) for m in config.methods]
    stages += [(SelectConfig, f"methods.{m.label}.select", m.select) for m in config.methods]
    stages += [(EvaluateConfig, f"targets.{t.name}.evaluate", t.evaluate) for t in config.targets]
    stages += [(TrainConfig, f"transfer.{t.model}.train", t.train) for t in config.transfer]
    for cls, stage, values in stages:
        check_stage_values(cls, f"{path}: {stage}", values)
    for t in config.transfer:
        unknown = set(t.methods) - set(labels)
        if unknown:
            raise ConfigError(f"{path}: transfer to {t.model} names methods not in the grid: {sorted(unknown)}")


def _key(*parts) -> str:
    return hashlib.blake2b(json.dumps(parts, sort_keys=True, default=str).encode(), digest_size=8).hexdigest()


def _slug(text: str) -> str:
    return "".join(c if c.isalnum() or c in "-_." else "-" for c in Path(text).name)


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
        for m in (m for m in c.methods if m.method in STORE_METHODS):
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
        folder = self.out / "selections" / spec.label
        folder = folder if spec.method == "full" else folder / f"{fraction:g}"
        folder = folder / f"seed-{seed}" if spec.method == "random" else folder
        paths = {t.name: folder / t.name for t in c.targets}
        if all((p / "summary.json").exists() for p in paths.values()):
            return paths
        if spec.method == "oracle":  # the answer key: no SelectConfig (no --method reads labels), records only
            pool = Pool.from_files(c.pool)
            targets = [Target.from_files(t.name, t.fewshot) for t in c.targets]
            run_selection(Oracle(self.relevance), pool, targets, [paths[t.name] for t in targets], fraction)
            return paths
        values = {**c.select, **spec.select, "method": spec.method, "fraction": fraction, "seed": seed}
        if spec.method == "rds":
            values.setdefault("model", c.model)
        if spec.method in STORE_METHODS:
            pool_store, target_stores = self._stores(spec)
            values |= {"train_store": pool_store, "target_store": [target_stores[t.name] for t in c.targets]}
        if spec.method == "exact":
            values["run"] = self._run(spec)
        config = stage_config(SelectConfig, f"{spec.label}.select", values, output=folder)
        method = make_method(config)
        if spec.method in STORE_METHODS:
            pool, targets = load_inputs(config)
        else:  # records files, tokenized for exact's gradients
            encoder = records_encoder(config)
            pool = Pool.from_files(c.pool, config.skip_bad_records, encoder)
            targets = [Target.from_files(t.name, t.fewshot, config.skip_bad_records, encoder) for t in c.targets]
        run_selection(method, pool, targets, [paths[t.name] for t in targets], config.fraction, config.count)
        return paths

    # -- training and evaluation -----------------------------------------------------------------
    def trained(self, model: str, selection: Path, seed: int, settings: dict) -> Path:
        """The training run of ``model`` on a selection's records; one per distinct (model, records,
        settings, seed), shared by every cell that selected the same records."""
        # sorted: training does not depend on record order, so selections of the same records share one run
        lines = (selection / "selected.jsonl").read_bytes().rstrip(b"\n").split(b"\n")
        records = b"".join(line + b"\n" for line in sorted(lines))
        key = _key(model, hashlib.sha256(records).hexdigest(), settings, seed)
        folder = self.out / "train" / f"{_slug(model)}-{key}"
        data = self.out / "train" / f"{folder.name}.jsonl"
        if not data.exists():
            atomic_write_bytes(data, records)
        train(stage_config(TrainConfig, "train", {**settings, "seed": seed}, model=model, data=[data], output=folder))
        return folder

    def evaluated(self, target: TargetSpec, model: str, trained: Path | None, full: bool = False) -> tuple[Path, dict]:
        """The evaluation on a target's test set of ``model``, plain or with a trained adapter (with
        ``full``, the trained folder is the model)."""
        settings = {"max_length": self.config.train.get("max_length", 1024), **self.config.evaluate, **target.evaluate}
        name = trained.name if trained is not None else f"base-{_slug(model)}"
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
                    for fraction in ([1.0] if spec.method == "full" else c.fractions):
                        jobs.append({"model": model, "method": spec.label, "seed": seed, "fraction": fraction,
                                     "train": {**c.train, **train_overrides}})
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


# -- results ------------------------------------------------------------------------------------
def _number(value) -> str:
    return "" if value is None or value == "" else f"{value:.6g}" if isinstance(value, float) else str(value)


def _mean_std(values: list[float]) -> tuple[float | None, float | None]:
    """Mean and sample std; std is 0 for one value, both None for none."""
    if not values:
        return None, None
    return float(np.mean(values)), float(np.std(values, ddof=1)) if len(values) > 1 else 0.0


def summarize(rows: list[dict]) -> list[dict]:
    """Mean and sample std over seeds of each (target, model, method, fraction), and ``delta``: the mean
    (and std) over seeds of its test loss minus the reference's at the same seed, the reference being
    the grid's first method (its first fraction) for that target and model. Training is seeded and
    orders examples by their content, so a seed's difference is the selections' alone (paired)."""
    groups: dict[tuple, list[dict]] = {}
    for r in rows:
        groups.setdefault((r["target"], r["model"], r["method"], float(r["fraction"])), []).append(r)
    references = {}
    for target, model, method, fraction in groups:
        if method != "base":
            references.setdefault((target, model), (target, model, method, fraction))
    out = []
    for (target, model, method, fraction), members in groups.items():
        entry = {"target": target, "model": model, "method": method, "fraction": fraction, "seeds": len(members),
                 "selected": members[0]["selected"]}
        for metric in ("loss", "accuracy", "precision", "recall", "auc", "length"):
            entry[metric], entry[f"{metric}_std"] = _mean_std([float(m[metric]) for m in members
                                                               if m[metric] not in (None, "")])
        reference = {r["seed"]: float(r["loss"]) for r in groups[references[target, model]]} \
            if method != "base" else {}
        entry["reference"] = references[target, model][2] if method != "base" else None
        entry["delta"], entry["delta_std"] = _mean_std([float(m["loss"]) - reference[m["seed"]] for m in members
                                                        if m["seed"] in reference])
        out.append(entry)
    return out


def results_matrix(stats: list[dict]) -> list[str]:
    """Every method against every target at a glance (``summarize``'s entries): mean test loss, its
    paired difference from the reference, precision, and the seeds behind them."""
    targets = list(dict.fromkeys(s["target"] for s in stats))
    cells = {(s["model"], s["method"], s["fraction"]): {} for s in stats}
    for s in stats:
        cells[s["model"], s["method"], s["fraction"]][s["target"]] = s
    several_models = len({model for model, _, _ in cells}) > 1
    several_fractions = len({f for _, m, f in cells if m not in ("base", "full")}) > 1
    lines = ["### Every target: test loss (paired difference from the first method), precision", "",
             "| method | seeds | " + " | ".join(targets) + " |", "|---|---|" + "---|" * len(targets)]
    for (model, method, fraction), by_target in cells.items():
        name = method + (f" {fraction:g}" if several_fractions and method not in ("base", "full") else "") \
            + (f" ({Path(model).name})" if several_models else "")
        row = []
        for target in targets:
            s = by_target.get(target)
            if s is None or s["loss"] is None:
                row.append("–")
                continue
            delta = "" if s["delta"] is None or s["method"] == s["reference"] else f" ({s['delta']:+.3f})"
            precision = "" if s["precision"] is None else f", P {s['precision']:.2f}"
            row.append(f"{s['loss']:.3f}{delta}{precision}")
        seeds = sorted({s["seeds"] for s in by_target.values()})
        lines.append(f"| {name} | {'/'.join(map(str, seeds))} | " + " | ".join(row) + " |")
    return lines + [""]


def results_markdown(rows: list[dict]) -> str:
    """Every method against every target in one table (``results_matrix``), then one table per target:
    mean ± std over seeds, the paired difference from the grid's first method (``summarize``); the
    lowest loss per (target, model) in bold."""
    stats = summarize(rows)
    lines = results_matrix(stats)
    for target in dict.fromkeys(s["target"] for s in stats):
        mine = [s for s in stats if s["target"] == target]
        best = {}
        for s in mine:
            if s["method"] != "base" and s["loss"] is not None:
                if s["model"] not in best or s["loss"] < best[s["model"]]:
                    best[s["model"]] = s["loss"]
        reference = next((s["reference"] for s in mine if s["reference"]), "the first method")
        lines += [f"### {target}", "",
                  "| model | method | fraction | selected | seeds | test loss | "
                  f"vs {reference}, paired | accuracy | precision | recall | AUC | length |",
                  "|---|---|---|---|---|---|---|---|---|---|---|---|"]
        for s in mine:
            cell = lambda m, d=3, sign="": "–" if s[m] is None else f"{s[m]:{sign}.{d}f} ± {s[m + '_std']:.{d}f}"  # noqa: E731
            loss = cell("loss")
            if s["loss"] is not None and best.get(s["model"]) == s["loss"] and s["method"] != "base":
                loss = f"**{loss}**"
            delta = "–" if s["method"] in ("base", s["reference"]) else cell("delta", sign="+")
            lines.append(f"| {Path(s['model']).name} | {s['method']} | {s['fraction']:g} | {s['selected']} | "
                         f"{s['seeds']} | {loss} | {delta} | {cell('accuracy')} | {cell('precision', 2)} | "
                         f"{cell('recall', 2)} | {cell('auc', 2)} | {cell('length', 2)} |")
        lines.append("")
    return "\n".join(lines)


def results_plot(rows: list[dict], path: Path) -> None:
    """Test loss per method (mean ± std over seeds), one panel per target; the untrained model as a line."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    stats = summarize(rows)
    targets = list(dict.fromkeys(s["target"] for s in stats))
    fig, axes = plt.subplots(1, len(targets), figsize=(4.2 * len(targets), 3.8), squeeze=False)
    for ax, target in zip(axes[0], targets):
        mine = [s for s in stats if s["target"] == target and s["loss"] is not None]
        bars = [s for s in mine if s["method"] != "base"]
        names = [f"{s['method']}" + ("" if s["model"] == bars[0]["model"] else f"\n{Path(s['model']).name}")
                 + ("" if s["fraction"] in (1.0,) or len({b['fraction'] for b in bars}) == 1 else f" {s['fraction']:g}")
                 for s in bars] if bars else []
        ax.bar(range(len(bars)), [s["loss"] for s in bars], yerr=[s["loss_std"] for s in bars], capsize=3,
               color=[f"C{k % 10}" for k in range(len(bars))])
        for s in mine:
            if s["method"] == "base":
                ax.axhline(s["loss"], color="grey", linestyle="--", linewidth=1)
        ax.set_xticks(range(len(bars)), names, rotation=45, ha="right", fontsize=8)
        ax.set_title(target)
        ax.set_ylabel("test loss (lower is better)")
        if bars:
            low = min(s["loss"] - (s["loss_std"] or 0) for s in mine)
            ax.set_ylim(bottom=max(0.0, low - 0.1 * abs(low)))
    fig.suptitle("test loss after training on each selection\n(dashed: the untrained model)", fontsize=9)
    fig.tight_layout()
    buffer = io.BytesIO()
    fig.savefig(buffer, format="png", dpi=110)
    plt.close(fig)
    atomic_write_bytes(path, buffer.getvalue())


def write_results(out: Path, rows: list[dict]) -> None:
    text = io.StringIO()
    writer = csv.DictWriter(text, RESULT_COLUMNS, lineterminator="\n")
    writer.writeheader()
    for r in rows:
        writer.writerow({k: _number(r[k]) for k in RESULT_COLUMNS})
    atomic_write_bytes(out / "results.csv", text.getvalue().encode())
    atomic_write_bytes(out / "results.md", results_markdown(rows).encode())
    if any(r["loss"] is not None and not (isinstance(r["loss"], float) and math.isnan(r["loss"])) for r in rows):
        results_plot(rows, out / "results.png")
