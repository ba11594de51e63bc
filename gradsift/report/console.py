"""A selection on the console: its composition against the pool and its best examples (``print_selection``)."""

from __future__ import annotations

import json
from typing import TYPE_CHECKING

from gradsift.data.records import to_messages
from gradsift.utils.files import read_json

if TYPE_CHECKING:
    from rich.console import Console


def _preview(raw: str, width: int = 110) -> str:
    messages = to_messages(json.loads(raw))
    user = next((m["content"] for m in messages if m["role"] == "user"), messages[0]["content"])
    text = " ".join(user.split())
    return text if len(text) <= width else text[: width - 1] + "…"


def print_selection(selection, top: int = 5, console: Console | None = None) -> None:
    from rich.console import Console
    from rich.table import Table

    console = console or Console()
    summary = read_json(selection.output / "summary.json")
    console.print(f"\n[bold]target {summary['target']}[/bold]: selected {summary['selected']} of "
                  f"{summary['pool']['examples']} pool examples -> {selection.output}/selected.jsonl")
    table = Table("source", "pool", "pool %", "selected", "selected %", "lift")
    for source, s in sorted(summary["sources"].items(), key=lambda kv: -kv[1]["selected_share"]):
        lift = s["selected_share"] / s["pool_share"] if s["pool_share"] else 0.0
        table.add_row(source, str(s["pool"]), f"{100 * s['pool_share']:.1f}", str(s["selected"]),
                      f"{100 * s['selected_share']:.1f}", f"{lift:.2f}x")
    console.print(table)
    best = Table("rank", "score", "example (user turn)")
    with open(selection.output / "selected.jsonl", encoding="utf-8") as f:
        for rank, (row, line) in enumerate(zip(selection.selected[:top], f), 1):
            best.add_row(str(rank), f"{selection.scores[row]:.4f}", _preview(line))
    console.print(best)
