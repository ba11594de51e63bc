"""Near-duplicate removal within a selection (``select --dedup J``): a row whose text is almost a row
already selected adds little but repeats it, so it gives its place to the next row of the ranking.

Text is each record's every turn, lower-cased, as sets of word 3-grams; two rows are near duplicates
when their Jaccard similarity is at least J, estimated with MinHash signatures and found through
locality-sensitive hashing (the ``datasketch`` library), then checked on the signatures. The ranking
is walked best first until the selection is full, so the work grows with the selection, not the pool.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from datasketch import MinHash, MinHashLSH

from gradsift.data.index import StoreIndex
from gradsift.data.records import record_text

SHINGLE_WORDS = 3  # short records (a question, an answer) still give several shingles
NUM_PERM = 128  # signature length: the Jaccard estimate's standard error is about 0.04
TEXTS_AT_ONCE = 1024  # rows read and hashed at a time


def shingles(text: str, n: int = SHINGLE_WORDS) -> set[bytes]:
    """The text's word n-grams (lower-cased, split on white space); a text of n words or fewer is one."""
    words = text.lower().split()
    if len(words) <= n:
        return {" ".join(words).encode()}
    return {" ".join(words[i: i + n]).encode() for i in range(len(words) - n + 1)}


@dataclass
class Deduplicated:
    jaccard: float  # the threshold: a row this similar to a selected one is passed over
    ranking: np.ndarray  # the ranking with each passed-over row moved after the selection, in its order
    duplicates: list[tuple[int, int]]  # (row passed over, the selected row it nearly repeats), best first
    kept: int  # rows selected: fewer than asked only where the ranking ran out


def skip_near_duplicates(ranking: np.ndarray, refs: StoreIndex, count: int, jaccard: float) -> Deduplicated:
    """Walk ``ranking`` (rows, best first) and keep a row unless its estimated Jaccard similarity with a
    row kept before it is at least ``jaccard``, until ``count`` rows are kept (or the ranking ends)."""
    lsh = MinHashLSH(threshold=jaccard, num_perm=NUM_PERM)
    signatures: dict[int, MinHash] = {}
    kept: list[int] = []
    duplicates: list[tuple[int, int]] = []
    position = 0
    while len(kept) < count and position < len(ranking):
        rows = ranking[position: position + TEXTS_AT_ONCE]
        position += len(rows)
        hashes = MinHash.bulk([shingles(record_text(r)) for r in refs.take(rows)], num_perm=NUM_PERM)
        for row, signature in zip(rows.tolist(), hashes):
            if len(kept) == count:
                break
            # LSH finds likely matches; the signatures decide (a near miss of LSH is rare, a false match is checked)
            match = next((k for k in lsh.query(signature) if signature.jaccard(signatures[k]) >= jaccard), None)
            if match is not None:
                duplicates.append((row, match))
                continue
            lsh.insert(row, signature)
            signatures[row] = signature
            kept.append(row)
    head = np.asarray(kept + [d for d, _ in duplicates], dtype=ranking.dtype)  # kept, then passed over
    rest = ranking[np.isin(ranking, head, invert=True)]
    return Deduplicated(jaccard, np.concatenate([head, rest]), duplicates, len(kept))
