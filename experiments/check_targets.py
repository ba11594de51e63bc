"""Check that each benchmark target is learnable from its relevant pool records.

    python experiments/check_targets.py [--benchmark experiments/benchmark] [--target NAME ...]
                                        [--records 60] [--output BENCHMARK/checks] [--runs DIR]

For each target: LoRA-train SmolLM2-135M-Instruct (``gradsift warmup``'s trainer: 2 epochs, r=8,
alpha 32, lr 2e-4, batch 8, max length 256, on the whole file) once on ``--records`` of the
target's relevant pool records and once on as many random pool records relevant to no target, then
measure on the target's test set, for the base model and each adapter (the last checkpoint's):

- ``loss``: mean over test items of the mean next-token loss on the answer (gradsift.data.chat);
- ``choice_acc``: for items with ``choices``, how often the choice with the highest total
  log-likelihood is the answer;
- ``exact``: for items with short answers (at most 24 tokens), how often the greedy generation
  equals the answer (case and surrounding whitespace ignored).

A target passes when training on its relevant records lowers the test loss more than training on
the random ones. Results go to ``OUTPUT/<target>.json`` (default ``BENCHMARK/checks/``) and a table
is printed; the runs (about 20 MB each) are kept in ``RUNS/<target>/<arm>-e<epochs>-<hash of its
training records>/`` (default ``$GRADSIFT_CACHE/benchmark-checks``), and a complete run is reused.
"""

from __future__ import annotations

import argparse
import gc
import hashlib
import json
import random
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

import torch  # noqa: E402

from gradsift.config import WarmupConfig  # noqa: E402
from gradsift.data.chat import IGNORE_INDEX, ChatEncoder, collate, per_example_loss  # noqa: E402
from gradsift.training.warmup import Run, warmup  # noqa: E402
from gradsift.utils.files import atomic_write_json  # noqa: E402
from gradsift.utils.models import cache_dir, load_model  # noqa: E402

MODEL = "smollm2-135m"
EVAL_MAX_LENGTH = 512  # long enough for every test item: no answer is cut
SHORT_ANSWER = 24  # tokens: longer answers are not generated


def read_jsonl(path: Path) -> list[dict]:
    return [json.loads(line) for line in Path(path).read_text(encoding="utf-8").splitlines() if line.strip()]


def write_jsonl(path: Path, records: list[dict]) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("".join(json.dumps(r, ensure_ascii=False) + "\n" for r in records), encoding="utf-8")
    return path


def training_sets(benchmark: Path, target: str, count: int, seed: int) -> tuple[list[dict], list[dict]]:
    """(relevant, random): ``count`` of the target's relevant pool records, and ``count`` pool
    records relevant to no target, each a seeded sample in pool order."""
    relevance = json.loads((benchmark / "relevance.json").read_text())
    pool = [r for path in sorted((benchmark / "pool").glob("*.jsonl")) for r in read_jsonl(path)]
    mine = set(relevance[target])
    anyone = {i for ids in relevance.values() for i in ids}
    relevant = [r for r in pool if r["id"] in mine]
    unrelated = [r for r in pool if r["id"] not in anyone]
    rng = random.Random(f"{seed}:{target}")
    pick = lambda rows: [rows[k] for k in sorted(rng.sample(range(len(rows)), min(count, len(rows))))]  # noqa: E731
    return pick(relevant), pick(unrelated)


def train(records: list[dict], folder: Path, seed: int, epochs: int = 2) -> Run:
    """The LoRA run on ``records``, in ``folder-<hash of the records>`` (reused when complete)."""
    text = "".join(json.dumps(r, ensure_ascii=False) + "\n" for r in records)
    folder = folder.with_name(f"{folder.name}-{hashlib.sha256(text.encode()).hexdigest()[:12]}")
    data = write_jsonl(folder / "train.jsonl", records)
    config = WarmupConfig(model=MODEL, train=[data], output=folder / "run", fraction=1.0, epochs=epochs, lora_r=8,
                          lora_alpha=32, learning_rate=2e-4, batch_size=8, micro_batch_size=8, max_length=256,
                          seed=seed, device="cpu")
    return warmup(config)


def load(run: Run | None):
    """(model, tokenizer): the base model, or the base model with the run's last adapter."""
    if run is None:
        model, tokenizer, _ = load_model(MODEL, "cpu")
        return model, tokenizer
    from peft import set_peft_model_state_dict

    model, tokenizer = run.load_model(torch.device("cpu"))  # checks the base model; first adapter
    set_peft_model_state_dict(model, run.checkpoints[-1].adapter_state())
    return model.eval(), tokenizer


