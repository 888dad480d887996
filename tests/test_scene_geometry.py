"""Scene geometry: paths inside the room, where the config says they end, points within the RIR step,
labels from the path, timing rules, determinism, typed errors for scenes that cannot exist."""

from __future__ import annotations

import itertools
import math

import numpy as np
import pytest
from pydantic import ValidationError

from schemas.rooms import SURFACES, Placement, RoomSpec, Surface
from schemas.scenes import (
    POINT_EARLY_WINDOW_S,
    BackgroundConfig,
    MotionConfig,
    SceneConfig,
    ScenePlan,
    SceneSource,
)
from schemas.sources import SourceClip
from tasks.errors import InvalidSceneError
from tasks.rir_engine import relative_direction
from tasks.scene_geometry import MIN_RANGE_M, RANGE_STEP_M, directions_at, draw_scene, position_at

SURFACE = Surface(material="test", absorption=[0.2] * 8, scattering=[0.1] * 8)


def _room(dims: tuple[float, float, float], room_id: str = "r0") -> RoomSpec:
    return RoomSpec(room_id=room_id, dims_m=dims, surfaces=dict.fromkeys(SURFACES, SURFACE), target_t30_s=0.5)


def _base(room: RoomSpec, receiver, yaw: float, source) -> Placement:
    az, el, dist = relative_direction(receiver, yaw, np.asarray(source, dtype=float))
    return Placement(
        placement_id=f"{room.room_id}-train-0", room_id=room.room_id, split="train", receiver_m=receiver,
        receiver_yaw_deg=yaw, source_m=source, azimuth_deg=float(np.degrees(az[0])),
        elevation_deg=float(np.degrees(el[0])), distance_m=float(dist[0]), room_set_hash="abc123",
    )


def _clips(k: int, prefix: str = "c") -> list[SourceClip]:
    return [SourceClip(dataset="demo", clip_id=f"{prefix}{i}", captions=("a dog barks",),
                       audio_uri=f"demo://0/{i}") for i in range(k)]


ROOM = _room((10.0, 8.0, 3.5))
BASE = _base(ROOM, (5.0, 4.0, 1.5), 30.0, (6.2, 4.9, 1.7))
MOVING = SceneConfig(
    sources={3: 1.0}, max_sources=4, distance_m=(0.6, 2.5),
    motion=MotionConfig(moving_share=1.0, linear_speed_mps=(0.2, 0.6), arc_speed_dps=(10.0, 50.0)),
)


@pytest.fixture(scope="module")
def moving_scenes() -> list[tuple[ScenePlan, list[Placement]]]:
    return [draw_scene(BASE, ROOM, _clips(3), MOVING, seed) for seed in range(40)]


def _sources(scenes, motion: str) -> list[tuple[ScenePlan, SceneSource]]:
    out = [(plan, s) for plan, _ in scenes for s in plan.sources if s.motion == motion]
    assert len(out) >= 10, f"too few {motion} sources to test"
    return out


def _angle(az1, el1, az2, el2) -> np.ndarray:
    def unit(az, el):
        az, el = np.radians(az), np.radians(el)
        return np.stack([np.cos(az) * np.cos(el), np.sin(az) * np.cos(el), np.sin(el)])

    return np.degrees(np.arccos(np.clip(np.sum(unit(az1, el1) * unit(az2, el2), axis=0), -1.0, 1.0)))


def test_paths_stay_inside_the_room_and_away_from_the_receiver(moving_scenes):
    dims, clearance = np.asarray(ROOM.dims_m), MOVING.source_clearance_m
    for plan, placements in moving_scenes:
        for s in plan.sources:
            times = np.linspace(s.onset_s, s.offset_s, 500)
            pos = position_at(plan, s, times)
            assert np.all(pos >= clearance - 1e-6) and np.all(pos <= dims[:, None] - clearance + 1e-6)
            _, _, dist = directions_at(plan, s, times)
            assert np.all(dist >= MIN_RANGE_M - 1e-6)
        for p in placements:
            assert np.all(np.asarray(p.source_m) >= clearance - 1e-3)
            assert np.all(np.asarray(p.source_m) <= dims - clearance + 1e-3)
            assert (p.room_id, p.split, p.receiver_m, p.receiver_yaw_deg, p.room_set_hash) == (
                BASE.room_id, BASE.split, BASE.receiver_m, BASE.receiver_yaw_deg, BASE.room_set_hash)


