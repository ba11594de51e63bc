"""The typed settings of every stage, one dataclass each; the command line's flags are their fields
(help strings and defaults included). Kept free of torch and transformers so that ``gradsift --help``
and configuration checks answer at once; each stage module re-exports its own config.
"""

from __future__ import annotations

import dataclasses
import math
import types
import typing
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Literal

import yaml

from gradsift.utils.errors import ConfigError
from gradsift.utils.files import data_files, file_sha256, require_data_file

AdamForm = Literal["corrected", "less"]  # gradsift.features.adam.adam_update
ProjectionKind = Literal["dense", "sparse", "kronecker"]  # gradsift.features.projection.PROJECTORS
# gradsift.selection.scoring.aggregate, round_robin
Aggregate = Literal["subtask-mean-max", "mean", "max", "round-robin", "example-round-robin"]
StoreDtype = Literal["float16", "int8", "bit"]  # gradsift.store.compact
Response = Literal["full", "answer", "answer-only"]  # gradsift.data.chat.ChatEncoder
Part = Literal["whole", "prompt", "answer"]  # gradsift.data.records.example_part
ModelDtype = Literal["auto", "float32", "bfloat16"]  # gradsift.features.engine.features_dtype
Fuse = Literal["zscore", "agreement", "median", "mean", "rrf"]  # gradsift.selection.scoring.fuse_ranks

TOKEN_LIMIT = 1024  # rds's and fusion's tokens per example unless --max-length says otherwise, and the stored embeddings'


RANGES = {  # a numeric setting's "range" metadata: the test its value must pass, and how to say it
    "positive": (lambda v: 0 < v < math.inf, "a positive number"),
    "fraction": (lambda v: 0 < v <= 1, "in (0, 1]"),
    "ratio": (lambda v: 0 <= v <= 1, "in [0, 1]"),
    "below_one": (lambda v: 0 <= v < 1, "in [0, 1)"),
    "nonnegative": (lambda v: 0 <= v < math.inf, "zero or more"),
}


class Checked:
    """A config whose numeric settings are checked against their ``range`` when it is made: a value that
    cannot work (``--epochs 0``, ``--dim 0``, a NaN) is refused in one line before any work."""

    def __post_init__(self) -> None:
        for f in dataclasses.fields(self):
            value, rule = getattr(self, f.name), f.metadata.get("range")
            if rule is None or value is None or isinstance(value, bool) or not isinstance(value, (int, float)):
                continue
            ok, words = RANGES[rule]
            if not ok(value):  # NaN fails every test
                raise ConfigError(f"--{f.name.replace('_', '-')} must be {words}{f.metadata.get('unit', '')}, "
                                  f"got {value}")