@torch.no_grad()
def test_loss(model, encoder: ChatEncoder, tests: list[dict], batch_size: int = 8) -> list[float]:
    encoded = [encoder.encode(r["messages"]) for r in tests]
    order = sorted(range(len(encoded)), key=lambda k: len(encoded[k][0]))
    losses = [0.0] * len(encoded)
    for start in range(0, len(order), batch_size):
        chunk = order[start: start + batch_size]
        batch = collate([encoded[k] for k in chunk], encoder.tokenizer.pad_token_id)
        for k, value in zip(chunk, per_example_loss(model, batch).tolist()):
            losses[k] = value
    return losses


def _prompt_ids(encoder: ChatEncoder, messages: list[dict]) -> list[int]:
    text = encoder._render(messages[:-1], generation_prompt=True)
    return encoder.tokenizer(text, add_special_tokens=False)["input_ids"]


@torch.no_grad()
def choice_scores(model, encoder: ChatEncoder, record: dict) -> list[float]:
    """Total log-likelihood of each choice as the answer (its tokens and the end-of-turn marker).

    The prompt runs once; the choices continue from its key/value cache in one batch."""
    prompt = _prompt_ids(encoder, record["messages"])
    encoded = [encoder.encode(record["messages"][:-1] + [{"role": "assistant", "content": c}])
               for c in record["choices"]]
    if any(ids[: len(prompt)] != prompt for ids, _ in encoded):  # merged across the boundary: score whole
        batch = collate(encoded, encoder.tokenizer.pad_token_id)
        counts = (batch["labels"][:, 1:] != IGNORE_INDEX).sum(1)
        return (-per_example_loss(model, batch) * counts).tolist()
    out = model(input_ids=torch.tensor([prompt]), use_cache=True)
    first = torch.log_softmax(out.logits[0, -1].float(), -1)
    rests = [(ids[len(prompt):], labels[len(prompt):]) for ids, labels in encoded]
    width = max(len(ids) for ids, _ in rests)
    ids = torch.full((len(rests), width), encoder.tokenizer.pad_token_id, dtype=torch.long)
    mask = torch.zeros((len(rests), len(prompt) + width), dtype=torch.long)
    mask[:, : len(prompt)] = 1
    for row, (rest, _) in enumerate(rests):
        ids[row, : len(rest)] = torch.tensor(rest)
        mask[row, len(prompt): len(prompt) + len(rest)] = 1
    cache = out.past_key_values
    cache.batch_repeat_interleave(len(rests))
    logits = model(input_ids=ids, attention_mask=mask, past_key_values=cache, use_cache=True).logits.float()
    scores = []
    for row, (rest, labels) in enumerate(rests):
        logp = torch.cat([first[None], torch.log_softmax(logits[row, : len(rest) - 1], -1)])
        scores.append(sum(float(logp[k, t]) for k, t in enumerate(labels) if t != IGNORE_INDEX))
    return scores


@torch.no_grad()
def greedy(model, encoder: ChatEncoder, records: list[dict], batch_size: int = 16) -> list[str]:
    """Greedy answers, each up to its reference's length + 4 tokens (left-padded batches)."""
    tokenizer = encoder.tokenizer
    stop = tokenizer.convert_tokens_to_ids("<|im_end|>")
    prompts = [_prompt_ids(encoder, r["messages"]) for r in records]
    budgets = [len(tokenizer(r["messages"][-1]["content"], add_special_tokens=False)["input_ids"]) + 4
               for r in records]
    answers = [""] * len(records)
    order = sorted(range(len(records)), key=lambda k: len(prompts[k]))
    for start in range(0, len(order), batch_size):
        chunk = order[start: start + batch_size]
        width = max(len(prompts[k]) for k in chunk)
        ids = torch.full((len(chunk), width), tokenizer.pad_token_id, dtype=torch.long)
        mask = torch.zeros((len(chunk), width), dtype=torch.long)
        for row, k in enumerate(chunk):
            ids[row, width - len(prompts[k]):] = torch.tensor(prompts[k])
            mask[row, width - len(prompts[k]):] = 1
        out = model.generate(input_ids=ids, attention_mask=mask, max_new_tokens=max(budgets[k] for k in chunk),
                             do_sample=False, eos_token_id=stop, pad_token_id=tokenizer.pad_token_id)
        for row, k in enumerate(chunk):
            new = out[row, width:].tolist()
            new = new[: new.index(stop)] if stop in new else new[: budgets[k]]
            answers[k] = tokenizer.decode(new, skip_special_tokens=True).strip()
    return answers


