"""Evaluate: loss and accuracy of a model, optionally with a LoRA adapter, on held-out test records.

- **loss**: each example's mean loss over its answer (assistant) tokens, averaged over examples.
- **accuracy**: a record with ``choices`` (a list of strings) is right when the choice with the
  highest summed log-likelihood, put in place of the record's last assistant message, is the one
  equal to that message. Any other record is answered by greedy generation and right when the
  ``answer_key`` (``gradsift.data.answers``) of the generation and of the reference agree.

Writes ``OUTPUT/summary.json`` (loss, accuracy, counts, per-subtask results, settings) and
``OUTPUT/examples.jsonl`` (one row per example in input order: file, line, id, subtask, status,
label_tokens, loss, kind, prediction, reference, correct).
"""

from __future__ import annotations

import hashlib
import json
import math
from dataclasses import asdict, dataclass
from pathlib import Path

import torch
from tqdm.auto import tqdm

from gradsift.config import EvaluateConfig
from gradsift.data.answers import answer_key
from gradsift.data.chat import IGNORE_INDEX, ChatEncoder, collate, label_count, per_example_loss
from gradsift.data.index import index_examples
from gradsift.data.records import BadRecord, ExampleRef, print_skips, read_messages, read_record_bytes, to_messages
from gradsift.utils.errors import ConfigError, DataError
from gradsift.utils.files import atomic_write_bytes, atomic_write_json, read_json
from gradsift.utils.locks import folder_lock
from gradsift.utils.models import ModelInfo, load_model, model_fingerprint, pick_device

# -- records ---------------------------------------------------------------------------------------

@dataclass
class _Example:
    """One test example and, as evaluation proceeds, its results."""

    ref: ExampleRef
    reference: str  # the record's last assistant message
    choices: list[str] | None  # None: judged by generation
    target: int | None = None  # index of the correct choice
    prompted: bool = True  # whether a message precedes the answer: generation needs a prompt
    answer_is_choice: bool = False  # the record's answer is its correct choice verbatim: one pass gives both
    status: str = "ok"
    loss: float | None = None
    kind: str | None = None
    prediction: str | None = None
    correct: bool | None = None

    def row(self) -> dict:
        r = self.ref
        return {"file": r.file, "line": r.line, "id": r.id, "subtask": r.subtask, "status": self.status,
                "label_tokens": r.label_tokens, "loss": self.loss, "kind": self.kind, "prediction": self.prediction,
                "reference": self.reference, "correct": self.correct}


def _last_assistant(messages: list[dict]) -> int:
    return max(k for k, m in enumerate(messages) if m["role"] == "assistant")


def _with_answer(messages: list[dict], answer: str) -> list[dict]:
    """The conversation with ``answer`` in place of its last assistant message."""
    last = _last_assistant(messages)
    return [*messages[:last], {"role": "assistant", "content": answer}, *messages[last + 1:]]


def _read_example(ref: ExampleRef) -> _Example:
    """The example's reference answer and choices; ValueError when no choice is that answer."""
    record = json.loads(read_record_bytes(ref))
    messages = to_messages(record)
    last = _last_assistant(messages)
    reference = messages[last]["content"]
    choices = record.get("choices")
    if choices is None:
        return _Example(ref, reference, None, prompted=last > 0)
    if not isinstance(choices, list) or not choices or not all(isinstance(c, str) and c.strip() for c in choices):
        raise ValueError("'choices' must be a non-empty list of non-empty strings")
    matching = [k for k, c in enumerate(choices) if c.strip() == reference.strip()]
    if not matching:
        raise ValueError(f"no choice equals the answer {reference.strip()[:80]!r} (choices: {choices})")
    return _Example(ref, choices[matching[0]], choices, matching[0], answer_is_choice=choices[matching[0]] == reference)


def _read_examples(config: EvaluateConfig, encoder: ChatEncoder):
    refs, bad, files = index_examples(config.data, encoder, config.skip_bad_records)
    examples = []
    for ref in refs:
        try:
            examples.append(_read_example(ref))
        except ValueError as e:
            if not config.skip_bad_records:
                raise DataError(ref.file, ref.line, str(e)) from None
            bad.append(BadRecord(ref.file, ref.line, str(e)))
    order = {f.path: k for k, f in enumerate(files)}
    bad.sort(key=lambda b: (order[b.file], b.line))
    for ex in examples:
        if ex.ref.label_tokens == 0:
            ex.status = "no_label_tokens"  # never scored nor judged: its answer was truncated away
    print_skips("evaluate", bad, sum(ex.status == "no_label_tokens" for ex in examples),
                f"{config.output}/summary.json")
    return examples, bad, files


