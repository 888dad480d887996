"""One typed job per shard, joined from the build's sample plan, RIR bank, captions and rooms.

A shard task needs its samples, their captions, the RIR-bank chunks that hold their responses and
their rooms; this pure function does those joins, so the flow only maps ``build_shard`` over the
jobs and a plain loop (benchmarks/pipeline.py) runs the very same jobs.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence

from pydantic import BaseModel, ConfigDict

from schemas.audio import AudioPrepConfig
from schemas.captions import RephraseResult, ValidationConfig
from schemas.rooms import RirRecord, RoomSpec
from tasks.plan import PlanItem
from tasks.shard_writer import ShardPlan, plan_shards


class ShardJob(BaseModel):
    """Everything one shard task reads besides storage: the unit the flow maps."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    plan: ShardPlan
    items: list[PlanItem]
    captions: dict[str, RephraseResult]
    chunk_uris: list[str]
    rooms: dict[str, RoomSpec]
    base: str
    provenance: dict[str, str | None]
    audio: AudioPrepConfig
    screening: ValidationConfig


def shard_jobs(
    items: Sequence[PlanItem],
    chunks: Mapping[str, Sequence[RirRecord]],
    captions: Mapping[str, RephraseResult],
    rooms: Mapping[str, RoomSpec],
    *,
    shard_size: int,
    base: str,
    provenance: Mapping[str, str | None],
    audio: AudioPrepConfig,
    screening: ValidationConfig,
) -> list[ShardJob]:
    """Shards planned by count (before rendering), each with only what its own samples need.

    ``chunks`` maps an RIR-bank chunk's URI to its records; a sample whose placement has no record
    (its RIR failed) gets neither chunk nor room, and is rejected when rendered.
    """
    records = {r.placement_id: r for recs in chunks.values() for r in recs}
    chunk_of = {r.placement_id: uri for uri, recs in chunks.items() for r in recs}
    by_key = {i.key: i for i in items}
    jobs = []
    for plan in plan_shards(((i.key, i.split, 0) for i in items), max_samples=shard_size):
        shard_items = [by_key[k] for k in plan.sample_keys]
        placed = [records[i.placement_id] for i in shard_items if i.placement_id in records]
        jobs.append(ShardJob(
            plan=plan, items=shard_items,
            captions={sid: captions[sid] for i in shard_items
                      for sid in (f"{i.key}#{n}" for n in range(len(i.captions))) if sid in captions},
            chunk_uris=sorted({chunk_of[r.placement_id] for r in placed}),
            rooms={r.room_id: rooms[r.room_id] for r in placed},
            base=base, provenance=dict(provenance), audio=audio, screening=screening,
        ))
    return jobs
