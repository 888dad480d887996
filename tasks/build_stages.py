"""The build's stages as plain functions over storage: what each Prefect task of the flow runs.

Every per-sample table lives on storage, not in the flow process: the plan task writes
plan.parquet (in shard order), the caption join writes the stage's requests in the same order and
returns each shard's row ranges and chunks, and a shard task reads only its own rows. What comes
back to the flow is O(shards) and O(room set): shard references, chunk URIs, ShardStats.

Each stage is idempotent and content-addressed, so a rerun after a crash redoes only what is
missing: RIR-bank chunks are named by the hash of what they depend on, rephrased captions live
in the caption stage's content-keyed cache (tasks.caption_stage), and a shard goes through the
commit protocol of tasks.commit: skipped on a verified receipt, else built, uploaded, verified
and only then given its receipt.
"""

from __future__ import annotations

import functools
import io
import itertools
import json
import time
from collections.abc import Iterator

from pydantic import BaseModel, ConfigDict, Field

from schemas.build import BuildConfig, RunOptions, ShardStats
from schemas.captions import (
    CaptionSettings,
    Descriptors,
    RephraseRequest,
    RephraseResult,
    RephraseSettings,
    SpatialAttributes,
    ValidationConfig,
)
from schemas.rooms import Placement, RirRecord, RirSettings, Room
from schemas.shards import CaptionInfo, Provenance, RejectRow
from spatial_audiocaps import __version__
from tasks.caption_stage import read_results, run_stage_worker, stage_uri, write_results, write_stage
from tasks.commit import (
    commit_shard,
    config_hash,
    dataset_uri,
    dataset_version,
    finalize_dataset,
    put_rejects,
    rejects_part,
    verified_receipt,
)
from tasks.dataset_card import BUILD_JSON, PLACEMENTS, ROOMS, write_card
from tasks.descriptors import describe
from tasks.plan import PlanConfig, PlanItem, bank_order, build_plan, rir_ids, shard_plans
from tasks.plan_table import PLAN, iter_plan, iter_plan_keys, read_plan, write_plan
from tasks.prompting import CaptionRejected, screen_caption
from tasks.render import RenderedSample, render_items
from tasks.renderers import check_formats
from tasks.rir_bank import BankReject, bank_cache, bank_key, pack_chunk, render_chunk
from tasks.rir_engine import ENGINE_VERSION
from tasks.rir_sources import DEFAULT_RIR_SOURCE, rir_source
from tasks.room_sampling import (
    parquet_bytes,
    placements_table,
    read_placements,
    read_rooms,
    rooms_table,
)
from tasks.scene_captions import motion_words, source_words
from tasks.scene_labels import source_labels
from tasks.scene_plan import plan_scenes
from tasks.shard_jobs import ShardInputs, ShardJob, ShardRef, request_ids, shard_inputs, shard_refs
from tasks.shard_writer import SampleRejected, ShardSample, build_sample, labels_from_rir, plan_shards
from tasks.sources import read_source
from tasks.storage import join_uri, open_storage


class BankChunk(BaseModel):
    """Where one chunk of the RIR bank lives, which placements it holds, and how many failed."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    uri: str
    placement_ids: list[str]
    n_rejects: int
    cached: bool
    cpu_s: float = Field(description="CPU seconds spent rendering it here (0 when it was cached)")


class PlanSummary(BaseModel):
    """What the plan task leaves the flow: shard references and the placements to render, never
    the samples (those are in plan.parquet)."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    plan_uri: str
    shards: list[ShardRef]
    placements: list[str] = Field(description="placement ids the plan uses, in the RIR bank's order "
                                  "(tasks.plan.bank_order: the order locality membership follows)")
    n_source_rejects: int
    scene_placements_uri: str | None = Field(
        None, description="scene builds: the placements the scenes added (trajectory points, further "
        "sources), a placements table beside plan.parquet",
    )


def write_room_set(
    base: str, cfg: BuildConfig, rooms: list[Room], placements: list[Placement], room_hash: str
) -> str:
    """rooms.parquet, placements.parquet and build.json in the version directory; returns the
    rooms' URI (the shard tasks read their rooms from it)."""
    storage = open_storage(base)
    rooms_uri = join_uri(base, ROOMS)
    storage.put_bytes(rooms_uri, parquet_bytes(rooms_table(rooms, room_hash)))
    storage.put_bytes(join_uri(base, PLACEMENTS),
                      parquet_bytes(placements_table(placements, room_hash)))
    storage.put_bytes(join_uri(base, BUILD_JSON), json.dumps(cfg.versioned(), indent=1).encode())
    return rooms_uri