# -- model -----------------------------------------------------------------------------------------

def _load_adapter(base, adapter: Path, info: ModelInfo):
    """``base`` with the peft adapter in ``adapter``, checked to be trained on this base model."""
    from peft import PeftModel

    adapter = Path(adapter)
    if not adapter.is_dir():
        raise ConfigError(f"adapter folder {adapter} does not exist")
    for name in ("adapter_config.json", "adapter_model.safetensors"):
        if not (adapter / name).is_file():
            raise ConfigError(f"adapter folder {adapter} has no {name} "
                              "(expected a peft adapter, e.g. from `gradsift train`)")
    try:
        recorded = read_json(adapter / "adapter_config.json").get("base_model_name_or_path")
    except (ValueError, AttributeError) as e:
        raise ConfigError(f"{adapter}/adapter_config.json is not a peft adapter config: {e}") from None
    # The recorded base can be checked only when it is a model folder on this machine; the same path
    # needs no hashing.
    base_dir = Path(recorded) if recorded else None
    if (base_dir is not None and (base_dir / "config.json").is_file()
            and base_dir.resolve() != Path(info.path).resolve() and model_fingerprint(base_dir) != info.fingerprint):
        raise ConfigError(f"adapter {adapter} was trained on {recorded}, not on model {info.name!r}")
    try:
        return PeftModel.from_pretrained(base, str(adapter))
    except torch.OutOfMemoryError:
        raise
    except (ValueError, RuntimeError, KeyError) as e:  # unknown target modules, tensor size mismatch
        problem = str(e).strip().splitlines()[0]
        raise ConfigError(f"adapter {adapter} does not fit model {info.name!r}: {problem}") from None


def _eos_ids(model, tokenizer) -> list[int]:
    ids = model.generation_config.eos_token_id
    ids = [ids] if isinstance(ids, int) else list(ids or [])
    if tokenizer.eos_token_id is not None:
        ids.append(tokenizer.eos_token_id)
    return sorted(set(ids))


# -- measurement -----------------------------------------------------------------------------------

def _comparable(ids: list[int], labels: list[int], encoder: ChatEncoder) -> bool:
    """Whether a choice can be compared with the others: not cut at max_length, some label left."""
    return len(ids) < encoder.max_length and label_count(labels) > 0


def _score_batch(model, jobs, examples, encoder: ChatEncoder, pad_id: int, device) -> list[tuple[float, int] | None]:
    """(mean loss, label tokens) of each (example, choice) job; choice None is the record itself.
    None for a choice truncated at max_length (or left with no label token): it cannot be compared."""
    messages = {i: read_messages(examples[i].ref) for i in {i for i, _ in jobs}}
    encoded = [encoder.encode(messages[i] if c is None else _with_answer(messages[i], examples[i].choices[c]))
               for i, c in jobs]
    live = [k for k, ((ids, labels), (_, c)) in enumerate(zip(encoded, jobs)) if c is None or _comparable(ids, labels, encoder)]
    out: list[tuple[float, int] | None] = [None] * len(jobs)
    if live:
        batch = {n: t.to(device) for n, t in collate([encoded[k] for k in live], pad_id).items()}
        for k, loss in zip(live, per_example_loss(model, batch).tolist()):
            out[k] = (loss, label_count(encoded[k][1]))
    return out


def _generate_batch(model, tokenizer, refs: list[ExampleRef], eos: list[int], max_new_tokens: int,
                    device) -> list[str]:
    """Greedy continuations of each example's conversation up to its last assistant message."""
    prompts = []
    for messages in map(read_messages, refs):
        prompts.append(tokenizer.apply_chat_template(messages[:_last_assistant(messages)], tokenize=False,
                                                     add_generation_prompt=True))
    # add_special_tokens=False: the template renders special tokens itself, as in ChatEncoder
    enc = tokenizer(prompts, add_special_tokens=False, padding=True, padding_side="left", return_tensors="pt")
    enc = enc.to(device)
    out = model.generate(input_ids=enc["input_ids"], attention_mask=enc["attention_mask"],
                         max_new_tokens=max_new_tokens)
    texts = []
    for row in out[:, enc["input_ids"].shape[1]:].tolist():
        end = next((k for k, t in enumerate(row) if t in eos), len(row))
        texts.append(tokenizer.decode(row[:end], skip_special_tokens=True))
    return texts


SHARED_PREFIX_CHOICES = 3  # from this many choices on, the prompt is run once and its cache shared


