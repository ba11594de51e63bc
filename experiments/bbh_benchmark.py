"""A benchmark in LESS's own BBH setting: eight BBH tasks as targets, each given as lm-eval's three
chain-of-thought shots (as LESS uses BBH), in a pool where 100 other items of each task answer
directly, among the known-answers build's 800 unrelated records.

    python experiments/build_benchmark.py --output experiments/benchmark     # first: the unrelated pool
    python experiments/bbh_benchmark.py [--output experiments/bbh-benchmark] [--seed 0]

BIG-bench's task files do not install offline, so each task's items are drawn here from its rules,
in its exact prompt and answer format (the format of lm-eval's shots): the tasks below are
programmatic in BIG-bench too. The words of ``word_sorting`` come from the ``evals`` registry
(``word_association``, ``reverse-sort-words-eng``); sports_understanding's players, actions and
events are listed below. The same arguments write the same bytes.

What it writes: ``pool/<family>.jsonl`` (the unrelated families copied, plus ``bbh-<task>.jsonl``:
100 direct items per task), ``targets/<task>/fewshot.jsonl`` (the 3 worked shots, lm-eval's
description as the system message), ``targets/<task>/test.jsonl`` (100 direct items; ``choices``
where the answers are a small set), ``relevance.json`` and ``benchmark.json``. Every task's items
are relevant to it and, as a look-alike in the pool, to no other target.
"""

from __future__ import annotations

import argparse
import json
import random
import re
from collections.abc import Callable
from functools import cache
from importlib.metadata import distribution
from pathlib import Path

from benchmark import EVALS_DATA, Shots, _bbh_configs, _shots, normalise

from gradsift.utils.files import atomic_write_json, atomic_write_jsonl

HERE = Path(__file__).resolve().parent
POOL_PER_TASK = 100
TEST_PER_TASK = 100
Item = tuple[str, str]  # (prompt, direct answer)

# --------------------------------------------------------------------------------------------
# The tasks' rules


@cache
def _words() -> list[str]:
    root = Path(str(distribution("evals").locate_file(EVALS_DATA)))
    files = sorted((root / "word_association").glob("related_words_*.jsonl"))
    files.append(root / "reverse-sort-words-eng" / "samples.jsonl")
    words: set[str] = set()
    for path in files:
        words |= set(re.findall(r"\b[a-z]{4,12}\b", path.read_text(encoding="utf-8")))
    return sorted(words)


def word_sorting(rng: random.Random, words: list[str]) -> Item:
    chosen = rng.sample(words, rng.randint(3, 15))
    return (f"Sort the following words alphabetically: List: {' '.join(chosen)}", " ".join(sorted(chosen)))


PAIRS = {"(": ")", "[": "]", "{": "}", "<": ">"}


def dyck_languages(rng: random.Random) -> Item:
    """A prefix of a balanced bracket sequence; the answer closes what is open."""
    prefix, stack = [], []
    length = rng.randint(3, 24)
    while len(prefix) < length or not stack:
        if stack and (rng.random() < 0.45 or len(stack) > 6):
            prefix.append(PAIRS[stack.pop()])
        else:
            stack.append(rng.choice(list(PAIRS)))
            prefix.append(stack[-1])
    closing = " ".join(PAIRS[b] for b in reversed(stack))
    return ("Complete the rest of the sequence, making sure that the parentheses are closed properly. "
            f"Input: {' '.join(prefix)}", closing)


COUNTABLE = {
    "fruits": ["apple", "banana", "blackberry", "grape", "nectarine", "orange", "peach", "plum",
               "raspberry", "strawberry"],
    "vegetables": ["cabbage", "carrot", "cauliflower", "celery", "garlic", "lettuce head", "onion",
                   "potato", "stalk of celery", "yam"],
    "musical instruments": ["accordion", "clarinet", "drum", "flute", "piano", "trombone", "trumpet",
                            "violin"],
    "animals": ["bear", "cat", "chicken", "cow", "donkey", "duck", "fish", "frog", "goat", "mouse",
                "pig", "rabbit", "snail", "snake"],
    "objects": ["bed", "car", "chair", "couch", "fridge", "lamp", "microwave", "oven", "stove",
                "table", "toaster"],
}
NUMBER_WORDS = ["", "a", "two", "three", "four", "five"]


