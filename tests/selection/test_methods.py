"""Selection methods other than less (bm25, rds, random, full) against references computed here, and the
outputs and errors every method shares through ``select``."""

from __future__ import annotations

import csv
import json
import math
import random
import re
from pathlib import Path

import numpy as np
import pytest
import torch
from bm25s.stopwords import STOPWORDS_EN
from helpers import WORDS, chat_records, write_jsonl

from gradsift.cli import main
from gradsift.config import SelectConfig
from gradsift.data.chat import ChatEncoder
from gradsift.selection.methods import Bm25, Oracle, Pool, RandomSelection, Rds, Target
from gradsift.selection.select import run_selection, select
from gradsift.utils.errors import ConfigError

COLUMNS = ["file", "line", "id", "source", "score", "rank", "selected", "status", "subtask", "chars"]


def write_lines(path: Path, lines: list[str]) -> Path:
    path.write_text("".join(line + "\n" for line in lines), encoding="utf-8")
    return path


def read_scores(out: Path) -> list[dict]:
    with open(out / "scores.csv", newline="", encoding="utf-8") as f:
        return list(csv.DictReader(f))


def contents(record: dict) -> list[str]:
    """The turns' texts of a messages or prompt/completion record, in order."""
    if "messages" in record:
        return [m["content"] for m in record["messages"]]
    return [record["prompt"], record["completion"]]


def subtask_mean_max(sim: np.ndarray, subtasks: list[str]) -> np.ndarray:
    """Mean over each subtask's target examples, then max over subtasks, one row at a time."""
    out = []
    for row in sim:
        means = [np.mean([v for v, s in zip(row, subtasks) if s == name]) for name in sorted(set(subtasks))]
        out.append(max(means))
    return np.array(out)


def closest_subtask(sim: np.ndarray, subtasks: list[str]) -> list[str]:
    names = sorted(set(subtasks))
    return [names[int(np.argmax([np.mean([v for v, s in zip(row, subtasks) if s == n]) for n in names]))]
            for row in sim]


# -- BM25 ------------------------------------------------------------------------------------------

def bm25_tokens(text: str) -> list[str]:
    return [t for t in re.findall(r"\b\w+\b", text.lower()) if t not in STOPWORDS_EN]  # one-letter words count


def bm25_reference(docs: list[str], queries: list[str], k1: float = 1.5, b: float = 0.75) -> np.ndarray:
    """Okapi BM25, Lucene variant as bm25s computes it: (docs, queries), summed over every query token
    occurrence. Like Lucene since 8.0, bm25s leaves out the textbook (k1 + 1) factor of the term weight:
    a constant, so rankings are the same."""
    tokens = [bm25_tokens(d) for d in docs]
    n, avgdl = len(tokens), sum(len(t) for t in tokens) / len(tokens)
    out = np.zeros((n, len(queries)))
    for j, query in enumerate(queries):
        for term in bm25_tokens(query):
            df = sum(term in t for t in tokens)
            if df == 0:
                continue
            idf = math.log(1 + (n - df + 0.5) / (df + 0.5))
            for i, t in enumerate(tokens):
                tf = t.count(term)
                out[i, j] += idf * tf / (tf + k1 * (1 - b + b * len(t) / avgdl))
    return out


BM25_POOL = [
    {"id": "p0", "messages": [{"role": "user", "content": "Translate hello world to French."},
                              {"role": "assistant", "content": "Bonjour le monde."}]},
    {"id": "p1", "prompt": "What is two plus two?", "completion": "Two plus two equals four."},
    {"id": "p2", "messages": [{"role": "system", "content": "You are a cat."},
                              {"role": "user", "content": "Is the cat on the mat?"},
                              {"role": "assistant", "content": "The cat sat on the mat, the red mat."}]},
    {"id": "p3", "prompt": "Add three and four.", "completion": "Three plus four is seven; seven."},
    {"id": "p4", "messages": [{"role": "user", "content": "Say hello in French, then in Spanish."},
                              {"role": "assistant", "content": "Bonjour! Hola!"}]},
    {"id": "p5", "prompt": "Dogs or cats?", "completion": "Dogs, because dogs are loyal."},
]
BM25_TARGET = [  # two subtasks; "plus plus" repeats a query term; the last has no token after stopwords
    {"id": "t0", "subtask": "math", "prompt": "Two plus plus four?", "completion": "Six."},
    {"id": "t1", "subtask": "math", "prompt": "Seven minus three", "completion": "four"},
    {"id": "t2", "subtask": "french", "prompt": "Hello in French", "completion": "Bonjour"},
    {"id": "t3", "subtask": "french", "prompt": "Is it a?", "completion": "No, it is not."},
]


