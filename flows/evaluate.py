"""``evaluate-elsa``: retrieval, zero-shot spatial classification, DOA probe and direction swap of
a trained ELSA checkpoint on test shards; writes report.json, report.md and plots."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from prefect import flow, task
from prefect.artifacts import create_markdown_artifact
from prefect.cache_policies import NO_CACHE

from training.evaluate import EvaluationConfig, evaluate
from training.report import write_report


@task(name="evaluate", cache_policy=NO_CACHE, tags=["gpu"])
def evaluate_task(cfg: EvaluationConfig, out_dir: str) -> dict[str, Any]:
    files = write_report(evaluate(cfg), out_dir)
    return files.model_dump()


@flow(name="evaluate-elsa", log_prints=True)
def evaluate_elsa(
    checkpoint: str, shards: str, out_dir: str = "report", baseline: bool = True
) -> dict[str, Any]:
    """Evaluate ``checkpoint`` (a run directory) on ``shards`` (local or s3://) into ``out_dir``."""
    files = evaluate_task(EvaluationConfig(checkpoint=checkpoint, shards=shards, baseline=baseline), out_dir)
    create_markdown_artifact(key="elsa-report", markdown=Path(files["report_md"]).read_text(),
                             description=f"ELSA evaluation of {checkpoint}")
    return files