def _plural(noun: str) -> str:
    if noun in ("fish", "celery"):
        return noun
    if noun.endswith(("y",)) and noun[-2] not in "aeiou":
        return noun[:-1] + "ies"
    if noun.endswith(("ch", "sh", "s", "x")) or noun in ("potato",):
        return noun + "es"
    if noun == "mouse":
        return "mice"
    if noun.startswith("stalk of "):
        return "stalks of celery"
    if noun == "lettuce head":
        return "heads of lettuce"
    return noun + "s"


def _article(noun: str) -> str:
    return ("an " if noun[0] in "aeiou" else "a ") + noun


def object_counting(rng: random.Random) -> Item:
    category = rng.choice(list(COUNTABLE))
    items = rng.sample(COUNTABLE[category], rng.randint(2, min(8, len(COUNTABLE[category]))))
    others = [rng.choice(COUNTABLE[c]) for c in rng.sample([c for c in COUNTABLE if c != category], 2)]
    distractors = rng.sample(others, rng.randint(0, 2))
    total, phrases = 0, []
    for noun in items:
        count = rng.choice([1, 1, 1, 1, 2, 3])
        total += count
        phrases.append(_article(noun) if count == 1 else f"{NUMBER_WORDS[count]} {_plural(noun)}")
    phrases += [_article(noun) for noun in distractors]
    rng.shuffle(phrases)
    listed = ", ".join(phrases[:-1]) + f", and {phrases[-1]}"
    return f"I have {listed}. How many {category} do I have?", str(total)


SPORTS = {
    "basketball": (["LeBron James", "Stephen Curry", "Kevin Durant", "Giannis Antetokounmpo", "Luka Doncic",
                    "Jayson Tatum", "Nikola Jokic", "Joel Embiid", "Jimmy Butler", "Kyrie Irving"],
                   ["hit the buzzer beater", "shot from beyond the arc", "made a layup", "was called for the goaltend",
                    "dunked the ball", "committed a travel", "hit the step back jumper"],
                   ["in the NBA Finals", "in the Western Conference Finals", "in the Eastern Conference Finals"]),
    "soccer": (["Lionel Messi", "Cristiano Ronaldo", "Neymar", "Kylian Mbappe", "Mohamed Salah", "Harry Kane",
                "Robert Lewandowski", "Kevin De Bruyne", "Luka Modric", "Sergio Ramos"],
               ["scored a bicycle kick", "took a corner kick", "was flagged offside", "earned a red card",
                "headed the ball into the net", "scored a penalty kick", "took a throw in"],
               ["in the World Cup", "in the Champions League Final", "in the FA Cup"]),
    "football": (["Tom Brady", "Patrick Mahomes", "Aaron Rodgers", "Josh Allen", "Travis Kelce", "Derrick Henry",
                  "Joe Burrow", "Lamar Jackson", "Justin Jefferson", "Davante Adams"],
                 ["threw a touchdown pass", "caught the screen pass", "was sacked", "ran for a first down",
                  "threw an interception", "kicked a field goal", "fumbled the snap"],
                 ["in the Super Bowl", "in the AFC Championship", "in the NFC Championship"]),
    "hockey": (["Sidney Crosby", "Connor McDavid", "Alex Ovechkin", "Auston Matthews", "Nathan MacKinnon",
                "Patrick Kane", "Leon Draisaitl", "Cale Makar", "Carey Price", "Steven Stamkos"],
               ["scored a hat trick", "took a slap shot", "was called for icing", "went to the penalty box",
                "made a save in the crease", "scored on the power play", "won the faceoff"],
               ["in the Stanley Cup Final", "in the Winter Classic", "during the power play"]),
    "baseball": (["Mike Trout", "Shohei Ohtani", "Aaron Judge", "Mookie Betts", "Bryce Harper", "Juan Soto",
                  "Freddie Freeman", "Gerrit Cole", "Clayton Kershaw", "Jose Altuve"],
                 ["hit a home run", "struck out swinging", "stole second base", "threw a curveball",
                  "hit a walk off single", "was safe at first", "bunted the ball"],
                 ["in the World Series", "in the ninth inning", "in the American League Championship Series"]),
}


def sports_understanding(rng: random.Random) -> Item:
    sport = rng.choice(list(SPORTS))
    player = rng.choice(SPORTS[sport][0])
    plausible = rng.random() < 0.5
    action_sport = sport if plausible else rng.choice([s for s in SPORTS if s != sport])
    action = rng.choice(SPORTS[action_sport][1])
    event = f" {rng.choice(SPORTS[action_sport][2])}" if rng.random() < 0.5 else ""
    return f'Is the following sentence plausible? "{player} {action}{event}."', "yes" if plausible else "no"


