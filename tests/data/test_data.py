"""Data: record formats, assistant-only labels, truncation, malformed records, fallback template."""

from __future__ import annotations

import json
import re
from pathlib import Path

import pytest
import torch
from helpers import write_jsonl, write_parquet
from transformers import AutoTokenizer

from gradsift.data import records as data
from gradsift.data.answers import extract_answer, final_answer_start
from gradsift.data.chat import FALLBACK_CHAT_TEMPLATE, IGNORE_INDEX, ChatEncoder, collate
from gradsift.data.index import index_examples
from gradsift.data.records import example_part, read_messages, read_record_bytes, read_records, scan_file, to_messages
from gradsift.utils.errors import DataError


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


FORMATS = {
    "messages": [
        {"id": "m1", "messages": [{"role": "system", "content": "logic"}, {"role": "user", "content": "the cat é"},
                                  {"role": "assistant", "content": "sat"}], "source": "web"},
        {"messages": [{"role": "user", "content": "red"}, {"role": "assistant", "content": "blue"}]},  # no id
    ],
    "alpaca": [
        {"id": "a1", "instruction": "translate", "input": "hello world", "output": "yes"},
        {"id": "a2", "instruction": "add", "output": "two", "subtask": "math"},  # input: a null cell
    ],
    "prompt": [
        {"id": 7, "prompt": "one", "completion": "two"},  # an integer id column
        {"id": 8, "prompt": "three", "completion": "four", "source": "s"},
    ],
}


def _scanned(path: Path) -> list[tuple]:
    return [(ref.line, ref.id, ref.source, ref.subtask, msgs) for ref, msgs, _ in scan_file(path, skip_bad=False)]


@pytest.mark.parametrize("fmt", sorted(FORMATS) + ["mixed"])
def test_parquet_rows_index_like_the_same_records_as_jsonl(tmp_path, tokenizer, fmt):
    # mixed: every format's columns in one file, null where a row does not use them
    records = FORMATS["messages"] + FORMATS["alpaca"] + [{"prompt": "five", "completion": "six"}] \
        if fmt == "mixed" else FORMATS[fmt]
    jsonl = write_jsonl(tmp_path / "jsonl" / "pool.jsonl", records)
    parquet = write_parquet(tmp_path / "parquet" / "pool.parquet", records)
    assert _scanned(parquet) == _scanned(jsonl)
    assert [line for line, *_ in _scanned(parquet)] == list(range(1, len(records) + 1))
    assert _scanned(parquet)[0][4] == to_messages(records[0])

    encoder = ChatEncoder(tokenizer, 64)
    (from_jsonl, _, _), (from_parquet, _, files) = index_examples([jsonl], encoder), index_examples([parquet], encoder)
    assert files[0].records == len(records)
    keep = lambda e: (e.line, e.id, e.source, e.subtask, e.tokens, e.label_tokens)  # noqa: E731
    assert [keep(e) for e in from_parquet] == [keep(e) for e in from_jsonl]
    assert all(e.offset == -1 for e in from_parquet)
    # the row comes back as the JSON of its record (keys in column order), null cells left out, non-ASCII kept
    columns = list(dict.fromkeys(key for r in records for key in r))
    for ref, record in zip(from_parquet, records):
        expected = json.dumps({key: record[key] for key in columns if key in record}, ensure_ascii=False)
        assert read_record_bytes(ref) == expected.encode()
        assert read_messages(ref) == to_messages(record)


def test_json_array_record_bytes_are_its_json(tmp_path):
    records = [{"prompt": "a é", "completion": "b", "extra": None}, {"id": "x", "prompt": "c", "completion": "d"}]
    path = tmp_path / "data.json"
    path.write_text(json.dumps(records, indent=2))
    refs = [ref for ref, _, _ in scan_file(path, skip_bad=False)]
    assert [read_record_bytes(r) for r in refs] == [json.dumps(r, ensure_ascii=False).encode() for r in records]


