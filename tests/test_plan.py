"""The sample plan: augmentation counts per split, small eval sets, originals, stable keys."""

from __future__ import annotations

import random
from collections import Counter

import pytest
from pydantic import ValidationError

from room_specs import DEFAULT_CONFIG
from schemas.sources import SourceClip
from tasks.errors import SpatialAudioCapsError
from tasks.plan import PlanConfig, PlanItem, bank_order, build_plan, shard_plans
from tasks.room_sampling import load_config, sample_room_set
from tasks.shard_writer import plan_shards, shard_order
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


def test_duplicate_clip_ids_among_890k_are_named(placements):
    """The check runs on the clips, before any item is made: linear, so 890k clips fail fast
    (benchmarks/plan_scale.py times it) and the message names the repeated ids."""
    clips = [SourceClip.model_construct(dataset="big", clip_id=f"c{n:07d}", captions=("a dog barks",),
                                        audio_uri=f"/a/{n}.wav", source_split="train")
             for n in range(890_000)]
    clips += [clips[123_456], clips[888_888]]
    with pytest.raises(SpatialAudioCapsError, match=r"2 duplicate clip id\(s\)") as err:
        build_plan(clips, placements, PlanConfig(), seed=0)
    assert "big/train/c0123456" in str(err.value) and "big/train/c0888888" in str(err.value)


def _synthetic_plan(n_clips: int, n_rooms: int, seed: int = 0) -> list[PlanItem]:
    """Clips over one placement per room, rooms split 80/10/10 like the default room set; ids
    ``room{r}-{split}-0`` interleave the splits as the real ones do."""
    rng = random.Random(seed)
    rooms = {split: [f"room{r:05d}-{split}-0" for r in range(n_rooms) if _room_split(r) == split]
             for split in ("train", "val", "test")}
    items = []
    for c in range(n_clips):
        split = _room_split(rng.randrange(n_rooms))
        for aug in range(3):
            placement = rng.choice(rooms[split]) if aug else None
            items.append(PlanItem.model_construct(
                key=f"syn-{split}-clip{c:06d}-{aug}", dataset="syn", split=split, clip_id=f"clip{c:06d}",
                aug=aug, placement_id=placement, captions=("x",), audio_uri="/x", small_eval=False, seed=0))
    return items


def _room_split(r: int) -> str:
    return "val" if r % 10 == 3 else "test" if r % 10 == 7 else "train"


def test_shard_plans_are_deterministic_complete_and_hash_ordered_inside():
    items = _synthetic_plan(3000, 4000)
    plans = shard_plans(items, 256)
    shuffled = items[:]
    random.Random(1).shuffle(shuffled)
    assert shard_plans(shuffled, 256) == plans
    keys = [k for p in plans for k in p.sample_keys]
    assert sorted(keys) == sorted(i.key for i in items)
    by_key = {i.key: i for i in items}
    for p in plans:
        assert 0 < len(p.sample_keys) <= 256 and {by_key[k].split for k in p.sample_keys} == {p.split}
        assert list(p.sample_keys) == sorted(p.sample_keys, key=shard_order)
    for split in ("train", "val", "test"):
        indices = [p.index for p in plans if p.split == split]
        assert indices == list(range(len(indices)))


def test_a_clips_original_shares_a_shard_with_its_first_augmentation():
    items = _synthetic_plan(3000, 4000)
    plans = shard_plans(items, 64)
    shard_of = {k: (p.split, p.index) for p in plans for k in p.sample_keys}
    first = {}
    for i in sorted((i for i in items if i.placement_id), key=lambda i: i.placement_id):
        first.setdefault(i.clip_id, i)
    apart = sum(shard_of[i.key] != shard_of[first[i.clip_id].key] for i in items if i.aug == 0)
    # The original sits next to that augmentation in the membership order: only a shard boundary
    # between the two can part them, and each boundary parts at most one clip.
    assert apart <= len(plans) - 3


def _chunks_per_shard(plans, items, chunk: int) -> list[tuple[int, int]]:
    """(distinct placements, distinct bank chunks) per shard, chunks cut from bank_order."""
    chunk_of = {pid: n // chunk for n, pid in enumerate(bank_order(items))}
    placement = {i.key: i.placement_id for i in items}
    out = []
    for p in plans:
        used = {placement[k] for k in p.sample_keys if placement[k]}
        out.append((len(used), len({chunk_of[pid] for pid in used})))
    return out


def test_locality_plans_need_few_rir_bank_chunks_per_shard():
    """20k samples over 10k placements (13.3k spatial samples), chunks of 16: a shard's
    placements are a contiguous run of its split's bank order, so they fall in at most
    placements/16 + 2 chunks; the hash order spreads the same shard size over most of the bank."""
    items = _synthetic_plan(6667, 10_000)
    assert len({i.placement_id for i in items if i.placement_id}) > 7000
    local = _chunks_per_shard(shard_plans(items, 256), items, 16)
    for placements_used, chunks in local:
        assert chunks <= placements_used / 16 + 2
    hashed = _chunks_per_shard(plan_shards(((i.key, i.split, 0) for i in items), max_samples=256), items, 16)
    assert sum(c for _, c in hashed) > 8 * sum(c for _, c in local)


def test_bank_order_groups_splits():
    items = _synthetic_plan(500, 200)
    order = bank_order(items)
    split = {i.placement_id: i.split for i in items if i.placement_id}
    assert sorted(order) == sorted(split) and len(order) == len(set(order))
    runs = [s for n, s in enumerate(split[p] for p in order) if n == 0 or split[order[n - 1]] != s]
    assert runs == ["test", "train", "val"]
