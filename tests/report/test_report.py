"""The HTML report of a selection folder, a folder of them and an experiment folder, built by hand here."""

from __future__ import annotations

import base64
import csv
import io
import json
import random
import re
from html.parser import HTMLParser
from pathlib import Path

import pytest
from PIL import Image

from gradsift.report import write_report
from gradsift.report.html import results_table
from gradsift.report.markup import PNG_SIGNATURE
from gradsift.utils.errors import ConfigError

SCRIPT = "<script>alert('x')</script>"
VOID = {"area", "base", "br", "col", "embed", "hr", "img", "input", "link", "meta", "source", "track", "wbr"}


class Walker(HTMLParser):
    """Collects tags, img sources and text; fails on an unbalanced or misnested tag."""

    def __init__(self):
        super().__init__(convert_charrefs=True)
        self.stack, self.tags, self.images, self.text, self.problems = [], [], [], [], []

    def handle_starttag(self, tag, attrs):
        self.tags.append(tag)
        if tag == "img":
            self.images.append(dict(attrs)["src"])
        if tag not in VOID:
            self.stack.append(tag)

    def handle_endtag(self, tag):
        if tag in VOID:
            return
        if not self.stack or self.stack[-1] != tag:
            self.problems.append(f"</{tag}> closes {self.stack[-1:] or 'nothing'}")
        else:
            self.stack.pop()

    def handle_data(self, data):
        self.text.append(data)


def parse(path: Path) -> Walker:
    html = path.read_text(encoding="utf-8")
    walker = Walker()
    walker.feed(html)
    walker.close()
    assert not walker.problems, walker.problems[:5]
    assert walker.stack == [], walker.stack
    assert html.startswith("<!DOCTYPE html>")
    assert not re.search(r"<(script|link|iframe)\b", html), "the page needs nothing outside itself"
    assert not re.search(r'(src|href)="(https?:|//|file:)', html), "no external resource"
    return walker


def check_cards(html: str, at_least: int) -> None:
    """Every selected example shown is labelled with its own source (rows and records not mixed up)."""
    cards = re.findall(r'source (\w+) · id pool:\d+</div><div class="turn"><span class="role">user</span>'
                       r"question \d+ from (\w+)", html)
    assert len(cards) >= at_least and all(a == b for a, b in cards), cards


def check_images(walker: Walker, at_least: int) -> None:
    assert len(walker.images) >= at_least
    for src in walker.images:
        assert src.startswith("data:image/png;base64,")
        data = base64.b64decode(src.split(",", 1)[1], validate=True)
        assert data.startswith(PNG_SIGNATURE) and len(data) > 100
        Image.open(io.BytesIO(data)).verify()


def write_jsonl(path: Path, records: list[dict]) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("".join(json.dumps(r) + "\n" for r in records))
    return path


def make_targets(root: Path) -> list[Path]:
    """Two target files: one with explicit subtasks, one whose records take the file's stem."""
    logic = write_jsonl(root / "targets" / "logic.jsonl", [
        {"messages": [{"role": "user", "content": f"Is statement {k} valid? Think step by step."},
                      {"role": "assistant", "content": f"Step 1 ... so statement {k} is valid."}],
         "subtask": "formal_fallacies" if k % 2 else "boolean_expressions"} for k in range(4)])
    counting = write_jsonl(root / "targets" / "object_counting.jsonl", [
        {"prompt": f"I have {k} apples and {k} pears. How many fruits?", "completion": f"{2 * k}"} for k in range(3)])
    return [logic.resolve(), counting.resolve()]


