"""Atomic writes (gradsift.utils.files): JSONL records stay one per line, and no temporary file is left."""

from __future__ import annotations

import json

from gradsift.utils.files import atomic_write_jsonl


def test_unicode_line_separators_stay_inside_their_record(tmp_path):
    records = [{"messages": [{"role": "assistant", "content": "a\u2028b\x85c\u2029d é"}], "id": "x"}, {"id": "y"}]
    path = tmp_path / "one.jsonl"
    atomic_write_jsonl(path, records)
    text = path.read_text(encoding="utf-8")
    assert text.split("\n") == [*text.splitlines(), ""]  # one record per line, whichever way lines are split
    assert [json.loads(line) for line in text.splitlines()] == records
    assert "é" in text  # not escaped: ensure_ascii=False
    assert [p.name for p in tmp_path.iterdir()] == ["one.jsonl"]
