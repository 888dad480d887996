"""Scene render cost: CPU seconds per audio-second of moving sources and 3-source scenes against a
static one-source sample, all in the same run (issue 13).

Every case renders 10 s of 4-channel ambiX from prepared 48 kHz mono clips with RIRs of the
project's engine (tasks.rir_engine.render_rir) in a 10 x 8 x 3.5 m room whose measured T30 is
printed (~0.7 s; RIRs ~1.1 s long); levelling and FLAC encoding are included everywhere.

- static: the existing path, ``RirSpectrum.from_rir`` + ``render_clip`` (the spectrum computed per
  sample, as a scene must for its own trajectory RIRs); ``static_cached`` leaves the spectrum out
  (ELSA shares it over ~100 clips);
- static_scene: the same one static source through ``render_scene``;
- linear (0.5 m/s, 5 m in front of the receiver) and arc (20 deg/s, 200 deg at 2 m): one moving
  source over the whole scene, RIRs every 2 deg / 0.25 m as the scene config's default step;
- scene3_static: three static sources, each active over the whole scene (the mixing target);
- scene3: static + linear + arc sources, each active over the whole scene (a heavy case: two
  moving sources cost about the sum of their own renders, so K + 0.5 is not its bound).

RIRs are rendered once before timing. Medians of REPEATS runs (process CPU time), interleaved.
Targets (issue 13), per audio-second: moving <= 3x static, 3 static sources <= 3.5x static.

RIRs are the bank's: calibrated, a moving source's first point whole and its later points their
first POINT_EARLY_WINDOW_S only (schemas.scenes). ``bank_cpu_s`` is what they cost to render once,
and ``<kind>_whole`` the same points rendered whole (the baseline): a static placement's RIR is
shared by every sample that draws it (~100 at paper scale), a trajectory's points by the one sample
whose path it is, so a moving source's bank cost is not amortised and is reported beside the
render, not hidden in it.
"""

from __future__ import annotations

import json
import math
import os
import platform
import sys
import time
from pathlib import Path

import numpy as np
import scipy
from scipy import signal

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from benchmarks.measure import interleaved_medians
from schemas.audio import AudioPrepConfig
from schemas.rooms import SURFACES, RirSettings, RoomSpec, Surface
from schemas.scenes import POINT_EARLY_WINDOW_S, ScenePlan, ScenePoint, SceneSource
from tasks.audio_prep import RirSpectrum, render_clip
from tasks.rir_engine import relative_direction, render_rir
from tasks.room_acoustics import t30
from tasks.scene_render import render_scene

SR = 48000
DURATION = 10.0
REPEATS = 7
RECEIVER = (4.0, 3.5, 1.5)
STEP_DEG, STEP_M = 2.0, 0.25
ROOM = RoomSpec(
    room_id="bench",
    dims_m=(10.0, 8.0, 3.5),
    surfaces=dict.fromkeys(SURFACES, Surface(material="x", absorption=[0.17] * 8, scattering=[0.1] * 8)),
    target_t30_s=0.7,
)
SETTINGS = RirSettings()  # calibrated, as the bank renders
BANK_CPU_S: dict[str, float] = {}


