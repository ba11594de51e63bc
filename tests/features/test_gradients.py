"""Batched per-example LoRA gradients equal each example's gradient computed alone."""

from __future__ import annotations

import random

import pytest
import torch
from helpers import random_text
from peft import get_peft_model
from transformers import AutoModelForCausalLM, AutoTokenizer

from gradsift.data.chat import ChatEncoder, collate, per_example_loss
from gradsift.features.gradients import PerExampleGradients
from gradsift.training.lora import lora_config, lora_parameters

SETTINGS = {"lora_r": 4, "lora_alpha": 8.0, "lora_dropout": 0.1,
            "lora_targets": ["q_proj", "k_proj", "v_proj", "o_proj"]}


@pytest.fixture(scope="module")
def setup(tiny_model_dir):
    tokenizer = AutoTokenizer.from_pretrained(str(tiny_model_dir))
    base = AutoModelForCausalLM.from_pretrained(str(tiny_model_dir), dtype=torch.float32)
    base.requires_grad_(False)
    torch.manual_seed(1)
    model = get_peft_model(base, lora_config(SETTINGS))
    with torch.no_grad():  # peft starts B at zero, which would make every gradient of A zero
        for name, p in lora_parameters(model):
            if "lora_B" in name:
                p.normal_(0, 0.2)
    model.eval()
    encoder = ChatEncoder(tokenizer, max_length=96)
    rng = random.Random(7)
    examples = []
    for n_user, n_answer in [(3, 2), (20, 12), (8, 1), (30, 25), (5, 9), (14, 4)]:
        messages = [{"role": "user", "content": random_text(rng, n_user)},
                    {"role": "assistant", "content": random_text(rng, n_answer)}]
        examples.append(encoder.encode(messages))
    lengths = [len(ids) for ids, _ in examples]
    assert len(set(lengths)) == len(lengths)  # mixed lengths: real padding in every batch
    return model, tokenizer, examples


def alone_gradient(model, pad_id, example) -> torch.Tensor:
    """Reference: autograd of the example's loss in a batch of one, no padding."""
    params = [p for _, p in lora_parameters(model)]
    loss = per_example_loss(model, collate([example], pad_id))
    assert loss.shape == (1,)
    grads = torch.autograd.grad(loss[0], params)
    return torch.cat([g.flatten() for g in grads])


def batched(model, pad_id, examples) -> torch.Tensor:
    with PerExampleGradients(model) as grads:
        out = grads.compute(collate(examples, pad_id))
    assert out.dtype == torch.float32 and out.shape[0] == len(examples)
    return out


def assert_close(actual, expected):
    scale = expected.abs().max().item()
    torch.testing.assert_close(actual, expected, rtol=1e-4, atol=1e-6 * scale)


def test_batched_per_example_gradients_equal_each_alone(setup):
    model, tokenizer, examples = setup
    pad = tokenizer.pad_token_id
    g = batched(model, pad, examples)
    n_params = sum(p.numel() for _, p in lora_parameters(model))
    assert g.shape == (len(examples), n_params)
    names = [n for n, _ in lora_parameters(model)]
    a_cols = torch.cat([torch.full((p.numel(),), "lora_A" in n) for n, p in lora_parameters(model)])
    assert any("lora_A" in n for n in names) and any("lora_B" in n for n in names)
    for row, example in zip(g, examples):
        reference = alone_gradient(model, pad, example)
        assert reference[a_cols].abs().max() > 0 and reference[~a_cols].abs().max() > 0
        assert_close(row, reference)
    # examples are distinct: so are their gradients
    assert not torch.allclose(g[0], g[1])
    # no .grad left behind on the parameters
    assert all(p.grad is None for _, p in lora_parameters(model))


def test_batch_composition_does_not_change_a_gradient(setup):
    model, tokenizer, examples = setup
    pad = tokenizer.pad_token_id
    full = batched(model, pad, examples)
    # example 2 alongside different companions, in different positions
    pair = batched(model, pad, [examples[3], examples[2]])
    alone = batched(model, pad, [examples[2]])
    reordered = batched(model, pad, [examples[2], examples[5], examples[0]])
    for other in (pair[1], alone[0], reordered[0]):
        assert_close(other, full[2])
    assert_close(reordered[1], full[5])
    assert_close(pair[0], full[3])


def test_hooks_are_removed_on_exit(setup):
    model, tokenizer, examples = setup
    pad = tokenizer.pad_token_id
    grads = PerExampleGradients(model)
    with grads:  # one hook per LoRA factor, one on the input embeddings
        assert sum(len(m._forward_hooks) for m in model.modules()) == len(grads.names) + 1
        grads.compute(collate(examples[:2], pad))
    assert sum(len(m._forward_hooks) for m in model.modules()) == 0
    # the factors frozen inside are trainable again
    assert [n for n, _ in lora_parameters(model)] == grads.names
    # and a plain backward pass afterwards still works
    per_example_loss(model, collate(examples[:1], pad)).sum().backward()
    model.zero_grad(set_to_none=True)


def test_a_non_finite_loss_stays_in_its_own_row(setup):
    """An example whose activations turn NaN (as a poisoned weight would make them) gets a NaN gradient
    row; the other rows of its batch keep the gradients they have alone (the store sets such rows aside)."""
    model, tokenizer, examples = setup
    with PerExampleGradients(model) as grads:
        alone = grads.compute(collate([examples[1]], tokenizer.pad_token_id))
        poison = model.get_input_embeddings().register_forward_hook(
            lambda module, inputs, output: output.index_fill(0, torch.tensor([1]), float("nan")))
        try:
            mixed = grads.compute(collate([examples[1], examples[0]], tokenizer.pad_token_id))
        finally:
            poison.remove()
    assert torch.isnan(mixed[1]).any()
    torch.testing.assert_close(mixed[0], alone[0], rtol=1e-4, atol=1e-6)
    model.zero_grad(set_to_none=True)
