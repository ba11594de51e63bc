"""Fixtures: a tiny random Llama with a tokenizer trained here, and small data files, all built in code."""

from __future__ import annotations

import os
from pathlib import Path

import pytest
import torch
from helpers import pool_config, save_tiny_tokenizer, select_data, target_config, warmup_config

from gradsift.features.build import build
from gradsift.training.warmup import warmup

# The test models are tiny: one thread is much faster than several contending for a few cores.
torch.set_num_threads(1)


@pytest.fixture(scope="session")
def tiny_model_dir(tmp_path_factory) -> Path:
    """A 2-layer random Llama (hidden 64) and a word-level tokenizer with a chat template."""
    from transformers import LlamaConfig, LlamaForCausalLM

    folder = tmp_path_factory.mktemp("tiny-llama")
    vocab = save_tiny_tokenizer(folder)
    torch.manual_seed(0)
    config = LlamaConfig(vocab_size=len(vocab), hidden_size=64, intermediate_size=128, num_hidden_layers=2,
                         num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=512,
                         pad_token_id=vocab["<pad>"], eos_token_id=vocab["<|im_end|>"], bos_token_id=1)
    LlamaForCausalLM(config).save_pretrained(folder)
    return folder


@pytest.fixture(autouse=True)
def _isolated_cache(tmp_path_factory, monkeypatch):
    monkeypatch.setenv("GRADSIFT_CACHE", os.environ.get("GRADSIFT_TEST_CACHE", str(tmp_path_factory.getbasetemp() / "cache")))


@pytest.fixture(scope="module")
def data(tmp_path_factory):
    """pool_a.jsonl and pool_b.jsonl with three copies of the target examples in three formats and
    unusual formatting, one example whose answer is truncated away, and target.jsonl (``select_data``)."""
    return select_data(tmp_path_factory.mktemp("select-data"))


@pytest.fixture(scope="module")
def run(tiny_model_dir, data):
    return warmup(warmup_config(tiny_model_dir, data, data["root"] / "run"))




@pytest.fixture(scope="module")
def small_stores(run, data):
    """A pool store and a target store of ``data`` at 64 dims, with everything a build stores beside the rows."""
    return (build(pool_config(run, data, data["root"] / "small-pool", dim=64)),
            build(target_config(run, data, data["root"] / "small-target", dim=64)))
