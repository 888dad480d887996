"""The caption stage over storage: requests in, captions out, one backend per worker, resumable.

These run the production functions (tasks.caption_stage) with the template backend, locally and
on the local S3 server; the vLLM engine behind the same functions is exercised by
tests/test_rephrase_stage_deployment.py.
"""

from __future__ import annotations

import pyarrow.parquet as pq
import pytest

from schemas.captions import Descriptors, RephraseRequest, RephraseSettings
from tasks.caption_stage import (
    StageIncomplete,
    batch_records,
    engine_records,
    finished_batches,
    read_batch,
    read_results,
    read_stage,
    run_stage_worker,
    worker_batches,
    write_results,
    write_stage,
)
from tasks.errors import SpatialAudioCapsError
from tasks.rephrase.base import make_backend
from tasks.storage import open_storage

CAPTIONS = ["A dog barks", "Rain falls on a tin roof", "A man speaks while a car passes",
            "Birds chirp in the morning", "A door creaks open and slams shut"]


def _requests(n: int) -> list[RephraseRequest]:
    d = [Descriptors(direction="left", distance="far"),
         Descriptors(elevation="up", reverb="highly reverberant")]
    return [RephraseRequest(sample_id=f"s{i}", caption=CAPTIONS[i % len(CAPTIONS)] + f" {i}" * (i % 3),
                            descriptors=d[i % 2], seed=i) for i in range(n)]


class _Stop(Exception):
    pass


def test_stage_round_trip_equals_direct_rephrasing(tmp_path):
    reqs = _requests(23)
    settings = RephraseSettings()
    stage = str(tmp_path / "captions")
    spec = write_stage(iter(reqs), settings, stage, batch_size=5)  # any iterable, consumed once
    assert spec.n_batches == 5 and read_stage(stage) == spec
    # one row group per batch, so a worker reads only its own batches
    meta = pq.ParquetFile(tmp_path / "captions" / "requests.parquet").metadata
    assert [meta.row_group(g).num_rows for g in range(meta.num_row_groups)] == [5, 5, 5, 5, 3]
    assert [r for b in range(spec.n_batches) for r in read_batch(stage, b)] == reqs
    reports = [run_stage_worker(stage, k, 2) for k in range(2)]
    assert [r.batches for r in reports] == [3, 2] and all(r.batches_skipped == 0 for r in reports)
    assert write_results(stage) == 23
    results = read_results(stage, 0, 23)
    direct = make_backend(settings).rephrase(reqs)
    assert [r.model_copy(update={"cached": False}) for r in results] == direct
    # one engine record per worker, every batch finished by the engine of its worker
    engines = {e.worker: e.engine_id for e in engine_records(stage)}
    assert len(engine_records(stage)) == 2 and set(engines) == {0, 1}
    for rec in batch_records(stage):
        assert rec.engine_id == engines[rec.batch % 2] and rec.generated == rec.requests


def test_results_are_read_by_row_range_across_batches(tmp_path):
    reqs = _requests(23)
    stage = str(tmp_path / "captions")
    write_stage(reqs, RephraseSettings(), stage, batch_size=5)
    run_stage_worker(stage)
    write_results(stage)
    meta = pq.ParquetFile(tmp_path / "captions" / "results.parquet").metadata
    assert [meta.row_group(g).num_rows for g in range(meta.num_row_groups)] == [5, 5, 5, 5, 3]
    whole = read_results(stage, 0, 23)
    assert [r.sample_id for r in whole] == [r.sample_id for r in reqs]
    for start, stop in [(0, 5), (3, 12), (5, 10), (4, 6), (9, 21), (22, 23), (20, 23)]:
        assert read_results(stage, start, stop) == whole[start:stop]
    with pytest.raises(IndexError):
        read_results(stage, 20, 24)


def test_identical_requests_share_a_result_under_their_own_ids(tmp_path):
    reqs = [RephraseRequest(sample_id=f"s{i}", caption="A dog barks", seed=1,
                            descriptors=Descriptors(direction="left")) for i in range(7)]
    stage = str(tmp_path / "captions")
    write_stage(reqs, RephraseSettings(), stage, batch_size=3)
    report = run_stage_worker(stage)
    # one key: batch 0's three results come from one generation, batches 1 and 2 are cache hits
    assert (report.generate_calls, report.captions_generated) == (1, 3)
    write_results(stage)
    results = read_results(stage, 0, 7)
    assert [r.sample_id for r in results] == [f"s{i}" for i in range(7)]
    assert all(r.model_copy(update={"sample_id": "s0"}) == results[0] for r in results)