# -- training (warmup and train) -------------------------------------------------------------------
@dataclass(kw_only=True)
class TrainingArguments(Checked):
    """The settings of the training loop; defaults are the LESS paper's (warmup and fine-tuning alike)."""

    epochs: int = field(default=4, metadata={"range": "positive", "help": "epochs; one checkpoint per epoch"})
    lora_r: int = field(default=128, metadata={"range": "positive", "help": "LoRA rank"})
    lora_alpha: float = field(default=512.0, metadata={"range": "positive", "help": "LoRA alpha"})
    lora_dropout: float = field(default=0.1, metadata={"range": "below_one", "help": "LoRA dropout"})
    lora_targets: list[str] | None = field(default=None, metadata={
        "help": "modules given LoRA, as peft matches them (default: the linear layers of the model's attention, "
                "whatever its architecture calls them: q/k/v/o_proj, Phi-3's qkv_proj, GPT-NeoX's query_key_value, "
                "GPT-2's c_attn)"})
    learning_rate: float = field(default=2e-5, metadata={
        "range": "positive", "help": "peak learning rate (linear decay)"})
    warmup_ratio: float = field(default=0.03, metadata={
        "range": "ratio", "help": "fraction of steps with linear LR warmup"})
    weight_decay: float = field(default=0.0, metadata={"range": "nonnegative", "help": "AdamW weight decay"})
    batch_size: int = field(default=128, metadata={"range": "positive", "help": "examples per optimizer step"})
    micro_batch_size: int = field(default=8, metadata={
        "range": "positive", "help": "examples per forward/backward pass"})
    max_length: int = field(default=2048, metadata={
        "range": "positive", "unit": " of tokens", "help": "truncate examples to this many tokens"})
    seed: int = field(default=0, metadata={"help": "seed for the sample, the LoRA init, the data order and dropout"})
    skip_bad_records: bool = field(default=False, metadata={
        "help": "skip malformed records (counted) instead of failing"})
    device: str = field(default="auto", metadata={"help": "auto, cpu, cuda, cuda:1, ..."})

    def fingerprint(self) -> dict:
        """The settings that must agree for a resumed run to continue this one."""
        d = {k: ([str(p) for p in v] if isinstance(v, list) else str(v) if isinstance(v, Path) else v)
             for k, v in asdict(self).items()}
        for volatile in ("output", "device", "micro_batch_size"):
            d.pop(volatile, None)
        return d


@dataclass
class WarmupConfig(TrainingArguments):
    model: str = field(metadata={"help": "Hugging Face folder, GGUF file, or alias (smollm2-135m, gemma3-270m)"})
    train: list[Path] = field(metadata={
        "help": "pool files (JSON Lines, JSON array or Parquet); the warmup samples from their union"})
    output: Path = field(metadata={"help": "run folder to write"})
    fraction: float = field(default=0.05, metadata={"range": "fraction", "help": "fraction of the pool to warm up on"})


@dataclass
class TrainConfig(TrainingArguments):
    model: str = field(metadata={"help": "Hugging Face folder, GGUF file, or alias (smollm2-135m, gemma3-270m)"})
    data: list[Path] = field(metadata={"help": "records files to train on (e.g. a selection's selected.jsonl)"})
    output: Path = field(metadata={"help": "folder for the run and the final adapter (or model, with --full)"})
    full: bool = field(default=False, metadata={"help": "fine-tune every weight instead of a LoRA adapter"})
    steps: int | None = field(default=None, metadata={
        "range": "positive", "help": "train for this many optimizer steps whatever the records' number (equal "
                                     "compute: the records are cycled in their content order, epoch after epoch, "
                                     "the last epoch cut short); --epochs is then ignored"})

    def fingerprint(self) -> dict:
        """A fine-tuning run is identified by the content it trains on, not by where that file lies:
        moved records still resume, edited ones do not. ``steps`` counts only when set (runs made before it
        existed still resume)."""
        files = data_files(self.data)
        for path in files:
            require_data_file(path)
        found = {**super().fingerprint(), "data": [file_sha256(p) for p in files]}
        if found["steps"] is None:
            del found["steps"]
        return found


