"""The torchrun entry point: ``torchrun --nproc_per_node N -m training.train --config run.yaml``.

One loop serves both tasks: ``elsa`` (contrastive + spatial heads, paper Eq. 5) and ``spatial``
(the spatial branch alone, appendix A.8). DDP over gloo (CPU) or nccl (CUDA); bf16 autocast on
CUDA; gradient accumulation (each micro-batch is its own contrastive batch); AdamW with linear
warmup then cosine decay; checkpoint and exact resume (training.checkpoint); rank 0 appends one
JSON object per logged step or evaluation to ``{run_dir}/log.jsonl`` and writes summary.json.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import math
import os
import random
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from training.checkpoint import latest_checkpoint, load_checkpoint, save_checkpoint
from training.config import TrainConfig, dump_train_config, load_train_config
from training.data import SampleMode, batch_to, eval_loader, iterate_from, make_loader
from training.distributed import DistInfo, all_reduce_mean, barrier, cleanup, init_distributed
from training.feature_cache import FeatureCache
from training.features import foa_features
from training.field_augment import random_transforms, transform_field
from training.losses import angular_error_deg, elsa_loss, spatial_loss
from training.model import to_device


def cosine_with_warmup(warmup: int, total: int, min_ratio: float = 0.0) -> Callable[[int], float]:
    """LR multiplier: linear from 1/warmup to 1 over ``warmup`` steps, then cosine to ``min_ratio``."""

    def f(step: int) -> float:
        if step < warmup:
            return (step + 1) / warmup
        p = min(1.0, (step - warmup) / max(1, total - warmup))
        return min_ratio + (1.0 - min_ratio) * 0.5 * (1.0 + math.cos(math.pi * p))

    return f


def param_groups(model: nn.Module, weight_decay: float) -> list[dict[str, Any]]:
    """No weight decay on biases, norms and the temperature (as CLIP/open_clip)."""
    decay, no_decay = [], []
    for name, p in model.named_parameters():
        if not p.requires_grad:
            continue
        (no_decay if p.ndim < 2 or "logit_scale" in name else decay).append(p)
    return [{"params": decay, "weight_decay": weight_decay}, {"params": no_decay, "weight_decay": 0.0}]


def build_model(cfg: TrainConfig) -> tuple[nn.Module, Any]:
    from training.model import SpatialPretrainModel, build_elsa

    if cfg.task == "elsa":
        return build_elsa(cfg.model, cfg.features)
    model = SpatialPretrainModel.from_config(cfg.model)
    if cfg.model.spatial_checkpoint:
        from training.spatial_branch import load_spatial_branch

        model.spatial = load_spatial_branch(cfg.model.spatial_checkpoint, expect=cfg.model.spatial)
    return model, None


def _inputs(batch: dict, cfg: TrainConfig, device: torch.device) -> dict:
    """The batch on the device, with mel/IVs computed there when the loader shipped waveforms."""
    b = batch_to(batch, device)
    if "wave" in b:
        b["mel"], b["iv"] = foa_features(b.pop("wave").float(), cfg.features)
    return b


def forward_loss(model: nn.Module, batch: dict, cfg: TrainConfig) -> dict[str, torch.Tensor]:
    """The task's forward and loss terms ('loss' is the weighted total)."""
    if cfg.task == "elsa":
        out = model(batch["mel"], batch["iv"], batch["input_ids"], batch["attention_mask"])
        return elsa_loss(out, batch, cfg.loss)
    return spatial_loss(model(batch["iv"], batch["mel"]), batch, cfg.loss)


