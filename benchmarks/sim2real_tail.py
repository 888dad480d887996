"""Does a sim-to-real branch follow the measured rooms' reverberant tails? One JSON line.

    .venv/bin/python benchmarks/sim2real_tail.py --run /tmp/sim2real/runs/realism [--bank PATH ...]

Why: issue 15's branch points every source in S3A's churches 13-19 deg too high while the classical
estimator does not. This scores a trained run (``benchmarks/sim2real.py``'s run directory) on each
bank position convolved with held-out clips three ways, changing only the RIR: whole; cut after its
first 50 ms; and with the tail after 50 ms turned upside down (Z negated, so it arrives from below
what it arrived from above). If the bias follows the tail, the branch reads the tail's direction.
Each variant also gives the T30 head's median answer: does the T30 cue live in the tail's direction?
And the classical intensity estimator's elevation bias and error on the same audio (``classical``): how
far a tail moves an answer that sums raw intensity, the reference for how far it moves the branch's.
Beside it, each room's tail flow: the elevation and strength (|I| / energy, 300-3000 Hz) of the net
active intensity 50-200 ms and 200-800 ms after the direct sound. The engine's diffuse tail is
isotropic unless a build turns ``rir.tail_flow`` on.

Held-out clips come from the run's sim2real ``heldout.csv`` (its --out folder), every
``--clip-step``-th, so the clips are categories the branch never heard. Skips without the run or
../shared/realdata.
"""

from __future__ import annotations

import argparse
import csv
import json
import sys
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

REPO = Path(__file__).resolve().parents[1]
S3A = REPO.parent / "shared" / "realdata" / "foa" / "s3a_soundfield_rirs"
FS = 48000
TAIL_FROM_S = 0.05
FLOW_WINDOWS_S = ((0.05, 0.2), (0.2, 0.8))


def variants(rir: np.ndarray) -> dict[str, np.ndarray]:
    """The RIR whole, cut after TAIL_FROM_S past its peak, and with that tail's Z (ACN 2) negated."""
    cut = int(np.argmax(np.abs(rir[0]))) + round(TAIL_FROM_S * FS)
    early = rir.copy()
    early[:, cut:] = 0.0
    below = rir.copy()
    below[2, cut:] *= -1.0
    return {"whole": rir, "first_50ms": early, "tail_from_below": below}


def tail_flow(rir: np.ndarray, start_s: float, end_s: float) -> tuple[float, float]:
    """Elevation (deg) and |I| / energy of the net active intensity (300-3000 Hz) in a window after
    the peak of an ambiX RIR: how much of the tail flows one way, and which way."""
    from tasks.room_acoustics import net_flow

    flow = net_flow(rir, FS, start_s, end_s)
    norm = float(np.linalg.norm(flow))
    return float(np.degrees(np.arcsin(flow[2] / norm))), norm


def _medians(cases: list[tuple[float, float, float, float, float]]) -> dict[str, float | dict[str, float]]:
    """Median elevation bias (deg), DOA error (deg) and T30 answer (s) over a variant's cases, and the
    classical estimator's elevation bias and DOA error."""
    bias, doa, t30, c_bias, c_doa = np.median(np.array(cases), axis=0)
    return {"el_bias": round(float(bias), 1), "doa": round(float(doa), 1), "t30_s": round(float(t30), 2),
            "classical": {"el_bias": round(float(c_bias), 1), "doa": round(float(c_doa), 1)}}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--run", default="/tmp/sim2real/runs/realism", help="a trained sim2real run directory")
    ap.add_argument("--bank", action="append", default=None,
                    help="a measured SRIR bank, repeatable (default: the S3A churches)")
    ap.add_argument("--heldout", default=None, help="path,caption CSV (default: the run's ../../heldout.csv)")
    ap.add_argument("--clip-step", type=int, default=7, help="every n-th held-out clip")
    args = ap.parse_args()
    run = Path(args.run)
    banks = args.bank or [str(S3A / r) for r in ("MainChurch", "OldChurch")]
    heldout = Path(args.heldout) if args.heldout else run.parent.parent / "heldout.csv"
    missing = [p for p in (run / "spatial_branch.pt", heldout, *map(Path, banks)) if not p.exists()]
    if missing:
        print(json.dumps({"benchmark": "sim2real_tail", "skipped": f"missing {missing[0]}"}))
        return
    import soundfile as sf
    import torch
    from scipy.signal import fftconvolve, resample_poly

    from tasks.ambisonics import angular_distance_deg, vector_to_angles
    from tasks.doa import intensity_doa
    from tasks.measured_bank import load_bank, to_ambix
    from training.checkpoint import load_trained
    from training.sim2real import window_heads

    torch.set_num_threads(2)
    model, _, tcfg = load_trained(str(run))
    clips = []
    for row in list(csv.reader(heldout.open()))[:: args.clip_step]:
        y, fs = sf.read(row[0], dtype="float64")
        clips.append(y if fs == FS else resample_poly(y, FS, fs))
    t0 = time.monotonic()
    out: dict = {"benchmark": "sim2real_tail", "run": str(run), "clips": len(clips), "rooms": {}}
    for bank_path in banks:
        bank = load_bank(bank_path)
        if bank.kind != "wav":
            out["rooms"][Path(bank_path).name] = {"skipped": "a SOFA bank: this diagnostic reads WAV folders"}
            continue
        root = Path(bank.path).parent  # a WAV bank's files are relative to its folder's parent
        for room in bank.rooms:
            errs: dict[str, list[tuple[float, float, float, float, float]]] = {}
            flows: list[list[tuple[float, float]]] = []
            for pos in (p for p in bank.positions if p.room_id == room.room_id):
                x, fs = sf.read(str(root / pos.file), dtype="float64", always_2d=True)
                rir = to_ambix(x.T, bank.channel_format)
                rir = rir if fs == FS else resample_poly(rir, FS, fs, axis=1)
                flows.append([tail_flow(rir, a, b) for a, b in FLOW_WINDOWS_S])
                for name, h in variants(rir).items():
                    for y in clips:
                        audio = fftconvolve(y[None, :], h)[:, : len(y)]
                        audio = (audio / (np.abs(audio).max() + 1e-12)).astype(np.float32)
                        unit, heads = window_heads(model, audio, tcfg.features)
                        az, el = vector_to_angles(unit)
                        err = float(angular_distance_deg(az, el, pos.azimuth_deg, pos.elevation_deg))
                        est = intensity_doa(audio, FS)  # as training.sim2real scores it
                        c_err = float(angular_distance_deg(est.azimuth_deg, est.elevation_deg,
                                                           pos.azimuth_deg, pos.elevation_deg))
                        errs.setdefault(name, []).append((float(el) - pos.elevation_deg, err, heads["t30"],
                                                          est.elevation_deg - pos.elevation_deg, c_err))
            f = np.array(flows)  # positions x windows x (elevation, strength)
            spans = [f"{round(a * 1000)}-{round(b * 1000)}ms" for a, b in FLOW_WINDOWS_S]
            out["rooms"][room.name] = {
                "n": len(errs["whole"]),
                **{name: _medians(v) for name, v in errs.items()},
                "tail_flow": {span: {"elevation_deg": round(float(np.median(f[:, k, 0])), 1),
                                     "strength": round(float(np.median(f[:, k, 1])), 3)}
                              for k, span in enumerate(spans)},
            }
    out["wall_s"] = round(time.monotonic() - t0, 1)
    print(json.dumps(out))


if __name__ == "__main__":
    main()
