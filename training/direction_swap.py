"""Direction swap and removal in embedding space (ELSA section 5.4, appendix A.14, Tables A.T.11-12).

1. Text prototypes of the four directions: "A sound coming from the <direction>" (the zero-shot
   direction prompts).
2. A 4-class direction classifier, a 2-layer MLP (512 → 64 → 4, 33k parameters), trained on the
   train split's spatial audio embeddings with their measured direction words.
3. Every test sample the classifier gets right is moved: e' = normalise(e − p_from + p_to) for
   each other direction (swap), or e' = normalise(e − p_from) (removal). θ is the share of moved
   embeddings classified as the new direction (swap) or still as the old one (removal; the paper
   finds 0 %). Renormalising keeps e' on the sphere the classifier was trained on; retrieval is
   cosine, so it does not change any rank.
4. Semantics kept: R@10 of audio→text retrieval against the test set's non-spatial (original)
   captions, before and after the move; ΔR@10 = after − before. A caption is relevant to every
   spatial augmentation of its clip.
"""

from __future__ import annotations

import numpy as np
from pydantic import BaseModel, ConfigDict, Field

from training.doa_probe import ProbeConfig, fit_mlp
from training.metrics import (
    CountMismatchError,
    EmptyEvaluationSetError,
    audio_to_text_positions,
    check_embeddings,
    recall_at_k,
)

DIRECTIONS: tuple[str, ...] = ("left", "front", "right", "back")  # Table A.T.11's row order


class SwapRow(BaseModel):
    """One original direction: Table A.T.11 (swap, averaged over the three targets) and A.T.12 (removal)."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    direction: str
    excluded: int = Field(description="test samples of this direction the classifier got wrong (∉)")
    n: int = Field(description="samples moved (N)")
    r_at_10: float | None = Field(description="R@10 against the non-spatial captions before moving")
    swap_accuracy: float | None = Field(description="θ: moved samples classified as the new direction")
    swap_delta_r_at_10: float | None
    swap_to: dict[str, float | None] = Field(default_factory=dict, description="θ per target direction")
    removal_accuracy: float | None = Field(description="θ after removal: still classified as the old one")
    removal_delta_r_at_10: float | None


class SwapResult(BaseModel):
    """The experiment: classifier accuracy and one row per direction."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    classifier_params: int
    n_train: int
    n_test: int
    classifier_accuracy: float
    swap_accuracy: float | None = Field(description="over every moved sample and target")
    swap_delta_r_at_10: float | None
    removal_accuracy: float | None
    removal_delta_r_at_10: float | None
    rows: list[SwapRow]


def _ce_loss(pred, target):  # torch tensors
    import torch

    return torch.nn.functional.cross_entropy(pred, target)


def _unit(x: np.ndarray) -> np.ndarray:
    return x / np.maximum(np.linalg.norm(x, axis=1, keepdims=True), 1e-12)


def _mean(xs: list[float]) -> float | None:
    return float(np.mean(xs)) if xs else None


