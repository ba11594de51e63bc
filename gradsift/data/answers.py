"""Where a worked reply states its final answer: the one rule that building (``--response answer``,
``answer-only``) and evaluation (accuracy) both use.
"""

from __future__ import annotations

import re

# Where a worked reply states its result: BBH "So the answer is", GSM8K "The answer is" / "####", "Answer:".
ANSWER_MARKER = re.compile(r"(?:the answer is|answer:|####)[ \t]*", re.IGNORECASE)


def final_answer_start(reply: str) -> int:
    """Where a reply's final answer begins: after its last answer marker, or 0 (a direct reply is all answer)."""
    last = None
    for last in ANSWER_MARKER.finditer(reply):
        pass
    return last.end() if last is not None else 0


def without_reasoning(messages: list[dict[str, str]]) -> list[dict[str, str]]:
    """The conversation with each assistant reply cut to its final answer (a worked answer made direct)."""
    return [{**m, "content": m["content"][final_answer_start(m["content"]):]} if m["role"] == "assistant" else m
            for m in messages]
