"""Instruction data: reading pool and target files, chat formatting, and label masking.

Records are JSON Lines, a JSON array (``.json``) or Parquet rows (``.parquet``) in one of three formats:

- ``{"messages": [{"role": ..., "content": ...}, ...]}`` (tulu / open-instruct)
- ``{"instruction": ..., "input": ..., "output": ...}`` (Alpaca)
- ``{"prompt": ..., "completion": ...}``

with optional ``id``, ``source`` and (for targets) ``subtask``. Each example is rendered with the
model's chat template (``FALLBACK_CHAT_TEMPLATE`` when it has none); only assistant tokens carry a
label, and the loss is the mean over an example's label tokens. A JSON-array record or a Parquet row
has no byte span of its own: it is re-read by its 1-based number and written back as one-line JSON.
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass, replace
from functools import lru_cache
from pathlib import Path
from typing import TYPE_CHECKING, Callable, Iterator, get_args

import numpy as np
import torch

from .config import Response
from .errors import DataError
from .files import file_sha256, require_data_file

if TYPE_CHECKING:
    from .store_index import StoreIndex

IGNORE_INDEX = -100
ROLES = ("system", "user", "assistant")
RESPONSES = get_args(Response)

# Used when a tokenizer has no chat template: the tulu format, ending each assistant turn with EOS.
FALLBACK_CHAT_TEMPLATE = (
    "{% for message in messages %}"
    "{{ '<|' + message['role'] + '|>\n' + message['content'] }}"
    "{% if message['role'] == 'assistant' %}{{ eos_token }}{% endif %}{{ '\n' }}"
    "{% endfor %}"
    "{% if add_generation_prompt %}{{ '<|assistant|>\n' }}{% endif %}"
)


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


@dataclass(frozen=True, slots=True)  # slots: a selection of a 10M-row pool makes 500k of them
class ExampleRef:
    """Where one example lives: enough to re-read it and to write it back verbatim."""

    file: str  # path as given by the user
    line: int  # 1-based line (JSONL) or record number (JSON array, Parquet row)
    offset: int  # byte offset of the record in the file (-1 for JSON arrays and Parquet)
    length: int  # byte length of the record (without its newline)
    id: str
    source: str
    subtask: str
    tokens: int = 0  # after truncation
    label_tokens: int = 0  # tokens that carry a loss; 0 means the example is skipped, never scored
    chars: int = 0  # characters of all its turns' contents: its length before any tokenizer
    non_finite_gradient: bool = False  # its gradient held a NaN or infinity at some checkpoint (set by build)

    @property
    def status(self) -> str:
        return str(example_status(self.label_tokens, self.non_finite_gradient))


STATUSES = ("ok", "no_label_tokens", "non_finite_gradient")


def status_codes(label_tokens, non_finite_gradient) -> np.ndarray:
    """Each example's status as its position in STATUSES (0, "ok", is scored), elementwise on the
    columns of a whole index: one byte a row, where the names would take 76."""
    codes = np.where(np.asarray(non_finite_gradient, dtype=bool), np.int8(2), np.int8(0))
    codes[np.asarray(label_tokens) == 0] = 1  # no label tokens: never scored, so never a gradient to flag
    return codes


def example_status(label_tokens, non_finite_gradient):
    """An example's status by name, elementwise on arrays too."""
    return np.asarray(STATUSES)[status_codes(label_tokens, non_finite_gradient)]


@dataclass(frozen=True)
class BadRecord:
    file: str
    line: int
    problem: str


@dataclass
class DataFile:
    path: str
    sha256: str
    records: int


def _text(value, field: str) -> str:
    if not isinstance(value, str):
        raise ValueError(f"field {field!r} must be a string, got {type(value).__name__}")
    return value


def to_messages(record: object) -> list[dict[str, str]]:
    """Normalise a record of any supported format to chat messages; ValueError says what is wrong."""
    if not isinstance(record, dict):
        raise ValueError(f"a record must be a JSON object, got {type(record).__name__}")
    if "messages" in record:
        messages = record["messages"]
        if not isinstance(messages, list) or not messages:
            raise ValueError("'messages' must be a non-empty list")
        out = []
        for k, m in enumerate(messages):
            if not isinstance(m, dict) or "role" not in m or "content" not in m:
                raise ValueError(f"messages[{k}] must be an object with 'role' and 'content'")
            if m["role"] not in ROLES:
                raise ValueError(f"messages[{k}] has role {m['role']!r}; expected one of {ROLES}")
            out.append({"role": m["role"], "content": _text(m["content"], f"messages[{k}].content")})
    elif "instruction" in record and "output" in record:
        prompt = _text(record["instruction"], "instruction")
        extra = _text(record.get("input") or "", "input")
        user = f"{prompt}\n\n{extra}" if extra else prompt
        out = [{"role": "user", "content": user}, {"role": "assistant", "content": _text(record["output"], "output")}]
    elif "prompt" in record and "completion" in record:
        out = [
            {"role": "user", "content": _text(record["prompt"], "prompt")},
            {"role": "assistant", "content": _text(record["completion"], "completion")},
        ]
    else:
        raise ValueError(
            "unknown record format: expected 'messages', 'instruction'+'output', or 'prompt'+'completion'; "
            f"found keys {sorted(record)[:8]}"
        )
    if not any(m["role"] == "assistant" for m in out):
        raise ValueError("no assistant message: nothing to compute a loss on")
    for k, m in enumerate(out):
        if m["role"] == "assistant" and not m["content"].strip():
            raise ValueError(f"assistant message {k} is empty: nothing to compute a loss on")
    return out


