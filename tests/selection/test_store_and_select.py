"""Datastore and selection, end to end on a tiny model: warmup -> build(adam, pool) -> build(sgd, target)
-> select; resumable builds; refusing incomparable stores; the scoring math."""

from __future__ import annotations

import csv
import json
import re
import shutil
from pathlib import Path

import numpy as np
import pytest
import torch
from helpers import DIM, MAX_LENGTH, pool_config, target_config, warmup_config, write_parquet

from gradsift.config import SelectConfig
from gradsift.features.build import build, build_together
from gradsift.selection.scoring import (
    aggregate,
    agreeing,
    checkpoint_weights,
    fuse_member_ranks,
    fuse_ranks,
    member_ranks,
    rank_tops,
    relevance_auc,
    round_robin,
    top_k,
    value_tops,
    weighted_similarity,
)
from gradsift.selection.select import select
from gradsift.store.datastore import GradientStore
from gradsift.training.run import Run
from gradsift.training.warmup import warmup
from gradsift.utils.errors import ConfigError, StoreMismatchError


@pytest.fixture(scope="module")
def stores(run, data):
    pool = build(pool_config(run, data, data["root"] / "pool-store"))
    target = build(target_config(run, data, data["root"] / "target-store"))
    return pool, target


@pytest.fixture(scope="module")
def selection(stores, data):
    pool, target = stores
    out = data["root"] / "selection"
    select(SelectConfig(method="less", train_store=pool.path, target_store=[target.path], output=out, count=3))
    with open(out / "scores.csv", newline="") as f:
        rows = list(csv.DictReader(f))
    return out, rows


# -- selection -------------------------------------------------------------------------------------

def test_copies_of_the_targets_rank_first(selection):
    out, rows = selection
    ranked = sorted((r for r in rows if r["rank"]), key=lambda r: int(r["rank"]))
    assert {r["id"] for r in ranked[:3]} == {"copy0", "copy1", "copy2"}
    assert [r["selected"] for r in ranked[:4]] == ["1", "1", "1", "0"]
    assert float(ranked[2]["score"]) > float(ranked[3]["score"])


def test_selected_records_are_verbatim_best_first(selection, data):
    out, rows = selection
    by_rank = {int(r["rank"]): r for r in rows if r["rank"]}
    expected = []
    for rank in (1, 2, 3):
        r = by_rank[rank]
        source_lines = Path(r["file"]).read_bytes().split(b"\n")
        expected.append(source_lines[int(r["line"]) - 1])
    assert (out / "selected.jsonl").read_bytes() == b"".join(line + b"\n" for line in expected)
    assert sorted(expected) == sorted(c.encode() for c in data["copies"].values())


def test_scores_csv_one_row_per_pool_example(selection, data, stores):
    out, rows = selection
    pool, _ = stores
    assert len(rows) == 52 == len(pool.index)
    assert [(r["file"], int(r["line"])) for r in rows] == [(ref.file, ref.line) for ref in pool.index]
    assert list(rows[0]) == ["file", "line", "id", "source", "score", "rank", "selected", "status", "subtask", "chars"]
    assert "nan" not in (out / "scores.csv").read_text().lower()
    (skipped,) = [r for r in rows if r["status"] != "ok"]
    assert skipped["id"] == "nolabel" and skipped["status"] == "no_label_tokens"
    assert skipped["score"] == "" and skipped["rank"] == "" and skipped["selected"] == "0"
    scored = [r for r in rows if r["status"] == "ok"]
    assert sorted(int(r["rank"]) for r in scored) == list(range(1, 52))
    assert all(np.isfinite(float(r["score"])) for r in scored)
    # ranks follow scores
    by_rank = sorted(scored, key=lambda r: int(r["rank"]))
    assert all(float(a["score"]) >= float(b["score"]) for a, b in zip(by_rank, by_rank[1:]))
    copy0 = next(r for r in rows if r["id"] == "copy0")
    assert copy0["source"] == "web é" and copy0["subtask"] == "skill0"  # the subtask it copies is its closest
    messages = json.loads(data["copies"]["copy0"])["messages"]
    assert int(copy0["chars"]) == sum(len(m["content"]) for m in messages)
    summary = json.loads((out / "summary.json").read_text())
    assert summary["selected"] == 3 and summary["pool"]["skipped"]["no_label_tokens"] == 1
    assert summary["response"] == {"pool": "full", "target": "full"}  # what the gradients' loss covered


