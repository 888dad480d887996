"""The caption stage: the build's rephrase requests in, captions out, through storage only.

Rephrasing runs where the LLM lives (the GPU work pool's ``.venv-llm`` or the rephrase image), not
on the render workers, whose environment cannot hold vLLM. The two sides share nothing but objects
under ``{dataset}/{version}/captions/`` (local or s3://)::

    stage.json              StageSpec: settings and batch size (written by the build)
    requests.parquet        prompts.parquet's columns, one row per caption to rephrase
    cache/<hash>.jsonl      finished batches (tasks.rephrase.cache): the results, content-addressed
    engines/<id>.json       one EngineRecord per backend start
    batches/<n>-<id>.json   one BatchRecord per batch an engine finished

A stage worker starts ONE backend (for vLLM: one engine per GPU group) and keeps it for all of its
batches; K workers split the batches round-robin. Batches are written as they finish, a batch whose
requests are all cached is skipped without the model, and a worker with nothing left starts no
engine at all, so a killed stage resumes where it stopped and a finished one costs nothing.
"""

from __future__ import annotations

import io
import os
import socket
import time
import uuid
from collections.abc import Callable
from datetime import UTC, datetime

import pyarrow.parquet as pq

from schemas.caption_stage import BatchRecord, EngineRecord, StageSpec, StageWorkerReport
from schemas.captions import RephraseRequest, RephraseResult, RephraseSettings
from tasks.errors import SpatialAudioCapsError
from tasks.rephrase.base import make_backend, recorded_model
from tasks.rephrase.cache import RephraseCache, cache_key
from tasks.rephrase.runner import run_rephrase
from tasks.rephrase.table_io import read_requests, requests_table
from tasks.storage import join_uri, open_storage

STAGE_DIR = "captions"


class StageIncomplete(SpatialAudioCapsError):
    """The stage ended but some captions are not in its cache (a worker failed or was never run)."""


def stage_uri(base: str) -> str:
    """Where a build version's caption stage lives."""
    return join_uri(base, STAGE_DIR)


def write_stage(
    requests: list[RephraseRequest], settings: RephraseSettings, uri: str, batch_size: int
) -> StageSpec:
    """Hand the requests to the LLM workers: requests.parquet, then stage.json (the ready marker)."""
    spec = StageSpec(settings=settings, batch_size=batch_size, n_requests=len(requests))
    storage = open_storage(uri)
    buf = io.BytesIO()
    pq.write_table(requests_table(requests), buf)
    storage.put_bytes(join_uri(uri, "requests.parquet"), buf.getvalue())
    storage.put_bytes(join_uri(uri, "stage.json"), spec.model_dump_json(indent=1).encode(),
                      content_type="application/json")
    return spec


def read_stage(uri: str) -> tuple[StageSpec, list[RephraseRequest]]:
    """The spec and the requests, in order; a stage never written is a typed error."""
    storage = open_storage(uri)
    if not storage.exists(join_uri(uri, "stage.json")):
        raise SpatialAudioCapsError(f"no caption stage at {uri} (stage.json missing)")
    spec = StageSpec.model_validate_json(storage.read_bytes(join_uri(uri, "stage.json")))
    requests = read_requests(io.BytesIO(storage.read_bytes(join_uri(uri, "requests.parquet"))))
    if len(requests) != spec.n_requests:
        raise SpatialAudioCapsError(f"{uri}: stage.json lists {spec.n_requests} requests, "
                                    f"requests.parquet holds {len(requests)}")
    return spec, requests


def worker_batches(spec: StageSpec, worker: int, workers: int) -> list[int]:
    """The batches of worker ``worker`` of ``workers`` (round-robin, so each gets early and late ones)."""
    if not 0 <= worker < workers:
        raise SpatialAudioCapsError(f"worker {worker} is not one of {workers}")
    return list(range(worker, spec.n_batches, workers))


def _batch(spec: StageSpec, requests: list[RephraseRequest], b: int) -> list[RephraseRequest]:
    return requests[b * spec.batch_size : (b + 1) * spec.batch_size]


def _finished(batch: list[RephraseRequest], settings: RephraseSettings, cache: RephraseCache) -> bool:
    model = recorded_model(settings)
    return all(cache_key(r, model, settings) in cache for r in batch)


