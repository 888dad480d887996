"""``spatial-audiocaps inspect URI`` and ``spatial-audiocaps report URI``.

``add_commands(sub)`` registers both on the main parser's subparsers; each handler returns a
JSON-serialisable dict (cli.py prints it as one line). URIs are local paths or s3:// URIs; S3
credentials come only from the standard AWS environment, never from the command line.
"""

from __future__ import annotations

import argparse
import math
from typing import Any

from tasks.inspect_dataset import DEFAULT_DOA_SAMPLES, DEFAULT_TOLERANCE_DEG


def _clean(obj: Any) -> Any:
    """NaN/inf to None anywhere in a nested result (cli.py prints with allow_nan=False)."""
    if isinstance(obj, float):
        return obj if math.isfinite(obj) else None
    if isinstance(obj, dict):
        return {str(k): _clean(v) for k, v in obj.items()}
    if isinstance(obj, list | tuple):
        return [_clean(v) for v in obj]
    return obj


def _cmd_inspect(args: argparse.Namespace) -> dict[str, Any]:
    from tasks.inspect_dataset import inspect_uri

    n = None if args.all else args.doa_samples
    if args.no_doa:
        n = 0
    return _clean(inspect_uri(args.uri, doa_samples=n, tolerance_deg=args.tolerance, deep=args.deep))


def _cmd_report(args: argparse.Namespace) -> dict[str, Any]:
    from tasks.dataset_card import CARD_JSON, CARD_README, write_card
    from tasks.storage import join_uri, safe_uri

    card = write_card(args.uri)
    base = args.uri.rstrip("/")
    return _clean(
        {
            "uri": safe_uri(base),
            "card": safe_uri(join_uri(base, CARD_JSON)),
            "readme": safe_uri(join_uri(base, CARD_README)),
            "plots": [safe_uri(join_uri(base, p)) for p in card.plots],
            "samples": card.totals.samples,
            "hours": card.totals.hours,
            "splits": {s: v.samples for s, v in card.splits.items()},
        }
    )


def add_commands(sub: argparse._SubParsersAction) -> None:  # type: ignore[type-arg]
    """Register ``inspect`` and ``report`` on the main parser's subcommands."""
    ins = sub.add_parser("inspect", help="summarise a dataset version or one shard; DOA-check the audio")
    ins.add_argument("uri", help="dataset version root or a .tar shard (path or s3://bucket/key)")
    ins.add_argument(
        "--doa-samples",
        type=int,
        default=DEFAULT_DOA_SAMPLES,
        help=f"samples to DOA-check (default {DEFAULT_DOA_SAMPLES}; 0 = none)",
    )
    ins.add_argument("--all", action="store_true", help="DOA-check every sample")
    ins.add_argument("--no-doa", action="store_true", help="skip the DOA check")
    ins.add_argument(
        "--tolerance",
        type=float,
        default=DEFAULT_TOLERANCE_DEG,
        help="flag a sample whose audio direction is further than this from its label (degrees)",
    )
    ins.add_argument("--deep", action="store_true", help="re-read every shard to verify its sha256")
    ins.set_defaults(func=_cmd_inspect)

    rep = sub.add_parser(
        "report", help="rebuild the dataset card (card.json, README.md, plots) from the manifest"
    )
    rep.add_argument("uri", help="dataset version root (path or s3://bucket/prefix/dataset/version)")
    rep.set_defaults(func=_cmd_report)
