"""The ``build-spatial-dataset`` flow: rooms -> placements -> RIR bank -> plan -> captions ∥
render -> shards -> manifest -> card. Wiring only: every step is a function in tasks/.

CPU stages fan out one Prefect task per RIR-bank chunk or shard (never per sample) on a Dask
task runner: a LocalCluster by default, or an existing scheduler's address. The flow's parameters
are the build's two models (schemas.build): ``config`` names the version, ``run`` only says how
to run it.
"""

from __future__ import annotations

import json
import os
import sys
import time
from collections import Counter
from typing import Any

import dask
from prefect import flow, get_client, get_run_logger, task
from prefect.artifacts import create_markdown_artifact, create_table_artifact
from prefect.cache_policies import NO_CACHE
from prefect.deployments import run_deployment
from prefect.futures import PrefectFuture, as_completed
from prefect.tasks import exponential_backoff
from prefect_dask import DaskTaskRunner
from tqdm import tqdm

from schemas.build import BuildConfig, BuildResult, RunOptions
from schemas.caption_stage import StageWorkerReport
from schemas.captions import RephraseSettings
from schemas.rooms import RirSettings
from schemas.shards import RejectRow
from tasks import build_stages
from tasks.caption_stage import (
    StageIncomplete,
    collect_results,
    run_stage_worker,
    stage_uri,
    write_stage,
)
from tasks.commit import (
    config_hash,
    dataset_uri,
    dataset_version,
    finalize_dataset,
)
from tasks.dataset_card import write_card
from tasks.plan import PlanConfig, build_plan
from tasks.room_sampling import (
    load_config,
    parquet_bytes,
    placements_table,
    rooms_table,
    sample_room_set,
)
from tasks.shard_jobs import ShardJob, shard_jobs
from tasks.sources import read_source
from tasks.storage import install_log_redaction, join_uri, open_storage, safe_uri

IO_RETRIES = {"retries": 3, "retry_delay_seconds": exponential_backoff(backoff_factor=2)}


@task(name="sample-rooms", cache_policy=NO_CACHE, **IO_RETRIES)
def sample_rooms_task(cfg: BuildConfig) -> tuple[list, list, str]:
    return sample_room_set(load_config(cfg.room_config), cfg.room_seed, cfg.n_rooms)


@task(name="read-source", cache_policy=NO_CACHE)
def read_source_task(cfg: BuildConfig) -> tuple[list, list]:
    return read_source(cfg.source, cfg.input, limit=cfg.limit, seed=cfg.seed)


@task(name="rir-bank-chunk", cache_policy=NO_CACHE, **IO_RETRIES)
def rir_chunk_task(
    rooms: dict, placements: list, settings: RirSettings, bank_dir: str
) -> build_stages.BankChunk:
    return build_stages.rir_chunk(rooms, placements, settings, bank_dir)


@task(name="caption-stage-worker", cache_policy=NO_CACHE, **IO_RETRIES)
def caption_worker_task(stage: str, worker: int, workers: int) -> StageWorkerReport:
    return run_stage_worker(stage, worker, workers)


@task(name="build-shard", cache_policy=NO_CACHE, **IO_RETRIES)
def shard_task(job: ShardJob) -> build_stages.ShardOutcome:
    return build_stages.build_shard(job)


@task(name="finalize", cache_policy=NO_CACHE, **IO_RETRIES)
def finalize_task(base: str, rows: list, rejects: list[RejectRow], meta: dict[str, str]) -> str:
    storage = open_storage(base)
    finalize_dataset(storage, base, rows, rejects, meta)
    write_card(base, storage=storage)
    return join_uri(base, "README.md")


def _chunks(seq: list, n: int) -> list[list]:
    return [seq[i : i + n] for i in range(0, len(seq), n)]


def _rephrase_tags(cfg: BuildConfig) -> list[str]:
    return ["gpu"] if cfg.rephraser.backend in ("vllm", "transformers") else []


