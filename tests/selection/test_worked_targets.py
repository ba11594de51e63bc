"""LESS's own setting on a tiny model: targets given as worked answers ("Let's think step by step ... So
the answer is X."), relevant pool records answered directly, unrelated pool records worked the same way.
The default selection (fusion, no flags) finds the relevant family; fusion as it was (whole texts, the
median of the three) lets the worked form pull unrelated records in."""

from __future__ import annotations

import json
import random

import pytest
from helpers import pool_config, target_config, warmup_config, write_jsonl

from gradsift.config import SelectConfig
from gradsift.features.build import build
from gradsift.selection.select import select
from gradsift.training.warmup import warmup

WORKED = ("Let's think step by step. First we look at each {what} carefully, then we weigh them carefully, "
          "step by step. So the answer is {answer}.")


@pytest.fixture(scope="module")
def worked_stores(tiny_model_dir, tmp_path_factory):
    root = tmp_path_factory.mktemp("worked")
    rng = random.Random(5)
    pairs = [(rng.randint(1, 99), rng.randint(1, 99)) for _ in range(9)]
    targets = [{"id": f"t{k}", "prompt": f"Which is more, {a} or {b}? Compare the numbers.",
                "completion": WORKED.format(what="number", answer=max(a, b))} for k, (a, b) in enumerate(pairs[:3])]
    relevant = [{"id": f"rel{k}", "prompt": f"Which is more, {a} or {b}?", "completion": str(max(a, b))}
                for k, (a, b) in enumerate(pairs[3:])]
    words = ["cat", "house", "garden", "window", "table", "river", "stone", "cloud", "apple", "road"]
    worked = [{"id": f"w{k}", "prompt": f"Spell the word {w} backwards.",
               "completion": WORKED.format(what="letter", answer=w[::-1])} for k, w in enumerate(words)]
    # enough unrelated records for the top 5% to be a handful of rows (the members' agreement is counted there)
    chatter = [{"id": f"c{k}", "prompt": f"Name a {rng.choice(['colour', 'shape', 'sound'])} that goes with "
                                         f"{rng.choice(words)} and {rng.choice(words)}.",
                "completion": rng.choice(["red", "blue", "round", "loud"])} for k in range(100)]
    records = worked[:5] + relevant[:3] + chatter + relevant[3:] + worked[5:]
    data = {"pool": [write_jsonl(root / "pool.jsonl", records)], "target": write_jsonl(root / "target.jsonl", targets)}
    run = warmup(warmup_config(tiny_model_dir, data, root / "run"))
    pool = build(pool_config(run, data, root / "pool-store"))
    target = build(target_config(run, data, root / "target-store"))
    return root, pool, target


def _picked(root, pool, target, name, **settings) -> set[str]:
    out = root / name
    select(SelectConfig(train_store=pool.path, target_store=[target.path], output=out, count=6, max_length=64,
                        device="cpu", **settings))
    return {json.loads(line)["id"] for line in (out / "selected.jsonl").read_text().splitlines()}


def test_the_default_selects_the_relevant_family_for_worked_targets(worked_stores):
    root, pool, target = worked_stores
    default = _picked(root, pool, target, "default")
    # the tiny model is random, so its embeddings match words loosely: most picks, not all, are relevant
    assert not any(i.startswith("w") for i in default) and sum(i.startswith("rel") for i in default) >= 4
    before = _picked(root, pool, target, "before", target_part="whole", pool_part="whole", fuse="median")
    assert sum(i.startswith("w") for i in before) >= 2  # the worked form pulls unrelated worked records in
    assert sum(i.startswith("rel") for i in before) < sum(i.startswith("rel") for i in default)