def test_a_linear_path_ends_where_the_config_says(moving_scenes):
    for plan, s in _sources(moving_scenes, "linear"):
        start, end = np.asarray(s.start_m), np.asarray(s.end_m)
        duration = s.offset_s - s.onset_s
        assert MOVING.motion.linear_speed_mps[0] <= s.speed <= MOVING.motion.linear_speed_mps[1]
        assert np.linalg.norm(end - start) == pytest.approx(s.speed * duration, rel=1e-9)
        np.testing.assert_allclose(position_at(plan, s, s.onset_s), start)
        np.testing.assert_allclose(position_at(plan, s, s.offset_s), end)
        np.testing.assert_allclose(position_at(plan, s, plan.duration_s + 5.0), end)  # clamped
        # constant speed along the straight line
        times = np.linspace(s.onset_s, s.offset_s, 11)
        steps = np.linalg.norm(np.diff(position_at(plan, s, times), axis=1), axis=0)
        np.testing.assert_allclose(steps, s.speed * duration / 10, rtol=1e-9)
        tilt = math.degrees(math.asin(abs(end[2] - start[2]) / np.linalg.norm(end - start)))
        assert tilt <= 15.0 + 1e-9


def test_an_arc_sweeps_speed_times_duration(moving_scenes):
    for plan, s in _sources(moving_scenes, "arc"):
        assert s.arc_direction in (1, -1)
        times = np.linspace(s.onset_s, s.offset_s, 2001)
        az, el, dist = directions_at(plan, s, times)
        swept = np.degrees(np.unwrap(np.radians(az)))
        assert swept[-1] - swept[0] == pytest.approx(s.arc_direction * s.speed * (s.offset_s - s.onset_s),
                                                     abs=1e-6)
        np.testing.assert_allclose(el, el[0], atol=1e-9)
        np.testing.assert_allclose(dist, dist[0], rtol=1e-9)
        np.testing.assert_allclose(position_at(plan, s, s.offset_s), s.end_m)


@pytest.mark.parametrize("step", [2.0, 5.0])
def test_trajectory_points_lie_within_the_rir_step(step):
    cfg = MOVING.model_copy(update={"rir_step_deg": step})
    n_points = 0
    for seed in range(12):
        plan, _ = draw_scene(BASE, ROOM, _clips(3), cfg, seed)
        for s in plan.sources:
            pts = s.points
            assert pts[0].time_s == s.onset_s and pts[-1].time_s == s.offset_s
            az = np.array([p.azimuth_deg for p in pts])
            el = np.array([p.elevation_deg for p in pts])
            dist = np.array([p.distance_m for p in pts])
            assert np.all(_angle(az[:-1], el[:-1], az[1:], el[1:]) <= step + 1e-6)
            assert np.all(np.abs(np.diff(dist)) <= RANGE_STEP_M + 1e-9)
            n_points += len(pts)
    assert n_points > 12 * 3 * 2


def test_point_labels_equal_the_path_labels_at_their_times(moving_scenes):
    for plan, placements in moving_scenes[:10]:
        by_id = {p.placement_id: p for p in placements}
        assert set(by_id) == set(plan.placement_ids) and len(by_id) == len(placements)
        for s in plan.sources:
            az, el, dist = directions_at(plan, s, np.array([p.time_s for p in s.points]))
            labels = np.array([[p.azimuth_deg, p.elevation_deg, p.distance_m] for p in s.points]).T
            # points are the millimetre-snapped positions the bank renders
            assert np.all(_angle(az, el, labels[0], labels[1]) < 0.2)
            np.testing.assert_allclose(dist, labels[2], atol=2e-3)
            for p in s.points:
                placement = by_id[p.placement_id]
                assert (placement.azimuth_deg, placement.elevation_deg, placement.distance_m) == (
                    p.azimuth_deg, p.elevation_deg, p.distance_m)
                if p.placement_id != BASE.placement_id:
                    assert p.placement_id.startswith(f"{BASE.placement_id}~")
                    # a moving source's later points are early parts (id suffix e), its first is whole
                    early = s.motion != "static" and p is not s.points[0]
                    assert p.placement_id.split("~")[1] == p.placement_id.split("~")[1][:12] + "e" * early
                    assert placement.early_window_s == (POINT_EARLY_WINDOW_S if early else None)
                    first = by_id[s.points[0].placement_id].source_m
                    assert placement.calibrate_at_m == (first if early else None)


