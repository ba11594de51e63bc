"""What several test modules share: small data files, chat records, the selection fixtures' data and
configs, and running gradsift in a process that kills itself. Fixtures are in conftest.py."""

from __future__ import annotations

import json
import os
import random
import shutil
import signal
import subprocess
import sys
from pathlib import Path

from gradsift.config import BuildConfig, WarmupConfig
from gradsift.utils.faults import STOP_ENV

WORDS = ("the cat dog sat on mat red blue green one two three four five six seven add plus minus equals "
         "answer question logic true false because so therefore translate french hello world yes no").split()


def random_text(rng: random.Random, n: int) -> str:
    return " ".join(rng.choice(WORDS) for _ in range(n))


def write_jsonl(path: Path, records: list[dict]) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("".join(json.dumps(r) + "\n" for r in records))
    return path


def write_parquet(path: Path, records: list[dict]) -> Path:
    """One row per record; a column per key of any record, null in the rows that lack it."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    path.parent.mkdir(parents=True, exist_ok=True)
    columns = dict.fromkeys(key for r in records for key in r)
    pq.write_table(pa.Table.from_pydict({key: [r.get(key) for r in records] for key in columns}), path)
    return path


def chat_records(rng: random.Random, n: int, prefix: str, subtask: str | None = None) -> list[dict]:
    records = []
    for k in range(n):
        r = {"id": f"{prefix}-{k}", "messages": [
            {"role": "user", "content": random_text(rng, rng.randint(3, 20))},
            {"role": "assistant", "content": random_text(rng, rng.randint(2, 15))}]}
        if subtask:
            r["subtask"] = subtask
        records.append(r)
    return records



SMALL = ["--lora-r", "4", "--lora-alpha", "8", "--batch-size", "4", "--max-length", "48", "--device", "cpu"]


def killed_at(point: str, argv: list[str]) -> None:
    """Run ``gradsift ARGV`` in a new process that kills itself at POINT; it must die of SIGKILL there."""
    env = {**os.environ, STOP_ENV: point}
    done = subprocess.run([sys.executable, "-m", "gradsift", *argv], env=env, capture_output=True, text=True)
    assert done.returncode == -signal.SIGKILL, f"did not stop at {point}: rc {done.returncode}\n{done.stderr[-2000:]}"


def contents(folder: Path, drop_run_id: bool = False) -> dict[str, bytes]:
    """Every file under FOLDER by relative path (a run's random id left out when asked)."""
    files = {str(p.relative_to(folder)): p.read_bytes() for p in sorted(folder.rglob("*")) if p.is_file()}
    if drop_run_id and "run.json" in files:
        files["run.json"] = json.dumps({**json.loads(files["run.json"]), "id": None}).encode()
    return files



# The target skill has its own words; the pool is general text. LoRA features of a random tiny model are
# dominated by Adam's shared momentum, so copies of the targets only stand out reliably from pool
# examples that do not share the target's content (checked over 12 data seeds with these settings).
TARGET_WORDS = "translate french hello world yes no question answer".split()
POOL_WORDS = [w for w in WORDS if w not in TARGET_WORDS]
MAX_LENGTH = 64
DIM = 2048


def say(rng: random.Random, words: list[str], lo: int, hi: int) -> str:
    return " ".join(rng.choice(words) for _ in range(rng.randint(lo, hi)))


def chat(rng, words, rid, answer=(2, 15)) -> dict:
    return {"id": rid, "messages": [{"role": "user", "content": say(rng, words, 3, 20)},
                                    {"role": "assistant", "content": say(rng, words, *answer)}]}


def write_lines(path: Path, lines: list[str]) -> Path:
    path.write_text("".join(line + "\n" for line in lines), encoding="utf-8")
    return path



def warmup_config(model_dir, data, output, **overrides) -> WarmupConfig:
    settings = dict(model=str(model_dir), train=data["pool"], output=output, fraction=1.0, epochs=2, lora_r=4,
                    lora_alpha=8.0, lora_dropout=0.0, learning_rate=1e-2, warmup_ratio=0.1, batch_size=4,
                    micro_batch_size=4, max_length=MAX_LENGTH, seed=0, device="cpu")
    settings.update(overrides)
    return WarmupConfig(**settings)



def pool_config(run, fx, output, **overrides) -> BuildConfig:
    settings = dict(run=run.path, data=fx["pool"], output=output, gradient="adam", dim=DIM, seed=0,
                    batch_size=8, chunk_size=16, device="cpu")
    settings.update(overrides)
    return BuildConfig(**settings)


def target_config(run, fx, output, **overrides) -> BuildConfig:
    settings = dict(run=run.path, data=[fx["target"]], output=output, gradient="sgd", dim=DIM, seed=0,
                    device="cpu")
    settings.update(overrides)
    return BuildConfig(**settings)




def select_data(root: Path) -> dict:
    """pool_a.jsonl and pool_b.jsonl with three copies of the target examples in three formats and
    unusual formatting, one example whose answer is truncated away, and target.jsonl."""
    rng = random.Random(4)
    target = [chat(rng, TARGET_WORDS, f"t{k}", answer=(8, 15)) | {"subtask": f"skill{k}"} for k in range(3)]
    target_path = write_jsonl(root / "target.jsonl", target)
    (u0, a0), (u1, a1), (u2, a2) = ((t["messages"][0]["content"], t["messages"][1]["content"]) for t in target)
    copies = {  # same conversation as a target example; written differently
        "copy0": json.dumps({"messages": target[0]["messages"], "id": "copy0", "source": "web é"},
                            ensure_ascii=False, separators=(",", ":")),
        "copy1": '{ "prompt" : ' + json.dumps(u1) + ', "completion": ' + json.dumps(a1) + ', "id": "copy1" }',
        "copy2": json.dumps({"id": "copy2", "instruction": u2, "input": "", "output": a2}, indent=None),
    }
    pool_a = [json.dumps(chat(rng, POOL_WORDS, f"a{k}")) for k in range(24)]
    pool_b = [json.dumps(chat(rng, POOL_WORDS, f"b{k}")) for k in range(24)]
    no_label = {"id": "nolabel", "prompt": say(rng, POOL_WORDS, 80, 80), "completion": "yes"}
    pool_a.insert(5, copies["copy0"])
    pool_a.insert(17, json.dumps(no_label))
    pool_b.insert(3, copies["copy1"])
    pool_b.insert(20, copies["copy2"])
    return {
        "root": root, "target": target_path, "copies": copies,
        "pool": [write_lines(root / "pool_a.jsonl", pool_a), write_lines(root / "pool_b.jsonl", pool_b)],
    }




CHAT_TEMPLATE = (
    "{% for message in messages %}{{ '<|im_start|>' + message['role'] + '\n' + message['content'] + '<|im_end|>\n' }}"
    "{% endfor %}{% if add_generation_prompt %}{{ '<|im_start|>assistant\n' }}{% endif %}"
)


def save_tiny_tokenizer(folder: Path) -> dict[str, int]:
    """A word-level tokenizer with a chat template, saved in FOLDER; returns its vocabulary."""
    from tokenizers import Tokenizer, models, pre_tokenizers
    from transformers import PreTrainedTokenizerFast

    specials = ["<unk>", "<|im_start|>", "<|im_end|>", "<pad>"]
    vocab = {w: i for i, w in enumerate(specials + sorted(set(WORDS)) + ["user", "assistant", "system", "\n"])}
    # single characters let any text (numbers, punctuation) tokenize without <unk>
    for c in "abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789.,:;!?'\"-+=()[]{}_/<>|":
        vocab.setdefault(c, len(vocab))
    tok = Tokenizer(models.WordPiece(vocab, unk_token="<unk>", max_input_chars_per_word=100))
    tok.pre_tokenizer = pre_tokenizers.Sequence([pre_tokenizers.WhitespaceSplit(), pre_tokenizers.Punctuation()])
    tok.add_special_tokens(specials)
    tokenizer = PreTrainedTokenizerFast(tokenizer_object=tok, unk_token="<unk>", pad_token="<pad>",
                                        eos_token="<|im_end|>", bos_token="<|im_start|>")
    tokenizer.chat_template = CHAT_TEMPLATE
    tokenizer.save_pretrained(folder)
    return vocab


# tiny random models of the common architectures (hidden 64, 2 layers), as Hugging Face configs name them
ARCHITECTURES = {
    "llama": {"hidden_size": 64, "intermediate_size": 128, "num_hidden_layers": 2, "num_attention_heads": 4,
              "num_key_value_heads": 2},
    "mistral": {"hidden_size": 64, "intermediate_size": 128, "num_hidden_layers": 2, "num_attention_heads": 4,
                "num_key_value_heads": 2},
    "qwen2": {"hidden_size": 64, "intermediate_size": 128, "num_hidden_layers": 2, "num_attention_heads": 4,
              "num_key_value_heads": 2},
    "gemma3_text": {"hidden_size": 64, "intermediate_size": 128, "num_hidden_layers": 2, "num_attention_heads": 4,
                    "num_key_value_heads": 2, "head_dim": 16},
    "phi3": {"hidden_size": 64, "intermediate_size": 128, "num_hidden_layers": 2, "num_attention_heads": 4,
             "num_key_value_heads": 2},
    "gpt_neox": {"hidden_size": 64, "intermediate_size": 128, "num_hidden_layers": 2, "num_attention_heads": 4},
    "gpt2": {"n_embd": 64, "n_layer": 2, "n_head": 4},
}


def save_tiny_model(folder: Path, kind: str) -> Path:
    """A random model of architecture KIND (``ARCHITECTURES``) with the tiny tokenizer, saved in FOLDER."""
    import torch
    from transformers import AutoConfig, AutoModelForCausalLM

    vocab = save_tiny_tokenizer(folder)
    config = AutoConfig.for_model(kind, vocab_size=len(vocab), pad_token_id=vocab["<pad>"],
                                  eos_token_id=vocab["<|im_end|>"], bos_token_id=1, **ARCHITECTURES[kind])
    torch.manual_seed(0)
    AutoModelForCausalLM.from_config(config).save_pretrained(folder)
    return folder


def crash_on_second_save(monkeypatch):
    """Make the training loop die (KeyboardInterrupt) while saving its second checkpoint; return the real
    saver, to put back before resuming."""
    import gradsift.training.loop as loop

    real_save, calls = loop._save_checkpoint, []

    def crashing(*args, **kwargs):
        calls.append(1)
        if len(calls) == 2:
            raise KeyboardInterrupt("killed during epoch 2's save")
        return real_save(*args, **kwargs)

    monkeypatch.setattr(loop, "_save_checkpoint", crashing)
    return real_save


def store_without(store, folder: Path, part: str):
    """A copy of STORE without its folder PART (its lexical index or its embeddings): a store as gradsift
    wrote it before stores held that."""
    from gradsift.store.datastore import GradientStore

    shutil.copytree(store.path, folder)
    shutil.rmtree(Path(folder) / part)
    return GradientStore.open(folder)


def skip_without_packages(*packages: str, what: str) -> None:
    """Skip the calling test module (at import) when a package WHAT reads data from is not installed."""
    from importlib.metadata import PackageNotFoundError, distribution

    import pytest

    for package in packages:
        try:
            distribution(package)
        except PackageNotFoundError:
            pytest.skip(f"{what} reads the {package!r} package, not installed", allow_module_level=True)