def test_array_and_parquet_files_are_parsed_once_and_reread_when_changed(tmp_path, monkeypatch):
    import pyarrow.parquet as pq

    records = [{"id": f"r{k}", "prompt": f"p{k}", "completion": f"c{k}"} for k in range(30)]
    for name in ("a.json", "b.json"):
        (tmp_path / name).write_text(json.dumps(records))
    paths = [tmp_path / "a.json", tmp_path / "b.json", write_parquet(tmp_path / "c.parquet", records)]
    refs = {path.name: [ref for ref, _, _ in scan_file(path, skip_bad=False)] for path in paths}

    parses = []

    def counted(parse):
        return lambda path, **kw: (parses.append(Path(path).name), parse(path, **kw))[1]

    monkeypatch.setattr(data, "_json_array", counted(data._json_array))
    monkeypatch.setattr(pq, "read_table", counted(pq.read_table))
    data._record_reader.cache_clear()
    # a selection's ranking interleaves more files than are kept parsed: each is still parsed once, order kept
    interleaved = [ref for trio in zip(refs["a.json"][::-1], refs["b.json"], refs["c.parquet"]) for ref in trio]
    assert read_records(interleaved) == [json.dumps(records[ref.line - 1]).encode() for ref in interleaved]
    assert sorted(parses) == ["a.json", "b.json", "c.parquet"]
    assert [read_record_bytes(r) for r in refs["c.parquet"]] == [json.dumps(r).encode() for r in records]
    assert len(parses) == 3  # the last file read is still parsed

    paths[2] = write_parquet(paths[2], [{"prompt": "new", "completion": "one"}] + records[1:])
    assert read_record_bytes(refs["c.parquet"][0]) == b'{"prompt": "new", "completion": "one"}'
    assert parses[3:] == ["c.parquet"]


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


@pytest.mark.parametrize("reply, answer", [
    ("Not True is False. So the answer is False.", "False."),
    ("16 cups make a gallon.\nThe answer is 15.", "15."),
    ("3 + 4 = 7\n#### 7", "7"),
    ("Answer: (B)", "(B)"),
    ("the answer is maybe; on reflection the answer is no", "no"),  # the last marker states the result
    ("October", "October"),  # a direct reply is all answer
])
def test_final_answer_start(reply, answer):
    assert reply[final_answer_start(reply):] == answer


@pytest.mark.parametrize("reply, answer", [
    ("Not True is False. So the answer is False.", "False"),
    ("16 cups make a gallon.\nThe answer is 15.", "15"),
    ("3 + 4 = 7\n#### 7", "7"),
    ("Answer: (B)", "(B)"),
    ("the answer is maybe; on reflection the answer is no", "no"),
    ("October", "October"),  # no marker: the reply is taken whole
    ("  (C)  ", "(C)"),
])
def test_extract_answer_splits_where_final_answer_starts(reply, answer):
    """Evaluation reads a reply's answer where building cuts it: after the last of "the answer is",
    "Answer:" and "####", on that line, without a trailing "."."""
    assert extract_answer(reply) == answer
    start = final_answer_start(reply)
    assert extract_answer(reply) == reply[start:].split("\n", 1)[0].strip().removesuffix(".")


def test_response_labelling_of_a_worked_and_a_direct_reply(tokenizer):
    worked = [{"role": "user", "content": "one plus two"},
              {"role": "assistant", "content": "one plus two equals three so the answer is three"}]
    direct = [{"role": "user", "content": "one plus two"}, {"role": "assistant", "content": "three"}]
    full, answer, only = (ChatEncoder(tokenizer, 256, r) for r in ("full", "answer", "answer-only"))
    ids, labels = full.encode(worked)
    assert labelled_text(tokenizer, labels).startswith("one plus two equals three so")
    # answer: the same tokens, the loss on the final answer only
    answer_ids, answer_labels = answer.encode(worked)
    assert answer_ids == ids and labelled_text(tokenizer, answer_labels) == "three <|im_end|>"
    # answer-only: the reasoning is gone from the input too, leaving the direct reply
    assert only.encode(worked) == full.encode(direct)
    assert "equals" not in tokenizer.convert_ids_to_tokens(only.encode(worked)[0])
    for encoder in (answer, only):  # a direct reply is all answer, whatever the labelling
        assert encoder.encode(direct) == full.encode(direct)
    with pytest.raises(ValueError, match="unknown response"):
        ChatEncoder(tokenizer, 256, "reasoning")


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


def test_a_template_that_adds_bos_gets_one_bos(tokenizer):
    """Templates such as Llama's render the BOS token themselves: the text is tokenized without special
    tokens, so an example starts with exactly one BOS (a tokenizer adding its own would make two)."""
    tokenizer.add_special_tokens({"bos_token": "<s>"})  # a BOS of its own, as Llama's
    tokenizer.chat_template = "{{ bos_token }}" + tokenizer.chat_template
    messages = [{"role": "user", "content": "the cat"}, {"role": "assistant", "content": "sat on mat"}]
    ids, labels = ChatEncoder(tokenizer, max_length=128).encode(messages)
    assert ids[0] == tokenizer.bos_token_id and ids.count(tokenizer.bos_token_id) == 1
    assert labelled_text(tokenizer, labels) == "sat on mat <|im_end|>"


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


