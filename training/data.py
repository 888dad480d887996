"""The shard loader: WebDataset tars from a local root or s3:// into feature batches.

Pipeline, per rank and DataLoader worker (all in worker processes; the main process only trains):

  shard URLs ─ resampled: drawn with replacement by an RNG of (seed, epoch, rank, worker, source)
             └ finite:    split by node (every world-th shard from rank, as wds.split_by_node, but
                          with the rank explicit) → wds.split_by_worker
  → streamed through tasks.storage (boto3 for s3://, no aws CLI) and read by tasks.shard_reader (the
    one reader: json → SampleRecord, sha256 of the FLAC; unusable samples logged with their reason)
  → filtered (spatial / non-spatial per source) → sources mixed by weight
  → shuffle buffer → raw batches → decode FLAC + features → collated, tokenised batch

Targets: the room labels (area, T30, DRR) of every spatial sample (``spatial``); its direction and
distance only where the sound comes from one place (``source_target``, ``has_source_target``):
every ELSA sample, and a scene sample with one static source.

Determinism, for resume: every random choice (shard draw, mix, shuffle, caption, crop) comes
from numpy RNGs seeded by (seed, epoch, rank, worker[, batch, sample]), never from global state.
An epoch is ``batches_per_epoch`` batches per rank, split evenly over the workers (the loader's
``with_epoch``), so every DDP rank takes the same number of steps. Resuming at batch k of an
epoch rebuilds that epoch's stream and has each worker pass over its share of the first k raw
batches without decoding them (yielding None), so batch k+1 is exactly what it would have been.
"""

from __future__ import annotations

import logging
import math
import zlib
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch

from schemas.shards import SHARD_SAMPLE_RATE, RejectRow, SampleRecord
from tasks.shard_reader import decode_audio as read_audio
from tasks.shard_reader import read_shard
from training.config import DataConfig, FeatureConfig, ShardSource
from training.features import clip_features, fit_length, to_foa

log = logging.getLogger(__name__)


class DataError(ValueError):
    """A shard root, split or sample the loader cannot use."""


# --------------------------------------------------------------------------------------------
# storage


def list_shards(root: str, split: str) -> list[str]:
    """Every ``{root}/{split}/{split}-NNNNNN.tar``, sorted; local directory or s3:// prefix."""
    import re

    from tasks.storage import join_uri, open_storage

    prefix = join_uri(root, split)
    pat = re.compile(rf"/{re.escape(split)}-\d{{6}}\.tar$")
    try:
        found = [o.uri for o in open_storage(root).list(prefix)]
    except FileNotFoundError:
        found = []
    urls = sorted(u for u in (str(x) for x in found) if pat.search(u))
    if not urls:
        raise DataError(f"no shards {split}/{split}-NNNNNN.tar under {root}")
    return urls


# --------------------------------------------------------------------------------------------
# samples


def raw_samples(
    urls: Iterable[str], only: str | None, max_barren: int | None = None
) -> Iterator[dict[str, Any]]:
    """The usable samples of the shards (tasks.shard_reader), filtered; every other one is logged.

    ``max_barren``: raise once that many shards in a row gave no usable sample (a resampled
    source whose filter matches nothing would otherwise spin forever).
    """
    opened = at_last_yield = 0
    for url in urls:
        if max_barren is not None and opened - at_last_yield >= max_barren:
            raise DataError(f"{max_barren} shards in a row without a usable {only or ''} sample (last {url})")
        opened += 1
        try:
            for item in read_shard(url, decode=False):
                if isinstance(item, RejectRow):
                    log.warning("skipping sample %s of %s: %s (%s)", item.key, url, item.reason, item.detail)
                    continue
                if only is not None and item.record.spatial != (only == "spatial"):
                    continue
                at_last_yield = opened
                yield {"key": item.key, "flac": item.flac, "record": item.record}
        except Exception as e:  # a missing or unreadable shard must not end a long run
            log.warning("skipping shard %s: %s", url, e)


def direction_vector(az_deg: float, el_deg: float) -> np.ndarray:
    """Unit vector (x front, y left, z up) of an ambiX direction."""
    az, el = math.radians(az_deg), math.radians(el_deg)
    return np.array([math.cos(az) * math.cos(el), math.sin(az) * math.cos(el), math.sin(el)], np.float32)


