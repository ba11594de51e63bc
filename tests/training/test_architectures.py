"""Any common causal LM: with no --lora-targets, LoRA goes on the attention's linear layers whatever the
architecture calls them (fused q/k/v and GPT-2's Conv1D included); warmup, build, select, train and
evaluate run with default flags; per-example gradients equal per-example autograd; targets that match
nothing are one line naming the model's linear layers."""

from __future__ import annotations

import json
import random

import pytest
import torch
from helpers import ARCHITECTURES, chat_records, save_tiny_model, write_jsonl
from peft import get_peft_model
from transformers import AutoModelForCausalLM, AutoTokenizer

from gradsift.cli import main
from gradsift.data.chat import ChatEncoder, collate, per_example_loss
from gradsift.features.gradients import PerExampleGradients
from gradsift.inspection import inspect
from gradsift.training.lora import adapted_layers, lora_config, lora_parameters, lora_targets
from gradsift.utils.errors import ConfigError

ATTENTION = {  # what the attention's linear layers are called, per architecture
    "llama": ["k_proj", "o_proj", "q_proj", "v_proj"], "mistral": ["k_proj", "o_proj", "q_proj", "v_proj"],
    "qwen2": ["k_proj", "o_proj", "q_proj", "v_proj"], "gemma3_text": ["k_proj", "o_proj", "q_proj", "v_proj"],
    "phi3": ["o_proj", "qkv_proj"], "gpt_neox": ["dense", "query_key_value"],
    "gpt2": ["attn.c_proj", "c_attn"],  # the MLP has a c_proj too: the attention's is named with its block
}
assert set(ATTENTION) == set(ARCHITECTURES)


@pytest.fixture(scope="module", params=sorted(ARCHITECTURES))
def model_dir(request, tmp_path_factory):
    return request.param, save_tiny_model(tmp_path_factory.mktemp(request.param), request.param)


def test_default_targets_are_the_attentions_linear_layers(model_dir):
    kind, folder = model_dir
    model = AutoModelForCausalLM.from_pretrained(folder)
    targets, notice = lora_targets(model, None)
    assert targets == ATTENTION[kind] and notice is None
    layers = adapted_layers(model, targets)
    assert len(layers) == 2 * len(targets)  # two layers (blocks), each attention's layers, nothing else
    assert all(type(m).__name__.endswith("Attention") for m in
               (model.get_submodule(p.rsplit(".", 1)[0]) for p in layers))


def test_per_example_gradients_equal_per_example_autograd(model_dir):
    kind, folder = model_dir
    tokenizer = AutoTokenizer.from_pretrained(folder)
    base = AutoModelForCausalLM.from_pretrained(folder, dtype=torch.float32).requires_grad_(False)
    torch.manual_seed(1)
    settings = {"lora_r": 2, "lora_alpha": 4.0, "lora_dropout": 0.0, "lora_targets": lora_targets(base, None)[0]}
    model = get_peft_model(base, lora_config(settings)).eval()
    with torch.no_grad():  # peft starts B at zero, which would make every gradient of A zero
        for name, p in lora_parameters(model):
            if "lora_B" in name:
                p.normal_(0, 0.2)
    encoder = ChatEncoder(tokenizer, max_length=64)
    examples = [encoder.encode(r["messages"]) for r in chat_records(random.Random(3), 4, "x")]
    batch = collate(examples, tokenizer.pad_token_id)
    with PerExampleGradients(model) as grads:
        batched = grads.compute(batch)
    params = [p for _, p in lora_parameters(model)]
    for row, example in enumerate(examples):
        loss = per_example_loss(model, collate([example], tokenizer.pad_token_id))[0]
        alone = torch.cat([g.flatten() for g in torch.autograd.grad(loss, params)])
        torch.testing.assert_close(batched[row], alone, rtol=1e-4, atol=1e-6)


def test_the_pipeline_runs_with_default_flags(model_dir, tmp_path):
    kind, folder = model_dir
    rng = random.Random(5)
    pool = write_jsonl(tmp_path / "pool.jsonl", chat_records(rng, 12, "p"))
    target = write_jsonl(tmp_path / "target.jsonl", chat_records(rng, 3, "t"))
    small = ["--lora-r", "2", "--lora-alpha", "4", "--batch-size", "4", "--max-length", "256", "--device", "cpu"]
    run, stores, out = tmp_path / "run", tmp_path / "stores", tmp_path / "sel"
    assert main(["warmup", "--model", str(folder), "--train", str(pool), "--output", str(run), "--fraction", "1",
                 "--epochs", "1", *small]) == 0
    adapted = json.loads((run / "run.json").read_text())["adapted"]
    assert adapted["targets"] == ATTENTION[kind] and adapted["layers"] == 2 * len(ATTENTION[kind])
    assert adapted["parameters"] > 0
    (found,) = inspect(run)
    assert dict(found.facts)["adapted"] == \
        f"{', '.join(ATTENTION[kind])}: {adapted['layers']} layers, {adapted['parameters']:,} LoRA parameters"
    common = ["--run", str(run), "--dim", "64", "--device", "cpu"]
    assert main(["build", *common, "--data", str(pool), "--output", str(stores / "pool")]) == 0
    assert main(["build", *common, "--data", str(target), "--output", str(stores / "t"), "--gradient", "sgd"]) == 0
    assert main(["select", "--method", "less", "--train-store", str(stores / "pool"), "--target-store",
                 str(stores / "t"), "--output", str(out), "--count", "4"]) == 0
    assert len((out / "selected.jsonl").read_text().splitlines()) == 4
    assert main(["train", "--model", str(folder), "--data", str(out / "selected.jsonl"), "--output",
                 str(tmp_path / "tuned"), "--epochs", "1", *small]) == 0
    assert main(["evaluate", "--model", str(folder), "--adapter", str(tmp_path / "tuned"), "--data", str(target),
                 "--output", str(tmp_path / "eval"), "--max-new-tokens", "0", "--device", "cpu"]) == 0
    assert json.loads((tmp_path / "eval" / "summary.json").read_text())["loss"] > 0


def test_targets_that_match_nothing_name_the_models_linear_layers(tiny_model_dir):
    model = AutoModelForCausalLM.from_pretrained(tiny_model_dir)
    with pytest.raises(ConfigError, match=r"--lora-targets q_prj match no linear layer of LlamaForCausalLM; its linear "
                                          r"layers: down_proj, gate_proj, k_proj, lm_head, o_proj, q_proj"):
        lora_targets(model, ["q_prj"])
    targets, notice = lora_targets(model, ["q_proj", "v_proj"])
    assert targets == ["q_proj", "v_proj"] and "leaves the attention's k_proj, o_proj unadapted" in notice


def test_warmup_with_a_typo_in_its_targets_is_one_line(tiny_model_dir, tmp_path, capsys):
    pool = write_jsonl(tmp_path / "pool.jsonl", chat_records(random.Random(1), 4, "p"))
    assert main(["warmup", "--model", str(tiny_model_dir), "--train", str(pool), "--output", str(tmp_path / "run"),
                 "--lora-targets", "q_prj", "--device", "cpu"]) != 0
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "q_prj match no linear layer" in err[0] and "Traceback" not in err[0]
