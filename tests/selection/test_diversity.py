"""Diversity within a selection: near-duplicate removal (``--dedup``) against exact Jaccard similarities
computed here, the per-target-example round-robin (``--aggregate example-round-robin``) against a
round-robin walked by hand, and answer balance (``--balance``) against shares counted by hand."""

from __future__ import annotations

import csv
import json
from collections.abc import Iterator
from dataclasses import dataclass
from typing import ClassVar

import numpy as np
import pytest
import torch

from gradsift.cli import build_parser, main
from gradsift.config import SelectConfig
from gradsift.selection.balance import balanced_positions, final_answer, labels_of
from gradsift.selection.methods import METHODS, Pool, SimilarityMethod, Target
from gradsift.selection.scoring import top_k
from gradsift.selection.select import balances, select
from gradsift.utils.errors import ConfigError

WORDS = ("alpha bravo charlie delta echo foxtrot golf hotel india juliet kilo lima mike november oscar papa quebec "
         "romeo sierra tango uniform victor whiskey xray yankee zulu").split()


def jaccard(a: str, b: str) -> float:
    """Exact Jaccard similarity of two texts' word 3-grams (lower-cased), as the dedup docs define it."""
    def grams(text):
        w = text.lower().split()
        return {tuple(w[i: i + 3]) for i in range(max(1, len(w) - 2))}
    x, y = grams(a), grams(b)
    return len(x & y) / len(x | y)


def record(i: int, prompt: str, answer: str) -> dict:
    return {"id": f"r{i}", "prompt": prompt, "completion": answer}


@pytest.fixture()
def dup_pool(tmp_path):
    """Records on one skill, several of them verbatim or near copies (one word of 24 changed) of others,
    and unrelated ones; every pair is either near (Jaccard >= 0.75) or far (<= 0.3) apart."""
    rng = np.random.default_rng(0)
    base = [" ".join(rng.choice(WORDS, 20)) for _ in range(4)]
    records = []
    for k, text in enumerate(base):
        records.append(record(len(records), f"sort these words: {text}", "done"))
        if k < 3:  # a verbatim copy and a near copy of the first three
            records.append(record(len(records), f"sort these words: {text}", "done"))
            changed = text.split()
            changed[-1] = "zzz"
            records.append(record(len(records), f"sort these words: {' '.join(changed)}", "done"))
    for _ in range(6):
        records.append(record(len(records), f"what is {rng.integers(100)} plus {rng.integers(100)}", "a number"))
    pool = tmp_path / "pool.jsonl"
    pool.write_text("".join(json.dumps(r) + "\n" for r in records))
    target = tmp_path / "target.jsonl"
    target.write_text(json.dumps(record(0, f"sort these words: {' '.join(rng.choice(WORDS, 20))}", "done")) + "\n")
    texts = [f"{r['prompt']} {r['completion']}" for r in records]
    for i in range(len(texts)):
        for j in range(i):
            assert not 0.3 < jaccard(texts[i], texts[j]) < 0.75
    return pool, target, texts


def test_dedup_keeps_the_ranking_but_passes_over_near_copies_of_what_it_selected(dup_pool, tmp_path):
    pool, target, texts = dup_pool
    plain, deduped = tmp_path / "plain", tmp_path / "dedup"
    select(SelectConfig(method="bm25", pool=[pool], target=[target], output=plain, count=4))
    assert main(["select", "--method", "bm25", "--pool", str(pool), "--target", str(target), "--output", str(deduped),
                 "--count", "4", "--dedup", "0.7"]) == 0
    with open(plain / "scores.csv", newline="") as f:
        ranking = [int(r["line"]) - 1 for r in sorted(csv.DictReader(f), key=lambda r: int(r["rank"]))]
    # by hand: walk the plain ranking, keep a row unless it is a near copy of one kept before it
    kept, passed = [], []
    for row in ranking:
        if len(kept) == 4:
            break
        near = [k for k in kept if jaccard(texts[row], texts[k]) >= 0.7]
        (passed if near else kept).append(row)
    assert passed, "the fixture's ranking must put a copy in the first four"
    chosen = [json.loads(line)["id"] for line in (deduped / "selected.jsonl").read_text().splitlines()]
    assert chosen == [f"r{i}" for i in kept]
    summary = json.loads((deduped / "summary.json").read_text())
    assert summary["dedup"]["jaccard"] == 0.7
    assert [d["id"] for d in summary["dedup"]["duplicates"]] == [f"r{i}" for i in passed]
    for d in summary["dedup"]["duplicates"]:
        assert jaccard(texts[d["line"] - 1], texts[d["repeats"]["line"] - 1]) >= 0.7
    with open(deduped / "scores.csv", newline="") as f:  # passed-over rows rank right after the selection
        ranks = {int(r["line"]) - 1: int(r["rank"]) for r in csv.DictReader(f)}
    assert [ranks[r] for r in passed] == list(range(5, 5 + len(passed)))
    assert "dedup" not in json.loads((plain / "summary.json").read_text())


