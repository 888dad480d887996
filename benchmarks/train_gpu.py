"""Full-size ELSA training throughput on one GPU: samples/s with bf16 autocast, AdamW included.

Each step takes a batch of 10 s 4-channel waveforms already on the GPU, computes the log-mel and
intensity vectors there (training.features.foa_features, the ``features_on: device`` mode), runs
HTSAT-base + the spatial branch + RoBERTa-base (77 tokens) forward and backward under bf16
autocast, and steps AdamW. Same run, same batch: LAION-CLAP (ClapModel) as the baseline, and the
feature extraction alone. ``--shards ROOT`` also runs training.train.run for a few steps of the
tiny model on those shards on CUDA (loader, DDP-free loop, checkpoint) as a smoke test.

Prints one JSON line; without CUDA the line says it skipped.
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from training.config import FeatureConfig, LossConfig
from training.features import foa_features
from training.losses import elsa_loss
from training.model import to_device
from training.sizes import random_clap, random_elsa

FEAT = FeatureConfig()


def cuda_time(fn, iters: int) -> float:
    for _ in range(2):
        fn()
    torch.cuda.synchronize()
    t = time.perf_counter()
    for _ in range(iters):
        fn()
    torch.cuda.synchronize()
    return (time.perf_counter() - t) / iters


def throughput(batch: int, iters: int) -> dict:
    dev = torch.device("cuda")
    torch.manual_seed(0)
    model, vocab = random_elsa("full")
    to_device(model, dev).train()  # as training.train does: channels-last weights on CUDA
    opt = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=5e-5, fused=True)
    wave = torch.randn(batch, 4, FEAT.max_samples, device=dev) * 0.1
    ids = torch.randint(3, vocab, (batch, 77), device=dev)
    mask = torch.ones_like(ids)
    lab = {
        "spatial": torch.ones(batch, dtype=torch.bool, device=dev),
        "direction": torch.nn.functional.normalize(torch.randn(batch, 3, device=dev), dim=-1),
        "distance_m": torch.full((batch,), 2.0, device=dev),
        "floor_area_m2": torch.full((batch,), 60.0, device=dev),
    }

    def feats() -> tuple[torch.Tensor, torch.Tensor]:
        return foa_features(wave, FEAT)

    def elsa_step() -> None:
        mel, iv = feats()
        with torch.autocast("cuda", dtype=torch.bfloat16):
            out = model(mel, iv, ids, mask)
            loss = elsa_loss(out, lab, LossConfig())["loss"]
        loss.backward()
        opt.step()
        opt.zero_grad(set_to_none=True)

    t_feat = cuda_time(feats, iters)
    _, iv0 = feats()

    def spatial_step() -> None:
        with torch.autocast("cuda", dtype=torch.bfloat16):
            y = model.spatial(iv0)
        y.float().sum().backward()

    torch.backends.cudnn.benchmark = False
    t_spatial_default = cuda_time(spatial_step, iters)
    torch.backends.cudnn.benchmark = True  # what training.train sets on CUDA (fixed shapes)
    t_spatial = cuda_time(spatial_step, iters)
    t_elsa = cuda_time(elsa_step, iters)
    mem = torch.cuda.max_memory_allocated() / 2**30
    model.cpu()
    opt.state.clear()
    torch.cuda.empty_cache()
    clap = to_device(random_clap("full"), dev).train()
    copt = torch.optim.AdamW(clap.parameters(), lr=5e-5, fused=True)

    def clap_step() -> None:
        mel, _ = feats()
        with torch.autocast("cuda", dtype=torch.bfloat16):
            loss = clap(input_ids=ids, attention_mask=mask, input_features=mel, return_loss=True).loss
        loss.backward()
        copt.step()
        copt.zero_grad(set_to_none=True)

    t_clap = cuda_time(clap_step, iters)
    return {
        "batch": batch,
        "elsa_samples_per_s": round(batch / t_elsa, 1),
        "elsa_step_s": round(t_elsa, 4),
        "clap_samples_per_s": round(batch / t_clap, 1),
        "elsa_over_clap_time": round(t_elsa / t_clap, 3),
        "features_samples_per_s": round(batch / t_feat, 1),
        "max_mem_gib": round(mem, 1),
        "spatial_branch_fwd_bwd_s": round(t_spatial, 4),
        "spatial_branch_fwd_bwd_s_without_cudnn_benchmark": round(t_spatial_default, 4),
    }


def smoke(shards: str) -> dict:
    from training.config import DataConfig, ModelConfig, OptimConfig, ShardSource, TrainConfig
    from training.tiny_tokenizer import train_tiny_tokenizer
    from training.train import run

    with tempfile.TemporaryDirectory() as d:
        tok = train_tiny_tokenizer(Path(d) / "tok")
        cfg = TrainConfig(
            run_dir=str(Path(d) / "run"),
            task="elsa",
            device="cuda",
            precision="bf16",
            features_on="device",
            features=FeatureConfig(clip_s=1.0),
            model=ModelConfig.tiny(str(tok)),
            data=DataConfig(
                sources=[ShardSource(root=shards)], batch_size=4, num_workers=2, batches_per_epoch=4
            ),
            optim=OptimConfig(lr=1e-3, warmup_steps=1, max_steps=6),
            checkpoint_every=3,
        )
        s = run(cfg)
        losses = [
            json.loads(x)["loss"]
            for x in (Path(d) / "run" / "log.jsonl").read_text().splitlines()
            if "loss" in json.loads(x)
        ]
    return {
        "steps": s["step"],
        "bf16": s["bf16"],
        "device": s["device"],
        "losses": [round(x, 4) for x in losses],
    }


def main() -> None:
    p = argparse.ArgumentParser()
    p.add_argument("--batch", type=int, default=64)
    p.add_argument("--iters", type=int, default=5)
    p.add_argument("--shards", default=None, help="local shard root for the tiny end-to-end CUDA run")
    a = p.parse_args()
    if not torch.cuda.is_available():
        print(json.dumps({"benchmark": "train_gpu", "skipped": "CUDA not available"}))
        return
    torch.backends.cuda.matmul.allow_tf32 = True
    out = {
        "benchmark": "train_gpu",
        "gpu": torch.cuda.get_device_name(0),
        "torch": torch.__version__,
        "clip_s": FEAT.clip_s,
        "precision": "bf16 autocast",
        "text_tokens": 77,
    }
    if a.shards:
        out["tiny_run_on_shards"] = smoke(a.shards)
    batch = a.batch
    while True:
        try:
            out["full"] = throughput(batch, a.iters)
            break
        except torch.OutOfMemoryError:
            torch.cuda.empty_cache()
            if batch <= 4:
                raise
            out.setdefault("oom_at_batch", []).append(batch)
            batch //= 2
    print(json.dumps(out))


if __name__ == "__main__":
    main()
