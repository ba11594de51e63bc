"""The data formats users bring: ShareGPT conversations, gzip-compressed JSON Lines, a Hugging Face dataset
saved with save_to_disk, a folder or a glob of Parquet shards. Each selects what the same records as
JSON Lines select, and writes them back as records."""

from __future__ import annotations

import gzip
import json
import random

import pytest
from helpers import chat_records, write_jsonl, write_parquet

from gradsift.cli import main
from gradsift.data.index import index_examples
from gradsift.data.records import read_records, to_messages
from gradsift.utils.errors import DataError
from gradsift.utils.files import data_files


def as_sharegpt(record: dict, aliases: tuple[str, str] = ("human", "gpt")) -> dict:
    human, gpt = aliases
    speaker = {"system": "system", "user": human, "assistant": gpt}
    return {"id": record["id"], "conversations": [{"from": speaker[m["role"]], "value": m["content"]}
                                                  for m in record["messages"]]}


@pytest.fixture
def records():
    rng = random.Random(11)
    pool = chat_records(rng, 14, "p")
    pool[3]["messages"].insert(0, {"role": "system", "content": "be brief"})
    return pool, chat_records(rng, 3, "t")


def selected(out) -> list[dict]:
    return [json.loads(line) for line in (out / "selected.jsonl").read_text().splitlines()]


def scores(out) -> list[tuple[str, str]]:
    rows = [line.split(",") for line in (out / "scores.csv").read_text().splitlines()]
    return [(r[2], r[4]) for r in rows[1:]]  # id, score


def bm25(pool, target, out) -> int:
    return main(["select", "--method", "bm25", "--pool", *map(str, pool), "--target", str(target), "--count", "4",
                 "--output", str(out)])


def test_sharegpt_reads_like_messages(records, tmp_path):
    pool, target = records
    for aliases in (("human", "gpt"), ("user", "assistant"), ("human", "chatgpt"), ("user", "model")):
        for r in pool:
            assert to_messages(as_sharegpt(r, aliases)) == r["messages"]
    reference, shared = tmp_path / "jsonl", tmp_path / "sharegpt"
    targets = write_jsonl(tmp_path / "target.jsonl", target)
    assert bm25([write_jsonl(tmp_path / "pool.jsonl", pool)], targets, reference) == 0
    assert bm25([write_jsonl(tmp_path / "sharegpt.jsonl", [as_sharegpt(r) for r in pool])], targets, shared) == 0
    assert scores(shared) == scores(reference)
    assert selected(shared) == [as_sharegpt(r) for r in (next(p for p in pool if p["id"] == s["id"])
                                                         for s in selected(reference))]


def test_gzip_json_lines_read_like_json_lines(records, tmp_path):
    pool, target = records
    plain = write_jsonl(tmp_path / "pool.jsonl", pool)
    packed = tmp_path / "pool.jsonl.gz"
    packed.write_bytes(gzip.compress(plain.read_bytes()))
    mine, _, files = index_examples([packed], None)
    theirs, _, _ = index_examples([plain], None)
    assert [(r.id, r.line, r.source, r.chars) for r in mine] == [(r.id, r.line, r.source, r.chars) for r in theirs]
    assert mine[0].source == "pool" and files[0].path == str(packed)
    assert read_records(list(mine)) == plain.read_bytes().splitlines()
    targets = write_jsonl(tmp_path / "target.jsonl", target)
    assert bm25([packed], targets, tmp_path / "gz") == 0 and bm25([plain], targets, tmp_path / "plain") == 0
    assert scores(tmp_path / "gz") == scores(tmp_path / "plain")
    assert (tmp_path / "gz" / "selected.jsonl").read_bytes() == (tmp_path / "plain" / "selected.jsonl").read_bytes()


def test_a_saved_dataset_folder_reads_like_its_records(records, tmp_path):
    datasets = pytest.importorskip("datasets")
    pool, target = records
    folder = tmp_path / "saved"
    datasets.Dataset.from_list(pool).save_to_disk(str(folder), num_shards=2)
    files = data_files([folder])
    assert [p.suffix for p in files] == [".arrow", ".arrow"]
    targets = write_jsonl(tmp_path / "target.jsonl", target)
    assert bm25([folder], targets, tmp_path / "arrow") == 0
    assert bm25([write_jsonl(tmp_path / "pool.jsonl", pool)], targets, tmp_path / "jsonl") == 0
    assert [s for _, s in scores(tmp_path / "arrow")] == [s for _, s in scores(tmp_path / "jsonl")]
    assert selected(tmp_path / "arrow") == selected(tmp_path / "jsonl")
    refs, _, _ = index_examples([folder], None)
    assert {r.source for r in refs} == {"saved"}  # the dataset's name, not its shards'


def test_a_folder_and_a_glob_of_parquet_shards(records, tmp_path):
    pool, target = records
    shards = tmp_path / "shards"
    for k in range(3):
        write_parquet(shards / f"train-{k:05d}-of-00003.parquet", pool[k * 5: (k + 1) * 5])
    (shards / "README.md").write_text("not data")
    targets = write_jsonl(tmp_path / "target.jsonl", target)
    assert bm25([shards], targets, tmp_path / "folder") == 0
    assert bm25([shards / "train-*.parquet"], targets, tmp_path / "glob") == 0
    assert bm25([write_jsonl(tmp_path / "pool.jsonl", pool)], targets, tmp_path / "jsonl") == 0
    for out in ("folder", "glob"):
        assert [s for _, s in scores(tmp_path / out)] == [s for _, s in scores(tmp_path / "jsonl")]
        assert selected(tmp_path / out) == selected(tmp_path / "jsonl")


def test_folders_and_globs_that_hold_no_data_are_named(tmp_path):
    (tmp_path / "empty").mkdir()
    (tmp_path / "empty" / "notes.txt").write_text("x")
    with pytest.raises(DataError, match="is a directory with no data files"):
        data_files([tmp_path / "empty"])
    with pytest.raises(DataError, match="matches no file"):
        data_files([tmp_path / "*.parquet"])
    broken = tmp_path / "broken.jsonl.gz"
    broken.write_bytes(b"not gzip at all")
    with pytest.raises(DataError, match="cannot decompress gzip"):
        index_examples([broken], None)
