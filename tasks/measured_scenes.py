"""Scenes over a measured SRIR bank: sources at the room's recorded positions, moving along its rings.

A measured room (schemas.measured.MeasuredRoom) has no geometry to render new RIRs in: every RIR a
scene uses is one of the bank's recordings, i.e. one of the room's placements
(tasks.measured_bank.bank_room_set: receiver at the origin, yaw 0). So, as SpatialScaper builds
its scenes from TAU-SRIR DB / METU, ``draw_measured_scene`` draws a scene whose every trajectory
point is a recorded placement, and the plan adds no placement to the bank.

- Static sources sit at recorded positions: source 0 at the base placement (the sample's own,
  as in tasks.scene_geometry), the others at distinct positions in the config's azimuth,
  elevation and distance ranges, at least ``min_separation_deg`` from every other static source.
  A scene whose sources cannot all be placed raises InvalidSceneError (the plan retries and then
  rejects the sample as ``scene_unplaceable``).
- A moving source is an ``arc``: it turns around the receiver's vertical axis through an ordered
  run of the positions on its start's *ring* (positions within ``RING_ELEVATION_TOL_DEG`` in
  elevation and ``RING_RANGE_TOL_M`` in range of the start, sorted by azimuth), each step between
  neighbours at most ``MAX_RING_STEP_DEG`` on the sphere; a closed ring may be lapped. Its angular
  speed is the drawn speed (cfg.motion.arc_speed_dps) moved to the nearest speed that makes the
  path end exactly on a recorded position at the source's offset (and still in the range), so
  ScenePoint k's time is when the arc reaches recorded position k. Every moving source is an arc,
  whatever ``cfg.motion.kinds`` weighs: banks record rings (TAU-SRIR DB's circles), not lines.
  A moving source whose start has no such run (a ring coarser than ``MAX_RING_STEP_DEG``, or too
  short for the drawn duration at any speed in the range) is static instead: a room without a
  dense ring gets static sources only.

What the labels are, and how true (tasks.scene_labels takes them from
tasks.scene_geometry.directions_at, i.e. from the arc): between two recorded positions a and b the
label is the arc's, azimuth linear in time at the start's elevation and range; the renderer
(tasks.scene_render.convolve_trajectory) crossfades the input linearly from a's RIR to b's over
the same interval. Where a's and b's direct sounds arrive together the crossfade is the plane
wave (1-u)a + u b, whose direction lies on the great circle from a to b within 0.01 deg of the
linear interpolation for steps up to 10 deg; where they do not (ranges differing by up to
2 x ``RING_RANGE_TOL_M``: up to 1.5 ms) they add in energy and the direction lags the label by
at most 0.15 of the step (u^2 / (u^2 + (1-u)^2) against u). At the recorded positions themselves
the azimuth is exact and the elevation and range are off by at most the ring tolerances. So a
frame label is within 0.15 x ``MAX_RING_STEP_DEG`` + ``RING_ELEVATION_TOL_DEG`` = 3.5 deg of
what is rendered, before the estimator's own room bias (tests/test_measured_scenes.py measures
the frame DOA of rendered scenes against these labels).

Each point's RIR is a whole recording, so the renderer's early/late split takes the late part
from the longest of them (tasks.scene_render), as for a path's first point in a simulated room.
"""

from __future__ import annotations

from collections.abc import Sequence
from itertools import pairwise
from typing import Literal, NamedTuple

import numpy as np

from schemas.measured import MeasuredRoom
from schemas.rooms import Placement
from schemas.scenes import SceneConfig, ScenePlan, ScenePoint, SceneSource
from schemas.sources import SourceClip
from tasks.ambisonics import angular_distance_deg
from tasks.errors import InvalidSceneError
from tasks.scene_geometry import MIN_RANGE_M, _intervals, _motion, _seed

MAX_RING_STEP_DEG = 10.0
"""Widest step between neighbouring recorded positions a moving source crosses: the crossfade
between them keeps the rendered direction within 0.15 of it (1.5 deg) of the label."""
RING_ELEVATION_TOL_DEG = 2.0
"""A ring's positions lie this close in elevation to the moving source's start (its label's
elevation): the static label accuracy of the project."""
RING_RANGE_TOL_M = 0.25
"""A ring's positions lie this close in range to the start (the label's range): the range step of
simulated trajectories (tasks.scene_geometry.RANGE_STEP_M)."""
_ANGLE_EPS_DEG = 1e-6
"""Rounding allowance on angles between positions (a 10 deg step computes as 10.000000000000002)."""
_SAME_AZIMUTH_DEG = 0.01
"""Two ring positions closer than this in azimuth are one stop (the one nearer the start's
elevation and range is kept): a zero-length step would crossfade in no time."""


