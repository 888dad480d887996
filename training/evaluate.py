"""ELSA evaluation on shards: every number of the paper's Tables 1-3, A.T.6-A.T.12 and Fig. 2.

``evaluate(cfg) -> Report`` reads a checkpoint and a shard root and computes, for the model and
for its semantic-only baseline (the spatial branch's output zeroed, everything else unchanged):

- retrieval (training.metrics), per source dataset, on three sets: spatial audio with spatial
  captions, one spatial augmentation per clip (the "small" set, comparable across datasets), and
  the non-spatial originals with their original captions;
- zero-shot spatial attribute classification (training.zero_shot, Table 2);
- the DOA probe (training.doa_probe, Table 1 / A.T.6), fit on train-split embeddings;
- direction swap and removal (training.direction_swap, A.14);
- the DOA probe on real recordings (training.real_recordings), if any are configured;
- a 2-D projection of test embeddings coloured by direction (Fig. 2), fit on the train split;
- on scene samples (records with ``sources``), frame-wise localisation where exactly one source
  is active (training.scene_eval): the intensity-vector DOA and the model's direction head.

The pieces that read a sample's direction or distance label (zero-shot, the DOA probe, the swap,
the projection) take only samples whose sound comes from one place (training.data
.has_source_target): a scene with several sources or a moving one has no such label.

It writes nothing: ``training.report.write_report`` turns the Report into files. Audio is cut
deterministically for evaluation (the first ``clip_s`` seconds, or repeat-padded), so two runs
of the same checkpoint give the same numbers.
"""

from __future__ import annotations

import json
import logging
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, Literal

import numpy as np
from pydantic import BaseModel, ConfigDict, Field

from schemas.shards import RejectRow
from tasks.shard_reader import read_shard
from tasks.shard_writer import SampleRejected, ShardSample
from tasks.storage import StorageError
from training.direction_swap import DIRECTIONS, direction_swap
from training.doa_probe import (
    ProbeConfig,
    angular_errors_deg,
    directions_from_angles,
    summarise,
    train_doa_probe,
)
from training.metrics import EmptyEvaluationSetError, EvaluationError, check_embeddings, retrieval_metrics
from training.real_recordings import Normalisation, RealKind, load_real_set
from training.report import Projection, Report, RetrievalResult, RowResult
from training.scene_eval import SceneFrameCollector, SceneFrameConfig
from training.zero_shot import ZeroShotConfig, prompts, true_classes, zero_shot_all

log = logging.getLogger(__name__)

ROWS = ("elsa", "semantic_only")
LABEL_KEYS = ("azimuth_deg", "elevation_deg", "distance_m", "floor_area_m2", "t30_s")


class RealSetConfig(BaseModel):
    """A real-recording set for the DOA probe: one recording + label file, or directories of both."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    name: str
    kind: RealKind
    audio: str
    labels: str
    normalisation: Normalisation | None = Field(
        None, description="default: n3d for tut2018, sn3d for starss23"
    )
    isolated: bool = Field(True, description="keep only the parts of events that overlap no other event")
    max_segments: int | None = Field(None, ge=1)


class EvaluationConfig(BaseModel):
    """Everything one evaluation needs; the Report records it."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    checkpoint: str = Field(description="a run directory (its latest checkpoint) or a checkpoint directory")
    shards: str = Field(description="shard root, local or s3://: {root}/{split}/{split}-NNNNNN.tar")
    test_split: str = "test"
    train_split: str = Field("train", description="embeddings the probes and the projection are fit on")
    probes: bool = Field(True, description="DOA probe, direction swap and projection (need the train split)")
    baseline: bool = Field(True, description="also evaluate with the spatial branch zeroed")
    max_test_samples: int | None = Field(None, ge=1)
    max_train_samples: int | None = Field(4000, ge=1, description="spatial train samples embedded for probes")
    batch_size: int = Field(16, ge=1)
    device: Literal["auto", "cpu", "cuda"] = "auto"
    max_block_mb: float = Field(256.0, gt=0, description="memory bound of one similarity block")
    projection: Literal["auto", "umap", "pca"] = Field(
        "auto", description="auto: UMAP if installed, else PCA"
    )
    zero_shot: ZeroShotConfig = ZeroShotConfig()
    probe: ProbeConfig = ProbeConfig()
    real: list[RealSetConfig] = Field(default_factory=list)
    scenes: SceneFrameConfig = SceneFrameConfig()
    seed: int = 0