def test_parquet_and_json_array_pool_selects_like_jsonl(selection, stores, run, data, tmp_path):
    """The same pool as a Parquet file and a JSON array: same features and ranking, records as their JSON."""
    def records(path: Path) -> list[dict]:
        return [json.loads(line) for line in path.read_text(encoding="utf-8").splitlines()]

    (jsonl_a, jsonl_b), (out, _) = data["pool"], selection
    parquet = write_parquet(tmp_path / "pool_a.parquet", records(jsonl_a))
    array = tmp_path / "pool_b.json"
    array.write_text(json.dumps(records(jsonl_b)))
    pool = build(pool_config(run, data, tmp_path / "store", data=[parquet, array]))
    for c in run.checkpoints:
        name = f"{c.path.name}.npy"
        assert (pool.path / "features" / name).read_bytes() == (stores[0].path / "features" / name).read_bytes()

    select(SelectConfig(method="less", train_store=pool.path, target_store=[stores[1].path], output=tmp_path / "sel", count=3))
    assert records(tmp_path / "sel" / "selected.jsonl") == records(out / "selected.jsonl")
    assert '"source": "web é"' in (tmp_path / "sel" / "selected.jsonl").read_text(encoding="utf-8")  # not escaped


def test_scores_equal_lr_weighted_cosines_recomputed_from_the_store(selection, stores, run):
    """s_ij = sum_c w_c cos, w_c = checkpoint LR / sum (from the run, not the store); mean per subtask,
    max over subtasks. Each target example is its own subtask here, so the score is a max over them."""
    out, rows = selection
    pool, target = stores
    lrs = [c.lr for c in Run.open(run.path).checkpoints]
    weights = [lr / sum(lrs) for lr in lrs]
    sim = 0
    for w, c in zip(weights, Run.open(run.path).checkpoints):
        p = np.load(pool.path / "features" / f"{c.path.name}.npy").astype(np.float64)
        t = np.load(target.path / "features" / f"{c.path.name}.npy").astype(np.float64)
        sim = sim + w * (p @ t.T)
    expected = sim.max(axis=1)
    for i, r in enumerate(rows):
        if r["status"] == "ok":
            assert float(r["score"]) == pytest.approx(expected[i], abs=2e-6)


@pytest.mark.parametrize("chunk_rows", [1, 2, 5])
def test_scoring_in_chunks_equals_one_chunk(selection, stores, tmp_path, chunk_rows):
    # chunks are read ahead in a thread while the previous one is scored: each must land at its own rows
    pool, target = stores
    out = tmp_path / "chunked"
    select(SelectConfig(method="less", train_store=pool.path, target_store=[target.path], output=out, count=3,
                        chunk_rows=chunk_rows))
    with open(out / "scores.csv", newline="") as f:
        rows = list(csv.DictReader(f))
    assert [r["id"] for r in rows] == [r["id"] for r in selection[1]]
    # a one-row chunk is a matrix-vector product, summed in another order: equal up to float32 rounding
    scores = lambda rows: [float(r["score"] or "nan") for r in rows]  # rows without label tokens have none
    assert scores(rows) == pytest.approx(scores(selection[1]), abs=1e-6, nan_ok=True)
    assert (out / "selected.jsonl").read_bytes() == (selection[0] / "selected.jsonl").read_bytes()