def _dumps(record: object) -> bytes:
    # default=str: Parquet cells may be dates, decimals or bytes, which have no JSON type
    return json.dumps(record, ensure_ascii=False, default=str).encode()


def _row_bytes(row: dict) -> bytes:
    """A Parquet row as JSON. A null cell is an absent field: files mixing formats (or with an
    optional ``id``) have every format's columns, null where a row does not use them."""
    return _dumps({k: v for k, v in row.items() if v is not None})


def _json_array(path: Path) -> list:
    try:
        items = json.loads(path.read_bytes())
    except ValueError as e:  # JSONDecodeError, UnicodeDecodeError
        raise DataError(path, 0, f"not valid JSON: {e}") from None
    if not isinstance(items, list):
        raise DataError(path, 1, "a .json data file must hold a JSON array of records")
    return items


def _parquet_rows(path: Path) -> Iterator[tuple[int, dict]]:
    """(row number, row) of a Parquet file, streamed one row group's batch at a time."""
    import pyarrow as pa  # imported here: only Parquet input pays its import time
    import pyarrow.parquet as pq

    line = 0  # rows read so far
    try:
        for batch in pq.ParquetFile(path).iter_batches():
            for row in batch.to_pylist():
                line += 1
                yield line, row
    except pa.ArrowException as e:  # before any row it is the file that is unreadable, not a row
        raise DataError(path, line + 1 if line else 0, f"cannot read Parquet: {e}") from None


def _iter_raw(path: Path) -> Iterator[tuple[int, int, bytes]]:
    """(line number, byte offset, raw record bytes) for every non-blank record of a file."""
    if path.suffix == ".json":
        for k, item in enumerate(_json_array(path), 1):
            yield k, -1, _dumps(item)
        return
    if path.suffix == ".parquet":
        for k, row in _parquet_rows(path):
            yield k, -1, _row_bytes(row)
        return
    offset = 0
    with open(path, "rb") as f:
        for number, raw in enumerate(f, 1):
            record = raw.rstrip(b"\r\n")
            if record.strip():
                yield number, offset, record
            offset += len(raw)


def scan_file(path: Path, skip_bad: bool) -> Iterator[tuple[ExampleRef, list[dict] | None, BadRecord | None]]:
    """Parse every record of one file, yielding (ref, messages, None) or (ref, None, bad) when skipping.

    Without ``skip_bad`` a malformed record raises DataError naming the file and line."""
    require_data_file(path)
    for line, offset, raw in _iter_raw(path):
        try:
            record = json.loads(raw)
            messages = to_messages(record)
            rid = record.get("id", f"{path.stem}:{line}")
            ref = ExampleRef(
                file=str(path), line=line, offset=offset, length=len(raw),
                id=str(rid), source=str(record.get("source", path.stem)), subtask=str(record.get("subtask", "")),
                chars=sum(len(m["content"]) for m in messages),
            )
        except (ValueError, UnicodeDecodeError) as e:  # JSONDecodeError is a ValueError
            problem = (f"not valid UTF-8: {e}" if isinstance(e, UnicodeDecodeError) else
                       f"not valid JSON: {e}" if isinstance(e, json.JSONDecodeError) else str(e))
            if not skip_bad:
                raise DataError(path, line, problem) from None
            yield None, None, BadRecord(str(path), line, problem)
            continue
        yield ref, messages, None


@lru_cache(maxsize=2)
def _record_reader(path: str, size: int, mtime_ns: int) -> Callable[[int], bytes]:
    """Record number -> bytes for a JSON array or Parquet file, parsed once and kept while it is one
    of the last two files read (size and mtime in the key: an edited file is parsed anew)."""
    if Path(path).suffix != ".parquet":
        items = _json_array(Path(path))
        return lambda line: _dumps(items[line - 1])
    import pyarrow as pa
    import pyarrow.parquet as pq

    try:
        table = pq.read_table(path)  # columnar: far smaller than the rows as Python objects
    except pa.ArrowException as e:
        raise DataError(path, 0, f"cannot read Parquet: {e}") from None
    return lambda line: _row_bytes(table.slice(line - 1, 1).to_pylist()[0])


