"""The lexical index of a store: BM25 (``bm25s``) of each part of every row's record, built once.

On disk, in the store's folder (written whole, by a rename, after the rows are complete)::

    STORE/lexical/
      lexical.json           what it holds: parts, k1, b, tokenizer settings, bm25s version, rows, and
                             the sha256 of every file below
      <part>/                one ``bm25s.BM25.save`` folder per part (whole, prompt, answer): the
                             CSC arrays (memory-mapped when read), the vocabulary, the parameters

Texts are ``record_text(ref, part)`` (``data.records``) and tokens come from ``tokenize``, the one
tokenization of records and queries alike, so a stored index scores exactly as a fresh one.
``QueryScores`` gives many queries' scores of a row range at once: ``bm25s.BM25.get_scores``'s, summed
in float64 (bm25s adds in float32, so the two can differ in the last bit). A store built before this
module has no index; BM25 then indexes in memory.
"""

from __future__ import annotations

import mmap
import os
import shutil
import tempfile
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING, get_args

import numpy as np
from tqdm import tqdm

from gradsift.config import Part
from gradsift.data.records import ExampleRef, record_text
from gradsift.utils.errors import StoreMismatchError
from gradsift.utils.faults import stop_point
from gradsift.utils.files import atomic_write_json, checksums, partial_name, read_json

if TYPE_CHECKING:
    import bm25s

LEXICAL_DIR = "lexical"
META = "lexical.json"
LEXICAL_FORMAT = 1
PARTS: tuple[Part, ...] = get_args(Part)
K1, B = 1.5, 0.75  # bm25s's defaults, and Bm25's: an index with other values is not the one a selection reads
# bm25s.tokenize's arguments. Words of one character count (bm25s's default pattern drops them): the
# digits and letters of a symbolic prompt ("((-5 + 9 * -4) * (4 + -7)) =") are its only words.
TOKENIZER = {"lower": True, "stopwords": "en", "stemmer": None, "token_pattern": r"(?u)\b\w+\b"}


def tokenize(texts: list[str], ids: bool = True):
    """bm25s tokens of TEXTS: a corpus to index (``ids``: bm25s's Tokenized), or queries (lists of words)."""
    import bm25s

    return bm25s.tokenize(texts, **TOKENIZER, return_ids=ids, show_progress=False)


def build_index(texts: list[str], k1: float = K1, b: float = B) -> bm25s.BM25:
    """A bm25s index of TEXTS (one document a row), in memory."""
    import bm25s

    index = bm25s.BM25(k1=k1, b=b)
    index.index(tokenize(texts), show_progress=False)
    return index


def query_ids(index: bm25s.BM25, texts: list[str]) -> list[np.ndarray]:
    """Each query's token ids in INDEX's vocabulary, in order, repeats kept (a word the pool never has
    matches nothing; a query left with no word scores 0 everywhere), as ``BM25.get_scores`` looks them up."""
    vocab = index.vocab_dict
    return [np.array([vocab[t] for t in words if t in vocab], np.int64) for words in tokenize(texts, ids=False)]


class QueryScores:
    """BM25 scores of many queries (token ids, ``query_ids``) against any range of an index's rows at once.

    A query's score of a row is the sum, over its words (repeats counted), of the word's stored score for
    that row (bm25s's ``get_scores``), so a range's scores are one sparse product: the postings of the
    queries' words that fall in the range (rows x words) times the words' counts in each query (words x
    queries). Only the postings in the range are read (a memory-mapped index stays on disk), and the
    products are summed in float64, so the order bm25s adds them in is rounded away."""

    def __init__(self, index: bm25s.BM25, queries: list[np.ndarray]):
        import torch

        self.maps = [getattr(index.scores[k], "_mmap", None) for k in ("data", "indices")]  # None: in memory
        self.data = np.asarray(index.scores["data"])  # plain views of the memory maps: slicing them is cheap
        self.rows = np.asarray(index.scores["indices"])
        pointers = np.asarray(index.scores["indptr"])
        self.words = np.unique(np.concatenate(queries)) if any(len(q) for q in queries) else np.zeros(0, np.int64)
        counts = np.zeros((len(self.words), len(queries)))
        for j, q in enumerate(queries):
            np.add.at(counts[:, j], np.searchsorted(self.words, q), 1.0)
        self.counts = torch.from_numpy(counts)
        self.first, self.last = pointers[self.words], pointers[self.words + 1]

    def __call__(self, start: int, stop: int) -> np.ndarray:
        """(stop - start, queries) float32 scores of rows [start, stop)."""
        import torch

        bounds = [np.searchsorted(self.rows[f:e], (start, stop)) + f for f, e in zip(self.first, self.last)]
        found = [(u, lo, hi) for u, (lo, hi) in enumerate(bounds) if hi > lo]
        if not found:
            return np.zeros((stop - start, self.counts.shape[1]), np.float32)
        rows = np.concatenate([self.rows[lo:hi] for _, lo, hi in found]).astype(np.int64) - start
        values = np.concatenate([self.data[lo:hi] for _, lo, hi in found]).astype(np.float64)
        words = np.repeat([u for u, _, _ in found], [hi - lo for _, lo, hi in found])
        for m in self.maps:  # the postings read stay in the page cache, not in this process's memory
            if m is not None:
                m.madvise(mmap.MADV_DONTNEED)
        postings = torch.sparse_coo_tensor(torch.from_numpy(np.stack([rows, words])), torch.from_numpy(values),
                                           (stop - start, len(self.words)), check_invariants=False)
        return torch.sparse.mm(postings, self.counts).float().numpy()