def test_store_layout_and_manifest(stores, run, data):
    pool, target = stores
    m = pool.manifest
    assert m["status"] == "complete" and m["rows"] == 52 and m["gradient"] == "adam" and m["adam_form"] == "corrected"
    assert m["run"] == run.id and m["max_length"] == MAX_LENGTH
    assert [c["name"] for c in m["checkpoints"]] == [c.path.name for c in run.checkpoints]
    assert [c["lr"] for c in m["checkpoints"]] == [c.lr for c in run.checkpoints]
    assert sum(c["weight"] for c in m["checkpoints"]) == pytest.approx(1.0)
    assert m["projection"] == {"kind": "sparse", "input_dim": m["parameters"]["count"], "dim": DIM, "seed": 0, "nnz": 4}
    assert m["counts"] == {"examples": 52, "ok": 51, "no_label_tokens": 1, "bad_records": 0, "non_finite_gradient": 0}
    assert [f["path"] for f in m["files"]] == [str(p) for p in data["pool"]]
    assert target.manifest["gradient"] == "sgd" and target.manifest["adam_form"] is None
    ok = pool.ok_mask()
    for c in pool.checkpoints:
        features = pool.features(c["name"])
        assert features.dtype == np.float16 and features.shape == (52, DIM)
        norms = np.linalg.norm(np.asarray(features, np.float32), axis=1)
        assert np.allclose(norms[ok], 1.0, atol=2e-3) and (norms[~ok] == 0).all()
        assert not np.isnan(np.asarray(features, np.float32)).any()
    # the store re-opens from disk to the same index
    assert GradientStore.open(pool.path).index == pool.index


def test_complete_build_is_returned_untouched(stores, run, data):
    pool, _ = stores
    before = {p.name: p.read_bytes() for p in (pool.path / "features").iterdir()}
    mtime = (pool.path / "manifest.json").stat().st_mtime_ns
    again = build(pool_config(run, data, pool.path))
    assert again.complete
    assert {p.name: p.read_bytes() for p in (pool.path / "features").iterdir()} == before
    assert (pool.path / "manifest.json").stat().st_mtime_ns == mtime


# -- resuming --------------------------------------------------------------------------------------

def test_interrupted_build_resumes_to_identical_bytes(stores, run, data, tmp_path, monkeypatch):
    pool, target = stores
    output = tmp_path / "pool-store"
    real_write = GradientStore.write_rows
    calls = []

    def write_then_crash(self, checkpoint, start, rows, *progress):
        if len(calls) == 5:  # 4 chunks per checkpoint: dies inside the second checkpoint
            raise KeyboardInterrupt("killed")
        calls.append((checkpoint, start))
        return real_write(self, checkpoint, start, rows, *progress)

    monkeypatch.setattr(GradientStore, "write_rows", write_then_crash)
    with pytest.raises(KeyboardInterrupt):
        build(pool_config(run, data, output))
    monkeypatch.setattr(GradientStore, "write_rows", real_write)

    partial = GradientStore.open(output)
    assert not partial.complete
    first, second = (c.path.name for c in run.checkpoints)
    assert partial.committed() == {first: 52, second: 16}
    with pytest.raises(StoreMismatchError, match="not complete"):
        partial.check_comparable(target)
    committed = np.load(output / "features" / f"{second}.npy")[:16].tobytes()

    resumed_writes = []
    monkeypatch.setattr(GradientStore, "write_rows",
                        lambda self, c, s, r, *p: (resumed_writes.append((c, s)), real_write(self, c, s, r, *p))[1])
    resumed = build(pool_config(run, data, output))
    assert resumed.complete
    assert resumed_writes == [(second, 16), (second, 32), (second, 48)]  # nothing committed is redone
    assert np.load(output / "features" / f"{second}.npy")[:16].tobytes() == committed
    for c in run.checkpoints:
        name = f"{c.path.name}.npy"
        assert (output / "features" / name).read_bytes() == (pool.path / "features" / name).read_bytes()
    assert (output / "index.parquet").read_bytes() == (pool.path / "index.parquet").read_bytes()