@pytest.fixture(scope="module")
def bm25_files(tmp_path_factory):
    root = tmp_path_factory.mktemp("bm25")
    return (write_jsonl(root / "pool_a.jsonl", BM25_POOL[:3]), write_jsonl(root / "pool_b.jsonl", BM25_POOL[3:]),
            write_jsonl(root / "target.jsonl", BM25_TARGET))


def test_bm25_similarities_and_scores_equal_a_direct_okapi_computation(bm25_files):
    pool_a, pool_b, target_path = bm25_files
    pool = Pool.from_files([pool_a, pool_b])
    target = Target.from_files("target", [target_path])
    expected = bm25_reference(["\n".join(contents(r)) for r in BM25_POOL],
                              ["\n".join(contents(r)) for r in BM25_TARGET])
    assert (expected[:, 3] == 0).all() and (expected[:, :3] > 0).any(0).all()  # the data exercises both cases

    whole = Bm25(target_part="whole", pool_part="whole")
    ((start, (sim,)),) = list(whole.similarities(pool, [target]))
    assert start == 0 and sim.shape == (6, 4)
    np.testing.assert_allclose(sim.double().numpy(), expected, rtol=1e-5, atol=1e-6)

    (result,) = whole.score(pool, [target])
    subtasks = ["math", "math", "french", "french"]
    np.testing.assert_allclose(result.scores, subtask_mean_max(expected, subtasks), rtol=1e-5, atol=1e-6)
    assert result.subtask == closest_subtask(expected, subtasks)
    assert result.subtask[1] == "math" and result.subtask[0] == "french"  # p1 is arithmetic, p0 French


def test_bm25_reads_the_part_of_an_example_it_is_told(bm25_files):
    pool_a, pool_b, target_path = bm25_files
    pool = Pool.from_files([pool_a, pool_b])
    target = Target.from_files("target", [target_path])
    prompt = lambda r: r["prompt"] if "prompt" in r else "\n".join(  # noqa: E731
        m["content"] for m in r["messages"] if m["role"] != "assistant")
    answer = lambda r: r["completion"] if "completion" in r else r["messages"][-1]["content"]  # noqa: E731
    for target_part, pool_part, query, doc in (("prompt", "whole", prompt, lambda r: "\n".join(contents(r))),
                                               ("answer", "prompt", answer, prompt)):
        expected = bm25_reference([doc(r) for r in BM25_POOL], [query(r) for r in BM25_TARGET])
        ((_, (sim,)),) = list(Bm25(target_part=target_part, pool_part=pool_part).similarities(pool, [target]))
        np.testing.assert_allclose(sim.double().numpy(), expected, rtol=1e-5, atol=1e-6)


def test_targets_worked_step_by_step_find_direct_records_by_their_prompts(tmp_path):
    """Targets answered with worked reasoning, relevant pool records answered directly, and unrelated records
    worked the same way: the whole targets' words match the form; their prompts match the task."""
    targets = [{"id": f"t{k}", "prompt": f"Which is more, {a} or {b}? Compare the numbers.",
                "completion": f"Let's think step by step. First we look at each number carefully, then we weigh them "
                              f"carefully, step by step. So the answer is {max(a, b)}."}
               for k, (a, b) in enumerate([(3, 8), (15, 4), (6, 11)])]
    relevant = [{"id": f"rel{k}", "prompt": f"Which is more, {a} or {b}?", "completion": str(max(a, b))}
                for k, (a, b) in enumerate([(2, 7), (30, 12), (5, 9)])]
    worked_elsewhere = [{"id": f"w{k}", "prompt": f"Spell the word {w} backwards.",
                         "completion": "Let's think step by step. First we look at each letter carefully, then we weigh "
                                       f"them carefully, step by step. So the answer is {w[::-1]}."}
                        for k, w in enumerate(["cat", "house", "garden", "window", "table", "river"])]
    pool = write_jsonl(tmp_path / "pool.jsonl", worked_elsewhere[:3] + relevant + worked_elsewhere[3:])
    target = write_jsonl(tmp_path / "target.jsonl", targets)
    picked = {}
    for name, parts in (("whole", {"target_part": "whole", "pool_part": "whole"}),
                        ("prompt-whole", {"target_part": "prompt", "pool_part": "whole"}), ("default", {})):
        out = tmp_path / name
        select(SelectConfig(method="bm25", pool=[pool], target=[target], output=out, count=3, **parts))
        picked[name] = {json.loads(line)["id"] for line in (out / "selected.jsonl").read_text().splitlines()}
        settings = json.loads((out / "summary.json").read_text())["method_settings"]
        expected = parts or {"target_part": "prompt", "pool_part": "prompt"}  # the default reads the prompts
        assert {k: settings[k] for k in expected} == expected
    assert picked["prompt-whole"] == picked["default"] == {"rel0", "rel1", "rel2"}
    assert picked["whole"] != picked["default"]  # the worked form pulls unrelated worked records in