def decode_audio(flac: bytes, record: SampleRecord, sample_rate: int) -> np.ndarray:
    """A sample's FLAC → (4, N) float32 (mono copied to four channels; HOA keeps its first-order
    part), decoded and checked against its record by tasks.shard_reader."""
    if sample_rate != SHARD_SAMPLE_RATE:
        raise DataError(f"shards hold {SHARD_SAMPLE_RATE} Hz audio, the features expect {sample_rate} Hz")
    return to_foa(read_audio(flac, record))


@dataclass(frozen=True)
class SampleMode:
    """``features``: decode to mel + IVs in the worker; ``waveform``: ship fixed-length audio, so a
    GPU trainer computes the features on the device (training.features.foa_features)."""

    features: bool = True


def has_source_target(record: SampleRecord) -> bool:
    """Whether a sample's direction and distance labels are regression targets: it is spatial and
    its sound comes from one place for the whole clip.

    Every spatial ELSA sample qualifies. A scene sample (``sources`` set) qualifies only with one
    static source: with several sources or a moving one, ``labels`` holds source 0's first point,
    which is not where the sound is, and its DRR (which depends on where the source is, not only
    on the room) is that point's. The room labels (T30, area) hold for every spatial sample either
    way, so they stay targets under ``spatial``.
    """
    if not record.spatial:
        return False
    return record.sources is None or (len(record.sources) == 1 and record.sources[0].motion == "static")


def sample_targets(record: SampleRecord) -> dict[str, Any]:
    """The regression targets of a sample; NaN where a target does not hold (``decode_sample``)."""
    labels = record.labels if record.spatial else None
    point = labels is not None and has_source_target(record)
    nan = float("nan")
    out: dict[str, Any] = {
        "spatial": labels is not None,
        "source_target": point,
        "direction": torch.from_numpy(
            direction_vector(labels.azimuth_deg, labels.elevation_deg)
            if point
            else np.full(3, nan, np.float32)
        ),
    }
    for name in ("distance_m", "floor_area_m2", "t30_s", "drr_db"):
        holds = point if name in ("distance_m", "drr_db") else labels is not None
        v = getattr(labels, name) if holds else None
        out[name] = nan if v is None else float(v)
    return out


def decode_sample(
    raw: dict[str, Any], feat: FeatureConfig, rng: np.random.Generator, mode: SampleMode
) -> dict:
    """One raw sample → tensors: random caption, random crop / repeat-pad, features, labels (NaN if none).

    ``spatial`` marks the room targets, ``source_target`` the direction, distance and DRR targets
    (``has_source_target``); a target that does not hold is NaN, so it cannot leak into a loss.
    """
    record: SampleRecord = raw["record"]
    audio = decode_audio(raw["flac"], record, feat.sample_rate)
    text = record.text[int(rng.integers(len(record.text)))]
    out: dict[str, Any] = {"key": raw["key"], "text": text, **sample_targets(record)}
    if mode.features:
        f = clip_features(audio, feat, rng)
        out["mel"], out["iv"] = f.mel, f.iv
    else:
        out["wave"] = torch.from_numpy(fit_length(audio, feat, rng)[0])
    return out


def collate(samples: list[dict], tokenizer: Any | None = None, max_text_len: int = 77) -> dict[str, Any]:
    """Stack tensors, keep keys and texts, tokenise the captions (if a tokenizer is given)."""
    b: dict[str, Any] = {"keys": [s["key"] for s in samples], "texts": [s["text"] for s in samples]}
    for k in ("mel", "iv", "wave", "direction"):
        if k in samples[0]:
            b[k] = torch.stack([s[k] for s in samples])
    for k in ("distance_m", "floor_area_m2", "t30_s", "drr_db"):
        b[k] = torch.tensor([s[k] for s in samples], dtype=torch.float32)
    if "direction_weight" in samples[0]:  # the feature cache's crops only (LossConfig.direction_by_energy)
        b["direction_weight"] = torch.tensor([s["direction_weight"] for s in samples], dtype=torch.float32)
    for k in ("spatial", "source_target"):
        b[k] = torch.tensor([s[k] for s in samples], dtype=torch.bool)
    if tokenizer is not None:
        tok = tokenizer(
            b["texts"], padding="longest", truncation=True, max_length=max_text_len, return_tensors="pt"
        )
        b["input_ids"], b["attention_mask"] = tok["input_ids"], tok["attention_mask"]
    return b


