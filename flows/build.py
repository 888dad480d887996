"""The ``build-spatial-dataset`` flow: rooms -> plan -> RIR bank -> captions -> shards ->
manifest -> card. Wiring only: every step is a function in tasks/ (tasks.build_stages).

CPU stages fan out one Prefect task per RIR-bank chunk or shard (never per sample) on a Dask
task runner: a LocalCluster by default, or an existing scheduler's address. The flow process
streams: per-sample tables live on storage, tasks get references (URIs and row ranges), shard
tasks are submitted through a window, so its memory does not grow with the dataset. The flow's parameters
are the build's two models (schemas.build): ``config`` names the version, ``run`` only says how
to run it.
"""

from __future__ import annotations

import os
import sys
import time
from collections import Counter
from collections.abc import Sequence
from typing import Any

import dask
from prefect import Task, flow, get_client, get_run_logger, task
from prefect.artifacts import create_markdown_artifact, create_table_artifact
from prefect.cache_policies import NO_CACHE
from prefect.deployments import run_deployment
from prefect.futures import PrefectFuture, as_completed
from prefect.tasks import exponential_backoff
from prefect_dask import DaskTaskRunner
from tqdm import tqdm

from schemas.build import BuildConfig, BuildResult, RunOptions, ShardStats
from schemas.caption_stage import StageWorkerReport
from schemas.captions import RephraseSettings
from schemas.rooms import RirSettings
from tasks import build_stages
from tasks.caption_stage import StageIncomplete, run_stage_worker, stage_uri, write_results
from tasks.commit import config_hash, dataset_uri, dataset_version
from tasks.rir_sources import rir_source
from tasks.shard_jobs import ShardInputs, ShardJob
from tasks.storage import install_log_redaction, join_uri, open_storage, safe_uri

IO_RETRIES = {"retries": 3, "retry_delay_seconds": exponential_backoff(backoff_factor=2)}


@task(name="sample-rooms", cache_policy=NO_CACHE, **IO_RETRIES)
def sample_rooms_task(cfg: BuildConfig) -> tuple[list, list, str]:
    return rir_source(cfg.room_source).room_set(cfg)


@task(name="plan", cache_policy=NO_CACHE, **IO_RETRIES)
def plan_task(cfg: BuildConfig, placements: list, base: str) -> build_stages.PlanSummary:
    return build_stages.plan_stage(cfg, placements, base)


@task(name="rir-bank-chunk", cache_policy=NO_CACHE, **IO_RETRIES)
def rir_chunk_task(job: tuple[dict, list, RirSettings, str, str, str]) -> build_stages.BankChunk:
    return build_stages.rir_chunk(*job)


@task(name="caption-join", cache_policy=NO_CACHE, **IO_RETRIES)
def caption_join_task(
    summary: build_stages.PlanSummary, chunk_uris: list[str], rooms_uri: str, stage: str,
    settings: RephraseSettings, batch_size: int,
) -> list[ShardInputs]:
    return build_stages.caption_join(summary, chunk_uris, rooms_uri, stage, settings, batch_size)


@task(name="caption-stage-worker", cache_policy=NO_CACHE, **IO_RETRIES)
def caption_worker_task(stage: str, worker: int, workers: int) -> StageWorkerReport:
    return run_stage_worker(stage, worker, workers)


@task(name="caption-results", cache_policy=NO_CACHE, **IO_RETRIES)
def caption_results_task(stage: str) -> int:
    return write_results(stage)


@task(name="build-shard", cache_policy=NO_CACHE, **IO_RETRIES)
def shard_task(job: ShardJob) -> ShardStats:
    return build_stages.build_shard(job)


@task(name="finalize", cache_policy=NO_CACHE, **IO_RETRIES)
def finalize_task(summary: build_stages.PlanSummary, base: str, meta: dict[str, str]) -> tuple[str, int]:
    return build_stages.finalize_stage(summary, base, meta)


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


def in_window(fn: Task, jobs: Sequence[Any], window: int, stage: str, progress: bool) -> list[Any]:
    """``fn`` over ``jobs`` with at most ``window`` task runs in flight; results in job order.

    The flow holds every job (small references) but submits the next one only when a running one
    finishes, so the task runner never carries thousands of pending futures and their arguments.
    ``progress``: a bar on stderr as tasks finish (CLI runs).
    """
    results: list[Any] = [None] * len(jobs)
    queue = iter(enumerate(jobs))
    running: dict[PrefectFuture, int] = {}

    def submit_next() -> None:
        nxt = next(queue, None)
        if nxt is not None:
            running[fn.submit(nxt[1])] = nxt[0]

    for _ in range(window):
        submit_next()
    with tqdm(total=len(jobs), desc=stage, unit="task", file=sys.stderr, disable=not progress) as bar:
        while running:
            done = next(as_completed(list(running)))
            results[running.pop(done)] = done.result()
            bar.update()
            submit_next()
    return results


