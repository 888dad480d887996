"""Command-line entry point: ``spatial-audiocaps <command>``.

Every command prints one JSON object on stdout. Bad input exits with status 2 and a one-line
``error: ...`` on stderr naming the problem, never a traceback.
"""

from __future__ import annotations

import argparse
import json
import sys
from collections import Counter
from pathlib import Path
from typing import Any, get_args

import numpy as np
import soundfile as sf
from pydantic import ValidationError

from room_specs import DEFAULT_CONFIG
from schemas.captions import BackendName
from schemas.sources import SourceName
from spatial_audiocaps import cli_captions, cli_eval, cli_shards, cli_train
from tasks.errors import SpatialAudioCapsError


def _emit(obj: dict[str, Any]) -> None:
    print(json.dumps(obj, indent=None, allow_nan=False))


def _cmd_rir(args: argparse.Namespace) -> dict[str, Any]:
    from schemas.rooms import RirSettings
    from tasks.rir_engine import measure, render_rir
    from tasks.room_sampling import parametric_room

    room = parametric_room(tuple(args.dims), args.t30, room_id="cli")
    settings = RirSettings(fs=args.fs, order=args.order, seed=args.seed)
    rendered = render_rir(
        room, tuple(args.receiver), tuple(args.source), yaw_deg=args.yaw, settings=settings,
        anechoic=args.anechoic,
    )
    record = measure(
        rendered, placement_id="cli", room_id="cli", room_set_hash="none",
        target_t30_s=args.t30, order=args.order, anechoic=args.anechoic,
    )
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    sf.write(out, rendered.rir.T, rendered.fs, subtype="FLOAT", format="WAV")
    return {
        "out": str(out),
        "channels": int(rendered.rir.shape[0]),
        "format": "ambiX (ACN/SN3D)",
        "azimuth_deg": record.azimuth_deg,
        "elevation_deg": record.elevation_deg,
        "distance_m": record.distance_m,
        "t30_s": record.t30_s,
        "edt_s": record.edt_s,
        "drr_db": record.drr_db,
        "c50_db": record.c50_db,
        "direct_doa_error_deg": record.direct_doa_error_deg,
        "absorption_scale": rendered.absorption_scale,
        "calibration_iterations": rendered.calibration_iterations,
    }


def _cmd_rooms_sample(args: argparse.Namespace) -> dict[str, Any]:
    from tasks.room_sampling import (
        load_config,
        parquet_bytes,
        placements_table,
        rooms_table,
        sample_room_set,
    )

    cfg = load_config(args.config)
    rooms, placements, digest = sample_room_set(cfg, args.seed, args.n)
    out = Path(args.out)
    placements_out = Path(args.placements_out) if args.placements_out else out.with_name(
        "placements.parquet"
    )
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_bytes(parquet_bytes(rooms_table(rooms, digest)))
    placements_out.write_bytes(parquet_bytes(placements_table(placements, digest)))
    return {
        "rooms": str(out),
        "placements": str(placements_out),
        "room_set_hash": digest,
        "n_rooms": len(rooms),
        "placements_per_split": dict(Counter(p.split for p in placements)),
        "floor_area_m2": [min(r.floor_area_m2 for r in rooms), max(r.floor_area_m2 for r in rooms)],
        "target_t30_s": [min(r.target_t30_s for r in rooms), max(r.target_t30_s for r in rooms)],
    }


def _cmd_doa(args: argparse.Namespace) -> dict[str, Any]:
    from tasks.doa import estimate_doa_file

    band = None if args.broadband else (args.fmin, args.fmax)
    est = estimate_doa_file(args.file, args.format, args.start, args.end, band)
    return est.model_dump(mode="json")


