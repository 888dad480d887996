"""Sim-to-real: a spatial branch trained only on simulated builds, tested on measured rooms (issue 15).

    .venv/bin/python benchmarks/sim2real.py [--bank PATH ...] [--rooms N] [--aug N] [--steps N]

What runs, all through the project's own flows:

1. ESC-50's categories (``--clips``, default ../shared/realdata/mono/esc50) are split in two by sorted
   name, alternately: the even ones are rendered into the simulated training builds, the odd ones
   (held out, never heard in training) into the measured test builds.
2. One test build per ``--bank`` (default: the three S3A rooms of ../shared/realdata, each its own
   bank, so every room's every position meets the held-out clips): ``room_source: measured``; and
   its engine twin (``room_source: twin``: the same positions in a shoebox of the room's size at its
   measured T30), the control that separates the simulator's gap from the model's; a bank with no
   measurable T30 or size has no twin, and the JSON says why (``no_twin``).
3. One simulated build and one pretraining run per variant, the same rooms, clips and seeds:
   ``realism`` (the default realism options: tetrahedral capture chain, sensor noise, directional
   sources, distances to 10 m, scattering; room_specs/sim2real.yaml) and the ablations that turn
   one of them off (``ideal_encoder``, ``no_noise``, ``no_directivity``), plus ``elsa`` (every
   option off: the ELSA-default data, what issue 15's experiment trained on).
4. Each branch is scored on every test build (training.sim2real) beside the intensity estimator on
   the same inputs, and on every ``--sim-control-every``-th sample it trained on: per real room, the
   simulated samples whose T30 and DRR labels are the room's (``sim_like``) show whether a room's
   error is one the branch makes on simulated rooms too. Each variant trains ``--members`` branches
   (2 by default) on consecutive seeds and answers with their mean, each member's error reported
   beside; ``--members 1`` is one branch, as before session 22.

Prints one JSON line, in which each variant's report says which of issue 15's targets it meets
(``targets``); skips (``{"skipped": ...}``) when no bank is given and ../shared/realdata is absent.
The branch is ELSA's full size unless ``--tiny``.
"""

from __future__ import annotations

import argparse
import csv
import json
import math
import os
import platform
import sys
import time
from pathlib import Path
from typing import get_args

import yaml

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from training.config import TINY_SPATIAL, IvScale, LossConfig, SpatialBranchConfig
from training.field_augment import FieldAugment
from training.sim2real import Sim2RealConfig

REPO = Path(__file__).resolve().parents[1]
REALDATA = REPO.parent / "shared" / "realdata"
S3A = REALDATA / "foa" / "s3a_soundfield_rirs"
ESC50 = REALDATA / "mono" / "esc50"
VARIANTS = ("realism", "ideal_encoder", "no_noise", "no_directivity", "elsa")


def default(field: str):
    """Sim2RealConfig's default of a training option: the flow and the benchmark train one recipe."""
    return Sim2RealConfig.model_fields[field].default


def category_csvs(esc50: Path, out: Path) -> tuple[Path, Path, list[str], list[str]]:
    """train.csv / heldout.csv (path,caption) from ESC-50's metadata: sorted categories, alternately."""
    meta = esc50 / ("selected_subset.csv" if (esc50 / "selected_subset.csv").exists() else "esc50.csv")
    rows = [r for r in csv.DictReader(meta.open()) if (esc50 / "audio" / r["filename"]).exists()]
    cats = sorted({r["category"] for r in rows})
    train_cats, held_cats = cats[0::2], cats[1::2]
    out.mkdir(parents=True, exist_ok=True)
    paths = []
    for name, keep in (("train", set(train_cats)), ("heldout", set(held_cats))):
        p = out / f"{name}.csv"
        with p.open("w", newline="") as f:
            w = csv.writer(f)
            for r in rows:
                if r["category"] in keep:
                    caption = f"the sound of {r['category'].replace('_', ' ')}"
                    w.writerow([str(esc50 / "audio" / r["filename"]), caption])
        paths.append(p)
    return paths[0], paths[1], train_cats, held_cats


