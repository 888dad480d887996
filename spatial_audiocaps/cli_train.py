"""``spatial-audiocaps train`` and ``train-manifest``: ELSA training from the command line.

``add_commands(sub)`` registers both on the main parser's subparsers; each handler returns a
JSON-serialisable dict, which ``spatial_audiocaps.cli`` prints.
"""

from __future__ import annotations

import argparse
from pathlib import Path
from typing import Any


def _load(args: argparse.Namespace) -> Any:
    from training.config import TrainConfig, load_train_config

    cfg = load_train_config(args.config)
    upd: dict[str, Any] = {}
    if getattr(args, "run_dir", None):
        upd["run_dir"] = args.run_dir
    if getattr(args, "max_steps", None):
        upd["optim"] = cfg.optim.model_copy(update={"max_steps": args.max_steps})
    if getattr(args, "task", None):
        upd["task"] = args.task
    return TrainConfig.model_validate(cfg.model_copy(update=upd).model_dump())


def _cmd_train(args: argparse.Namespace) -> dict[str, Any]:
    from training.launch import launch

    return launch(_load(args), args.nproc, timeout_s=args.timeout)


def _cmd_manifest(args: argparse.Namespace) -> dict[str, Any]:
    from training.k8s import PyTorchJobSpec, render_yaml

    spec = PyTorchJobSpec(
        name=args.name,
        namespace=args.namespace,
        image=args.image,
        nnodes=args.nnodes,
        nproc_per_node=args.nproc_per_node,
        gpus_per_node=args.gpus_per_node,
        aws_endpoint_url=args.endpoint_url,
        runs_pvc=args.pvc,
    )
    text = render_yaml(spec, _load(args))
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(text)
    return {
        "out": str(out),
        "kind": "PyTorchJob",
        "name": spec.name,
        "nnodes": spec.nnodes,
        "nproc_per_node": spec.nproc_per_node,
    }


def add_commands(sub: argparse._SubParsersAction) -> None:
    """Register ``train`` and ``train-manifest``."""
    tr = sub.add_parser("train", help="train ELSA (or the spatial branch) under torchrun on this machine")
    tr.add_argument("--config", required=True, help="TrainConfig YAML/JSON (training/config.py)")
    tr.add_argument("--nproc", type=int, default=1, help="processes (GPUs, or CPU ranks with gloo)")
    tr.add_argument("--run-dir", default=None, help="override run_dir")
    tr.add_argument("--max-steps", type=int, default=None)
    tr.add_argument("--task", choices=["elsa", "spatial"], default=None)
    tr.add_argument("--timeout", type=float, default=None, help="seconds")
    tr.set_defaults(func=_cmd_train)

    mf = sub.add_parser("train-manifest", help="write a Kubernetes PyTorchJob for multi-node training")
    mf.add_argument("--config", required=True)
    mf.add_argument("--name", required=True)
    mf.add_argument("--image", required=True)
    mf.add_argument("--namespace", default="default")
    mf.add_argument("--nnodes", type=int, default=2)
    mf.add_argument("--nproc-per-node", type=int, default=8)
    mf.add_argument("--gpus-per-node", type=int, default=8)
    mf.add_argument("--endpoint-url", default=None, help="AWS_ENDPOINT_URL for the pods")
    mf.add_argument("--pvc", default="elsa-runs", help="ReadWriteMany claim for run_dir")
    mf.add_argument("--run-dir", default=None)
    mf.add_argument("--out", required=True)
    mf.set_defaults(func=_cmd_manifest)
