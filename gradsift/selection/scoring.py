"""Pure math of scoring: checkpoint-weighted cosine similarity, aggregation over targets, top-k."""

from __future__ import annotations

import itertools
from typing import get_args

import numpy as np
import torch

from gradsift.config import Aggregate, Fuse


def checkpoint_weights(lrs: list[float]) -> np.ndarray:
    """LESS weighs each checkpoint by its learning rate, normalised to sum 1."""
    lrs = np.asarray(lrs, dtype=np.float64)
    if (lrs < 0).any() or lrs.sum() <= 0:
        raise ValueError(f"checkpoint learning rates must be non-negative with a positive sum, got {lrs.tolist()}")
    return lrs / lrs.sum()


def weighted_similarity(pool: list[torch.Tensor], target: list[torch.Tensor], weights: np.ndarray,
                        estimate=None) -> torch.Tensor:
    """s_ij = sum_c w_c cos(pool_i^c, target_j^c) for unit-norm rows: (n_pool, n_target), float32.
    ``estimate`` turns each checkpoint's dot products into cosines (sign vectors: ``compact.sign_cosine``)."""
    total = torch.zeros(pool[0].shape[0], target[0].shape[0])
    for p, t, w in zip(pool, target, weights):
        dot = p.float() @ t.float().T
        total += float(w) * (dot if estimate is None else estimate(dot))
    return total


def subtask_mean_rows(rows: torch.Tensor, subtasks: list[str]) -> torch.Tensor:
    """(n_subtasks, dim) mean row of each subtask's examples, subtasks in sorted order (as ``subtask_means``)."""
    names = sorted(set(subtasks))
    groups = torch.tensor([names.index(s) for s in subtasks])
    sums = torch.zeros(len(names), rows.shape[1], dtype=rows.dtype).index_add_(0, groups, rows)
    return sums / torch.bincount(groups, minlength=len(names)).to(rows.dtype)[:, None]


def subtask_means(similarity: torch.Tensor, subtasks: list[str]) -> tuple[torch.Tensor, list[str]]:
    """(rows, n_subtasks) mean similarity to each subtask's target examples, and the subtask names (sorted)."""
    names = sorted(set(subtasks))
    groups = torch.tensor([names.index(s) for s in subtasks])
    sums = torch.zeros(similarity.shape[0], len(names), dtype=similarity.dtype).index_add_(1, groups, similarity)
    counts = torch.bincount(groups, minlength=len(names)).to(similarity.dtype)
    return sums / counts, names


SUBTASK_MEAN_AGGREGATES = ("subtask-mean-max", "round-robin")  # they read a row's subtask means only
ROUND_ROBINS = ("round-robin", "example-round-robin")  # they rank whole columns (``round_robin``)


def aggregate(similarity: torch.Tensor, subtasks: list[str], how: Aggregate = "subtask-mean-max",
              means: torch.Tensor | None = None) -> torch.Tensor:
    """One score per pool row from its similarities to every target example.

    ``subtask-mean-max`` (the paper's rule): mean over each subtask's examples, then max over subtasks.
    ``mean``: mean over all target examples. ``max``: max over all target examples. (``round-robin``
    ranks whole columns of subtask means: ``round_robin``.) ``means``: ``subtask_means`` of the same, if
    the caller has them."""
    if how == "mean":
        return similarity.mean(1)
    if how == "max":
        return similarity.max(1).values
    if how != "subtask-mean-max":
        raise ValueError(f"unknown aggregation {how!r}")
    return (subtask_means(similarity, subtasks)[0] if means is None else means).max(1).values


def round_robin(means: np.ndarray, candidates: np.ndarray) -> np.ndarray:
    """Scores that take each subtask's best rows in turn (Ivison et al., 2025): from ``means`` (rows,
    n_subtasks), a row's place is (its best rank over the subtasks, that subtask), so round r holds every
    subtask's r-th row, subtasks in sorted order; a row already placed by another subtask leaves its slot
    empty. Higher is earlier; rows outside ``candidates`` (bool) come last."""
    n, k = means.shape
    place = np.full(n, n * k, dtype=np.int64)
    rows = np.flatnonzero(candidates)
    ranks = np.empty((len(rows), k), dtype=np.int64)
    for s in range(k):
        ranks[top_k(means[rows, s], len(rows)), s] = np.arange(len(rows))
    place[rows] = ranks.min(1) * k + ranks.argmin(1)
    return (n * k - place).astype(np.float32)


