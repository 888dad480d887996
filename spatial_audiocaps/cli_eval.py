"""``spatial-audiocaps evaluate CHECKPOINT SHARDS --out DIR``: the ELSA evaluation and its report.

``add_commands(sub)`` registers the command on the main parser's subparsers; the handler returns
a JSON-serialisable dict (where the report went and its headline numbers). A YAML/JSON file given
with ``--config`` supplies any EvaluationConfig field; flags given on the command line win.
torch and transformers load only when the command runs, so ``--help`` stays fast.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path
from typing import Any


def build_config(args: argparse.Namespace) -> Any:
    """EvaluationConfig from --config (if any) updated by the flags that were given."""
    import yaml

    from training.evaluate import EvaluationConfig

    base: dict[str, Any] = {}
    if args.config:
        text = Path(args.config).read_text()
        base = (json.loads(text) if args.config.endswith(".json") else yaml.safe_load(text)) or {}
    base["checkpoint"] = args.checkpoint
    base["shards"] = args.shards
    flags = {
        "test_split": args.test_split,
        "train_split": args.train_split,
        "device": args.device,
        "batch_size": args.batch_size,
        "max_test_samples": args.max_test_samples,
        "max_train_samples": args.max_train_samples,
        "projection": args.projection,
        "seed": args.seed,
    }
    base.update({k: v for k, v in flags.items() if v is not None})
    if args.no_baseline:
        base["baseline"] = False
    if args.no_probes:
        base["probes"] = False
    if args.probe_steps is not None:
        base["probe"] = {**base.get("probe", {}), "steps": args.probe_steps}
    if args.real:
        base["real"] = [
            *base.get("real", []),
            *(
                {"name": f"{kind}-{Path(audio).stem}", "kind": kind, "audio": audio, "labels": labels}
                for kind, audio, labels in args.real
            ),
        ]
    return EvaluationConfig.model_validate(base)


def _cmd_evaluate(args: argparse.Namespace) -> dict[str, Any]:
    from training.evaluate import evaluate
    from training.report import write_report

    report = evaluate(build_config(args))
    files = write_report(report, args.out)
    return {
        **files.model_dump(),
        "step": report.step,
        "counts": report.counts,
        "headline": report.headline(),
        "notes": report.notes,
    }


def add_commands(sub: argparse._SubParsersAction) -> None:  # type: ignore[type-arg]
    """Register ``evaluate`` on the main parser's subcommands."""
    ev = sub.add_parser(
        "evaluate",
        help="evaluate an ELSA checkpoint on shards: retrieval, zero-shot, DOA probe, "
        "direction swap; writes report.json, report.md and plots",
    )
    ev.add_argument("checkpoint", help="training run directory (latest checkpoint) or a checkpoint directory")
    ev.add_argument("shards", help="shard root, local path or s3://bucket/prefix ({root}/{split}/*.tar)")
    ev.add_argument(
        "--out", required=True, help="directory for report.json, report.md, samples.parquet, plots/"
    )
    ev.add_argument("--config", help="EvaluationConfig as YAML or JSON; flags override it")
    ev.add_argument("--test-split", default=None, help="split evaluated (default test)")
    ev.add_argument("--train-split", default=None, help="split the probes are fit on (default train)")
    ev.add_argument("--device", choices=["auto", "cpu", "cuda"], default=None)
    ev.add_argument("--batch-size", type=int, default=None)
    ev.add_argument("--max-test-samples", type=int, default=None)
    ev.add_argument(
        "--max-train-samples", type=int, default=None, help="spatial train samples for the probes"
    )
    ev.add_argument("--projection", choices=["auto", "umap", "pca"], default=None)
    ev.add_argument("--probe-steps", type=int, default=None, help="optimizer steps of each probe MLP")
    ev.add_argument("--seed", type=int, default=None)
    ev.add_argument(
        "--no-baseline", action="store_true", help="skip the semantic-only (spatial branch zeroed) row"
    )
    ev.add_argument(
        "--no-probes", action="store_true", help="skip the DOA probe, direction swap and projection"
    )
    ev.add_argument(
        "--real",
        nargs=3,
        action="append",
        metavar=("KIND", "AUDIO", "LABELS"),
        help="real recordings for the DOA probe: KIND tut2018|starss23, AUDIO and LABELS a file or "
        "a directory (matched by file name); repeatable",
    )
    ev.set_defaults(func=_cmd_evaluate)
