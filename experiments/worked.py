"""Worked (chain-of-thought) answers for the benchmark's few-shot items: the "worked" variant.

LESS's own setting gives a target as worked shots ("Let's think step by step ... So the answer is
X.") while the pool's relevant records answer directly. ``worked_answer`` writes such an answer
for an item of each few-shot subtask of the standard build by solving the item itself, in the
style of lm-eval's BBH shots, and refuses (``Unworkable``) when its own answer differs from the
record's or the item has a form it does not know: a worked shot never argues for a wrong answer.
"""

from __future__ import annotations

import calendar
import datetime
import math
import re

from gradsift.utils.errors import GradsiftError

MONTHS = list(calendar.month_name)[1:]
WEEKDAYS = list(calendar.day_name)


class Unworkable(GradsiftError, ValueError):
    """An item whose worked answer cannot be written (an unknown form, or a recorded answer that
    disagrees with the worked one)."""


def _ordinal(n: int) -> str:
    suffix = "th" if 10 <= n % 100 <= 20 else {1: "st", 2: "nd", 3: "rd"}.get(n % 10, "th")
    return f"{n}{suffix}"


def _number(text: str) -> str:
    value = float(text)
    return str(int(value)) if value == int(value) else f"{value:g}"


# Boolean expressions (formal_logic): innermost parentheses first, then not, and, or.


def _flat_value(tokens: list[str]) -> bool:
    """A parenthesis-free expression of true/false, not, and, or, with Python's precedence."""
    values: list[bool | str] = []
    negate = 0
    for token in tokens:
        if token == "not":
            negate += 1
        elif token in ("true", "false"):
            values.append((token == "true") ^ (negate % 2 == 1))
            negate = 0
        elif token in ("and", "or"):
            values.append(token)
        else:
            raise Unworkable(f"unexpected token {token!r} in a Boolean expression")
    # "and" binds tighter than "or": split on "or", each part true when all its operands are.
    parts, current = [], []
    for value in values:
        if value == "or":
            parts.append(current)
            current = []
        elif value != "and":
            current.append(value)
    parts.append(current)
    return any(all(p) for p in parts)


def _boolean_steps(expression: str) -> tuple[list[str], bool]:
    tokens = re.findall(r"\(|\)|[a-z]+", expression.lower())
    steps = []
    while "(" in tokens:
        close = tokens.index(")")
        open_ = max(i for i in range(close) if tokens[i] == "(")
        inner = tokens[open_ + 1:close]
        value = _flat_value(inner)
        steps.append(f"({' '.join(inner)}) = {str(value).lower()}")
        tokens[open_:close + 1] = [str(value).lower()]
    value = _flat_value(tokens)
    if len(tokens) > 1:
        steps.append(f"{' '.join(tokens)} = {str(value).lower()}")
    return steps, value


def _formal_logic(prompt: str) -> tuple[str, str]:
    found = re.search(r"The expression is:\s*(.+?)\s*which evaluates to", prompt)
    if not found:
        raise Unworkable("no 'The expression is: ... which evaluates to' in the prompt")
    steps, value = _boolean_steps(found.group(1))
    answer = str(value).lower()
    work = ("Let's think step by step. Inner parentheses come first, and \"not\" binds tighter than "
            "\"and\", which binds tighter than \"or\". " + " ".join(f"{s}." for s in steps))
    return work, answer


# Quantities


def _which_is_heavier(prompt: str) -> tuple[str, str]:
    found = re.search(r"Is ([\d.]+) (\w+?)(s?) of (.+?) heavier than ([\d.]+) (\w+?)(s?) of (.+?)\?", prompt)
    if not found or found.group(2) != found.group(6):
        raise Unworkable("not 'Is A <unit> of X heavier than B <unit> of Y?' with one unit")
    a, unit, plural_a, x, b, _, plural_b, y = found.groups()
    heavier = float(a) > float(b)
    work = (f"Let's think step by step. The materials do not matter, only the masses: {a} {unit}{plural_a} of "
            f"{x} against {b} {unit}{plural_b} of {y}. {_number(a)} is {'more' if heavier else 'not more'} than "
            f"{_number(b)}.")
    return work, "Yes" if heavier else "No"


