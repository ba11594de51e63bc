"""``gradsift inspect PATH [--verify]``: what a gradsift folder holds, and whether it is still intact.

A folder is recognised by the file its stage writes last: a gradient store by ``manifest.json``, a
warmup or training run by ``run.json``, an experiment by ``experiment.json``, a selection by
``summary.json`` beside ``scores.csv``, an evaluation by ``summary.json`` beside ``examples.jsonl``.
Each finished stage records the sha256 of its outputs and of the input files it read; ``--verify``
recomputes them and reports every file that is missing or no longer hashes the same (and, for an
experiment, verifies every folder inside it).
"""

from __future__ import annotations

import csv
import json
from dataclasses import dataclass, field
from pathlib import Path

from gradsift.utils.errors import ConfigError, StoreMismatchError
from gradsift.utils.files import file_sha256, read_json


@dataclass
class Inspection:
    path: Path
    kind: str
    facts: list[tuple[str, str]] = field(default_factory=list)  # (what, value) in display order
    problems: list[str] = field(default_factory=list)  # found by --verify (or by merely opening)
    verified: int = 0  # files whose hash was recomputed and matched

    def add(self, what: str, value) -> None:
        self.facts.append((what, value if isinstance(value, str) else json.dumps(value)))


def kind_of(path: Path) -> str | None:
    path = Path(path)
    if (path / "manifest.json").is_file():
        return "gradient store"
    if (path / "run.json").is_file():
        return "run"
    if (path / "experiment.json").is_file():
        return "experiment"
    if (path / "summary.json").is_file() and (path / "scores.csv").exists():
        return "selection"
    if (path / "summary.json").is_file() and (path / "examples.jsonl").exists():
        return "evaluation"
    return None


def inspect(path: Path, verify: bool = False) -> list[Inspection]:
    """One Inspection for PATH; for an experiment with ``verify``, one more for every folder inside it."""
    path = Path(path)
    if not path.exists():
        raise ConfigError(f"{path}: no such file or folder")
    kind = kind_of(path)
    if kind is None:
        raise ConfigError(f"{path} is not a gradsift folder (no manifest.json, run.json, experiment.json or "
                          "summary.json)")
    found = Inspection(path, kind)
    try:
        INSPECTORS[kind](found, verify)
    except (OSError, ValueError, KeyError, TypeError) as e:  # a damaged metadata file: say which, no traceback
        found.problems.append(f"{path}: cannot read its metadata ({type(e).__name__}: {e})")
    found.add("disk size", _size(path))
    results = [found]
    if verify and kind == "experiment":
        for child in sorted(p for p in path.rglob("*") if p.is_dir() and kind_of(p) not in (None, "experiment")):
            results += inspect(child, verify=True)
    return results


# -- checks shared by every kind ---------------------------------------------------------------------
def _check_hashes(found: Inspection, folder: Path, recorded: dict[str, str], what: str) -> None:
    """Each recorded file (relative to FOLDER, or absolute) must exist and hash as recorded."""
    for name, sha in recorded.items():
        file = Path(name) if Path(name).is_absolute() else folder / name
        if not file.is_file():
            found.problems.append(f"{file}: {what} file is missing")
        elif file_sha256(file) != sha:
            found.problems.append(f"{file}: {what} file has changed since it was recorded (sha256 differs)")
        else:
            found.verified += 1


def _no_checksums(found: Inspection) -> None:
    found.problems.append(f"{found.path}: no checksums recorded (written by an older gradsift): nothing to "
                          "verify against; rebuild it to make it verifiable")


def _listing(paths: list[str], counts: list[int] | None = None) -> str:
    """File names for a table cell: all of them when few, else how many, where, and the first and last."""
    named = [f"{p} ({n} records)" for p, n in zip(paths, counts)] if counts else list(paths)
    if len(named) <= 3:
        return ", ".join(named) or "none"
    folders = {str(Path(p).parent) for p in paths}
    where = f" in {folders.pop()}" if len(folders) == 1 else ""
    total = f", {sum(counts)} records" if counts else ""
    return f"{len(paths)} files{where}{total}: {Path(paths[0]).name} ... {Path(paths[-1]).name}"


def _size(path: Path) -> str:
    total = sum(p.stat().st_size for p in Path(path).rglob("*") if p.is_file())
    for unit in ("B", "KiB", "MiB", "GiB", "TiB"):
        if total < 1024 or unit == "TiB":
            return f"{total:.0f} {unit}" if unit == "B" else f"{total:.1f} {unit}"
        total /= 1024
    raise AssertionError