# --------------------------------------------------------------------------------------------
# reading shards


@dataclass
class SplitData:
    """The samples of one split that were read, their labels and every row's audio embeddings."""

    keys: list[str] = field(default_factory=list)
    dataset: list[str] = field(default_factory=list)
    clip_id: list[str] = field(default_factory=list)
    aug: list[int] = field(default_factory=list)
    spatial: list[bool] = field(default_factory=list)
    source_target: list[bool] = field(default_factory=list)
    text: list[list[str]] = field(default_factory=list)
    original_text: list[list[str]] = field(default_factory=list)
    labels: dict[str, list[float]] = field(default_factory=lambda: {k: [] for k in LABEL_KEYS})
    emb: dict[str, np.ndarray] = field(default_factory=dict)
    skipped: int = 0

    def __len__(self) -> int:
        return len(self.keys)

    def label(self, name: str) -> np.ndarray:
        return np.asarray(self.labels[name], dtype=np.float64)

    @property
    def is_spatial(self) -> np.ndarray:
        return np.asarray(self.spatial, dtype=bool)

    @property
    def has_target(self) -> np.ndarray:
        """Rows whose direction and distance labels hold (training.data.has_source_target)."""
        return np.asarray(self.source_target, dtype=bool)


def iter_split(root: str, split: str, shuffle_seed: int | None = None) -> Iterator[ShardSample | RejectRow]:
    """Every sample of a split, shard by shard, through tasks.shard_reader (local or s3://), or the
    RejectRow of one that cannot be read. ``shuffle_seed`` visits the shards in a seeded random
    order (for a capped, less biased train subset)."""
    from training.data import DataError, list_shards

    try:
        urls = list_shards(root, split)
    except DataError as e:
        raise EmptyEvaluationSetError(f"split {split!r} of {root} has no shards: {e}") from e
    if shuffle_seed is not None:
        urls = [urls[i] for i in np.random.default_rng(shuffle_seed).permutation(len(urls))]
    for url in urls:
        try:
            yield from read_shard(url, decode=False)
        except (OSError, StorageError) as e:
            log.warning("shard %s could not be read: %s", url, e)


def read_split(
    model: Any,
    feat: Any,
    root: str,
    split: str,
    *,
    rows: tuple[str, ...],
    batch_size: int,
    device: Any,
    max_samples: int | None = None,
    only_source_targets: bool = False,
    shuffle_seed: int | None = None,
    scenes: SceneFrameCollector | None = None,
) -> SplitData:
    """Read, decode and embed a split: one audio embedding matrix per row ("elsa", "semantic_only").

    ``only_source_targets`` keeps the samples with direction labels (the probes' train set);
    ``scenes`` scores each scene sample's frames as it goes by (its audio is not kept).
    """
    import torch

    from training.data import decode_audio, has_source_target
    from training.features import clip_features

    out = SplitData()
    buf_mel: list[torch.Tensor] = []
    buf_iv: list[torch.Tensor] = []
    parts: dict[str, list[np.ndarray]] = {r: [] for r in rows}

    def flush() -> None:
        if not buf_mel:
            return
        mel = torch.stack(buf_mel).to(device)
        iv = torch.stack(buf_iv).to(device)
        for r in rows:
            parts[r].append(model.encode_audio(mel, iv, zero_spatial=(r == "semantic_only")).cpu().numpy())
        buf_mel.clear()
        buf_iv.clear()

    for item in iter_split(root, split, shuffle_seed):
        if max_samples is not None and len(out) >= max_samples:
            break
        if isinstance(item, RejectRow):
            log.warning("skipping %s: %s (%s)", item.key or item.source, item.reason, item.detail)
            out.skipped += 1
            continue
        rec = item.record
        labels = rec.labels if rec.spatial else None
        if only_source_targets and not has_source_target(rec):
            continue
        try:
            audio = decode_audio(item.flac, rec, feat.sample_rate)
            f = clip_features(audio, feat, offset=0)
        except (SampleRejected, ValueError, RuntimeError) as e:  # undecodable audio
            log.warning("skipping %s: %s", item.key, str(e).splitlines()[0] if str(e) else type(e).__name__)
            out.skipped += 1
            continue
        out.keys.append(item.key)
        out.dataset.append(rec.dataset)
        out.clip_id.append(rec.clip_id)
        out.aug.append(rec.aug)
        out.spatial.append(labels is not None)
        out.source_target.append(has_source_target(rec))
        out.text.append(list(rec.text))
        out.original_text.append(list(rec.original_text))
        for k in LABEL_KEYS:
            v = getattr(labels, k) if labels is not None else None
            out.labels[k].append(float("nan") if v is None else float(v))
        buf_mel.append(f.mel)
        buf_iv.append(f.iv)
        if len(buf_mel) >= batch_size:
            flush()
        if scenes is not None and rec.sources is not None and rec.spatial:
            scenes.add(rec.sources, audio, feat.sample_rate)
    flush()
    for r in rows:
        out.emb[r] = np.concatenate(parts[r]) if parts[r] else np.zeros((0, 0), np.float32)
    return out