class RingRun(NamedTuple):
    """The recorded positions an arc from its start passes, in order, and the azimuth turned to
    reach each (``turns_deg[0] == 0`` at the start, increasing), in one direction (+1: towards
    the left, counter-clockwise from above)."""

    stops: list[Placement]
    turns_deg: np.ndarray
    direction: Literal[1, -1]


def ring_run(
    start: Placement, positions: Sequence[Placement], direction: Literal[1, -1], most_deg: float
) -> RingRun:
    """The run of ``start``'s ring from ``start`` in ``direction`` (+1 or -1), up to ``most_deg`` of
    turn: each next stop is the ring's next azimuth that way, while the step to it is at most
    ``MAX_RING_STEP_DEG`` on the sphere; a ring closed all the way round is lapped. A ring
    coarser than the limit at the start gives the start alone."""
    ring = [
        q for q in positions
        if q.placement_id != start.placement_id
        and abs(q.elevation_deg - start.elevation_deg) <= RING_ELEVATION_TOL_DEG
        and abs(q.distance_m - start.distance_m) <= RING_RANGE_TOL_M
    ]
    turn = {q.placement_id: (direction * (q.azimuth_deg - start.azimuth_deg)) % 360.0 for q in ring}
    ring.sort(key=lambda q: (turn[q.placement_id], abs(q.elevation_deg - start.elevation_deg)
                             + abs(q.distance_m - start.distance_m), q.placement_id))
    lap: list[Placement] = []
    for q in ring:
        t = turn[q.placement_id]
        previous = turn[lap[-1].placement_id] if lap else 0.0
        if t - previous < _SAME_AZIMUTH_DEG or 360.0 - t < _SAME_AZIMUTH_DEG:
            continue
        lap.append(q)
    cycle = [start, *lap]
    angles = [0.0, *(turn[q.placement_id] for q in lap)]
    dense = [_step(a, b) <= MAX_RING_STEP_DEG + _ANGLE_EPS_DEG for a, b in pairwise(cycle)]
    closed = len(cycle) > 2 and all(dense) and _step(cycle[-1], start) <= MAX_RING_STEP_DEG + _ANGLE_EPS_DEG
    stops, turns = [start], [0.0]
    k, offset = 0, 0.0
    while True:
        k += 1
        if k == len(cycle):
            if not closed:
                break
            k, offset = 0, offset + 360.0
        if not closed and not dense[k - 1]:
            break
        nxt = angles[k] + offset
        if nxt > most_deg + 1e-9:
            break
        stops.append(cycle[k])
        turns.append(nxt)
    return RingRun(stops, np.asarray(turns), direction)


def draw_measured_scene(
    base: Placement, room: MeasuredRoom, positions: Sequence[Placement], clips: Sequence[SourceClip],
    cfg: SceneConfig, seed: int,
) -> ScenePlan:
    """One scene around ``base`` (a placement of ``room``) with one source per clip (``clips[0]``:
    the sample's own), every point one of ``positions`` (the room's placements, ``base`` among
    them). Deterministic in (base, clips, cfg, seed), as tasks.scene_geometry.draw_scene. Raises
    InvalidSceneError for no clip, more than ``cfg.max_sources``, or sources the recorded
    positions cannot hold (module docstring)."""
    if not 0 < len(clips) <= cfg.max_sources:
        raise InvalidSceneError(
            f"a scene needs 1..{cfg.max_sources} sources (max_sources), got {len(clips)} clips"
        )
    foreign = sorted({p.room_id for p in [base, *positions]} - {room.room_id})
    if foreign:
        raise InvalidSceneError(f"room {room.room_id}: scene positions from other rooms {foreign}")
    if all(p.placement_id != base.placement_id for p in positions):
        raise InvalidSceneError(
            f"room {room.room_id}: base placement {base.placement_id} is not among its positions"
        )
    rng = np.random.default_rng(_seed(base, clips, cfg, seed))
    pool = sorted(positions, key=lambda p: p.placement_id)
    intervals = _intervals(cfg, len(clips), rng, room.room_id)
    statics: list[Placement] = []
    sources: list[SceneSource] = []
    for i, (clip, (onset, offset)) in enumerate(zip(clips, intervals, strict=True)):
        moving = _motion(cfg, rng) != "static"
        level = 0.0 if i == 0 else float(rng.uniform(*cfg.level_db))
        run = _moving_run(cfg, base if i == 0 else None, pool, offset - onset, rng) if moving else None
        if run is None:
            start = base if i == 0 else _static_position(cfg, room, pool, statics, rng, i)
            statics.append(start)
            run = RingRun([start], np.zeros(1), 1)
        if len(run.stops) == 1:
            points, speed, direction = [_point(run.stops[0], onset)], None, None
        else:
            speed = float(run.turns_deg[-1]) / (offset - onset)
            direction = run.direction
            points = [_point(q, onset + float(t) / speed)
                      for q, t in zip(run.stops, run.turns_deg, strict=True)]
            points[-1] = points[-1].model_copy(update={"time_s": offset})
        sources.append(SceneSource(
            index=i, dataset=clip.dataset, clip_id=clip.clip_id, audio_uri=clip.audio_uri,
            captions=clip.captions, onset_s=onset, offset_s=offset, level_db=level,
            motion="static" if speed is None else "arc", speed=speed, arc_direction=direction,
            start_m=run.stops[0].source_m, end_m=run.stops[-1].source_m, points=points,
        ))
    snr = None
    if cfg.background is not None and rng.uniform() < cfg.background.share:
        snr = float(rng.uniform(*cfg.background.snr_db))
    return ScenePlan(
        room_id=base.room_id, base_placement_id=base.placement_id, receiver_m=base.receiver_m,
        receiver_yaw_deg=base.receiver_yaw_deg, duration_s=cfg.duration_s, sources=sources,
        background_snr_db=snr, seed=seed,
    )


