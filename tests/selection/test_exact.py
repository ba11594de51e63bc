"""``select --method exact``: unprojected LESS scores on a tiny model, checked against cosines computed
here by hand from each example's autograd gradient alone; resuming a killed pass; refusing another
pass's work folder; the command line."""

from __future__ import annotations

import csv
import json
import random
import shutil
from pathlib import Path

import numpy as np
import pytest
import torch
from helpers import chat_records, contents, killed_at, random_text, write_jsonl
from peft import set_peft_model_state_dict
from safetensors.torch import load_file

from gradsift.cli import main
from gradsift.config import SelectConfig, WarmupConfig
from gradsift.data.chat import IGNORE_INDEX, ChatEncoder
from gradsift.selection.methods.exact import Cosines
from gradsift.selection.select import select
from gradsift.training.lora import lora_parameters
from gradsift.training.run import Run
from gradsift.training.warmup import warmup
from gradsift.utils.errors import ConfigError

MAX_LENGTH = 48


@pytest.fixture(scope="module")
def data(tmp_path_factory):
    """A pool with one example whose answer is truncated away; a target of two subtasks with one such example."""
    root = tmp_path_factory.mktemp("exact")
    rng = random.Random(3)
    pool = chat_records(rng, 11, "p")
    pool.insert(6, {"id": "nolabel", "prompt": random_text(rng, 80), "completion": "yes"})
    target = chat_records(rng, 2, "ta", subtask="alpha") + chat_records(rng, 3, "tb", subtask="beta")
    target.insert(3, {"id": "t-nolabel", "prompt": random_text(rng, 80), "completion": "no", "subtask": "beta"})
    return {"root": root, "pool": write_jsonl(root / "pool.jsonl", pool), "target": write_jsonl(root / "target.jsonl", target)}


@pytest.fixture(scope="module")
def run(tiny_model_dir, data):
    return warmup(WarmupConfig(model=str(tiny_model_dir), train=[data["pool"]], output=data["root"] / "run",
                               fraction=1.0, epochs=2, lora_r=4, lora_alpha=8.0, lora_dropout=0.0, learning_rate=1e-2,
                               warmup_ratio=0.1, batch_size=4, micro_batch_size=4, max_length=MAX_LENGTH, seed=0,
                               device="cpu"))


def exact_config(run, data, output, **overrides) -> SelectConfig:
    settings = dict(method="exact", run=run.path, pool=[data["pool"]], target=[data["target"]], output=output,
                    count=3, max_length=MAX_LENGTH, batch_size=3, chunk_size=4, device="cpu")
    return SelectConfig(**(settings | overrides))


# -- the reference, written out here ------------------------------------------------------------------
def loss_alone(model, ids: list[int], labels: list[int]) -> torch.Tensor:
    """Mean next-token cross-entropy over the example's label tokens, the example alone (no padding)."""
    logits = model(input_ids=torch.tensor([ids])).logits[0, :-1].float()
    targets = torch.tensor(labels[1:])
    keep = targets != IGNORE_INDEX
    return torch.nn.functional.cross_entropy(logits[keep], targets[keep])


def adam_by_hand(g, m, v, step, betas, eps, form):
    if form == "less":  # the reference code: no bias correction, eps inside the root, betas 0.9/0.999
        b1, b2 = 0.9, 0.999
        return (b1 * m + (1 - b1) * g) / torch.sqrt(b2 * v + (1 - b2) * g * g + 1e-8)
    b1, b2 = betas
    m_hat = (b1 * m + (1 - b1) * g) / (1 - b1 ** (step + 1))
    v_hat = (b2 * v + (1 - b2) * g * g) / (1 - b2 ** (step + 1))
    return m_hat / (torch.sqrt(v_hat) + eps)