def test_stores_built_together_equal_stores_built_alone(stores, run, data, tmp_path):
    """One gradient pass for several projections: each store byte-identical to its own build, and a
    store that is already further along is not rewritten."""
    pool, _ = stores
    alone = build(pool_config(run, data, tmp_path / "alone", projection="kronecker", dim=256))
    ahead = tmp_path / "ahead"  # a partial build of the default projection, one checkpoint and a chunk done
    shutil.copytree(pool.path, ahead)
    first, second = (c.path.name for c in run.checkpoints)
    (ahead / "progress.json").write_text(json.dumps({first: 52, second: 16}))
    manifest = json.loads((ahead / "manifest.json").read_text())
    (ahead / "manifest.json").write_text(json.dumps({**manifest, "status": "building"}, indent=2) + "\n")
    np.load(ahead / "features" / f"{second}.npy", mmap_mode="r+")[16:] = 0
    together = build_together([pool_config(run, data, tmp_path / "kron", projection="kronecker", dim=256),
                               pool_config(run, data, ahead)])
    assert all(s.complete for s in together)
    for mine, theirs in ((together[0].path, alone.path), (together[1].path, pool.path)):
        for name in ("index.parquet", "manifest.json", *(f"features/{c.path.name}.npy" for c in run.checkpoints)):
            assert (mine / name).read_bytes() == (theirs / name).read_bytes().replace(
                str(theirs).encode(), str(mine).encode()), name
    with pytest.raises(ConfigError, match="differ only in projection"):
        build_together([pool_config(run, data, tmp_path / "a"), pool_config(run, data, tmp_path / "b", gradient="sgd")])


# -- refusing what cannot be compared --------------------------------------------------------------

def differing_fields(message: str) -> list[str]:
    """The manifest fields a one-line mismatch error names ("... differ in F1 x vs y; F2 ...")."""
    return re.findall(r"(?:differ in |; )(\w+) ", message)


@pytest.mark.parametrize("change, field", [({"seed": 1}, "projection"), ({"dim": 512}, "projection"),
                                           ({"max_length": 48}, "max_length")])
def test_stores_with_other_projection_or_settings_are_not_comparable(stores, run, data, tmp_path, change, field):
    pool, _ = stores
    other = build(target_config(run, data, tmp_path / "target", **change))
    with pytest.raises(StoreMismatchError) as info:
        pool.check_comparable(other)
    message = str(info.value)
    assert differing_fields(message) == [field] and str(pool.path) in message and str(other.path) in message
    assert "\n" not in message
    with pytest.raises(StoreMismatchError):
        select(SelectConfig(method="less", train_store=pool.path, target_store=[other.path], output=tmp_path / "out", count=3))
    assert not (tmp_path / "out").exists()


def test_stores_from_different_runs_are_not_comparable(stores, tiny_model_dir, data, tmp_path):
    pool, _ = stores
    other_run = warmup(warmup_config(tiny_model_dir, data, tmp_path / "run2", seed=1))
    other = build(target_config(other_run, data, tmp_path / "target"))
    with pytest.raises(StoreMismatchError) as info:
        pool.check_comparable(other)
    assert differing_fields(str(info.value)) == ["run"]


def test_rebuilding_into_a_folder_with_other_settings_is_refused(stores, run, data):
    pool, target = stores
    before = (pool.path / "manifest.json").read_bytes()
    for change in ({"dim": 512}, {"seed": 3}, {"gradient": "sgd"}, {"adam_form": "less"}, {"data": data["pool"][:1]}):
        with pytest.raises(StoreMismatchError, match="different build"):
            build(pool_config(run, data, pool.path, **change))
    assert (pool.path / "manifest.json").read_bytes() == before


