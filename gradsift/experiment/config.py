"""The experiment's config file (YAML), read and checked before any work. For every target, method, fraction
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
    budget: {steps: 40}                                # optional: every cell trains 40 optimizer steps
                                                       # whatever its size (equal compute), not train's epochs
    transfer:                                          # train another model on some methods' selections
      - {model: gemma3-270m, methods: [less, random], train: {micro_batch_size: 4}}

DIR gets ``results.csv`` (one row per cell: loss, accuracy, precision, recall, AUC, and ``length``, the
selection's median length over the pool's), ``results.md`` (mean ± spread over seeds, best loss per
target and model in bold), ``results.png`` (bars; with several fractions, loss against fraction),
``experiment.json`` (the config it ran), and the stages' folders: ``run/`` (and ``run-<key>/`` per
warmup override), ``stores/``, ``selections/``, ``train/``, ``eval/``.
"""

from __future__ import annotations

import dataclasses
import glob
import typing
from dataclasses import dataclass, field
from pathlib import Path

from gradsift.config import (
    BuildConfig,
    EvaluateConfig,
    SelectConfig,
    TrainConfig,
    WarmupConfig,
    check_stage_values,
    has_type,
    read_yaml_mapping,
    type_name,
)
from gradsift.selection.methods import METHODS
from gradsift.utils.errors import ConfigError


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
    budget: dict = field(default_factory=dict)  # {steps: N}: every cell trains N optimizer steps (equal compute)


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
    for name in ("model", "fractions", "seeds", "relevance", "warmup", "build", "select", "train", "evaluate",
                 "budget"):
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
        if m.method not in METHODS:
            raise ConfigError(f"{path}: unknown method {m.method!r}; known: {', '.join(sorted(METHODS))}")
        if METHODS[m.method].reads_labels and config.relevance is None:
            raise ConfigError(f"{path}: method {m.label!r} ({m.method}) selects the labelled records: it needs "
                              "'relevance'")
        if m.warmup and not METHODS[m.method].reads_run:
            raise ConfigError(f"{path}: method {m.label!r} ({m.method}) takes no warmup: 'warmup' is for "
                              f"{', '.join(n for n, cls in METHODS.items() if cls.reads_run)}")
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
    if set(config.budget) - {"steps"}:
        raise ConfigError(f"{path}: budget: unknown keys {sorted(set(config.budget) - {'steps'})}; known: ['steps']")
    steps = config.budget.get("steps")
    if "steps" in config.budget and not (isinstance(steps, int) and not isinstance(steps, bool) and steps > 0):
        raise ConfigError(f"{path}: budget.steps: expected a positive number of optimizer steps, got {steps!r}")
    for t in config.transfer:
        unknown = set(t.methods) - set(labels)
        if unknown:
            raise ConfigError(f"{path}: transfer to {t.model} names methods not in the grid: {sorted(unknown)}")