# -- build -----------------------------------------------------------------------------------------
@dataclass
class BuildConfig(Checked):
    run: Path = field(metadata={"help": "warmup run folder (from `gradsift warmup`)"})
    data: list[Path] = field(metadata={
        "help": "data files (JSON Lines, JSON array or Parquet) to compute features for"})
    output: Path = field(metadata={"help": "store folder to write (resumed if it holds the same build)"})
    gradient: Literal["adam", "sgd"] = field(default="adam", metadata={"help": "adam for the pool, sgd for targets"})
    adam_form: AdamForm = field(default="corrected", metadata={
        "help": "corrected: bias-corrected Adam update; less: the reference code's formula"})
    projection: ProjectionKind = field(default="sparse", metadata={
        "help": "sparse: sparse JL (default: as faithful as dense, 8x faster on a CPU); dense: Rademacher JL "
                "(the reference); kronecker: per-parameter two-sided"})
    dim: int = field(default=8192, metadata={
        "range": "positive", "unit": " of dimensions", "help": "projected dimensions"})
    dtype: StoreDtype = field(default="float16", metadata={
        "help": "how rows are stored: float16; int8 (one scale per row, half the size); bit (packed signs, "
                "1/16 the size; cosine estimated from the Hamming distance)"})
    response: Response = field(default="full", metadata={
        "help": "which reply tokens carry the loss: full (the paper); answer: the final answer only (after 'the "
                "answer is', 'Answer:' or '####'; a direct reply is all answer), its reasoning kept as context; "
                "answer-only: the reasoning removed"})
    seed: int = field(default=0, metadata={"help": "projection seed (the same for every store to compare)"})
    max_length: int | None = field(default=None, metadata={
        "range": "positive", "unit": " of tokens", "help": "truncate to this many tokens (default: the run's)"})
    batch_size: int = field(default=16, metadata={"range": "positive", "help": "examples per batched backward pass"})
    chunk_size: int = field(default=256, metadata={"range": "positive", "help": "rows committed to disk at a time"})
    skip_bad_records: bool = field(default=False, metadata={
        "help": "skip malformed records (counted) instead of failing"})
    device: str = field(default="auto", metadata={"help": "auto, cpu, cuda, cuda:1, ..."})
    model_dtype: ModelDtype = field(default="auto", metadata={
        "help": "the model's weights in the gradient pass (the feature math is float32 whatever it is): auto, "
                "bfloat16 on a GPU and float32 on a CPU; bfloat16 on a CPU runs the GPU's path where no GPU is"})