def test_select_refuses_impossible_counts(stores, tmp_path):
    pool, target = stores
    with pytest.raises(ConfigError):
        select(SelectConfig(method="less", train_store=pool.path, target_store=[target.path], output=tmp_path / "o", count=52))
    with pytest.raises(ConfigError):
        select(SelectConfig(method="less", train_store=pool.path, target_store=[target.path], output=tmp_path / "o",
                            fraction=0.0))


# -- scoring math ----------------------------------------------------------------------------------

def test_aggregate_subtask_mean_max_by_hand():
    sim = [[0.1, 0.5, 0.3, -0.2, 0.9],
           [0.4, 0.4, 0.0, 0.6, -0.1],
           [-0.3, 0.2, 0.8, 0.1, 0.0]]
    subtasks = ["b", "a", "b", "c", "a"]
    expected = []
    for row in sim:
        means = []
        for name in ("a", "b", "c"):
            values = [v for v, s in zip(row, subtasks) if s == name]
            means.append(sum(values) / len(values))
        expected.append(max(means))
    # row 0: a=(0.5+0.9)/2=0.7, b=0.2, c=-0.2 -> 0.7; row 1: a=0.15, b=0.2, c=0.6 -> 0.6
    assert expected[:2] == pytest.approx([0.7, 0.6])
    t = torch.tensor(sim, dtype=torch.float64)
    assert aggregate(t, subtasks).tolist() == pytest.approx(expected, abs=1e-12)
    assert aggregate(t, subtasks, "mean").tolist() == pytest.approx([sum(r) / 5 for r in sim], abs=1e-12)
    assert aggregate(t, subtasks, "max").tolist() == pytest.approx([max(r) for r in sim], abs=1e-12)
    with pytest.raises(ValueError):
        aggregate(t, subtasks, "median")


def test_round_robin_takes_each_subtasks_next_row_in_turn():
    rng = np.random.default_rng(0)
    means = rng.random((40, 3)).astype(np.float32)
    means[5] = means[6]  # a tie: the lower index first, in every subtask
    candidates = rng.random(40) < 0.8
    rows = np.flatnonzero(candidates)
    # by hand: round r visits subtask 0, 1, 2 and takes that subtask's r-th candidate unless already taken
    orders = [sorted(rows, key=lambda i: (-means[i, s], i)) for s in range(3)]
    expected = []
    for r in range(len(rows)):
        for order in orders:
            if order[r] not in expected:
                expected.append(order[r])
    scores = round_robin(means, candidates)
    assert top_k(scores[rows], len(rows)).tolist() == [rows.tolist().index(i) for i in expected]
    assert (scores[~candidates] < scores[candidates].min()).all()  # non-candidates last
    # a subtask with one relevant row still gets its turn: row 0 is best for subtask 2 only
    means = np.array([[0.0, 0.0, 1.0], [0.9, 0.9, 0.1], [0.8, 0.8, 0.2], [0.7, 0.7, 0.3]], np.float32)
    assert top_k(round_robin(means, np.ones(4, bool)), 2).tolist() == [1, 0]


def test_fuse_ranks_by_hand():
    rng = np.random.default_rng(1)
    scores = [rng.integers(0, 6, 30).astype(np.float32) for _ in range(3)]  # many ties
    candidates = rng.random(30) < 0.7
    rows = np.flatnonzero(candidates)
    rank = [{i: r for r, i in enumerate(sorted(rows, key=lambda i: (-s[i], i)))} for s in scores]
    by_hand = {
        "median": lambda i: (-np.median([r[i] for r in rank]), -np.mean([r[i] for r in rank])),
        "mean": lambda i: -np.mean([r[i] for r in rank]),
        "rrf": lambda i: sum(1 / (60 + r[i] + 1) for r in rank),
    }
    for how, key in by_hand.items():
        order = sorted(rows, key=lambda i: (tuple(-np.atleast_1d(key(i))), i))  # best first, ties to the lower row
        fused = fuse_ranks(scores, candidates, how)
        assert fused[order].tolist() == list(range(len(rows), 0, -1)), how
        assert (fused[~candidates] == 0).all()
    with pytest.raises(ValueError, match="unknown rank fusion"):
        fuse_ranks(scores, candidates, "max")
    # one method's outlier does not place a row under median fusion: row 0 is first for one method only
    one_loves_0 = [np.array([9, 0, 0, 0.0]), np.array([0, 3, 2, 1.0]), np.array([0, 3, 2, 1.0])]
    assert top_k(fuse_ranks(one_loves_0, np.ones(4, bool)), 2).tolist() == [1, 2]


