"""The RDS+ embeddings a store keeps (``gradsift.store.embeddings``): written once by build, equal to what
rds computes in memory, read by rds and fusion with no model loaded; old stores get them from a rerun."""

from __future__ import annotations

import json
import shutil

import numpy as np
import pytest
import torch
from helpers import contents, pool_config, store_without

import gradsift.features.build as build_module
from gradsift.config import TOKEN_LIMIT, SelectConfig
from gradsift.data.chat import ChatEncoder
from gradsift.features.build import build
from gradsift.features.embeddings import embed, weighted_mean_pool
from gradsift.inspection import inspect
from gradsift.selection.methods import Pool, Rds, Target
from gradsift.selection.methods import rds as rds_module
from gradsift.selection.select import select
from gradsift.store import embeddings
from gradsift.store.datastore import GradientStore
from gradsift.utils.models import load_model

FLOAT32_ROUNDING = 1e-6  # the same numbers, batched otherwise
FLOAT16_ROUNDING = 1e-3  # a unit vector's entries are below 1: float16 keeps them to 2^-11 (~5e-4)


def in_memory(store: GradientStore, part: str = "prompt") -> np.ndarray:
    """Every row's embedding as rds computes it with its defaults, from the store's model."""
    model, tokenizer, _ = load_model(store.manifest["model"]["name"], "cpu")
    return embed(store.index, ChatEncoder(tokenizer, TOKEN_LIMIT), model, "cpu", part, batch_size=16).numpy()


def no_model(monkeypatch) -> None:
    def refused(*args, **kwargs):
        raise AssertionError("a model was loaded")

    monkeypatch.setattr(rds_module, "load_model", refused)
    monkeypatch.setattr("transformers.AutoModelForCausalLM.from_pretrained", refused)


def test_build_stores_what_rds_computes(small_stores):
    for store in small_stores:
        meta = store.embeddings_meta()
        assert meta["status"] == "complete" and meta["model"] == store.manifest["model"]
        assert (meta["part"], meta["max_length"], meta["dim"], meta["dtype"], meta["rows"]) == \
            ("prompt", TOKEN_LIMIT, 64, "float32", len(store.index))
        assert store.has_embeddings(store.manifest["model"]["name"], "prompt", TOKEN_LIMIT)
        assert not store.has_embeddings(store.manifest["model"]["name"], "whole", TOKEN_LIMIT)
        assert not store.has_embeddings(store.manifest["model"]["name"], "prompt", 64)
        vectors = np.load(store.path / "embeddings" / "prompt.npy", mmap_mode="r")
        assert isinstance(vectors, np.memmap) and vectors.dtype == np.float32
        np.testing.assert_allclose(store.embedding_rows(), in_memory(store), rtol=0, atol=FLOAT32_ROUNDING)
        assert list(meta["checksums"]) == ["prompt.npy"]
        assert not (store.path / "embeddings" / "progress.json").read_text().count("shard")


def test_rds_from_stores_loads_no_model_and_scores_as_in_memory(small_stores, tmp_path, monkeypatch, capsys):
    pool, target = small_stores
    method = Rds(model=pool.manifest["model"]["name"], device="cpu", chunk_rows=7)  # chunks split the pool unevenly
    old_pool, old_target = (store_without(pool, tmp_path / "p", embeddings.EMBEDDINGS_DIR),
                            store_without(target, tmp_path / "t", embeddings.EMBEDDINGS_DIR))
    (fresh,) = method.score(Pool.from_store(old_pool), [Target.from_store(old_target)])
    said = capsys.readouterr().out
    assert said.count("\n") == 1 and str(old_pool.path) in said and "gradsift build" in said
    no_model(monkeypatch)
    (stored,) = method.score(Pool.from_store(pool), [Target.from_store(target)])
    assert "rds:" not in capsys.readouterr().out
    np.testing.assert_allclose(stored.scores, fresh.scores, atol=3 * FLOAT32_ROUNDING)
    assert np.argsort(-stored.scores, kind="stable").tolist() == np.argsort(-fresh.scores, kind="stable").tolist()
    assert stored.subtask == fresh.subtask
    # settings other than the stored ones are computed in memory (here: with no model, refused)
    with pytest.raises(AssertionError, match="a model was loaded"):
        Rds(model=pool.manifest["model"]["name"], device="cpu", max_length=64).score(
            Pool.from_store(pool), [Target.from_store(target)])
    assert "at 1024 tokens, not prompt by" in capsys.readouterr().out