# Flags kept as shorthands of ``--set``: (flag, dotted key, type, choices, help).
BUILD_FLAGS: tuple[tuple[str, str, type, tuple[str, ...] | None, str], ...] = (
    ("--source", "source", str, get_args(SourceName), "source corpus"),
    ("--input", "input", str, None, "the source's CSV, directory or tars"),
    ("--dataset", "dataset", str, None, "dataset name (default: the source)"),
    ("--room-config", "room_config", str, None, "room-set YAML"),
    ("--room-seed", "room_seed", int, None, "room-set seed (measured banks: which rooms are held out)"),
    ("--room-source", "room_source", str, None, "where rooms and RIRs come from: ism (simulated, default), "
     "measured (a recorded SRIR bank, --bank) or twin (shoebox twins of the bank's rooms and positions)"),
    ("--bank", "bank", str, None, "the measured bank: a SOFA file, or a folder of ambiX/FuMa WAVs with "
     "labels_derived.csv (the S3A layout), or a folder of such rooms"),
    ("--bank-format", "bank_format", str, ("ambix", "fuma", "n3d"),
     "the bank's channel format (default: its manifest, SOFA attribute, README text or data)"),
    ("--n-rooms", "n_rooms", int, None, "rooms to sample (default: the room config's)"),
    ("--rephraser", "rephraser.backend", str, get_args(BackendName), "rephrasing backend"),
    ("--rephraser-model", "rephraser.model", str, None, "rephraser model (hub id or local path)"),
    ("--shard-size", "shard_size", int, None, "samples per shard"),
    ("--seed", "seed", int, None, "plan seed"),
    ("--limit", "limit", int, None, "at most this many source clips"),
    ("--formats", "formats", str, None, "output formats of spatial samples, comma-separated: the .flac "
     "(ambix, the default, or foa: first order), then binaural ({key}.binaural.flac), mic ({key}.mic.flac)"),
    ("--snr", "audio.sensor_noise.snr_db", str, None, "sensor noise on every spatial format: each sample's "
     "SNR (dB, on the level channels) drawn uniformly from LO,HI, e.g. 10,40 (default: no noise)"),
    ("--noise-spectrum", "audio.sensor_noise.spectrum", str, ("white", "pink"),
     "the sensor noise's spectrum (white, the default, or pink); turns sensor noise on"),
    ("--rephrase-deployment", "run.rephrase_deployment", str, None,
     "run the caption stage on the GPU pool (e.g. rephrase-captions/rephrase-captions-gpu)"),
    ("--rephrase-workers", "run.rephrase_workers", int, None, "caption-stage workers (one engine each)"),
    ("--caption-batch", "run.caption_batch", int, None, "captions per caption-stage batch"),
    ("--workers", "run.n_workers", int, None, "Dask worker processes"),
    ("--scheduler", "run.scheduler_address", str, None, "address of an existing Dask scheduler"),
)


def _cmd_build(args: argparse.Namespace) -> dict[str, Any]:
    from tasks.build_file import load_build, parse_override, read_scene_file

    flags = [(key, getattr(args, _dest(flag))) for flag, key, *_ in BUILD_FLAGS
             if getattr(args, _dest(flag)) is not None]
    if args.scene_config is not None:
        flags.insert(0, ("scenes", read_scene_file(args.scene_config)))
    config, run = load_build(args.config, [*flags, *(parse_override(s) for s in args.set)])
    if "progress" not in run.model_fields_set:
        run = run.model_copy(update={"progress": sys.stderr.isatty()})

    from flows.build import build_spatial_dataset

    # One shard's stats per shard is for the flow's artifact and benchmarks, not a terminal line.
    return build_spatial_dataset(config=config, run=run, output=args.out).model_dump(
        mode="json", exclude={"shard_stats"})


def _dest(flag: str) -> str:
    return flag.removeprefix("--").replace("-", "_")


