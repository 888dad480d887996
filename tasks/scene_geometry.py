"""Scene geometry: where each source of a scene is, when it sounds, and how it moves.

``draw_scene`` draws one scene around a room-set placement: the base placement's receiver and yaw,
source 0 (the sample's own clip) starting at the base placement's source, the other sources drawn
in the config's ranges. A trajectory is stored as the drawn path itself (start, end, speed, arc
direction on ``SceneSource``), so ``position_at``/``directions_at`` give the true position and
label at any time; the trajectory's points are bank Placements at most ``rir_step_deg`` apart as
seen from the receiver and ``RANGE_STEP_M`` apart in range, so the renderer's crossfade between
neighbouring RIRs stays within the label accuracy.

Choices the config leaves open, fixed here:

- Timing without a polyphony limit (``max_polyphony`` None or at least the number of sources):
  source 0 sounds over the whole scene (a one-source scene is ELSA's sample); each other source
  starts at U(onset_s) and sounds for U(min_active_s, to the scene's end), so scenes have frames
  where one source sounds alone. With a limit P below the number of sources, source i goes to
  lane i mod P; a lane's sources follow each other in consecutive slots (uniform cuts at least
  ``min_active_s`` apart) that fill the lane from its start to the scene's end: lane 0 starts at
  0, the others at U(onset_s) where it leaves each source ``min_active_s``. P = 1 is one lane: back
  to back, never overlapping. Intervals are half-open [onset, offset).
- Linear paths run at a constant speed over the whole active interval, in a direction whose
  azimuth is uniform and whose tilt is U(-15, 15) degrees (mostly horizontal, as people and
  vehicles move). Arcs turn around the receiver's vertical axis at constant range and elevation.
  A path that leaves the wall clearance or comes within ``MIN_RANGE_M`` of the receiver is
  redrawn in a new direction (linear: ``_PATH_TRIES`` directions; arc: the other way round) and
  then rejected with an InvalidSceneError naming the room, the path and the constraint; the start
  stays, so source 0 always starts at the base placement.
- Positions of drawn sources and trajectory points are snapped to the millimetre: a point's
  placement id hashes that position, so the id and the RIR's position are one thing, and the
  step limits are checked on the snapped points the bank renders.
"""

from __future__ import annotations

import hashlib
import json
import math
from collections.abc import Sequence
from typing import NamedTuple

import numpy as np

from schemas.rooms import Placement, RoomSpec
from schemas.scenes import (
    EARLY_REACH_S,
    POINT_EARLY_WINDOW_S,
    SPEED_OF_SOUND_M_S,
    Motion,
    SceneConfig,
    ScenePlan,
    ScenePoint,
    SceneSource,
)
from schemas.sources import SourceClip
from tasks.errors import InvalidSceneError
from tasks.rir_engine import relative_direction

MIN_RANGE_M = 0.3
"""Closest a moving source comes to the receiver: a path through the listener has no direction."""
RANGE_STEP_M = 0.25
"""Most that the range of two neighbouring trajectory points differs (the crossfade mixes levels
and delays of both: 0.25 m is under 1 ms of delay and about 1 dB at 2 m)."""
LINEAR_TILT_DEG = 15.0
"""Largest tilt of a straight path from the horizontal."""
_PLACE_TRIES = 200
_PATH_TRIES = 16
_DENSE_PER_STEP = 8
"""Candidate points per step when the path is cut into points: each point is the last candidate
within the limits of the one before, so it falls at most an eighth of a step short of them."""


class _Path(NamedTuple):
    """A source's path: what ``SceneSource`` stores of it, before the points exist."""

    motion: Motion
    start: np.ndarray
    end: np.ndarray
    speed: float | None
    direction: int | None
    onset: float
    offset: float