def test_bm25_matches_prompts_made_of_symbols_and_digits(tmp_path):
    """Arithmetic prompts have no word of two letters: their digits are the words BM25 can match."""
    rng = np.random.default_rng(0)
    expression = lambda: " ".join(f"({rng.integers(-9, 10)} {rng.choice(['+', '-', '*'])} {rng.integers(-9, 10)})"  # noqa: E731
                                  for _ in range(3)) + " ="
    relevant = [{"id": f"rel{k}", "prompt": expression(), "completion": str(k)} for k in range(4)]
    prose = [{"id": f"p{k}", "prompt": f"Name a colour seen in painting number {k + 10}.", "completion": "blue"}
             for k in range(8)]
    targets = [{"id": f"t{k}", "prompt": expression(), "completion": f"Let's think step by step. So the answer is {k}."}
               for k in range(3)]
    pool = write_jsonl(tmp_path / "pool.jsonl", prose[:4] + relevant + prose[4:])
    out = tmp_path / "sel"
    select(SelectConfig(method="bm25", pool=[pool], target=[write_jsonl(tmp_path / "t.jsonl", targets)],
                        output=out, count=4))
    assert {json.loads(line)["id"] for line in (out / "selected.jsonl").read_text().splitlines()} == \
        {r["id"] for r in relevant}


SKILL_WORDS = "premise conclusion valid invalid syllogism entails all some none every".split()


@pytest.fixture(scope="module")
def copies_data(tmp_path_factory):
    """A pool of general chat with three target examples copied in (differently written JSON), and the target."""
    root = tmp_path_factory.mktemp("copies")
    rng = random.Random(7)

    def say(lo: int, hi: int) -> str:  # the skill has words of its own besides the pool's
        return " ".join(rng.choice(SKILL_WORDS + WORDS) for _ in range(rng.randint(lo, hi)))

    target = [{"id": f"t{k}", "subtask": f"skill{k}", "messages": [
        {"role": "user", "content": say(8, 20)}, {"role": "assistant", "content": say(8, 15)}]} for k in range(3)]
    target_path = write_jsonl(root / "target.jsonl", target)
    copies = [
        json.dumps({"messages": target[0]["messages"], "id": "copy0"}, separators=(",", ":")),
        '{ "prompt" : ' + json.dumps(target[1]["messages"][0]["content"]) + ',  "completion": '
        + json.dumps(target[1]["messages"][1]["content"]) + ', "id": "copy1" }',
        json.dumps({"id": "copy2", "source": "web", "messages": target[2]["messages"]}, indent=None),
    ]
    pool_a = [json.dumps(r) for r in chat_records(rng, 12, "a")]
    pool_b = [json.dumps(r) for r in chat_records(rng, 12, "b")]
    pool_a.insert(4, copies[0])
    pool_b.insert(2, copies[1])
    pool_b.insert(9, copies[2])
    pool = [write_lines(root / "pool_a.jsonl", pool_a), write_lines(root / "pool_b.jsonl", pool_b)]
    return {"root": root, "pool": pool, "target": target_path, "copies": copies}