def embed_texts(
    model: Any, tokenizer: Any, texts: list[str], *, max_len: int, batch_size: int, device: Any
) -> dict[str, np.ndarray]:
    """Unit-norm embedding of every distinct text (captions repeat a lot: templates, prompts)."""
    import torch

    uniq = list(dict.fromkeys(texts))
    out: dict[str, np.ndarray] = {}
    bs = max(batch_size, 32)
    for i in range(0, len(uniq), bs):
        chunk = uniq[i : i + bs]
        tok = tokenizer(chunk, padding="longest", truncation=True, max_length=max_len, return_tensors="pt")
        with torch.no_grad():
            e = model.encode_text(tok["input_ids"].to(device), tok["attention_mask"].to(device)).cpu().numpy()
        out.update(zip(chunk, e, strict=True))
    return out


# --------------------------------------------------------------------------------------------
# the pieces


def retrieval_sets(data: SplitData) -> dict[str, tuple[np.ndarray, list[list[str]]]]:
    """Set name → (row indices into ``data``, captions per row), per source dataset (and 'all'
    when there are several): spatial, spatial_small (first augmentation per clip), nonspatial."""
    sp = data.is_spatial
    names = sorted(set(data.dataset))
    groups = {n: np.array([d == n for d in data.dataset]) for n in names}
    if len(names) > 1:
        groups["all"] = np.ones(len(data), dtype=bool)
    out: dict[str, tuple[np.ndarray, list[list[str]]]] = {}
    for g, m in groups.items():
        idx = np.flatnonzero(m & sp)
        if idx.size:
            out[f"{g}/spatial"] = (idx, [data.text[i] for i in idx])
            first: dict[tuple[str, str], int] = {}
            for i in idx:
                k = (data.dataset[i], data.clip_id[i])
                if k not in first or data.aug[i] < data.aug[first[k]]:
                    first[k] = int(i)
            small = np.array(sorted(first.values()))
            out[f"{g}/spatial_small"] = (small, [data.text[i] for i in small])
        idx = np.flatnonzero(m & ~sp)
        if idx.size:
            out[f"{g}/nonspatial"] = (idx, [data.text[i] for i in idx])
    return out


def shared_captions(caps: list[list[str]]) -> int:
    """How many distinct caption strings belong to more than one row (their ties count against
    the ground truth in retrieval, see training.metrics)."""
    owners: dict[str, set[int]] = {}
    for i, cs in enumerate(caps):
        for c in cs:
            owners.setdefault(c, set()).add(i)
    return sum(len(v) > 1 for v in owners.values())


