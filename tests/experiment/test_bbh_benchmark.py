"""The BBH build (experiments/bbh_benchmark.py): every item's answer re-derived here by another route,
items in lm-eval's prompt format, disjoint from the shots and from each other, the committed copy
equal to a fresh build."""

from __future__ import annotations

import json
import re
import sys
from itertools import product
from pathlib import Path

import pytest
from helpers import skip_without_packages

sys.path.insert(0, str(Path(__file__).resolve().parents[2] / "experiments"))  # the builder is not the library's
import bbh_benchmark as bbh  # noqa: E402

ROOT = Path(__file__).resolve().parents[2]

skip_without_packages("evals", "lm-eval", what="the BBH build")


def _read(path: Path) -> list[dict]:
    return [json.loads(line) for line in path.read_text(encoding="utf-8").splitlines()]


@pytest.fixture(scope="module")
def built(tmp_path_factory):
    out = tmp_path_factory.mktemp("bbh")
    bbh.build(out, 0, ROOT / "experiments" / "benchmark")
    return out


def _items(built: Path, task: str) -> list[tuple[str, str]]:
    rows = _read(built / "pool" / f"bbh-{task}.jsonl") + _read(built / "targets" / task / "test.jsonl")
    return [(r["messages"][0]["content"], r["messages"][-1]["content"]) for r in rows]


def _closes(prefix: list[str], closing: list[str]) -> bool:
    """A bracket string is balanced when repeatedly deleting adjacent matched pairs empties it."""
    text = "".join(prefix + closing)
    while any(p in text for p in ("()", "[]", "{}", "<>")):
        for p in ("()", "[]", "{}", "<>"):
            text = text.replace(p, "")
    return text == ""


def _position(steps: str) -> tuple[int, int]:
    x = y = heading = 0
    face_forward = steps.startswith("Always face forward.")
    for turn, count, direction in re.findall(r"Turn (\w+)\.|Take (\d+) steps? ?(\w*)\.", steps):
        if turn:
            heading = (heading + {"right": 90, "left": 270, "around": 180}[turn]) % 360
            continue
        angle = {"forward": 0, "right": 90, "backward": 180, "left": 270}[direction] if face_forward else heading
        x += int(count) * {0: 0, 90: 1, 180: 0, 270: -1}[angle]
        y += int(count) * {0: 1, 90: 0, 180: -1, 270: 0}[angle]
    return x, y


def _sorted_words(prompt: str) -> str:
    return " ".join(sorted(prompt.split("List: ")[1].split(), key=str.lower))


def _closing(prompt: str) -> str:
    """The shortest closing that balances the prefix: found by search, not by a stack."""
    prefix = prompt.split("Input: ")[1].split()
    for size in range(1, len(prefix) + 1):
        for closing in product(")]}>", repeat=size):
            if _closes(prefix, list(closing)):
                return " ".join(closing)
    raise AssertionError(prompt)


def _counted(prompt: str) -> str:
    category = re.search(r"How many (.+) do I have", prompt).group(1)
    listed = re.sub(r"^I have |\. How many.*$", "", prompt).replace(", and ", ", ").split(", ")
    words = {"a": 1, "an": 1, "two": 2, "three": 3, "four": 4, "five": 5}
    forms = {form for n in bbh.COUNTABLE[category] for form in (n, bbh._plural(n))}
    return str(sum(words[p.split(" ", 1)[0]] for p in listed if p.split(" ", 1)[1] in forms))


def _plausible(prompt: str) -> str:
    sentence = prompt.split('"')[1]
    player = next(s for s, (players, _, _) in bbh.SPORTS.items() if any(sentence.startswith(p) for p in players))
    action = next(s for s, (_, actions, _) in bbh.SPORTS.items() if any(f" {a}" in sentence for a in actions))
    return "yes" if player == action else "no"


def _boolean(prompt: str) -> str:
    tokens = prompt.removesuffix(" is").replace("(", " ( ").replace(")", " ) ").split()
    return str(bool(eval(" ".join({"True": "1", "False": "0"}.get(t, t) for t in tokens))))


def _arithmetic(prompt: str) -> str:
    assert re.fullmatch(r"[-\d +*()]+ =", prompt)
    return str(eval(prompt.removesuffix(" =")))


def _returns(prompt: str) -> str:
    steps = prompt.split("starting point? ")[1].split("\nOptions")[0]
    return "Yes" if _position(steps) == (0, 0) else "No"


def _truthful(prompt: str) -> str:
    truthful = re.search(r"Question: (\w+) (tells the truth|lies)\.", prompt).group(2) == "tells the truth"
    for _, claim in re.findall(r"(\w+) says \w+ (tells the truth|lies)\.", prompt):
        truthful = truthful if claim == "tells the truth" else not truthful
    return "Yes" if truthful else "No"


# Each task's answer from its prompt, by another route than the generator's. The tasks whose shots
# use only the rules (not this build's lists of players or objects) are checked on lm-eval's shots too:
# that both the format and the checker are BBH's.
CHECKS = {"word_sorting": (_sorted_words, True), "dyck_languages": (_closing, True),
          "object_counting": (_counted, False), "sports_understanding": (_plausible, False),
          "boolean_expressions": (_boolean, True), "multistep_arithmetic_two": (_arithmetic, True),
          "navigate": (_returns, True), "web_of_lies": (_truthful, True)}


@pytest.mark.parametrize("task", list(bbh.TASKS))
def test_every_answer_is_right(built, task):
    check, on_shots = CHECKS[task]
    for prompt, answer in _items(built, task):
        assert check(prompt) == answer, prompt
    if on_shots:
        for shot in _read(built / "targets" / task / "fewshot.jsonl"):
            worked = shot["messages"][-1]["content"]
            answer = re.search(r"So the answer is (.*)\.$", worked).group(1)
            assert check(shot["messages"][-2]["content"]) == answer, shot["messages"][-2]["content"]


def test_items_are_distinct_and_apart_from_the_shots(built):
    relevance = json.loads((built / "relevance.json").read_text())
    pool_ids = [r["id"] for path in sorted((built / "pool").glob("*.jsonl")) for r in _read(path)]
    assert len(pool_ids) == len(set(pool_ids))
    for task in bbh.TASKS:
        shots = _read(built / "targets" / task / "fewshot.jsonl")
        assert len(shots) == 3 and all("So the answer is" in s["messages"][-1]["content"] for s in shots)
        prompts = [p for p, _ in _items(built, task)] + [s["messages"][-2]["content"] for s in shots]
        assert len(prompts) == len(set(prompts)) == bbh.POOL_PER_TASK + bbh.TEST_PER_TASK + 3
        assert relevance[task] == sorted(r["id"] for r in _read(built / "pool" / f"bbh-{task}.jsonl"))
    shot_ids = {r["id"] for r in _read(built / "pool" / "bbh.jsonl")}
    assert not any(i.split("/")[1] in bbh.TASKS for i in shot_ids)  # no target's worked shot in the pool


def test_the_committed_build_is_a_fresh_one(built):
    committed = ROOT / "experiments" / "bbh-benchmark"
    files = sorted(p.relative_to(committed) for p in committed.rglob("*") if p.is_file())
    assert files == sorted(p.relative_to(built) for p in built.rglob("*") if p.is_file())
    for name in files:
        assert (committed / name).read_bytes() == (built / name).read_bytes(), name