def decay_labels(decay_below_hz: float | None) -> dict:
    """The RirSettings fields of every build's labels, test and train alike: a T30 measured one way
    in training and another in the test would score the convention, not the branch. None or 0: the
    broadband labels (RirSettings' default)."""
    return {"decay_below_hz": decay_below_hz} if decay_below_hz else {}


def variant_config(name: str, train_csv: Path, out: Path, n_rooms: int, aug: int,
                   decay_below_hz: float | None = None, tail_turn_s: float = 0.0) -> dict:
    """The simulated build of one variant (BuildConfig fields); ``no_directivity`` gets the realism room
    set without its ``source_directivity`` (same rooms and positions: axes have their own draws).
    ``tail_turn_s`` > 0: every sample's field from that long after the direct sound is turned by its own
    random rotation (AudioPrepConfig.tail_turn), in any variant."""
    realism = name != "elsa"
    rooms = REPO / "room_specs" / ("sim2real.yaml" if realism else "elsa.yaml")
    if name == "no_directivity":
        spec = yaml.safe_load(rooms.read_text())
        spec.pop("source_directivity")
        rooms = out / "sim2real_omni.yaml"
        rooms.write_text(yaml.safe_dump(spec, sort_keys=False))
    noise = {"snr_db": [10.0, 40.0]} if realism and name != "no_noise" else None
    return {
        "source": "csv", "input": str(train_csv), "dataset": f"sim_{name}", "room_config": str(rooms),
        "n_rooms": n_rooms, "augmentations": {"train": aug, "val": 2, "test": 2},
        "shard_size": 128, "rephraser": {"backend": "template"},
        "rir": {"order": 3 if realism else 1, "scattering": realism, "tail_flow": realism,
                **decay_labels(decay_below_hz)},
        "formats": ["tetra" if realism and name != "ideal_encoder" else "foa"],
        "audio": {"sensor_noise": noise, **({"tail_turn": {"after_s": tail_turn_s}} if tail_turn_s else {})},
    }


def build(cfg: dict, out: Path, workers: int) -> str:
    """Run the build flow; returns the version directory."""
    from flows.build import build_spatial_dataset
    from schemas.build import BuildConfig, RunOptions

    res = build_spatial_dataset(BuildConfig.model_validate(cfg), RunOptions(n_workers=workers), str(out))
    return f"{res.uri.rstrip('/')}"


LOSS_TERMS = ("direction", "distance", "area", "t30", "drr")


def loss_weights(pairs: list[str]) -> dict[str, float]:
    """``TERM=W`` strings → {term: weight}; refuses a term the pretraining loss does not have, so a
    typo cannot train a run that silently used the default."""
    out: dict[str, float] = {}
    for pair in pairs:
        term, sep, value = pair.partition("=")
        try:
            weight = float(value)
        except ValueError:
            weight = math.nan
        if not sep or term not in LOSS_TERMS or not weight >= 0.0:
            raise SystemExit(f"--loss-weight wants TERM=W with TERM one of {LOSS_TERMS} and W >= 0, "
                             f"got {pair!r}")
        out[term] = weight
    return out


