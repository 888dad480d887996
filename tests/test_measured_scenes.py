"""Scenes over a measured SRIR bank (tasks/measured_scenes.py): sources at recorded positions,
moving sources along a dense ring of them, labels that the rendered audio agrees with, and a build.

The bank is synthetic (tests/srir_bank.py's SRIRs with their diffuse tail 20 dB lower, DRR about
+16 dB: at its own level, -4 dB, the frozen noise tail's chance intensity biases a static source's
100 ms frame DOA by 5-10 deg, which would hide what the trajectory does; ambiX WAVs at 44.1 kHz
with a labels table):
room ``ring`` holds 36 positions every 10 deg at elevation 0 and 2 m, plus a coarse ring of 4
positions every 90 deg at elevation 40 and 1.5 m; room ``sparse`` holds tests/srir_bank.py's six
scattered positions (no ring at all).
"""

from __future__ import annotations

import csv
import io
import json
import tarfile
from pathlib import Path

import numpy as np
import pyarrow.parquet as pq
import pytest
import soundfile as sf
from srir_bank import FS_BANK, GEOMETRY, LATENCY_S, C, srir

from schemas.audio import AudioPrepConfig
from schemas.build import BuildConfig
from schemas.rooms import RirSettings
from schemas.scenes import LABEL_FRAME_S, SceneConfig
from schemas.shards import SampleRecord
from schemas.sources import SourceClip
from tasks.ambisonics import angular_distance_deg
from tasks.build_stages import build_in_process
from tasks.dcase_csv import dcase_rows, read_dcase_csv
from tasks.doa import intensity_doa
from tasks.errors import InvalidSceneError
from tasks.measured_bank import bank_room_set, load_bank
from tasks.measured_scenes import (
    MAX_RING_STEP_DEG,
    RING_ELEVATION_TOL_DEG,
    draw_measured_scene,
    ring_run,
)
from tasks.plan_table import iter_scenes
from tasks.rir_bank import render_chunk
from tasks.scene_geometry import directions_at
from tasks.scene_labels import frame_labels
from tasks.scene_render import render_scene

SR = 48000
RING = [(az, 0.0, 2.0) for az in range(-170, 190, 10)]
COARSE = [(az, 40.0, 1.5) for az in (-90, 0, 90, 180)]
TAIL_GAIN = 0.1
LABEL_TOLERANCE_DEG = 0.15 * MAX_RING_STEP_DEG + RING_ELEVATION_TOL_DEG
"""tasks/measured_scenes.py's bound on a frame label against the rendered direction (0.15 of the
10 deg ring step plus the 2 deg ring elevation tolerance)."""


def _room(folder: Path, geometry: list[tuple[float, float, float]]) -> None:
    folder.mkdir(parents=True)
    rows = []
    for i, (az, el, d) in enumerate(geometry):
        x = srir(az, el, d, 1, i, seconds=0.15)
        x[:, round((LATENCY_S + d / C) * FS_BANK) + 1 :] *= TAIL_GAIN
        sf.write(folder / f"p{i:03d}.wav", x.T, FS_BANK, subtype="FLOAT")
        rows.append({"file": f"p{i:03d}.wav", "azimuth_deg": az, "elevation_deg": el, "distance_m": d})
    with open(folder / "labels_derived.csv", "w", newline="") as fh:
        w = csv.DictWriter(fh, fieldnames=list(rows[0]))
        w.writeheader()
        w.writerows(rows)


@pytest.fixture(scope="module")
def bank_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("measured-scenes") / "bank"
    _room(root / "ring", RING + COARSE)
    _room(root / "sparse", GEOMETRY)
    return root


@pytest.fixture(scope="module")
def room_set(bank_dir):
    rooms, placements, _ = bank_room_set(load_bank(bank_dir), seed=0)
    return {r.room_id: r for r in rooms}, placements


def _positions(room_set, room_id: str):
    rooms, placements = room_set
    return rooms[room_id], [p for p in placements if p.room_id == room_id]


def _at(positions, az: float, el: float):
    return next(p for p in positions if p.azimuth_deg == az and p.elevation_deg == el)


CLIPS = [SourceClip(dataset="d", clip_id=f"c{i}", captions=(f"sound {i}",), audio_uri=f"mem://{i}")
         for i in range(4)]


def test_a_dense_ring_is_walked_in_order_and_lapped_a_coarse_one_is_not(room_set):
    _, positions = _positions(room_set, "ring")
    start = _at(positions, 0.0, 0.0)
    left = ring_run(start, positions, 1, 400.0)
    azimuths = [p.azimuth_deg for p in left.stops]
    assert azimuths[:4] == [0.0, 10.0, 20.0, 30.0] and left.turns_deg[-1] == 400.0
    assert len(left.stops) == 41 and left.stops[36] is start  # once round the closed ring, and on
    right = ring_run(start, positions, -1, 25.0)
    assert [p.azimuth_deg for p in right.stops] == [0.0, -10.0, -20.0]
    assert list(right.turns_deg) == [0.0, 10.0, 20.0]
    coarse = ring_run(_at(positions, 0.0, 40.0), positions, 1, 360.0)
    assert len(coarse.stops) == 1  # 90 deg steps: no moving source there