def bank_jobs(
    used: list[str], rooms: list[Room], placements: list[Placement], chunk: int
) -> list[tuple[dict[str, Room], list[Placement]]]:
    """The RIR bank's chunks: ``chunk`` consecutive placement ids of ``used`` (in bank order, which
    shard membership follows), each with its rooms."""
    rooms_by_id = {r.room_id: r for r in rooms}
    by_id = {p.placement_id: p for p in placements}
    return [({by_id[p].room_id: rooms_by_id[by_id[p].room_id] for p in part}, [by_id[p] for p in part])
            for part in (used[i : i + chunk] for i in range(0, len(used), chunk))]


def records_uri(chunk_uri: str) -> str:
    """The chunk's records beside it: what the caption join reads without the RIRs (and the
    marker of a finished chunk: written last)."""
    return chunk_uri.removesuffix(".npz") + ".records.json"


def rir_chunk(
    rooms: dict[str, Room], placements: list[Placement], settings: RirSettings, bank_dir: str, base: str,
    source: str = DEFAULT_RIR_SOURCE,
) -> BankChunk:
    """Render (or find) one chunk of the RIR bank under ``bank_dir/chunk-<content hash>.npz``.

    Its rejects go to a reject part first, the chunk next, its records last, so a chunk whose
    records exist is whole and its rejects are already on record.
    """
    storage = open_storage(bank_dir)
    needed = [rooms[p.room_id] for p in placements]
    uri = join_uri(bank_dir, f"chunk-{bank_key(needed, placements, settings, source)}.npz")
    if storage.exists(records_uri(uri)):
        records, rejects = _chunk_records(uri)
        return BankChunk(uri=uri, placement_ids=[r.placement_id for r in records], n_rejects=len(rejects),
                         cached=True, cpu_s=0.0)
    cpu = time.process_time()
    rirs, records, rejects = render_chunk(rooms, placements, settings, source)
    cpu = time.process_time() - cpu
    put_rejects(storage, base, f"rir-{uri.rsplit('/', 1)[-1].removesuffix('.npz')}", [
        RejectRow(stage="rir", reason="rir_failed", detail=f"{r.reason}: {r.detail}", source=r.placement_id)
        for r in rejects])
    storage.put_bytes(uri, pack_chunk(rirs, records, rejects))
    meta = {"records": [r.model_dump(mode="json") for r in records],
            "rejects": [r.model_dump(mode="json") for r in rejects]}
    storage.put_bytes(records_uri(uri), json.dumps(meta).encode(), content_type="application/json")
    return BankChunk(uri=uri, placement_ids=[r.placement_id for r in records], n_rejects=len(rejects),
                     cached=False, cpu_s=round(cpu, 4))


def _chunk_records(uri: str) -> tuple[list[RirRecord], list[BankReject]]:
    meta = json.loads(open_storage(uri).read_bytes(records_uri(uri)))
    return ([RirRecord.model_validate(r) for r in meta["records"]],
            [BankReject.model_validate(r) for r in meta["rejects"]])


def plan_stage(cfg: BuildConfig, placements: list[Placement], base: str) -> PlanSummary:
    """Read the source, plan every sample, order them into shards, and write plan.parquet.

    Shard membership is ``cfg.shard_membership``: mixed (sha256 of the key, the default) or
    following the RIR bank (tasks.plan.shard_plans); the source's rejects go to their reject part.
    """
    check_formats(cfg.formats)
    clips, source_rejects = read_source(cfg.source, cfg.input, limit=cfg.limit, seed=cfg.seed)
    items = build_plan(clips, placements, PlanConfig(augmentations=cfg.augmentations), cfg.seed)
    del clips
    storage = open_storage(base)
    put_rejects(storage, base, "source", [
        RejectRow(stage=r.stage, reason=r.reason, detail=r.detail, source=r.clip_id, dataset=r.dataset)
        for r in source_rejects])
    scene_uri = None
    if cfg.scenes is not None:
        items, scene_uri = _plan_scenes(items, placements, cfg, base)
    plans = (shard_plans(items, cfg.shard_size) if cfg.shard_membership == "locality"
             else plan_shards(((i.key, i.split, 0) for i in items), max_samples=cfg.shard_size))
    by_key = {i.key: i for i in items}
    uri = join_uri(base, PLAN)
    write_plan((by_key[k] for p in plans for k in p.sample_keys), uri)
    return PlanSummary(plan_uri=uri, shards=shard_refs(plans), placements=bank_order(items),
                       n_source_rejects=len(source_rejects), scene_placements_uri=scene_uri)


