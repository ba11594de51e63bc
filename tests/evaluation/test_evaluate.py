"""Evaluate: answer-token loss, choice accuracy and greedy-generation accuracy against unbatched
references computed here with torch, answer extraction, adapters, and the output files."""

from __future__ import annotations

import json
import shutil

import pytest
import torch
from helpers import write_jsonl, write_parquet
from transformers import AutoModelForCausalLM, AutoTokenizer, LlamaForCausalLM

from gradsift.config import EvaluateConfig
from gradsift.data.answers import extract_answer, normalize_answer
from gradsift.data.chat import ChatEncoder, collate, label_count, per_example_loss
from gradsift.evaluation.evaluate import _score_choices, _with_answer, evaluate
from gradsift.utils.errors import ConfigError, DataError
from gradsift.utils.models import load_model

EXAMPLE_FIELDS = {"file", "line", "id", "subtask", "status", "label_tokens", "loss", "kind", "prediction",
                  "reference", "correct"}
SUMMARY_FIELDS = {"loss", "accuracy", "examples", "scored", "accuracy_examples", "skipped", "by_subtask", "model",
                  "adapter", "data", "max_length", "max_new_tokens", "bad_records", "file_sha256", "checksums"}


def chat(user: str, assistant: str, **extra) -> dict:
    return {"messages": [{"role": "user", "content": user}, {"role": "assistant", "content": assistant}], **extra}


@pytest.fixture(scope="module")
def tokenizer(tiny_model_dir):
    return AutoTokenizer.from_pretrained(str(tiny_model_dir))


@pytest.fixture(scope="module")
def base_model(tiny_model_dir):
    return AutoModelForCausalLM.from_pretrained(str(tiny_model_dir), dtype=torch.float32).eval()


@pytest.fixture(scope="module")
def adapter_dir(tiny_model_dir, tmp_path_factory):
    """A LoRA adapter with non-zero B, so that it changes the model's outputs."""
    from peft import LoraConfig, get_peft_model

    torch.manual_seed(1)
    base = AutoModelForCausalLM.from_pretrained(str(tiny_model_dir), dtype=torch.float32)
    model = get_peft_model(base, LoraConfig(r=4, lora_alpha=8, target_modules=["q_proj", "v_proj"],
                                            lora_dropout=0.5, task_type="CAUSAL_LM"))
    for name, p in model.named_parameters():
        if "lora_B" in name:
            torch.nn.init.normal_(p, std=0.5)
    folder = tmp_path_factory.mktemp("adapter")
    model.save_pretrained(folder)
    return folder


def run(model_dir, data, output, **overrides) -> tuple[dict, list[dict]]:
    settings = dict(model=str(model_dir), data=list(data), output=output, batch_size=8, max_length=64,
                    max_new_tokens=0, device="cpu")
    settings.update(overrides)
    summary = evaluate(EvaluateConfig(**settings))
    assert json.loads((output / "summary.json").read_text()) == summary
    rows = [json.loads(line) for line in (output / "examples.jsonl").read_text().splitlines()]
    return summary, rows


# -- unbatched references --------------------------------------------------------------------------

def render(tokenizer, messages, generation_prompt=False) -> list[int]:
    text = tokenizer.apply_chat_template(messages, tokenize=False, add_generation_prompt=generation_prompt)
    return tokenizer(text, add_special_tokens=False)["input_ids"]


def answer_logprobs(model, tokenizer, messages) -> torch.Tensor:
    """Log-probabilities of the last assistant turn's tokens (its content and end-of-turn marker)."""
    prompt, full = render(tokenizer, messages[:-1], True), render(tokenizer, messages)
    assert full[: len(prompt)] == prompt
    with torch.no_grad():
        logp = torch.log_softmax(model(torch.tensor([full])).logits[0].double(), -1)
    positions = torch.arange(len(prompt), len(full))
    return logp[positions - 1, torch.tensor(full)[positions]]


def greedy(model, tokenizer, messages, steps: int) -> str:
    """Greedy decoding one token at a time, recomputing the whole sequence each step."""
    ids, out = render(tokenizer, messages[:-1], True), []
    for _ in range(steps):
        with torch.no_grad():
            token = int(model(torch.tensor([ids + out])).logits[0, -1].argmax())
        if token == tokenizer.eos_token_id:
            break
        out.append(token)
    return tokenizer.decode(out, skip_special_tokens=True)