def draw_scene(
    base: Placement, room: RoomSpec, clips: Sequence[SourceClip], cfg: SceneConfig, seed: int
) -> tuple[ScenePlan, list[Placement]]:
    """One scene around ``base`` with one source per clip (``clips[0]``: the sample's own).

    Deterministic in (the base placement's id and room set, the clips' ids, cfg, seed). Returns the
    plan and every placement its points name, each once, in first-use order (``base`` itself for a
    static source 0, so its RIR is ELSA's). Raises InvalidSceneError for no clip, more than
    ``cfg.max_sources``, or a scene that does not fit the room.
    """
    if not 0 < len(clips) <= cfg.max_sources:
        raise InvalidSceneError(
            f"a scene needs 1..{cfg.max_sources} sources (max_sources), got {len(clips)} clips"
        )
    rng = np.random.default_rng(_seed(base, clips, cfg, seed))
    receiver = np.asarray(base.receiver_m, dtype=np.float64)
    intervals = _intervals(cfg, len(clips), rng, room.room_id)
    statics: list[np.ndarray] = []
    sources: list[SceneSource] = []
    placements: dict[str, Placement] = {}
    for i, (clip, (onset, offset)) in enumerate(zip(clips, intervals, strict=True)):
        motion = _motion(cfg, rng)
        level = 0.0 if i == 0 else float(rng.uniform(*cfg.level_db))
        if i == 0:
            start = np.asarray(base.source_m, dtype=np.float64)
        else:
            start = _draw_start(cfg, room, base, rng, statics if motion == "static" else None, i)
        path = _draw_path(cfg, room, receiver, motion, start, onset, offset, rng, i)
        if motion == "static":
            statics.append(start)
        if i == 0 and motion == "static":
            points = [ScenePoint(placement_id=base.placement_id, time_s=onset, azimuth_deg=base.azimuth_deg,
                                 elevation_deg=base.elevation_deg, distance_m=base.distance_m)]
            placements.setdefault(base.placement_id, base)
        else:
            points = []
            trajectory = _trajectory(path, receiver, cfg.rir_step_deg)
            _check_early_window(trajectory, receiver, room, i)
            for k, (t, p) in enumerate(trajectory):
                placement = _point_placement(base, p, trajectory[0][1] if k > 0 else None)
                placements.setdefault(placement.placement_id, placement)
                points.append(ScenePoint(
                    placement_id=placement.placement_id, time_s=t, azimuth_deg=placement.azimuth_deg,
                    elevation_deg=placement.elevation_deg, distance_m=placement.distance_m,
                ))
        sources.append(SceneSource(
            index=i, dataset=clip.dataset, clip_id=clip.clip_id, audio_uri=clip.audio_uri,
            captions=clip.captions, onset_s=onset, offset_s=offset, level_db=level, motion=motion,
            speed=path.speed, arc_direction=path.direction,
            start_m=_triple(path.start), end_m=_triple(path.end), points=points,
        ))
    snr = None
    if cfg.background is not None and rng.uniform() < cfg.background.share:
        snr = float(rng.uniform(*cfg.background.snr_db))
    plan = ScenePlan(
        room_id=base.room_id, base_placement_id=base.placement_id, receiver_m=base.receiver_m,
        receiver_yaw_deg=base.receiver_yaw_deg, duration_s=cfg.duration_s, sources=sources,
        background_snr_db=snr, seed=seed,
    )
    return plan, list(placements.values())


def position_at(scene: ScenePlan, source: SceneSource, times: float | np.ndarray) -> np.ndarray:
    """Room position(s) of ``source`` at scene time(s), clamped to its active interval.

    Shape (3,) for one time, (3, *times.shape) for an array. Linear: start + (end - start) * the
    elapsed fraction; arc: ``start`` turned around the receiver's vertical axis by speed * elapsed
    time, counter-clockwise (to the left) for ``arc_direction`` +1.
    """
    path = _Path(source.motion, np.asarray(source.start_m), np.asarray(source.end_m), source.speed,
                 source.arc_direction, source.onset_s, source.offset_s)
    t = np.asarray(times, dtype=np.float64)
    return _positions(path, np.asarray(scene.receiver_m), t.reshape(-1)).reshape(3, *t.shape)


