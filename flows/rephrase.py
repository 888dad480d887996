"""``rephrase-captions``: one LLM worker of a build's caption stage, on the GPU work pool.

Deployed on a pool whose workers run in the LLM environment (``.venv-llm`` locally, the rephrase
image in docker/ and Kubernetes); the build flow starts one run per stage worker and waits for them.
Each run starts one backend for all of its batches (tasks.caption_stage) and reports progress to
Prefect: a progress artifact per batch, and a table of the engine and the batches at the end.
"""

from __future__ import annotations

from prefect import flow, get_run_logger
from prefect.artifacts import create_progress_artifact, create_table_artifact, update_progress_artifact
from prefect.runtime import flow_run

from schemas.caption_stage import StageWorkerReport
from tasks.caption_stage import run_stage_worker
from tasks.storage import install_log_redaction, safe_uri


@flow(name="rephrase-captions", log_prints=True)
def rephrase_captions(stage: str, worker: int = 0, workers: int = 1) -> StageWorkerReport:
    """Rephrase worker ``worker`` of ``workers``' share of the caption stage at ``stage``."""
    install_log_redaction()
    log = get_run_logger()
    progress = create_progress_artifact(0.0, description=f"caption stage {safe_uri(stage)}, worker {worker}")

    def on_batch(done: int, total: int) -> None:
        update_progress_artifact(progress, 100.0 * done / total)
        log.info("caption batches: %d of %d", done, total)

    report = run_stage_worker(stage, worker, workers, flow_run_id=flow_run.get_id(), on_batch=on_batch)
    update_progress_artifact(progress, 100.0)
    create_table_artifact(key="caption-stage-worker", table=[report.model_dump()],
                          description="engine and batches of this stage worker")
    log.info("caption stage worker %d/%d: engine %s, %d batches generated, %d already finished",
             worker, workers, report.engine_id, report.batches_generated, report.batches_skipped)
    return report