def test_agreement_leaves_out_the_member_no_other_agrees_with():
    """Two members share most of their top rows and a third shares one: the agreement rule keeps the two
    (overlaps counted by hand) and fuses them as the median of two, their mean rank, so the third cannot
    lift row 3 (top for it and for the first, last but one for the second) into the top as the median of
    three does; a member sharing half as much as the pair stays, and with no overlap every member stays."""
    n = 100  # top 5% = 5 rows

    def scores(order):  # rows in ORDER first, then the rest in row order
        rank = list(order) + [i for i in range(n) if i not in order]
        out = np.zeros(n, np.float32)
        out[rank] = np.arange(n, 0, -1)
        return out

    first = scores([0, 1, 2, 3, 4])
    second = scores([0, 1, 2, 5, 6] + [i for i in range(7, n) if i not in (3, 4)] + [3, 4])
    third = scores([3, 50, 51, 52, 53])
    candidates = np.ones(n, bool)
    ranks = member_ranks([first, second, third], candidates)
    kept, overlap = agreeing(*rank_tops(ranks))
    assert kept == [0, 1]
    assert overlap[0, 1] == pytest.approx(3 / 5) and overlap[0, 2] == pytest.approx(1 / 5) and overlap[1, 2] == 0
    agreed = fuse_ranks([first, second, third], candidates, "agreement")
    assert np.array_equal(agreed, fuse_ranks([first, second], candidates, "median"))
    assert 3 in top_k(fuse_ranks([first, second, third], candidates, "median"), 5)
    assert 3 not in top_k(agreed, 5)
    shares_two = scores([3, 4, 50, 51, 52])  # 2 of 5 with the first: at least half the pair's 3
    assert agreeing(*rank_tops(member_ranks([first, second, shares_two], candidates)))[0] == [0, 1, 2]
    apart = [scores(range(10 * k, 10 * k + 5)) for k in range(3)]  # no two share a top row
    assert agreeing(*rank_tops(member_ranks(apart, candidates)))[0] == [0, 1, 2]
    assert agreeing(*value_tops(apart))[0] == [0, 1, 2]
    for members in ([first, second, third], [first, second, shares_two]):  # the same tops from values
        from_values, from_ranks = value_tops(members)[0], rank_tops(member_ranks(members, candidates))[0]
        assert [t.tolist() for t in from_values] == [t.tolist() for t in from_ranks]
    tied = np.array([0, 1, 1, 1, 0] * 20, np.float32)  # ties across the cut: the earlier rows, as top_k takes
    assert value_tops([tied])[0][0].tolist() == sorted(top_k(tied, 5).tolist()) == [1, 2, 3, 6, 7]


def test_zscore_sums_the_agreeing_members_standardized_scores():
    """``zscore`` ranks rows by the sum, over the members that agree, of (score - mean) / std computed
    here by hand: a member whose top rows stand far out outweighs one whose scores are flat, where the
    median of ranks would split the difference; a member no other agrees with adds nothing."""
    n = 200
    rng = np.random.default_rng(1)
    peaked = rng.normal(size=n)
    peaked[:10] += 20  # ten rows far above the rest
    flat = peaked * 0.1 + rng.normal(size=n)  # agrees loosely, no row stands out
    flat[10:20] += 2.5  # its own top rows
    apart = -peaked  # agrees with neither
    candidates = np.ones(n, bool)
    fused = fuse_ranks([peaked, flat, apart], candidates, "zscore")
    z = sum((s - s.mean()) / s.std() for s in (peaked, flat))
    assert np.array_equal(top_k(fused, n), top_k(z, n))
    assert set(top_k(fused, 10)) == set(range(10))
    assert set(top_k(fuse_ranks([peaked, flat], candidates, "median"), 10)) != set(range(10))
    with pytest.raises(ValueError, match="standardized scores"):
        fuse_member_ranks(member_ranks([peaked, flat], candidates), candidates, "zscore")