def _score_choices(model, messages: list[dict], choices: list[str], encoder: ChatEncoder, pad_id: int,
                   device) -> list[tuple[float, int] | None]:
    """(mean loss, label tokens) of each choice as the answer, as ``_score_batch`` gives them, with the
    prompt run once: its key/value cache is shared by every choice's continuation (a 12-way choice
    costs about two passes over the prompt, not twelve). None for a choice cut at max_length."""
    encoded = [encoder.encode(_with_answer(messages, c)) for c in choices]
    live = [k for k, (ids, labels) in enumerate(encoded) if _comparable(ids, labels, encoder)]
    out: list[tuple[float, int] | None] = [None] * len(choices)
    if not live:
        return out
    seqs = [encoded[k] for k in live]
    first_label = min(next(t for t in range(1, len(labels)) if labels[t] != IGNORE_INDEX) for _, labels in seqs)
    common = next((t for t in range(min(len(ids) for ids, _ in seqs)) if len({ids[t] for ids, _ in seqs}) > 1),
                  min(len(ids) for ids, _ in seqs))
    shared = min(common, first_label)  # every labelled token comes after the shared prompt
    prompt = model(input_ids=torch.tensor([seqs[0][0][:shared]], device=device), use_cache=True)
    cache = prompt.past_key_values
    cache.batch_repeat_interleave(len(seqs))
    rest = {n: t.to(device) for n, t in collate([(ids[shared:], labels[shared:]) for ids, labels in seqs], pad_id).items()}
    mask = torch.cat([torch.ones(len(seqs), shared, dtype=torch.long, device=device), rest["attention_mask"]], 1)
    logits = model(input_ids=rest["input_ids"], attention_mask=mask, past_key_values=cache).logits
    # token j of the continuation is predicted at position j-1; the first, at the prompt's last position
    logits = torch.cat([prompt.logits[:, -1:].expand(len(seqs), 1, -1), logits[:, :-1]], 1)
    token_loss = torch.nn.functional.cross_entropy(logits.float().transpose(1, 2), rest["labels"],
                                                   ignore_index=IGNORE_INDEX, reduction="none")
    counts = (rest["labels"] != IGNORE_INDEX).sum(1)
    for k, loss, n in zip(live, (token_loss.sum(1) / counts).tolist(), counts.tolist()):
        out[k] = (loss, n)
    return out


def _batches(jobs: list, size: int) -> list[list]:
    return [jobs[k: k + size] for k in range(0, len(jobs), size)]


def _mean(values: list[float]) -> float | None:
    return sum(values) / len(values) if values else None


def _results(examples: list[_Example]) -> dict:
    return {"examples": len(examples),
            "loss": _mean([e.loss for e in examples if e.loss is not None]),
            "accuracy": _mean([float(e.correct) for e in examples if e.correct is not None])}


def evaluate(config: EvaluateConfig) -> dict:
    """Measure loss and accuracy on ``config.data``, write summary.json and examples.jsonl, return the summary."""
    with folder_lock(config.output):
        return _evaluate(config)