def run_stage_deployment(name: str, stage: str, workers: int, timeout_s: float) -> list[str]:
    """Start one ``rephrase-captions`` run per stage worker on the GPU pool and wait for all of them.

    Any run that does not complete fails the build with its state: captions are never made some
    other way behind the user's back. Returns the child flow-run ids.
    """
    runs = [run_deployment(name, parameters={"stage": stage, "worker": k, "workers": workers}, timeout=0)
            for k in range(workers)]
    deadline = time.monotonic() + timeout_s
    with get_client(sync_client=True) as client:
        while True:
            states = [client.read_flow_run(r.id).state for r in runs]
            if all(s is not None and s.is_final() for s in states):
                break
            if time.monotonic() > deadline:
                raise StageIncomplete(f"{name}: caption stage not finished after {timeout_s:.0f} s")
            time.sleep(2.0)
    failed = [f"{r.name}: {s.name} {s.message or ''}".strip() for r, s in zip(runs, states, strict=True)
              if not s.is_completed()]
    if failed:
        raise StageIncomplete(f"{name}: caption stage runs did not complete: {'; '.join(failed)}")
    return [str(r.id) for r in runs]


def gather(futures: list[PrefectFuture], stage: str, progress: bool) -> list[Any]:
    """Results in submission order; with ``progress``, a bar on stderr as tasks finish (CLI runs)."""
    if progress and futures:
        with tqdm(total=len(futures), desc=stage, unit="task", file=sys.stderr) as bar:
            for _ in as_completed(futures):
                bar.update()
    return [f.result() for f in futures]


def run_build(cfg: BuildConfig, run: RunOptions, output: str) -> BuildResult:
    """The body of the flow: each stage a task on the task runner, small ones in this process."""
    log = get_run_logger()
    install_log_redaction()
    dataset = cfg.dataset or cfg.source
    rooms, placements, room_hash = sample_rooms_task(cfg)
    cfg_hash = config_hash(cfg.versioned())
    version = dataset_version(room_hash, cfg_hash)
    base = dataset_uri(output, dataset, version)
    storage = open_storage(base)
    storage.put_bytes(join_uri(base, "rooms.parquet"), parquet_bytes(rooms_table(rooms, room_hash)))
    storage.put_bytes(
        join_uri(base, "placements.parquet"), parquet_bytes(placements_table(placements, room_hash))
    )
    storage.put_bytes(join_uri(base, "build.json"), json.dumps(cfg.versioned(), indent=1).encode())
    log.info("dataset %s version %s at %s (room set %s)", dataset, version, safe_uri(base), room_hash)

    clips, source_rejects = read_source_task(cfg)
    items = build_plan(clips, placements, PlanConfig(augmentations=cfg.augmentations), cfg.seed)
    rejects = [RejectRow(stage=r.stage, reason=r.reason, detail=r.detail, source=r.clip_id, dataset=r.dataset)
               for r in source_rejects]

    # RIR bank: only the placements the plan uses, a task per chunk.
    rooms_by_id = {r.room_id: r for r in rooms}
    used = sorted({i.placement_id for i in items if i.placement_id})
    by_id = {p.placement_id: p for p in placements}
    bank_dir = join_uri(base, "rirs")
    chunk_futures = [
        rir_chunk_task.submit({by_id[p].room_id: rooms_by_id[by_id[p].room_id] for p in chunk},
                              [by_id[p] for p in chunk], cfg.rir, bank_dir)
        for chunk in _chunks(used, run.rir_chunk)
    ]
    chunks = gather(chunk_futures, "RIR bank", run.progress)
    records = {r.placement_id: r for c in chunks for r in c.records}
    for c in chunks:
        rejects += [RejectRow(stage="rir", reason="rir_failed", detail=f"{r.reason}: {r.detail}",
                              source=r.placement_id) for r in c.rejects]
    cached = sum(c.cached for c in chunks)
    log.info("RIR bank: %d chunks (%d cached), %d RIRs, %d failed", len(chunks), cached, len(records),
             sum(len(c.rejects) for c in chunks))

    # Captions before rendering, which needs them: the caption stage, on the GPU pool's
    # rephrase-captions runs when a deployment is named, else on this build's workers.
    stage = stage_uri(base)
    write_stage(build_stages.caption_requests(items, records, rooms_by_id),
                RephraseSettings.of(cfg.rephraser, run.engine), stage, run.caption_batch)
    if run.rephrase_deployment:
        log.info("caption stage: %d run(s) of %s", run.rephrase_workers, run.rephrase_deployment)
        run_stage_deployment(run.rephrase_deployment, stage, run.rephrase_workers, run.rephrase_timeout_s)
    else:
        worker_futures = [caption_worker_task.with_options(tags=_rephrase_tags(cfg)).submit(
            stage, k, run.rephrase_workers) for k in range(run.rephrase_workers)]
        gather(worker_futures, "captions", run.progress)
    captions = {r.sample_id: r for r in collect_results(stage)}
    log.info("captions: %s", dict(Counter(r.status for r in captions.values())))

    # Shards: one typed job each, planned before rendering (count-based).
    jobs = shard_jobs(
        items, {c.uri: c.records for c in chunks}, captions, rooms_by_id, shard_size=cfg.shard_size,
        base=base, provenance=build_stages.provenance_fields(room_hash, cfg_hash, cfg.rephraser, dataset),
        audio=cfg.audio, screening=cfg.rephraser.validation,
    )
    outcomes = gather(shard_task.map(jobs), "shards", run.progress)
    rows = [r for o in outcomes for r in o.rows]
    rejects += [r for o in outcomes for r in o.rejects]
    counts = Counter(o.outcome for o in outcomes)
    log.info("shards: %s", dict(counts))
    meta = {"dataset": dataset, "version": version, "room_set_hash": room_hash, "config_hash": cfg_hash}
    readme = finalize_task(base, rows, rejects, meta)
    publish_artifacts(outcomes, readme, dataset, version)
    return BuildResult(
        uri=safe_uri(base), dataset=dataset, version=version, samples=len(rows), rejects=len(rejects),
        shards=dict(counts), rir_chunks_cached=cached, rir_chunks_rendered=len(chunks) - cached,
        card=safe_uri(readme),
    )