def _plan_scenes(
    items: list[PlanItem], placements: list[Placement], cfg: BuildConfig, base: str
) -> tuple[list[PlanItem], str]:
    """Draw every spatial sample's scene (tasks.scene_plan); the placements the scenes add go to
    ``scene_placements.parquet``, samples whose room cannot hold their scene to a reject part."""
    assert cfg.scenes is not None
    rooms = read_rooms_of(join_uri(base, ROOMS))
    by_id = {p.placement_id: p for p in placements}
    items, extra, rejects = plan_scenes(items, by_id, rooms, cfg.scenes, cfg.seed)
    storage = open_storage(base)
    put_rejects(storage, base, "scene", [
        RejectRow(stage="plan", reason="scene_unplaceable", detail=r.detail[:300], key=r.item.key,
                  source=r.item.clip_id, dataset=r.item.dataset, split=r.item.split) for r in rejects])
    uri = join_uri(base, "scene_placements.parquet")
    room_hash = placements[0].room_set_hash if placements else ""
    storage.put_bytes(uri, parquet_bytes(placements_table(extra, room_hash)))
    return items, uri


def bank_placements(summary: PlanSummary, placements: list[Placement]) -> list[Placement]:
    """The placements the RIR bank may be asked for: the room set's, plus the scenes' own."""
    if summary.scene_placements_uri is None:
        return placements
    uri = summary.scene_placements_uri
    return [*placements, *read_placements(io.BytesIO(open_storage(uri).read_bytes(uri)))]


@functools.lru_cache(maxsize=4)
def read_rooms_of(uri: str) -> dict[str, Room]:
    """rooms.parquet by room id, read once per process (a version's rooms never change); callers
    must not modify it."""
    return {r.room_id: r for r in read_rooms(io.BytesIO(open_storage(uri).read_bytes(uri)))}


def descriptors_of(rec: RirRecord, rooms: dict[str, Room]) -> Descriptors:
    """The words of a sample's measured labels (DESIGN.md's table)."""
    return describe(SpatialAttributes(
        azimuth_deg=rec.azimuth_deg, elevation_deg=rec.elevation_deg, distance_m=rec.distance_m,
        floor_area_m2=rooms[rec.room_id].floor_area_m2, t30_s=rec.t30_s,
    ))


def _requests(item: PlanItem, rec: RirRecord, rooms: dict[str, Room]) -> list[RephraseRequest]:
    """One request per original caption of a spatial sample, with its measured descriptors.

    A scene's request binds every source's sound to its own words (its start's place and its
    motion): its caption n is source 0's caption n with each further source's caption n (cycled),
    and its own descriptors are the room's alone (reverb, size), which all sources share.
    """
    descriptors = descriptors_of(rec, rooms)
    pairs = zip(request_ids(item), item.captions, strict=True)
    if item.scene is None:
        return [RephraseRequest(sample_id=sid, caption=caption, descriptors=descriptors, seed=item.seed)
                for sid, caption in pairs]
    room = Descriptors(reverb=descriptors.reverb, size=descriptors.size)
    first, *others = item.scene.sources
    return [RephraseRequest(
        sample_id=sid, caption=caption, descriptors=room, seed=item.seed,
        scene=[source_words(first, caption),
               *(source_words(s, s.captions[n % len(s.captions)]) for s in others)],
    ) for n, (sid, caption) in enumerate(pairs)]


def _shards_of(summary: PlanSummary) -> Iterator[tuple[ShardRef, list[PlanItem]]]:
    """Each shard with its items, reading plan.parquet once, front to back."""
    rows = iter_plan(summary.plan_uri)
    for ref in summary.shards:
        yield ref, list(itertools.islice(rows, ref.stop - ref.start))


