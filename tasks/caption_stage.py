"""The caption stage: the build's rephrase requests in, captions out, through storage only.

Rephrasing runs where the LLM lives (the GPU work pool's ``.venv-llm`` or the rephrase image), not
on the render workers, whose environment cannot hold vLLM. The two sides share nothing but objects
under ``{dataset}/{version}/captions/`` (local or s3://)::

    stage.json              StageSpec: settings and batch size (written by the build)
    requests.parquet        one row per caption to rephrase, with its cache key; row group b = batch b
    cache/<hash>.parquet    finished batches (tasks.rephrase.cache): key and result, content-addressed
    engines/<id>.json       one EngineRecord per backend start
    batches/<n>-<id>.json   one BatchRecord per batch an engine finished
    results.parquet         row i = the result of request i (write_results, once every batch is done)

A stage worker starts ONE backend (for vLLM: one engine per GPU group) and keeps it for all of its
batches; K workers split the batches round-robin. Batches are written as they finish, a batch whose
requests are all cached is skipped without the model, and a worker with nothing left starts no
engine at all, so a killed stage resumes where it stopped and a finished one costs nothing.

Nothing here holds the whole stage: requests are written from an iterable batch by batch, a worker
reads only its own batches (row groups), whether a batch is finished is decided from the stored
keys against the cache's key index (no request built, no result parsed), and the results are
copied into results.parquet batch by batch, from which a shard task reads its own row range.
"""

from __future__ import annotations

import os
import socket
import time
import uuid
from collections.abc import Callable, Iterable, Iterator
from contextlib import contextmanager
from datetime import UTC, datetime
from itertools import islice

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

from schemas.caption_stage import BatchRecord, EngineRecord, StageSpec, StageWorkerReport
from schemas.captions import RephraseRequest, RephraseResult, RephraseSettings
from tasks.errors import SpatialAudioCapsError
from tasks.parquet_rows import read_rows, write_table_parts
from tasks.rephrase.base import make_backend, recorded_model
from tasks.rephrase.cache import RephraseCache, cache_key, digests
from tasks.rephrase.runner import run_rephrase
from tasks.rephrase.table_io import STAGE_REQUEST_SCHEMA, requests_from_table, requests_table
from tasks.storage import ObjectMissing, join_uri, open_storage

STAGE_DIR = "captions"
REQUESTS = "requests.parquet"
RESULTS = "results.parquet"
RESULTS_SCHEMA = pa.schema([("sample_id", pa.string()), ("result", pa.string())])
"""results.parquet: the request's sample id and its result as the cache stored it (JSON; the
result's own sample_id may be another request's with the same content: read_results sets it)."""


class StageIncomplete(SpatialAudioCapsError):
    """The stage ended but some captions are not in its cache (a worker failed or was never run)."""


def stage_uri(base: str) -> str:
    """Where a build version's caption stage lives."""
    return join_uri(base, STAGE_DIR)


def write_stage(
    requests: Iterable[RephraseRequest], settings: RephraseSettings, uri: str, batch_size: int
) -> StageSpec:
    """Hand the requests to the LLM workers: requests.parquet, then stage.json (the ready marker).

    ``requests`` is consumed once, ``batch_size`` at a time: each batch becomes one row group with
    its cache keys, so memory stays one batch whatever the stage's size. A results.parquet left
    by an earlier stage at ``uri`` is removed: it answers for the requests it was written from.
    """
    spec = StageSpec(settings=settings, batch_size=batch_size, n_requests=0)
    model = recorded_model(settings)

    def batches() -> Iterator[pa.Table]:
        it = iter(requests)
        while batch := list(islice(it, batch_size)):
            yield requests_table(batch, [cache_key(r, model, settings) for r in batch])

    storage = open_storage(uri)
    storage.delete(join_uri(uri, RESULTS))
    n = write_table_parts(join_uri(uri, REQUESTS), STAGE_REQUEST_SCHEMA, batches(), row_group=batch_size)
    spec = spec.model_copy(update={"n_requests": n})
    storage.put_bytes(join_uri(uri, "stage.json"), spec.model_dump_json(indent=1).encode(),
                      content_type="application/json")
    return spec


def read_stage(uri: str) -> StageSpec:
    """The stage's spec; a stage never written is a typed error."""
    storage = open_storage(uri)
    if not storage.exists(join_uri(uri, "stage.json")):
        raise SpatialAudioCapsError(f"no caption stage at {uri} (stage.json missing)")
    return StageSpec.model_validate_json(storage.read_bytes(join_uri(uri, "stage.json")))


@contextmanager
def _requests_file(uri: str, spec: StageSpec) -> Iterator[pq.ParquetFile]:
    """requests.parquet opened once (its footer read once), checked against the spec: row group b
    is batch b."""
    with open_storage(uri).open_read(join_uri(uri, REQUESTS), random_access=True) as fh:
        pf = pq.ParquetFile(fh)
        meta = pf.metadata
        if (meta.num_rows, meta.num_row_groups) != (spec.n_requests, spec.n_batches):
            raise SpatialAudioCapsError(
                f"{uri}: stage.json lists {spec.n_requests} requests in {spec.n_batches} batches, "
                f"requests.parquet holds {meta.num_rows} in {meta.num_row_groups} row groups")
        yield pf


