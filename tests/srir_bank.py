"""Synthetic measured SRIR banks with known geometry, for the measured-source and build tests.

Each SRIR is what a bank of recordings would hold: a latency, the direct impulse from the labelled
direction at 1/r, and an SN3D-diffuse exponential tail of known T60; stored in ambiX, FuMa or N3D.
"""

from __future__ import annotations

import csv
import math
from pathlib import Path

import numpy as np
import soundfile as sf

from tasks.ambisonics import real_sh_sn3d

S3A = Path(__file__).resolve().parents[2] / "shared" / "realdata" / "foa" / "s3a_soundfield_rirs"
"""The real S3A Soundfield RIRs (../shared/realdata); tests that read them skip when it is absent."""
FS_BANK = 44_100
T60 = 0.5
LATENCY_S = 0.01
C = 343.0
# (azimuth, elevation, distance) in the receiver's frame: front, left, right, up, back-low, back.
GEOMETRY = [(0.0, 0.0, 2.0), (90.0, 0.0, 1.5), (-90.0, 0.0, 1.5), (0.0, 90.0, 1.2),
            (135.0, -30.0, 2.5), (180.0, 0.0, 3.0)]


def srir(az: float, el: float, dist: float, order: int, seed: int, seconds: float = 1.2 * T60) -> np.ndarray:
    """ambiX (ACN/SN3D) SRIR: latency, direct impulse 1/r, SN3D-diffuse exponential tail."""
    n = int(seconds * FS_BANK)
    direct = round((LATENCY_S + dist / C) * FS_BANK)
    rir = np.zeros(((order + 1) ** 2, n))
    rir[:, direct] = real_sh_sn3d(order, math.radians(az), math.radians(el)) / dist
    start = direct + round(0.005 * FS_BANK)
    t = np.arange(n - start) / FS_BANK
    degree = np.concatenate([[k] * (2 * k + 1) for k in range(order + 1)])
    noise = np.random.default_rng(seed).standard_normal((rir.shape[0], t.size))
    noise *= np.sqrt(1.0 / (2 * degree + 1))[:, None]  # SN3D diffuse field: degree n at 1/(2n+1)
    rir[:, start:] = 0.02 * noise * np.exp(-3 * math.log(10) * t / T60)
    return rir


def as_format(fmt: str, ambix: np.ndarray) -> np.ndarray:
    """Store an ambiX SRIR in another format (the inverse of what the loader must undo)."""
    if fmt == "fuma":
        w, y, z, x = ambix
        return np.stack([w / math.sqrt(2.0), x, y, z])
    if fmt == "n3d":
        order = math.isqrt(ambix.shape[0]) - 1
        degree = np.concatenate([[k] * (2 * k + 1) for k in range(order + 1)])
        return ambix * np.sqrt(2.0 * degree + 1)[:, None]
    return ambix


def wav_room(folder: Path, n: int, *, fs: int = FS_BANK, channels: int = 4, fmt: str = "ambix",
              rates: list[int] | None = None) -> Path:
    folder.mkdir(parents=True)
    rows = []
    for i in range(n):
        az, el, d = GEOMETRY[i % len(GEOMETRY)]
        x = as_format(fmt, srir(az, el, d, 1, i, seconds=0.15))[:channels]
        sf.write(folder / f"ls{i + 1}.wav", x.T, (rates or [fs] * n)[i], subtype="FLOAT")
        rows.append({"file": f"ls{i + 1}.wav", "azimuth_deg": az, "elevation_deg": el, "distance_m": d})
    with open(folder / "labels_derived.csv", "w", newline="") as fh:
        w = csv.DictWriter(fh, fieldnames=list(rows[0]))
        w.writeheader()
        w.writerows(rows)
    return folder


def decaying_room(folder: Path, n: int) -> Path:
    """wav_room's room with its SRIRs made long enough (1.2 T60: 72 dB of decay) for a T30."""
    wav_room(folder, n)
    for i in range(n):
        az, el, d = GEOMETRY[i % len(GEOMETRY)]
        sf.write(folder / f"ls{i + 1}.wav", srir(az, el, d, 1, i).T, FS_BANK, subtype="FLOAT")
    return folder