def _boolean(rng: random.Random, depth: int) -> str:
    if depth == 0 or rng.random() < 0.3:
        return ("not " if rng.random() < 0.3 else "") + rng.choice(["True", "False"])
    if rng.random() < 0.25:
        return f"not ( {_boolean(rng, depth - 1)} )"
    return f"{_boolean(rng, depth - 1)} {rng.choice(['and', 'or'])} {_boolean(rng, depth - 1)}"


def boolean_expressions(rng: random.Random) -> Item:
    while True:
        expression = _boolean(rng, 3)
        if 3 <= len(re.findall(r"True|False", expression)) <= 5:
            return f"{expression} is", str(eval(expression))  # only True/False/not/and/or/()


def multistep_arithmetic_two(rng: random.Random) -> Item:
    def group() -> str:
        terms = [str(rng.randint(-9, 9)) for _ in range(4)]
        ops = [rng.choice(["+", "-", "*"]) for _ in range(3)]
        return " ".join(t for pair in zip(terms, ops + [""]) for t in pair if t)
    left, right, op = group(), group(), rng.choice(["+", "-", "*"])
    expression = f"(({left}) {op} ({right}))"
    return f"{expression} =", str(eval(expression))  # only integers and + - * ()


def navigate(rng: random.Random) -> Item:
    steps, x, y = [], 0, 0
    n = rng.randint(3, 7)
    if rng.random() < 0.5:
        steps.append("Always face forward.")
        moves = [(rng.choice(["forward", "backward", "left", "right"]), rng.randint(1, 10)) for _ in range(n)]
        if rng.random() < 0.5:  # half the time undo the walk, so that both answers are common
            dx = sum(k * {"right": 1, "left": -1}.get(d, 0) for d, k in moves)
            dy = sum(k * {"forward": 1, "backward": -1}.get(d, 0) for d, k in moves)
            moves += [("left" if dx > 0 else "right", abs(dx))] * (dx != 0)
            moves += [("backward" if dy > 0 else "forward", abs(dy))] * (dy != 0)
        for direction, k in moves:
            steps.append(f"Take {k} step{'s' * (k > 1)} {direction}.")
            x += k * {"right": 1, "left": -1}.get(direction, 0)
            y += k * {"forward": 1, "backward": -1}.get(direction, 0)
    else:
        heading = 0  # 0 north, 1 east, 2 south, 3 west
        for _ in range(n):
            if rng.random() < 0.4:
                turn = rng.choice(["left", "right", "around"])
                heading = (heading + {"right": 1, "left": 3, "around": 2}[turn]) % 4
                steps.append(f"Turn {turn}.")
            else:
                k = rng.randint(1, 10)
                steps.append(f"Take {k} step{'s' * (k > 1)}.")
                x += k * [0, 1, 0, -1][heading]
                y += k * [1, 0, -1, 0][heading]
    back = "Yes" if (x, y) == (0, 0) else "No"
    return ("If you follow these instructions, do you return to the starting point? "
            f"{' '.join(steps)}\nOptions:\n- Yes\n- No", back)


NAMES = ["Alejandro", "Amberly", "Andree", "Bernita", "Christie", "Crista", "Delbert", "Delfina", "Elanor",
         "Fidel", "Gwenn", "Helene", "Inga", "Jamey", "Jerry", "Jim", "Kandi", "Ka", "Leda", "Lorine",
         "Maybelle", "Millicent", "Osvaldo", "Phoebe", "Raymond", "Rashida", "Sal", "Shenna", "Sherrie",
         "Tamika", "Teressa", "Ryan", "Vernell", "Vina", "Yoland"]


def web_of_lies(rng: random.Random) -> Item:
    names = rng.sample(NAMES, 5)
    truthful = rng.random() < 0.5
    sentences = [f"{names[0]} {'tells the truth' if truthful else 'lies'}."]
    for before, name in zip(names, names[1:]):
        says_truth = rng.random() < 0.5
        sentences.append(f"{name} says {before} {'tells the truth' if says_truth else 'lies'}.")
        truthful = says_truth == truthful
    return (f"Question: {' '.join(sentences)} Does {names[-1]} tell the truth?", "Yes" if truthful else "No")


