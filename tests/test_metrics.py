"""Retrieval metrics: hand-computed cases and exact agreement with a plain reference implementation.

Embeddings are small integers, so every dot product is exact in float32 and float64 alike and
ties are real ties; the reference sorts Python lists, the implementation counts in numpy blocks.
"""

from __future__ import annotations

import math

import numpy as np
import pytest

from tasks.errors import SpatialAudioCapsError
from training.metrics import (
    CountMismatchError,
    EmptyEvaluationSetError,
    NonFiniteEmbeddingError,
    retrieval_metrics,
    retrieval_ranks,
)

KEYS = ["t2a_R@1", "t2a_R@5", "t2a_R@10", "t2a_mAP@10", "a2t_R@1", "a2t_R@5", "a2t_R@10", "a2t_mAP@10"]


def reference(audio: np.ndarray, text: np.ndarray, idx: list[int]) -> tuple[dict[str, float], list, list]:
    """Sort every candidate list by (-score, is_ground_truth, index): ties go against the truth."""
    a = np.asarray(audio, dtype=np.float64)
    t = np.asarray(text, dtype=np.float64)
    n_a, n_t = len(a), len(t)
    score = [[float(a[i] @ t[j]) for j in range(n_t)] for i in range(n_a)]
    t2a = []
    for j in range(n_t):
        order = sorted(range(n_a), key=lambda i, j=j: (-score[i][j], i == idx[j], i))
        t2a.append(order.index(idx[j]))
    a2t = []
    for i in range(n_a):
        order = sorted(range(n_t), key=lambda j, i=i: (-score[i][j], idx[j] == i, j))
        a2t.append([p for p, j in enumerate(order) if idx[j] == i])  # ascending by construction
    out = {}
    for k in (1, 5, 10):
        out[f"t2a_R@{k}"] = math.fsum(1.0 if r < k else 0.0 for r in t2a) / n_t
    out["t2a_mAP@10"] = math.fsum(1.0 / (r + 1) if r < 10 else 0.0 for r in t2a) / n_t
    for k in (1, 5, 10):
        out[f"a2t_R@{k}"] = math.fsum(1.0 if min(p) < k else 0.0 for p in a2t) / n_a
    aps = []
    for p in a2t:
        hits = [m / (q + 1) for m, q in enumerate(p, start=1) if q < 10]
        aps.append(math.fsum(hits) / min(len(p), 10))
    out["a2t_mAP@10"] = math.fsum(aps) / n_a
    return out, t2a, a2t


def check_exact(audio, text, idx, **kw) -> dict[str, float]:
    got = retrieval_metrics(np.asarray(audio), np.asarray(text), np.asarray(idx), **kw)
    ref, t2a, a2t = reference(audio, text, list(idx))
    assert list(got) == KEYS
    assert got == ref  # exact, not approximate
    r = retrieval_ranks(np.asarray(audio), np.asarray(text), np.asarray(idx), **kw)
    assert r.t2a.tolist() == t2a
    assert [row[row >= 0].tolist() for row in r.a2t] == a2t
    return got


def test_perfect_ranking_scores_one():
    audio = np.eye(4, dtype=np.float32)
    text = np.repeat(np.eye(4), 2, axis=0)  # two captions per clip, each pointing at its clip
    got = check_exact(audio, text, [0, 0, 1, 1, 2, 2, 3, 3])
    assert all(v == 1.0 for v in got.values())


def test_reversed_ranking_scores_zero():
    """Every ground truth is the least similar candidate: rank n-1 both ways, every metric 0."""
    n = 12
    audio = np.eye(n, dtype=np.float32)
    text = -np.eye(n, dtype=np.float32)
    got = check_exact(audio, text, list(range(n)))
    assert all(v == 0.0 for v in got.values())


def test_ranks_along_a_line():
    """Clip i scores -i for every caption; caption j belongs to clip 11 - j, so its rank is 11 - j."""
    n = 12
    audio = np.stack([np.array([1.0, i], np.float32) for i in range(n)])
    text = np.stack([np.array([0.0, -1.0], np.float32)] * n)
    got = check_exact(audio, text, list(range(n))[::-1])
    assert got["t2a_R@1"] == pytest.approx(1 / 12)
    assert got["t2a_R@5"] == pytest.approx(5 / 12)
    assert got["t2a_R@10"] == pytest.approx(10 / 12)
    assert got["t2a_mAP@10"] == pytest.approx(sum(1 / (r + 1) for r in range(10)) / 12)


