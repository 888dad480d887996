"""The sample plan: which clip is rendered with which placement, in which split, how many times.

Deterministic in (clips, placements, config, seed): a rerun or a resumed run plans the same
samples with the same keys, so finished shards are recognised and skipped.
"""

from __future__ import annotations

import hashlib
from collections import defaultdict

from pydantic import BaseModel, ConfigDict, Field, model_validator

from schemas.rooms import Placement, Split
from schemas.shards import make_key
from schemas.sources import SourceClip
from tasks.errors import SpatialAudioCapsError
from tasks.shard_writer import safe_clip_id

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


def _unit(*parts: object) -> float:
    """A stable number in [0, 1) from the parts (sha256, not Python's salted hash)."""
    digest = hashlib.sha256("\x1f".join(map(str, parts)).encode()).digest()
    return int.from_bytes(digest[:8], "big") / 2**64


def clip_split(clip: SourceClip, cfg: PlanConfig, seed: int) -> Split:
    """The clip's own split if the source has one, else a stable draw from the shares."""
    if clip.source_split is not None:
        return clip.source_split
    u, edge = _unit("split", clip.dataset, clip.clip_id, seed), 0.0
    total = sum(cfg.split_shares.values())
    for split in SPLITS:
        edge += cfg.split_shares.get(split, 0.0) / total
        if u < edge:
            return split
    return "train"


def build_plan(
    clips: list[SourceClip], placements: list[Placement], cfg: PlanConfig, seed: int
) -> list[PlanItem]:
    """Every sample of the dataset, sorted by key; placements are drawn per (clip, aug)."""
    by_split: dict[str, list[Placement]] = defaultdict(list)
    for p in sorted(placements, key=lambda p: p.placement_id):
        by_split[p.split].append(p)
    items: list[PlanItem] = []
    for clip in clips:
        split = clip_split(clip, cfg, seed)
        pool = by_split.get(split) or []
        if not pool:
            raise SpatialAudioCapsError(f"the room set has no {split} placements")
        clip_key = safe_clip_id(clip.clip_id)
        common = {"dataset": clip.dataset, "split": split, "clip_id": clip.clip_id,
                  "captions": clip.captions, "audio_uri": clip.audio_uri, "seed": seed}
        for aug in range(1, cfg.augmentations[split] + 1):
            placement = pool[int(_unit("placement", clip.dataset, clip.clip_id, aug, seed) * len(pool))]
            items.append(PlanItem(key=make_key(clip.dataset, split, clip_key, aug), aug=aug,
                                  placement_id=placement.placement_id,
                                  small_eval=split != "train" and aug == 1, **common))
        if cfg.keep_originals:
            items.append(PlanItem(key=make_key(clip.dataset, split, clip_key, ORIGINAL_AUG),
                                  aug=ORIGINAL_AUG, placement_id=None, small_eval=False, **common))
    keys = [i.key for i in items]
    if len(set(keys)) != len(keys):
        dupes = sorted({k for k in keys if keys.count(k) > 1})[:5]
        raise SpatialAudioCapsError(f"duplicate sample keys (the source repeats clip ids): {dupes}")
    return sorted(items, key=lambda i: i.key)
