"""Where a worked reply states its final answer: the one rule that building (``--response answer``,
``answer-only``) and evaluation (accuracy: ``extract_answer``, ``normalize_answer``) both use.
"""

from __future__ import annotations

import re

# Where a worked reply states its result: BBH "So the answer is", GSM8K "The answer is" / "####", "Answer:".
ANSWER_MARKER = re.compile(r"(?:the answer is|answer:|####)[ \t]*", re.IGNORECASE)


def final_answer_start(reply: str) -> int:
    """Where a reply's final answer begins: after its last answer marker, or 0 (a direct reply is all answer)."""
    ends = [match.end() for match in ANSWER_MARKER.finditer(reply)]
    return ends[-1] if ends else 0


def without_reasoning(messages: list[dict[str, str]]) -> list[dict[str, str]]:
    """The conversation with each assistant reply cut to its final answer (a worked answer made direct)."""
    return [{**m, "content": m["content"][final_answer_start(m["content"]):]} if m["role"] == "assistant" else m
            for m in messages]


_THOUSANDS = re.compile(r"(?<=\d),(?=\d{3}(?!\d))")
# Non-word characters (punctuation, quotes, brackets, whitespace) at either end; a leading minus sign
# of a number stays.
_EDGES = re.compile(r"^(?:(?!-\d)[\W_])+|[\W_]+$")


def extract_answer(text: str) -> str:
    """The final answer of a (chain-of-thought) response: what follows its last answer marker
    (``final_answer_start``) on that line, without a leading ":" or a trailing "."; else (no marker)
    the last non-empty line."""
    start = final_answer_start(text)
    if start:
        tail = text[start:].split("\n", 1)[0]
        return tail.strip().strip(":").strip().removesuffix(".").strip()
    lines = [line.strip() for line in text.splitlines() if line.strip()]
    return lines[-1] if lines else ""


def normalize_answer(text: str) -> str:
    """Lowercase, whitespace collapsed, thousands separators removed, surrounding punctuation, quotes and
    brackets stripped: "(A)" -> "a", " 1,000. " -> "1000". Articles stay (a choice letter may be "a");
    an answer made only of punctuation (a bracket sequence) is kept rather than erased."""
    text = _THOUSANDS.sub("", " ".join(text.lower().split()))
    return _EDGES.sub("", text) or text


def answer_key(text: str) -> str:
    """The form two answers are compared in: the final answer of ``text``, normalized."""
    return normalize_answer(extract_answer(text))
