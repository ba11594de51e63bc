"""The lexical index a store keeps for BM25 (``gradsift.store.lexical``): written once by build, read
memory-mapped by ``Bm25``, scoring exactly as an index built in memory from the records."""

from __future__ import annotations

import json
import shutil

import numpy as np
import pytest
import torch
from helpers import contents, pool_config, store_without

from gradsift.config import SelectConfig
from gradsift.data.records import record_text
from gradsift.features.build import build
from gradsift.inspection import inspect
from gradsift.selection.methods import Bm25, Pool, Target
from gradsift.selection.select import select
from gradsift.store import lexical
from gradsift.store.datastore import GradientStore
from gradsift.utils.errors import StoreMismatchError


def similarities(method: Bm25, pool: Pool, target: Target) -> torch.Tensor:
    return torch.cat([sims for _, (sims,) in method.similarities(pool, [target])])


def test_build_indexes_every_part_of_every_row(small_stores):
    pool, _ = small_stores
    meta = lexical.lexical_meta(pool.path)
    assert meta["parts"] == ["whole", "prompt", "answer"] and meta["rows"] == len(pool.index) == 52
    assert (meta["k1"], meta["b"], meta["tokenizer"]) == (1.5, 0.75, lexical.TOKENIZER)
    assert set(meta["checksums"]) == {str(p.relative_to(pool.path / "lexical")) for p in (pool.path / "lexical").rglob("*")
                                      if p.is_file() and p.name != "lexical.json"}
    assert not list(pool.path.glob(".lexical*"))  # no temporary folder left
    index = pool.lexical_index("prompt")
    assert isinstance(index.scores["data"], np.memmap) and index.scores["num_docs"] == 52
    assert pool.lexical_index("whole", k1=1.2) is None  # another k1 is not what was indexed: BM25 indexes anew


@pytest.mark.parametrize("part", ["whole", "prompt"])
def test_the_stored_index_scores_as_a_fresh_one_to_the_bit(small_stores, data, part, monkeypatch):
    pool, target = small_stores
    targets = Target.from_store(target)
    method = Bm25(pool_part=part, target_part=part, chunk_rows=7)  # chunks that split the pool unevenly
    fresh = similarities(method, Pool.from_files(data["pool"]), targets)

    def no_indexing(*args, **kwargs):
        raise AssertionError("a store with a lexical index is indexed again")

    monkeypatch.setattr(lexical, "build_index", no_indexing)
    stored = similarities(method, Pool.from_store(pool), targets)
    assert stored.dtype == torch.float32 and stored.shape == (52, 3)
    assert stored.numpy().tobytes() == fresh.numpy().tobytes() and (stored > 0).any()
    # and each column is bm25s's own get_scores of the query: its words' scores summed in float64, to the bit
    monkeypatch.undo()
    index = lexical.build_index([record_text(r, part) for r in pool.index])
    for j, words in enumerate(lexical.tokenize([record_text(r, part) for r in targets.refs], ids=False)):
        by_word = sum(index.get_scores([w]).astype(np.float64) for w in words if w in index.vocab_dict)
        assert stored[:, j].numpy().tobytes() == np.float32(by_word).tobytes()
        np.testing.assert_allclose(stored[:, j].numpy(), index.get_scores(words), rtol=1e-6)


def test_a_store_without_an_index_selects_the_same(small_stores, tmp_path, capsys):
    pool, target = small_stores
    old = store_without(pool, tmp_path / "old-pool", lexical.LEXICAL_DIR)
    assert old.lexical_index("whole") is None
    (new_scores,) = Bm25().score(Pool.from_store(pool), [Target.from_store(target)])
    assert "bm25: indexing" not in capsys.readouterr().out
    (old_scores,) = Bm25().score(Pool.from_store(old), [Target.from_store(target)])
    said = capsys.readouterr().out.strip()
    assert said.startswith(f"bm25: indexing {old.path} in memory") and "rerun its `gradsift build`" in said
    assert "\n" not in said
    assert old_scores.scores.tobytes() == new_scores.scores.tobytes() and old_scores.subtask == new_scores.subtask
    for store, out in ((pool, tmp_path / "new"), (old, tmp_path / "old")):  # fusion: the one method bm25 reads stores in
        select(SelectConfig(train_store=store.path, target_store=[target.path], output=out, count=5, max_length=64,
                            device="cpu"))
    assert (tmp_path / "new" / "selected.jsonl").read_bytes() == (tmp_path / "old" / "selected.jsonl").read_bytes()