def _batch_keys(pf: pq.ParquetFile, b: int) -> np.ndarray:
    return digests(pf.read_row_group(b, columns=["key"]).column("key"))


def read_batch(uri: str, b: int) -> list[RephraseRequest]:
    """The requests of batch ``b``, in order (one row group of requests.parquet)."""
    spec = read_stage(uri)
    with _requests_file(uri, spec) as pf:
        return requests_from_table(pf.read_row_group(b))


def worker_batches(spec: StageSpec, worker: int, workers: int) -> list[int]:
    """The batches of worker ``worker`` of ``workers`` (round-robin, so each gets early and late ones)."""
    if not 0 <= worker < workers:
        raise SpatialAudioCapsError(f"worker {worker} is not one of {workers}")
    return list(range(worker, spec.n_batches, workers))


def finished_batches(uri: str) -> set[int]:
    """The batches whose every result is in the stage's cache: what no worker will generate again.

    The cache, not batches/, is the truth: a worker killed between writing a batch's results and
    its BatchRecord leaves a finished batch without a record. Decided from the stored keys and the
    cache's key index alone.
    """
    spec = read_stage(uri)
    cache = RephraseCache(join_uri(uri, "cache"))
    with _requests_file(uri, spec) as pf:
        return {b for b in range(spec.n_batches) if cache.contains(_batch_keys(pf, b)).all()}


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
    spec = read_stage(uri)
    storage = open_storage(uri)
    mine = worker_batches(spec, worker, workers)
    cache = RephraseCache(join_uri(uri, "cache"))
    with _requests_file(uri, spec) as pf:
        todo = [b for b in mine if not cache.contains(_batch_keys(pf, b)).all()]
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
                pid=os.getpid(), flow_run_id=flow_run_id, worker=worker, workers=workers,
                started_at=started_at, load_s=round(time.perf_counter() - t0, 3),
            )
            storage.put_bytes(join_uri(uri, "engines", f"{engine_id}.json"),
                              record.model_dump_json().encode(), content_type="application/json")
            generated = 0
            for done, b in enumerate(todo, start=1):
                batch = requests_from_table(pf.read_row_group(b))
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
                                     captions_generated=generated,
                                     generate_calls=backend.stats.generate_calls)
        finally:
            backend.close()


def write_results(uri: str) -> int:
    """results.parquet from the cache, aligned with requests.parquet (row i answers request i, in
    the same row groups); returns its row count. Run once after the stage workers.

    Batch by batch: memory is the cache's key index, one batch and the cache's kept parts. A stage
    with results missing raises StageIncomplete (with the count) before anything is written; a
    stage whose results.parquet is already complete is left as it is.
    """
    spec = read_stage(uri)
    storage = open_storage(uri)
    out = join_uri(uri, RESULTS)
    if storage.exists(out):
        with storage.open_read(out, random_access=True) as fh:
            if pq.ParquetFile(fh).metadata.num_rows == spec.n_requests:
                return spec.n_requests
    cache = RephraseCache(join_uri(uri, "cache"))
    with _requests_file(uri, spec) as pf:
        missing = sum(int((~cache.contains(_batch_keys(pf, b))).sum()) for b in range(spec.n_batches))
        if missing:
            raise StageIncomplete(
                f"caption stage {uri}: {missing} of {spec.n_requests} requests have no result")

        def batches() -> Iterator[pa.Table]:
            for b in range(spec.n_batches):
                rows = pf.read_row_group(b, columns=["sample_id", "key"])
                found = cache.result_json([k.hex() for k in rows.column("key").to_pylist()])
                result = pa.array(found, pa.string())
                yield pa.table({"sample_id": rows.column("sample_id"), "result": result},
                               schema=RESULTS_SCHEMA)

        return write_table_parts(out, RESULTS_SCHEMA, batches(), row_group=spec.batch_size)


def read_results(uri: str, start: int, stop: int) -> list[RephraseResult]:
    """The results of requests ``[start, stop)``, each with its request's sample id, decoding only
    the row groups of results.parquet that cover the range (a shard's requests are contiguous)."""
    try:
        rows = read_rows(join_uri(uri, RESULTS), start, stop)
    except ObjectMissing as exc:
        raise StageIncomplete(f"caption stage {uri}: no {RESULTS} (write_results has not run)") from exc
    out = []
    for sample_id, raw in zip(rows.column("sample_id").to_pylist(), rows.column("result").to_pylist(),
                              strict=True):
        res = RephraseResult.model_validate_json(raw)
        out.append(res if res.sample_id == sample_id else res.model_copy(update={"sample_id": sample_id}))
    return out


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