def _evaluate(config: EvaluateConfig) -> dict:
    from transformers import GenerationConfig

    if config.batch_size < 1 or config.max_length < 2 or config.max_new_tokens < 0:
        raise ConfigError("batch_size must be >= 1, max_length >= 2 and max_new_tokens >= 0")
    device = pick_device(config.device)
    base, tokenizer, info = load_model(config.model, device)
    eos = _eos_ids(base, tokenizer)
    # Plain greedy decoding: the model's own generation defaults (sampling, penalties) do not apply.
    base.generation_config = GenerationConfig(do_sample=False, eos_token_id=eos, pad_token_id=tokenizer.pad_token_id)
    model = _load_adapter(base, config.adapter, info) if config.adapter is not None else base  # in eval mode
    encoder = ChatEncoder(tokenizer, config.max_length)
    examples, bad, files = _read_examples(config, encoder)

    usable = [i for i, e in enumerate(examples) if e.status == "ok"]
    # Variants of one example stay together; sorting by length keeps padding small.
    # The record as it is gives its loss; when its answer is its correct choice verbatim, that choice's
    # pass is the same sequence and gives the loss too (a third fewer passes for yes/no questions).
    many = [i for i in usable if len(examples[i].choices or []) >= SHARED_PREFIX_CHOICES]
    score_jobs = [(i, c) for i in usable for c in [*([] if examples[i].answer_is_choice else [None]),
                                                      *([] if i in many else range(len(examples[i].choices or [])))]]
    score_jobs.sort(key=lambda job: examples[job[0]].ref.tokens)
    generate_jobs = [i for i in usable
                     if examples[i].choices is None and examples[i].prompted and config.max_new_tokens]
    generate_jobs.sort(key=lambda i: examples[i].ref.tokens)
    batches = _batches(score_jobs, config.batch_size), _batches(generate_jobs, config.batch_size)
    bar = tqdm(total=len(batches[0]) + len(many) + len(batches[1]), desc="evaluate", unit="batch")

    scores: dict[int, list[float | None]] = {i: [None] * len(examples[i].choices or []) for i in usable}
    autocast = torch.autocast("cuda", dtype=torch.bfloat16, enabled=device.type == "cuda")
    def take(i: int, c: int | None, result: tuple[float, int] | None) -> None:
        """A scoring pass's result for example i: choice c's score, and the loss where it is one."""
        if c is None:
            examples[i].loss = result[0]
        elif result is not None:
            # summed log-likelihood of the label tokens; in a multi-turn record the earlier
            # assistant turns add the same amount to every choice
            scores[i][c] = -result[0] * result[1]
            if c == examples[i].target and examples[i].answer_is_choice:
                examples[i].loss = result[0]

    with torch.inference_mode(), autocast:
        for jobs in batches[0]:
            for (i, c), result in zip(jobs, _score_batch(model, jobs, examples, encoder, tokenizer.pad_token_id, device)):
                take(i, c, result)
            bar.update()
        for i in many:
            ex = examples[i]
            results = _score_choices(model, read_messages(ex.ref), ex.choices, encoder, tokenizer.pad_token_id, device)
            for c, result in enumerate(results):
                take(i, c, result)
            bar.update()
        # a correct choice cut at max_length is not scored as a choice, but the record's loss still counts
        missing = [(i, None) for i in usable if examples[i].loss is None]
        for jobs in _batches(missing, config.batch_size):
            for (i, c), result in zip(jobs, _score_batch(model, jobs, examples, encoder, tokenizer.pad_token_id, device)):
                take(i, c, result)
        for members in batches[1]:
            texts = _generate_batch(model, tokenizer, [examples[i].ref for i in members], eos,
                                    config.max_new_tokens, device)
            for i, text in zip(members, texts):
                ex = examples[i]
                ex.kind, ex.prediction = "generate", text
                ex.correct = answer_key(text) == answer_key(ex.reference)
            bar.update()
    bar.close()

    for i in usable:
        ex = examples[i]
        if ex.choices is None:
            continue
        ex.kind = "choice"
        if None in scores[i]:
            ex.status = "choices_truncated"  # the choices would be compared on what truncation left of them
            continue
        best = max(range(len(ex.choices)), key=scores[i].__getitem__)  # ties: the first choice
        ex.prediction, ex.correct = ex.choices[best], best == ex.target

    for i, ex in enumerate(examples):  # a NaN or infinite loss (a damaged model) is counted, never averaged
        if any(v is not None and not math.isfinite(v) for v in [ex.loss, *scores.get(i, [])]):
            ex.status, ex.loss, ex.prediction, ex.correct = "non_finite_loss", None, None, None
    statuses = [e.status for e in examples]
    subtasks = dict.fromkeys(e.ref.subtask for e in examples)
    summary = {
        **_results(examples),
        "scored": sum(e.loss is not None for e in examples),
        "accuracy_examples": sum(e.correct is not None for e in examples),
        "skipped": {"no_label_tokens": statuses.count("no_label_tokens"), "bad_records": len(bad),
                    "choices_truncated": statuses.count("choices_truncated"),
                    "non_finite_loss": statuses.count("non_finite_loss")},
        "by_subtask": {s: _results([e for e in examples if e.ref.subtask == s]) for s in subtasks},
        "model": config.model,
        "adapter": str(config.adapter) if config.adapter is not None else None,
        "data": [f.path for f in files],
        "file_sha256": {f.path: f.sha256 for f in files},
        "max_length": config.max_length,
        "max_new_tokens": config.max_new_tokens,
        "bad_records": [asdict(b) for b in bad],
    }
    output = Path(config.output)
    rows = b"".join(json.dumps(e.row(), ensure_ascii=False).encode() + b"\n" for e in examples)
    summary["checksums"] = {"examples.jsonl": hashlib.sha256(rows).hexdigest()}
    atomic_write_bytes(output / "examples.jsonl", rows)
    atomic_write_json(output / "summary.json", summary)  # last: its presence says the evaluation is whole
    return summary