def directions_at(
    scene: ScenePlan, source: SceneSource, times: float | np.ndarray
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(azimuth_deg in (-180, 180], elevation_deg, distance_m) of ``source`` at scene time(s), as
    seen by the scene's receiver (+azimuth = left, elevation up): the labels of any frame."""
    t = np.asarray(times, dtype=np.float64)
    positions = position_at(scene, source, t.reshape(-1))
    az, el, dist = _directions(scene.receiver_m, scene.receiver_yaw_deg, positions)
    return az.reshape(t.shape), el.reshape(t.shape), dist.reshape(t.shape)


def _seed(base: Placement, clips: Sequence[SourceClip], cfg: SceneConfig, seed: int) -> int:
    """A stream seed from sha256 of the scene's inputs (Python's hash() changes per process)."""
    payload = {
        "placement": base.placement_id,
        "room_set": base.room_set_hash,
        "clips": [[c.dataset, c.clip_id] for c in clips],
        "config": cfg.model_dump(mode="json"),
        "seed": seed,
    }
    blob = json.dumps(payload, sort_keys=True, separators=(",", ":")).encode()
    return int.from_bytes(hashlib.sha256(blob).digest()[:16], "big")


def _intervals(cfg: SceneConfig, k: int, rng: np.random.Generator, room_id: str) -> list[tuple[float, float]]:
    """Each source's [onset, offset) (the module docstring says how)."""
    total, shortest = cfg.duration_s, cfg.min_active_s
    lanes = cfg.max_polyphony
    if lanes is None or lanes >= k:
        out = [(0.0, total)]
        for _ in range(1, k):
            onset = float(rng.uniform(*cfg.onset_s))
            out.append((onset, onset + float(rng.uniform(shortest, total - onset))))
        return out
    slots: dict[int, tuple[float, float]] = {}
    for lane in range(lanes):
        members = list(range(lane, k, lanes))
        latest = total - len(members) * shortest
        if lane == 0:
            start = 0.0
        elif latest < cfg.onset_s[0]:
            raise InvalidSceneError(
                f"room {room_id}: {k} sources at most {lanes} at once need {len(members)} slots of "
                f"{shortest} s after an onset of {cfg.onset_s[0]} s, past the scene's {total} s"
            )
        else:
            start = float(rng.uniform(cfg.onset_s[0], min(cfg.onset_s[1], latest)))
        if latest < start:
            raise InvalidSceneError(
                f"room {room_id}: {len(members)} slots of {shortest} s do not fit in {total} s"
            )
        cuts = np.sort(rng.uniform(0.0, latest - start, len(members) - 1))
        cuts += start + shortest * np.arange(1, len(members))
        bounds = [start, *(float(c) for c in cuts), total]
        slots.update((i, (bounds[j], bounds[j + 1])) for j, i in enumerate(members))
    return [slots[i] for i in range(k)]


def _motion(cfg: SceneConfig, rng: np.random.Generator) -> Motion:
    if rng.uniform() >= cfg.motion.moving_share:
        return "static"
    kinds = sorted(cfg.motion.kinds)
    weights = np.array([cfg.motion.kinds[kind] for kind in kinds])
    return kinds[int(rng.choice(len(kinds), p=weights / weights.sum()))]


def _draw_start(
    cfg: SceneConfig, room: RoomSpec, base: Placement, rng: np.random.Generator,
    statics: list[np.ndarray] | None, index: int,
) -> np.ndarray:
    """A further source's (start) position in the config's ranges around the receiver, inside the
    wall clearance; a static one (``statics`` given) at least ``min_separation_deg`` from those,
    a moving one at least ``MIN_RANGE_M`` from the receiver."""
    receiver = np.asarray(base.receiver_m)
    outside = close = 0
    for _ in range(_PLACE_TRIES):
        az = math.radians(float(rng.uniform(*cfg.azimuth_deg)) + base.receiver_yaw_deg)
        el = math.radians(float(rng.uniform(*cfg.elevation_deg)))
        dist = float(rng.uniform(*cfg.distance_m))
        p = _snap(receiver + dist * np.array(
            [math.cos(az) * math.cos(el), math.sin(az) * math.cos(el), math.sin(el)]
        ))
        if not _inside(p, room.dims_m, cfg.source_clearance_m):
            outside += 1
            continue
        if statics is None:
            too_close = np.linalg.norm(p - receiver) < MIN_RANGE_M
        else:
            too_close = any(_angle_deg(p - receiver, s - receiver) < cfg.min_separation_deg for s in statics)
        if not too_close:
            return p
        close += 1
    apart = f"{cfg.min_separation_deg} deg from another static source" if statics is not None else (
        f"{MIN_RANGE_M} m from the receiver (a moving source)")
    raise InvalidSceneError(
        f"room {room.room_id} {room.dims_m}: no place for source {index} in {_PLACE_TRIES} draws "
        f"(azimuth {cfg.azimuth_deg}, elevation {cfg.elevation_deg}, distance {cfg.distance_m}): "
        f"{outside} left the {cfg.source_clearance_m} m wall clearance, {close} were closer than {apart}"
    )


def _draw_path(
    cfg: SceneConfig, room: RoomSpec, receiver: np.ndarray, motion: Motion, start: np.ndarray,
    onset: float, offset: float, rng: np.random.Generator, index: int,
) -> _Path:
    """The path of a source starting at ``start``: static, a straight segment or an arc that stays
    inside the wall clearance and ``MIN_RANGE_M`` from the receiver, redrawn in a new direction."""
    duration = offset - onset
    dims, clearance = room.dims_m, cfg.source_clearance_m
    if motion == "static":
        return _Path(motion, start, start, None, None, onset, offset)
    if motion == "linear":
        speed = float(rng.uniform(*cfg.motion.linear_speed_mps))
        length = speed * duration
        for _ in range(_PATH_TRIES):
            az = float(rng.uniform(0.0, 2.0 * math.pi))
            tilt = math.radians(float(rng.uniform(-LINEAR_TILT_DEG, LINEAR_TILT_DEG)))
            end = start + length * np.array([math.cos(az) * math.cos(tilt), math.sin(az) * math.cos(tilt),
                                             math.sin(tilt)])
            # a box is convex: the segment is inside when both ends are
            if _inside(end, dims, clearance) and _segment_range(start, end, receiver) >= MIN_RANGE_M:
                return _Path(motion, start, end, speed, None, onset, offset)
        raise InvalidSceneError(
            f"room {room.room_id} {dims}: source {index}'s straight path of {length:.2f} m "
            f"({speed:.2f} m/s for {duration:.2f} s) leaves the {clearance} m wall clearance or passes "
            f"within {MIN_RANGE_M} m of the receiver in each of {_PATH_TRIES} directions"
        )
    speed = float(rng.uniform(*cfg.motion.arc_speed_dps))
    first = 1 if rng.uniform() < 0.5 else -1
    sweep = speed * duration
    rng_m = float(np.linalg.norm(start - receiver))
    if rng_m >= MIN_RANGE_M:
        for direction in (first, -first):
            if _arc_inside(start, receiver, direction * sweep, dims, clearance):
                path = _Path(motion, start, start, speed, direction, onset, offset)
                return path._replace(end=_positions(path, receiver, np.array([offset]))[:, 0])
    raise InvalidSceneError(
        f"room {room.room_id} {dims}: source {index}'s arc of {sweep:.0f} deg ({speed:.1f} deg/s for "
        f"{duration:.2f} s) at {rng_m:.2f} m around the receiver leaves the {clearance} m wall clearance "
        f"either way round"
        + (f" or is within {MIN_RANGE_M} m of the receiver" if rng_m < MIN_RANGE_M else "")
    )


def _positions(path: _Path, receiver: np.ndarray, times: np.ndarray) -> np.ndarray:
    """(3, n) positions of a path at times (n,), clamped to its interval."""
    t = np.clip(times, path.onset, path.offset)
    if path.motion == "arc":
        rel = path.start - receiver
        rho, theta0 = math.hypot(rel[0], rel[1]), math.atan2(rel[1], rel[0])
        theta = theta0 + path.direction * math.radians(path.speed) * (t - path.onset)
        return np.stack([receiver[0] + rho * np.cos(theta), receiver[1] + rho * np.sin(theta),
                         np.full_like(t, path.start[2])])
    frac = (t - path.onset) / (path.offset - path.onset)
    return path.start[:, None] + (path.end - path.start)[:, None] * frac


def _trajectory(path: _Path, receiver: np.ndarray, step_deg: float) -> list[tuple[float, np.ndarray]]:
    """(time, snapped position) of each trajectory point: the first at the onset, the last at the
    offset, each the last dense candidate within ``step_deg`` and ``RANGE_STEP_M`` of the point
    before (checked on the snapped positions, which are what the bank renders)."""
    if path.motion == "static":
        return [(path.onset, _snap(path.start))]
    step = math.radians(step_deg)
    if path.motion == "arc":
        turn = math.radians(path.speed * (path.offset - path.onset))
        n = math.ceil(turn / step * _DENSE_PER_STEP) + 2
    else:
        length = float(np.linalg.norm(path.end - path.start))
        near = _segment_range(path.start, path.end, receiver)
        n = math.ceil((length / near / step + length / RANGE_STEP_M) * _DENSE_PER_STEP) + 2
    times = path.onset + (path.offset - path.onset) * np.linspace(0.0, 1.0, n)
    times[-1] = path.offset
    pos = _snap(_positions(path, receiver, times))
    rel = pos - receiver[:, None]
    dist = np.linalg.norm(rel, axis=0)
    unit = rel / dist
    cos_step = math.cos(step)
    chosen, i = [0], 0
    while i < n - 1:
        ok = (unit[:, i] @ unit[:, i + 1:] >= cos_step) & (np.abs(dist[i + 1:] - dist[i]) <= RANGE_STEP_M)
        bad = np.flatnonzero(~ok)
        i = n - 1 if bad.size == 0 else i + max(int(bad[0]), 1)
        chosen.append(i)
    return [(float(times[j]), pos[:, j]) for j in chosen]


def _check_early_window(
    trajectory: list[tuple[float, np.ndarray]], receiver: np.ndarray, room: RoomSpec, index: int
) -> None:
    """A path's later points hold POINT_EARLY_WINDOW_S after their own direct sound, and the
    renderer convolves each up to EARLY_REACH_S after the path's latest direct sound: the range may
    change by at most the difference, in sound travel."""
    ranges = [float(np.linalg.norm(p - receiver)) for _, p in trajectory]
    spread_s = (max(ranges) - min(ranges)) / SPEED_OF_SOUND_M_S
    if spread_s + EARLY_REACH_S > POINT_EARLY_WINDOW_S:
        raise InvalidSceneError(
            f"room {room.room_id}: source {index}'s range changes by {max(ranges) - min(ranges):.1f} m along "
            f"its path, more than its points' early window ({POINT_EARLY_WINDOW_S} s) covers"
        )


def _point_placement(base: Placement, position: np.ndarray, first: np.ndarray | None = None) -> Placement:
    """The bank placement of a trajectory point: the base's room, split and receiver, an id from the
    millimetre position, labels from the position. ``first``: the path's first point, given for a
    moving source's later points, whose RIR is only its early part (``POINT_EARLY_WINDOW_S``, at the
    absorption calibrated for ``first``; id suffix ``e``): the scene renderer convolves only that
    part per point and the late part once, from the first point's whole RIR."""
    early = first is not None
    mm = ",".join(str(int(v)) for v in np.round(np.asarray(position) * 1000.0))
    pid = f"{base.placement_id}~{hashlib.sha256(mm.encode()).hexdigest()[:12]}{'e' if early else ''}"
    az, el, dist = _directions(base.receiver_m, base.receiver_yaw_deg, np.asarray(position)[:, None])
    return Placement(
        placement_id=pid, room_id=base.room_id, split=base.split, receiver_m=base.receiver_m,
        receiver_yaw_deg=base.receiver_yaw_deg, source_m=_triple(position), azimuth_deg=float(az[0]),
        elevation_deg=float(el[0]), distance_m=float(dist[0]), room_set_hash=base.room_set_hash,
        early_window_s=POINT_EARLY_WINDOW_S if early else None,
        calibrate_at_m=_triple(first) if first is not None else None,
    )


def _directions(
    receiver: tuple[float, float, float], yaw_deg: float, positions: np.ndarray
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """relative_direction in degrees, azimuth kept in (-180, 180] through the radian round trip."""
    az, el, dist = relative_direction(receiver, yaw_deg, positions)
    az_deg = np.degrees(az)
    az_deg = np.where(az_deg <= -180.0, az_deg + 360.0, np.where(az_deg > 180.0, az_deg - 360.0, az_deg))
    return az_deg, np.clip(np.degrees(el), -90.0, 90.0), dist


def _snap(p: np.ndarray) -> np.ndarray:
    """Positions to the millimetre (the resolution of point ids)."""
    return np.round(np.asarray(p, dtype=np.float64) * 1000.0) / 1000.0


def _triple(p: np.ndarray) -> tuple[float, float, float]:
    return (float(p[0]), float(p[1]), float(p[2]))


def _inside(p: np.ndarray, dims: tuple[float, float, float], clearance: float) -> bool:
    lo, hi = clearance - 1e-9, np.asarray(dims) - clearance + 1e-9
    return bool(np.all(np.asarray(p) >= lo) and np.all(np.asarray(p) <= hi))


def _angle_deg(u: np.ndarray, v: np.ndarray) -> float:
    cos = float(u @ v) / (float(np.linalg.norm(u)) * float(np.linalg.norm(v)))
    return math.degrees(math.acos(min(1.0, max(-1.0, cos))))


def _segment_range(a: np.ndarray, b: np.ndarray, p: np.ndarray) -> float:
    """Distance from p to the closest point of the segment a-b."""
    ab = b - a
    denom = float(ab @ ab)
    s = 0.0 if denom == 0.0 else min(1.0, max(0.0, float((p - a) @ ab) / denom))
    return float(np.linalg.norm(a + s * ab - p))


def _arc_inside(
    start: np.ndarray, receiver: np.ndarray, turn_deg: float, dims: tuple[float, float, float],
    clearance: float,
) -> bool:
    """Whether an arc around the receiver's vertical axis, turned by ``turn_deg`` from ``start``,
    stays inside the clearance: x and y of a circle peak at its ends or at multiples of 90 degrees."""
    rel = start - receiver
    rho, theta0 = math.hypot(rel[0], rel[1]), math.atan2(rel[1], rel[0])
    lo, hi = sorted((theta0, theta0 + math.radians(turn_deg)))
    quarter = math.pi / 2
    angles = [lo, hi, *(k * quarter for k in range(math.ceil(lo / quarter), math.floor(hi / quarter) + 1))]
    for a in angles:
        p = np.array([receiver[0] + rho * math.cos(a), receiver[1] + rho * math.sin(a), start[2]])
        if not _inside(p, dims, clearance):
            return False
    return True
