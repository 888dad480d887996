"""Checkpoints that resume bit-for-bit: model, optimizer, scheduler, step, data position, RNGs.

Layout: ``{run_dir}/checkpoints/step-NNNNNNNN/`` with ``state.pt`` (model, optimizer, scheduler;
written by rank 0), ``rng-rank{r}.pt`` (each rank's torch/numpy/python/CUDA generators) and
``meta.json``; ``{run_dir}/checkpoints/latest`` names the newest complete one and is replaced
atomically after every rank has written, so a crash mid-save leaves the previous one in force.
Multi-node runs need run_dir on a filesystem every node sees (a ReadWriteMany volume).
"""

from __future__ import annotations

import json
import os
import random
import shutil
from pathlib import Path
from typing import Any

import numpy as np
import torch

from training.config import TrainConfig
from training.distributed import DistInfo, barrier

LATEST = "latest"


def checkpoints_dir(run_dir: str | Path) -> Path:
    return Path(run_dir) / "checkpoints"


def latest_checkpoint(run_dir: str | Path) -> Path | None:
    """The newest complete checkpoint of a run, or None."""
    d = checkpoints_dir(run_dir)
    p = d / LATEST
    if not p.exists():
        return None
    ck = d / p.read_text().strip()
    return ck if (ck / "meta.json").exists() else None


def rng_state() -> dict[str, Any]:
    st: dict[str, Any] = {
        "torch": torch.get_rng_state(),
        "numpy": np.random.get_state(),
        "python": random.getstate(),
    }
    if torch.cuda.is_available():
        st["cuda"] = torch.cuda.get_rng_state_all()
    return st


def set_rng_state(st: dict[str, Any]) -> None:
    torch.set_rng_state(st["torch"])
    np.random.set_state(st["numpy"])
    random.setstate(st["python"])
    if "cuda" in st and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(st["cuda"])


def save_checkpoint(
    run_dir: str | Path,
    info: DistInfo,
    *,
    step: int,
    consumed_batches: int,
    model: torch.nn.Module,
    optimizer: torch.optim.Optimizer,
    scheduler: Any,
    cfg: TrainConfig,
    keep: int,
) -> Path:
    """Collective: every rank calls it. Returns the checkpoint directory."""
    d = checkpoints_dir(run_dir)
    ck = d / f"step-{step:08d}"
    if info.is_main:
        if ck.exists():
            shutil.rmtree(ck)
        ck.mkdir(parents=True)
    barrier()
    torch.save(rng_state(), ck / f"rng-rank{info.rank}.pt")
    if info.is_main:
        torch.save(
            {
                "model": model.state_dict(),
                "optimizer": optimizer.state_dict(),
                "scheduler": scheduler.state_dict(),
            },
            ck / "state.pt",
        )
        meta = {
            "step": step,
            "consumed_batches": consumed_batches,
            "world_size": info.world_size,
            "task": cfg.task,
            "config": cfg.model_dump(mode="json"),
        }
        (ck / "meta.json").write_text(json.dumps(meta, indent=1))
    barrier()
    if info.is_main:
        tmp = d / f".{LATEST}.tmp"
        tmp.write_text(ck.name)
        os.replace(tmp, d / LATEST)
        old = sorted(p for p in d.glob("step-*") if p.is_dir() and p != ck)
        for p in old[: max(0, len(old) - (keep - 1))]:
            shutil.rmtree(p, ignore_errors=True)
    barrier()
    return ck


def load_checkpoint(
    ck: str | Path,
    info: DistInfo,
    *,
    model: torch.nn.Module,
    optimizer: torch.optim.Optimizer | None = None,
    scheduler: Any | None = None,
) -> dict[str, Any]:
    """Restore what ``save_checkpoint`` wrote into these objects; returns meta.json."""
    ck = Path(ck)
    meta = json.loads((ck / "meta.json").read_text())
    state = torch.load(ck / "state.pt", map_location="cpu", weights_only=False)
    model.load_state_dict(state["model"])
    if optimizer is not None:
        optimizer.load_state_dict(state["optimizer"])
    if scheduler is not None:
        scheduler.load_state_dict(state["scheduler"])
    rng = ck / f"rng-rank{info.rank}.pt"
    if rng.exists() and meta.get("world_size") == info.world_size:
        set_rng_state(torch.load(rng, map_location="cpu", weights_only=False))
    return meta


def load_trained(
    path: str | Path, device: str | torch.device = "cpu"
) -> tuple[torch.nn.Module, Any, TrainConfig]:
    """(model in eval mode, tokenizer or None, config) from a run directory or a checkpoint directory.

    What evaluation calls: ``model.encode_audio(mel, iv)`` / ``model.encode_text(ids, mask)`` give
    unit-norm embeddings, ``model.predict_spatial`` the head outputs.
    """
    from training.model import SpatialPretrainModel, build_elsa

    p = Path(path)
    ck = p if (p / "meta.json").exists() else latest_checkpoint(p)
    if ck is None:
        raise FileNotFoundError(f"no checkpoint at {path}")
    meta = json.loads((ck / "meta.json").read_text())
    cfg = TrainConfig.model_validate(meta["config"])
    tokenizer = None
    if cfg.task == "elsa":
        model, tokenizer = build_elsa(cfg.model.model_copy(update={"spatial_checkpoint": None}))
    else:
        model = SpatialPretrainModel.from_config(cfg.model)
    state = torch.load(ck / "state.pt", map_location="cpu", weights_only=False)
    model.load_state_dict(state["model"])
    return model.to(device).eval(), tokenizer, cfg