def write_lexical_index(store: Path, refs: Sequence[ExampleRef], parts: tuple[Part, ...] = PARTS) -> bool:
    """Index the parts of the rows' records into STORE/lexical unless it is there, made with today's
    settings (returns whether it wrote one). Written in a temporary folder renamed into place: the index
    is whole or absent. One made with other tokenizer settings (an older gradsift's) is replaced."""
    import bm25s

    final = Path(store) / LEXICAL_DIR
    if final.exists() and not stale(lexical_meta(store)):
        return False
    tmp = Path(tempfile.mkdtemp(dir=store, prefix=partial_name(LEXICAL_DIR)))
    try:
        for part in parts:  # one part's texts held at a time: the records are read again for each
            texts = [record_text(ref, part) for ref in tqdm(refs, desc=f"bm25 index of {Path(store).name}: {part}",
                                                              unit="rec", smoothing=0.1, disable=len(refs) < 10_000)]
            build_index(texts).save(tmp / part, show_progress=False)
            del texts
        files = sorted(str(p.relative_to(tmp)) for p in tmp.rglob("*") if p.is_file())
        for name in files:  # durable before the rename makes them the index
            with open(tmp / name, "rb") as f:
                os.fsync(f.fileno())
        atomic_write_json(tmp / META, {"format": LEXICAL_FORMAT, "parts": list(parts), "k1": K1, "b": B,
                                       "tokenizer": TOKENIZER, "bm25s": bm25s.__version__, "rows": len(refs),
                                       "checksums": checksums(tmp, files)})
        stop_point("lexical:written")
        aside = None
        if final.exists():  # a stale index: moved aside, then removed (absent for a moment: BM25 indexes anew)
            aside = Path(tempfile.mkdtemp(dir=store, prefix=partial_name(LEXICAL_DIR)))
            os.replace(final, aside / "stale")
        os.replace(tmp, final)
        if aside is not None:
            shutil.rmtree(aside, ignore_errors=True)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return True


def lexical_meta(store: Path) -> dict | None:
    """What STORE's lexical index holds (``lexical.json``), or None for a store without one."""
    file = Path(store) / LEXICAL_DIR / META
    return read_json(file) if file.is_file() else None


def stale(meta: dict | None) -> bool:
    """Whether an index's settings are not those ``tokenize`` uses now (its words would not be the queries')."""
    return meta is not None and meta["tokenizer"] != TOKENIZER


def check_rows(store: Path, meta: dict, rows: int) -> None:
    if meta["rows"] != rows:
        raise StoreMismatchError(f"{store}: its lexical index holds {meta['rows']} rows, the store {rows}; delete "
                                 f"{Path(store) / LEXICAL_DIR} and rerun `gradsift build` to index it again")


def open_lexical_index(store: Path, part: Part, rows: int, k1: float = K1, b: float = B) -> bm25s.BM25 | None:
    """STORE's index of PART, memory-mapped, if it has one made with these k1 and b (else None: BM25
    indexes in memory). One that does not hold the store's ROWS is a StoreMismatchError naming the store."""
    import bm25s

    meta = lexical_meta(store)
    if meta is None or part not in meta["parts"] or (meta["k1"], meta["b"]) != (k1, b) or stale(meta):
        return None
    check_rows(store, meta, rows)
    index = bm25s.BM25.load(Path(store) / LEXICAL_DIR / part, mmap=True)
    check_rows(store, {"rows": index.scores["num_docs"]}, rows)
    return index

