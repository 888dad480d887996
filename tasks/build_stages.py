"""The build's stages as plain functions over storage: what each Prefect task of the flow runs.

Each stage is idempotent and content-addressed, so a rerun after a crash redoes only what is
missing: RIR-bank chunks are named by the hash of what they depend on, rephrased captions live
in the caption stage's content-keyed cache (tasks.caption_stage), and a shard goes through the
commit protocol of tasks.commit: skipped on a verified receipt, else built, uploaded, verified
and only then given its receipt.
"""

from __future__ import annotations

from collections.abc import Sequence

from pydantic import BaseModel, ConfigDict

from schemas.captions import (
    CaptionSettings,
    Descriptors,
    RephraseRequest,
    RephraseResult,
    SpatialAttributes,
    ValidationConfig,
)
from schemas.rooms import Placement, RirRecord, RirSettings, RoomSpec
from schemas.shards import CaptionInfo, ManifestRow, Provenance, RejectRow
from spatial_audiocaps import __version__
from tasks.commit import commit_shard, verified_receipt
from tasks.descriptors import describe
from tasks.plan import PlanItem
from tasks.prompting import CaptionRejected, screen_caption
from tasks.render import render_items
from tasks.rir_bank import BankReject, bank_key, pack_chunk, render_chunk, unpack_chunk
from tasks.rir_engine import ENGINE_VERSION
from tasks.shard_jobs import ShardJob
from tasks.shard_writer import SampleRejected, ShardSample, build_sample, labels_from_rir
from tasks.storage import join_uri, open_storage


class BankChunk(BaseModel):
    """Where one chunk of the RIR bank lives and what it measured."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    uri: str
    records: list[RirRecord]
    rejects: list[BankReject]
    cached: bool


class ShardOutcome(BaseModel):
    """What one shard task did: skipped (receipt verified), uploaded, adopted, or empty."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    shard: str
    outcome: str
    rows: list[ManifestRow]
    rejects: list[RejectRow]


def rir_chunk(
    rooms: dict[str, RoomSpec], placements: list[Placement], settings: RirSettings, bank_dir: str
) -> BankChunk:
    """Render (or find) one chunk of the RIR bank under ``bank_dir/chunk-<content hash>.npz``."""
    storage = open_storage(bank_dir)
    needed = [rooms[p.room_id] for p in placements]
    uri = join_uri(bank_dir, f"chunk-{bank_key(needed, placements, settings)}.npz")
    if storage.exists(uri):
        _, records, rejects = unpack_chunk(storage.read_bytes(uri))
        return BankChunk(uri=uri, records=records, rejects=rejects, cached=True)
    rirs, records, rejects = render_chunk(rooms, placements, settings)
    storage.put_bytes(uri, pack_chunk(rirs, records, rejects))
    return BankChunk(uri=uri, records=records, rejects=rejects, cached=False)


def descriptors_of(rec: RirRecord, rooms: dict[str, RoomSpec]) -> Descriptors:
    """The words of a sample's measured labels (DESIGN.md's table)."""
    return describe(SpatialAttributes(
        azimuth_deg=rec.azimuth_deg, elevation_deg=rec.elevation_deg, distance_m=rec.distance_m,
        floor_area_m2=rooms[rec.room_id].floor_area_m2, t30_s=rec.t30_s,
    ))


def caption_requests(
    items: Sequence[PlanItem], records: dict[str, RirRecord], rooms: dict[str, RoomSpec]
) -> list[RephraseRequest]:
    """One request per original caption of every spatial sample, with its measured descriptors."""
    requests = []
    for item in items:
        if item.placement_id is None or item.placement_id not in records:
            continue
        descriptors = descriptors_of(records[item.placement_id], rooms)
        requests += [
            RephraseRequest(
                sample_id=f"{item.key}#{i}", caption=caption, descriptors=descriptors, seed=item.seed
            )
            for i, caption in enumerate(item.captions)
        ]
    return requests


