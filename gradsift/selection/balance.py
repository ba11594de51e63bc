"""Answer balance within a selection (``select --balance``): where the selected records' answers are
labels (yes / no, true / false, a choice letter), each label gets an equal share of the selection.

A few target examples carry their labels in proportions set by chance (8 "yes" to 2 "no"), and every
signal that follows the examples closely copies that mix into what it selects; the model trained on
it then leans to the examples' majority label whatever the test asks. Balancing makes no guess about
the test's mix. Answers are each record's last reply's final answer (``data.answers``), normalized;
they are labels when 2 to ``MOST_LABELS`` distinct answers, each at least ``LEAST_SHARE`` of what
the ranking's top would select, make up ``LABEL_SHARE`` of it together (a task with open answers, a
date or a word, has many; a few records of another task in the top are no label of their own).
Labels are read from the top alone: further down, records of other tasks bring labels of their own.
Rows are drawn from the ranking's top ``WINDOW`` times the selection's size only, so a label the
method ranks low cannot pull in records it did not rank near the top.
"""

from __future__ import annotations

from collections import Counter
from dataclasses import dataclass

import numpy as np
from tqdm.auto import tqdm

from gradsift.data.answers import answer_key
from gradsift.data.index import ROWS_AT_ONCE, StoreIndex
from gradsift.data.records import read_messages

MOST_LABELS = 10  # more answer values than this are open answers, not labels
LABEL_SHARE = 0.8  # labels make up this share of the top rows; the rest (stray answers) keep their places
LEAST_SHARE = 0.1  # a label makes up at least this share of the top: 2 strays of 54 are no label of their own
WINDOW = 2  # rows are drawn from the top WINDOW x count of the ranking
BAR_FROM = 100_000  # records read before a progress bar is worth showing


@dataclass
class Balanced:
    labels: dict[str, tuple[int, int]]  # each label: (rows of it in the top before, after); {} where none
    ranking: np.ndarray  # the ranking with the balanced selection first, each part in its order


def labels_of(answers: list[str], most: int = MOST_LABELS, share: float = LABEL_SHARE,
              least: float = LEAST_SHARE) -> list[str]:
    """The answers that each make up at least ``least`` of ``answers`` (and are given more than once),
    most common first, if 2 to ``most`` of them make up ``share`` of ``answers`` together; else none.
    One answer nearly everywhere, many answers, or a few strays are no label set."""
    counts = Counter(answers)
    labels = [a for a, n in counts.most_common() if n >= max(2, least * len(answers))]
    covered = sum(counts[a] for a in labels)
    return labels if 2 <= len(labels) <= most and covered >= share * len(answers) else []


def balanced_positions(answers: list[str], count: int) -> tuple[list[int], list[str]]:
    """Which positions of a ranking's top ``answers`` (best first: the window) to select, ``count`` of
    them, and the labels balanced (``labels_of`` the first ``count``): the top ``count``'s rows with other
    answers stay, the rest of the places go to the labels in equal shares (one more each to the
    best-ranked labels where they do not divide evenly), each label's best rows first; a label with
    too few rows gives its places to the others' next best."""
    labels = labels_of(answers[:count])
    if not labels:
        return list(range(count)), []
    kept = [i for i in range(count) if answers[i] not in labels]
    places = count - len(kept)
    rows = {label: [i for i, a in enumerate(answers) if a == label] for label in labels}
    quota = {label: places // len(labels) + (rank < places % len(labels))  # labels are in order of first row
             for rank, label in enumerate(sorted(labels, key=lambda a: rows[a][0]))}
    chosen = [i for label in labels for i in rows[label][: quota[label]]]
    short = places - len(chosen)
    if short:
        taken = set(chosen)
        chosen += [i for i, a in enumerate(answers) if a in labels and i not in taken][:short]
    return sorted(kept + chosen), labels


def final_answer(messages: list[dict[str, str]]) -> str:
    """A record's answer: its last reply's final answer, normalized ("So the answer is (B)." -> "b")."""
    replies = [m["content"] for m in messages if m["role"] == "assistant"]
    return answer_key(replies[-1]) if replies else ""


def balance_answers(ranking: np.ndarray, refs: StoreIndex, count: int) -> Balanced:
    """``ranking`` (rows, best first) with its first ``count`` rows re-drawn from its top ``WINDOW`` x
    ``count`` so that their labels, if their answers are labels, are equally represented. The rest of
    the window is read only where the top's answers are labels."""
    def answers_of(rows: np.ndarray, what: str) -> list[str]:  # refs made a chunk at a time: bounded memory
        with tqdm(total=len(rows), desc=f"balance: {what}", unit="record", disable=len(rows) < BAR_FROM) as bar:
            answers = []
            for start in range(0, len(rows), ROWS_AT_ONCE):
                answers += [final_answer(read_messages(ref)) for ref in refs.take(rows[start: start + ROWS_AT_ONCE])]
                bar.update(min(ROWS_AT_ONCE, len(rows) - start))
            return answers

    answers = answers_of(ranking[:count], "answers of the top")
    if not labels_of(answers):
        return Balanced({}, ranking)
    window = ranking[: WINDOW * count]
    answers += answers_of(window[count:], "answers below the top")
    positions, labels = balanced_positions(answers, count)
    picked = window[positions]
    before = Counter(answers[:count])
    after = Counter(answers[i] for i in positions)
    rest = ranking[np.isin(ranking, picked, invert=True)]
    return Balanced({label: (before[label], after[label]) for label in labels}, np.concatenate([picked, rest]))