def test_a_static_source_0_is_the_base_placement_and_static_sources_are_apart():
    cfg = SceneConfig(sources={4: 1.0}, max_sources=4, min_separation_deg=35.0, distance_m=(0.6, 3.0))
    for seed in range(20):
        plan, placements = draw_scene(BASE, ROOM, _clips(4), cfg, seed)
        s0 = plan.sources[0]
        assert (s0.motion, s0.start_m, s0.onset_s, s0.offset_s, s0.level_db) == (
            "static", BASE.source_m, 0.0, cfg.duration_s, 0.0)
        assert [p.placement_id for p in s0.points] == [BASE.placement_id]
        assert placements[0] == BASE
        rel = [np.asarray(s.start_m) - np.asarray(BASE.receiver_m) for s in plan.sources]
        for a, b in itertools.combinations(rel, 2):
            cos = a @ b / np.linalg.norm(a) / np.linalg.norm(b)
            assert math.degrees(math.acos(min(1.0, cos))) >= cfg.min_separation_deg - 1e-9
        for s in plan.sources[1:]:
            assert cfg.level_db[0] <= s.level_db <= cfg.level_db[1]
            assert cfg.azimuth_deg[0] - 0.2 <= s.points[0].azimuth_deg <= cfg.azimuth_deg[1] + 0.2
            assert cfg.distance_m[0] - 2e-3 <= s.points[0].distance_m <= cfg.distance_m[1] + 2e-3


def test_same_positions_share_one_placement():
    cfg = SceneConfig(sources={3: 1.0}, max_sources=3, min_separation_deg=0.0, azimuth_deg=(40.0, 40.0),
                      elevation_deg=(0.0, 0.0), distance_m=(1.5, 1.5))
    plan, placements = draw_scene(BASE, ROOM, _clips(3), cfg, 0)
    assert plan.sources[1].points[0].placement_id == plan.sources[2].points[0].placement_id
    assert [p.placement_id for p in placements] == list(dict.fromkeys(plan.placement_ids))
    assert len(placements) == 2


def test_a_moving_source_0_starts_at_the_base_placement():
    cfg = MOVING.model_copy(update={"sources": {1: 1.0}})
    plan, placements = draw_scene(BASE, ROOM, _clips(1), cfg, 3)
    s0 = plan.sources[0]
    assert s0.motion != "static" and s0.start_m == BASE.source_m
    np.testing.assert_allclose(placements[0].source_m, BASE.source_m, atol=5e-4)
    assert BASE.placement_id not in plan.placement_ids


def test_intervals_without_a_polyphony_limit():
    cfg = SceneConfig(sources={4: 1.0}, max_sources=4, onset_s=(0.5, 3.0), min_active_s=2.0)
    for seed in range(20):
        plan, _ = draw_scene(BASE, ROOM, _clips(4), cfg, seed)
        assert (plan.sources[0].onset_s, plan.sources[0].offset_s) == (0.0, cfg.duration_s)
        for s in plan.sources[1:]:
            assert cfg.onset_s[0] <= s.onset_s <= cfg.onset_s[1]
            assert s.offset_s - s.onset_s >= cfg.min_active_s - 1e-9 and s.offset_s <= cfg.duration_s