def test_bm25_ranks_verbatim_copies_of_the_targets_first(copies_data, tmp_path):
    out = tmp_path / "sel"
    select(SelectConfig(method="bm25", pool=copies_data["pool"], target=[copies_data["target"]], output=out,
                        count=3))
    lines = (out / "selected.jsonl").read_bytes().splitlines()
    assert sorted(lines) == sorted(c.encode() for c in copies_data["copies"])  # byte-for-byte
    by_rank = sorted(read_scores(out), key=lambda r: int(r["rank"]))
    assert [r["id"] for r in by_rank[:3]] == [json.loads(line)["id"] for line in lines]
    assert float(by_rank[2]["score"]) > float(by_rank[3]["score"])
    assert {r["id"]: r["subtask"] for r in by_rank[:3]} == {"copy0": "skill0", "copy1": "skill1", "copy2": "skill2"}


# -- RDS -------------------------------------------------------------------------------------------

RDS_MAX_LENGTH = 32


@pytest.fixture(scope="module")
def rds_data(tmp_path_factory):
    """A pool of 11 chats of varied lengths (some truncated at RDS_MAX_LENGTH) and a target in two subtasks."""
    root = tmp_path_factory.mktemp("rds")
    rng = random.Random(3)
    pool = chat_records(rng, 11, "p")
    target = chat_records(rng, 2, "s", subtask="one") + chat_records(rng, 1, "u", subtask="two")
    return {"pool_records": pool, "target_records": target, "target_subtasks": ["one", "one", "two"],
            "pool": [write_jsonl(root / "pool.jsonl", pool)], "target": [write_jsonl(root / "target.jsonl", target)]}


@pytest.fixture(scope="module")
def rds_reference(tiny_model_dir, rds_data):
    """Pool-by-target cosines of position-weighted mean-pooled last hidden states, one example at a time."""
    from transformers import AutoModelForCausalLM, AutoTokenizer

    model = AutoModelForCausalLM.from_pretrained(tiny_model_dir, dtype=torch.float32).eval()
    encoder = ChatEncoder(AutoTokenizer.from_pretrained(tiny_model_dir), RDS_MAX_LENGTH)

    def embed(records, keep=lambda role: True):
        rows = []
        for r in records:
            ids = encoder.encode([m for m in r["messages"] if keep(m["role"])])[0]
            with torch.no_grad():
                hidden = model(input_ids=torch.tensor([ids]), output_hidden_states=True).hidden_states[-1][0]
            t = torch.arange(1, len(ids) + 1, dtype=torch.float64)
            pooled = (t / t.sum()) @ hidden.double()
            rows.append(pooled / pooled.norm())
        return torch.stack(rows), [len(encoder.encode(r["messages"])[0]) for r in records]

    pool, lengths = embed(rds_data["pool_records"])
    target, _ = embed(rds_data["target_records"])
    prompts, _ = embed(rds_data["target_records"], lambda role: role == "user")
    answers, _ = embed(rds_data["pool_records"], lambda role: role == "assistant")
    pool_prompts, _ = embed(rds_data["pool_records"], lambda role: role != "assistant")
    return {"sim": (pool @ target.T).numpy(), "lengths": lengths, "answers_to_prompts": (answers @ prompts.T).numpy(),
            "prompts_to_prompts": (pool_prompts @ prompts.T).numpy()}


@pytest.mark.parametrize("batch_size", [1, 4, 16])
def test_rds_scores_equal_unbatched_reference(tiny_model_dir, rds_data, rds_reference, batch_size):
    lengths = rds_reference["lengths"]
    assert len(set(lengths)) > 3 and max(lengths) == RDS_MAX_LENGTH  # padding in batches; truncation exercised
    pool = Pool.from_files(rds_data["pool"])
    target = Target.from_files("target", rds_data["target"])
    method = Rds(model=str(tiny_model_dir), max_length=RDS_MAX_LENGTH, batch_size=batch_size, device="cpu",
                 target_part="whole", pool_part="whole")
    (sim,) = [s for _, (s,) in method.similarities(pool, [target])]
    np.testing.assert_allclose(sim.numpy(), rds_reference["sim"], atol=1e-5)
    (result,) = method.score(pool, [target])
    expected = subtask_mean_max(rds_reference["sim"], rds_data["target_subtasks"])
    np.testing.assert_allclose(result.scores, expected, atol=1e-5)


