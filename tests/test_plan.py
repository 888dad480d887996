"""The sample plan: augmentation counts per split, small eval sets, originals, stable keys."""

from __future__ import annotations

from collections import Counter

import pytest
from pydantic import ValidationError

from room_specs import DEFAULT_CONFIG
from tasks.plan import PlanConfig, build_plan
from tasks.room_sampling import load_config, sample_room_set
from tasks.sources import read_source


@pytest.fixture(scope="module")
def placements():
    return sample_room_set(load_config(DEFAULT_CONFIG), seed=0, n_rooms=40)[1]


def test_plan_counts_per_split(placements):
    clips, _ = read_source("demo", None, limit=40)
    cfg = PlanConfig(augmentations={"train": 3, "val": 2, "test": 2})
    items = build_plan(clips, placements, cfg, seed=0)
    by_placement = {p.placement_id: p for p in placements}
    per_clip = Counter((i.clip_id, i.split) for i in items if i.aug > 0)
    splits = Counter(split for _, split in per_clip)
    assert set(splits) == {"train", "val", "test"}  # demo clips have no split: shares apply
    for (clip, split), n in per_clip.items():
        assert n == (3 if split == "train" else 2), clip
    small = Counter(i.clip_id for i in items if i.small_eval)
    assert set(small.values()) == {1}
    assert sum(small.values()) == splits["val"] + splits["test"]
    originals = [i for i in items if i.aug == 0]
    assert len(originals) == 40 and all(i.placement_id is None and i.key.endswith("-0") for i in originals)
    assert all(i.key == f"{i.dataset}-{i.split}-{i.clip_id}-{i.aug}" for i in items)
    for i in items:
        if i.placement_id is not None:
            assert by_placement[i.placement_id].split == i.split
    assert len({i.key for i in items}) == len(items)
    assert [i.key for i in items] == sorted(i.key for i in items)


def test_plan_is_deterministic_and_seeded(placements):
    clips, _ = read_source("demo", None, limit=20)
    a = build_plan(clips, placements, PlanConfig(), seed=0)
    assert a == build_plan(clips, placements, PlanConfig(), seed=0)
    b = build_plan(clips, placements, PlanConfig(), seed=1)
    assert [i.placement_id for i in a] != [i.placement_id for i in b]


def test_plan_rejects_too_few_augmentations():
    with pytest.raises(ValidationError, match="at least 2"):
        PlanConfig(augmentations={"train": 1, "val": 2, "test": 2})
    with pytest.raises(ValidationError, match="large version"):
        PlanConfig(augmentations={"train": 2, "val": 1, "test": 2})