@pytest.mark.parametrize("polyphony", [1, 2])
def test_max_polyphony_is_respected(polyphony):
    cfg = SceneConfig(sources={4: 1.0}, max_sources=4, max_polyphony=polyphony, min_active_s=1.5,
                      onset_s=(0.0, 3.0))
    for seed in range(20):
        plan, _ = draw_scene(BASE, ROOM, _clips(4), cfg, seed)
        intervals = [(s.onset_s, s.offset_s) for s in plan.sources]
        assert all(off - on >= cfg.min_active_s - 1e-9 for on, off in intervals)
        assert intervals[0][0] == 0.0 and max(off for _, off in intervals) == cfg.duration_s
        edges = sorted({t for iv in intervals for t in iv})
        for a, b in itertools.pairwise(edges):  # [onset, offset): count at each elementary piece
            mid = (a + b) / 2
            assert sum(on <= mid < off for on, off in intervals) <= polyphony
        if polyphony == 1:
            ordered = sorted(intervals)
            assert all(prev[1] == nxt[0] for prev, nxt in itertools.pairwise(ordered))  # back to back


def test_draws_are_deterministic_in_their_inputs():
    plan, placements = draw_scene(BASE, ROOM, _clips(3), MOVING, 7)
    again, placements_again = draw_scene(BASE, ROOM, _clips(3), MOVING, 7)
    assert plan == again and placements == placements_again
    assert draw_scene(BASE, ROOM, _clips(3), MOVING, 8)[0] != plan
    other_clips = draw_scene(BASE, ROOM, _clips(3, prefix="d"), MOVING, 7)[0]
    assert other_clips.sources[1].start_m != plan.sources[1].start_m


def test_background_is_drawn_from_its_config():
    cfg = SceneConfig(background=BackgroundConfig(share=1.0, snr_db=(12.0, 18.0)))
    snrs = [draw_scene(BASE, ROOM, _clips(1), cfg, seed)[0].background_snr_db for seed in range(5)]
    assert all(12.0 <= v <= 18.0 for v in snrs)
    assert draw_scene(BASE, ROOM, _clips(1), SceneConfig(), 0)[0].background_snr_db is None


def test_impossible_scenes_raise_typed_errors():
    with pytest.raises(InvalidSceneError, match=r"1\.\.4 sources"):
        draw_scene(BASE, ROOM, [], MOVING, 0)
    with pytest.raises(InvalidSceneError, match="max_sources"):
        draw_scene(BASE, ROOM, _clips(5), MOVING, 0)
    small = _room((3.0, 3.0, 2.5), "small")
    base = _base(small, (1.5, 1.5, 1.2), 0.0, (2.3, 1.5, 1.2))
    fast = SceneConfig(
        motion=MotionConfig(moving_share=1.0, kinds={"linear": 1.0}, linear_speed_mps=(5.0, 6.0)))
    with pytest.raises(InvalidSceneError, match=r"small .*straight path of \d+\.\d+ m"):
        draw_scene(base, small, _clips(1), fast, 0)
    wide = _base(small, (1.5, 1.5, 1.2), 0.0, (2.8, 1.5, 1.2))  # a circle of 1.3 m leaves the clearance
    circling = SceneConfig(
        motion=MotionConfig(moving_share=1.0, kinds={"arc": 1.0}, arc_speed_dps=(40.0, 50.0)))
    with pytest.raises(InvalidSceneError, match=r"arc of \d+ deg .* either way round"):
        draw_scene(wide, small, _clips(1), circling, 0)
    crowded = SceneConfig(sources={4: 1.0}, max_sources=4, min_separation_deg=170.0)
    with pytest.raises(InvalidSceneError, match=r"room r0 .*170\.0 deg from another static source"):
        draw_scene(BASE, ROOM, _clips(4), crowded, 0)


@pytest.mark.parametrize(
    "fields",
    [
        {"sources": {0: 1.0}},  # K = 0
        {"sources": {}},
        {"onset_s": (0.0, 9.5), "min_active_s": 1.0},  # onsets beyond the clip
        {"onset_s": (-1.0, 2.0)},
        {"sources": {4: 1.0}, "max_polyphony": 1, "min_active_s": 3.0},  # 4 back to back past 10 s
        {"sources": {5: 1.0}, "max_sources": 4},
        {"distance_m": (0.0, 2.0)},
    ],
)
def test_bad_scene_configs_fail_validation(fields):
    with pytest.raises(ValidationError):
        SceneConfig(**fields)