@pytest.fixture(scope="module")
def reference(run, data):
    """For each Adam form: s_ij = sum_c w_c cos(Adam feature of pool i, gradient of target j) over the
    checkpoints, every gradient from autograd on its example alone, with the pool rows' feature norms."""
    model, tokenizer = Run.open(run.path).load_model(torch.device("cpu"))
    model.eval()
    encoder = ChatEncoder(tokenizer, MAX_LENGTH)

    def encoded(path):
        records = [json.loads(line) for line in Path(path).read_text().splitlines()]
        out = []
        for r in records:
            messages = r.get("messages") or [{"role": "user", "content": r["prompt"]},
                                             {"role": "assistant", "content": r["completion"]}]
            ids, labels = encoder.encode(messages)
            out.append((r, ids, labels) if any(lab != IGNORE_INDEX for lab in labels[1:]) else (r, None, None))
        return out

    pool, target = encoded(data["pool"]), encoded(data["target"])
    targets = [t for t in target if t[1] is not None]
    meta = json.loads((run.path / "run.json").read_text())
    lrs = np.array([c["lr"] for c in meta["checkpoints"]])
    weights = lrs / lrs.sum()
    assert abs(weights[0] - weights[1]) > 0.05  # the LR weighting matters here
    names = [n for n, _ in lora_parameters(model)]
    params = [p for _, p in lora_parameters(model)]

    def gradient(ids, labels) -> torch.Tensor:
        grads = torch.autograd.grad(loss_alone(model, ids, labels), params)
        return torch.cat([g.flatten() for g in grads]).double()

    sims = {form: 0.0 for form in ("corrected", "less")}
    norms = {form: [] for form in sims}
    for c, w in zip(meta["checkpoints"], weights):
        folder = run.path / c["name"]
        set_peft_model_state_dict(model, load_file(folder / "adapter_model.safetensors"))
        state = load_file(folder / "optimizer.safetensors")
        m = torch.cat([state[f"exp_avg.{n}"].flatten() for n in names]).double()
        v = torch.cat([state[f"exp_avg_sq.{n}"].flatten() for n in names]).double()
        unit = torch.stack([g / g.norm() for g in (gradient(ids, labels) for _, ids, labels in targets)])
        pool_grads = [gradient(ids, labels) for _, ids, labels in pool if ids is not None]
        for form in sims:
            features = torch.stack([adam_by_hand(g, m, v, c["step"], c["betas"], c["eps"], form) for g in pool_grads])
            norms[form].append(features.norm(dim=1))
            sims[form] = sims[form] + w * (features @ unit.T) / features.norm(dim=1, keepdim=True)
    return {"sims": sims, "norms": norms, "subtasks": [t[0]["subtask"] for t in targets],
            "ok": [i for i, (_, ids, _) in enumerate(pool) if ids is not None], "rows": len(pool),
            "checkpoints": [c["name"] for c in meta["checkpoints"]]}


def by_hand(reference, aggregate: str, form: str = "corrected") -> tuple[np.ndarray, list[str]]:
    """Scores of the scorable pool rows and their closest subtasks, aggregated as the paper says."""
    sims, subtasks = reference["sims"][form], reference["subtasks"]
    names = sorted(set(subtasks))
    means = torch.stack([sims[:, [j for j, s in enumerate(subtasks) if s == name]].mean(1) for name in names], 1)
    scores = {"subtask-mean-max": means.max(1).values, "mean": sims.mean(1), "max": sims.max(1).values}[aggregate]
    return scores.numpy(), [names[k] for k in means.argmax(1).tolist()]


def read_scores(folder: Path) -> list[dict]:
    with open(folder / "scores.csv", newline="") as f:
        return list(csv.DictReader(f))


# -- the scores ---------------------------------------------------------------------------------------
@pytest.mark.parametrize("aggregate, form", [("subtask-mean-max", "corrected"), ("mean", "corrected"),
                                             ("max", "corrected"), ("subtask-mean-max", "less")])