def _caption_infos(
    item: PlanItem, captions: dict[str, RephraseResult], screening: ValidationConfig
) -> tuple[list[CaptionInfo], list[str]]:
    """Caption records of a sample and the reasons of captions that were rejected."""
    infos: list[CaptionInfo] = []
    rejected: list[str] = []
    for i, original in enumerate(item.captions):
        if item.placement_id is None:
            # The mono original keeps its caption, screened like any caption that would be rephrased.
            try:
                text = screen_caption(original, screening)
            except CaptionRejected as exc:
                rejected.append(exc.reason.value)
                continue
            infos.append(CaptionInfo(original=original, spatial=text, backend="none", attempts=0,
                                     validated=True, fallback=False))
            continue
        res = captions.get(f"{item.key}#{i}")
        if res is None or res.caption is None:
            rejected.append(res.reject_reason.value if res and res.reject_reason else "caption_missing")
            continue
        flags = res.validation
        infos.append(CaptionInfo(
            original=original, spatial=res.caption, backend=res.backend, model=res.model,
            attempts=res.attempts, validated=bool(flags and flags.passed), fallback=res.status == "fallback",
            failed_checks=[f.value for f in flags.flaws] if flags else [],
            attempt_flaws=[[f.value for f in attempt] for attempt in res.attempt_flaws],
        ))
    return infos, rejected


def build_shard(job: ShardJob) -> ShardOutcome:
    """Render, pack, upload and verify one shard, then leave its receipt; skip it if verified."""
    plan, items, captions, rooms, base = job.plan, job.items, job.captions, job.rooms, job.base
    chunk_uris, provenance, audio_cfg, screening = job.chunk_uris, job.provenance, job.audio, job.screening
    storage = open_storage(base)
    listed = verified_receipt(storage, base, plan)
    if listed is not None:
        return ShardOutcome(shard=plan.name, outcome="skipped", rows=listed, rejects=[])
    rirs, records = {}, {}
    for uri in chunk_uris:
        chunk_rirs, chunk_records, _ = unpack_chunk(open_storage(uri).read_bytes(uri))
        rirs.update(chunk_rirs)
        records.update({r.placement_id: r for r in chunk_records})
    rendered, render_rejects = render_items(items, rirs, records, audio_cfg)
    rejects = [RejectRow(stage="render", reason=r.reason, detail=r.detail, key=r.key, source=r.clip_id,
                         dataset=r.dataset) for r in render_rejects]
    samples: dict[str, ShardSample] = {}
    for done in rendered:
        item = done.item
        infos, caption_rejects = _caption_infos(item, captions, screening)
        if not infos:
            reason = caption_rejects[0] if caption_rejects else "no_caption"
            rejects.append(RejectRow(stage="caption", reason=reason,
                                     detail=f"no usable caption among {len(item.captions)}", key=item.key,
                                     source=item.clip_id, dataset=item.dataset, split=item.split))
            continue
        prov = Provenance(source_id=item.clip_id, seed=item.seed, prepared=done.prepared,
                          rendered=done.rendered, **provenance)  # type: ignore[arg-type]
        room = rooms[done.rir.room_id] if done.rir else None
        try:
            sample = build_sample(
                done.flac, dataset=item.dataset, split=item.split, clip_id=item.clip_id, aug=item.aug,
                captions=infos, provenance=prov,
                labels=labels_from_rir(done.rir, room) if done.rir and room else None,
                descriptors=descriptors_of(done.rir, rooms) if done.rir else None,
                audio_format=done.format,
            )
        except SampleRejected as exc:
            rejects.append(RejectRow(stage="shard", reason=exc.reason, detail=exc.detail, key=item.key,
                                     source=item.clip_id, dataset=item.dataset, split=item.split))
            continue
        samples[sample.key] = sample
    committed = commit_shard(storage, base, plan, samples)
    return ShardOutcome(shard=plan.name, outcome=committed.outcome, rows=committed.rows, rejects=rejects)


def provenance_fields(
    room_set_hash: str, config_hash: str, settings: CaptionSettings, dataset: str
) -> dict[str, str | None]:
    """Provenance shared by every sample of a build (no secrets: parameters only)."""
    return {
        "source_dataset": dataset, "room_set_hash": room_set_hash, "config_hash": config_hash,
        "pipeline_version": __version__, "engine_version": ENGINE_VERSION,
        "rephraser_backend": settings.backend,
        "rephraser_model": None if settings.backend == "template" else settings.model,
    }


