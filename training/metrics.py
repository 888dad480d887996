"""Retrieval metrics (LAION-CLAP's protocol) as plain numpy functions, with bounded memory.

Protocol (LAION-CLAP ``evaluate_clotho_audiocaps``, adapted from Mei et al.'s audio-text retrieval):

- text→audio: every caption is its own query (the 5 captions of a Clotho clip are 5 queries),
  ranked against all audio clips; R@k = share of queries whose clip is in the top k;
  mAP@10 = mean of 1/(rank+1) when rank < 10, else 0 (one relevant item per query).
- audio→text: each clip ranks every caption; R@k uses the best-ranked of its ground-truth
  captions; mAP@10 averages, per clip, precision at each ground-truth caption ranked < 10 over
  min(n_gt, 10) (LAION-CLAP divides by 5 = n_gt for Clotho: the same for n_gt <= 10).

One deliberate difference: the ground-truth positions are SORTED before the m-th one found gets
precision m / (position + 1). LAION-CLAP's code takes them in caption order
(``torch.where(stack([ranking]*5) == gt.view(-1, 1))[1]`` is ordered by caption, not by rank),
which can pair the m-th caption with the wrong precision and misstate a2t mAP@10.

Ties are broken against the ground truth: among equal scores, non-matching items rank first
(and matching ones among themselves in index order). A degenerate model that scores everything
equally therefore gets the worst ranks, not the best, and the result does not depend on how an
argsort happens to order equal values.

Scores are dot products of the rows given; ElsaModel.encode_audio / encode_text return unit-norm
rows, so they are cosine similarities. The similarity matrix is never held whole: each direction
is computed in row blocks of at most ``max_block_mb``, and every comparison uses values from
the same block, so a score is always compared with itself bit for bit.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np

from tasks.errors import SpatialAudioCapsError

RETRIEVAL_KS: tuple[int, ...] = (1, 5, 10)
MAP_K = 10
DEFAULT_BLOCK_MB = 256.0


class EvaluationError(SpatialAudioCapsError):
    """Input an evaluation cannot use."""


class NonFiniteEmbeddingError(EvaluationError):
    """An embedding holds NaN or inf (a diverged model or a corrupt input)."""


class CountMismatchError(EvaluationError):
    """Arrays that must line up do not (rows, dimensions, labels, caption indices)."""


class EmptyEvaluationSetError(EvaluationError):
    """Nothing to evaluate: no samples, no captions, or no sample with the needed labels."""


def check_embeddings(x: np.ndarray, name: str) -> np.ndarray:
    """A non-empty, finite (n, d) float32 array, or a typed error naming ``name``."""
    a = np.asarray(x)
    if a.ndim != 2:
        raise CountMismatchError(f"{name} must be a 2-D (n, dim) array, got shape {a.shape}")
    if a.shape[0] == 0 or a.shape[1] == 0:
        raise EmptyEvaluationSetError(f"{name} is empty (shape {a.shape})")
    if not np.issubdtype(a.dtype, np.number):
        raise EvaluationError(f"{name} must be numeric, got {a.dtype}")
    a = a.astype(np.float32, copy=False)
    bad = ~np.isfinite(a).all(axis=1)
    if bad.any():
        rows = np.flatnonzero(bad)
        raise NonFiniteEmbeddingError(
            f"{name} has {rows.size} row(s) with NaN/inf (first: {rows[:5].tolist()})"
        )
    return a


def _rows_per_block(n_cols: int, max_block_mb: float) -> int:
    return max(1, int(max_block_mb * 2**20 // (4 * max(n_cols, 1))))


@dataclass(frozen=True)
class RetrievalRanks:
    """0-based ranks. t2a: (n_text,) rank of each caption's clip. a2t: (n_audio, max_gt) sorted
    positions of each clip's ground-truth captions, padded with -1; n_gt: captions per clip."""

    t2a: np.ndarray
    a2t: np.ndarray
    n_gt: np.ndarray


