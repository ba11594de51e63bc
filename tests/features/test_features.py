"""The Adam-aware feature (SPEC §1.3) by hand, from a real saved optimizer state, and against AdamW."""

from __future__ import annotations

import json
import math
import random

import pytest
import torch
from helpers import chat_records, write_jsonl
from safetensors.torch import load_file

from gradsift.config import WarmupConfig
from gradsift.features.adam import adam_feature, normalize_rows
from gradsift.training.run import Run
from gradsift.training.warmup import warmup


def corrected_by_hand(g, m, v, step, b1, b2, eps):
    t = step + 1
    m2 = b1 * m + (1 - b1) * g
    v2 = b2 * v + (1 - b2) * g * g
    m_hat = m2 / (1 - b1**t)
    v_hat = v2 / (1 - b2**t)
    return m_hat / (math.sqrt(v_hat) + eps)


def less_by_hand(g, m, v):
    m2 = 0.9 * m + 0.1 * g
    v2 = 0.999 * v + 0.001 * g * g
    return m2 / math.sqrt(v2 + 1e-8)


CASES = [  # (g, m, v): signs, zeros, tiny and large values
    (0.3, 0.01, 1e-4),
    (-2.0, 0.5, 0.2),
    (0.0, -0.02, 3e-6),
    (1e-5, 0.0, 0.0),
    (-7e-4, 1e-3, 1e-7),
    (0.0, 0.0, 0.0),
]


@pytest.mark.parametrize("step", [0, 3, 250])
def test_corrected_form_matches_hand_formula(step):
    betas, eps = (0.8, 0.95), 1e-6  # not Adam's defaults, so that ignoring them would show
    g, m, v = (torch.tensor([c[k] for c in CASES], dtype=torch.float64) for k in range(3))
    got = adam_feature(g, m, v, step, betas, eps, form="corrected")
    expected = [corrected_by_hand(*c, step, *betas, eps) for c in CASES]
    assert got.tolist() == pytest.approx(expected, rel=1e-12, abs=1e-15)
    # the same per-element formula on a batch of rows
    batch = adam_feature(torch.stack([g, 2 * g]), m, v, step, betas, eps)
    expected2 = [corrected_by_hand(2 * c[0], c[1], c[2], step, *betas, eps) for c in CASES]
    assert batch[0].tolist() == pytest.approx(expected, rel=1e-12, abs=1e-15)
    assert batch[1].tolist() == pytest.approx(expected2, rel=1e-12, abs=1e-15)


@pytest.mark.parametrize("step", [0, 250])
def test_less_form_matches_reference_formula_and_ignores_betas(step):
    g, m, v = (torch.tensor([c[k] for c in CASES], dtype=torch.float64) for k in range(3))
    expected = [less_by_hand(*c) for c in CASES]
    for betas, eps in [((0.8, 0.95), 1e-6), ((0.9, 0.999), 1e-8), ((0.5, 0.5), 0.1)]:
        got = adam_feature(g, m, v, step, betas, eps, form="less")
        assert got.tolist() == pytest.approx(expected, rel=1e-12, abs=1e-15)


def test_the_two_forms_differ():
    g, m, v = torch.tensor([0.3, -0.2]), torch.tensor([0.01, 0.02]), torch.tensor([1e-4, 2e-4])
    a = adam_feature(g, m, v, 10, (0.9, 0.999), 1e-8, "corrected")
    b = adam_feature(g, m, v, 10, (0.9, 0.999), 1e-8, "less")
    assert not torch.allclose(a, b)


def test_normalize_rows_unit_norm_and_zero_row_stays_zero():
    x = torch.tensor([[3.0, 4.0], [0.0, 0.0], [1e-30, 0.0], [-1.0, 0.0]])
    y = normalize_rows(x)
    assert not torch.isnan(y).any()
    assert y[0].tolist() == pytest.approx([0.6, 0.8])
    assert y[1].tolist() == [0.0, 0.0]
    assert y[3].tolist() == [-1.0, 0.0]
    assert y[2, 0].item() == pytest.approx(1.0)
    half = normalize_rows(torch.zeros(3, 5, dtype=torch.float16))
    assert not torch.isnan(half).any() and (half == 0).all()