def test_killed_worker_resumes_without_generating_finished_batches(tmp_path):
    reqs = _requests(30)
    stage = str(tmp_path / "captions")
    write_stage(reqs, RephraseSettings(), stage, batch_size=4)  # 8 batches

    def die_after_three(done: int, total: int) -> None:
        if done == 3:
            raise _Stop

    with pytest.raises(_Stop):
        run_stage_worker(stage, on_batch=die_after_three)
    with pytest.raises(StageIncomplete, match="18 of 30"):
        write_results(stage)
    assert not (tmp_path / "captions" / "results.parquet").exists()  # nothing written when incomplete
    with pytest.raises(StageIncomplete, match="write_results has not run"):
        read_results(stage, 0, 4)
    assert finished_batches(stage) == {0, 1, 2}
    report = run_stage_worker(stage)
    assert (report.batches_skipped, report.batches_generated) == (3, 5)
    assert report.captions_generated == 30 - 12
    first, second = (e.engine_id for e in engine_records(stage))
    by_engine: dict[str, list[int]] = {}
    for rec in batch_records(stage):
        by_engine.setdefault(rec.engine_id, []).append(rec.batch)
    assert sorted(by_engine[first]) == [0, 1, 2] and sorted(by_engine[second]) == [3, 4, 5, 6, 7]
    assert finished_batches(stage) == set(range(8))
    assert write_results(stage) == 30 and len(read_results(stage, 0, 30)) == 30
    # a finished stage starts no engine at all
    again = run_stage_worker(stage)
    assert again.engine_id is None and again.batches_skipped == 8 and len(engine_records(stage)) == 2


def test_write_results_is_idempotent_and_a_new_stage_drops_stale_results(tmp_path):
    reqs = _requests(9)
    stage = str(tmp_path / "captions")
    write_stage(reqs, RephraseSettings(), stage, batch_size=4)
    run_stage_worker(stage)
    assert write_results(stage) == 9
    before = read_results(stage, 0, 9)
    storage = open_storage(stage)
    for obj in storage.list(f"{stage}/cache"):
        storage.delete(obj.uri)
    assert write_results(stage) == 9  # complete already: the cache is not read again
    assert read_results(stage, 0, 9) == before
    # requests written anew: the old results no longer answer for them
    write_stage(reqs[:5], RephraseSettings(), stage, batch_size=4)
    assert not (tmp_path / "captions" / "results.parquet").exists()
    with pytest.raises(StageIncomplete, match="5 of 5"):
        write_results(stage)


def test_raw_byte_captions_survive_the_stage(tmp_path):
    reqs = [*_requests(3), RephraseRequest(sample_id="raw", caption=b"\xff\xfe a dog", seed=0),
            RephraseRequest(sample_id="utf8", caption=b"A dog barks", seed=0)]
    stage = str(tmp_path / "captions")
    write_stage(reqs, RephraseSettings(), stage, batch_size=2)
    assert [r for b in range(3) for r in read_batch(stage, b)] == reqs
    run_stage_worker(stage)
    write_results(stage)
    assert read_results(stage, 3, 4)[0].status == "rejected"


def test_an_empty_stage_has_no_batches_and_no_results(tmp_path):
    stage = str(tmp_path / "captions")
    spec = write_stage([], RephraseSettings(), stage, batch_size=4)
    assert spec.n_batches == 0 and finished_batches(stage) == set()
    assert run_stage_worker(stage).engine_id is None
    assert write_results(stage) == 0


def test_stage_on_s3(s3):
    reqs = _requests(9)
    stage = f"{s3.root}/ds/v1/captions"
    write_stage(reqs, RephraseSettings(), stage, batch_size=4)
    report = run_stage_worker(stage)
    assert report.batches_generated == 3
    # S3 lists by key prefix: a sibling folder that shares the cache's prefix is not the cache
    open_storage(stage).put_bytes(f"{stage}/cache-old/x.parquet", b"not a part")
    assert finished_batches(stage) == {0, 1, 2}
    assert write_results(stage) == 9 and write_results(stage) == 9
    assert [r.sample_id for r in read_results(stage, 3, 9)] == [r.sample_id for r in reqs[3:]]


def test_bad_stage_inputs_are_typed_errors(tmp_path):
    with pytest.raises(SpatialAudioCapsError, match=r"stage\.json missing"):
        read_stage(str(tmp_path / "nowhere"))
    stage = str(tmp_path / "captions")
    spec = write_stage(_requests(3), RephraseSettings(), stage, batch_size=2)
    with pytest.raises(SpatialAudioCapsError, match="not one of"):
        worker_batches(spec, 2, 2)
    # stage.json and requests.parquet that disagree (a requests file from another stage)
    write_stage(_requests(5), RephraseSettings(), str(tmp_path / "other"), batch_size=2)
    (tmp_path / "other" / "requests.parquet").replace(tmp_path / "captions" / "requests.parquet")
    with pytest.raises(SpatialAudioCapsError, match=r"requests\.parquet holds 5"):
        finished_batches(stage)
