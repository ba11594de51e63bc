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

from dataclasses import dataclass, field
from pathlib import Path

from gradsift.config import (
    BuildConfig,
    SelectConfig,
    WarmupConfig,
    read_yaml_mapping,
    stage_config,
)
from gradsift.features.build import build
from gradsift.selection.select import Selection, select
from gradsift.training.warmup import warmup
from gradsift.utils.errors import ConfigError


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
