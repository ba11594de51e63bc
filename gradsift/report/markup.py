"""HTML building blocks of the report: escaping, number formats, clipped text, tables, inline PNG images."""

from __future__ import annotations

import base64
import re
from html import escape

PREVIEW_CHARS = 300  # characters of a user turn or answer shown in the HTML report
PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"


def _e(value) -> str:
    return escape(str(value), quote=True)


def _pct(x: float | None) -> str:
    return "–" if x is None else f"{100 * x:.1f}%"


def _num(x: float | None, digits: int = 4) -> str:
    return "–" if x is None else f"{x:.{digits}g}" if abs(x) >= 1e4 or (x and abs(x) < 1e-3) else f"{x:.{digits}f}"


def _table(header: list[str], rows: list[list[str]], numeric: set[int] = frozenset(),
           row_classes: list[str] | None = None) -> str:
    """A table of already-escaped cells; columns in ``numeric`` are right-aligned."""
    def cls(k):
        return ' class="num"' if k in numeric else ""
    head = "".join(f"<th{cls(k)}>{h}</th>" for k, h in enumerate(header))
    body = []
    for n, row in enumerate(rows):
        rc = f' class="{row_classes[n]}"' if row_classes and row_classes[n] else ""
        body.append(f"<tr{rc}>" + "".join(f"<td{cls(k)}>{c}</td>" for k, c in enumerate(row)) + "</tr>")
    return f"<table><thead><tr>{head}</tr></thead><tbody>{''.join(body)}</tbody></table>"


def _img(png: bytes, alt: str) -> str:
    return f'<img alt="{_e(alt)}" src="data:image/png;base64,{base64.b64encode(png).decode("ascii")}">'


def _notes(notes: list[str]) -> str:
    return "".join(f'<p class="note">{_e(n)}</p>' for n in notes)


def _clip(text: str, width: int = PREVIEW_CHARS, one_line: bool = False) -> str:
    text = re.sub(r"[ \t]+", " ", text.strip())
    text = re.sub(r"\s*\n\s*", " " if one_line else "\n", text)
    return text if len(text) <= width else text[: width - 1].rstrip() + "…"