# -- one inspector per kind ------------------------------------------------------------------------
def _store(found: Inspection, verify: bool) -> None:
    from gradsift.store.datastore import layout_problems
    from gradsift.store.embeddings import EMBEDDINGS_DIR, check_layout, embeddings_meta
    from gradsift.store.lexical import LEXICAL_DIR, check_rows, lexical_meta, stale

    path = found.path
    manifest = read_json(path / "manifest.json")
    progress = read_json(path / "progress.json") if (path / "progress.json").is_file() else {}
    rows = manifest["rows"]
    if manifest.get("status") == "complete":
        found.add("state", "complete")
    else:
        done = ", ".join(f"{name} {progress.get(name, 0)}/{rows}" for name in (c["name"] for c in manifest["checkpoints"]))
        found.add("state", f"partial: rows committed per checkpoint {done}; rerun the same `gradsift build` to finish")
    projection = manifest["projection"]
    found.add("model", manifest["model"]["name"])
    found.add("warmup run", manifest["run"])
    found.add("gradient", manifest["gradient"] + (f" ({manifest['adam_form']})" if manifest.get("adam_form") else ""))
    found.add("projection", f"{projection.get('kind')} to {projection['dim']} dims, seed {projection.get('seed')}")
    found.add("rows", f"{rows} x {projection['dim']} {manifest.get('dtype', 'float16')}, max_length "
                      f"{manifest['max_length']}")
    counts = manifest["counts"]
    found.add("counts", f"{counts['ok']} ok, {counts['no_label_tokens']} without label tokens, "
                        f"{counts['bad_records']} bad records skipped")
    for bad in manifest.get("bad_records", [])[:5]:
        found.add("skipped", f"{bad.get('file')}:{bad.get('line')}: {bad.get('problem')}")
    found.add("checkpoints", ", ".join(f"{c['name']} (weight {c['weight']:.3f})" for c in manifest["checkpoints"]))
    found.add("data files", _listing([f["path"] for f in manifest["files"]], [f["records"] for f in manifest["files"]]))
    found.problems += layout_problems(path, manifest)  # structure: every feature file there with its shape
    lexical = lexical_meta(path)
    if lexical is None:
        found.add("lexical index", "none (a store built before stores held one: rerun its `gradsift build` to add it)"
                  if manifest.get("status") == "complete" else "none yet (written once the store is complete)")
    else:
        outdated = (" (made with an older tokenizer: BM25 indexes in memory until its `gradsift build` is rerun)"
                    if stale(lexical) else "")
        found.add("lexical index", f"BM25 of {', '.join(lexical['parts'])}: {lexical['rows']} rows, k1 {lexical['k1']}, "
                                   f"b {lexical['b']}, bm25s {lexical['bm25s']}, {_size(path / LEXICAL_DIR)}{outdated}")
        try:
            check_rows(path, lexical, rows)
        except StoreMismatchError as e:
            found.problems.append(str(e))
    embedded = embeddings_meta(path)
    if embedded is None:
        found.add("embeddings", "none (a store built before stores held them: rerun its `gradsift build` to add them)"
                  if manifest.get("status") == "complete" else "none yet (written once the store is complete)")
    else:
        state = "" if embedded["status"] == "complete" else " (partial: rerun the same `gradsift build` to finish)"
        found.add("embeddings", f"RDS+ of the {embedded['part']} by {embedded['model']['name']}: {embedded['rows']} x "
                                f"{embedded['dim']} {embedded['dtype']}, max_length {embedded['max_length']}, "
                                f"{_size(path / EMBEDDINGS_DIR)}{state}")
        found.problems += check_layout(path, embedded)
        if embedded["rows"] != rows:
            found.problems.append(f"{path / EMBEDDINGS_DIR}: {embedded['rows']} embeddings, the store has {rows} rows; "
                                  "delete that folder and rerun `gradsift build` to embed the rows again")
    if verify:
        if "checksums" in manifest:
            _check_hashes(found, path, manifest["checksums"], "store")
        elif manifest.get("status") == "complete":
            _no_checksums(found)
        _check_hashes(found, path, {f["path"]: f["sha256"] for f in manifest["files"]}, "data")
        if lexical is not None:
            _check_hashes(found, path / LEXICAL_DIR, lexical["checksums"], "lexical index")
        if embedded is not None and "checksums" in embedded:
            _check_hashes(found, path / EMBEDDINGS_DIR, embedded["checksums"], "embeddings")