def test_fusion_sums_the_agreeing_standardized_scores_of_less_bm25_and_rds(stores, tmp_path):
    pool, target = stores
    out = tmp_path / "fusion"
    (fused,) = select(SelectConfig(train_store=pool.path, target_store=[target.path], output=out, count=3,
                                   max_length=MAX_LENGTH, device="cpu"))  # the default method
    members = {}
    for method in ("less", "bm25", "rds"):
        files = {"train_store": pool.path, "target_store": [target.path]} if method == "less" else \
            {"pool": [Path(f["path"]) for f in pool.manifest["files"]],
             "target": [Path(f["path"]) for f in target.manifest["files"]], "model": pool.manifest["model"]["name"]}
        (members[method],) = select(SelectConfig(method=method, output=tmp_path / method, count=3,
                                                 max_length=MAX_LENGTH, device="cpu", **files))
    ok = fused.scored
    expected = fuse_ranks([np.where(ok, m.scores, 0) for m in members.values()], ok, "zscore")
    assert np.array_equal(fused.scores[ok], expected[ok])
    summary = json.loads((out / "summary.json").read_text())
    assert summary["method"] == "fusion" and summary["method_settings"]["fuse"] == "zscore"
    assert summary["method_settings"]["target_part"] == summary["method_settings"]["pool_part"] == "prompt"


def test_weighted_similarity_and_weights():
    assert checkpoint_weights([2e-5, 1e-5, 1e-5]).tolist() == pytest.approx([0.5, 0.25, 0.25])
    with pytest.raises(ValueError):
        checkpoint_weights([0.0, 0.0])
    g = torch.Generator().manual_seed(0)
    pool = [torch.nn.functional.normalize(torch.randn(4, 8, generator=g), dim=1) for _ in range(2)]
    target = [torch.nn.functional.normalize(torch.randn(3, 8, generator=g), dim=1) for _ in range(2)]
    w = np.array([0.25, 0.75])
    got = weighted_similarity(pool, target, w)
    for i in range(4):
        for j in range(3):
            expected = sum(w[c] * float(pool[c][i] @ target[c][j]) for c in range(2))
            assert got[i, j].item() == pytest.approx(expected, abs=1e-6)


def test_top_k_ties_go_to_the_lower_index():
    scores = np.array([0.5, 0.9, 0.5, 0.9, 0.1, 0.5], dtype=np.float32)
    assert top_k(scores, 6).tolist() == [1, 3, 0, 2, 5, 4]
    assert top_k(scores, 3).tolist() == [1, 3, 0]
    assert top_k(np.zeros(5), 5).tolist() == [0, 1, 2, 3, 4]
    assert top_k(-np.arange(5.0), 2).tolist() == [0, 1]
    assert top_k(np.array([0.0, -0.0, 1.0, 0.0], dtype=np.float32), 4).tolist() == [2, 0, 1, 3]  # -0.0 == 0.0
    with pytest.raises(ValueError, match="NaN"):
        top_k(np.array([0.1, np.nan]), 1)