def run_name(variant: str, args: argparse.Namespace, weights: dict[str, float]) -> str:
    """The run's directory under runs/. Every training option is in it (the numeric ones only when
    they differ from the benchmark's defaults), so runs of one --out never overwrite each other, and
    --reuse never rescores a run trained under other settings. The data paths (--clips, --bank) are
    not: a different clip set or bank wants its own --out. The level weighting is named whenever it is
    on, and the members whenever there are several, default or not: their defaults changed (sessions
    21 and 22), and a run trained before under the old ones must not be taken for one trained under
    the new."""
    defaults = parser()
    baseline = {"members": 1}
    numeric = "".join(f"-{key}{getattr(args, key):g}"
                      for key in ("rooms", "aug", "steps", "batch", "clip_s", "fmin", "fmax", "decay_below",
                                  "members", "tail_turn")
                      if getattr(args, key) != baseline.get(key, defaults.get_default(key)))
    if g := level_exponent(args):
        numeric += f"-iv_level_exponent{g:g}"
    return variant + (f"-{args.field_augment}" if args.field_augment != "none" else "") + (
        f"-seed{args.seed}" if args.seed else "") + ("-level" if args.level_input else "") + (
        "-edir" if args.direction_by_energy else "") + (
        f"-iv{args.iv_scale}" if args.iv_scale != defaults.get_default("iv_scale") else "") + (
        "-prior" if args.direction_prior else "") + (
        "-bal" if args.room_balance else "") + ("-tiny" if args.tiny else "") + numeric + (
        "-w" + "-".join(f"{k}{v:g}" for k, v in weights.items()) if weights else "")


def parser() -> argparse.ArgumentParser:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--bank", action="append", default=None, help="a measured SRIR bank (repeatable)")
    ap.add_argument("--clips", default=str(ESC50), help="ESC-50 folder (audio/ and its metadata CSV)")
    ap.add_argument("--out", default="/tmp/sim2real", help="builds and runs go here; a run's "
                    "directory names its training options (--steps, --fmax, ... when not the default)")
    ap.add_argument("--rooms", type=int, default=1500, help="simulated rooms per variant (one training "
                    "placement each; session 8's run 4)")
    ap.add_argument("--aug", type=int, default=200, help="train samples per training clip")
    ap.add_argument("--test-aug", type=int, default=6, help="samples per held-out clip and test split")
    ap.add_argument("--steps", type=int, default=default("steps"), help="sessions 15-17's runs trained "
                    "1,000 unless named -steps3000")
    ap.add_argument("--batch", type=int, default=default("batch_size"))
    ap.add_argument("--clip-s", type=float, default=default("clip_s"),
                    help="training crop; tests average over windows")
    ap.add_argument("--fmin", type=float, default=default("fmin_hz"), help="bottom of the IV mel bands "
                    "(ELSA: 50; Sim2RealConfig.fmin_hz says why 250)")
    ap.add_argument("--fmax", type=float, default=default("fmax_hz"),
                    help="top of the IV mel bands (ELSA: 14000)")
    ap.add_argument("--decay-below", type=float, default=8000.0, metavar="HZ",
                    help="measure every build's T30 and EDT labels on W low-passed at HZ, the IVs' top by "
                    "default (RirSettings.decay_below_hz; benchmarks/t30_bands.py says why); 0: broadband")
    ap.add_argument("--tail-turn", type=float, default=0.0, metavar="S",
                    help="training builds turn each sample's field from S seconds after the direct sound "
                    "by its own random rotation (schemas.audio.TailTurn: a tail's direction then tells "
                    "nothing of its source's); 0: off. Runs go to runs/<variant>-...-tail_turn<S>")
    ap.add_argument("--variants", default=",".join(VARIANTS))
    ap.add_argument("--workers", type=int, default=2)
    ap.add_argument("--field-augment", default=default("field_augment"), choices=get_args(FieldAugment),
                    help="turn / mirror each training field around the microphone (training.field_augment; "
                    "session 9's run 7); runs go to runs/<variant>-<mode>, or runs/<variant> with none")
    ap.add_argument("--seed", type=int, default=default("seed"), help="training seed (the builds do not "
                    "change); runs of seed k > 0 go to runs/<variant>-seed<k>")
    ap.add_argument("--members", type=int, default=default("members"), help="train this many branches, "
                    "on seeds --seed, --seed + 1, ..., and answer with their mean (Sim2RealConfig.members; "
                    "every member's own error is reported too); runs of N > 1 go to "
                    "runs/<variant>-...-members<N>")
    ap.add_argument("--tiny", action="store_true", help="the test-sized branch instead of ELSA's")
    ap.add_argument("--level-input", action=argparse.BooleanOptionalAction,
                    default=default("spatial").level_input,
                    help="the branch also reads W's level per band (SpatialBranchConfig.level_input; session "
                    "10's run 8); runs go to runs/<variant>-...-level")
    ap.add_argument("--direction-by-energy", action="store_true",
                    help="weight each training crop's direction term by its power over its clip's "
                    "(LossConfig.direction_by_energy); runs go to runs/<variant>-...-edir")
    ap.add_argument("--iv-scale", default=default("iv_scale"), choices=get_args(IvScale),
                    help="the IVs' scaling (FeatureConfig.iv_scale): unit (ELSA) or by each band's energy "
                    "density, keeping its directness; runs go to runs/<variant>-...-ivunit")
    ap.add_argument("--iv-level-exponent", type=float, default=default("spatial").iv_level_exponent,
                    metavar="G", help="the branch weighs each IV by (W's power / its band's loudest) ** G "
                    "(SpatialBranchConfig.iv_level_exponent; 0: off; needs --level-input, and "
                    "--no-level-input turns the default off); runs go to "
                    "runs/<variant>-...-iv_level_exponent<G> whenever G is not 0")
    ap.add_argument("--direction-prior", action="store_true",
                    help="the direction head corrects the clip's power-weighted intensity direction "
                    "(ModelConfig.direction_prior); runs go to runs/<variant>-...-prior")
    ap.add_argument("--room-balance", action="store_true",
                    help="draw training samples so that their T30 and DRR are independent "
                    "(DataConfig.room_balance); runs go to runs/<variant>-...-bal")
    ap.add_argument("--loss-weight", action="append", default=[], metavar="TERM=W",
                    help="override one of SIM2REAL_LOSS's weights (repeatable, e.g. distance=0.01 t30=2); "
                    "runs go to runs/<variant>-...-w<term><w>...")
    ap.add_argument("--test-turns", type=int, default=default("test_turns"),
                    help="also answer each test window on its field turned by multiples of 360/N deg, with "
                    "and without both mirrors, and average (Sim2RealConfig.test_turns; 4N passes each)")
    ap.add_argument("--sim-control-every", type=int, default=default("sim_control_every"), metavar="N",
                    help="also score every N-th simulated training sample and, per real room, those that "
                    "sound like it (the report's sim_like: is a room's error the simulator's or the "
                    "branch's fit?); 0: off")
    ap.add_argument("--reuse", action="store_true", help="score runs already trained in --out again (e.g. on "
                    "new twin builds) instead of retraining them")
    return ap