# -- answers ---------------------------------------------------------------------------------------

@pytest.mark.parametrize("text, answer", [
    ("Let's think. A is false, so B holds. So the answer is (B).", "(B)"),
    ("the answer is 3. Then THE ANSWER IS: 1,000.\nQ: next question", "1,000"),
    ("Step one.\nStep two.\n\n  (C)  \n\n", "(C)"),
    ("42", "42"),
    ("", ""),
])
def test_extract_answer(text, answer):
    assert extract_answer(text) == answer


@pytest.mark.parametrize("text, normal", [
    ("(A)", "a"), ("A", "a"), (" 42. ", "42"), ("1,000", "1000"), ("$1,234,567.50", "1234567.50"),
    ('"Hello   World!"', "hello world"), ("[-5]", "-5"), ("a", "a"), ("(1,2)", "1,2"), (") ] }", ") ] }"),
])
def test_normalize_answer(text, normal):
    assert normalize_answer(text) == normal


def test_cot_answer_matches_reference_letter():
    prediction = "B is implied by the premises.\nSo the answer is (B)."
    assert normalize_answer(extract_answer(prediction)) == normalize_answer(extract_answer("B"))
    assert normalize_answer(extract_answer("The answer is 1,000.")) == normalize_answer("1000")


# -- loss ------------------------------------------------------------------------------------------

def test_answer_token_loss_equals_unbatched_cross_entropy(tiny_model_dir, tokenizer, base_model, tmp_path):
    records = [chat("the cat sat on the mat", "yes"), chat("one two", "three four five six seven plus"),
               chat(" ".join(["dog"] * 80), "no"),  # its answer is truncated away at 64 tokens
               chat("red blue green one two three four five", "hello world")]
    path = write_jsonl(tmp_path / "test.jsonl", records)
    summary, rows = run(tiny_model_dir, [path], tmp_path / "out")

    expected = {}
    for k in (0, 1, 3):
        logp = answer_logprobs(base_model, tokenizer, records[k]["messages"])
        assert rows[k]["label_tokens"] == len(logp) and rows[k]["status"] == "ok"
        expected[k] = float(-logp.mean())
        assert rows[k]["loss"] == pytest.approx(expected[k], rel=1e-5)
    assert summary["loss"] == pytest.approx(sum(expected.values()) / 3, rel=1e-5)
    assert rows[2]["status"] == "no_label_tokens" and rows[2]["loss"] is None and rows[2]["label_tokens"] == 0
    assert summary["scored"] == 3 and summary["skipped"]["no_label_tokens"] == 1
    # max_new_tokens=0: records without choices get no accuracy judgement
    assert summary["accuracy"] is None and summary["accuracy_examples"] == 0
    assert all(r["kind"] is None and r["correct"] is None for r in rows)


# -- choices ---------------------------------------------------------------------------------------

def test_choice_is_argmax_of_summed_answer_log_likelihood(tiny_model_dir, tokenizer, base_model, tmp_path):
    records = [chat("is the cat red", "yes", choices=["yes", "no"]),
               chat("one plus one equals", " two ", choices=["one", "two", "three four five"]),
               chat("hello world", "cat", choices=["cat", "dog", "mat", "the cat sat"]),
               chat("true or false", "false", choices=["true", "false", "yes no", "blue"]),
               chat("translate french", "hello", choices=["hello world", "hello"])]
    path = write_jsonl(tmp_path / "mc.jsonl", records)
    summary, rows = run(tiny_model_dir, [path], tmp_path / "out", max_new_tokens=5)

    correct = []
    for record, row in zip(records, rows):
        user = record["messages"][:1]
        scores = [float(answer_logprobs(base_model, tokenizer, [*user, {"role": "assistant", "content": c}]).sum())
                  for c in record["choices"]]
        best = max(range(len(scores)), key=scores.__getitem__)
        assert row["kind"] == "choice" and row["prediction"] == record["choices"][best]
        assert row["reference"] == record["messages"][1]["content"].strip()
        assert row["correct"] == (record["choices"][best] == row["reference"])
        correct.append(row["correct"])
    assert True in correct and False in correct  # both outcomes are exercised
    assert summary["accuracy"] == pytest.approx(sum(correct) / len(correct))
    assert summary["accuracy_examples"] == len(records)