def _fits_in_rectangle(p: float, q: float, a: float, b: float) -> bool:
    """Whether a p x q rectangle fits in an a x b one, turned if need be (Carver's condition)."""
    p, q = max(p, q), min(p, q)
    a, b = max(a, b), min(a, b)
    if p <= a:
        return q <= b
    d2 = p * p + q * q
    if d2 <= a * a:
        return False
    return b >= (2 * p * q * a + (p * p - q * q) * math.sqrt(d2 - a * a)) / d2


def _shape_in_shape(prompt: str) -> tuple[str, str]:
    rect = re.search(r"a ([\d.]+) × ([\d.]+) rectangle", prompt)
    circle = re.search(r"inside a circle of radius ([\d.]+)", prompt)
    square = re.search(r"inside a ([\d.]+) × ([\d.]+) square", prompt)
    if not rect or not (circle or square):
        raise Unworkable("not 'Will a p × q rectangle fit inside a circle of radius r / an s × s square?'")
    p, q = (float(g) for g in rect.groups())
    sides = f"{_number(rect.group(1))} × {_number(rect.group(2))}"
    if circle:
        r = float(circle.group(1))
        diagonal = math.hypot(p, q)
        fits = diagonal <= 2 * r
        work = (f"Let's think step by step. A rectangle fits in a circle when its diagonal is at most the "
                f"diameter. The {sides} rectangle's diagonal is sqrt({_number(rect.group(1))}^2 + "
                f"{_number(rect.group(2))}^2) = {diagonal:.2f}; the diameter is 2 × {_number(circle.group(1))}"
                f" = {_number(str(2 * r))}. {diagonal:.2f} is {'at most' if fits else 'more than'} "
                f"{_number(str(2 * r))}.")
    else:
        a, b = (float(g) for g in square.groups())
        fits = _fits_in_rectangle(p, q, a, b)
        straight = max(p, q) <= max(a, b) and min(p, q) <= min(a, b)
        if straight:
            why = f"Laid straight, its sides are within the square's {_number(square.group(1))}, so it fits."
        elif fits:
            why = ("Its long side is longer than the square's side, but turned along the square's diagonal "
                   f"(which is {math.hypot(a, b):.2f}) it fits, because it is thin enough.")
        else:
            why = ("It does not fit laid straight, and turned it is too wide to fit along the diagonal "
                   f"({math.hypot(a, b):.2f}) either.")
        work = f"Let's think step by step. The rectangle is {sides}. {why}"
    return work, "yes" if fits else "no"


def _cricket(prompt: str) -> tuple[str, str]:
    lucky = re.search(r"batting team to win the match if they need (\d+) runs? to win from (\d+) balls?"
                      r" assuming that the batting team is extremely lucky", prompt)
    tie = re.search(r"batting team to tie the match if they require (\d+) runs? to win from (\d+) balls?"
                    r" assuming all balls are legal", prompt)
    if lucky:
        runs, balls = lucky.groups()
        work = (f"Let's think step by step. They need {runs} runs from {balls} balls. Wides and no-balls "
                "score runs without using up a ball, and a lucky side can keep getting them, so there is no "
                "limit on the runs they can score.")
        return work, "YES"
    if tie:
        runs, balls = (int(g) for g in tie.groups())
        most = 6 * balls
        possible = runs - 1 <= most
        work = (f"Let's think step by step. A tie needs {runs - 1} runs, one fewer than the {runs} to win. "
                f"With legal balls only, the most is 6 a ball: 6 × {balls} = {most}. {runs - 1} is "
                f"{'at most' if possible else 'more than'} {most}.")
        return work, "YES" if possible else "NO"
    raise Unworkable("a cricket situation of a form with no worked rule")


# Dates


