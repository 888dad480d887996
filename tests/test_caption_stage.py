"""The caption stage over storage: requests in, captions out, one backend per worker, resumable.

These run the production functions (tasks.caption_stage) with the template backend, locally and
on the local S3 server; the vLLM engine behind the same functions is exercised by
tests/test_rephrase_stage_deployment.py.
"""

from __future__ import annotations

import pytest

from schemas.captions import Descriptors, RephraseRequest, RephraseSettings
from tasks.caption_stage import (
    StageIncomplete,
    batch_records,
    collect_results,
    engine_records,
    finished_batches,
    read_stage,
    run_stage_worker,
    worker_batches,
    write_stage,
)
from tasks.errors import SpatialAudioCapsError
from tasks.rephrase.base import make_backend

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
    spec = write_stage(reqs, settings, stage, batch_size=5)
    assert spec.n_batches == 5
    back_spec, back = read_stage(stage)
    assert back_spec == spec and back == reqs
    reports = [run_stage_worker(stage, k, 2) for k in range(2)]
    assert [r.batches for r in reports] == [3, 2] and all(r.batches_skipped == 0 for r in reports)
    results = collect_results(stage)
    direct = make_backend(settings).rephrase(reqs)
    assert [r.model_copy(update={"cached": False}) for r in results] == direct
    # one engine record per worker, every batch finished by the engine of its worker
    engines = {e.worker: e.engine_id for e in engine_records(stage)}
    assert len(engine_records(stage)) == 2 and set(engines) == {0, 1}
    for rec in batch_records(stage):
        assert rec.engine_id == engines[rec.batch % 2] and rec.generated == rec.requests


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
        collect_results(stage)
    assert finished_batches(stage) == {0, 1, 2}
    report = run_stage_worker(stage)
    assert (report.batches_skipped, report.batches_generated) == (3, 5)
    assert report.captions_generated == 30 - 12
    first, second = (e.engine_id for e in engine_records(stage))
    by_engine: dict[str, list[int]] = {}
    for rec in batch_records(stage):
        by_engine.setdefault(rec.engine_id, []).append(rec.batch)
    assert sorted(by_engine[first]) == [0, 1, 2] and sorted(by_engine[second]) == [3, 4, 5, 6, 7]
    assert len(collect_results(stage)) == 30
    # a finished stage starts no engine at all
    again = run_stage_worker(stage)
    assert again.engine_id is None and again.batches_skipped == 8 and len(engine_records(stage)) == 2


def test_stage_on_s3(s3):
    reqs = _requests(9)
    stage = f"{s3.root}/ds/v1/captions"
    write_stage(reqs, RephraseSettings(), stage, batch_size=4)
    report = run_stage_worker(stage)
    assert report.batches_generated == 3
    assert [r.sample_id for r in collect_results(stage)] == [r.sample_id for r in reqs]


def test_bad_stage_inputs_are_typed_errors(tmp_path):
    with pytest.raises(SpatialAudioCapsError, match=r"stage\.json missing"):
        read_stage(str(tmp_path / "nowhere"))
    stage = str(tmp_path / "captions")
    spec = write_stage(_requests(3), RephraseSettings(), stage, batch_size=2)
    with pytest.raises(SpatialAudioCapsError, match="not one of"):
        worker_batches(spec, 2, 2)