def candidate_ranks(scores: np.ndarray, candidates: np.ndarray) -> np.ndarray:
    """(candidates,) int32: each candidate's rank by score (0 = best, ties to the lower index), in row order."""
    ranks = np.empty(int(candidates.sum()), dtype=np.int32)
    ranks[top_k(scores[candidates], len(ranks))] = np.arange(len(ranks), dtype=np.int32)
    return ranks


AGREEMENT_SHARE = 0.05  # the top rows two members' agreement is measured on: the paper's fraction


def rank_tops(ranks: np.ndarray, share: float = AGREEMENT_SHARE) -> tuple[list[np.ndarray], int]:
    """Each member's top ``share`` rows (row order) from its ranks (``member_ranks``), and their number."""
    size = max(1, round(share * ranks.shape[1]))
    return [np.flatnonzero(r < size) for r in ranks], size


def value_tops(values: list[np.ndarray], share: float = AGREEMENT_SHARE) -> tuple[list[np.ndarray], int]:
    """Each member's top ``share`` rows (row order) from its values, higher first: the rows ``top_k``
    would give first (ties to the earlier row), found by a partition, not a sort; and their number."""
    size = max(1, round(share * len(values[0])))
    tops = []
    for v in values:
        threshold = np.partition(v, len(v) - size)[len(v) - size]
        above = np.flatnonzero(v > threshold)
        tops.append(np.union1d(above, np.flatnonzero(v == threshold)[: size - len(above)]))
    return tops, size


def agreeing(tops: list[np.ndarray], size: int) -> tuple[list[int], np.ndarray]:
    """Which members agree, from each member's top rows (``rank_tops``, ``value_tops``: ``size`` each),
    and every pair's overlap: the share of their top rows two members have in common. Kept are the pair
    that shares most and each other member that shares at least half as much with one of them; a member
    that agrees with no other is left out. With no overlap at all, all are kept."""
    m = len(tops)
    overlap = np.zeros((m, m))
    for i, j in itertools.combinations(range(m), 2):
        overlap[i, j] = overlap[j, i] = len(np.intersect1d(tops[i], tops[j], assume_unique=True)) / size
    if m < 3 or overlap.max() == 0:
        return list(range(m)), overlap
    a, b = np.unravel_index(overlap.argmax(), overlap.shape)
    best = overlap[a, b]
    return [i for i in range(m) if i in (a, b) or max(overlap[i, a], overlap[i, b]) >= best / 2], overlap


def member_ranks(scores: list[np.ndarray], candidates: np.ndarray) -> np.ndarray:
    """(methods, candidates) int32: each method's rank (0 = best) of each candidate row, in row order."""
    return np.stack([candidate_ranks(s, candidates) for s in scores])


GATED_FUSES = ("agreement", "zscore")  # rules that first leave out a member no other agrees with (``agreeing``)


def standardized(scores: np.ndarray) -> np.ndarray:
    """float32 z-scores of one method's candidate scores: minus their mean, over their standard deviation
    (both in float64). A method that scores every row alike gives zeros: it cannot place a row."""
    mean, std = scores.mean(dtype=np.float64), scores.std(dtype=np.float64)
    return ((scores - mean) / std if std > 0 else np.zeros(len(scores))).astype(np.float32)


def fuse_ranks(scores: list[np.ndarray], candidates: np.ndarray, how: Fuse = "median", k: int = 60) -> np.ndarray:
    """One score per row from several methods' scores: through each method's ranks (``fuse_member_ranks``),
    or for ``zscore`` their standardized scores (``fuse_standardized``)."""
    if how == "zscore":
        return fuse_standardized([standardized(s[candidates]) for s in scores], candidates)
    return fuse_member_ranks(member_ranks(scores, candidates), candidates, how, k)


FUSE_ROWS = 1 << 20  # candidates fused at a time: float64 work arrays of a few MiB, whatever the pool