def read_record_bytes(ref: ExampleRef) -> bytes:
    """The record exactly as it stands in its source file (as one-line JSON for a JSON array or Parquet)."""
    if ref.offset < 0:
        stat = Path(ref.file).stat()
        return _record_reader(ref.file, stat.st_size, stat.st_mtime_ns)(ref.line)
    with open(ref.file, "rb") as f:
        f.seek(ref.offset)
        return f.read(ref.length)


def read_records(refs: list[ExampleRef]) -> list[bytes]:
    """read_record_bytes of each ref, in order. Files are visited one after the other, so each JSON
    array or Parquet file is parsed once however the refs interleave them (a selection's ranking does)."""
    out = [b""] * len(refs)
    for i in sorted(range(len(refs)), key=lambda i: (refs[i].file, refs[i].line)):
        out[i] = read_record_bytes(refs[i])
    return out


def read_messages(ref: ExampleRef) -> list[dict[str, str]]:
    return to_messages(json.loads(read_record_bytes(ref)))


class ChatEncoder:
    """Renders messages with the chat template and labels the assistant tokens only.

    ``response`` says which reply tokens carry the loss: ``full``, every one (the paper); ``answer``, the
    final answer only (``final_answer_start``), its reasoning kept as context; ``answer-only``, the
    reasoning removed, so the reply is its final answer alone."""

    def __init__(self, tokenizer, max_length: int, response: Response = "full"):
        if tokenizer.chat_template is None:
            tokenizer.chat_template = FALLBACK_CHAT_TEMPLATE
        if response not in RESPONSES:
            raise ValueError(f"unknown response labelling {response!r}; known: {RESPONSES}")
        self.tokenizer, self.max_length, self.response = tokenizer, max_length, response

    def _render(self, messages, generation_prompt: bool = False) -> str:
        return self.tokenizer.apply_chat_template(messages, tokenize=False, add_generation_prompt=generation_prompt)

    def assistant_spans(self, messages) -> tuple[str, list[tuple[int, int]]]:
        """The rendered text and the character spans of assistant turns (with their end-of-turn marker)."""
        text = self._render(messages)
        spans = []
        for k, m in enumerate(messages):
            if m["role"] != "assistant":
                continue
            start = len(self._render(messages[:k], generation_prompt=True)) if k else 0
            upto = self._render(messages[: k + 1])
            if not text.startswith(upto) or start > len(upto):
                raise ValueError("the chat template does not render conversations prefix by prefix")
            if self.response == "answer":  # the reply's text is in its rendered turn, after the turn header
                at = text.find(m["content"], start, len(upto))
                start = start if at < 0 else at + final_answer_start(m["content"])
            spans.append((start, len(upto)))
        return text, spans

    def encode(self, messages) -> tuple[list[int], list[int]]:
        """(input_ids, labels), truncated to max_length; labels are IGNORE_INDEX outside assistant turns."""
        if self.response == "answer-only":
            messages = without_reasoning(messages)
        text, spans = self.assistant_spans(messages)
        enc = self.tokenizer(text, add_special_tokens=False, return_offsets_mapping=True,
                             truncation=True, max_length=self.max_length)
        ids = enc["input_ids"]
        labels = [
            tok if any(s <= a < e for s, e in spans) else IGNORE_INDEX
            for tok, (a, _) in zip(ids, enc["offset_mapping"])
        ]
        return ids, labels


def label_count(labels: list[int]) -> int:
    """Tokens that carry a loss (the first token is never predicted)."""
    return sum(1 for label in labels[1:] if label != IGNORE_INDEX)


class _SeenIds:
    """The ids indexed so far, each with its row: those of the block being made in a dict, earlier blocks'
    as sorted 64-bit hashes beside their rows (16 bytes an id, where a dict of 10M ids takes ~1.4 GiB).
    A hash that matches is checked against the id itself (``id_at``): a collision is never a duplicate."""

    def __init__(self, id_at: Callable[[int], str]):
        self.id_at, self.recent = id_at, {}
        self.hashes, self.rows = np.empty(0, np.int64), np.empty(0, np.int64)

    def first_row(self, id: str) -> int | None:
        if id in self.recent:
            return self.recent[id]
        h = hash(id)
        for at in range(int(np.searchsorted(self.hashes, h)), len(self.hashes)):
            if self.hashes[at] != h:
                break
            if self.id_at(int(self.rows[at])) == id:
                return int(self.rows[at])
        return None

    def add(self, id: str, row: int) -> None:
        self.recent[id] = row

    def seal(self) -> None:
        """Move the recent ids into the sorted arrays (a merge: linear in the ids seen)."""
        hashes = np.fromiter(map(hash, self.recent), np.int64, len(self.recent))
        order = np.argsort(hashes, kind="stable")
        rows = np.fromiter(self.recent.values(), np.int64, len(self.recent))[order]
        at = np.searchsorted(self.hashes, hashes[order])
        self.hashes, self.rows = np.insert(self.hashes, at, hashes[order]), np.insert(self.rows, at, rows)
        self.recent.clear()