def test_several_captions_per_clip_by_hand():
    # 3 clips, 5 captions: clip 0 owns captions 0, 1, 2; clip 1 owns 3; clip 2 owns 4.
    audio = np.array([[1, 0, 0], [0, 1, 0], [0, 0, 1]], np.float32)
    text = np.array(
        [
            [3, 0, 0],  # c0 -> clip 0 best
            [0, 2, 0],  # c1 (clip 0) -> clip 1 best, clip 0 and 2 tie at 0: clip 0 ranks last (tie rule)
            [1, 0, 2],  # c2 (clip 0) -> clip 2, then clip 0
            [0, 1, 0],  # c3 (clip 1) -> clip 1
            [0, 5, 4],  # c4 (clip 2) -> clip 1, then clip 2
        ],
        np.float32,
    )
    idx = [0, 0, 0, 1, 2]
    got = check_exact(audio, text, idx)
    # t2a ranks: c0 0, c1 2, c2 1, c3 0, c4 1
    assert got["t2a_R@1"] == pytest.approx(2 / 5)
    assert got["t2a_R@5"] == 1.0
    assert got["t2a_mAP@10"] == pytest.approx((1 + 1 / 3 + 1 / 2 + 1 + 1 / 2) / 5)
    # a2t, clip 0 scores: c0 3, c1 0, c2 1, c3 0, c4 0 -> order c0, c2, c3, c4, c1 (c1 ties, goes last)
    #   positions of its captions sorted: [0, 1, 4] -> AP = (1/1 + 2/2 + 3/5) / 3
    # clip 1 scores: c0 0, c1 2, c2 0, c3 1, c4 5 -> c4, c1, c3 ... its caption c3 at 2 -> AP 1/3
    # clip 2 scores: c0 0, c1 0, c2 2, c3 0, c4 4 -> c4 first -> AP 1
    assert got["a2t_R@1"] == pytest.approx(2 / 3)
    assert got["a2t_mAP@10"] == pytest.approx(((1 + 1 + 3 / 5) / 3 + 1 / 3 + 1) / 3)


def test_map_sorts_ground_truth_positions():
    """LAION-CLAP pairs the m-th caption (caption order) with precision m/(rank+1); we sort first."""
    audio = np.array([[1, 0], [0, 1]], np.float32)
    # clip 0 owns captions 0 and 1; caption 0 ranks 2nd for clip 0, caption 1 ranks 1st.
    text = np.array([[2, 3], [5, 0], [0, 4]], np.float32)
    # clip 0 scores: c0 2, c1 5, c2 0 -> c1 (pos 0), c0 (pos 1): sorted positions [0, 1] -> AP 1
    got = check_exact(audio, text, [0, 0, 1])
    ap0_sorted = (1 / 1 + 2 / 2) / 2
    ap0_laion = (1 / (1 + 1) + 2 / (0 + 1)) / 2  # unsorted [1, 0]: 1.25, above 1
    # clip 1 scores: c0 3, c1 0, c2 4 -> its caption c2 first: AP 1
    assert got["a2t_mAP@10"] == pytest.approx((ap0_sorted + 1.0) / 2) == 1.0
    assert ap0_laion > 1.0  # the unsorted variant can even exceed 1


def test_all_tied_scores_get_the_worst_ranks():
    audio = np.ones((4, 3), np.float32)
    text = np.ones((8, 3), np.float32)
    got = check_exact(audio, text, [0, 0, 1, 1, 2, 2, 3, 3])
    assert got["t2a_R@1"] == 0.0 and got["a2t_R@1"] == 0.0
    # each clip's two captions sit behind the 6 others: positions 6, 7
    assert got["a2t_mAP@10"] == pytest.approx((1 / 7 + 2 / 8) / 2)


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_random_integer_embeddings_with_ties_agree_exactly_in_blocks(seed):
    rng = np.random.default_rng(seed)
    n_a = 23
    n_per = rng.integers(1, 6, n_a)  # 1-5 captions per clip, as Clotho / AudioCaps
    idx = np.repeat(np.arange(n_a), n_per)
    rng.shuffle(idx)
    audio = rng.integers(-2, 3, (n_a, 4)).astype(np.float32)  # few values: many exact ties
    text = rng.integers(-2, 3, (idx.size, 4)).astype(np.float32)
    whole = check_exact(audio, text, idx)
    tiny_blocks = check_exact(audio, text, idx, max_block_mb=1e-5)  # one row per block
    assert whole == tiny_blocks


def test_bad_input_is_a_typed_error():
    a = np.eye(3, dtype=np.float32)
    t = np.eye(3, dtype=np.float32)
    bad = t.copy()
    bad[1, 2] = np.nan
    with pytest.raises(NonFiniteEmbeddingError, match="text_emb"):
        retrieval_metrics(a, bad, np.arange(3))
    with pytest.raises(NonFiniteEmbeddingError, match="audio_emb"):
        retrieval_metrics(np.where(a == 1, np.inf, a), t, np.arange(3))
    with pytest.raises(CountMismatchError, match="one entry per caption"):
        retrieval_metrics(a, t, np.arange(2))
    with pytest.raises(CountMismatchError, match="-d"):
        retrieval_metrics(a, np.eye(3, 4, dtype=np.float32), np.arange(3))
    with pytest.raises(CountMismatchError, match="no caption"):
        retrieval_metrics(a, t[:2], np.array([0, 0]))
    with pytest.raises(CountMismatchError, match=r"\[0, 3\)"):
        retrieval_metrics(a, t, np.array([0, 1, 3]))
    with pytest.raises(EmptyEvaluationSetError):
        retrieval_metrics(np.zeros((0, 3), np.float32), t, np.arange(3))
    with pytest.raises(EmptyEvaluationSetError):
        retrieval_metrics(a, np.zeros((0, 3), np.float32), np.zeros(0, np.int64))
    assert issubclass(NonFiniteEmbeddingError, SpatialAudioCapsError)