def evaluate(model, tokenizer, tests: list[dict]) -> dict:
    encoder = ChatEncoder(tokenizer, EVAL_MAX_LENGTH)
    losses = test_loss(model, encoder, tests)
    result = {"loss": sum(losses) / len(losses), "n": len(tests)}
    by_subtask: dict[str, list[float]] = {}
    for r, value in zip(tests, losses):
        by_subtask.setdefault(r["subtask"], []).append(value)
    result["loss_by_subtask"] = {s: sum(v) / len(v) for s, v in sorted(by_subtask.items())}
    with_choices = [r for r in tests if r.get("choices")]
    if with_choices:
        hits = 0
        for r in with_choices:
            scores = choice_scores(model, encoder, r)
            hits += r["choices"][max(range(len(scores)), key=scores.__getitem__)] == r["messages"][-1]["content"]
        result["choice_acc"] = hits / len(with_choices)
        result["choice_n"] = len(with_choices)
    short = [r for r in tests
             if len(tokenizer(r["messages"][-1]["content"], add_special_tokens=False)["input_ids"]) <= SHORT_ANSWER]
    if short:
        answers = greedy(model, encoder, short)
        same = lambda a, b: a.strip().casefold() == b.strip().casefold()  # noqa: E731
        result["exact"] = sum(same(a, r["messages"][-1]["content"]) for a, r in zip(answers, short)) / len(short)
        result["exact_n"] = len(short)
        result["examples"] = [{"id": r["id"], "answer": r["messages"][-1]["content"], "generated": a}
                              for r, a in list(zip(short, answers))[:5]]
    return result


def check(benchmark: Path, target: str, records: int, output: Path, seed: int, epochs: int = 2,
          runs_dir: Path | None = None) -> dict:
    started = time.time()
    runs_dir = runs_dir or output / "runs"
    tests = read_jsonl(benchmark / "targets" / target / "test.jsonl")
    relevant, unrelated = training_sets(benchmark, target, records, seed)
    runs = {"relevant": train(relevant, runs_dir / target / f"relevant-e{epochs}", seed, epochs),
            "random": train(unrelated, runs_dir / target / f"random-e{epochs}", seed, epochs)}
    results = {}
    for name, run in [("base", None), *runs.items()]:
        results[name] = evaluate(*load(run), tests)
        gc.collect()  # one model in memory at a time
    summary = {
        "target": target,
        "train_records": {"relevant": len(relevant), "random": len(unrelated)},
        "random_sources": sorted({r["source"] for r in unrelated}),
        "settings": f"smollm2-135m, LoRA r=8 alpha 32 on q,k,v,o, lr 2e-4 linear decay, {epochs} epochs, "
                    "batch 8, max length 256, last checkpoint",
        "results": results,
        "passed": results["relevant"]["loss"] < results["random"]["loss"],
        "seconds": round(time.time() - started),
        "command": f"python experiments/check_targets.py --benchmark {_shown(benchmark)} --target {target} "
                   f"--records {records} --epochs {epochs} --seed {seed}",
    }
    atomic_write_json(output / (f"{target}.json" if epochs == 2 else f"{target}-e{epochs}.json"), summary)
    return summary


def _shown(path: Path) -> str:
    path = Path(path).resolve()
    return str(path.relative_to(ROOT)) if path.is_relative_to(ROOT) else str(path)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--benchmark", type=Path, default=ROOT / "experiments" / "benchmark")
    parser.add_argument("--target", nargs="*", help="targets to check (default: all)")
    parser.add_argument("--records", type=int, default=60, help="training records per arm")
    parser.add_argument("--output", type=Path, help="where results go (default: BENCHMARK/checks)")
    parser.add_argument("--runs", type=Path, default=cache_dir() / "benchmark-checks",
                        help="where the LoRA runs go (default: $GRADSIFT_CACHE/benchmark-checks)")
    parser.add_argument("--epochs", type=int, default=2, help="training epochs (2: the check)")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--threads", type=int, default=2)
    args = parser.parse_args(argv)
    torch.set_num_threads(args.threads)
    output = args.output or args.benchmark / "checks"
    names = args.target or sorted(json.loads((args.benchmark / "relevance.json").read_text()))
    failed = []
    for name in names:
        s = check(args.benchmark, name, args.records, output, args.seed, args.epochs, args.runs)
        r = s["results"]
        cell = lambda m, key: f"{m[key]:.3f}" if key in m else "-"  # noqa: E731
        print(f"\n{name} ({s['seconds']} s): passed={s['passed']}")
        print(f"  {'model':<9} {'loss':>7} {'choice':>7} {'exact':>7}")
        for arm in ("base", "random", "relevant"):
            print(f"  {arm:<9} {r[arm]['loss']:>7.3f} {cell(r[arm], 'choice_acc'):>7} {cell(r[arm], 'exact'):>7}")
        if not s["passed"]:
            failed.append(name)
    if failed:
        print(f"\nfailed: {', '.join(failed)}")
    return 1 if failed else 0


if __name__ == "__main__":
    raise SystemExit(main())