def make_selection(out: Path, target: str, target_files: list[Path], method: str = "less", pool: int = 60,
                   k: int = 6, subtasks: bool = True) -> Path:
    """A selection folder in the format ``gradsift select`` writes: scores favour short "logic" records."""
    rng = random.Random(f"{target}-{method}")
    sources = ["gsm8k", "logic", "manga"]
    subtask_names = ["formal_fallacies", "boolean_expressions", "object_counting"]
    records, rows = [], []
    for i in range(pool):
        source = sources[i % 3]
        user = f"question {i} from {source} " + "word " * rng.randrange(40)
        if i == 3:
            user = f"tricky {SCRIPT} & friends"
        record = {"instruction": user, "input": "", "output": f"answer {i}", "source": source,
                  "id": f"pool:{i + 1}"}
        records.append(record)
        score = rng.gauss(0, 0.05) + 0.1 * (source == "logic") - len(user) / 3000 + (i == 3)
        rows.append({"file": "/data/pool.jsonl", "line": i + 1, "id": f"pool:{i + 1}", "source": source,
                     "score": f"{score:.6f}" if method != "random" else "",
                     "status": "ok" if i != pool - 1 else "no_label_tokens",
                     "subtask": subtask_names[i % 3] if subtasks else "", "chars": len(user) + len(f"answer {i}")})
    scored = [r for r in rows if r["status"] == "ok"]
    if method == "random":
        order = scored[::-1]
    else:
        order = sorted(scored, key=lambda r: -float(r["score"]))
    for rank, r in enumerate(order, 1):
        r["rank"] = rank if method != "random" else ""
        r["selected"] = int(rank <= k)
    rows[-1].update(score="", rank="", selected=0)
    out.mkdir(parents=True, exist_ok=True)
    by_id = {r["id"]: rec for r, rec in zip(rows, records)}
    write_jsonl(out / "selected.jsonl", [by_id[r["id"]] for r in order[:k]])
    with open(out / "scores.csv", "w", newline="") as f:
        w = csv.DictWriter(f, "file line id source score rank selected status subtask chars".split())
        w.writeheader()
        w.writerows(rows)
    picked = [r["source"] for r in order[:k]]
    scores = [float(r["score"]) for r in scored] if method != "random" else []
    summary = {
        "target": target, "method": method, "method_settings": {"fraction": 0.1, "seed": 0},
        "aggregate": "subtask-mean-max", "pool": {"examples": pool, "scored": len(scored),
                                                  "skipped": {"no_label_tokens": 1, "bad_records": 0}},
        "selected": k,
        "sources": {s: {"pool": pool // 3, "selected": picked.count(s), "pool_share": 1 / 3,
                        "selected_share": picked.count(s) / k} for s in sources},
        "scores": ({"min": min(scores), "max": max(scores), "mean": sum(scores) / len(scores),
                    "threshold": float(order[k - 1]["score"])} if scores else {}),
        "target_files": [str(p) for p in target_files],
        "target_examples": {"usable": 7, "skipped": 0,
                            "subtasks": {"boolean_expressions": 2, "formal_fallacies": 2, "object_counting": 3}},
    }
    (out / "summary.json").write_text(json.dumps(summary))
    return out


def make_experiment(root: Path) -> Path:
    files = make_targets(root)
    rows = []
    for target in ("bbh", "mmlu"):
        rows.append(dict(target=target, method="base", model="smollm2-135m", fraction=0, seed=0, selected=0,
                         loss=2.5, accuracy="", precision="", recall="", selection="",
                         evaluation=f"eval/{target}-base"))
        for method, loss in (("less", 1.9), ("random", 2.1), ("bm25", 2.0)):
            for seed in (0, 1):
                sel = f"selections/{target}-{method}-s{seed}"
                make_selection(root / sel, target, files, method=method, pool=120, k=12, subtasks=method == "less")
                rows.append(dict(target=target, method=method, model="smollm2-135m", fraction=0.1, seed=seed,
                                 selected=12, loss=loss + 0.01 * seed + (0.3 if target == "mmlu" else 0),
                                 accuracy=0.4 + 0.01 * seed, precision=0.5 if method == "less" else "",
                                 recall=0.3 if method == "less" else "", selection=sel,
                                 evaluation=f"eval/{target}-{method}-s{seed}"))
        rows.append(dict(target=target, method="less", model="gemma3-270m", fraction=0.1, seed=0, selected=12,
                         loss=3.2, accuracy="", precision=0.5, recall=0.3, selection=f"selections/{target}-less-s0",
                         evaluation=f"eval/{target}-less-gemma"))
    with open(root / "results.csv", "w", newline="") as f:
        w = csv.DictWriter(f, list(rows[0]))
        w.writeheader()
        w.writerows(rows)
    (root / "results.md").write_text("| target | method |\n|---|---|\n")
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    fig = Figure(figsize=(2, 1))
    FigureCanvasAgg(fig)
    fig.add_subplot().bar([0, 1], [1, 2])
    fig.savefig(root / "results.png", format="png")
    (root / "experiment.json").write_text(json.dumps({"targets": ["bbh", "mmlu"], "note": SCRIPT}))
    return root


