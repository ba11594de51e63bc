"""Fixtures: a tiny random Llama with a tokenizer trained here, and small data files, all built in code."""

from __future__ import annotations

import json
import os
import random
from pathlib import Path

import pytest
import torch

# The test models are tiny: one thread is much faster than several contending for a few cores.
torch.set_num_threads(1)

CHAT_TEMPLATE = (
    "{% for message in messages %}{{ '<|im_start|>' + message['role'] + '\n' + message['content'] + '<|im_end|>\n' }}"
    "{% endfor %}{% if add_generation_prompt %}{{ '<|im_start|>assistant\n' }}{% endif %}"
)

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


@pytest.fixture(scope="session")
def tiny_model_dir(tmp_path_factory) -> Path:
    """A 2-layer random Llama (hidden 64) and a word-level tokenizer with a chat template."""
    from tokenizers import Tokenizer, models, pre_tokenizers
    from transformers import LlamaConfig, LlamaForCausalLM, PreTrainedTokenizerFast

    folder = tmp_path_factory.mktemp("tiny-llama")
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
    torch.manual_seed(0)
    config = LlamaConfig(vocab_size=len(vocab), hidden_size=64, intermediate_size=128, num_hidden_layers=2,
                         num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=512,
                         pad_token_id=vocab["<pad>"], eos_token_id=vocab["<|im_end|>"], bos_token_id=1)
    LlamaForCausalLM(config).save_pretrained(folder)
    return folder


@pytest.fixture(autouse=True)
def _isolated_cache(tmp_path_factory, monkeypatch):
    monkeypatch.setenv("GRADSIFT_CACHE", os.environ.get("GRADSIFT_TEST_CACHE", str(tmp_path_factory.getbasetemp() / "cache")))
