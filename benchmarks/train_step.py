"""Forward + backward time of one ELSA training step on CPU, tiny and full size.

Same run, same batch: LAION-CLAP (transformers' ClapModel of the same size, its own contrastive
loss) as the baseline, so the ratio says what the spatial branch, the 960-d projection and the
three heads add. Tiny: batch 8 of 1 s clips. Full: batch 2 of 10 s clips (HTSAT-base, RoBERTa-base,
the 486k spatial branch), 32 text tokens. Median of 3 after a warm-up; torch threads = all cores.
"""

from __future__ import annotations

import json
import os
import platform
import statistics
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from training.config import FeatureConfig, LossConfig
from training.losses import elsa_loss
from training.model import count_parameters
from training.sizes import random_clap, random_elsa

REPEATS = 3


def batch(size: str, n: int, vocab: int) -> dict:
    frames = FeatureConfig(clip_s=1.0 if size == "tiny" else 10.0).n_frames
    g = torch.Generator().manual_seed(0)
    az = torch.rand(n, generator=g) * 6.28
    return {
        "mel": torch.randn(n, 1, frames, 64, generator=g) * 10 - 40,
        "iv": torch.nn.functional.normalize(torch.randn(n, 6, frames, 64, generator=g), dim=1),
        "input_ids": torch.randint(3, vocab, (n, 32), generator=g),
        "attention_mask": torch.ones(n, 32, dtype=torch.long),
        "spatial": torch.ones(n, dtype=torch.bool),
        "direction": torch.stack([az.cos(), az.sin(), torch.zeros(n)], 1),
        "distance_m": torch.full((n,), 2.0),
        "floor_area_m2": torch.full((n,), 60.0),
    }


def timed(fn) -> float:
    fn()
    ts = []
    for _ in range(REPEATS):
        t = time.perf_counter()
        fn()
        ts.append(time.perf_counter() - t)
    return statistics.median(ts)


def measure(size: str, n: int) -> dict:
    torch.manual_seed(0)
    model, vocab = random_elsa(size)
    model.train()
    b = batch(size, n, vocab)

    def elsa_step() -> None:
        model.zero_grad(set_to_none=True)
        out = model(b["mel"], b["iv"], b["input_ids"], b["attention_mask"])
        elsa_loss(out, b, LossConfig())["loss"].backward()

    t_elsa = timed(elsa_step)
    n_elsa = count_parameters(model)
    clap = random_clap(size).train()

    def clap_step() -> None:
        clap.zero_grad(set_to_none=True)
        clap(
            input_ids=b["input_ids"],
            attention_mask=b["attention_mask"],
            input_features=b["mel"],
            return_loss=True,
        ).loss.backward()

    t_clap = timed(clap_step)
    return {
        "batch": n,
        "frames": int(b["mel"].shape[2]),
        "params": n_elsa,
        "clap_params": count_parameters(clap),
        "step_s": round(t_elsa, 4),
        "samples_per_s": round(n / t_elsa, 2),
        "clap_step_s": round(t_clap, 4),
        "elsa_over_clap": round(t_elsa / t_clap, 3),
    }


def main() -> None:
    torch.set_num_threads(len(os.sched_getaffinity(0)))
    print(
        json.dumps(
            {
                "benchmark": "train_step",
                "device": "cpu",
                "threads": torch.get_num_threads(),
                "tiny": measure("tiny", 8),
                "full": measure("full", 2),
                "repeats": REPEATS,
                "cpu_count": os.cpu_count(),
                "machine": platform.machine(),
                "torch": torch.__version__,
                "load_avg_1m": round(os.getloadavg()[0], 2),
            }
        )
    )


if __name__ == "__main__":
    main()