def publish_artifacts(
    outcomes: list[build_stages.ShardOutcome], readme: str, dataset: str, version: str
) -> None:
    """The shard table and the dataset card, visible in the Prefect UI."""
    create_table_artifact(
        key="shards", table=[{"shard": o.shard, "outcome": o.outcome, "samples": len(o.rows),
                              "rejects": len(o.rejects)} for o in outcomes],
        description=f"{dataset} {version}: shard outcomes (skipped = verified receipt, cache hit)",
    )
    create_markdown_artifact(
        key="dataset-card", markdown=open_storage(readme).read_bytes(readme).decode(),
        description=f"Dataset card of {dataset} {version}",
    )


def share_api_url() -> None:
    """Point worker processes at this run's Prefect API.

    A flow run on the ephemeral server holds the server's address only in its own settings, so
    every spawned Dask worker would start a temporary server of its own and record its task runs
    there. Exporting the address before the cluster starts keeps one server and one history.
    """
    if not os.environ.get("PREFECT_API_URL"):
        with get_client(sync_client=True) as client:
            os.environ["PREFECT_API_URL"] = str(client.api_url).rstrip("/")


def task_runner(n_workers: int, scheduler_address: str | None) -> DaskTaskRunner:
    """A LocalCluster of single-threaded worker processes, or an existing Dask scheduler.

    Dask's nanny exports MALLOC_TRIM_THRESHOLD_=65536 to its workers, which sends every large numpy
    buffer through mmap and made the render stage 1.5x slower in a worker than in a plain loop
    (benchmarks/pipeline.py); None tells Dask to leave the variable unset.
    """
    share_api_url()
    dask.config.set({"distributed.nanny.pre-spawn-environ.MALLOC_TRIM_THRESHOLD_": None})
    if scheduler_address:
        return DaskTaskRunner(address=scheduler_address)
    return DaskTaskRunner(cluster_kwargs={"n_workers": n_workers, "threads_per_worker": 1, "processes": True,
                                          "dashboard_address": None})


@flow(name="build-spatial-dataset-stages")
def _build_stages(config: BuildConfig, run: RunOptions, output: str) -> BuildResult:
    return run_build(config, run, output)


@flow(name="build-spatial-dataset", log_prints=True)
def build_spatial_dataset(
    config: BuildConfig = BuildConfig(), run: RunOptions = RunOptions(), output: str = "out"  # noqa: B008
) -> BuildResult:
    """Build a spatial audio-caption dataset from a source corpus into ``output``.

    ``output`` is a local directory or ``s3://bucket/prefix`` (credentials from the standard
    AWS environment, never from parameters). The version directory is derived from the room-set
    hash and ``config``'s hash, so a new room set lands beside earlier versions, while a build
    that differs only in ``run`` (task sizes, workers, the caption stage's placement, the
    rephraser's endpoint and engine) lands in the same version and skips every finished shard.
    ``run.rephrase_deployment`` (e.g. ``rephrase-captions/rephrase-captions-gpu``) runs the caption
    stage as ``run.rephrase_workers`` runs on the GPU pool.
    """
    runner = task_runner(run.n_workers, run.scheduler_address)
    return _build_stages.with_options(task_runner=runner)(config, run, output)
