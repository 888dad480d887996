"""Pretraining of the spatial branch alone (ELSA appendix A.8) on our own shards.

Multi-task regression from the intensity vectors: direction (1 − cos of a 3-vector: azimuth and
elevation together, no wrap-around), and MSE of distance, floor area, full-band T30 and DRR. The
paper pretrained on Spatial LibriSpeech with LAMB at 1e-3, weight decay 0.01, batch 1024 and no
schedule; here AdamW, same lr and decay, is the default. The run writes ``spatial_branch.pt``,
which ``ModelConfig.spatial_checkpoint`` loads into ELSA.

    torchrun --nproc_per_node N -m training.pretrain_spatial --config spatial.yaml
"""

from __future__ import annotations

import sys
from typing import Any

from training.config import OptimConfig, TrainConfig
from training.train import main as _train_main
from training.train import run as _run

PAPER_OPTIM = OptimConfig(lr=1e-3, weight_decay=0.01, warmup_steps=0, min_lr_ratio=1.0)


def run(cfg: TrainConfig) -> dict[str, Any]:
    """Train the spatial branch with its heads; ``cfg.task`` must be 'spatial'."""
    if cfg.task != "spatial":
        cfg = cfg.model_copy(update={"task": "spatial"})
    return _run(cfg)


def main(argv: list[str] | None = None) -> int:
    """Same arguments as training.train; the task is forced to 'spatial'."""
    from pathlib import Path

    import yaml

    args = list(sys.argv[1:] if argv is None else argv)
    if "--config" in args:
        i = args.index("--config") + 1
        p = Path(args[i])
        data = yaml.safe_load(p.read_text())
        if data.get("task") != "spatial":
            data["task"] = "spatial"
            fixed = p.with_name(p.stem + ".spatial.yaml")
            fixed.write_text(yaml.safe_dump(data, sort_keys=False))
            args[i] = str(fixed)
    return _train_main(args)


if __name__ == "__main__":
    sys.exit(main())