def finished_batches(uri: str) -> set[int]:
    """The batches whose every result is in the stage's cache: what no worker will generate again.

    The cache, not batches/, is the truth: a worker killed between writing a batch's results and
    its BatchRecord leaves a finished batch without a record.
    """
    spec, requests = read_stage(uri)
    cache = RephraseCache(join_uri(uri, "cache"))
    return {b for b in range(spec.n_batches) if _finished(_batch(spec, requests, b), spec.settings, cache)}


def run_stage_worker(
    uri: str,
    worker: int = 0,
    workers: int = 1,
    *,
    flow_run_id: str | None = None,
    on_batch: Callable[[int, int], None] | None = None,
) -> StageWorkerReport:
    """Rephrase this worker's unfinished batches with one backend; ``on_batch(done, total)`` after each.

    The engine starts only if some batch is unfinished, and is closed when the worker ends.
    """
    spec, requests = read_stage(uri)
    storage = open_storage(uri)
    mine = worker_batches(spec, worker, workers)
    cache = RephraseCache(join_uri(uri, "cache"))
    todo = [b for b in mine if not _finished(_batch(spec, requests, b), spec.settings, cache)]
    report = {"worker": worker, "workers": workers, "batches": len(mine),
              "batches_skipped": len(mine) - len(todo)}
    if not todo:
        return StageWorkerReport(**report, engine_id=None, batches_generated=0, captions_generated=0,
                                 generate_calls=0)
    engine_id = uuid.uuid4().hex[:16]
    started_at, t0 = datetime.now(UTC), time.perf_counter()
    backend = make_backend(spec.settings)
    try:
        record = EngineRecord(
            engine_id=engine_id, backend=backend.name, model=backend.model, host=socket.gethostname(),
            pid=os.getpid(), flow_run_id=flow_run_id, worker=worker, workers=workers, started_at=started_at,
            load_s=round(time.perf_counter() - t0, 3),
        )
        storage.put_bytes(join_uri(uri, "engines", f"{engine_id}.json"), record.model_dump_json().encode(),
                          content_type="application/json")
        generated = 0
        for done, b in enumerate(todo, start=1):
            batch = _batch(spec, requests, b)
            t_batch = time.perf_counter()
            results = run_rephrase(batch, backend, cache, batch_size=len(batch))
            fresh = sum(not r.cached for r in results)
            generated += fresh
            rec = BatchRecord(batch=b, engine_id=engine_id, requests=len(batch), generated=fresh,
                              seconds=round(time.perf_counter() - t_batch, 3))
            storage.put_bytes(join_uri(uri, "batches", f"{b:06d}-{engine_id}.json"),
                              rec.model_dump_json().encode(), content_type="application/json")
            if on_batch is not None:
                on_batch(done, len(todo))
        return StageWorkerReport(**report, engine_id=engine_id, batches_generated=len(todo),
                                 captions_generated=generated, generate_calls=backend.stats.generate_calls)
    finally:
        backend.close()


def collect_results(uri: str) -> list[RephraseResult]:
    """Every request's result, in request order, from the stage's cache."""
    spec, requests = read_stage(uri)
    cache = RephraseCache(join_uri(uri, "cache"))
    model = recorded_model(spec.settings)
    results, missing = [], 0
    for req in requests:
        hit = cache.get(cache_key(req, model, spec.settings))
        if hit is None:
            missing += 1
            continue
        same = hit.sample_id == req.sample_id
        results.append(hit if same else hit.model_copy(update={"sample_id": req.sample_id}))
    if missing:
        raise StageIncomplete(f"caption stage {uri}: {missing} of {len(requests)} requests have no result")
    return results


def engine_records(uri: str) -> list[EngineRecord]:
    """Every backend start of the stage, oldest first: how many engines served it, and where."""
    storage = open_storage(uri)
    recs = [EngineRecord.model_validate_json(storage.read_bytes(o.uri))
            for o in storage.list(join_uri(uri, "engines")) if o.uri.endswith(".json")]
    return sorted(recs, key=lambda r: r.started_at)


def batch_records(uri: str) -> list[BatchRecord]:
    """Every batch an engine finished, by batch index."""
    storage = open_storage(uri)
    return [BatchRecord.model_validate_json(storage.read_bytes(o.uri))
            for o in storage.list(join_uri(uri, "batches")) if o.uri.endswith(".json")]