def caption_join(
    summary: PlanSummary, chunk_uris: list[str], rooms_uri: str, stage: str, settings: RephraseSettings,
    batch_size: int,
) -> list[ShardInputs]:
    """Write the caption stage's requests in shard order, and say where each shard's inputs are.

    Reads the plan once and the bank's records (not its RIRs), so its memory grows with the room
    set, not the dataset; the requests stream into the stage's table.
    """
    records: dict[str, RirRecord] = {}
    placed: dict[str, str] = {}
    for uri in chunk_uris:
        for rec in _chunk_records(uri)[0]:
            records[rec.placement_id], placed[rec.placement_id] = rec, uri
    rooms = read_rooms_of(rooms_uri)
    inputs: list[ShardInputs] = []

    def requests() -> Iterator[RephraseRequest]:
        for _, items in _shards_of(summary):
            got, requested = shard_inputs(items, placed, inputs[-1].requests[1] if inputs else 0)
            inputs.append(got)
            for item in requested:
                yield from _requests(item, records[rir_ids(item)[0]], rooms)

    write_stage(requests(), settings, stage, batch_size)
    return inputs


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
            hard_negative=res.hard_negative,
        ))
    return infos, rejected


def build_shard(job: ShardJob) -> ShardStats:
    """Render, pack, upload and verify one shard, then leave its receipt; skip it if verified.

    Everything comes by reference: its items from plan.parquet, its captions from the stage's
    results, its RIRs through this process's bank cache (a chunk is read once per worker while it
    stays cached). Its rejects are put before its receipt, so a skipped shard's are on record.
    """
    items = read_plan(job.plan_uri, job.ref.start, job.ref.stop)
    plan = job.ref.plan(i.key for i in items)
    storage = open_storage(job.base)
    listed = verified_receipt(storage, job.base, plan)
    if listed is not None:
        return ShardStats(shard=plan.name, outcome="skipped", samples=len(listed), rejects=0,
                          render_cpu_s=0.0, bank_bytes_read=0, bank_bytes_used=0)
    first, stop = job.inputs.requests
    captions = {r.sample_id: r for r in read_results(job.stage_uri, first, stop)} if stop > first else {}
    rooms = read_rooms_of(job.rooms_uri)
    bank = bank_cache(job.rir_cache_mib)
    read_before, used_before = bank.bytes_read, bank.bytes_used
    rirs, records = bank.get(job.inputs.chunk_uris, {p for i in items for p in rir_ids(i)})
    bank_read, bank_used = bank.bytes_read - read_before, bank.bytes_used - used_before
    cpu = time.process_time()
    rendered, render_rejects = render_items(items, rirs, records, job.audio, job.formats[0], job.formats[1:])
    cpu = time.process_time() - cpu
    rejects = [RejectRow(stage="render", reason=r.reason, detail=r.detail, key=r.key, source=r.clip_id,
                         dataset=r.dataset) for r in render_rejects]
    samples: dict[str, ShardSample] = {}
    for done in rendered:
        sample = _sample(done, captions, rooms, job, rejects)
        if sample is not None:
            samples[sample.key] = sample
    put_rejects(storage, job.base, rejects_part(plan.name), rejects)
    committed = commit_shard(storage, job.base, plan, samples)
    return ShardStats(shard=plan.name, outcome=committed.outcome, samples=len(samples), rejects=len(rejects),
                      render_cpu_s=round(cpu, 4), bank_bytes_read=bank_read, bank_bytes_used=bank_used)


def _sample(
    done: RenderedSample, captions: dict[str, RephraseResult], rooms: dict[str, Room], job: ShardJob,
    rejects: list[RejectRow],
) -> ShardSample | None:
    """A rendered sample with its captions and labels, or None with its reason added to ``rejects``."""
    item = done.item
    infos, caption_rejects = _caption_infos(item, captions, job.screening)
    if not infos:
        reason = caption_rejects[0] if caption_rejects else "no_caption"
        rejects.append(RejectRow(stage="caption", reason=reason,
                                 detail=f"no usable caption among {len(item.captions)}", key=item.key,
                                 source=item.clip_id, dataset=item.dataset, split=item.split))
        return None
    prov = Provenance(source_id=item.clip_id, seed=item.seed, prepared=done.prepared,
                      rendered=done.rendered, **job.provenance)  # type: ignore[arg-type]
    room = rooms[done.rir.room_id] if done.rir else None
    sources = None
    if item.scene is not None and done.scene is not None:
        sources = source_labels(item.scene, done.scene.activity, done.scene.gains_db,
                                [motion_words(s.points) for s in item.scene.sources])
    try:
        return build_sample(
            done.flac, dataset=item.dataset, split=item.split, clip_id=item.clip_id, aug=item.aug,
            captions=infos, provenance=prov,
            labels=labels_from_rir(done.rir, room) if done.rir and room else None,
            descriptors=descriptors_of(done.rir, rooms) if done.rir else None,
            audio_format=done.format, sources=sources, formats=done.extra,
            scene_order=done.rir.order if done.rir else None,
        )
    except SampleRejected as exc:
        rejects.append(RejectRow(stage="shard", reason=exc.reason, detail=exc.detail, key=item.key,
                                 source=item.clip_id, dataset=item.dataset, split=item.split))
        return None