@torch.no_grad()
def evaluate(model: nn.Module, cfg: TrainConfig, info: DistInfo, tokenizer: Any) -> dict[str, float]:
    """Held-out metrics over this rank's share of the eval split, reduced over ranks.

    Mean angular error of the direction head (spatial samples), distance MAE (m), and for ELSA
    the in-batch contrastive loss.
    """
    assert cfg.eval is not None
    net = model.module if hasattr(model, "module") else model
    was_training = net.training
    net.eval()
    loader = eval_loader(
        cfg.eval.root,
        cfg.eval.split,
        cfg.features,
        batch_size=cfg.eval.batch_size,
        num_workers=cfg.eval.num_workers,
        tokenizer=tokenizer,
        max_text_len=cfg.model.max_text_len,
        seed=cfg.seed,
        rank=info.rank,
        world=info.world_size,
    )
    sums = {"n_spatial": 0.0, "angle_sum": 0.0, "dist_abs_sum": 0.0, "batches": 0.0, "clip_sum": 0.0}
    for i, batch in enumerate(loader):
        if cfg.eval.max_batches is not None and i >= cfg.eval.max_batches:
            break
        b = _inputs(batch, cfg, info.device)
        if cfg.task == "elsa":
            out = net(b["mel"], b["iv"], b["input_ids"], b["attention_mask"])
            pred = {"direction": out.direction, "distance": out.distance}
            from training.losses import clip_loss

            sums["clip_sum"] += float(clip_loss(out.audio_embeds, out.text_embeds, out.logit_scale))
        else:
            pred = net(b["iv"], b["mel"])
        m = b["source_target"]  # samples with direction/distance targets (training.data.has_source_target)
        if m.any():
            sums["angle_sum"] += float(angular_error_deg(pred["direction"][m], b["direction"][m]).sum())
            sums["dist_abs_sum"] += float((pred["distance"][m].float() - b["distance_m"][m]).abs().sum())
            sums["n_spatial"] += float(m.sum())
        sums["batches"] += 1
    net.train(was_training)
    if info.distributed:
        t = torch.tensor([sums[k] for k in sorted(sums)], dtype=torch.float64, device=info.device)
        torch.distributed.all_reduce(t)
        sums = dict(zip(sorted(sums), t.tolist(), strict=True))
    n = max(sums["n_spatial"], 1.0)
    out = {
        "angular_error_deg": sums["angle_sum"] / n,
        "distance_mae_m": sums["dist_abs_sum"] / n,
        "n_spatial": int(sums["n_spatial"]),
    }
    if cfg.task == "elsa":
        out["clip_loss"] = sums["clip_sum"] / max(sums["batches"], 1.0)
    return out