def test_fusion_from_embedded_stores_runs_no_model_and_selects_as_without(small_stores, tmp_path, monkeypatch):
    pool, target = small_stores
    old_pool, old_target = (store_without(pool, tmp_path / "p", embeddings.EMBEDDINGS_DIR),
                            store_without(target, tmp_path / "t", embeddings.EMBEDDINGS_DIR))
    config = dict(count=8, device="cpu")
    select(SelectConfig(train_store=old_pool.path, target_store=[old_target.path], output=tmp_path / "old", **config))
    no_model(monkeypatch)
    select(SelectConfig(train_store=pool.path, target_store=[target.path], output=tmp_path / "new", **config))
    assert (tmp_path / "new" / "selected.jsonl").read_bytes() == (tmp_path / "old" / "selected.jsonl").read_bytes()


def test_a_rerun_adds_embeddings_to_an_old_store_without_recomputing_gradients(small_stores, run, data, tmp_path,
                                                                               monkeypatch):
    pool, _ = small_stores
    old = store_without(pool, tmp_path / "old", embeddings.EMBEDDINGS_DIR)
    features = {p.name: p.stat().st_mtime_ns for p in (old.path / "features").iterdir()}

    def no_gradients(*args, **kwargs):
        raise AssertionError("gradients recomputed")

    monkeypatch.setattr(build_module, "chunk_features", no_gradients)
    build(pool_config(run, data, old.path, dim=64))
    assert contents(old.path / "embeddings") == contents(pool.path / "embeddings")
    assert {p.name: p.stat().st_mtime_ns for p in (old.path / "features").iterdir()} == features
    mtime = (old.path / "embeddings" / "embeddings.json").stat().st_mtime_ns
    build(pool_config(run, data, old.path, dim=64))  # and a second rerun leaves them as they are
    assert (old.path / "embeddings" / "embeddings.json").stat().st_mtime_ns == mtime


def test_embeddings_of_other_settings_are_refused_naming_the_folder(small_stores, run, data, tmp_path):
    pool, _ = small_stores
    copy = tmp_path / "copy"
    shutil.copytree(pool.path, copy)
    meta = copy / "embeddings" / "embeddings.json"
    meta.write_text(json.dumps({**json.loads(meta.read_text()), "max_length": 512}))
    with pytest.raises(Exception, match="other settings \\(max_length\\)") as e:
        build(pool_config(run, data, copy, dim=64))
    assert str(copy / "embeddings") in str(e.value)


def test_a_bfloat16_build_of_compact_rows_stores_rds_embeddings_in_float16(small_stores, run, data, tmp_path):
    """A GPU build runs the gradients in bfloat16: the embeddings are still rds's (a float32 model); beside
    int8 rows they are kept as float16."""
    pool, _ = small_stores
    half = build(pool_config(run, data, tmp_path / "bf16", dim=64, model_dtype="bfloat16", dtype="int8"))
    assert half.embeddings_meta()["dtype"] == "float16"
    np.testing.assert_allclose(half.embedding_rows(), pool.embedding_rows(), rtol=0, atol=FLOAT16_ROUNDING)