def _run(found: Inspection, verify: bool) -> None:
    path = found.path
    meta = read_json(path / "run.json")
    config = meta["config"]
    training = "train" not in config  # warmup samples a fraction of its --train files; train takes --data
    found.kind = "training run" if training else "warmup run"
    epochs = config.get("epochs")
    found.add("state", "complete" if meta["complete"] else
              f"partial: {len(meta['checkpoints'])} of {epochs} epochs; rerun the same command to resume")
    found.add("model", meta["model"]["name"])
    found.add("id", meta["id"])
    weights = "every weight" if config.get("full") else f"LoRA r={config['lora_r']}, alpha={config['lora_alpha']}"
    lora = meta.get("adapted")
    if lora:
        found.add("adapted", f"{', '.join(lora['targets'])}: {lora['layers']} layers, {lora['parameters']:,} LoRA parameters")
    elif not config.get("full"):
        found.add("adapted", f"{', '.join(config.get('lora_targets') or [])} (layer and parameter counts not recorded)")
    found.add("training", f"{weights}; lr {config['learning_rate']}, warmup_ratio {config['warmup_ratio']}, "
                          f"{epochs} epochs, batch {config['batch_size']}, max_length {config['max_length']}, "
                          f"seed {config['seed']}" + ("" if training else f", fraction {config.get('fraction')}"))
    for c in meta["checkpoints"]:
        state_file = path / c["name"] / "state.json"
        state = read_json(state_file) if state_file.is_file() else {}
        has_optimizer = (path / c["name"] / "optimizer.safetensors").is_file()
        found.add(c["name"], f"epoch {c['epoch']}, step {c['step']}, mean lr {c['lr']:.3g}, optimizer state "
                             f"{'kept' if has_optimizer else 'dropped'}")
        if not state_file.is_file():
            found.problems.append(f"{state_file}: checkpoint state is missing")
        elif verify:
            if "checksums" in state:
                _check_hashes(found, path / c["name"], state["checksums"], "checkpoint")
            else:
                _no_checksums(found)
    files = meta.get("data_files", [])
    found.add("data files", _listing([f["path"] for f in files], [f["records"] for f in files]) if files else "not recorded")
    if verify:
        _check_hashes(found, path, {f["path"]: f["sha256"] for f in files}, "data")
        last = path / meta["checkpoints"][-1]["name"] / "state.json" if meta["checkpoints"] else None
        if training and meta["complete"] and last is not None and last.is_file():
            # the final weights at the run's top are copies of the last checkpoint's
            recorded = read_json(last).get("checksums", {})
            exported = {n: s for n, s in recorded.items() if n != "optimizer.safetensors" and (path / n).exists()}
            _check_hashes(found, path, exported, "final weights")


def _selection(found: Inspection, verify: bool) -> None:
    summary = read_json(found.path / "summary.json")
    found.add("method", f"{summary['method']} {json.dumps(summary.get('method_settings', {}))}")
    found.add("target", summary["target"])
    pool = summary["pool"]
    found.add("selected", f"{summary['selected']} of {pool['examples']} pool examples ({pool['scored']} scored; skipped "
                          f"{pool['skipped']})")
    scores = summary["scores"]
    found.add("scores", f"min {scores['min']:.4g}, mean {scores['mean']:.4g}, max {scores['max']:.4g}, threshold "
                        f"{scores['threshold']:.4g}")
    found.add("pool files", _listing(summary["pool_files"]))
    found.add("target files", _listing(summary["target_files"]))
    if verify:
        _verify_outputs(found, summary)


def _evaluation(found: Inspection, verify: bool) -> None:
    summary = read_json(found.path / "summary.json")
    found.add("model", summary["model"] + (f" + adapter {summary['adapter']}" if summary.get("adapter") else ""))
    loss, accuracy = summary.get("loss"), summary.get("accuracy")
    found.add("results", f"loss {'n/a' if loss is None else f'{loss:.4f}'}, accuracy "
                         f"{'n/a' if accuracy is None else f'{accuracy:.3f}'} over {summary['examples']} examples")
    found.add("skipped", summary["skipped"])
    found.add("data files", _listing(summary["data"]))
    if verify:
        _verify_outputs(found, summary)


def _verify_outputs(found: Inspection, summary: dict) -> None:
    if "checksums" not in summary:
        _no_checksums(found)
        return
    _check_hashes(found, found.path, summary["checksums"], "output")
    _check_hashes(found, found.path, summary.get("file_sha256", {}), "input")


def _experiment(found: Inspection, verify: bool) -> None:
    config = read_json(found.path / "experiment.json")
    methods = [m["label"] for m in config["methods"]]
    found.add("grid", f"{len(config['targets'])} targets x {len(methods)} methods ({', '.join(methods)}) x fractions "
                      f"{config['fractions']} x seeds {config['seeds']}")
    results = found.path / "results.csv"
    if results.is_file():
        with open(results, newline="") as f:
            rows = list(csv.DictReader(f))
        found.add("cells done", f"{len(rows)} (target, method, model, fraction, seed) results in {results.name}")
    else:
        found.add("cells done", "0 (no results.csv yet)")
    for part in ("run", "stores", "selections", "train", "eval"):
        folder = found.path / part
        if folder.is_dir():
            inside = sum(1 for p in folder.rglob("*") if p.is_dir() and kind_of(p) is not None) + (kind_of(folder) is not None)
            found.add(part, f"{inside} folder(s)")


INSPECTORS = {"gradient store": _store, "run": _run, "selection": _selection, "evaluation": _evaluation,
              "experiment": _experiment}


def print_inspection(found: Inspection) -> None:
    from rich.console import Console
    from rich.table import Table

    table = Table(title=f"{found.path} ({found.kind})", show_header=False, title_justify="left")
    table.add_column(style="bold")
    table.add_column(overflow="fold")
    for what, value in found.facts:
        table.add_row(what, value)
    Console().print(table)