def _validate(
    audio_emb: np.ndarray, text_emb: np.ndarray, audio_index_of_text: np.ndarray
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    a = check_embeddings(audio_emb, "audio_emb")
    t = check_embeddings(text_emb, "text_emb")
    if a.shape[1] != t.shape[1]:
        raise CountMismatchError(f"audio_emb is {a.shape[1]}-d but text_emb is {t.shape[1]}-d")
    idx = np.asarray(audio_index_of_text)
    if idx.ndim != 1 or idx.shape[0] != t.shape[0]:
        raise CountMismatchError(
            f"audio_index_of_text must have one entry per caption ({t.shape[0]}), got shape {idx.shape}"
        )
    if not np.issubdtype(idx.dtype, np.integer):
        raise CountMismatchError(f"audio_index_of_text must hold integers, got {idx.dtype}")
    idx = idx.astype(np.int64)
    if idx.min() < 0 or idx.max() >= a.shape[0]:
        raise CountMismatchError(
            f"audio_index_of_text must lie in [0, {a.shape[0]}), got [{idx.min()}, {idx.max()}]"
        )
    n_gt = np.bincount(idx, minlength=a.shape[0])
    if (n_gt == 0).any():
        missing = np.flatnonzero(n_gt == 0)
        raise CountMismatchError(
            f"{missing.size} audio clip(s) have no caption (first: {missing[:5].tolist()}); "
            "every clip needs at least one ground-truth caption"
        )
    return a, t, idx


def _t2a_ranks(a: np.ndarray, t: np.ndarray, idx: np.ndarray, max_block_mb: float) -> np.ndarray:
    ranks = np.empty(t.shape[0], dtype=np.int64)
    step = _rows_per_block(a.shape[0], max_block_mb)
    for i0 in range(0, t.shape[0], step):
        i1 = min(i0 + step, t.shape[0])
        s = t[i0:i1] @ a.T  # (b, n_audio)
        gt = s[np.arange(i1 - i0), idx[i0:i1]][:, None]
        # strictly better, plus other clips tied with the ground truth (ties count against it)
        ranks[i0:i1] = (s > gt).sum(axis=1) + (s == gt).sum(axis=1) - 1
        del s  # before the next block is allocated: one block alive at a time
    return ranks


def caption_table(idx: np.ndarray, n_audio: int) -> np.ndarray:
    """(n_audio, max_gt) caption indices of each clip in caption order, padded with -1."""
    n_gt = np.bincount(idx, minlength=n_audio)
    order = np.argsort(idx, kind="stable")
    starts = np.concatenate([[0], np.cumsum(n_gt)[:-1]])
    slot = np.arange(idx.size) - np.repeat(starts, n_gt)
    table = np.full((n_audio, max(int(n_gt.max()), 1)), -1, dtype=np.int64)
    table[idx[order], slot] = order
    return table


def _a2t_positions(a: np.ndarray, t: np.ndarray, gt_idx: np.ndarray, max_block_mb: float) -> np.ndarray:
    n_a, max_gt = gt_idx.shape
    pos = np.full((n_a, max_gt), -1, dtype=np.int64)
    step = _rows_per_block(t.shape[0], max_block_mb)
    for i0 in range(0, n_a, step):
        i1 = min(i0 + step, n_a)
        s = a[i0:i1] @ t.T  # (b, n_text)
        g_idx = gt_idx[i0:i1]
        valid = g_idx >= 0
        g = np.where(valid, s[np.arange(i1 - i0)[:, None], np.maximum(g_idx, 0)], np.nan)
        greater = np.zeros(g.shape, dtype=np.int64)
        equal = np.zeros(g.shape, dtype=np.int64)
        for k in range(max_gt):
            gk = g[:, k : k + 1]
            greater[:, k] = (s > gk).sum(axis=1)
            equal[:, k] = (s == gk).sum(axis=1)
        same = (g[:, :, None] == g[:, None, :]) & valid[:, None, :]  # ground truths tied with each other
        rel_equal = same.sum(axis=2)
        rel_before = np.tril(np.ones((max_gt, max_gt), dtype=bool), k=-1)[None] & same
        p = greater + (equal - rel_equal) + rel_before.sum(axis=2)
        p = np.where(valid, p, np.iinfo(np.int64).max)
        p.sort(axis=1)
        pos[i0:i1] = np.where(p == np.iinfo(np.int64).max, -1, p)
        del s
    return pos


def retrieval_ranks(
    audio_emb: np.ndarray,
    text_emb: np.ndarray,
    audio_index_of_text: np.ndarray,
    *,
    max_block_mb: float = DEFAULT_BLOCK_MB,
) -> RetrievalRanks:
    """Both directions' 0-based ranks (see the module doc for the tie rule); validates the input."""
    a, t, idx = _validate(audio_emb, text_emb, audio_index_of_text)
    n_gt = np.bincount(idx, minlength=a.shape[0])
    return RetrievalRanks(
        t2a=_t2a_ranks(a, t, idx, max_block_mb),
        a2t=_a2t_positions(a, t, caption_table(idx, a.shape[0]), max_block_mb),
        n_gt=n_gt,
    )


def audio_to_text_positions(
    audio_emb: np.ndarray,
    text_emb: np.ndarray,
    relevant: np.ndarray,
    *,
    max_block_mb: float = DEFAULT_BLOCK_MB,
) -> np.ndarray:
    """Sorted 0-based positions of each clip's relevant captions, (n_audio, max_gt) padded with -1.

    ``relevant`` is (n_audio, max_gt) caption indices padded with -1; unlike
    ``audio_index_of_text`` a caption may be relevant to several clips (e.g. the original caption
    shared by every spatial augmentation of a clip).
    """
    a = check_embeddings(audio_emb, "audio_emb")
    t = check_embeddings(text_emb, "text_emb")
    if a.shape[1] != t.shape[1]:
        raise CountMismatchError(f"audio_emb is {a.shape[1]}-d but text_emb is {t.shape[1]}-d")
    rel = np.asarray(relevant, dtype=np.int64)
    if rel.ndim != 2 or rel.shape[0] != a.shape[0]:
        raise CountMismatchError(f"relevant must be (n_audio={a.shape[0]}, max_gt), got {rel.shape}")
    if rel.max() >= t.shape[0] or ((rel >= 0).sum(axis=1) == 0).any():
        raise CountMismatchError("relevant must name, per clip, at least one caption index below n_text")
    return _a2t_positions(a, t, rel, max_block_mb)


def exact_mean(values: np.ndarray) -> float:
    """Mean with a correctly rounded sum (math.fsum): independent of summation order, so two
    implementations that agree on every term agree on the mean bit for bit."""
    v = np.asarray(values, dtype=np.float64).ravel()
    return math.fsum(v.tolist()) / v.size


def metrics_from_ranks(ranks: RetrievalRanks) -> dict[str, float]:
    """R@1/5/10 and mAP@10 of both directions, as fractions in [0, 1]."""
    out: dict[str, float] = {}
    r = ranks.t2a
    for k in RETRIEVAL_KS:
        out[f"t2a_R@{k}"] = exact_mean(r < k)
    out[f"t2a_mAP@{MAP_K}"] = exact_mean(np.where(r < MAP_K, 1.0 / (r + 1.0), 0.0))
    p = ranks.a2t  # sorted ascending per row, -1 padding at the end
    best = p[:, 0]
    for k in RETRIEVAL_KS:
        out[f"a2t_R@{k}"] = exact_mean(best < k)
    hit = (p >= 0) & (p < MAP_K)
    m = np.arange(1, p.shape[1] + 1)[None, :]  # the m-th ground truth found (positions are sorted)
    prec = np.where(hit, m / (np.maximum(p, 0) + 1.0), 0.0)
    ap = [math.fsum(row) / min(int(n), MAP_K) for row, n in zip(prec.tolist(), ranks.n_gt, strict=True)]
    out[f"a2t_mAP@{MAP_K}"] = exact_mean(np.asarray(ap))
    return out


def retrieval_metrics(
    audio_emb: np.ndarray,
    text_emb: np.ndarray,
    audio_index_of_text: np.ndarray,
    *,
    max_block_mb: float = DEFAULT_BLOCK_MB,
) -> dict[str, float]:
    """t2a/a2t R@1, R@5, R@10 and mAP@10 (fractions in [0, 1]) under LAION-CLAP's protocol.

    ``audio_emb`` (n_audio, d), ``text_emb`` (n_text, d), ``audio_index_of_text`` (n_text,) the
    clip each caption belongs to; every clip needs at least one caption. Raises
    NonFiniteEmbeddingError, CountMismatchError or EmptyEvaluationSetError on bad input.
    """
    return metrics_from_ranks(
        retrieval_ranks(audio_emb, text_emb, audio_index_of_text, max_block_mb=max_block_mb)
    )


def recall_at_k(ranks: np.ndarray, k: int) -> float:
    """Share of 0-based ranks below k (ranks of -1 mean 'absent' and count as misses)."""
    r = np.asarray(ranks)
    return float(np.mean((r >= 0) & (r < k))) if r.size else float("nan")