def test_rds_reads_the_part_of_an_example_it_is_told(tiny_model_dir, rds_data, rds_reference):
    pool = Pool.from_files(rds_data["pool"])
    target = Target.from_files("target", rds_data["target"])
    method = Rds(model=str(tiny_model_dir), max_length=RDS_MAX_LENGTH, batch_size=4, device="cpu",
                 target_part="prompt", pool_part="answer")
    (sim,) = [s for _, (s,) in method.similarities(pool, [target])]
    np.testing.assert_allclose(sim.numpy(), rds_reference["answers_to_prompts"], atol=1e-5)
    assert not np.allclose(rds_reference["answers_to_prompts"], rds_reference["sim"], atol=1e-3)
    default = Rds(model=str(tiny_model_dir), max_length=RDS_MAX_LENGTH, batch_size=4, device="cpu")  # reads prompts
    (sim,) = [s for _, (s,) in default.similarities(pool, [target])]
    np.testing.assert_allclose(sim.numpy(), rds_reference["prompts_to_prompts"], atol=1e-5)
    assert not np.allclose(rds_reference["prompts_to_prompts"], rds_reference["sim"], atol=1e-3)


def test_rds_through_select(tiny_model_dir, rds_data, rds_reference, tmp_path):
    out = tmp_path / "sel"
    select(SelectConfig(method="rds", model=str(tiny_model_dir), pool=rds_data["pool"], target=rds_data["target"],
                        output=out, count=4, max_length=RDS_MAX_LENGTH, batch_size=4, device="cpu",
                        target_part="whole", pool_part="whole"))
    expected = subtask_mean_max(rds_reference["sim"], rds_data["target_subtasks"])
    rows = read_scores(out)
    np.testing.assert_allclose([float(r["score"]) for r in rows], expected, atol=1e-5)
    assert [r["subtask"] for r in rows] == closest_subtask(rds_reference["sim"], rds_data["target_subtasks"])
    assert [int(r["rank"]) for r in rows] == (np.argsort(np.argsort(-expected, kind="stable")) + 1).tolist()
    settings = json.loads((out / "summary.json").read_text())["method_settings"]
    assert settings == {"aggregate": "subtask-mean-max", "model": str(tiny_model_dir), "max_length": RDS_MAX_LENGTH,
                        "target_part": "whole", "pool_part": "whole"}


def test_rds_without_a_model_is_a_config_error(rds_data, tmp_path):
    with pytest.raises(ConfigError, match="--model"):
        select(SelectConfig(method="rds", pool=rds_data["pool"], target=rds_data["target"], output=tmp_path / "o",
                            count=2))
    assert not (tmp_path / "o").exists()


@pytest.mark.parametrize("max_length", [0, -5])
def test_a_non_positive_max_length_is_a_config_error(tiny_model_dir, rds_data, tmp_path, max_length):
    # not taken as unset: a user who wrote --max-length 0 gets told, not the 1024 default
    with pytest.raises(ConfigError, match=f"--max-length must be a positive number of tokens, got {max_length}"):
        select(SelectConfig(method="rds", model=str(tiny_model_dir), pool=rds_data["pool"], target=rds_data["target"],
                            output=tmp_path / "o", count=2, max_length=max_length))
    assert not (tmp_path / "o").exists()


# -- random and full -------------------------------------------------------------------------------

def test_random_scores_are_numpys_default_rng_draw(copies_data, tmp_path):
    config = dict(method="random", pool=copies_data["pool"], target=[copies_data["target"]], count=5)
    (sel,) = select(SelectConfig(**config, output=tmp_path / "s0", seed=11))
    draw = np.random.default_rng(11).random(27)
    np.testing.assert_array_equal(sel.scores, draw.astype(np.float32))
    assert ((sel.scores >= 0) & (sel.scores < 1)).all()
    assert sel.selected.tolist() == np.argsort(-draw, kind="stable")[:5].tolist()
    rows = read_scores(tmp_path / "s0")
    assert [int(r["selected"]) for r in rows] == [int(i in sel.selected) for i in range(27)]

    (same,) = select(SelectConfig(**config, output=tmp_path / "s1", seed=11))
    np.testing.assert_array_equal(same.scores, sel.scores)
    assert (tmp_path / "s1" / "selected.jsonl").read_bytes() == (tmp_path / "s0" / "selected.jsonl").read_bytes()
    (other,) = select(SelectConfig(**config, output=tmp_path / "s2", seed=12))
    assert other.selected.tolist() != sel.selected.tolist()
    assert (tmp_path / "s2" / "selected.jsonl").read_bytes() != (tmp_path / "s0" / "selected.jsonl").read_bytes()


