"""Real FOA recordings for the DOA probe: TUT Sound Events 2018 / TAU SSE 2019 and STARSS23.

Each reader turns a label file into events (label, start, end, azimuth, elevation, distance) in
DESIGN.md's convention, which both datasets already use (+azimuth = left, elevation up), and
``load_segments`` cuts the recording into (FOA segment at 48 kHz, azimuth, elevation) items:

- TUT Sound Events 2018 / TAU SSE 2019 ("desc" CSV): ``sound_event_recording,start_time,end_time,
  ele,azi,dist`` (elevation before azimuth), seconds, degrees, metres. Static sources.
- STARSS23: ``frame,class,source,azimuth,elevation,distance`` (distance in cm; STARSS22 has no
  distance column), 100 ms frames, one row per active event and frame. Consecutive frames of one
  (class, source) form a track; a track is cut into chunks of at most ``chunk_s`` whose label is
  the mean direction of their frames (sources move).

Overlapping events (ov2/ov3 recordings, STARSS polyphony) have no single direction: by default
only the parts of an event during which no other event is active are kept. Channel scaling: TAU
SSE 2019 (and TUT 2018, same pipeline) measure as N3D, STARSS as SN3D; we convert to SN3D. The
model cannot tell the difference anyway (log-mel reads W alone; intensity vectors are unit-norm),
but stored segments then follow DESIGN.md. Audio at other rates (STARSS: 24 kHz) is resampled to
48 kHz, the feature rate.
"""

from __future__ import annotations

import csv
import math
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

import numpy as np
from pydantic import BaseModel, ConfigDict, Field

from tasks.ambisonics import unit_vector, vector_to_angles, wrap_azimuth
from tasks.errors import SpatialAudioCapsError

SAMPLE_RATE = 48000
STARSS_FRAME_S = 0.1
TUT_HEADER = ("sound_event_recording", "start_time", "end_time", "ele", "azi", "dist")
STARSS23_CLASSES = (
    "female speech",
    "male speech",
    "clapping",
    "telephone",
    "laughter",
    "domestic sounds",
    "footsteps",
    "door",
    "music",
    "musical instrument",
    "water tap",
    "bell",
    "knock",
)
RealKind = Literal["tut2018", "starss23"]
Normalisation = Literal["sn3d", "n3d"]
DEFAULT_NORMALISATION: dict[str, Normalisation] = {"tut2018": "n3d", "starss23": "sn3d"}


class RealDataError(SpatialAudioCapsError):
    """A label file or recording that cannot be read as the dataset it is said to be."""