def test_static_sources_sit_at_distinct_recorded_positions_apart(room_set):
    room, positions = _positions(room_set, "ring")
    ids = {p.placement_id for p in positions}
    cfg = SceneConfig(sources={4: 1.0}, min_separation_deg=30.0, duration_s=4.0, onset_s=(0.0, 2.0))
    for seed in range(20):
        base = positions[seed % len(positions)]
        scene = draw_measured_scene(base, room, positions, CLIPS, cfg, seed)
        assert [s.motion for s in scene.sources] == ["static"] * 4
        assert scene.sources[0].points[0].placement_id == base.placement_id
        chosen = [s.points[0] for s in scene.sources]
        assert {p.placement_id for p in chosen} <= ids and len({p.placement_id for p in chosen}) == 4
        for i, a in enumerate(chosen):
            for b in chosen[:i]:
                assert _angle(a, b) >= 30.0
        assert scene.receiver_m == (0.0, 0.0, 0.0)


def test_moving_sources_pass_recorded_ring_positions_when_their_labels_say(room_set):
    room, positions = _positions(room_set, "ring")
    cfg = SceneConfig(sources={3: 1.0}, duration_s=4.0, onset_s=(0.0, 2.0), motion={"moving_share": 1.0})
    by_id = {p.placement_id: p for p in positions}
    moving = 0
    for seed in range(12):
        base = _at(positions, float(RING[seed * 3][0]), 0.0)
        scene = draw_measured_scene(base, room, positions, CLIPS[:3], cfg, seed)
        assert scene.sources[0].points[0].placement_id == base.placement_id
        for src in scene.sources:
            if src.motion == "static":
                continue
            moving += 1
            assert src.motion == "arc"
            assert cfg.motion.arc_speed_dps[0] - 1e-9 <= src.speed <= cfg.motion.arc_speed_dps[1] + 1e-9
            assert src.points[0].time_s == src.onset_s and src.points[-1].time_s == src.offset_s
            for a, b in zip(src.points, src.points[1:], strict=False):
                assert 0 < _angle(by_id[a.placement_id], by_id[b.placement_id]) <= MAX_RING_STEP_DEG + 1e-9
            # the label (the arc) is at each recorded position when the point says it is
            az, el, dist = directions_at(scene, src, np.array([p.time_s for p in src.points]))
            for p, a, e, d in zip(src.points, az, el, dist, strict=True):
                assert angular_distance_deg(a, e, p.azimuth_deg, p.elevation_deg) < 1e-4  # arccos rounding
                assert d == pytest.approx(p.distance_m)
    assert moving == 36  # every source: source 0 starts on the dense ring, the others are put there


def test_where_no_dense_ring_holds_a_moving_source_it_is_static(room_set):
    room, positions = _positions(room_set, "sparse")
    cfg = SceneConfig(sources={2: 1.0}, duration_s=4.0, onset_s=(0.0, 2.0), min_separation_deg=20.0,
                      motion={"moving_share": 1.0})
    for seed in range(5):
        scene = draw_measured_scene(positions[seed], room, positions, CLIPS[:2], cfg, seed)
        assert [s.motion for s in scene.sources] == ["static", "static"]
    ring_room, ring_positions = _positions(room_set, "ring")
    scene = draw_measured_scene(_at(ring_positions, 90.0, 40.0), ring_room, ring_positions, CLIPS[:1], cfg, 0)
    assert scene.sources[0].motion == "static"  # source 0 on the coarse ring


def test_a_scene_the_recorded_positions_cannot_hold_is_a_typed_error(room_set):
    room, positions = _positions(room_set, "sparse")
    crowded = SceneConfig(sources={4: 1.0}, min_separation_deg=100.0, duration_s=4.0, onset_s=(0.0, 2.0))
    with pytest.raises(InvalidSceneError, match="no recorded position for static source"):
        draw_measured_scene(positions[0], room, positions, CLIPS, crowded, 0)
    _, other = _positions(room_set, "ring")
    with pytest.raises(InvalidSceneError, match="other rooms"):
        draw_measured_scene(positions[0], room, [*positions, other[0]], CLIPS[:1], crowded, 0)


@pytest.fixture(scope="module")
def ring_rirs(room_set):
    rooms, placements = room_set
    chosen = [p for p in placements if p.room_id == "ring"]
    rirs, records, rejects = render_chunk(rooms, chosen, RirSettings(), "measured")
    assert not rejects and len(records) == len(chosen)
    return rirs


def _angle(a, b) -> float:
    """Angle between two things with azimuth_deg and elevation_deg, degrees."""
    return float(angular_distance_deg(a.azimuth_deg, a.elevation_deg, b.azimuth_deg, b.elevation_deg))