def level_exponent(args: argparse.Namespace) -> float:
    """--iv-level-exponent; 0 with --no-level-input when left at its default: the weighting reads the level
    input, so turning that off turns the default weighting off too (one asked for is refused by
    SpatialBranchConfig)."""
    if not args.level_input and args.iv_level_exponent == default("spatial").iv_level_exponent:
        return 0.0
    return args.iv_level_exponent


def sim2real_config(args: argparse.Namespace, weights: dict[str, float], train_root: str,
                    test_roots: tuple[str, ...], twin_roots: tuple[str, ...], run_dir: str) -> Sim2RealConfig:
    """The run the options ask for; with none given, Sim2RealConfig's defaults (on 2 torch threads)."""
    branch = TINY_SPATIAL if args.tiny else default("spatial")
    return Sim2RealConfig(
        train_root=train_root, test_roots=test_roots, twin_roots=twin_roots, run_dir=run_dir, seed=args.seed,
        members=args.members, field_augment=args.field_augment, iv_scale=args.iv_scale,
        room_balance=args.room_balance,
        direction_prior=args.direction_prior, steps=args.steps, batch_size=args.batch, clip_s=args.clip_s,
        fmin_hz=args.fmin, fmax_hz=args.fmax,
        spatial=SpatialBranchConfig.model_validate(branch.model_dump() | {
            "level_input": args.level_input, "iv_level_exponent": level_exponent(args)}),
        loss=LossConfig.model_validate(default("loss").model_dump() | weights | {
            "direction_by_energy": args.direction_by_energy}),
        test_turns=args.test_turns, sim_control_every=args.sim_control_every, torch_threads=2)