class RealEvent(BaseModel):
    """One sound event with a single direction (DESIGN.md angles), times in the recording."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    label: str
    start_s: float = Field(ge=0.0)
    end_s: float
    azimuth_deg: float = Field(gt=-180.0, le=180.0)
    elevation_deg: float = Field(ge=-90.0, le=90.0)
    distance_m: float | None = None
    source: int | None = None


@dataclass(frozen=True)
class RealSegment:
    """A cut of a recording: ambiX SN3D (4, N) float32 at 48 kHz and its direction label."""

    recording: str
    label: str
    start_s: float
    end_s: float
    azimuth_deg: float
    elevation_deg: float
    distance_m: float | None
    foa: np.ndarray


def _rows(path: str | Path) -> list[list[str]]:
    try:
        with open(path, newline="", encoding="utf-8") as f:
            return [r for r in csv.reader(f) if r and any(c.strip() for c in r)]
    except (OSError, UnicodeDecodeError) as e:
        raise RealDataError(f"cannot read label file {path}: {e}") from e


def _num(x: str, what: str, path: str | Path, line: int) -> float:
    try:
        v = float(x)
    except ValueError as e:
        raise RealDataError(f"{path}:{line}: {what} {x!r} is not a number") from e
    if not math.isfinite(v):
        raise RealDataError(f"{path}:{line}: {what} is not finite")
    return v


def read_tut_csv(path: str | Path) -> list[RealEvent]:
    """Events of a TUT Sound Events 2018 / TAU SSE 2019 desc CSV (header required, ele before azi)."""
    rows = _rows(path)
    if not rows or tuple(c.strip() for c in rows[0]) != TUT_HEADER:
        raise RealDataError(
            f"{path}: expected header {','.join(TUT_HEADER)}, got {rows[0] if rows else 'nothing'}"
        )
    out = []
    for line, r in enumerate(rows[1:], start=2):
        if len(r) != len(TUT_HEADER):
            raise RealDataError(f"{path}:{line}: expected {len(TUT_HEADER)} columns, got {len(r)}")
        start, end = _num(r[1], "start_time", path, line), _num(r[2], "end_time", path, line)
        el, az = _num(r[3], "ele", path, line), _num(r[4], "azi", path, line)
        if end <= start or start < 0 or abs(el) > 90:
            raise RealDataError(f"{path}:{line}: bad event times or elevation ({start}, {end}, {el})")
        out.append(
            RealEvent(
                label=r[0].strip(),
                start_s=start,
                end_s=end,
                azimuth_deg=float(wrap_azimuth(az)),
                elevation_deg=el,
                distance_m=_num(r[5], "dist", path, line),
            )
        )
    return out


def read_starss_csv(
    path: str | Path, chunk_s: float = 1.0, frame_s: float = STARSS_FRAME_S
) -> list[RealEvent]:
    """Events of a STARSS23 (6 columns, distance in cm) or STARSS22 (5 columns) metadata CSV."""
    rows = _rows(path)
    if rows and not rows[0][0].strip().lstrip("-").isdigit():
        rows = rows[1:]  # a header line
    tracks: dict[tuple[int, int], list[tuple[int, float, float, float | None]]] = {}
    for line, r in enumerate(rows, start=1):
        if len(r) not in (5, 6):
            raise RealDataError(
                f"{path}:{line}: expected 5 or 6 columns (frame,class,source,azimuth,elevation"
                f"[,distance]), got {len(r)}"
            )
        frame, cls, src = (int(_num(r[i], n, path, line)) for i, n in enumerate(("frame", "class", "source")))
        az, el = _num(r[3], "azimuth", path, line), _num(r[4], "elevation", path, line)
        if abs(el) > 90 or frame < 0:
            raise RealDataError(f"{path}:{line}: bad frame or elevation ({frame}, {el})")
        dist = _num(r[5], "distance", path, line) / 100.0 if len(r) == 6 else None
        tracks.setdefault((cls, src), []).append((frame, az, el, dist))
    per_chunk = max(1, round(chunk_s / frame_s))
    out = []
    for (cls, src), frames in tracks.items():
        frames.sort()
        run: list[tuple[int, float, float, float | None]] = []
        for f in [*frames, None]:
            if f is not None and (not run or (f[0] == run[-1][0] + 1 and len(run) < per_chunk)):
                run.append(f)
                continue
            if run:
                v = unit_vector(np.array([x[1] for x in run]), np.array([x[2] for x in run])).mean(axis=1)
                az, el = vector_to_angles(v)
                dists = [x[3] for x in run if x[3] is not None]
                name = STARSS23_CLASSES[cls] if 0 <= cls < len(STARSS23_CLASSES) else f"class {cls}"
                out.append(
                    RealEvent(
                        label=name,
                        start_s=round(run[0][0] * frame_s, 6),
                        end_s=round((run[-1][0] + 1) * frame_s, 6),
                        azimuth_deg=float(az),
                        elevation_deg=float(el),
                        distance_m=float(np.mean(dists)) if dists else None,
                        source=src,
                    )
                )
            run = [f] if f is not None else []
    return sorted(out, key=lambda e: (e.start_s, e.label))


def isolate(events: list[RealEvent], min_s: float = 0.2) -> list[RealEvent]:
    """Each event cut to the parts where no other event is active; pieces under ``min_s`` dropped."""
    out = []
    for i, e in enumerate(events):
        pieces = [(e.start_s, e.end_s)]
        for j, o in enumerate(events):
            if i == j or o.end_s <= e.start_s or o.start_s >= e.end_s:
                continue
            nxt = []
            for a, b in pieces:
                if o.end_s <= a or o.start_s >= b:
                    nxt.append((a, b))
                    continue
                if o.start_s > a:
                    nxt.append((a, o.start_s))
                if o.end_s < b:
                    nxt.append((o.end_s, b))
            pieces = nxt
        out += [e.model_copy(update={"start_s": a, "end_s": b}) for a, b in pieces if b - a >= min_s]
    return out


def load_recording(path: str | Path, normalisation: Normalisation = "sn3d") -> np.ndarray:
    """An ambiX recording as SN3D (4, N) float32 at 48 kHz."""
    from scipy.signal import resample_poly

    from tasks.doa import DoaError, load_foa

    try:
        x, sr = load_foa(path, "ambix")
    except DoaError as e:
        raise RealDataError(f"cannot read {path} as ambiX: {e}") from e
    x = np.asarray(x[:4], dtype=np.float64)
    if normalisation == "n3d":
        x[1:4] /= math.sqrt(3.0)
    if sr != SAMPLE_RATE:
        g = math.gcd(int(sr), SAMPLE_RATE)
        x = resample_poly(x, SAMPLE_RATE // g, int(sr) // g, axis=1)
    return x.astype(np.float32)


def load_segments(
    audio_path: str | Path,
    events: Iterable[RealEvent],
    *,
    normalisation: Normalisation = "sn3d",
    isolated: bool = True,
    min_s: float = 0.2,
    max_s: float | None = 10.0,
) -> list[RealSegment]:
    """Cut one recording at its events (clipped to the audio's length; at most ``max_s`` each)."""
    x = load_recording(audio_path, normalisation)
    dur = x.shape[1] / SAMPLE_RATE
    evs = isolate(list(events), min_s) if isolated else list(events)
    out = []
    for e in evs:
        a, b = e.start_s, min(e.end_s, dur)
        if max_s is not None:
            b = min(b, a + max_s)
        if b - a < min_s:
            continue
        i0, i1 = round(a * SAMPLE_RATE), round(b * SAMPLE_RATE)
        out.append(
            RealSegment(
                recording=Path(audio_path).stem,
                label=e.label,
                start_s=a,
                end_s=b,
                azimuth_deg=e.azimuth_deg,
                elevation_deg=e.elevation_deg,
                distance_m=e.distance_m,
                foa=np.ascontiguousarray(x[:, i0:i1]),
            )
        )
    return out


def _files(path: str | Path, ext: str) -> list[Path]:
    p = Path(path)
    if p.is_file():
        return [p]
    if not p.is_dir():
        raise RealDataError(f"{p} does not exist")
    return sorted(p.rglob(f"*{ext}"))


def pair_files(audio: str | Path, labels: str | Path) -> list[tuple[Path, Path]]:
    """(recording, label file) pairs matched by file stem; a file path on either side is a pair of one."""
    wavs, csvs = _files(audio, ".wav"), _files(labels, ".csv")
    if Path(audio).is_file() and Path(labels).is_file():
        return [(wavs[0], csvs[0])]
    by_stem = {c.stem: c for c in csvs}
    pairs = [(w, by_stem[w.stem]) for w in wavs if w.stem in by_stem]
    if not pairs:
        raise RealDataError(f"no recording under {audio} has a label file of the same name under {labels}")
    return pairs


def load_real_set(
    kind: RealKind,
    audio: str | Path,
    labels: str | Path,
    *,
    normalisation: Normalisation | None = None,
    isolated: bool = True,
    min_s: float = 0.2,
    max_s: float | None = 10.0,
    chunk_s: float = 1.0,
    max_segments: int | None = None,
) -> list[RealSegment]:
    """Every labelled segment of a dataset (a recording + label file, or directories of both)."""
    norm = normalisation or DEFAULT_NORMALISATION[kind]
    out: list[RealSegment] = []
    for wav, lab in pair_files(audio, labels):
        events = read_tut_csv(lab) if kind == "tut2018" else read_starss_csv(lab, chunk_s)
        out += load_segments(wav, events, normalisation=norm, isolated=isolated, min_s=min_s, max_s=max_s)
        if max_segments is not None and len(out) >= max_segments:
            return out[:max_segments]
    return out