def finalize_stage(summary: PlanSummary, base: str, meta: dict[str, str]) -> tuple[str, int]:
    """The manifest, sizes, rejects and card from every shard's receipt and every reject part;
    returns the card's README URI and the number of rejects."""
    storage = open_storage(base)
    keys = iter_plan_keys(summary.plan_uri)  # the key column alone: no sample (or scene) is parsed
    plans = [ref.plan(itertools.islice(keys, ref.stop - ref.start)) for ref in summary.shards]
    _, n_rejects = finalize_dataset(storage, base, plans, meta)
    write_card(base, storage=storage)
    return join_uri(base, "README.md"), n_rejects


def build_in_process(cfg: BuildConfig, output: str, run: RunOptions | None = None) -> str:
    """The flow's stages as a plain loop in this process: the same functions on the same inputs
    (room set, plan, RIR chunks, caption join, one caption-stage worker, typed shard jobs, finalize
    and card), with no Prefect, Dask or retries; returns the version's URI. Its version and samples
    equal the flow's (tests and benchmarks/pipeline.py's baseline run it)."""
    run = run or RunOptions()
    dataset = cfg.dataset or cfg.source
    rooms, placements, room_hash = rir_source(cfg.room_source).room_set(cfg)
    cfg_hash = config_hash(cfg.versioned())
    base = dataset_uri(output, dataset, dataset_version(room_hash, cfg_hash))
    rooms_uri = write_room_set(base, cfg, rooms, placements, room_hash)
    summary = plan_stage(cfg, placements, base)
    chunks = [rir_chunk(*job, cfg.rir, join_uri(base, "rirs"), base, cfg.room_source) for job in
              bank_jobs(summary.placements, rooms, bank_placements(summary, placements), run.rir_chunk)]
    stage = stage_uri(base)
    inputs = caption_join(summary, [c.uri for c in chunks], rooms_uri, stage,
                          RephraseSettings.of(cfg.rephraser, run.engine), run.caption_batch)
    run_stage_worker(stage)
    write_results(stage)
    for job in shard_jobs(summary, inputs, cfg=cfg, rir_cache_mib=run.rir_cache_mib, stage=stage,
                          rooms_uri=rooms_uri, base=base, room_hash=room_hash, cfg_hash=cfg_hash):
        build_shard(job)
    meta = {"dataset": dataset, "version": base.rstrip("/").rsplit("/", 1)[-1], "room_set_hash": room_hash,
            "config_hash": cfg_hash}
    finalize_stage(summary, base, meta)
    return base


def shard_jobs(
    summary: PlanSummary, inputs: list[ShardInputs], *, cfg: BuildConfig, rir_cache_mib: int, stage: str,
    rooms_uri: str, base: str, room_hash: str, cfg_hash: str,
) -> list[ShardJob]:
    """One job per shard of the plan, joined with what the caption join found for it."""
    common = {
        "plan_uri": summary.plan_uri, "stage_uri": stage, "rooms_uri": rooms_uri, "base": base,
        "provenance": provenance_fields(room_hash, cfg_hash, cfg.rephraser, cfg.dataset or cfg.source),
        "audio": cfg.audio, "formats": cfg.formats, "screening": cfg.rephraser.validation,
        "rir_cache_mib": rir_cache_mib,
    }
    return [ShardJob(ref=ref, inputs=got, **common)  # type: ignore[arg-type]
            for ref, got in zip(summary.shards, inputs, strict=True)]


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