def main() -> None:
    args = parser().parse_args()
    weights = loss_weights(args.loss_weight)  # before the data check: a typo fails on any machine

    s3a = [str(S3A / r) for r in ("MainChurch", "OldChurch", "Vislab")] if S3A.exists() else []
    banks = args.bank or s3a
    if not banks or not Path(args.clips).exists():
        print(json.dumps({"benchmark": "sim2real", "skipped": "no measured bank or ESC-50 clips"}))
        return
    from tasks.measured_twins import TwinError
    from training.sim2real import run_sim2real

    out = Path(args.out)
    train_csv, held_csv, train_cats, held_cats = category_csvs(Path(args.clips), out)
    wall0 = time.monotonic()
    tests, twins, no_twin = [], [], {}
    for bank in banks:
        name = Path(bank).name.lower()
        test = {"source": "csv", "input": str(held_csv), "room_source": "measured", "bank": bank,
                "shard_size": 128, "augmentations": {s: args.test_aug for s in ("train", "val", "test")},
                "rephraser": {"backend": "template"}, "rir": decay_labels(args.decay_below)}
        tests.append(build(test | {"dataset": f"real_{name}"[:32]}, out / "test", args.workers))
        try:
            twins.append(build(test | {"dataset": f"twin_{name}"[:32], "room_source": "twin"}, out / "twin",
                               args.workers))
        except TwinError as e:  # a bank with no measured T30 or no size has no twin; the JSON says why
            no_twin[name] = str(e).splitlines()[0][:300]
    results = {}
    for variant in args.variants.split(","):
        t0 = time.monotonic()
        cfg_build = variant_config(variant, train_csv, out, args.rooms, args.aug, args.decay_below,
                                   args.tail_turn)
        root = build(cfg_build, out / "train", args.workers)
        build_wall = time.monotonic() - t0
        cfg = sim2real_config(args, weights, root, tuple(tests), tuple(twins),
                              str(out / "runs" / run_name(variant, args, weights)))
        report = run_sim2real(cfg, reuse=args.reuse)
        results[variant] = {"build_wall_s": round(build_wall, 1), **json.loads(report.model_dump_json(
            exclude={"train_root", "test_roots"}))}
    print(json.dumps({
        "benchmark": "sim2real", "banks": banks,
        "train_categories": train_cats, "heldout_categories": held_cats,
        "rooms": args.rooms, "aug": args.aug, "steps": args.steps, "batch": args.batch,
        "clip_s": args.clip_s, "fmin_hz": args.fmin, "fmax_hz": args.fmax, "tiny": args.tiny,
        "seed": args.seed, "members": args.members,
        "level_input": args.level_input, "direction_by_energy": args.direction_by_energy,
        "iv_scale": args.iv_scale, "iv_level_exponent": level_exponent(args),
        "direction_prior": args.direction_prior,
        "room_balance": args.room_balance, "loss_weights": weights,
        "test_turns": args.test_turns, "sim_control_every": args.sim_control_every,
        "decay_below_hz": args.decay_below or None, "tail_turn_s": args.tail_turn or None,
        "field_augment": args.field_augment,
        "no_twin": no_twin, "variants": results, "wall_s": round(time.monotonic() - wall0, 1),
        "cpu_count": os.cpu_count(), "machine": platform.machine(), "python": platform.python_version(),
    }))


if __name__ == "__main__":
    main()