def _retrieval(
    emb: np.ndarray,
    sets: dict[str, tuple[np.ndarray, list[list[str]]]],
    text_emb: dict[str, np.ndarray],
    max_block_mb: float,
) -> list[RetrievalResult]:
    out = []
    for name, (idx, caps) in sets.items():
        flat = [c for cs in caps for c in cs]
        owner = np.repeat(np.arange(len(caps)), [len(cs) for cs in caps])
        t = np.stack([text_emb[c] for c in flat])
        m = retrieval_metrics(emb[idx], t, owner, max_block_mb=max_block_mb)
        out.append(RetrievalResult(set=name, n_audio=int(idx.size), n_text=len(flat), metrics=m))
    return out


def project(
    train: np.ndarray, train_words: np.ndarray, test: list[np.ndarray], method: str, seed: int
) -> tuple[str, list[np.ndarray]]:
    """Fit a 2-D projection on ``train`` and apply it to each array of ``test``.

    UMAP (supervised by the direction words, as Fig. 2) when umap-learn is installed and asked
    for, else PCA.
    """
    if method in ("auto", "umap"):
        try:
            import umap  # type: ignore[import-not-found]

            codes = {w: i for i, w in enumerate(DIRECTIONS)}
            y = np.array([codes.get(w, -1) for w in train_words])
            reducer = umap.UMAP(n_components=2, random_state=seed).fit(train, y=y)
            return "umap", [reducer.transform(x) for x in test]
        except ImportError:
            if method == "umap":
                raise EvaluationError("projection='umap' but umap-learn is not installed") from None
    mu = train.mean(axis=0, keepdims=True)
    _, _, vt = np.linalg.svd(train - mu, full_matrices=False)
    comps = vt[:2] if vt.shape[0] >= 2 else np.vstack([vt, np.zeros_like(vt)])[:2]
    return "pca", [(x - mu) @ comps.T for x in test]


# --------------------------------------------------------------------------------------------
# the evaluation


def _device(pref: str) -> Any:
    import torch

    if pref == "cuda" or (pref == "auto" and torch.cuda.is_available()):
        return torch.device("cuda")
    return torch.device("cpu")


def _checkpoint_step(path: str) -> int | None:
    from training.checkpoint import latest_checkpoint

    p = Path(path)
    ck = p if (p / "meta.json").exists() else latest_checkpoint(p)
    if ck is None:
        return None
    return int(json.loads((ck / "meta.json").read_text()).get("step", 0))