# -- select ----------------------------------------------------------------------------------------
@dataclass
class SelectConfig(Checked):
    output: Path = field(metadata={"help": "folder for selected.jsonl, scores.csv, summary.json"})
    method: str = field(default="fusion", metadata={
        "help": "one of %(choices)s (the registry, gradsift.selection.methods). fusion, the default, fuses the ranks "
                "of less, bm25 and rds (docs/results.md); fusion and less read gradient stores (--train-store, "
                "--target-store), as bm25 and rds can; exact (needs --run: LESS unprojected), random, bm25, rds (needs "
                "--model) and full read records files (--pool, --target)"})
    train_store: Path | None = field(default=None, metadata={
        "help": "fusion, less (and bm25, rds, which read its index and embeddings): the pool's store"})
    target_store: list[Path] | None = field(default=None, metadata={
        "help": "fusion, less (and bm25, rds): the targets' stores; several give one selection each"})
    pool: list[Path] | None = field(default=None, metadata={"help": "exact/random/bm25/rds/full: pool records files"})
    target: list[Path] | None = field(default=None, metadata={
        "help": "exact/random/bm25/rds/full: the target's records files (one target; subtask = record field or file)"})
    run: Path | None = field(default=None, metadata={"help": "exact: the warmup run folder (from `gradsift warmup`)"})
    adam_form: AdamForm = field(default="corrected", metadata={
        "help": "exact: the pool's Adam feature, as build's --adam-form (corrected, or less: the reference's)"})
    model: str | None = field(default=None, metadata={
        "help": "rds: the selector model whose hidden states are compared (given stores: default theirs)"})
    fraction: float | None = field(default=0.05, metadata={
        "range": "fraction", "help": "fraction of the pool to select"})
    count: int | None = field(default=None, metadata={
        "range": "positive", "help": "number of examples to select (overrides --fraction)"})
    aggregate: Aggregate = field(default="subtask-mean-max", metadata={
        "help": "subtask-mean-max (paper): mean per subtask, max over subtasks; mean, max (over target examples); "
                "round-robin: each subtask's best rows in turn; example-round-robin: each target example's best rows in "
                "turn (Nayak et al., 2026)"})
    dedup: float | None = field(default=None, metadata={
        "range": "fraction", "help": "near-duplicate removal: pass over a row whose text shares at least this Jaccard "
                                     "similarity (word 3-grams, MinHash) with a row already selected, e.g. 0.8"})
    balance: bool | None = field(default=None, metadata={
        "help": "where the selected records' answers are labels (at most 10 values, each 10%% or more, make up 80%% "
                "of them: yes/no, a choice letter), give each label an equal share, drawn from the ranking's top 2x "
                "the selection (the few target examples' label mix is chance; docs/methods.md). Default: on with "
                "fusion, off with the single methods (as published)"})
    fuse: Fuse = field(default="zscore", metadata={
        "help": "fusion: over the members whose top rows another member shares (one that agrees with none is left "
                "out and named), zscore sums their standardized scores (a member whose top rows stand out weighs "
                "more) and agreement takes their median rank; median (of all three), mean (Borda) or rrf "
                "(reciprocal rank)"})
    target_part: Part = field(default="prompt", metadata={
        "help": "bm25, rds (and fusion's bm25 and rds): which part of each target example they read: whole, prompt "
                "(the turns before the reply: the task, not a worked answer's form) or answer (the replies)"})
    pool_part: Part = field(default="prompt", metadata={
        "help": "bm25, rds (and fusion's bm25 and rds): which part of each pool record they read (as --target-part)"})
    seed: int = field(default=0, metadata={"help": "random: the seed of the draw"})
    max_length: int | None = field(default=None, metadata={"range": "positive", "unit": " of tokens",
        "help": "rds/fusion/exact: truncate examples to this many tokens (default: exact, the run's, as its "
                "stores; rds and fusion, 1024)"})
    batch_size: int = field(default=16, metadata={
        "range": "positive", "help": "rds/exact: examples per forward (exact: backward) pass"})
    device: str = field(default="auto", metadata={"help": "rds/exact: auto, cpu, cuda, ..."})
    model_dtype: ModelDtype = field(default="auto", metadata={
        "help": "exact: the model's weights in its gradient pass, as build's --model-dtype (auto: bfloat16 on a GPU, "
                "float32 on a CPU)"})
    chunk_size: int = field(default=256, metadata={"range": "positive",
        "help": "exact: pool rows whose cosines are committed to OUTPUT/exact at a time (where a rerun resumes)"})
    chunk_rows: int = field(default=16384, metadata={
        "range": "positive", "help": "pool rows scored at a time (bounds memory)"})
    skip_bad_records: bool = field(default=False, metadata={
        "help": "skip malformed records (counted) instead of failing"})


# -- evaluate --------------------------------------------------------------------------------------
@dataclass
class EvaluateConfig(Checked):
    model: str = field(metadata={"help": "Hugging Face folder, GGUF file, or alias (smollm2-135m, gemma3-270m)"})
    data: list[Path] = field(metadata={"help": "held-out test files (JSON Lines, JSON array or Parquet); records "
                                               "with 'choices' are scored by likelihood, others by generation"})
    output: Path = field(metadata={"help": "folder to write summary.json and examples.jsonl to"})
    adapter: Path | None = field(default=None, metadata={
        "help": "peft adapter folder (adapter_config.json + adapter_model.safetensors), e.g. from `gradsift train`"})
    batch_size: int = field(default=8, metadata={
        "range": "positive", "help": "sequences per forward or generation pass"})
    max_length: int = field(default=1024, metadata={
        "range": "positive", "unit": " of tokens", "help": "truncate examples to this many tokens"})
    max_new_tokens: int = field(default=64, metadata={"range": "nonnegative",
        "help": "greedy generation budget for records without choices; 0: no generation (no accuracy for them)"})
    skip_bad_records: bool = field(default=False, metadata={
        "help": "skip malformed records (counted) instead of failing"})
    device: str = field(default="auto", metadata={"help": "auto, cpu, cuda, cuda:1, ..."})


# -- config files (YAML): a stage's settings checked before any work ------------------------------------
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
