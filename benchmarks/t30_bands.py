"""What a broadband T30 label measures, band by band, in simulated and measured builds. One JSON line.

    .venv/bin/python benchmarks/t30_bands.py --build DIR [--build DIR ...] [--t30 0.9 1.6] [--max 60]

Why: the label (``tasks.room_acoustics.t30`` on W, Schroeder -5..-35 dB, every frequency) is what the
sim-to-real branch is taught and scored on, but the branch hears the clips' sound through its IV bands
(to 8 kHz), and a broadband fit is a blend of band decays weighted by the response's spectrum. If the
simulator's bands above 4 kHz hold more of the early energy or die faster than a real room's, the
same label means a longer audible decay in simulation than in a real room, and a branch calibrated on
simulation answers short in the real one (issue 15's churches: 0.9 s against 1.23 s). This reads every
labelled response of each build (its ``rirs/`` chunks: the engine's renders of a simulated build, the
cut and resampled measured responses of a build over a bank) within ``--t30`` and reports medians of:
the label; T30 and EDT of W low-passed at 4 and 8 kHz, over the label; EDT / T30 broadband; octave-band
T30 at 125 Hz-8 kHz over the label; each octave's share of W's energy (dB).
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import numpy as np
from scipy.signal import butter, sosfiltfilt

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from tasks.errors import SpatialAudioCapsError
from tasks.rir_bank import unpack_chunk
from tasks.room_acoustics import edt, t30

OCTAVES_HZ = (125, 250, 500, 1000, 2000, 4000, 8000)
LOWPASS_HZ = (4000, 8000)


def _octave(w: np.ndarray, fs: int, fc: float) -> np.ndarray:
    hi = min(fc * np.sqrt(2.0), 0.49 * fs)
    return sosfiltfilt(butter(4, [fc / np.sqrt(2.0), hi], btype="band", fs=fs, output="sos"), w)


def _or_nan(fn, x: np.ndarray, fs: int) -> float:
    """A decay the band cannot fit (too short, or under the noise) is missing, not zero."""
    try:
        return fn(x, fs)
    except SpatialAudioCapsError:
        return float("nan")


def band_view(w: np.ndarray, fs: int, label_s: float) -> dict[str, float]:
    """One response's band-by-band reading of its broadband label."""
    out = {"label_s": label_s, "edt_over_t30": _or_nan(edt, w, fs) / label_s}
    for fc in LOWPASS_HZ:
        low = sosfiltfilt(butter(4, fc, fs=fs, output="sos"), w)
        out[f"t30_below_{fc}_over_label"] = _or_nan(t30, low, fs) / label_s
        out[f"edt_below_{fc}_over_t30"] = _or_nan(edt, low, fs) / _or_nan(t30, low, fs)
    energy = []
    for fc in OCTAVES_HZ:
        band = _octave(w, fs, fc)
        out[f"t30_{fc}_over_label"] = _or_nan(t30, band, fs) / label_s
        energy.append(float(band @ band))
    share = 10.0 * np.log10(np.array(energy) / float(w @ w))
    out |= {f"energy_{fc}_db": float(s) for fc, s in zip(OCTAVES_HZ, share, strict=True)}
    return out


def read_build(root: Path, t30_range: tuple[float, float], limit: int) -> list[dict[str, float]]:
    """Band views of up to ``limit`` labelled responses of a build whose label is in ``t30_range``."""
    views: list[dict[str, float]] = []
    for chunk in sorted((root / "rirs").glob("*.npz")):
        rirs, records, _ = unpack_chunk(chunk.read_bytes())
        for r in records:
            if r.t30_s is not None and t30_range[0] <= r.t30_s <= t30_range[1] and r.placement_id in rirs:
                views.append(band_view(rirs[r.placement_id][0].astype(np.float64), r.fs, r.t30_s))
                if len(views) >= limit:
                    return views
    return views


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--build", action="append", required=True, help="a build's version directory")
    ap.add_argument("--t30", type=float, nargs=2, default=(0.9, 1.6), metavar=("LO", "HI"))
    ap.add_argument("--max", type=int, default=60, help="responses per build")
    args = ap.parse_args()
    t0 = time.monotonic()
    builds = {}
    for b in args.build:
        views = read_build(Path(b), tuple(args.t30), args.max)
        if not views:
            builds[b] = {"n": 0}
            continue
        medians = {k: round(float(np.nanmedian([v[k] for v in views])), 3) for k in views[0]}
        builds[b] = {"n": len(views)} | medians
    print(json.dumps({"benchmark": "t30_bands", "t30_range_s": list(args.t30), "builds": builds,
                      "wall_s": round(time.monotonic() - t0, 1)}))


if __name__ == "__main__":
    main()
