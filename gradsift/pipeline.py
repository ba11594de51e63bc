"""The whole pipeline from one YAML file: warmup, pool store, target stores, selection.

Example (paths are relative to the YAML file)::

    model: smollm2-135m
    workdir: out                       # run/, stores/<name>/, selection/ go here
    warmup: {train: [pool/a.jsonl, pool/b.jsonl], fraction: 0.05, epochs: 4}
    pool:   {data: [pool/a.jsonl, pool/b.jsonl], dim: 8192}      # BuildConfig fields
    targets:
      bbh:  {data: [targets/bbh.jsonl]}                           # BuildConfig fields, gradient sgd
    select: {fraction: 0.05}                                      # SelectConfig fields

``warmup.train`` defaults to ``pool.data``. Each stage resumes or is skipped when its output is
already complete with the same settings, so re-running after an interruption finishes the job.
"""

from __future__ import annotations

import dataclasses
import types
import typing
from dataclasses import dataclass, field
from pathlib import Path

import yaml

from .build import BuildConfig, build
from .errors import ConfigError
from .select import SelectConfig, Selection, select
from .warmup import WarmupConfig, warmup


@dataclass
class PipelineConfig:
    model: str
    workdir: Path
    pool: dict
    targets: dict[str, dict]
    warmup: dict = field(default_factory=dict)
    select: dict = field(default_factory=dict)

    @property
    def run_dir(self) -> Path:
        return self.workdir / "run"

    def store_dir(self, name: str) -> Path:
        return self.workdir / "stores" / name

    @property
    def selection_dir(self) -> Path:
        return self.workdir / "selection"

    def stage_configs(self) -> tuple[WarmupConfig, BuildConfig, dict[str, BuildConfig], SelectConfig]:
        """Typed configs of every stage; unknown or missing keys are reported by stage."""
        if "pool" in self.targets:
            raise ConfigError("a target cannot be named 'pool' (the pool store has that name)")
        warm = stage_config(WarmupConfig, "warmup", {"train": self.pool.get("data"), **self.warmup},
                     model=self.model, output=self.run_dir)
        pool = stage_config(BuildConfig, "pool", {"gradient": "adam", **self.pool}, run=self.run_dir,
                     output=self.store_dir("pool"))
        targets = {
            name: stage_config(BuildConfig, f"targets.{name}", {**_shared_projection(self.pool), "gradient": "sgd", **spec},
                        run=self.run_dir, output=self.store_dir(name))
            for name, spec in self.targets.items()
        }
        chosen = stage_config(SelectConfig, "select", self.select, train_store=self.store_dir("pool"),
                       target_store=[self.store_dir(n) for n in self.targets], output=self.selection_dir)
        return warm, pool, targets, chosen


def _shared_projection(pool: dict) -> dict:
    """Targets must be projected like the pool: inherit its projection settings."""
    return {k: pool[k] for k in ("projection", "dim", "seed", "max_length", "device") if k in pool}


def stage_config(cls, stage: str, values: dict, **fixed):
    """A stage's typed config from YAML values plus ``fixed`` ones; unknown keys or wrong fields are a
    ConfigError naming the stage (path lists become Paths)."""
    check_stage_values(cls, stage, values, fixed)
    hints = typing.get_type_hints(cls)
    values = {k: ([Path(p) for p in v] if hints[k] == list[Path] and v is not None else v) for k, v in values.items()}
    try:
        return cls(**{**values, **fixed})
    except TypeError as e:
        raise ConfigError(f"{stage}: {e}") from None


def check_stage_values(cls, stage: str, values: dict, fixed=()) -> None:
    """Unknown keys and values of the wrong type in a stage's YAML mapping are a ConfigError naming them."""
    if not isinstance(values, dict):
        raise ConfigError(f"{stage}: expected a mapping of {cls.__name__} fields, got {values!r}")
    names = {f.name for f in dataclasses.fields(cls)}
    unknown = set(values) - names
    if unknown:
        raise ConfigError(f"{stage}: unknown keys {sorted(unknown)}; known: {sorted(names - set(fixed))}")
    hints = typing.get_type_hints(cls)
    for key, value in values.items():
        if not has_type(value, hints[key]):
            raise ConfigError(f"{stage}.{key}: expected {type_name(hints[key])}, got {value!r}")


def has_type(value, hint) -> bool:
    """Whether a YAML value fits a config field's type (ints pass as floats, strings as paths)."""
    origin, args = typing.get_origin(hint), typing.get_args(hint)
    if origin in (typing.Union, types.UnionType):
        return any(has_type(value, a) for a in args)
    if origin is typing.Literal:
        return value in args
    if origin is list:
        return isinstance(value, list) and all(has_type(v, args[0]) for v in value)
    if hint is type(None):
        return value is None
    if hint is bool:
        return isinstance(value, bool)
    if hint is int:
        return isinstance(value, int) and not isinstance(value, bool)
    if hint is float:
        return isinstance(value, (int, float)) and not isinstance(value, bool)
    if hint is Path:
        return isinstance(value, (str, Path))
    return isinstance(value, hint) if isinstance(hint, type) else True


def type_name(hint) -> str:
    origin, args = typing.get_origin(hint), typing.get_args(hint)
    if origin in (typing.Union, types.UnionType):
        return " or ".join(type_name(a) for a in args)
    if origin is typing.Literal:
        return "one of " + ", ".join(map(repr, args))
    if origin is list:
        return f"list of {type_name(args[0])}"
    return "null" if hint is type(None) else getattr(hint, "__name__", str(hint))


def read_yaml_mapping(path: Path) -> dict:
    """A YAML config file's top-level mapping; an unreadable file or another shape is a ConfigError."""
    try:
        raw = yaml.safe_load(Path(path).read_text())
    except (OSError, yaml.YAMLError) as e:
        raise ConfigError(f"{path}: {e}") from None
    if not isinstance(raw, dict):
        raise ConfigError(f"{path}: expected a mapping at the top level")
    return raw


def load_pipeline(path: Path) -> PipelineConfig:
    """Read a pipeline YAML; relative paths resolve against the file's folder."""
    path = Path(path)
    raw = read_yaml_mapping(path)
    base = path.parent
    resolve = lambda files: [str(base / f) for f in files]  # noqa: E731
    for section in [raw.get("pool", {}), *raw.get("targets", {}).values()]:
        if "data" in section:
            section["data"] = resolve(section["data"])
    if "train" in raw.get("warmup", {}):
        raw["warmup"]["train"] = resolve(raw["warmup"]["train"])
    model = raw.get("model", "")
    if (base / model).exists():
        model = str(base / model)
    try:
        return PipelineConfig(**{**raw, "model": model, "workdir": base / raw.get("workdir", "gradsift-run")})
    except TypeError as e:
        raise ConfigError(f"{path}: {e}") from None


def run_pipeline(config: PipelineConfig) -> list[Selection]:
    warm, pool, targets, chosen = config.stage_configs()
    warmup(warm)
    build(pool)
    for target in targets.values():
        build(target)
    return select(chosen)