def test_random_selection_does_not_depend_on_the_target(copies_data, tmp_path):
    other_target = write_jsonl(tmp_path / "other.jsonl", chat_records(random.Random(99), 5, "o", subtask="x"))
    for name, target in (("a", copies_data["target"]), ("b", other_target)):
        select(SelectConfig(method="random", pool=copies_data["pool"], target=[target], output=tmp_path / name,
                            count=6, seed=3))
    assert (tmp_path / "a" / "selected.jsonl").read_bytes() == (tmp_path / "b" / "selected.jsonl").read_bytes()
    pool = Pool.from_files(copies_data["pool"])
    targets = [Target.from_files(n, [p]) for n, p in (("a", copies_data["target"]), ("b", other_target))]
    a, b = RandomSelection(seed=3).score(pool, targets)
    np.testing.assert_array_equal(a.scores, b.scores)


def test_oracle_selects_the_labelled_records_and_fills_the_cut_at_random(copies_data, tmp_path):
    pool = Pool.from_files(copies_data["pool"])
    ids = pool.refs.column("id").tolist()
    labels = {"many": {"copy0", "copy1", "copy2", ids[0], ids[5], ids[20]}, "few": {"copy1"}}
    targets = [Target.from_files(name, [copies_data["target"]]) for name in labels]
    outs = [tmp_path / name for name in labels]
    many, few = run_selection(Oracle(labels, seed=5), pool, targets, outs, count=4)
    picked = [set(np.asarray(ids)[s.selected]) for s in (many, few)]
    assert picked[0] < labels["many"]  # 4 of the 6 labelled records, no other
    assert "copy1" in picked[1] and len(picked[1]) == 4  # the one labelled record, then 3 others
    order = np.random.default_rng(5).random(len(ids))  # the fill: the seed's draw, best first
    others = [i for i in np.argsort(-order, kind="stable") if ids[i] != "copy1"][:3]
    assert picked[1] == {"copy1"} | {ids[i] for i in others}
    again = run_selection(Oracle(labels, seed=5), pool, targets, [tmp_path / "again", tmp_path / "again2"], count=4)
    assert again[0].selected.tolist() == many.selected.tolist()
    with pytest.raises(ConfigError, match=r"no records for targets \['few'\]"):
        Oracle({"many": labels["many"]}).score(pool, targets)


@pytest.mark.parametrize("fraction", [0.01, 0.05, 0.5, None])
def test_full_selects_the_whole_pool_in_order(copies_data, tmp_path, fraction):
    out = tmp_path / "full"
    (sel,) = select(SelectConfig(method="full", pool=copies_data["pool"], target=[copies_data["target"]],
                                 output=out, fraction=fraction))
    pool_bytes = b"".join(p.read_bytes() for p in copies_data["pool"])
    assert (out / "selected.jsonl").read_bytes() == pool_bytes
    rows = read_scores(out)
    assert [int(r["rank"]) for r in rows] == list(range(1, 28)) and all(r["selected"] == "1" for r in rows)
    assert json.loads((out / "summary.json").read_text())["selected"] == 27 == len(sel.selected)


# -- what every method shares ----------------------------------------------------------------------