def test_dedup_that_leaves_too_few_rows_is_a_one_line_error(tmp_path):
    pool = tmp_path / "pool.jsonl"
    pool.write_text("".join(json.dumps(record(i, "the same question every time", "yes")) + "\n" for i in range(5)))
    target = tmp_path / "target.jsonl"
    target.write_text(json.dumps(record(0, "the same question", "yes")) + "\n")
    with pytest.raises(ConfigError, match=r"only 1 scorable pool rows are not near duplicates .* --dedup 0\.9"):
        select(SelectConfig(method="bm25", pool=[pool], target=[target], output=tmp_path / "o", count=2, dedup=0.9))
    assert not (tmp_path / "o" / "selected.jsonl").exists()
    with pytest.raises(ConfigError, match="--method full selects the whole pool: drop --dedup"):
        select(SelectConfig(method="full", pool=[pool], target=[target], output=tmp_path / "f", dedup=0.9))
    with pytest.raises(ConfigError, match="--method full selects the whole pool: drop --balance"):
        select(SelectConfig(method="full", pool=[pool], target=[target], output=tmp_path / "f", balance=True))


@dataclass
class Fixed(SimilarityMethod):
    """Gives the similarities it is handed (pool rows x target examples), in chunks."""
    name: ClassVar[str] = "fixed-similarities"
    sim: np.ndarray = None

    def similarities(self, pool: Pool, targets: list[Target]) -> Iterator[tuple[int, list[torch.Tensor]]]:
        for start in range(0, len(self.sim), self.chunk_rows):
            yield start, [torch.from_numpy(self.sim[start: start + self.chunk_rows])]


def test_example_round_robin_takes_each_target_examples_next_row_in_turn(dup_pool):
    pool_file, target_file, _ = dup_pool
    four = target_file.with_name("four.jsonl")  # four examples in one subtask: one column each
    four.write_text("".join(json.dumps(record(i, f"sort {w}", "done")) + "\n" for i, w in enumerate(WORDS[:4])))
    pool, target = Pool.from_files([pool_file]), Target.from_files("t", [four])
    rng = np.random.default_rng(3)
    sim = rng.random((len(pool.refs), 4)).astype(np.float32)
    scores = Fixed(aggregate="example-round-robin", chunk_rows=5, sim=sim).score(pool, [target])[0].scores
    # by hand: round r visits examples 0..3, each taking its r-th best row unless an earlier turn took it
    orders = [sorted(range(len(sim)), key=lambda i: (-sim[i, e], i)) for e in range(4)]
    expected = []
    for r in range(len(sim)):
        for order in orders:
            if order[r] not in expected:
                expected.append(order[r])
    assert top_k(scores, len(sim)).tolist() == expected
    # the subtask-level round-robin sees one subtask here: the order of the mean similarity instead
    by_subtask = Fixed(aggregate="round-robin", sim=sim).score(pool, [target])[0].scores
    assert top_k(by_subtask, len(sim)).tolist() == sorted(range(len(sim)), key=lambda i: (-sim[i].mean(), i))


def test_labels_are_the_few_answers_that_make_up_most_of_the_top():
    assert labels_of(["yes"] * 7 + ["no"] * 3) == ["yes", "no"]
    assert labels_of(["yes"] * 18 + ["no"] * 3) == ["yes", "no"]  # the examples' skew copied: 14% "no"
    assert labels_of(["yes"] * 50 + ["true"] * 2 + ["false"] * 2) == []  # strays of another task: no labels
    assert labels_of(["yes"] * 30 + ["no"] * 20 + ["true"] * 2 + ["false"] * 2) == ["yes", "no"]
    assert labels_of(list("abcdeabcde") + ["x"]) == list("abcde")  # choice letters; the stray "x" is no label
    assert labels_of([f"date {i}" for i in range(20)]) == []  # open answers
    assert labels_of(["a", "b", "c", "d"]) == []  # each answer once: no label repeats
    assert final_answer([{"role": "user", "content": "Is 3 > 2?"},
                         {"role": "assistant", "content": "3 is more. So the answer is (B)."}]) == "b"