def _moving_run(
    cfg: SceneConfig, start: Placement | None, pool: list[Placement], duration: float,
    rng: np.random.Generator,
) -> RingRun | None:
    """The ring run of a moving source of ``duration`` s: from ``start`` (source 0), else from the
    first position, in a random order of those in the config's ranges, that has one; None where
    no start has a run whose turn fits the speed range (the source is then static)."""
    if start is not None:
        candidates = [start]
    else:
        candidates = [pool[int(k)] for k in rng.permutation(len(pool))]
        candidates = [q for q in candidates if _in_ranges(cfg, q) and q.distance_m >= MIN_RANGE_M]
    target = float(rng.uniform(*cfg.motion.arc_speed_dps)) * duration
    first = 1 if rng.uniform() < 0.5 else -1
    lo, hi = (s * duration for s in cfg.motion.arc_speed_dps)
    for q in candidates:
        for direction in (first, -first):
            run = ring_run(q, pool, direction, hi)
            fits = np.flatnonzero(run.turns_deg >= lo - 1e-9)
            fits = fits[fits > 0]
            if fits.size:
                k = int(fits[np.argmin(np.abs(run.turns_deg[fits] - target))])
                return RingRun(run.stops[: k + 1], run.turns_deg[: k + 1], direction)
    return None


def _static_position(
    cfg: SceneConfig, room: MeasuredRoom, pool: list[Placement], statics: list[Placement],
    rng: np.random.Generator, index: int,
) -> Placement:
    """A recorded position for a further static source: in the config's ranges, not taken by
    another static source and at least ``min_separation_deg`` from each; drawn uniformly."""
    in_range = [q for q in pool if _in_ranges(cfg, q)]
    free = [
        q for q in in_range
        if all(q.placement_id != s.placement_id and _step(q, s) >= cfg.min_separation_deg for s in statics)
    ]
    if not free:
        raise InvalidSceneError(
            f"room {room.room_id}: no recorded position for static source {index}: {len(in_range)} of its "
            f"{len(pool)} positions lie in the config's ranges (azimuth {cfg.azimuth_deg}, elevation "
            f"{cfg.elevation_deg}, distance {cfg.distance_m}), none of them free and "
            f"{cfg.min_separation_deg} deg from the other {len(statics)} static source(s)"
        )
    return free[int(rng.integers(len(free)))]


def _in_ranges(cfg: SceneConfig, q: Placement) -> bool:
    return (cfg.azimuth_deg[0] <= q.azimuth_deg <= cfg.azimuth_deg[1]
            and cfg.elevation_deg[0] <= q.elevation_deg <= cfg.elevation_deg[1]
            and cfg.distance_m[0] <= q.distance_m <= cfg.distance_m[1])


def _step(a: Placement, b: Placement) -> float:
    """Angle between two positions as seen from the receiver, degrees."""
    return float(angular_distance_deg(a.azimuth_deg, a.elevation_deg, b.azimuth_deg, b.elevation_deg))


def _point(q: Placement, time_s: float) -> ScenePoint:
    return ScenePoint(placement_id=q.placement_id, time_s=time_s, azimuth_deg=q.azimuth_deg,
                      elevation_deg=q.elevation_deg, distance_m=q.distance_m)

