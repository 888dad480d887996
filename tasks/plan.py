"""The sample plan: which clip is rendered with which placement, in which split, how many times,
and which samples share a shard.

Deterministic in (clips, placements, config, seed): a rerun or a resumed run plans the same
samples with the same keys and the same shards, so finished shards are recognised and skipped.
"""

from __future__ import annotations

import hashlib
from collections import Counter, defaultdict
from collections.abc import Iterable
from typing import Protocol

from pydantic import BaseModel, ConfigDict, Field, model_validator

from schemas.rooms import Placement, Split
from schemas.scenes import ScenePlan
from schemas.shards import make_key
from schemas.sources import SourceClip
from tasks.errors import SpatialAudioCapsError
from tasks.shard_writer import ShardPlan, plan_shards, safe_clip_id

SPLITS: tuple[Split, ...] = ("train", "val", "test")


class PlanConfig(BaseModel):
    """Augmentations per split and the split shares for sources that have no splits of their own."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    augmentations: dict[Split, int] = Field(default_factory=lambda: {"train": 2, "val": 2, "test": 2})
    split_shares: dict[Split, float] = Field(default_factory=lambda: {"train": 0.8, "val": 0.1, "test": 0.1})
    keep_originals: bool = True

    @model_validator(mode="after")
    def _paper_minimums(self) -> PlanConfig:
        if self.augmentations.get("train", 0) < 2:
            raise ValueError("train needs at least 2 spatial augmentations per clip")
        for split in ("val", "test"):
            if self.augmentations.get(split, 2) < 2:
                raise ValueError(f"{split} needs a large version of at least 2 per clip")
        return self


ORIGINAL_AUG = 0  # aug 0 is the clip itself (48 kHz mono); spatial augmentations are 1..n


class PlanItem(BaseModel):
    """One sample to produce: a spatial augmentation (aug >= 1) or the mono original (aug 0)."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    key: str
    dataset: str
    split: Split
    clip_id: str
    aug: int = Field(ge=0)
    placement_id: str | None = Field(description="None exactly for the original (aug 0)")
    captions: tuple[str, ...]
    audio_uri: str
    small_eval: bool = Field(description="in the small val/test set: exactly one sample per clip")
    seed: int
    scene: ScenePlan | None = Field(
        None, exclude_if=lambda v: v is None,
        description="scene builds: the drawn scene (source 0 is this item's clip; ``placement_id`` is the "
        "scene's base placement); None: ELSA's one static source at ``placement_id``",
    )


def rir_ids(item: PlanRow) -> list[str]:
    """The RIR-bank placements a sample is rendered with: its scene's trajectory points, else its own
    placement (none for a mono original)."""
    scene = getattr(item, "scene", None)
    if scene is not None:
        return scene.placement_ids
    return [item.placement_id] if item.placement_id is not None else []


def stable_unit(*parts: object) -> float:
    """A stable number in [0, 1) from the parts (sha256, not Python's salted hash)."""
    digest = hashlib.sha256("\x1f".join(map(str, parts)).encode()).digest()
    return int.from_bytes(digest[:8], "big") / 2**64


def clip_split(clip: SourceClip, cfg: PlanConfig, seed: int) -> Split:
    """The clip's own split if the source has one, else a stable draw from the shares."""
    if clip.source_split is not None:
        return clip.source_split
    u, edge = stable_unit("split", clip.dataset, clip.clip_id, seed), 0.0
    total = sum(cfg.split_shares.values())
    for split in SPLITS:
        edge += cfg.split_shares.get(split, 0.0) / total
        if u < edge:
            return split
    return "train"