def evaluate(
    cfg: EvaluationConfig,
    *,
    model: Any | None = None,
    tokenizer: Any | None = None,
    features: Any | None = None,
    max_text_len: int | None = None,
) -> Report:
    """Run every evaluation of the checkpoint in ``cfg`` (or of ``model``, when given) on the shards."""
    timings: dict[str, float] = {}
    notes: list[str] = []
    t0 = time.perf_counter()
    dev = _device(cfg.device)
    step = None
    if model is None:
        from training.checkpoint import load_trained

        model, tokenizer, tcfg = load_trained(cfg.checkpoint, dev)
        if tcfg.task != "elsa":
            raise EvaluationError(
                f"{cfg.checkpoint} is a {tcfg.task!r} checkpoint; evaluation needs an ELSA one"
            )
        features = features or tcfg.features
        max_text_len = max_text_len or tcfg.model.max_text_len
        step = _checkpoint_step(cfg.checkpoint)
    if tokenizer is None or features is None:
        raise EvaluationError("a model passed in needs its tokenizer and FeatureConfig too")
    max_text_len = max_text_len or 77
    model.eval().to(dev)
    rows = ROWS if cfg.baseline else ROWS[:1]
    timings["load_s"] = time.perf_counter() - t0

    t = time.perf_counter()
    scenes = SceneFrameCollector(cfg.scenes, model=model, feat=features, device=dev)
    test = read_split(
        model,
        features,
        cfg.shards,
        cfg.test_split,
        rows=rows,
        batch_size=cfg.batch_size,
        device=dev,
        max_samples=cfg.max_test_samples,
        scenes=scenes,
    )
    if len(test) == 0:
        raise EmptyEvaluationSetError(
            f"split {cfg.test_split!r} of {cfg.shards} has no readable sample"
            + (f" ({test.skipped} skipped)" if test.skipped else "")
        )
    for r in rows:
        check_embeddings(test.emb[r], f"{r} test audio embeddings")
    timings["embed_test_s"] = time.perf_counter() - t
    if test.skipped:
        notes.append(f"{test.skipped} test sample(s) could not be read and were skipped")

    train = None
    if cfg.probes:
        t = time.perf_counter()
        train = read_split(
            model,
            features,
            cfg.shards,
            cfg.train_split,
            rows=rows,
            batch_size=cfg.batch_size,
            device=dev,
            max_samples=cfg.max_train_samples,
            only_source_targets=True,
            shuffle_seed=cfg.seed,
        )
        if len(train) == 0:
            raise EmptyEvaluationSetError(
                f"split {cfg.train_split!r} of {cfg.shards} has no spatial sample to fit "
                "the probes on (set probes: false to skip them)"
            )
        for r in rows:
            check_embeddings(train.emb[r], f"{r} train audio embeddings")
        timings["embed_train_s"] = time.perf_counter() - t

    # text: every caption of the test set, the zero-shot prompts, the originals for the swap
    t = time.perf_counter()
    zs_prompts = prompts(cfg.zero_shot)
    all_texts = [c for cs in test.text for c in cs] + [c for cs in test.original_text for c in cs]
    all_texts += [p for _, ps in zs_prompts.values() for p in ps]
    text_emb = embed_texts(
        model, tokenizer, all_texts, max_len=max_text_len, batch_size=cfg.batch_size, device=dev
    )
    check_embeddings(np.stack(list(text_emb.values())), "text embeddings")
    timings["embed_text_s"] = time.perf_counter() - t

    sp = test.is_spatial
    tgt = test.has_target  # the label-based pieces: samples whose sound comes from one place
    labels = {k: test.label(k)[tgt] for k in LABEL_KEYS}
    truth = true_classes(*(labels[k] for k in LABEL_KEYS), cfg=cfg.zero_shot.descriptors)
    tr_words = None
    if train is not None:
        tr_words = true_classes(*(train.label(k) for k in LABEL_KEYS), cfg=cfg.zero_shot.descriptors)[
            "direction"
        ]
    ctx = _RowContext(
        cfg=cfg,
        sets=retrieval_sets(test),
        text_emb=text_emb,
        prompt_emb={a: np.stack([text_emb[p] for p in ps]) for a, (_, ps) in zs_prompts.items() if ps},
        labels=labels,
        truth=truth,
        train=train,
        train_words=tr_words,
        swap=_swap_captions(test, text_emb),
        real=_real_sets(cfg, model, features, rows, dev, notes, timings),
    )
    for name, (_, caps) in ctx.sets.items():
        if n_shared := shared_captions(caps):
            notes.append(
                f"{name}: {n_shared} caption text(s) belong to several clips; identical texts tie exactly "
                "and ties count against the ground truth (training.metrics), which lowers R@k"
            )
    per_sample: dict[str, list[Any]] = {
        "key": [test.keys[i] for i in np.flatnonzero(tgt)],
        "dataset": [test.dataset[i] for i in np.flatnonzero(tgt)],
        "clip_id": [test.clip_id[i] for i in np.flatnonzero(tgt)],
        "aug": [test.aug[i] for i in np.flatnonzero(tgt)],
        **{k: labels[k].tolist() for k in LABEL_KEYS},
        **{f"word_{a}": list(truth[a]) for a in truth},
    }
    results: dict[str, RowResult] = {}
    for r in rows:
        t = time.perf_counter()
        results[r], errors = _evaluate_row(r, test.emb[r][tgt], test.emb[r], ctx, notes)
        if errors is not None:
            per_sample[f"doa_error_deg_{r}"] = errors.tolist()
        timings[f"metrics_{r}_s"] = time.perf_counter() - t

    projection = None
    if train is not None and tgt.any():
        first_caps = np.stack([text_emb[test.text[i][0]] for i in np.flatnonzero(tgt)])
        method, (pa, pt) = project(
            train.emb["elsa"], tr_words, [test.emb["elsa"][tgt], first_caps], cfg.projection, cfg.seed
        )
        words = list(truth["direction"])
        projection = Projection(
            method=method,
            fitted_on=f"{cfg.train_split} audio embeddings ({len(train)})",
            x=[*pa[:, 0].tolist(), *pt[:, 0].tolist()],
            y=[*pa[:, 1].tolist(), *pt[:, 1].tolist()],
            modality=["audio"] * len(pa) + ["text"] * len(pt),
            direction=words + words,
        )
    if not sp.any():
        notes.append("the test split has no spatial sample: only non-spatial retrieval was evaluated")
    scene_localisation = scenes.result()
    if n_mixed := int((sp & ~tgt).sum()):
        notes.append(
            f"{n_mixed} spatial test sample(s) are scenes with several sources or a moving one: they are "
            "in retrieval and the frame-wise localisation, not in zero-shot, the DOA probe, the swap or "
            "the projection (their json labels hold source 0's first point, not one direction)"
        )
    if scene_localisation is not None and "model" not in scene_localisation.estimators:
        notes.append("frame-wise localisation: the model's direction head was not scored (scenes.model off)")
    timings["total_s"] = time.perf_counter() - t0
    return Report(
        created_at=datetime.now(UTC).isoformat(timespec="seconds"),
        checkpoint=cfg.checkpoint,
        step=step,
        shards=cfg.shards,
        test_split=cfg.test_split,
        train_split=cfg.train_split if cfg.probes else None,
        config=cfg.model_dump(mode="json"),
        counts={
            "test_samples": len(test),
            "test_spatial": int(sp.sum()),
            "test_nonspatial": int((~sp).sum()),
            "train_spatial": len(train) if train is not None else 0,
            "distinct_texts": len(text_emb),
            **{f"real_{k}": len(v[0]) for k, v in ctx.real.items()},
        },
        rows=results,
        projection=projection,
        scene_localisation=scene_localisation,
        samples=per_sample,
        timings_s={k: round(v, 3) for k, v in timings.items()},
        notes=notes,
    )