# --------------------------------------------------------------------------------------------
# the pipeline


def _worker() -> tuple[int, int]:
    info = torch.utils.data.get_worker_info()
    return (0, 1) if info is None else (info.id, info.num_workers)


def _resampled_urls(urls: list[str], rng: np.random.Generator) -> Iterator[str]:
    while True:
        yield urls[int(rng.integers(len(urls)))]


def _mix(streams: list[Iterator[dict]], weights: list[float], rng: np.random.Generator) -> Iterator[dict]:
    """Draw the next sample from stream i with probability weights[i]; a finished stream drops out."""
    live = list(range(len(streams)))
    w = np.asarray(weights, dtype=np.float64)
    while live:
        p = w[live] / w[live].sum()
        i = live[int(rng.choice(len(live), p=p))]
        try:
            yield next(streams[i])
        except StopIteration:
            live.remove(i)


def _shuffle(data: Iterable[dict], bufsize: int, rng: np.random.Generator) -> Iterator[dict]:
    """Reservoir shuffle: a random element of a full buffer is emitted and replaced."""
    if bufsize <= 1:
        yield from data
        return
    buf: list[dict] = []
    for x in data:
        if len(buf) < bufsize:
            buf.append(x)
            continue
        i = int(rng.integers(bufsize))
        buf[i], x = x, buf[i]
        yield x
    rng.shuffle(buf)  # type: ignore[arg-type]
    yield from buf