def clip(seed: int) -> np.ndarray:
    """A prepared 10 s clip: pink-ish noise under a slow envelope."""
    rng = np.random.default_rng(seed)
    n = round(DURATION * SR)
    x = signal.lfilter([1.0], [1.0, -0.9], rng.standard_normal(n))
    x *= np.repeat(rng.uniform(0.1, 1.0, 50), n // 50 + 1)[:n]
    return (0.5 * x / np.max(np.abs(x))).astype(np.float32)


def trajectory(positions) -> np.ndarray:
    """Indices of the points kept from a finely sampled path (3, n): the last sample before the
    direction moves more than STEP_DEG or the range more than STEP_M from the last kept point,
    and the end."""
    az, el, dist = relative_direction(RECEIVER, 0.0, positions)
    unit = np.stack([np.cos(el) * np.cos(az), np.cos(el) * np.sin(az), np.sin(el)])
    keep = [0]
    for i in range(1, positions.shape[1]):
        angle = math.degrees(math.acos(float(np.clip(unit[:, i] @ unit[:, keep[-1]], -1.0, 1.0))))
        if angle > STEP_DEG or abs(dist[i] - dist[keep[-1]]) > STEP_M:
            keep.append(i - 1)
    return np.asarray([*keep, positions.shape[1] - 1])


def source(
    index: int, name: str, kind: str, rirs: dict[str, np.ndarray], at: tuple[float, ...] = (6.0, 5.0, 1.8)
) -> SceneSource:
    u = np.linspace(0.0, 1.0, 4001)
    if kind == "static":
        xyz = np.asarray(at, dtype=float)[:, None]
        u = u[:1]
    elif kind == "linear":  # 0.5 m/s, 5 m, 2 m in front of the receiver
        xyz = np.stack([np.full_like(u, 6.0), 1.0 + 5.0 * u, np.full_like(u, 1.5)])
    else:  # 20 deg/s, 200 deg, 2 m around the receiver
        a = np.radians(-100.0 + 200.0 * u)
        xyz = np.stack([RECEIVER[0] + 2.0 * np.cos(a), RECEIVER[1] + 2.0 * np.sin(a), np.full_like(u, 1.2)])
    idx = trajectory(xyz) if kind != "static" else np.array([0])
    points = []
    cpu = time.process_time()
    for n, k in enumerate(idx):
        pid = f"{name}-{k}"
        # as the bank renders a path's later points: early part, at the first point's absorption
        later = {"early_window_s": POINT_EARLY_WINDOW_S, "calibrate_at": tuple(xyz[:, idx[0]])} if n else {}
        rirs[pid] = render_rir(ROOM, RECEIVER, tuple(xyz[:, k]), settings=SETTINGS, **later).rir
        az, el, d = relative_direction(RECEIVER, 0.0, xyz[:, k : k + 1])
        points.append(ScenePoint(placement_id=pid, time_s=float(u[k] * DURATION),
                                 azimuth_deg=float(np.degrees(az[0])), elevation_deg=float(np.degrees(el[0])),
                                 distance_m=float(d[0])))
    BANK_CPU_S[name] = time.process_time() - cpu
    if kind != "static":  # the baseline: every point whole
        cpu = time.process_time()
        for k in idx:
            render_rir(ROOM, RECEIVER, tuple(xyz[:, k]), settings=SETTINGS)
        BANK_CPU_S[f"{name}_whole"] = time.process_time() - cpu
    return SceneSource(
        index=index, dataset="bench", clip_id=name, audio_uri=f"mem://{name}", captions=("a sound",),
        onset_s=0.0, offset_s=DURATION, level_db=0.0, motion=kind,
        speed=None if kind == "static" else (0.5 if kind == "linear" else 20.0),
        arc_direction=1 if kind == "arc" else None,
        start_m=tuple(xyz[:, 0]), end_m=tuple(xyz[:, -1]), points=points,
    )


def plan(sources: list[SceneSource]) -> ScenePlan:
    return ScenePlan(room_id="bench", base_placement_id=sources[0].points[0].placement_id,
                     receiver_m=RECEIVER, receiver_yaw_deg=0.0, duration_s=DURATION, sources=sources, seed=0)


def main() -> None:
    cfg = AudioPrepConfig()
    rirs: dict[str, np.ndarray] = {}
    static, linear, arc = (source(i, k, k, rirs) for i, k in enumerate(("static", "linear", "arc")))
    others = [
        source(i, f"static{i}", "static", rirs, at) for i, at in ((1, (2.0, 6.5, 1.0)), (2, (8.5, 1.5, 2.2)))
    ]
    monos = [clip(i) for i in range(3)]
    h = rirs[static.points[0].placement_id]
    cached = RirSpectrum.from_rir(h, SR)
    clip_audio_s = (monos[0].shape[0] + h.shape[1] - 1) / SR

    cases = {
        "static": (lambda: render_clip(monos[0], RirSpectrum.from_rir(h, SR), cfg), clip_audio_s),
        "static_cached": (lambda: render_clip(monos[0], cached, cfg), clip_audio_s),
        "static_scene": (lambda: render_scene(plan([static]), monos[:1], rirs, cfg), DURATION),
        "linear": (lambda: render_scene(plan([linear]), monos[:1], rirs, cfg), DURATION),
        "arc": (lambda: render_scene(plan([arc]), monos[:1], rirs, cfg), DURATION),
        "scene3_static": (lambda: render_scene(plan([static, *others]), monos, rirs, cfg), DURATION),
        "scene3": (lambda: render_scene(plan([static, linear, arc]), monos, rirs, cfg), DURATION),
    }
    medians = interleaved_medians({name: fn for name, (fn, _) in cases.items()}, REPEATS)
    per_s = {name: medians[name] / audio_s for name, (_, audio_s) in cases.items()}
    ratio = {name: round(v / per_s["static"], 3) for name, v in per_s.items()}
    result = {
        "benchmark": "scene_render",
        "duration_s": DURATION,
        "repeats": REPEATS,
        "rir_channels": int(h.shape[0]),
        "rir_s": round(h.shape[1] / SR, 3),
        "rir_t30_s_measured": round(t30(h[0], SR), 3),
        "points": {"linear": len(linear.points), "arc": len(arc.points)},
        "cpu_s_per_audio_s": {name: round(v, 5) for name, v in per_s.items()},
        "ratio_to_static": ratio,
        "bank_cpu_s": {k: round(v, 3) for k, v in BANK_CPU_S.items()},
        "target_moving_max": 3.0,
        "target_scene3_static_max": 3.5,
        "pass": max(ratio["linear"], ratio["arc"]) <= 3.0 and ratio["scene3_static"] <= 3.5,
        "cpu_count": os.cpu_count(),
        "machine": platform.machine(),
        "python": platform.python_version(),
        "numpy": np.__version__,
        "scipy": scipy.__version__,
    }
    print(json.dumps(result))


if __name__ == "__main__":
    main()