def test_exact_scores_equal_cosines_by_hand(run, data, reference, aggregate, form, tmp_path):
    (sel,) = select(exact_config(run, data, tmp_path / "sel", aggregate=aggregate, adam_form=form))
    ok = reference["ok"]
    expected, closest = by_hand(reference, aggregate, form)
    assert sel.scored.tolist() == [i in ok for i in range(reference["rows"])]
    np.testing.assert_allclose(sel.scores[ok], expected, rtol=1e-4, atol=2e-6)
    assert len(set(np.round(expected, 4))) == len(expected)  # distinct scores: the ranking says something
    assert sel.selected.tolist() == [ok[k] for k in np.argsort(-expected)[:3]]
    # the work folder keeps each checkpoint's cosines and, last, the pool rows' feature norms
    for name, norms in zip(reference["checkpoints"], reference["norms"][form]):
        held = np.load(tmp_path / "sel" / "exact" / f"{name}.npy")
        assert held.shape == (reference["rows"], (2 if aggregate == "subtask-mean-max" else 5) + 1)
        np.testing.assert_allclose(held[ok, -1], norms.numpy(), rtol=1e-4)
        assert not held[[i for i in range(reference["rows"]) if i not in ok]].any()

    rows = read_scores(tmp_path / "sel")
    assert [r["status"] for r in rows] == ["ok" if i in ok else "no_label_tokens" for i in range(len(rows))]
    assert rows[6]["id"] == "nolabel" and rows[6]["score"] == "" and rows[6]["rank"] == ""
    assert [r["subtask"] for i, r in enumerate(rows) if i in ok] == closest
    summary = json.loads((tmp_path / "sel" / "summary.json").read_text())
    assert summary["method"] == "exact" and summary["pool"]["skipped"]["no_label_tokens"] == 1
    assert summary["target_examples"] == {"usable": 5, "skipped": 1, "subtasks": {"alpha": 2, "beta": 3}}
    weights = summary["method_settings"]["checkpoint_weights"]
    assert list(weights) == reference["checkpoints"] and sum(weights.values()) == pytest.approx(1)


def test_exact_in_bfloat16_on_a_cpu_runs_the_gpu_path_close_to_float32(run, data, reference, tmp_path):
    """--model-dtype bfloat16: the model's weights in bf16 (the GPU's path), the feature math in float32;
    the cosines stay near the float32 pass's and the summary says which ran."""
    (sel,) = select(exact_config(run, data, tmp_path / "sel", model_dtype="bfloat16"))
    expected, _ = by_hand(reference, "subtask-mean-max")
    ok = reference["ok"]
    assert not np.allclose(sel.scores[ok], expected, rtol=1e-4, atol=2e-6)  # another pass, not float32's
    np.testing.assert_allclose(sel.scores[ok], expected, atol=0.005)  # scores of 0.08-0.16 here
    assert np.corrcoef(sel.scores[ok], expected)[0, 1] > 0.99
    summary = json.loads((tmp_path / "sel" / "summary.json").read_text())
    assert summary["method_settings"]["model_dtype"] == "bfloat16"


def test_a_zero_feature_has_cosine_zero_not_nan():
    columns = torch.tensor([[1.0, 0.0, 0.0], [0.6, 0.8, 0.0]])
    reducer = Cosines(columns, offsets=[0, 2], numels=[2, 1])
    out = torch.zeros(2, reducer.dim)
    features = torch.tensor([[0.0, 0.0, 0.0], [3.0, 4.0, 12.0]])
    reducer.accumulate(out, 1, features[:, 2:])  # parameters in any order, as the backward pass yields them
    reducer.accumulate(out, 0, features[:, :2])
    rows = reducer.finish(out)
    torch.testing.assert_close(rows, torch.tensor([[0.0, 0.0, 0.0], [3 / 13, 5 / 13, 13.0]]))


# -- resuming and refusing ----------------------------------------------------------------------------
def exact_argv(run, data, output: Path) -> list[str]:
    return ["select", "--method", "exact", "--run", str(run.path), "--pool", str(data["pool"]), "--target",
            str(data["target"]), "--count", "3", "--max-length", str(MAX_LENGTH), "--batch-size", "3",
            "--chunk-size", "4", "--device", "cpu", "--output", str(output)]