def test_answer_matching_no_choice_is_a_data_error_or_skipped(tiny_model_dir, tmp_path):
    path = write_jsonl(tmp_path / "mc.jsonl", [chat("the cat", "yes", choices=["yes", "no"]),
                                               chat("the dog", "maybe", choices=["yes", "no"])])
    with pytest.raises(DataError, match=rf"{path}:2: no choice equals the answer 'maybe'"):
        run(tiny_model_dir, [path], tmp_path / "out")
    summary, rows = run(tiny_model_dir, [path], tmp_path / "out", skip_bad_records=True)
    assert [r["line"] for r in rows] == [1]
    assert summary["skipped"]["bad_records"] == 1 and summary["bad_records"][0]["line"] == 2


# -- generation ------------------------------------------------------------------------------------

def test_generation_is_greedy_and_judged_by_normalised_answer(tiny_model_dir, tokenizer, base_model, tmp_path):
    prompts = ["the cat", "one two three four five six seven add plus minus equals answer question"]
    texts = [greedy(base_model, tokenizer, chat(p, "")["messages"], 6) for p in prompts]
    # the first reference is what greedy decoding says, dressed as a chain of thought; the second is not
    records = [chat(prompts[0], f"Let me think.\nSo the answer is {texts[0].upper()}."), chat(prompts[1], "purple")]
    path = write_jsonl(tmp_path / "gen.jsonl", records)
    summary, rows = run(tiny_model_dir, [path], tmp_path / "out", max_new_tokens=6)

    assert [r["prediction"] for r in rows] == texts  # left-padded batch == one sequence at a time
    assert [r["kind"] for r in rows] == ["generate", "generate"]
    assert [r["correct"] for r in rows] == [True, False]
    assert summary["accuracy"] == 0.5 and summary["accuracy_examples"] == 2


# -- adapters --------------------------------------------------------------------------------------

def test_adapter_changes_the_loss_as_peft_computes_it(tiny_model_dir, tokenizer, adapter_dir, tmp_path):
    from peft import PeftModel

    records = [chat("the cat sat", "on the mat"), chat("one two three", "four five")]
    path = write_jsonl(tmp_path / "test.jsonl", records)
    plain, _ = run(tiny_model_dir, [path], tmp_path / "plain")
    adapted, rows = run(tiny_model_dir, [path], tmp_path / "adapted", adapter=adapter_dir)

    base = AutoModelForCausalLM.from_pretrained(str(tiny_model_dir), dtype=torch.float32)
    model = PeftModel.from_pretrained(base, str(adapter_dir)).eval()
    expected = [float(-answer_logprobs(model, tokenizer, r["messages"]).mean()) for r in records]
    assert [r["loss"] for r in rows] == pytest.approx(expected, rel=1e-5)
    assert abs(adapted["loss"] - plain["loss"]) > 1e-3
    assert adapted["adapter"] == str(adapter_dir) and plain["adapter"] is None


def test_missing_or_foreign_adapter_is_a_config_error(tiny_model_dir, adapter_dir, tmp_path):
    path = write_jsonl(tmp_path / "test.jsonl", [chat("the cat", "yes")])
    with pytest.raises(ConfigError, match="does not exist"):
        run(tiny_model_dir, [path], tmp_path / "out", adapter=tmp_path / "nowhere")
    partial = tmp_path / "partial"
    partial.mkdir()
    shutil.copy(adapter_dir / "adapter_config.json", partial)
    with pytest.raises(ConfigError, match="has no adapter_model.safetensors"):
        run(tiny_model_dir, [path], tmp_path / "out", adapter=partial)

    other = tmp_path / "other-model"  # same architecture and tokenizer, other weights
    shutil.copytree(tiny_model_dir, other)
    torch.manual_seed(7)
    LlamaForCausalLM(LlamaForCausalLM.config_class.from_pretrained(str(other))).save_pretrained(other)
    with pytest.raises(ConfigError, match="was trained on"):
        run(other, [path], tmp_path / "out", adapter=adapter_dir)


