"""Launch training under torchrun on this machine: what ``spatial-audiocaps train`` and a Prefect
flow call. The config is written into the run directory and every rank reads it from there.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path
from typing import Any

from tasks.errors import SpatialAudioCapsError
from training.config import TrainConfig, dump_train_config


class TrainingFailed(SpatialAudioCapsError):
    """torchrun exited non-zero; the message carries the tail of its output."""


MODULES = {"elsa": "training.train", "spatial": "training.pretrain_spatial"}


def torchrun_command(
    config_path: str | Path,
    nproc: int,
    *,
    module: str = "training.train",
    nnodes: int = 1,
    node_rank: int = 0,
    master_addr: str | None = None,
    master_port: int | None = None,
    extra: list[str] | None = None,
) -> list[str]:
    """``python -m torch.distributed.run ... -m module --config path`` (standalone on one node)."""
    cmd = [sys.executable, "-m", "torch.distributed.run", f"--nproc_per_node={nproc}"]
    if nnodes == 1 and master_addr is None:
        cmd.append("--standalone")
    else:
        cmd += [
            f"--nnodes={nnodes}",
            f"--node_rank={node_rank}",
            f"--master_addr={master_addr or '127.0.0.1'}",
            f"--master_port={master_port or 29500}",
        ]
    return [*cmd, "-m", module, "--config", str(config_path), *(extra or [])]


def launch(
    cfg: TrainConfig,
    nproc: int = 1,
    *,
    env: dict[str, str] | None = None,
    timeout_s: float | None = None,
    threads_per_proc: int | None = None,
) -> dict[str, Any]:
    """Run ``cfg`` under torchrun with ``nproc`` local processes and wait; returns summary.json.

    CPU runs get OMP_NUM_THREADS = cores / nproc unless given, so ranks do not oversubscribe.
    """
    run_dir = Path(cfg.run_dir)
    run_dir.mkdir(parents=True, exist_ok=True)
    path = dump_train_config(cfg, run_dir / "launch-config.yaml")
    e = dict(os.environ if env is None else env)
    threads = threads_per_proc or max(1, (os.cpu_count() or 1) // nproc)
    e.setdefault("OMP_NUM_THREADS", str(threads))
    e.setdefault("TOKENIZERS_PARALLELISM", "false")
    e.setdefault("GLOO_SOCKET_IFNAME", "lo")  # one node: gloo talks over loopback
    e["PYTHONPATH"] = os.pathsep.join(
        x for x in (str(Path(__file__).resolve().parents[1]), e.get("PYTHONPATH")) if x
    )
    cmd = torchrun_command(path, nproc, module=MODULES[cfg.task])
    with open(run_dir / "torchrun.log", "ab") as logf:
        try:
            proc = subprocess.run(
                cmd, env=e, stdout=logf, stderr=subprocess.STDOUT, timeout=timeout_s, check=False
            )
        except subprocess.TimeoutExpired as ex:
            raise TrainingFailed(
                f"torchrun did not finish within {timeout_s} s; see {run_dir / 'torchrun.log'}"
            ) from ex
    if proc.returncode != 0:
        tail = (run_dir / "torchrun.log").read_text(errors="replace")[-3000:]
        raise TrainingFailed(f"torchrun exited with {proc.returncode}: ...{tail}")
    summary = json.loads((run_dir / "summary.json").read_text())
    summary["nproc"] = nproc
    summary["command"] = cmd
    return summary


def read_log(run_dir: str | Path) -> list[dict[str, Any]]:
    """The run's log.jsonl as a list of records."""
    p = Path(run_dir) / "log.jsonl"
    return [json.loads(line) for line in p.read_text().splitlines() if line.strip()] if p.exists() else []