def test_balanced_positions_give_each_label_an_equal_share_best_rows_first():
    #          0      1     2      3      4     5      6    7     8      9
    answers = ["yes", "no", "yes", "yes", "no", "yes", "x", "no", "yes", "no"]
    # top 7: yes x4, no x2, x; labels yes and no (6 of 7); x keeps its place; 6 places, 3 each: yes gives
    # up 5, no takes 7
    assert balanced_positions(answers, 7) == ([0, 1, 2, 3, 4, 6, 7], ["yes", "no"])
    assert balanced_positions(answers, 5) == ([0, 1, 2, 3, 4], ["yes", "no"])  # 3 and 2: as even as 5 allows
    # three labels (a 5, b 2, c 2 of the top 9), 3 places each; "c" has no third row in the window, so its
    # place goes to the best row not yet taken ("a" at 3); "a" gives up its fifth row (4), "b" gains 10
    answers = list("aaaaabbcc") + list("abab")
    assert balanced_positions(answers, 9) == ([0, 1, 2, 3, 5, 6, 7, 8, 10], ["a", "b", "c"])
    # open answers: the ranking's top, untouched
    assert balanced_positions([str(i) for i in range(10)], 4) == ([0, 1, 2, 3], [])


def test_balance_re_draws_a_lexical_selection_to_equal_label_shares(tmp_path):
    """BM25 ranks the "yes" records first (they share 4 of the target's words, the "no" ones 3): 4 of
    its top 6; with --balance the selection takes as many "no" records as "yes" ones, the best-ranked of
    each, from the top 2x."""
    topic = ["compare", "heights", "towers", "bridges"]
    shared = {"Yes": [4] * 4 + [2] * 2, "No": [3] * 3}  # target words in each record; prompts of one length
    records = [(" ".join(topic[:n] + [f"{WORDS[i]}{j}" for j in range(8 - n)]), answer)
               for answer, counts in shared.items() for i, n in enumerate(counts)]
    records = [record(i, prompt, answer) for i, (prompt, answer) in enumerate(records)]
    records += [record(9 + i, f"unrelated question number {i}", "maybe") for i in range(9)]
    pool = tmp_path / "pool.jsonl"
    pool.write_text("".join(json.dumps(r) + "\n" for r in records))
    target = tmp_path / "target.jsonl"
    target.write_text(json.dumps(record(0, " ".join(topic), "Yes")) + "\n")
    plain, balanced = tmp_path / "plain", tmp_path / "balanced"
    for out, extra in ((plain, []), (balanced, ["--balance"])):
        assert main(["select", "--method", "bm25", "--pool", str(pool), "--target", str(target), "--output", str(out),
                     "--count", "6", *extra]) == 0
    def ranked(folder):
        with open(folder / "scores.csv", newline="") as f:
            rows = sorted(csv.DictReader(f), key=lambda r: int(r["rank"]))
        return [r["id"] for r in rows], [r["id"] for r in rows if r["selected"] == "1"]
    plain_order, plain_picked = ranked(plain)
    answers = {r["id"]: r["completion"] for r in records}
    assert sorted(answers[i] for i in plain_picked) == ["No"] * 2 + ["Yes"] * 4
    # by hand: 3 of each label, each label's best-ranked rows of the plain top 12
    window = plain_order[:12]
    expected = [i for i in window if answers[i] == "Yes"][:3] + [i for i in window if answers[i] == "No"][:3]
    _, picked = ranked(balanced)
    assert sorted(picked) == sorted(expected)
    chosen = [json.loads(line)["id"] for line in (balanced / "selected.jsonl").read_text().splitlines()]
    assert chosen == [i for i in plain_order if i in expected]  # best first, in the ranking's order
    summary = json.loads((balanced / "summary.json").read_text())
    assert summary["balance"] == {"yes": {"before": 4, "selected": 3}, "no": {"before": 2, "selected": 3}}
    assert "balance" not in json.loads((plain / "summary.json").read_text())


def test_balance_is_the_default_methods_way_and_a_switch_for_the_others(tmp_path):
    def config(*flags):
        return SelectConfig(**{k: v for k, v in vars(build_parser().parse_args(
            ["select", "--output", str(tmp_path), *flags])).items() if k in SelectConfig.__dataclass_fields__})
    assert balances(config()) and not balances(config("--no-balance"))  # the default method, fusion
    assert not balances(config("--method", "less")) and balances(config("--method", "less", "--balance"))
    assert [name for name, cls in METHODS.items() if cls.balances] == ["fusion"]  # the single methods stay as published