def test_selection_report(tmp_path):
    sel = make_selection(tmp_path / "sel", "bbh", make_targets(tmp_path))
    out = write_report(sel)
    assert out == sel / "report.html"
    walker = parse(out)
    html = out.read_text()
    text = "".join(walker.text)
    for expected in ("bbh", "less", "Score distribution", "Composition by source", "Length of selected",
                     "formal_fallacies", "boolean_expressions", "object_counting", "gsm8k", "lift",
                     "I have 2 apples", "Is statement 1 valid?"):
        assert expected in text, expected
    assert SCRIPT not in html and "&lt;script&gt;" in html
    assert "tricky <script>alert('x')</script> & friends" in text  # escaped, so it reads back as text
    check_cards(html, 4)
    check_images(walker, 3)  # scores, composition, length


def test_selection_without_subtasks_shows_overall_top(tmp_path):
    sel = make_selection(tmp_path / "sel", "bbh", make_targets(tmp_path), method="random", subtasks=False)
    (sel / "scores.csv").write_text("\n".join(",".join(line.split(",")[:8])  # an older scores.csv: no subtask, chars
                                              for line in (sel / "scores.csv").read_text().splitlines()) + "\n")
    summary = json.loads((sel / "summary.json").read_text())
    summary["target_files"].append("/gone/mmlu.jsonl")
    (sel / "summary.json").write_text(json.dumps(summary))
    walker = parse(write_report(sel))
    text = "".join(walker.text)
    assert "no per-subtask scores" in text and "No scores" in text and "lengths unknown" in text
    assert "target file /gone/mmlu.jsonl not found" in text
    check_cards((sel / "report.html").read_text(), 6)
    check_images(walker, 1)


def test_multi_target_selection_gives_one_section_per_target(tmp_path):
    files = make_targets(tmp_path)
    for target in ("bbh", "mmlu", "tydiqa"):
        make_selection(tmp_path / "out" / target, target, files)
    walker = parse(write_report(tmp_path / "out"))
    html = (tmp_path / "out" / "report.html").read_text()
    assert html.count('<section class="selection"') == 3
    for target in ("bbh", "mmlu", "tydiqa"):
        assert f"Target: {target}" in "".join(walker.text)
    check_images(walker, 9)


def test_experiment_report(tmp_path):
    root = make_experiment(tmp_path / "exp")
    walker = parse(write_report(root))
    html = (root / "report.html").read_text()
    text = "".join(walker.text)
    for expected in ("Results", "Selections for bbh", "Selections for mmlu", "gemma3-270m", "base", "bm25",
                     "1.905 ± 0.007", "formal_fallacies", "experiment.json"):
        assert expected in text, expected
    assert SCRIPT not in html
    assert html.count("<details") >= 6  # a block per target x method, and the config
    assert html.count('<section class="selection"') == 6  # 2 targets x 3 methods, lowest seed only
    assert "less-s1" not in html and "bbh-less-s0" in html
    check_images(walker, 1 + 6 * 2)  # results.png, then composition and length per selection


def test_results_table_bolds_the_best_loss_per_target_and_model():
    rows = [dict(target="t", method=m, model=model, fraction="0.05", seed=s, selected="5", loss=str(loss + s / 100),
                 accuracy="", precision="", recall="", auc="", length="")
            for m, model, loss in (("less", "a", 1.0), ("random", "a", 1.5), ("less", "b", 3.0)) for s in (0, 1)]
    html = results_table(rows)
    assert html.count("<b>") == 2 and "<b>1.005 ± 0.007</b>" in html and "<b>3.005 ± 0.007</b>" in html


def test_a_folder_of_neither_kind_is_refused(tmp_path):
    (tmp_path / "empty" / "sub").mkdir(parents=True)
    with pytest.raises(ConfigError, match="neither a selection folder"):
        write_report(tmp_path / "empty")
    with pytest.raises(ConfigError, match="not a folder"):
        write_report(tmp_path / "missing")