@dataclass
class _RowContext:
    """What every row's evaluation shares: the sets, texts, labels, train split and real sets."""

    cfg: EvaluationConfig
    sets: dict[str, tuple[np.ndarray, list[list[str]]]]
    text_emb: dict[str, np.ndarray]
    prompt_emb: dict[str, np.ndarray]
    labels: dict[str, np.ndarray]
    truth: dict[str, np.ndarray]
    train: SplitData | None
    train_words: np.ndarray | None
    swap: tuple[np.ndarray, np.ndarray] | None
    real: dict[str, tuple[list, dict[str, np.ndarray]]]


def _swap_captions(test: SplitData, text_emb: dict[str, np.ndarray]) -> tuple[np.ndarray, np.ndarray] | None:
    """The swap's gallery: the distinct non-spatial (original) caption texts of the test samples
    with direction labels, their embeddings and, per such sample, the indices of its clip's
    captions (padded with -1). Deduplicated by text: a description shared by several clips
    (identical captions are common in template-captioned data) is correct for each of them, not a
    tie against them."""
    index: dict[str, int] = {}
    lists = []
    for i in np.flatnonzero(test.has_target):
        lists.append(sorted({index.setdefault(c, len(index)) for c in test.original_text[i]}))
    if not index:
        return None
    relevant = np.full((len(lists), max(len(x) for x in lists)), -1, dtype=np.int64)
    for i, x in enumerate(lists):
        relevant[i, : len(x)] = x
    return np.stack([text_emb[c] for c in index]), relevant


