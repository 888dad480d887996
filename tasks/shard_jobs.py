"""One typed job per shard: references into the build's tables on storage, never their rows.

A shard task needs its samples, their captions, the RIR-bank chunks that hold their responses and
their rooms. At paper scale none of that may pass through the flow process (890k samples), so a
job names where each lives and which rows are its own: the plan's rows ``[start, stop)`` in
``plan.parquet``, the caption stage's rows ``requests`` in ``results.parquet``, the chunk URIs its
placements need, and ``rooms.parquet``. The pure joins that compute those ranges live here, so the
flow and a plain loop (benchmarks/pipeline.py) run the very same jobs.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence

from pydantic import BaseModel, ConfigDict, Field

from schemas.audio import AudioPrepConfig
from schemas.captions import ValidationConfig
from tasks.plan import PlanItem, rir_ids
from tasks.shard_writer import ShardPlan


class ShardRef(BaseModel):
    """A shard of the plan: its name's parts and its rows ``[start, stop)`` of plan.parquet."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    split: str
    index: int = Field(ge=0)
    start: int = Field(ge=0)
    stop: int = Field(ge=0)

    def plan(self, keys: Iterable[str]) -> ShardPlan:
        """The shard's plan, given its sample keys (its rows' ``key``)."""
        return ShardPlan(split=self.split, index=self.index, sample_keys=tuple(keys))


class ShardInputs(BaseModel):
    """What the caption-request join found for one shard: its request rows and RIR-bank chunks."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    requests: tuple[int, int] = Field(description="rows [start, stop) of the caption stage's tables")
    chunk_uris: list[str]


class ShardJob(BaseModel):
    """Everything one shard task needs, by reference: the unit the flow submits."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    ref: ShardRef
    inputs: ShardInputs
    plan_uri: str
    stage_uri: str
    rooms_uri: str
    base: str
    provenance: dict[str, str | None]
    audio: AudioPrepConfig
    formats: tuple[str, ...] = Field(description="spatial output formats, the .flac's first (BuildConfig)")
    screening: ValidationConfig
    rir_cache_mib: int


def shard_refs(plans: Sequence[ShardPlan]) -> list[ShardRef]:
    """Row ranges of the plans, when plan.parquet holds their keys back to back in this order."""
    refs, start = [], 0
    for p in plans:
        refs.append(ShardRef(split=p.split, index=p.index, start=start, stop=start + len(p.sample_keys)))
        start += len(p.sample_keys)
    return refs


def request_ids(item: PlanItem) -> list[str]:
    """The caption requests of a sample: one per original caption, spatial samples only."""
    return [f"{item.key}#{n}" for n in range(len(item.captions))] if item.placement_id else []


def shard_inputs(
    items: Iterable[PlanItem], placed: Mapping[str, str], first_request: int
) -> tuple[ShardInputs, list[PlanItem]]:
    """One shard's inputs and its items that get caption requests (in request order).

    ``placed`` maps each placement with an RIR to its chunk's URI; a sample with a placement (or, in
    a scene, any trajectory point) without an RIR (it failed) gets no requests and no chunk, and is
    rejected when rendered.
    """
    requested = [i for i in items if i.placement_id is not None and all(p in placed for p in rir_ids(i))]
    n = sum(len(request_ids(i)) for i in requested)
    chunks = sorted({placed[p] for i in requested for p in rir_ids(i)})
    return ShardInputs(requests=(first_request, first_request + n), chunk_uris=chunks), requested