TASKS: dict[str, Callable[..., Item]] = {
    "word_sorting": word_sorting, "dyck_languages": dyck_languages, "object_counting": object_counting,
    "sports_understanding": sports_understanding, "boolean_expressions": boolean_expressions,
    "multistep_arithmetic_two": multistep_arithmetic_two, "navigate": navigate, "web_of_lies": web_of_lies,
}
CHOICES = {"sports_understanding": ["yes", "no"], "navigate": ["Yes", "No"], "web_of_lies": ["Yes", "No"],
           "boolean_expressions": ["True", "False"]}

# --------------------------------------------------------------------------------------------
# The build


def _items(task: str, rng: random.Random, count: int, taken: set[str]) -> list[Item]:
    """``count`` items whose prompts are new to ``taken`` (which they join)."""
    make = TASKS[task]
    words = _words() if task == "word_sorting" else None
    items: list[Item] = []
    for _ in range(1000 * count):
        prompt, answer = make(rng, words) if words else make(rng)
        if normalise(prompt) not in taken:
            taken.add(normalise(prompt))
            items.append((prompt, answer))
            if len(items) == count:
                return items
    raise RuntimeError(f"{task}: fewer than {count} distinct items")


def _record(task: str, k: int, item: Item) -> dict:
    return {"messages": [{"role": "user", "content": item[0]}, {"role": "assistant", "content": item[1]}],
            "id": f"bbh-{task}/{k}", "source": f"bbh-{task}"}


def build(output: Path, seed: int, known_answers: Path) -> dict:
    relevant_there = {i for ids in json.loads((known_answers / "relevance.json").read_text()).values() for i in ids}
    unrelated: dict[str, list[dict]] = {}
    for path in sorted((known_answers / "pool").glob("*.jsonl")):
        rows = [json.loads(line) for line in path.read_text(encoding="utf-8").splitlines() if line.strip()]
        # Drop the known-answers targets' records and any worked shot of a task that is a target here.
        kept = [r for r in rows if r["id"] not in relevant_there
                and not (r["source"] == "bbh" and r["id"].split("/")[1] in TASKS)]
        if kept:
            unrelated[path.stem] = kept
    relevance, targets = {}, {}
    for index, task in enumerate(TASKS):
        rng = random.Random(f"{seed}/{task}")
        shots = _shots(Shots(task))
        taken = {normalise(s["messages"][-2]["content"]) for s in shots}
        test = _items(task, rng, TEST_PER_TASK, taken)
        pool = _items(task, rng, POOL_PER_TASK, taken)
        records = [_record(task, k, item) for k, item in enumerate(pool)]
        atomic_write_jsonl(output / "pool" / f"bbh-{task}.jsonl", records)
        relevance[task] = sorted(r["id"] for r in records)
        test_rows = [{**_record(task, k, item), "id": f"test/{task}/{k}", "subtask": task,
                      **({"choices": CHOICES[task]} if task in CHOICES else {})} for k, item in enumerate(test)]
        for row in test_rows:
            del row["source"]
        atomic_write_jsonl(output / "targets" / task / "fewshot.jsonl", shots)
        atomic_write_jsonl(output / "targets" / task / "test.jsonl", test_rows)
        answers = sorted({a for _, a in pool + test})
        targets[task] = {"description": _bbh_configs()[task][0], "fewshot": len(shots), "test": len(test_rows),
                         "relevant": len(records), "distinct_answers": len(answers), "index": index}
    for family, rows in unrelated.items():
        atomic_write_jsonl(output / "pool" / f"{family}.jsonl", rows)
    atomic_write_json(output / "relevance.json", relevance)
    size = sum(len(v) for v in relevance.values()) + sum(len(v) for v in unrelated.values())
    summary = {"seed": seed, "pool": {"size": size, "unrelated": {f: len(v) for f, v in unrelated.items()}},
               "targets": targets}
    atomic_write_json(output / "benchmark.json", summary)
    return summary


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--output", type=Path, default=HERE / "bbh-benchmark")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--known-answers", type=Path, default=HERE / "benchmark",
                        help="the known-answers build, whose unrelated records are this pool's rest")
    args = parser.parse_args(argv)
    summary = build(args.output, args.seed, args.known_answers)
    print(f"pool: {summary['pool']['size']} records")
    for task, t in summary["targets"].items():
        print(f"{task}: {t['fewshot']} worked shots, {t['test']} test, {t['relevant']} relevant, "
              f"{t['distinct_answers']} distinct answers")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