PARQUET_BAD_ROWS = {  # row 3 of a file whose other rows are good; each names what is wrong
    "null format cell": ({"prompt": None, "completion": "cat"}, "unknown record format"),
    "empty messages": ({"messages": []}, "'messages' must be a non-empty list"),
    "null content": ({"messages": [{"role": "user", "content": "a"}, {"role": "assistant", "content": None}]},
                     "messages[1].content"),
    "bad role": ({"messages": [{"role": "robot", "content": "a"}, {"role": "assistant", "content": "b"}]},
                 "role 'robot'"),
    "no assistant": ({"messages": [{"role": "user", "content": "a"}]}, "no assistant message"),
}


@pytest.mark.parametrize("kind", sorted(PARQUET_BAD_ROWS))
def test_malformed_parquet_row_names_file_and_row(tmp_path, tokenizer, kind):
    bad, problem = PARQUET_BAD_ROWS[kind]
    if "messages" in bad:
        good = {"messages": [{"role": "user", "content": "the"}, {"role": "assistant", "content": "cat"}]}
    else:
        good = {"prompt": "the", "completion": "cat"}
    path = write_parquet(tmp_path / "pool.parquet", [good, good, bad, good])
    with pytest.raises(DataError, match=re.escape(problem)) as info:
        index_examples([path], ChatEncoder(tokenizer, 64))
    assert info.value.path == path and info.value.line == 3
    assert f"{path}:3:" in str(info.value)

    examples, skipped, files = index_examples([path], ChatEncoder(tokenizer, 64), skip_bad=True)
    assert [e.line for e in examples] == [1, 2, 4] and files[0].records == 3
    assert [(b.file, b.line) for b in skipped] == [(str(path), 3)] and problem in skipped[0].problem


@pytest.mark.parametrize("name, content", [("pool.parquet", "not parquet"), ("pool.json", '[{"prompt": ')])
def test_unreadable_parquet_or_json_file_is_a_data_error(tmp_path, tokenizer, name, content):
    path = tmp_path / name
    path.write_text(content)
    with pytest.raises(DataError) as info:
        index_examples([path], ChatEncoder(tokenizer, 64), skip_bad=True)  # a whole file is never skipped
    assert info.value.path == path and info.value.line == 0


@pytest.mark.parametrize("colliding", [False, True])
def test_an_index_made_in_small_blocks_equals_one_made_at_once(tmp_path, tokenizer, monkeypatch, colliding):
    """index_examples assembles its columns a block of rows at a time: blocks of 2 rows over two files give
    the index one block gives, and a duplicate id is still caught with its first file and line when
    that first record sits in an earlier block and file, also when every id's hash is the same."""
    from gradsift.data import index as store_index

    first = write_jsonl(tmp_path / "a.jsonl", [{"prompt": f"p{k}", "completion": "c" * (k + 1), "id": f"i{k}",
                                                "source": "s" if k % 2 else "t"} for k in range(5)])
    second = write_jsonl(tmp_path / "b.jsonl", [{"prompt": "q", "completion": "d", "id": "j0"},
                                                 {"prompt": "q", "completion": "e", "id": "i1"},
                                                 {"prompt": "q", "completion": "f", "id": "j2", "subtask": "u"}])
    encoder = ChatEncoder(tokenizer, 64)
    whole, whole_bad, _ = index_examples([first, second], encoder, skip_bad=True)
    monkeypatch.setattr(store_index, "ROWS_AT_ONCE", 2)
    if colliding:
        monkeypatch.setattr(store_index, "hash", lambda id: 7, raising=False)
    blocks, blocks_bad, files = index_examples([first, second], encoder, skip_bad=True)
    assert blocks == whole and list(blocks) == list(whole) and blocks_bad == whole_bad
    assert [r.id for r in blocks] == ["i0", "i1", "i2", "i3", "i4", "j0", "j2"] and files[1].records == 2
    sources = blocks.table.column("source")  # one dictionary, not one per block
    assert sources.num_chunks > 1 and all(c.dictionary.equals(sources.chunk(0).dictionary) for c in sources.chunks)
    assert blocks.counts("source") == {"s": 2, "t": 3, "b": 2}
    assert [(b.file, b.line) for b in blocks_bad] == [(str(second), 2)]
    assert f"duplicate id 'i1' (first at {first}:2)" in blocks_bad[0].problem
    with pytest.raises(DataError, match=re.escape(f"duplicate id 'i1' (first at {first}:2)")):
        index_examples([first, second], encoder)


def test_example_part_keeps_the_turns_it_names():
    messages = [{"role": "system", "content": "s"}, {"role": "user", "content": "u1"},
                {"role": "assistant", "content": "a1"}, {"role": "user", "content": "u2"},
                {"role": "assistant", "content": "a2"}]
    assert example_part(messages, "whole") == messages
    assert [m["content"] for m in example_part(messages, "prompt")] == ["s", "u1", "u2"]
    assert [m["content"] for m in example_part(messages, "answer")] == ["a1", "a2"]
    with pytest.raises(ValueError, match="unknown example part"):
        example_part(messages, "reasoning")