# -- from a real warmup run ------------------------------------------------------------------------

@pytest.fixture(scope="module")
def run(tiny_model_dir, tmp_path_factory):
    folder = tmp_path_factory.mktemp("features-run")
    data = write_jsonl(folder / "pool.jsonl", chat_records(random.Random(3), 16, "p"))
    config = WarmupConfig(model=str(tiny_model_dir), train=[data], output=folder / "run", fraction=1.0, epochs=2,
                          lora_r=4, lora_alpha=8.0, lora_dropout=0.0, learning_rate=1e-2, warmup_ratio=0.1,
                          batch_size=4, micro_batch_size=4, max_length=64, device="cpu")
    return warmup(config)


def lora_names(run: Run) -> list[str]:
    model, _ = run.load_model(torch.device("cpu"))
    return [n for n, p in model.named_parameters() if p.requires_grad]


def test_adam_state_reads_the_saved_moments_by_name(run):
    names = lora_names(run)
    checkpoint = run.checkpoints[-1]
    m, v = checkpoint.adam_state(names)
    raw = load_file(checkpoint.path / "optimizer.safetensors")
    assert m.shape == v.shape == (sum(raw[f"exp_avg.{n}"].numel() for n in names),)
    offset = 0
    for n in names:
        size = raw[f"exp_avg.{n}"].numel()
        assert torch.equal(m[offset: offset + size], raw[f"exp_avg.{n}"].flatten().float())
        assert torch.equal(v[offset: offset + size], raw[f"exp_avg_sq.{n}"].flatten().float())
        offset += size
    assert (v >= 0).all() and v.max() > 0 and m.abs().max() > 0
    # a name-keyed lookup: another order gives the same values, reordered
    m_rev, _ = checkpoint.adam_state(names[::-1])
    first = raw[f"exp_avg.{names[-1]}"].flatten().float()
    assert torch.equal(m_rev[: first.numel()], first)
    state = json.loads((checkpoint.path / "state.json").read_text())
    assert (state["step"], tuple(state["betas"]), state["eps"]) == (checkpoint.step, checkpoint.betas, checkpoint.eps)


def test_corrected_feature_is_adamw_next_update(run):
    """Restore AdamW (no weight decay) with the checkpoint's state, feed a gradient, step: the parameter
    moves by exactly -lr * adam_feature(corrected)."""
    names = lora_names(run)
    checkpoint = run.checkpoints[-1]
    m, v = (t.double() for t in checkpoint.adam_state(names))
    generator = torch.Generator().manual_seed(0)
    grad = torch.randn(m.shape, generator=generator, dtype=torch.float64) * v.sqrt().mean()
    grad[::7] = 0.0  # coordinates that get no gradient still move with the momentum
    lr = 0.0123
    param = torch.nn.Parameter(torch.zeros_like(m))
    optimizer = torch.optim.AdamW([param], lr=lr, betas=checkpoint.betas, eps=checkpoint.eps, weight_decay=0.0)
    optimizer.state[param] = {"step": torch.tensor(float(checkpoint.step)), "exp_avg": m.clone(),
                              "exp_avg_sq": v.clone()}
    param.grad = grad.clone()
    optimizer.step()
    update = -param.detach()
    feature = adam_feature(grad, m, v, checkpoint.step, checkpoint.betas, checkpoint.eps, "corrected")
    torch.testing.assert_close(update, lr * feature, rtol=1e-10, atol=1e-14)
    # the reference code's formula is not Adam's update
    less = adam_feature(grad, m, v, checkpoint.step, checkpoint.betas, checkpoint.eps, "less")
    assert not torch.allclose(update, lr * less, rtol=1e-3)
