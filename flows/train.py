"""``train-elsa``: launch distributed ELSA training (torchrun, local processes) on built shards."""

from __future__ import annotations

from typing import Any

from prefect import flow, get_run_logger, task
from prefect.artifacts import create_table_artifact
from prefect.cache_policies import NO_CACHE

from training.config import load_train_config
from training.launch import launch, read_log


@task(name="torchrun", cache_policy=NO_CACHE, tags=["gpu"])
def torchrun_task(config: str, nproc: int, overrides: dict[str, Any]) -> dict[str, Any]:
    cfg = load_train_config(config)
    if overrides:
        cfg = cfg.model_copy(update=overrides)
    return launch(cfg, nproc)


@flow(name="train-elsa", log_prints=True)
def train_elsa(config: str, nproc: int = 1, run_dir: str | None = None) -> dict[str, Any]:
    """Train ELSA (or pretrain the spatial branch) as the YAML ``config`` says, on ``nproc`` ranks.

    Multi-node runs use the PyTorchJob manifest from ``spatial-audiocaps train-manifest`` instead.
    """
    summary = torchrun_task(config, nproc, {"run_dir": run_dir} if run_dir else {})
    log = read_log(summary.get("run_dir", run_dir or ""))
    get_run_logger().info("trained %s steps; final %s", summary.get("step"), log[-1] if log else None)
    create_table_artifact(key="learning-curve", table=log[-200:], description="train-elsa log.jsonl (tail)")
    return summary