def test_a_format_1_store_with_its_json_lines_index_still_opens_and_selects(stores, data, tmp_path):
    pool, target = stores
    old = tmp_path / "v1"
    shutil.copytree(pool.path, old)
    (old / "index.jsonl").write_bytes(pool.index.to_jsonl())
    (old / "index.parquet").unlink()
    manifest = json.loads((old / "manifest.json").read_text())
    (old / "manifest.json").write_text(json.dumps({**manifest, "format": 1}))
    reopened = GradientStore.open(old)
    assert reopened.index == pool.index and list(reopened.index) == list(pool.index)
    first = select(SelectConfig(method="less", train_store=pool.path, target_store=[target.path], output=tmp_path / "a", count=3))
    second = select(SelectConfig(method="less", train_store=old, target_store=[target.path], output=tmp_path / "b", count=3))
    assert (tmp_path / "a" / "selected.jsonl").read_bytes() == (tmp_path / "b" / "selected.jsonl").read_bytes()
    assert first[0].ranking.tolist() == second[0].ranking.tolist()


def test_relevance_auc_counts_the_pairs_a_relevant_row_wins():
    rng = np.random.default_rng(0)
    scores = rng.integers(0, 5, 40).astype(float)  # many ties
    relevant = rng.random(40) < 0.3
    wins = [(a > b) + 0.5 * (a == b) for a in scores[relevant] for b in scores[~relevant]]
    assert relevance_auc(scores, relevant) == pytest.approx(np.mean(wins))
    assert relevance_auc(np.arange(4.0), np.array([0, 0, 1, 1], bool)) == 1.0
    assert relevance_auc(np.zeros(4), np.array([0, 0, 1, 1], bool)) == 0.5


def test_outputs_written_a_few_rows_at_a_time_equal_one_piece(selection, stores, tmp_path, monkeypatch):
    # scores.csv and selected.jsonl are made in row blocks (a 10M-row pool never becomes 10M objects):
    # with blocks of 4 rows, the files are the same bytes, and summary.json holds their hashes
    import hashlib

    import gradsift.selection.select as select_module

    pool, target = stores
    monkeypatch.setattr(select_module, "ROWS_AT_ONCE", 4)
    out = tmp_path / "blocks"
    select(SelectConfig(method="less", train_store=pool.path, target_store=[target.path], output=out, count=6))
    whole = tmp_path / "whole"
    monkeypatch.setattr(select_module, "ROWS_AT_ONCE", 1 << 20)
    select(SelectConfig(method="less", train_store=pool.path, target_store=[target.path], output=whole, count=6))
    summary = json.loads((out / "summary.json").read_text())
    for name in ("scores.csv", "selected.jsonl"):
        assert (out / name).read_bytes() == (whole / name).read_bytes()
        assert summary["checksums"][name] == hashlib.sha256((out / name).read_bytes()).hexdigest()
    assert len((out / "selected.jsonl").read_bytes().splitlines()) == 6


def test_an_index_written_with_64_bit_and_string_columns_opens_as_today(stores, tmp_path):
    # stores of format 2 written before the index held int32 counts and coded strings still open, equal
    import pyarrow as pa
    import pyarrow.parquet as pq

    from gradsift.data.index import SCHEMA

    pool, target = stores
    old = tmp_path / "wide"
    shutil.copytree(pool.path, old)
    table = pq.read_table(old / "index.parquet")
    wide = pa.schema([(f.name, pa.string() if pa.types.is_dictionary(f.type) else
                       pa.int64() if pa.types.is_integer(f.type) else f.type) for f in SCHEMA])
    pq.write_table(table.cast(wide), old / "index.parquet")
    reopened = GradientStore.open(old)
    assert reopened.index.table.schema.equals(SCHEMA) and reopened.index == pool.index
    assert list(reopened.index) == list(pool.index)
    statuses = [r.status for r in pool.index]
    assert reopened.index.ok_mask().tolist() == [s == "ok" for s in statuses]
    assert reopened.index.counts("source") == {s: [r.source for r in pool.index].count(s)
                                              for s in {r.source for r in pool.index}}
    for out, store in (("a", pool.path), ("b", old)):
        select(SelectConfig(method="less", train_store=store, target_store=[target.path], output=tmp_path / out, count=3))
    assert (tmp_path / "a" / "scores.csv").read_bytes() == (tmp_path / "b" / "scores.csv").read_bytes()