def _noise(seconds: float, seed: int) -> np.ndarray:
    return (np.random.default_rng(seed).standard_normal(round(seconds * SR)) * 0.1).astype(np.float32)


def _frame_errors(scene, rendered, flac: bytes) -> tuple[list[float], int]:
    """Angle between each solo frame's intensity DOA and its source's label; frames scored."""
    foa = sf.read(io.BytesIO(flac), dtype="float32", always_2d=True)[0].T
    act = np.stack(rendered.activity)
    labels = [{f.frame: f for f in frame_labels(scene, s, a)}
              for s, a in zip(scene.sources, act, strict=True)]
    errors = []
    for f in range(1, act.shape[1]):
        # one source alone, and none stopped in the frame before (its tail would still sound)
        if act[:, f].sum() != 1 or (act[:, f - 1] & ~act[:, f]).any():
            continue
        i = int(np.flatnonzero(act[:, f])[0])
        doa = intensity_doa(foa, SR, start_s=f * LABEL_FRAME_S, end_s=(f + 1) * LABEL_FRAME_S)
        errors.append(_angle(doa, labels[i][f]))
    return errors, len(errors)


def test_rendered_moving_scenes_follow_their_labels_frame_by_frame(room_set, ring_rirs):
    """A moving source alone, then scenes of three sources (some moving) over the ring: the 100 ms
    frame DOA of the rendered FOA agrees with the labels where one source sounds."""
    room, positions = _positions(room_set, "ring")
    alone = SceneConfig(duration_s=3.0, motion={"moving_share": 1.0, "arc_speed_dps": (30.0, 40.0)},
                        onset_s=(0.0, 1.0))
    scene = draw_measured_scene(_at(positions, 0.0, 0.0), room, positions, CLIPS[:1], alone, 1)
    (src,) = scene.sources
    assert src.motion == "arc" and len(src.points) >= 10
    flac, rendered = render_scene(scene, [_noise(1.5, 3)], ring_rirs, AudioPrepConfig())
    errors, n = _frame_errors(scene, rendered, flac)
    assert n >= 25
    assert np.median(errors) < 1.0 and max(errors) < LABEL_TOLERANCE_DEG, np.round(errors, 2)

    mixed = SceneConfig(sources={3: 1.0}, duration_s=4.0, onset_s=(0.5, 2.0), max_polyphony=2,
                        motion={"moving_share": 0.6}, min_separation_deg=40.0, elevation_deg=(-5.0, 5.0))
    scored = []
    for seed in range(6):
        base = _at(positions, float(RING[seed * 5][0]), 0.0)
        scene = draw_measured_scene(base, room, positions, CLIPS[:3], mixed, seed)
        monos = [_noise(1.0 + k, 10 * seed + k) for k in range(3)]
        flac, rendered = render_scene(scene, monos, ring_rirs, AudioPrepConfig())
        scored += _frame_errors(scene, rendered, flac)[0]
    assert len(scored) >= 30
    figures = {"frames": len(scored), "median_deg": float(np.median(scored)),
               "p95_deg": float(np.percentile(scored, 95)), "max_deg": max(scored)}
    print(json.dumps({k: round(v, 2) for k, v in figures.items()}))
    assert np.median(scored) < 1.0 and np.percentile(scored, 95) < LABEL_TOLERANCE_DEG


def test_a_build_over_a_measured_bank_writes_scene_samples_whose_csv_reads_back(bank_dir, tmp_path):
    scenes = SceneConfig(sources={1: 1.0, 2: 1.0}, duration_s=3.0, onset_s=(0.0, 1.0),
                         motion={"moving_share": 0.5}, min_separation_deg=30.0)
    cfg = BuildConfig(source="demo", limit=8, room_source="measured", bank=str(bank_dir), scenes=scenes,
                      shard_size=64)
    base = Path(build_in_process(cfg, str(tmp_path)))
    bank_ids = {p.placement_id for p in bank_room_set(load_bank(bank_dir), seed=0)[1]}
    scenes_seen = moving = 0
    for tar in sorted(base.rglob("*.tar")):
        with tarfile.open(tar) as tf:
            for name in tf.getnames():
                if not name.endswith(".csv"):
                    continue
                json_member = tf.extractfile(name.removesuffix(".csv") + ".json")
                record = SampleRecord.model_validate_json(json_member.read())
                rows = read_dcase_csv(tf.extractfile(name).read())
                assert rows and rows == dcase_rows(record.sources)
                scenes_seen += 1
                moving += sum(s.motion == "arc" for s in record.sources)
    assert scenes_seen >= 4 and moving >= 1
    assert pq.read_table(base / "scene_placements.parquet").num_rows == 0  # no placement added
    points = {pid for _, scene in iter_scenes(str(base / "plan.parquet")) for pid in scene.placement_ids}
    assert len(points) > scenes_seen and points <= bank_ids  # every point a recorded position