def build_plan(
    clips: list[SourceClip], placements: list[Placement], cfg: PlanConfig, seed: int
) -> list[PlanItem]:
    """Every sample of the dataset, sorted by key; placements are drawn per (clip, aug).

    Clip ids are checked before any item is made (a Counter over the key prefixes, linear), so a
    source that repeats an id fails in seconds at 890k clips, naming the repeats.
    """
    by_split: dict[str, list[Placement]] = defaultdict(list)
    for p in sorted(placements, key=lambda p: p.placement_id):
        by_split[p.split].append(p)
    splits = [clip_split(clip, cfg, seed) for clip in clips]
    clip_keys = [safe_clip_id(clip.clip_id) for clip in clips]
    _check_unique_clips(clips, splits, clip_keys)
    items: list[PlanItem] = []
    for clip, split, clip_key in zip(clips, splits, clip_keys, strict=True):
        pool = by_split.get(split) or []
        if not pool:
            raise SpatialAudioCapsError(f"the room set has no {split} placements")
        common = {"dataset": clip.dataset, "split": split, "clip_id": clip.clip_id,
                  "captions": clip.captions, "audio_uri": clip.audio_uri, "seed": seed}
        for aug in range(1, cfg.augmentations[split] + 1):
            placement = pool[int(stable_unit("placement", clip.dataset, clip.clip_id, aug, seed) * len(pool))]
            items.append(PlanItem(key=make_key(clip.dataset, split, clip_key, aug), aug=aug,
                                  placement_id=placement.placement_id,
                                  small_eval=split != "train" and aug == 1, **common))
        if cfg.keep_originals:
            items.append(PlanItem(key=make_key(clip.dataset, split, clip_key, ORIGINAL_AUG),
                                  aug=ORIGINAL_AUG, placement_id=None, small_eval=False, **common))
    return sorted(items, key=lambda i: i.key)


def _check_unique_clips(clips: list[SourceClip], splits: list[Split], clip_keys: list[str]) -> None:
    """Two clips with one (dataset, split, safe clip id) would plan the same sample keys."""
    counts = Counter(zip((c.dataset for c in clips), splits, clip_keys, strict=True))
    dupes = sorted(f"{ds}/{split}/{cid}" for (ds, split, cid), n in counts.items() if n > 1)
    if dupes:
        raise SpatialAudioCapsError(
            f"{len(dupes)} duplicate clip id(s) (the source repeats them): {dupes[:5]}"
        )


class PlanRow(Protocol):
    """What shard membership reads of a sample: a PlanItem, or a row of a plan table."""

    @property
    def key(self) -> str: ...
    @property
    def dataset(self) -> str: ...
    @property
    def split(self) -> str: ...
    @property
    def clip_id(self) -> str: ...
    @property
    def aug(self) -> int: ...
    @property
    def placement_id(self) -> str | None: ...


def bank_order(items: Iterable[PlanRow]) -> list[str]:
    """The placements the plan uses, in RIR-bank order: by split, then placement id.

    A scene's trajectory points sort beside their base placement (their ids extend it). The bank is
    cut into chunks as contiguous runs of this list, and ``shard_plans`` cuts each
    split in the same order, so a shard's placements fall in few chunks. Split first because
    placement ids start with their room (rooms are iid, ids interleave the splits): sorted by id
    alone, a val shard's placements would be spread over chunks that are mostly train.
    """
    used = {(i.split, pid) for i in items for pid in rir_ids(i)}
    return [pid for _, pid in sorted(used)]


def locality_order(items: Iterable[PlanRow]) -> list[PlanRow]:
    """The samples in shard-membership order: split, placement (bank order), clip, aug.

    A clip's mono original (no placement) goes with the clip's first spatial sample (its lowest
    placement id), so the clip is decoded once for both where a shard boundary allows. Total over
    unique keys, so the order depends on the set of samples only, not on how it arrives.
    """
    rows = list(items)
    anchor: dict[tuple[str, str, str], str] = {}
    for i in rows:
        clip = (i.dataset, i.split, i.clip_id)
        if i.placement_id is not None and (clip not in anchor or i.placement_id < anchor[clip]):
            anchor[clip] = i.placement_id

    def rank(i: PlanRow) -> tuple[str, str, str, str, int]:
        placement = i.placement_id
        if placement is None:
            placement = anchor.get((i.dataset, i.split, i.clip_id), "")
        return (i.split, placement, i.dataset, i.clip_id, i.aug)

    return sorted(rows, key=rank)


def shard_plans(items: Iterable[PlanRow], shard_size: int) -> list[ShardPlan]:
    """The build's shards under ``shard_membership: locality`` (the default is the hash order of
    tasks.shard_writer.plan_shards), planned by count before rendering: contiguous runs of ``shard_size``
    samples of each split in ``locality_order`` (tar order inside a shard stays sha256(key)).

    A shard's spatial samples then use about shard_size / (samples per placement) neighbouring
    placements, so a shard task reads a few RIR-bank chunks (``bank_order``) instead of most of
    the bank. Same samples, same shards: independent of chunk size and worker count.
    """
    entries = ((i.key, i.split, 0) for i in locality_order(items))
    return plan_shards(entries, max_samples=shard_size, order="given")