def direction_swap(
    train_emb: np.ndarray,
    train_words: np.ndarray,
    test_emb: np.ndarray,
    test_words: np.ndarray,
    prototypes: dict[str, np.ndarray],
    caption_emb: np.ndarray,
    relevant: np.ndarray,
    cfg: ProbeConfig | None = None,
) -> SwapResult:
    """Run A.14. ``*_words``: direction word or None per row; ``prototypes``: direction → text
    embedding; ``caption_emb``: the non-spatial captions; ``relevant``: (n_test, max_gt) indices of
    each test row's captions in ``caption_emb``, padded with -1."""
    cfg = cfg or ProbeConfig()
    cls = {d: i for i, d in enumerate(DIRECTIONS)}
    missing = [d for d in DIRECTIONS if d not in prototypes]
    if missing:
        raise CountMismatchError(f"no text prototype for direction(s) {missing}")
    tr_words = np.asarray(train_words, dtype=object)
    te_words = np.asarray(test_words, dtype=object)
    tr_keep = np.array([w in cls for w in tr_words], dtype=bool)
    te_keep = np.array([w in cls for w in te_words], dtype=bool)
    if not tr_keep.any():
        raise EmptyEvaluationSetError("no train sample with a direction word to fit the direction classifier")
    if not te_keep.any():
        raise EmptyEvaluationSetError("no test sample with a direction word for the swap experiment")
    te_all = check_embeddings(test_emb, "test_emb")
    rel_all = np.asarray(relevant, dtype=np.int64)
    if rel_all.shape[0] != te_all.shape[0] or te_words.shape[0] != te_all.shape[0]:
        raise CountMismatchError(
            f"relevant has {rel_all.shape[0]} rows and test_words {te_words.shape[0]} "
            f"for {te_all.shape[0]} test embeddings"
        )
    tr = check_embeddings(train_emb, "train_emb")
    if tr_words.shape[0] != tr.shape[0]:
        raise CountMismatchError(f"{tr_words.shape[0]} train words for {tr.shape[0]} train embeddings")
    y_tr = np.array([cls[w] for w in tr_words[tr_keep]], dtype=np.int64)
    clf = fit_mlp(tr[tr_keep], y_tr, len(DIRECTIONS), _ce_loss, cfg)
    te, rel = te_all[te_keep], rel_all[te_keep]
    y_te = np.array([cls[w] for w in te_words[te_keep]], dtype=np.int64)
    pred = clf(te).argmax(axis=1)
    ok = pred == y_te
    caps = check_embeddings(caption_emb, "caption_emb")
    proto = check_embeddings(np.stack([prototypes[d] for d in DIRECTIONS]), "prototypes")

    def r10(e: np.ndarray, r: np.ndarray) -> float:
        return recall_at_k(audio_to_text_positions(e, caps, r)[:, 0], 10)

    rows: list[SwapRow] = []
    all_swap, all_swap_d, all_rem, all_rem_d = [], [], [], []
    for d, i in cls.items():
        sel = ok & (y_te == i)
        excluded = int(((y_te == i) & ~ok).sum())
        if not sel.any():
            rows.append(
                SwapRow(
                    direction=d,
                    excluded=excluded,
                    n=0,
                    r_at_10=None,
                    swap_accuracy=None,
                    swap_delta_r_at_10=None,
                    removal_accuracy=None,
                    removal_delta_r_at_10=None,
                )
            )
            continue
        e, r = te[sel], rel[sel]
        base = r10(e, r)
        to: dict[str, float | None] = {}
        swap_acc, swap_d = [], []
        for d2, j in cls.items():
            if j == i:
                continue
            moved = _unit(e - proto[i] + proto[j])
            acc = float(np.mean(clf(moved).argmax(axis=1) == j))
            to[d2] = acc
            swap_acc.append(acc)
            swap_d.append(r10(moved, r) - base)
            all_swap.append((acc, int(sel.sum())))
            all_swap_d.append((swap_d[-1], int(sel.sum())))
        removed = _unit(e - proto[i])
        rem_acc = float(np.mean(clf(removed).argmax(axis=1) == i))
        rem_d = r10(removed, r) - base
        all_rem.append((rem_acc, int(sel.sum())))
        all_rem_d.append((rem_d, int(sel.sum())))
        rows.append(
            SwapRow(
                direction=d,
                excluded=excluded,
                n=int(sel.sum()),
                r_at_10=base,
                swap_accuracy=_mean(swap_acc),
                swap_delta_r_at_10=_mean(swap_d),
                swap_to=to,
                removal_accuracy=rem_acc,
                removal_delta_r_at_10=rem_d,
            )
        )

    def weighted(pairs: list[tuple[float, int]]) -> float | None:
        w = sum(n for _, n in pairs)
        return float(sum(v * n for v, n in pairs) / w) if w else None

    return SwapResult(
        classifier_params=clf.n_params,
        n_train=int(tr_keep.sum()),
        n_test=int(te_keep.sum()),
        classifier_accuracy=float(np.mean(ok)),
        swap_accuracy=weighted(all_swap),
        swap_delta_r_at_10=weighted(all_swap_d),
        removal_accuracy=weighted(all_rem),
        removal_delta_r_at_10=weighted(all_rem_d),
        rows=rows,
    )