def _european_date(prompt: str, recorded: str) -> tuple[str, str]:
    dates = re.findall(r"\b(\d{1,2})/(\d{1,2})/(\d{4})\b", prompt)
    if not dates:
        raise Unworkable("no day/month/year date in the prompt")
    # The question names which date it asks about in words; the worked shot points at the date whose
    # month is the answer (as a human writing the shot would), and fails if there is none.
    wanted = [d for d in dates if 1 <= int(d[1]) <= 12 and MONTHS[int(d[1]) - 1] == recorded.strip()]
    day, month, year = (wanted or dates)[0]
    name = MONTHS[int(month) - 1]
    work = (f"Let's think step by step. These dates are written day/month/year. The date asked about is "
            f"{day}/{month}/{year}: day {day}, month {month}, year {year}. Month {month} is {name}.")
    return work, name


def _date_to_string(prompt: str) -> tuple[str, str]:
    found = re.fullmatch(r"\s*(\d{4})-(\d{2})-(\d{2})\s*", prompt)
    if not found:
        raise Unworkable("not a yyyy-mm-dd date")
    year, month, day = (int(g) for g in found.groups())
    date = datetime.date(year, month, day)
    weekday, name = WEEKDAYS[date.weekday()], MONTHS[month - 1]
    work = (f"Let's think step by step. {found.group(0).strip()} is year {year}, month {month:02d}, day "
            f"{day:02d}. Month {month:02d} is {name}. {name} {day}, {year} was a {weekday}.")
    return work, f"{weekday}, {name} {day}, {year}."


# Words


def _quoted(prompt: str) -> str:
    found = re.search(r"\"([^\"]+)\"", prompt)
    if not found:
        raise Unworkable("no quoted text in the prompt")
    return found.group(1)


def _nth_word(prompt: str) -> tuple[str, str]:
    found = re.search(r"What is the (\d+)(?:st|nd|rd|th) word in", prompt)
    if not found:
        raise Unworkable("not 'What is the n-th word in \"...\"?'")
    n, words = int(found.group(1)), _quoted(prompt).split()
    if not 1 <= n <= len(words):
        raise Unworkable(f"asks for word {n} of {len(words)}")
    listed = ", ".join(f"{i} {w}" for i, w in enumerate(words, 1))
    work = f"Let's think step by step. Numbering the words: {listed}. The {_ordinal(n)} word is {words[n - 1]}."
    return work, words[n - 1]


def _swap_words(prompt: str) -> tuple[str, str]:
    words = _quoted(prompt).split()
    if len(words) != 2:
        raise Unworkable(f"{len(words)} words to swap, not 2")
    first, second = words
    work = (f"Let's think step by step. The string has two words, first \"{first}\" and then \"{second}\". "
            f"Swapped, \"{second}\" comes first.")
    return work, f"\"{second} {first}\""


def _first_letters(prompt: str) -> tuple[str, str]:
    words = re.findall(r"[A-Za-z']+", _quoted(prompt))
    letters = [w[0].lower() for w in words]
    work = (f"Let's think step by step. The words are {', '.join(words)}. Their first letters are "
            f"{', '.join(letters)}. Together in lowercase: {''.join(letters)}.")
    return work, "".join(letters)


SOLVERS = {
    "formal_logic": _formal_logic,
    "which_is_heavier": _which_is_heavier,
    "shape_in_shape": _shape_in_shape,
    "cricket_situations": _cricket,
    "european_date_format": _european_date,
    "date_to_string": _date_to_string,
    "nth_word": _nth_word,
    "swap_words": _swap_words,
    "first_letters": _first_letters,
}


def worked_answer(subtask: str, messages: list[dict]) -> str:
    """The worked answer to a chat whose last message is its recorded direct answer: reasoning, then
    "So the answer is <the recorded answer>."; Unworkable if the subtask has no solver, the item's
    form is unknown, or the worked answer differs from the recorded one."""
    if subtask not in SOLVERS:
        raise Unworkable(f"no worked answers for subtask {subtask!r}")
    prompt = "\n".join(m["content"] for m in messages[:-1] if m["role"] == "user")
    recorded = messages[-1]["content"].strip()
    solver = SOLVERS[subtask]
    work, answer = solver(prompt, recorded) if solver is _european_date else solver(prompt)
    if answer != recorded:
        raise Unworkable(f"worked answer {answer!r} differs from the recorded {recorded!r}")
    return f"{work} So the answer is {answer}" + ("" if answer.endswith(".") else ".")