@pytest.fixture(scope="module")
def cli_reference(run, data, reference):
    """An uninterrupted `gradsift select --method exact` from the command line: the paper's scores."""
    out = data["root"] / "cli-reference"
    assert main(exact_argv(run, data, out)) == 0
    rows = read_scores(out)
    expected, _ = by_hand(reference, "subtask-mean-max")
    np.testing.assert_allclose([float(rows[i]["score"]) for i in reference["ok"]], expected, rtol=1e-4, atol=2e-6)
    return contents(out)


@pytest.mark.parametrize("point, committed", [
    ("exact:rows-committed@1", 4),  # between chunks
    ("exact:rows-written@5", 16),   # inside the second checkpoint's second chunk: on disk, not committed
])
def test_a_killed_exact_pass_resumes_to_the_same_outputs(run, data, cli_reference, point, committed, tmp_path,
                                                         monkeypatch):
    out = tmp_path / "sel"
    # float32 cosines keep the last bit, which a matrix product's thread count can change: the killed
    # process computes with one thread, as this one (conftest) does
    monkeypatch.setenv("OMP_NUM_THREADS", "1")
    killed_at(point, exact_argv(run, data, out))
    progress = json.loads((out / "exact" / "progress.json").read_text())
    assert sum(progress.values()) == committed and not (out / "summary.json").exists()
    import gradsift.selection.methods.exact as exact

    chunks, real = [], exact.chunk_features
    monkeypatch.setattr(exact, "chunk_features", lambda refs, *a, **k: chunks.append(len(refs)) or real(refs, *a, **k))
    assert main(exact_argv(run, data, out)) == 0
    pool_chunks = [n for n in chunks if n == 4]  # the targets are taken a batch (3) at a time
    assert len(pool_chunks) == (2 * 12 - committed) // 4  # only the chunks not committed were computed
    assert contents(out) == cli_reference


def test_another_pass_in_the_work_folder_is_refused(run, data, cli_reference, tmp_path, monkeypatch):
    out = tmp_path / "sel"
    shutil.copytree(data["root"] / "cli-reference", out)
    # a per-example aggregation needs other columns; another Adam form, other cosines
    with pytest.raises(ConfigError, match=r"differs in columns\)") as info:
        select(exact_config(run, data, out, aggregate="mean"))
    assert "\n" not in str(info.value) and str(out / "exact") in str(info.value)
    with pytest.raises(ConfigError, match=r"differs in adam_form\)"):
        select(exact_config(run, data, out, adam_form="less"))
    with pytest.raises(ConfigError, match=r"differs in max_length\)"):
        select(exact_config(run, data, out, max_length=40))
    with pytest.raises(ConfigError, match=r"differs in model_dtype\)"):
        select(exact_config(run, data, out, model_dtype="bfloat16"))
    # the same pass with another count reads the committed cosines again: no model is loaded
    import gradsift.selection.methods.exact as exact

    monkeypatch.setattr(exact, "load_features_model", lambda *a: pytest.fail("the finished pass was run again"))
    (sel,) = select(exact_config(run, data, out, count=5))
    assert sel.count == 5 and read_scores(out)[0]["score"] == read_scores(data["root"] / "cli-reference")[0]["score"]
    # without --max-length the pass truncates as the run did (as its stores): the same pass again
    (sel,) = select(exact_config(run, data, out, count=5, max_length=None))
    assert sel.count == 5


def test_cli_exact_needs_a_run(data, tmp_path, capsys):
    assert main(["select", "--method", "exact", "--pool", str(data["pool"]), "--target", str(data["target"]),
                 "--output", str(tmp_path / "o"), "--count", "2"]) == 2
    assert "--run" in capsys.readouterr().err
    assert not (tmp_path / "o").exists()