@pytest.mark.parametrize("method", ["bm25", "random", "full", "rds"])
def test_every_method_writes_the_three_files(method, copies_data, tiny_model_dir, tmp_path):
    out = tmp_path / method
    extra = {"model": str(tiny_model_dir), "device": "cpu", "max_length": 64} if method == "rds" else {}
    select(SelectConfig(method=method, pool=copies_data["pool"], target=[copies_data["target"]], output=out,
                        count=4, **extra))
    assert sorted(p.name for p in out.iterdir()) == ["scores.csv", "selected.jsonl", "summary.json"]
    rows = read_scores(out)
    assert list(rows[0]) == COLUMNS
    lines = [(str(p.resolve()), k + 1, line) for p in copies_data["pool"]
             for k, line in enumerate(p.read_text(encoding="utf-8").splitlines())]
    assert [(r["file"], int(r["line"])) for r in rows] == [(f, n) for f, n, _ in lines]
    for r, (_, _, line) in zip(rows, lines):
        record = json.loads(line)
        assert r["id"] == record["id"] and r["status"] == "ok"
        assert r["source"] == record.get("source", Path(r["file"]).stem)
        assert int(r["chars"]) == sum(len(c) for c in contents(record))
    assert sorted(int(r["rank"]) for r in rows) == list(range(1, len(rows) + 1))
    by_rank = sorted(((int(r["rank"]), float(r["score"]), i) for i, r in enumerate(rows)))
    for (_, s, i), (_, t, j) in zip(by_rank, by_rank[1:]):  # ranks follow scores; ties keep pool order
        assert s > t or (s == t and i < j)
    assert [r["selected"] for r in rows] == ["1" if int(r["rank"]) <= (len(rows) if method == "full" else 4) else "0"
                                             for r in rows]
    summary = json.loads((out / "summary.json").read_text())
    assert summary["method"] == method
    assert summary["target_files"] == [str(copies_data["target"].resolve())]
    assert summary["selected"] == (len(rows) if method == "full" else 4)
    selected = (out / "selected.jsonl").read_text(encoding="utf-8").splitlines()
    ranked = [lines[i][2] for _, _, i in by_rank]
    assert selected == ranked[: len(selected)]  # best first, verbatim


@pytest.mark.parametrize("method", ["bm25", "random", "rds"])
def test_count_larger_than_the_pool_is_a_config_error(method, copies_data, tiny_model_dir, tmp_path):
    extra = {"model": str(tiny_model_dir), "device": "cpu"} if method == "rds" else {}
    with pytest.raises(ConfigError, match="cannot select 28 of 27"):
        select(SelectConfig(method=method, pool=copies_data["pool"], target=[copies_data["target"]],
                            output=tmp_path / "o", count=28, **extra))
    assert not (tmp_path / "o").exists()


def test_missing_inputs_are_config_errors(copies_data, tmp_path):
    pool, target = copies_data["pool"], [copies_data["target"]]
    with pytest.raises(ConfigError, match="--train-store"):
        select(SelectConfig(method="less", pool=pool, target=target, output=tmp_path / "o", count=2))
    for method in ("bm25", "random", "full"):
        for given in ({"pool": pool}, {"target": target}, {}):
            with pytest.raises(ConfigError, match="--pool and --target"):
                select(SelectConfig(method=method, output=tmp_path / "o", count=2, **given))
    assert not (tmp_path / "o").exists()


def test_cli_select_with_bm25(copies_data, tmp_path, capsys):
    (a, b), out = copies_data["pool"], tmp_path / "cli"
    assert main(["select", "--method", "bm25", "--pool", str(a), str(b), "--target", str(copies_data["target"]),
                 "--output", str(out), "--count", "3"]) == 0
    lines = (out / "selected.jsonl").read_bytes().splitlines()
    assert sorted(lines) == sorted(c.encode() for c in copies_data["copies"])
    assert json.loads((out / "summary.json").read_text())["method"] == "bm25"
    assert main(["select", "--method", "rds", "--pool", str(a), "--target", str(copies_data["target"]),
                 "--output", str(tmp_path / "x"), "--count", "3"]) == 2
    assert "--model" in capsys.readouterr().err


def test_text_methods_on_a_large_records_pool_say_a_store_would_be_faster(bm25_files, tiny_model_dir, monkeypatch,
                                                                           capsys):
    """From records files, bm25 and rds redo their index or embeddings at every selection: from
    STORE_HINT_ROWS records on, each says in one line that a pool store keeps them; below it, nothing."""
    from gradsift.selection.methods import base

    pool_a, pool_b, target_path = bm25_files
    pool, target = Pool.from_files([pool_a, pool_b]), Target.from_files("target", [target_path])
    rds = Rds(model=str(tiny_model_dir), max_length=32, device="cpu")
    for method, said in ((Bm25(), "bm25: indexing 6 records in memory"), (rds, "rds: embedding 6 records in memory")):
        monkeypatch.setattr(base, "STORE_HINT_ROWS", 100)
        method.score(pool, [target])
        assert "in memory" not in capsys.readouterr().out
        monkeypatch.setattr(base, "STORE_HINT_ROWS", 6)
        method.score(pool, [target])
        out = [line for line in capsys.readouterr().out.splitlines() if "in memory" in line]
        assert len(out) == 1 and out[0].startswith(said) and "gradsift build" in out[0]