# -- output files ----------------------------------------------------------------------------------

def test_output_files_have_every_field(tiny_model_dir, adapter_dir, tmp_path):
    jsonl = write_jsonl(tmp_path / "a.jsonl", [chat("the cat", "yes", choices=["yes", "no"], subtask="mc", id="q1"),
                                               chat("one two", "three", subtask="gen")])
    parquet = write_parquet(tmp_path / "b.parquet", [chat("hello", "world", choices=["world", "french"], subtask="mc"),
                                                     chat(" ".join(["dog"] * 80), "no", subtask="gen")])
    summary, rows = run(tiny_model_dir, [jsonl, parquet], tmp_path / "out", adapter=adapter_dir, max_new_tokens=3)

    assert set(summary) == SUMMARY_FIELDS
    assert summary["examples"] == 4 and summary["scored"] == 3 and summary["accuracy_examples"] == 3
    assert summary["skipped"] == {"no_label_tokens": 1, "bad_records": 0, "choices_truncated": 0,
                                  "non_finite_loss": 0}
    assert summary["data"] == [str(jsonl.resolve()), str(parquet.resolve())]
    assert (summary["model"], summary["max_length"], summary["max_new_tokens"]) == (str(tiny_model_dir), 64, 3)
    assert set(summary["by_subtask"]) == {"mc", "gen"}
    assert summary["by_subtask"]["mc"]["examples"] == 2 and summary["by_subtask"]["gen"]["examples"] == 2
    assert summary["by_subtask"]["gen"]["loss"] == pytest.approx(rows[1]["loss"])
    assert summary["by_subtask"]["gen"]["accuracy"] == float(rows[1]["correct"])

    assert all(set(r) == EXAMPLE_FIELDS for r in rows)
    assert [(r["file"], r["line"]) for r in rows] == [(str(jsonl.resolve()), 1), (str(jsonl.resolve()), 2),
                                                      (str(parquet.resolve()), 1), (str(parquet.resolve()), 2)]
    assert rows[0]["id"] == "q1" and rows[0]["subtask"] == "mc"
    assert [r["kind"] for r in rows] == ["choice", "generate", "choice", None]
    assert rows[3]["status"] == "no_label_tokens" and rows[3]["correct"] is None
    assert rows[2]["reference"] == "world" and rows[2]["prediction"] in ("world", "french")


def test_choice_cut_by_truncation_is_not_judged(tiny_model_dir, tmp_path):
    # the answer fits in 64 tokens, the long choice does not: comparing what is left of it would be unfair
    record = chat(" ".join(["cat"] * 40), "yes", choices=["yes", " ".join(["dog"] * 30)])
    summary, rows = run(tiny_model_dir, [write_jsonl(tmp_path / "mc.jsonl", [record])], tmp_path / "out")
    assert rows[0]["status"] == "choices_truncated" and rows[0]["correct"] is None and rows[0]["loss"] is not None
    assert summary["skipped"]["choices_truncated"] == 1 and summary["accuracy"] is None


def test_shared_prompt_choice_scores_equal_separate_passes(tiny_model_dir):
    """Many choices run the prompt once and share its cache: each choice's loss and label count must
    equal those of its own full pass."""
    model, tokenizer, _ = load_model(str(tiny_model_dir))
    encoder = ChatEncoder(tokenizer, 64)
    messages = [{"role": "user", "content": "the cat sat on the"}, {"role": "assistant", "content": "mat"}]
    choices = ["mat", "red mat", "dog", "one two three four", "mat"]
    with torch.inference_mode():
        shared = _score_choices(model, messages, choices, encoder, tokenizer.pad_token_id, "cpu")
        for choice, got in zip(choices, shared):
            ids, labels = encoder.encode(_with_answer(messages, choice))
            alone = per_example_loss(model, collate([(ids, labels)], tokenizer.pad_token_id)).item()
            assert got[0] == pytest.approx(alone, abs=1e-5) and got[1] == label_count(labels)