def run_build(cfg: BuildConfig, run: RunOptions, output: str) -> BuildResult:
    """The body of the flow. Every stage whose memory grows with the dataset runs as a task on
    the task runner; this process holds the room set and O(shards) references only."""
    log = get_run_logger()
    install_log_redaction()
    dataset = cfg.dataset or cfg.source
    window = run.shard_window or 2 * run.n_workers
    rooms, placements, room_hash = sample_rooms_task(cfg)
    cfg_hash = config_hash(cfg.versioned())
    version = dataset_version(room_hash, cfg_hash)
    base = dataset_uri(output, dataset, version)
    rooms_uri = build_stages.write_room_set(base, cfg, rooms, placements, room_hash)
    log.info("dataset %s version %s at %s (room set %s)", dataset, version, safe_uri(base), room_hash)

    summary = plan_task.submit(cfg, placements, base).result()
    log.info("plan: %d shards, %d placements, %d source rejects", len(summary.shards),
             len(summary.placements), summary.n_source_rejects)

    # RIR bank: only the placements the plan uses, a task per chunk of consecutive ids.
    bank_dir = join_uri(base, "rirs")
    chunk_jobs = [(*job, cfg.rir, bank_dir, base, cfg.room_source)
                  for job in build_stages.bank_jobs(summary.placements, rooms,
                                                    build_stages.bank_placements(summary, placements),
                                                    run.rir_chunk)]
    del rooms, placements
    chunks = in_window(rir_chunk_task, chunk_jobs, window, "RIR bank", run.progress)
    cached = sum(c.cached for c in chunks)
    log.info("RIR bank: %d chunks (%d cached), %d RIRs, %d failed", len(chunks), cached,
             sum(len(c.placement_ids) for c in chunks), sum(c.n_rejects for c in chunks))

    # Captions before rendering, which needs them: the caption stage, on the GPU pool's
    # rephrase-captions runs when a deployment is named, else on this build's workers.
    stage = stage_uri(base)
    settings = RephraseSettings.of(cfg.rephraser, run.engine)
    inputs = caption_join_task.submit(summary, [c.uri for c in chunks], rooms_uri, stage, settings,
                                      run.caption_batch).result()
    if run.rephrase_deployment:
        log.info("caption stage: %d run(s) of %s", run.rephrase_workers, run.rephrase_deployment)
        run_stage_deployment(run.rephrase_deployment, stage, run.rephrase_workers, run.rephrase_timeout_s)
    else:
        workers = [caption_worker_task.with_options(tags=_rephrase_tags(cfg)).submit(
            stage, k, run.rephrase_workers) for k in range(run.rephrase_workers)]
        for w in workers:
            w.result()
    log.info("captions: %d results", caption_results_task.submit(stage).result())

    # Shards: one typed job of references each, at most ``window`` in flight.
    jobs = build_stages.shard_jobs(summary, inputs, cfg=cfg, rir_cache_mib=run.rir_cache_mib, stage=stage,
                                   rooms_uri=rooms_uri, base=base, room_hash=room_hash, cfg_hash=cfg_hash)
    stats = in_window(shard_task, jobs, window, "shards", run.progress)
    counts = Counter(s.outcome for s in stats)
    log.info("shards: %s", dict(counts))
    meta = {"dataset": dataset, "version": version, "room_set_hash": room_hash, "config_hash": cfg_hash}
    readme, n_rejects = finalize_task.submit(summary, base, meta).result()
    publish_artifacts(stats, readme, dataset, version)
    return BuildResult(
        uri=safe_uri(base), dataset=dataset, version=version, samples=sum(s.samples for s in stats),
        rejects=n_rejects, shards=dict(counts), rir_chunks_cached=cached,
        rir_chunks_rendered=len(chunks) - cached, rir_cpu_s=round(sum(c.cpu_s for c in chunks), 3),
        card=safe_uri(readme), shard_stats=stats,
    )


def publish_artifacts(stats: list[ShardStats], readme: str, dataset: str, version: str) -> None:
    """The shard table and the dataset card, visible in the Prefect UI."""
    create_table_artifact(
        key="shards", table=[s.model_dump() for s in stats],
        description=f"{dataset} {version}: shard outcomes (skipped = verified receipt, cache hit) and costs",
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