def _per_epoch(cfg: TrainConfig) -> int:
    """Batches per rank and epoch: the configured number rounded up to a multiple of the loader's
    workers (the feature cache has none)."""
    w = 1 if cfg.features_on == "cache" else max(1, cfg.data.num_workers)
    return -(-cfg.data.batches_per_epoch // w) * w


def _same_stream(meta: dict[str, Any], cfg: TrainConfig, info: DistInfo) -> bool:
    """Would this run's data stream continue the checkpointed one batch for batch?"""
    old = TrainConfig.model_validate(meta["config"])
    return (
        meta.get("world_size") == info.world_size
        and old.data == cfg.data
        and old.seed == cfg.seed
        and old.features == cfg.features
        and old.optim.grad_accum == cfg.optim.grad_accum
    )


class JsonlLog:
    """Rank 0 appends one JSON object per line; other ranks write nothing."""

    def __init__(self, path: Path, enabled: bool) -> None:
        self.path, self.enabled = path, enabled

    def write(self, rec: dict[str, Any]) -> None:
        if self.enabled:
            with self.path.open("a") as f:
                f.write(json.dumps(rec, allow_nan=False, default=float) + "\n")


def _finite(d: dict[str, float]) -> dict[str, float | None]:
    return {k: (v if isinstance(v, (int, float)) and math.isfinite(v) else None) for k, v in d.items()}


def run(cfg: TrainConfig) -> dict[str, Any]:
    """Train (or resume) one run; every rank calls it. Returns the run summary on every rank."""
    info = init_distributed(cfg.device)
    try:
        return _run(cfg, info)
    finally:
        cleanup()


def _run(cfg: TrainConfig, info: DistInfo) -> dict[str, Any]:
    t_start = time.time()
    if cfg.torch_threads:
        torch.set_num_threads(cfg.torch_threads)
    run_dir = Path(cfg.run_dir)
    if info.is_main:
        run_dir.mkdir(parents=True, exist_ok=True)
        dump_train_config(cfg, run_dir / "config.yaml")
    barrier()
    torch.manual_seed(cfg.seed * 1000 + info.rank)
    np.random.seed(cfg.seed * 1000 + info.rank)
    random.seed(cfg.seed * 1000 + info.rank)

    model, tokenizer = build_model(cfg)
    to_device(model, info.device)
    if info.distributed:  # DDP broadcasts rank 0's initial weights
        ddp_kw = {"device_ids": [info.device.index]} if info.device.type == "cuda" else {}
        model = nn.parallel.DistributedDataParallel(model, **ddp_kw)
    net = model.module if info.distributed else model
    o = cfg.optim
    optimizer = torch.optim.AdamW(param_groups(net, o.weight_decay), lr=o.lr, betas=o.betas, eps=o.eps)
    scheduler = torch.optim.lr_scheduler.LambdaLR(
        optimizer, cosine_with_warmup(o.warmup_steps, o.max_steps, o.min_lr_ratio)
    )

    step, consumed = 0, 0
    ck = Path(cfg.resume_from) if cfg.resume_from else (latest_checkpoint(run_dir) if cfg.resume else None)
    log = JsonlLog(run_dir / "log.jsonl", info.is_main)
    if ck is not None:
        meta = load_checkpoint(ck, info, model=net, optimizer=optimizer, scheduler=scheduler)
        step, consumed = int(meta["step"]), int(meta["consumed_batches"])
        log.write({"event": "resume", "step": step, "checkpoint": str(ck), "time": time.time()})
        if not _same_stream(meta, cfg, info):
            # the stream position means nothing under another layout: continue from a fresh epoch
            consumed = (consumed // _per_epoch(cfg) + 1) * _per_epoch(cfg)
            log.write({"event": "data_layout_changed", "step": step, "time": time.time()})

    use_bf16 = info.device.type == "cuda" and cfg.precision in ("auto", "bf16")
    if info.device.type == "cuda":
        torch.backends.cudnn.benchmark = True  # input shapes are fixed by the feature config
    autocast = (
        torch.autocast(device_type="cuda", dtype=torch.bfloat16) if use_bf16 else contextlib.nullcontext()
    )
    mode = SampleMode(features=cfg.features_on == "loader")
    cache = FeatureCache.load(cfg.data, cfg.features) if cfg.features_on == "cache" else None
    if cache is not None:  # how many distinct samples the run learns from (a report's training-set size)
        log.write({"event": "feature_cache", "samples": len(cache), "time": time.time()})
    per_epoch = _per_epoch(cfg)
    last_stop = min(o.max_steps, cfg.stop_at_step or o.max_steps)
    accum = o.grad_accum
    trainable = [p for p in net.parameters() if p.requires_grad]
    last: dict[str, float] = {}
    last_eval: dict[str, float] | None = None
    last_ck: Path | None = ck
    if cfg.eval is not None and cfg.eval.at_start and ck is None:
        log.write({"step": 0, "eval": _finite(evaluate(model, cfg, info, tokenizer)), "time": time.time()})
    model.train()
    t_step = time.time()
    micro, sums = 0, {}
    while step < last_stop:
        epoch, within = divmod(consumed, per_epoch)
        if cache is not None:
            loader = cache.epoch(
                cfg.data, cfg.features, seed=cfg.seed, rank=info.rank, epoch=epoch, skip_batches=within,
                tokenizer=tokenizer, max_text_len=cfg.model.max_text_len,
            )
        else:
            loader = make_loader(
                cfg.data,
                cfg.features,
                seed=cfg.seed,
                rank=info.rank,
                world=info.world_size,
                epoch=epoch,
                skip_batches=within,
                tokenizer=tokenizer,
                max_text_len=cfg.model.max_text_len,
                mode=mode,
            )
        got = False
        for j, batch in iterate_from(loader, within):
            got = True
            b = _inputs(batch, cfg, info.device)
            if cfg.data.field_augment != "none":  # a function of (seed, epoch, rank, batch): resumes exactly
                rng = np.random.default_rng([cfg.seed, epoch, info.rank, j, 0xF1E1D])
                b = transform_field(b, random_transforms(len(b["iv"]), rng, cfg.data.field_augment))
            micro += 1
            sync = micro == accum
            ctx = model.no_sync() if (info.distributed and not sync) else contextlib.nullcontext()
            with ctx:
                with autocast:
                    terms = forward_loss(model, b, cfg)
                (terms["loss"] / accum).backward()
            consumed += 1
            for k, v in terms.items():
                sums[k] = sums.get(k, 0.0) + float(v.detach()) / accum
            if not sync:
                continue
            if o.clip_grad_norm is not None:
                torch.nn.utils.clip_grad_norm_(trainable, o.clip_grad_norm)
            lr = optimizer.param_groups[0]["lr"]
            optimizer.step()
            scheduler.step()
            optimizer.zero_grad(set_to_none=True)
            step += 1
            micro = 0
            if step % cfg.log_every == 0 or step == last_stop:
                dt = time.time() - t_step
                last = all_reduce_mean(sums, info.device)
                rec = {
                    "step": step,
                    "epoch": epoch,
                    "lr": lr,
                    **_finite(last),
                    "samples_per_s": cfg.data.batch_size
                    * accum
                    * info.world_size
                    * cfg.log_every
                    / max(dt, 1e-9),
                    "time": time.time(),
                }
                if cfg.task == "elsa":
                    rec["logit_scale"] = float(net.logit_scale.detach().exp())
                log.write(rec)
                t_step = time.time()
            sums = {}
            if cfg.eval is not None and (step % cfg.eval.every == 0 or step == last_stop):
                last_eval = evaluate(model, cfg, info, tokenizer)
                log.write({"step": step, "eval": _finite(last_eval), "time": time.time()})
            if step % cfg.checkpoint_every == 0 or step == last_stop:
                last_ck = save_checkpoint(
                    run_dir,
                    info,
                    step=step,
                    consumed_batches=consumed,
                    model=net,
                    optimizer=optimizer,
                    scheduler=scheduler,
                    cfg=cfg,
                    keep=cfg.keep_checkpoints,
                )
            if step >= last_stop:
                break
        if not got:
            raise RuntimeError(
                f"the loader yielded no batch in epoch {epoch}: too few samples for batch_size?"
            )

    summary: dict[str, Any] = {
        "run_dir": str(run_dir),
        "task": cfg.task,
        "step": step,
        "world_size": info.world_size,
        "device": str(info.device),
        "backend": info.backend,
        "bf16": use_bf16,
        "final": _finite(last),
        "eval": _finite(last_eval) if last_eval else None,
        "checkpoint": str(last_ck) if last_ck else None,
        "log": str(run_dir / "log.jsonl"),
        "elapsed_s": round(time.time() - t_start, 3),
    }
    if info.is_main:
        if cfg.task == "spatial":
            from training.spatial_branch import save_spatial_branch

            save_spatial_branch(net.spatial, str(run_dir / "spatial_branch.pt"))
            summary["spatial_branch"] = str(run_dir / "spatial_branch.pt")
        (run_dir / "summary.json").write_text(json.dumps(summary, indent=1))
    return summary


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m training.train", description=__doc__)
    p.add_argument("--config", required=True, help="TrainConfig YAML or JSON")
    p.add_argument("--run-dir", default=None)
    p.add_argument("--max-steps", type=int, default=None)
    p.add_argument("--stop-at-step", type=int, default=None)
    a = p.parse_args(argv)
    cfg = load_train_config(a.config)
    upd: dict[str, Any] = {}
    if a.run_dir:
        upd["run_dir"] = a.run_dir
    if a.stop_at_step:
        upd["stop_at_step"] = a.stop_at_step
    if a.max_steps:
        upd["optim"] = cfg.optim.model_copy(update={"max_steps": a.max_steps})
    summary = run(TrainConfig.model_validate(cfg.model_copy(update=upd).model_dump()))
    if os.environ.get("RANK", "0") == "0":
        print(json.dumps(summary))
    return 0


if __name__ == "__main__":
    sys.exit(main())