def _cmd_schemas(args: argparse.Namespace) -> dict[str, Any]:
    from schemas.export import write_json_schemas

    written = write_json_schemas(Path(args.out))
    return {"out": args.out, "schemas": sorted(p.name for p in written)}


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="spatial-audiocaps", description=__doc__)
    sub = parser.add_subparsers(dest="command", required=True)

    rir = sub.add_parser("rir", help="render one ambisonic RIR (float32 ambiX WAV)")
    rir.add_argument("--dims", nargs=3, type=float, required=True, metavar=("L", "W", "H"))
    rir.add_argument("--t30", type=float, required=True, help="target full-band T30, seconds")
    rir.add_argument("--receiver", nargs=3, type=float, required=True, metavar=("X", "Y", "Z"))
    rir.add_argument("--source", nargs=3, type=float, required=True, metavar=("X", "Y", "Z"))
    rir.add_argument("--yaw", type=float, default=0.0, help="receiver yaw, degrees (0 faces +x)")
    rir.add_argument("--fs", type=int, default=48000)
    rir.add_argument("--order", type=int, default=1, choices=[0, 1, 2, 3])
    rir.add_argument("--seed", type=int, default=0, help="seed of the late-tail noise")
    rir.add_argument("--anechoic", action="store_true", help="direct path only")
    rir.add_argument("--out", required=True)
    rir.set_defaults(func=_cmd_rir)

    rooms = sub.add_parser("rooms", help="room sets").add_subparsers(dest="rooms_cmd", required=True)
    sample = rooms.add_parser("sample", help="sample a room set and its placements")
    sample.add_argument("--config", default=str(DEFAULT_CONFIG), help="room-set YAML")
    sample.add_argument("--n", type=int, default=None, help="number of rooms (default: config)")
    sample.add_argument("--seed", type=int, default=0)
    sample.add_argument("--out", required=True, help="rooms.parquet")
    sample.add_argument("--placements-out", default=None, help="default: placements.parquet beside")
    sample.set_defaults(func=_cmd_rooms_sample)

    doa = sub.add_parser("doa", help="intensity-vector direction of arrival of an FOA file")
    doa.add_argument("file")
    doa.add_argument("--format", choices=["ambix", "fuma"], default="ambix")
    doa.add_argument("--start", type=float, default=None, help="seconds")
    doa.add_argument("--end", type=float, default=None, help="seconds")
    doa.add_argument("--fmin", type=float, default=300.0)
    doa.add_argument("--fmax", type=float, default=3000.0)
    doa.add_argument("--broadband", action="store_true", help="no band limit (clean RIRs)")
    doa.set_defaults(func=_cmd_doa)

    schemas = sub.add_parser("schemas", help="export the JSON Schemas of every record")
    schemas.add_argument("--out", required=True)
    schemas.set_defaults(func=_cmd_schemas)

    build = sub.add_parser(
        "build", help="run the build-spatial-dataset flow (ephemeral Prefect)",
        description="The build is --config's file (sections config: and run:), then the flags below, "
        "then each --set, in that order. Only config: changes the dataset version.",
    )
    build.add_argument("--config", default=None, help="build YAML (e.g. configs/build-demo.yaml)")
    build.add_argument("--set", action="append", default=[], metavar="KEY=VALUE",
                       help="dotted override, the value read as YAML, e.g. rephraser.temperature=0.7 or "
                            "run.engine.vllm.tensor_parallel_size=2 (repeatable)")
    build.add_argument("--out", default="out", help="local directory or s3://bucket/prefix")
    build.add_argument("--scene-config", default=None, metavar="YAML",
                       help="scene distribution (e.g. room_specs/scenes_demo.yaml): several, moving sources "
                            "per sample; default: ELSA's one static source (= --set scenes=...)")
    for flag, key, typ, choices, text in BUILD_FLAGS:
        build.add_argument(flag, type=typ, choices=choices, default=None, help=f"{text} (= --set {key}=...)")
    build.set_defaults(func=_cmd_build)

    for module in (cli_captions, cli_shards, cli_train, cli_eval):
        module.add_commands(sub)
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        result = args.func(args)
    except (SpatialAudioCapsError, ValidationError) as exc:
        print("error: " + " ".join(str(exc).split()), file=sys.stderr)
        return 2
    _emit({k: (None if isinstance(v, float) and not np.isfinite(v) else v) for k, v in result.items()})
    return 0


if __name__ == "__main__":
    sys.exit(main())