def index_examples(
    paths: list[Path], encoder: ChatEncoder | None, skip_bad: bool = False
) -> tuple["StoreIndex", list[BadRecord], list[DataFile]]:
    """Read, validate and tokenize every record of the files (streaming: only counts are kept).
    Without an encoder (methods that read text only) records are validated but not tokenized.

    The examples come back as a columnar ``StoreIndex``, made a block of rows at a time: a pool of 10M
    records is never 10M ExampleRefs, nor a dict of its ids."""
    from .store_index import ROWS_AT_ONCE, StoreIndex  # store_index builds on this module

    blocks, block, bad, files = [], [], [], []

    def ref_at(row: int) -> ExampleRef:
        k, i = divmod(row, ROWS_AT_ONCE)
        return blocks[k][i] if k < len(blocks) else block[i]

    seen = _SeenIds(lambda row: ref_at(row).id)
    for path in (Path(p).resolve() for p in paths):  # absolute: stores are read from anywhere
        bad_before = len(bad)
        count = 0
        for ref, messages, problem in scan_file(path, skip_bad):
            if problem is None and (first_row := seen.first_row(ref.id)) is not None:
                first = ref_at(first_row)
                problem = BadRecord(str(path), ref.line, f"duplicate id {ref.id!r} (first at {first.file}:{first.line})")
                if not skip_bad:
                    raise DataError(path, ref.line, problem.problem)
            if problem is not None:
                bad.append(problem)
                continue
            seen.add(ref.id, len(blocks) * ROWS_AT_ONCE + len(block))
            if encoder is not None:
                try:
                    ids, labels = encoder.encode(messages)
                except ValueError as e:
                    raise DataError(path, ref.line, str(e)) from None
                ref = replace(ref, tokens=len(ids), label_tokens=label_count(labels))
            block.append(ref)
            if len(block) == ROWS_AT_ONCE:
                blocks.append(StoreIndex.from_refs(block))
                block = []
                seen.seal()
            count += 1
        if count == 0 and len(bad) == bad_before:
            raise DataError(path, 0, "no records (the file is empty or blank)")
        files.append(DataFile(path=str(path), sha256=file_sha256(path), records=count))
    return StoreIndex.concat(blocks + [StoreIndex.from_refs(block)]), bad, files


def print_skips(stage: str, bad: list, no_label_tokens: int, listed_in: str) -> None:
    """One line saying what a stage skipped, and where the skipped records are listed."""
    if bad or no_label_tokens:
        print(f"{stage}: skipped {len(bad)} malformed records and {no_label_tokens} without label tokens "
              f"(left after truncation; the malformed ones are listed in {listed_in})")


def encode_refs(refs: list[ExampleRef], encoder: ChatEncoder) -> list[tuple[list[int], list[int]]]:
    return [encoder.encode(read_messages(ref)) for ref in refs]


def collate(examples: list[tuple[list[int], list[int]]], pad_id: int) -> dict[str, torch.Tensor]:
    """Right-pad a batch. Padding never changes an example's loss: it is masked and unlabelled."""
    width = max(len(ids) for ids, _ in examples)
    input_ids = torch.full((len(examples), width), pad_id, dtype=torch.long)
    labels = torch.full((len(examples), width), IGNORE_INDEX, dtype=torch.long)
    attention_mask = torch.zeros((len(examples), width), dtype=torch.long)
    for row, (ids, labs) in enumerate(examples):
        input_ids[row, : len(ids)] = torch.tensor(ids)
        labels[row, : len(labs)] = torch.tensor(labs)
        attention_mask[row, : len(ids)] = 1
    return {"input_ids": input_ids, "labels": labels, "attention_mask": attention_mask}


def per_example_loss(model, batch: dict[str, torch.Tensor]) -> torch.Tensor:
    """Mean next-token loss over each example's label tokens: shape (batch,). Every row needs a label.

    Logits are computed only at positions whose next token is labelled in some row: the LM head
    is a fifth of a small model, and prompts are usually most of an example."""
    labels = batch["labels"][:, 1:]
    keep = (labels != IGNORE_INDEX).any(0).nonzero().squeeze(1)
    logits = model(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"], logits_to_keep=keep).logits
    labels = labels[:, keep]
    token_loss = torch.nn.functional.cross_entropy(
        logits.float().transpose(1, 2), labels, ignore_index=IGNORE_INDEX, reduction="none"
    )
    return token_loss.sum(1) / (labels != IGNORE_INDEX).sum(1)