class ShardStream(torch.utils.data.IterableDataset):
    """Batches for one rank (see the module docstring); iterate through a DataLoader(batch_size=None)."""

    def __init__(
        self,
        cfg: DataConfig,
        feat: FeatureConfig,
        *,
        seed: int,
        rank: int = 0,
        world: int = 1,
        epoch: int = 0,
        skip_batches: int = 0,
        tokenizer: Any | None = None,
        max_text_len: int = 77,
        mode: SampleMode | None = None,
        drop_last: bool = True,
    ) -> None:
        super().__init__()
        self.cfg, self.feat, self.seed = cfg, feat, seed
        self.rank, self.world, self.epoch, self.skip = rank, world, epoch, skip_batches
        self.tokenizer, self.max_text_len = tokenizer, max_text_len
        self.mode = mode or SampleMode()
        self.drop_last = drop_last
        self.sources = cfg.expanded_sources()
        self.urls = [list_shards(s.root, s.split) for s in self.sources]

    def batches_per_worker(self) -> int:
        """Batches each worker yields per epoch (resampled: the epoch spread evenly, rounded up)."""
        return -(-self.cfg.batches_per_epoch // max(1, self.cfg.num_workers))

    def _source_urls(self, i: int, worker: int, n_workers: int, rng: np.random.Generator) -> Iterable[str]:
        urls = self.urls[i]
        if self.cfg.resampled:
            return _resampled_urls(urls, rng)
        import webdataset as wds

        own = [u for u in urls[self.rank :: self.world]]  # wds.split_by_node, with explicit rank
        return (
            (d["url"] for d in wds.split_by_worker({"url": u} for u in own)) if n_workers > 1 else iter(own)
        )

    def raw_stream(self) -> Iterator[dict]:
        worker, n_workers = _worker()
        base = [self.seed, self.epoch, self.rank, worker]
        streams = [
            raw_samples(
                self._source_urls(i, worker, n_workers, np.random.default_rng([*base, 1, i])),
                s.only,
                max_barren=max(8, 2 * len(self.urls[i])) if self.cfg.resampled else None,
            )
            for i, s in enumerate(self.sources)
        ]
        if self.cfg.resampled:
            mixed = _mix(streams, [s.weight for s in self.sources], np.random.default_rng([*base, 2]))
        else:
            mixed = (x for s in streams for x in s)
        return _shuffle(mixed, self.cfg.shuffle_buffer, np.random.default_rng([*base, 3]))

    def __iter__(self) -> Iterator[dict | None]:
        worker, n_workers = _worker()
        # batches this worker produced before the resume point (DataLoader interleaves round-robin)
        my_skip = max(0, -(-(self.skip - worker) // n_workers))
        limit = self.batches_per_worker() if self.cfg.resampled else None
        bs = self.cfg.batch_size
        raw = self.raw_stream()
        j = 0
        while limit is None or j < limit:
            chunk = [x for _, x in zip(range(bs), raw, strict=False)]
            if not chunk or (len(chunk) < bs and self.drop_last):
                return
            if j < my_skip:
                yield None
            else:
                yield self.decode_batch(chunk, [self.seed, self.epoch, self.rank, worker, j])
            j += 1

    def decode_batch(self, chunk: list[dict], seed: list[int]) -> dict:
        """Decode a raw batch; a sample that fails to decode is replaced by a good one of the batch,
        so every rank keeps the same batch size (the contrastive all-gather needs it)."""
        out: list[dict | None] = []
        for k, raw in enumerate(chunk):
            try:
                out.append(decode_sample(raw, self.feat, np.random.default_rng([*seed, k]), self.mode))
            except Exception as e:  # corrupt FLAC, wrong rate, wrong channel count
                log.warning("sample %s could not be decoded: %s", raw.get("key"), e)
                out.append(None)
        good = [s for s in out if s is not None]
        if not good:
            raise DataError(f"no sample of a batch could be decoded (first key {chunk[0].get('key')})")
        filled = [s if s is not None else good[i % len(good)] for i, s in enumerate(out)]
        return collate(filled, self.tokenizer, self.max_text_len)


def make_loader(
    cfg: DataConfig,
    feat: FeatureConfig,
    *,
    seed: int,
    rank: int = 0,
    world: int = 1,
    epoch: int = 0,
    skip_batches: int = 0,
    tokenizer: Any | None = None,
    max_text_len: int = 77,
    mode: SampleMode | None = None,
    drop_last: bool = True,
) -> torch.utils.data.DataLoader:
    """A DataLoader over ShardStream for one epoch of one rank.

    The DataLoader gets its own torch Generator so that creating it never draws from the global
    RNG (which would shift dropout after a resume).
    """
    ds = ShardStream(
        cfg,
        feat,
        seed=seed,
        rank=rank,
        world=world,
        epoch=epoch,
        skip_batches=skip_batches,
        tokenizer=tokenizer,
        max_text_len=max_text_len,
        mode=mode,
        drop_last=drop_last,
    )
    g = torch.Generator()
    g.manual_seed(zlib.crc32(f"{seed}-{epoch}-{rank}".encode()))
    return torch.utils.data.DataLoader(
        ds,
        batch_size=None,
        num_workers=cfg.num_workers,
        generator=g,
        worker_init_fn=_worker_init,
        persistent_workers=False,
        pin_memory=False,
        prefetch_factor=2 if cfg.num_workers > 0 else None,
    )


def _worker_init(_: int) -> None:
    """One torch thread per worker, and an S3 client of its own (not the parent's forked one)."""
    from tasks.storage import clear_storage_cache

    torch.set_num_threads(1)
    clear_storage_cache()


def eval_loader(
    root: str,
    split: str,
    feat: FeatureConfig,
    *,
    batch_size: int = 16,
    num_workers: int = 0,
    tokenizer: Any | None = None,
    max_text_len: int = 77,
    seed: int = 0,
    rank: int = 0,
    world: int = 1,
    only: str | None = None,
) -> torch.utils.data.DataLoader:
    """One finite, ordered pass over a split (no shuffle, last batch kept): for evaluation."""
    cfg = DataConfig(
        sources=[ShardSource(root=root, split=split, only=only)],
        batch_size=batch_size,
        num_workers=num_workers,
        shuffle_buffer=0,
        resampled=False,
    )
    return make_loader(
        cfg,
        feat,
        seed=seed,
        rank=rank,
        world=world,
        tokenizer=tokenizer,
        max_text_len=max_text_len,
        drop_last=False,
    )


def batch_to(batch: dict[str, Any], device: torch.device | str) -> dict[str, Any]:
    """Move every tensor of a batch to ``device`` (non-blocking where it can)."""
    return {
        k: v.to(device, non_blocking=True) if isinstance(v, torch.Tensor) else v for k, v in batch.items()
    }


def iterate_from(loader: Iterable[dict | None], start: int) -> Iterator[tuple[int, dict]]:
    """(index, batch) pairs of a loader, past the first ``start`` placeholders of a resume."""
    for i, b in enumerate(loader):
        if i < start:
            if b is not None:
                raise DataError("resume placeholder expected, got a batch: worker count changed?")
            continue
        if b is None:
            raise DataError(f"placeholder at batch {i} after the resume point {start}")
        yield i, b


Decoder = Callable[[dict], dict]