def test_an_index_of_other_rows_is_a_one_line_error_naming_the_store(small_stores, tmp_path):
    pool, target = small_stores
    for k, (file, key) in enumerate((("lexical.json", "rows"), ("prompt/params.index.json", "num_docs"))):
        copy = tmp_path / f"tampered-{k}"
        shutil.copytree(pool.path, copy)
        path = copy / "lexical" / file
        path.write_text(json.dumps({**json.loads(path.read_text()), key: 51}))
        with pytest.raises(StoreMismatchError) as e:
            Bm25().score(Pool.from_store(GradientStore.open(copy)), [Target.from_store(target)])
        assert str(copy) in str(e.value) and "51 rows" in str(e.value) and "\n" not in str(e.value)
    (found,) = inspect(tmp_path / "tampered-0")
    assert any("51 rows" in p for p in found.problems)


def test_rerunning_a_finished_build_leaves_the_index_untouched(small_stores, run, data, tmp_path):
    pool, _ = small_stores
    before = contents(pool.path / "lexical")
    mtime = (pool.path / "lexical" / "lexical.json").stat().st_mtime_ns
    build(pool_config(run, data, pool.path, dim=64))
    assert contents(pool.path / "lexical") == before
    assert (pool.path / "lexical" / "lexical.json").stat().st_mtime_ns == mtime
    # a store from before lexical indexes gets one from a rerun of its build: the same bytes
    old = store_without(pool, tmp_path / "old-pool", lexical.LEXICAL_DIR)
    build(pool_config(run, data, old.path, dim=64))
    assert contents(old.path / "lexical") == before


def test_a_failed_index_write_leaves_no_index(small_stores, tmp_path, monkeypatch):
    pool, _ = small_stores
    old = store_without(pool, tmp_path / "old-pool", lexical.LEXICAL_DIR)

    def killed(*args):
        raise KeyboardInterrupt("killed")

    monkeypatch.setattr(lexical.os, "replace", killed)
    with pytest.raises(KeyboardInterrupt):
        old.write_lexical_index()
    assert sorted(p.name for p in old.path.iterdir()) == sorted(p.name for p in pool.path.iterdir() if p.name != "lexical")


def test_inspect_shows_the_index_and_verifies_it(small_stores, tmp_path):
    pool, _ = small_stores
    (found,) = inspect(pool.path, verify=True)
    assert found.problems == []
    shown = dict(found.facts)["lexical index"]
    assert "whole, prompt, answer" in shown and "52 rows" in shown and "KiB" in shown
    copy = tmp_path / "flipped"
    shutil.copytree(pool.path, copy)
    data = copy / "lexical" / "prompt" / "data.csc.index.npy"
    data.write_bytes(data.read_bytes()[:-1] + bytes([data.read_bytes()[-1] ^ 1]))
    (found,) = inspect(copy, verify=True)
    assert [p for p in found.problems if str(data) in p and "changed" in p]
    (found,) = inspect(store_without(pool, tmp_path / "old", lexical.LEXICAL_DIR).path)
    assert dict(found.facts)["lexical index"].startswith("none")


def test_an_index_made_with_an_older_tokenizer_is_not_read_and_a_rebuild_replaces_it(small_stores, run, data,
                                                                                     tmp_path, capsys):
    """A store indexed by an older gradsift (bm25s's default pattern, which drops one-letter words): BM25
    indexes in memory and says so, inspect says so, and rerunning the build writes today's index in place."""
    pool, target = small_stores
    today = contents(pool.path / "lexical")
    old_pool = tmp_path / "old-pool"
    shutil.copytree(pool.path, old_pool)
    meta_file = old_pool / "lexical" / "lexical.json"
    older = {k: v for k, v in lexical.TOKENIZER.items() if k != "token_pattern"}
    meta_file.write_text(json.dumps({**json.loads(meta_file.read_text()), "tokenizer": older}))
    old = GradientStore.open(old_pool)
    assert old.lexical_index("prompt") is None
    (scores,) = Bm25().score(Pool.from_store(old), [Target.from_store(target)])
    (fresh,) = Bm25().score(Pool.from_store(pool), [Target.from_store(target)])
    assert scores.scores.tobytes() == fresh.scores.tobytes()
    assert "today's tokenizer" in capsys.readouterr().out
    (found,) = inspect(old_pool)
    assert "older tokenizer" in dict(found.facts)["lexical index"]
    build(pool_config(run, data, old_pool, dim=64))
    assert contents(old_pool / "lexical") == today and not list(old_pool.glob(".lexical*"))
    assert GradientStore.open(old_pool).lexical_index("prompt") is not None