def test_inspect_shows_and_verifies_the_embeddings(small_stores, tmp_path):
    pool, _ = small_stores
    (found,) = inspect(pool.path, verify=True)
    assert found.problems == []
    shown = dict(found.facts)["embeddings"]
    assert "prompt" in shown and "52 x 64 float32" in shown and "max_length 1024" in shown and "KiB" in shown
    copy = tmp_path / "flipped"
    shutil.copytree(pool.path, copy)
    vectors = copy / "embeddings" / "prompt.npy"
    raw = bytearray(vectors.read_bytes())
    raw[-1] ^= 1
    vectors.write_bytes(bytes(raw))
    (found,) = inspect(copy, verify=True)
    assert [p for p in found.problems if str(vectors) in p and "changed" in p]
    (found,) = inspect(store_without(pool, tmp_path / "old", embeddings.EMBEDDINGS_DIR).path)
    assert dict(found.facts)["embeddings"].startswith("none")


def test_pooling_weighs_later_tokens_more_and_padding_not_at_all():
    hidden = torch.tensor([[[1.0, 0.0], [0.0, 1.0], [5.0, 5.0]]])
    mask = torch.tensor([[1, 1, 0]])
    assert weighted_mean_pool(hidden, mask).tolist() == [pytest.approx([1 / 3, 2 / 3])]  # weights 1/3, 2/3, 0


def test_the_default_selects_the_same_with_the_model_folder_moved_away(tiny_model_dir, data, tmp_path):
    """warmup, build of pool and target, then the default select; with the model's folder moved away,
    select still runs (it reads the stores only) and selects the same records."""
    from helpers import target_config, warmup_config

    from gradsift.training.warmup import warmup

    model = shutil.copytree(tiny_model_dir, tmp_path / "model")
    run = warmup(warmup_config(model, data, tmp_path / "run", epochs=1))
    pool = build(pool_config(run, data, tmp_path / "pool", dim=64))
    target = build(target_config(run, data, tmp_path / "target", dim=64))
    config = {"train_store": pool.path, "target_store": [target.path], "count": 5, "device": "cpu"}
    select(SelectConfig(output=tmp_path / "with-model", **config))
    model.rename(tmp_path / "moved-away")
    select(SelectConfig(output=tmp_path / "without", **config))
    assert (tmp_path / "without" / "selected.jsonl").read_bytes() == (tmp_path / "with-model" / "selected.jsonl").read_bytes()


@pytest.mark.parametrize("method", ["bm25", "rds"])
def test_bm25_and_rds_select_from_stores_as_from_records_files_with_no_model(small_stores, data, tmp_path,
                                                                              monkeypatch, method):
    """`select --method bm25|rds --train-store --target-store` reads the stored index or embeddings (rds's
    model defaults to the stores'), loads no model, and selects what the records files give."""
    pool, target = small_stores
    files = {"pool": data["pool"], "target": [data["target"]], "model": pool.manifest["model"]["name"]}
    select(SelectConfig(method=method, output=tmp_path / "files", count=5, device="cpu", **files))
    no_model(monkeypatch)
    select(SelectConfig(method=method, train_store=pool.path, target_store=[target.path], output=tmp_path / "stores",
                        count=5))
    assert (tmp_path / "stores" / "selected.jsonl").read_bytes() == (tmp_path / "files" / "selected.jsonl").read_bytes()
    summary = json.loads((tmp_path / "stores" / "summary.json").read_text())
    assert summary["pool_store"] == str(pool.path) and summary["method"] == method


def test_a_records_method_given_stores_or_both_inputs_is_a_one_line_error(small_stores, data, tmp_path):
    from gradsift.utils.errors import ConfigError

    pool, target = small_stores
    stores = {"train_store": pool.path, "target_store": [target.path]}
    with pytest.raises(ConfigError, match="reads records files, not stores"):
        select(SelectConfig(method="random", output=tmp_path / "a", **stores))
    with pytest.raises(ConfigError, match="not both"):
        select(SelectConfig(method="bm25", output=tmp_path / "b", pool=data["pool"], target=[data["target"]], **stores))