def _real_sets(
    cfg: EvaluationConfig,
    model: Any,
    features: Any,
    rows: tuple[str, ...],
    dev: Any,
    notes: list[str],
    timings: dict[str, float],
) -> dict[str, tuple[list, dict[str, np.ndarray]]]:
    """Each configured real-recording set: its segments and their embeddings per row."""
    out = {}
    t = time.perf_counter()
    for rs in cfg.real:
        segs = load_real_set(
            rs.kind,
            rs.audio,
            rs.labels,
            normalisation=rs.normalisation,
            isolated=rs.isolated,
            max_segments=rs.max_segments,
        )
        if not segs:
            notes.append(f"real set {rs.name}: no labelled segment could be cut")
            continue
        out[rs.name] = (segs, _embed_segments(model, features, segs, rows, cfg.batch_size, dev))
    if cfg.real:
        timings["embed_real_s"] = time.perf_counter() - t
    return out


def _evaluate_row(
    row_name: str, emb_sp: np.ndarray, emb_all: np.ndarray, ctx: _RowContext, notes: list[str]
) -> tuple[RowResult, np.ndarray | None]:
    """One row: retrieval, zero-shot, and (with a train split) DOA probe, swap and real sets."""
    cfg = ctx.cfg
    row = RowResult(retrieval=_retrieval(emb_all, ctx.sets, ctx.text_emb, cfg.max_block_mb))
    if emb_sp.shape[0] == 0:
        return row, None
    row.zero_shot = zero_shot_all(emb_sp, ctx.truth, ctx.prompt_emb, cfg.zero_shot)
    if ctx.train is None:
        return row, None
    tr = ctx.train.emb[row_name]
    probe = train_doa_probe(tr, ctx.train.label("azimuth_deg"), ctx.train.label("elevation_deg"), cfg.probe)
    true = directions_from_angles(ctx.labels["azimuth_deg"], ctx.labels["elevation_deg"])
    errors = angular_errors_deg(probe(emb_sp), true)
    row.doa = summarise(errors, len(ctx.train), probe.n_params, dims=ctx.labels, n_bins=cfg.probe.n_bins)
    d_classes, d_prompts = prompts(cfg.zero_shot)["direction"]
    protos = {w: ctx.text_emb[p] for w, p in zip(d_classes, d_prompts, strict=True)}
    if ctx.swap is not None and all(d in protos for d in DIRECTIONS):
        try:
            row.direction_swap = direction_swap(
                tr, ctx.train_words, emb_sp, ctx.truth["direction"], protos, *ctx.swap, cfg.probe
            )
        except EmptyEvaluationSetError as e:
            notes.append(f"{row_name}: direction swap skipped: {e}")
    for name, (segs, seg_emb) in ctx.real.items():
        true_r = directions_from_angles([s.azimuth_deg for s in segs], [s.elevation_deg for s in segs])
        dims = {
            "azimuth_deg": np.array([s.azimuth_deg for s in segs]),
            "elevation_deg": np.array([s.elevation_deg for s in segs]),
            "distance_m": np.array([np.nan if s.distance_m is None else s.distance_m for s in segs]),
        }
        row.real[name] = summarise(
            angular_errors_deg(probe(seg_emb[row_name]), true_r),
            len(ctx.train),
            probe.n_params,
            dims=dims,
            classes=np.array([s.label for s in segs], dtype=object),
            n_bins=cfg.probe.n_bins,
        )
    return row, errors


def _embed_segments(
    model: Any, feat: Any, segs: list, rows: tuple[str, ...], batch_size: int, dev: Any
) -> dict[str, np.ndarray]:
    import torch

    from training.features import clip_features

    out: dict[str, list[np.ndarray]] = {r: [] for r in rows}
    for i in range(0, len(segs), batch_size):
        fs = [clip_features(s.foa, feat, offset=0) for s in segs[i : i + batch_size]]
        mel = torch.stack([f.mel for f in fs]).to(dev)
        iv = torch.stack([f.iv for f in fs]).to(dev)
        for r in rows:
            out[r].append(model.encode_audio(mel, iv, zero_spatial=(r == "semantic_only")).cpu().numpy())
    return {r: check_embeddings(np.concatenate(v), f"{r} real-recording embeddings") for r, v in out.items()}