def fuse_member_ranks(ranks: np.ndarray, candidates: np.ndarray, how: Fuse = "median", k: int = 60,
                      kept: list[int] | None = None) -> np.ndarray:
    """One score per row from several methods' ranks r (``member_ranks``: 0 = best, one column per candidate).

    ``median``: the median rank, ties broken by the mean rank: a row needs most methods to rank it
    high, so one method's outliers cannot place it. ``agreement``: the median over the members that
    agree (``agreeing``): a member whose top rows the others do not share is left out, so it cannot
    lift its own picks past the others' middle ranks. ``mean``: the mean rank (Borda). ``rrf``:
    reciprocal rank fusion, sum 1 / (k + r + 1) (Cormack et al., 2009). Scores as ``ranked_scores``;
    computed in float64, FUSE_ROWS candidates at a time. ``kept``: the agreeing members, where the
    caller has found them already."""
    if how not in get_args(Fuse):
        raise ValueError(f"unknown rank fusion {how!r}")
    if how == "zscore":
        raise ValueError("zscore fusion reads the members' standardized scores, not ranks: fuse_standardized")
    if how in GATED_FUSES:
        ranks = ranks[agreeing(*rank_tops(ranks))[0] if kept is None else kept]
    n = int(candidates.sum())
    fused = np.empty(n)
    for start in range(0, n, FUSE_ROWS):
        r = ranks[:, start: start + FUSE_ROWS].astype(np.float64)
        if how == "rrf":
            fused[start: start + FUSE_ROWS] = (1.0 / (k + r + 1)).sum(0)
        elif how == "mean":
            fused[start: start + FUSE_ROWS] = -r.mean(0)
        else:  # mean rank / n < 1: it orders rows with equal medians only
            fused[start: start + FUSE_ROWS] = -(np.median(r, 0) + r.mean(0) / n)
    return ranked_scores(fused, candidates)


def fuse_standardized(z: list[np.ndarray], candidates: np.ndarray, kept: list[int] | None = None) -> np.ndarray:
    """``zscore``: one score per row from the sum of the agreeing members' standardized scores ``z``
    (``standardized``, one array per member over the candidates; ``agreeing`` on each member's top rows,
    so no member is ranked whole; Montague & Aslam, 2001): a member whose top rows stand far above its
    other rows weighs more on that target than one whose scores are flat. Scores as ``ranked_scores``.
    ``kept``: the agreeing members, where the caller has found them already."""
    fused = np.zeros(int(candidates.sum()))
    for i in agreeing(*value_tops(z))[0] if kept is None else kept:  # summed in float64, member by member
        fused += z[i]
    return ranked_scores(fused, candidates)


def ranked_scores(fused: np.ndarray, candidates: np.ndarray) -> np.ndarray:
    """float32 scores of all rows from the candidates' fused values: the number of candidates minus the
    row's fused rank (whole numbers, exact in float32 up to 16M rows), higher is better; rows outside
    ``candidates`` score 0."""
    n = len(fused)
    out = np.zeros(len(candidates), np.float32)
    out[np.flatnonzero(candidates)[top_k(fused, n)]] = np.arange(n, 0, -1, dtype=np.float32)
    return out


def relevance_auc(scores: np.ndarray, relevant: np.ndarray) -> float:
    """The probability that a relevant row outscores an irrelevant one, ties counting half (the area
    under the ROC curve): 1 ranks every relevant row first, 0.5 is chance, below 0.5 is worse."""
    scores, relevant = np.asarray(scores, np.float64), np.asarray(relevant, bool)
    n_rel, n_other = int(relevant.sum()), int((~relevant).sum())
    if not n_rel or not n_other:
        raise ValueError("an AUC needs relevant and irrelevant rows")
    order = np.argsort(scores, kind="stable")
    ranks = np.empty(len(scores))
    ranks[order] = np.arange(1, len(scores) + 1)
    values, first, counts = np.unique(scores[order], return_index=True, return_counts=True)
    average = first + (counts + 1) / 2  # ties share the mean of their ranks
    ranks[order] = np.repeat(average, counts)
    return float((ranks[relevant].sum() - n_rel * (n_rel + 1) / 2) / (n_rel * n_other))


def top_k(scores: np.ndarray, k: int) -> np.ndarray:
    """Indices of the k highest scores, best first; ties go to the lower index (earlier in the pool).
    NaN is not a score: callers must not pass it."""
    if np.isnan(scores).any():
        raise ValueError("NaN in scores")
    return np.argsort(-scores, kind="stable")[:k]  # stable: equal scores keep their pool order
