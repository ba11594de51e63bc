"""Data: record formats, assistant-only labels, truncation, malformed records, fallback template."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from conftest import write_jsonl
from transformers import AutoTokenizer

from gradsift.data import (
    FALLBACK_CHAT_TEMPLATE,
    IGNORE_INDEX,
    ChatEncoder,
    collate,
    index_examples,
    read_messages,
    read_record_bytes,
    scan_file,
    to_messages,
)
from gradsift.errors import DataError


@pytest.fixture
def tokenizer(tiny_model_dir):
    return AutoTokenizer.from_pretrained(str(tiny_model_dir))


def labelled_text(tokenizer, labels: list[int]) -> str:
    return tokenizer.decode([t for t in labels if t != IGNORE_INDEX])


# -- formats ---------------------------------------------------------------------------------------

def test_three_formats_parse_to_the_same_conversation(tmp_path):
    expected = [{"role": "user", "content": "the cat"}, {"role": "assistant", "content": "sat on mat"}]
    records = [
        {"messages": expected, "id": "a"},
        {"prompt": "the cat", "completion": "sat on mat", "id": "b"},
        {"instruction": "the cat", "input": "", "output": "sat on mat", "id": "c"},
    ]
    for r in records:
        assert to_messages(r) == expected
    # Alpaca with an input: instruction and input joined into the user turn
    alpaca = to_messages({"instruction": "translate", "input": "hello world", "output": "yes"})
    assert alpaca == [{"role": "user", "content": "translate\n\nhello world"}, {"role": "assistant", "content": "yes"}]

    path = write_jsonl(tmp_path / "mixed.jsonl", [{**r, "source": "s", "subtask": "t"} for r in records])
    parsed = list(scan_file(path, skip_bad=False))
    assert [ref.id for ref, _, _ in parsed] == ["a", "b", "c"]
    assert [ref.line for ref, _, _ in parsed] == [1, 2, 3]
    assert all(msgs == expected and bad is None for _, msgs, bad in parsed)
    assert all(ref.source == "s" and ref.subtask == "t" for ref, _, _ in parsed)


def test_default_id_source_and_verbatim_bytes(tmp_path):
    path = tmp_path / "pool.jsonl"
    lines = ['{"prompt": "the cat", "completion": "dog"}', "", '{"completion": "b",   "prompt": "a é"}']
    path.write_text("\n".join(lines) + "\n", encoding="utf-8")
    refs = [ref for ref, _, _ in scan_file(path, skip_bad=False)]
    assert [r.line for r in refs] == [1, 3]  # blank line skipped, numbering kept
    assert refs[0].id == "pool:1" and refs[0].source == "pool" and refs[0].subtask == ""
    assert read_record_bytes(refs[1]) == lines[2].encode("utf-8")
    assert read_messages(refs[1])[0]["content"] == "a é"


def test_json_array_file(tmp_path):
    path = tmp_path / "data.json"
    path.write_text(json.dumps([{"prompt": "a", "completion": "b"}, {"prompt": "c", "completion": "d"}]))
    refs = [ref for ref, _, _ in scan_file(path, skip_bad=False)]
    assert [r.line for r in refs] == [1, 2]
    assert read_messages(refs[1]) == [{"role": "user", "content": "c"}, {"role": "assistant", "content": "d"}]


# -- labels ----------------------------------------------------------------------------------------

def test_labels_cover_only_assistant_tokens(tokenizer):
    encoder = ChatEncoder(tokenizer, max_length=256)
    messages = [
        {"role": "system", "content": "logic"},
        {"role": "user", "content": "the cat sat"},
        {"role": "assistant", "content": "on the mat"},
        {"role": "user", "content": "red blue"},
        {"role": "assistant", "content": "green one two"},
    ]
    ids, labels = encoder.encode(messages)
    assert len(ids) == len(labels)
    # every label is either ignored or equal to the token it sits on
    assert all(lab in (IGNORE_INDEX, tok) for tok, lab in zip(ids, labels))
    assert labelled_text(tokenizer, labels) == "on the mat <|im_end|> green one two <|im_end|>"
    # nothing of the system or user turns, nor the assistant header, is labelled
    unlabelled = tokenizer.convert_ids_to_tokens([t for t, lab in zip(ids, labels) if lab == IGNORE_INDEX])
    assert "sat" in unlabelled and "assistant" in unlabelled and "logic" in unlabelled
    assert "mat" not in unlabelled and "green" not in unlabelled


def test_truncation_and_no_label_tokens(tmp_path, tokenizer):
    long_user = " ".join(["cat"] * 40)
    records = [
        {"id": "short", "prompt": "the dog", "completion": "yes no"},
        {"id": "cut", "prompt": "one two", "completion": " ".join(["red"] * 40)},
        {"id": "gone", "prompt": long_user, "completion": "yes"},
    ]
    path = write_jsonl(tmp_path / "t.jsonl", records)
    encoder = ChatEncoder(tokenizer, max_length=16)
    for r in records:
        ids, labels = encoder.encode(to_messages(r))
        assert len(ids) <= 16 and len(labels) == len(ids)
    ids, labels = encoder.encode(to_messages(records[1]))
    assert len(ids) == 16
    assert labelled_text(tokenizer, labels).split() == ["red"] * sum(lab != IGNORE_INDEX for lab in labels)

    examples, bad, files = index_examples([path], encoder)
    assert bad == [] and files[0].records == 3
    by_id = {e.id: e for e in examples}
    assert by_id["short"].status == "ok" and by_id["short"].label_tokens == 3  # yes no <|im_end|>
    assert by_id["cut"].status == "ok" and by_id["cut"].tokens == 16
    assert by_id["gone"].label_tokens == 0 and by_id["gone"].status == "no_label_tokens"
    assert by_id["gone"].tokens == 16


def test_collate_right_pads_without_labels(tokenizer):
    encoder = ChatEncoder(tokenizer, max_length=64)
    a = encoder.encode([{"role": "user", "content": "the"}, {"role": "assistant", "content": "cat"}])
    b = encoder.encode([{"role": "user", "content": "one two three four"}, {"role": "assistant", "content": "five six"}])
    batch = collate([a, b], pad_id=tokenizer.pad_token_id)
    n = len(a[0])
    assert batch["input_ids"].shape == (2, len(b[0]))
    assert batch["input_ids"][0, :n].tolist() == a[0]
    assert (batch["input_ids"][0, n:] == tokenizer.pad_token_id).all()
    assert (batch["labels"][0, n:] == IGNORE_INDEX).all()
    assert batch["attention_mask"][0].tolist() == [1] * n + [0] * (len(b[0]) - n)
    assert batch["attention_mask"].dtype == torch.long


def test_fallback_chat_template_when_tokenizer_has_none(tokenizer):
    tokenizer.chat_template = None
    encoder = ChatEncoder(tokenizer, max_length=128)
    assert tokenizer.chat_template == FALLBACK_CHAT_TEMPLATE
    messages = [{"role": "user", "content": "the cat"}, {"role": "assistant", "content": "sat on mat"}]
    text, spans = encoder.assistant_spans(messages)
    assert text == "<|user|>\nthe cat\n<|assistant|>\nsat on mat<|im_end|>\n"
    ids, labels = encoder.encode(messages)
    assert labelled_text(tokenizer, labels) == "sat on mat <|im_end|>"


# -- malformed records -----------------------------------------------------------------------------

BAD_LINES = {
    "bad json": '{"prompt": "a", "completion": ',
    "wrong type": '{"prompt": "a", "completion": 5}',
    "unknown format": '{"question": "a", "answer": "b"}',
    "no assistant": '{"messages": [{"role": "user", "content": "a"}]}',
    "bad role": '{"messages": [{"role": "robot", "content": "a"}, {"role": "assistant", "content": "b"}]}',
    "not an object": '["prompt", "completion"]',
    "messages not a list": '{"messages": "hello"}',
}


@pytest.mark.parametrize("kind", sorted(BAD_LINES))
def test_malformed_record_raises_data_error_naming_file_and_line(tmp_path, tokenizer, kind):
    good = '{"prompt": "the", "completion": "cat"}'
    path = tmp_path / "pool.jsonl"
    path.write_text("\n".join([good, good, BAD_LINES[kind], good]) + "\n")
    with pytest.raises(DataError) as info:
        index_examples([path], ChatEncoder(tokenizer, 64))
    assert info.value.line == 3
    assert info.value.path == path
    assert str(path) in str(info.value) and ":3:" in str(info.value)


def test_skip_bad_counts_malformed_records_with_line_numbers(tmp_path, tokenizer):
    good = '{"prompt": "the", "completion": "cat"}'
    kinds = sorted(BAD_LINES)
    lines = []
    for k in kinds:
        lines += [good, BAD_LINES[k]]
    path = tmp_path / "pool.jsonl"
    path.write_text("\n".join(lines) + "\n")
    examples, bad, files = index_examples([path], ChatEncoder(tokenizer, 64), skip_bad=True)
    assert len(examples) == len(kinds) and files[0].records == len(kinds)
    assert [b.line for b in bad] == [2 * (i + 1) for i in range(len(kinds))]
    assert all(b.file == str(path) and b.problem for b in bad)
    assert [e.line for e in examples] == [2 * i + 1 for i in range(len(kinds))]


def test_missing_file_is_a_data_error(tmp_path, tokenizer):
    with pytest.raises(DataError, match="no such data file"):
        index_examples([tmp_path / "absent.jsonl"], ChatEncoder(tokenizer, 64))


def test_data_error_in_json_array_names_record_number(tmp_path, tokenizer):
    path = tmp_path / "data.json"
    path.write_text(json.dumps([{"prompt": "a", "completion": "b"}, {"prompt": "a"}]))
    with pytest.raises(DataError) as info:
        index_examples([path], ChatEncoder(tokenizer, 64))
    assert info.value.line == 2 and Path(info.value.path) == path
