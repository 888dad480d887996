"""Engine twins of measured rooms (tasks/measured_twins.py, RirSource ``twin``).

The synthetic bank's rooms have a known geometry (tests/srir_bank.py GEOMETRY) and a known decay
(T60 0.5 s), so a twin has to put each source where the bank's label says and calibrate its
shoebox to the bank's reverberation for the checks to pass.
"""

from __future__ import annotations

import json
import math
from pathlib import Path

import numpy as np
import pytest
from pydantic import ValidationError
from srir_bank import S3A, T60, decaying_room, wav_room

from schemas.build import BuildConfig
from schemas.rooms import RirSettings
from tasks.ambisonics import angular_distance_deg, vector_to_angles
from tasks.doa import direct_sound_doa
from tasks.measured_bank import bank_room_set, load_bank, render_measured
from tasks.measured_twins import (
    DEFAULT_RECEIVER_HEIGHT_M,
    SOURCE_CLEARANCE_M,
    TWIN_VERSION,
    TwinError,
    TwinGeometry,
    box_and_receiver,
    geometry_of,
    twin_room_set,
)
from tasks.rir_sources import rir_source

SETTINGS = RirSettings()  # 48 kHz, order 1
DIMS = {
    "roomA": [8.0, 7.0, 3.0],
    "roomB": {"dims_m": [9.0, 6.0, 3.5], "receiver_m": [3.5, 3.2, 1.6], "source": "measured with a tape"},
    "roomC": {"clearance_m": 0.5},
}


@pytest.fixture(scope="module")
def bank_dir(tmp_path_factory) -> Path:
    """Three rooms (so whole rooms are held out per split): A and B decay over 72 dB, C is wav_room's
    0.15 s cut (18 dB of decay: no T30, so no twin); dims of each form in room_dims.json."""
    root = tmp_path_factory.mktemp("twins") / "bank"
    decaying_room(root / "roomA", 6)
    decaying_room(root / "roomB", 6)
    wav_room(root / "roomC", 6)
    (root / "room_dims.json").write_text(json.dumps(DIMS))
    return root


@pytest.fixture(scope="module")
def twins(bank_dir):
    return twin_room_set(load_bank(bank_dir), 3, SETTINGS)


def test_twin_positions_are_the_banks_labels_in_the_same_splits(bank_dir, twins):
    real_rooms, real, _ = bank_room_set(load_bank(bank_dir), 3)
    assert twins.skipped.keys() == {"roomC"} and "no measured T30" in twins.skipped["roomC"]
    assert [r.room_id for r in twins.rooms] == ["roomA", "roomB"]
    kept = {p.placement_id: p for p in real if p.room_id != "roomC"}
    assert {p.placement_id for p in twins.placements} == kept.keys()
    for p in twins.placements:
        q = kept[p.placement_id]
        assert (p.room_id, p.split, p.srir, p.receiver_yaw_deg) == (q.room_id, q.split, None, 0.0)
        v = np.subtract(p.source_m, p.receiver_m)
        az, el = vector_to_angles(v)
        dist = float(np.linalg.norm(v))
        for got, label in ((p.azimuth_deg, q.azimuth_deg), (p.elevation_deg, q.elevation_deg),
                           (p.distance_m, q.distance_m), (dist, q.distance_m)):
            assert got == pytest.approx(label, abs=1e-6)
        if abs(q.elevation_deg) < 90.0:  # straight up has no azimuth
            assert float(angular_distance_deg(az, el, q.azimuth_deg, q.elevation_deg)) < 1e-6
        assert p.room_set_hash == twins.digest
    # Whole rooms per split, as the measured build has them.
    assert {r.room_id: r.split for r in real_rooms if r.room_id != "roomC"} == {
        room: {p.split for p in twins.placements if p.room_id == room}.pop() for room in ("roomA", "roomB")}


def test_twin_boxes_and_receivers_follow_the_dims_file(twins):
    a, b = twins.twins["roomA"], twins.twins["roomB"]
    assert (a.dims_m, a.receiver_m) == ((8.0, 7.0, 3.0), (4.0, 3.5, DEFAULT_RECEIVER_HEIGHT_M))
    assert a.dims_source == "file room_dims.json"
    assert (b.dims_m, b.receiver_m) == ((9.0, 6.0, 3.5), (3.5, 3.2, 1.6))
    assert b.dims_source == "measured with a tape"
    spec = {r.room_id: r for r in twins.rooms}
    assert spec["roomB"].dims_m == b.dims_m and spec["roomB"].target_t30_s == b.target_t30_s
    for p in twins.placements:
        assert p.receiver_m == twins.twins[p.room_id].receiver_m


def test_twin_t30_is_the_median_of_the_banks_measured_t30(bank_dir, twins):
    rooms, real, _ = bank_room_set(load_bank(bank_dir), 3)
    room = next(r for r in rooms if r.room_id == "roomA")
    measured = [render_measured(room, p, SETTINGS)[1].t30_s for p in real if p.room_id == "roomA"]
    assert twins.twins["roomA"].target_t30_s == pytest.approx(float(np.median(measured)), rel=1e-12)
    assert twins.twins["roomA"].target_t30_s == pytest.approx(T60, rel=0.05)
    assert twins.twins["roomA"].t30_source == "median of 6 measured T30s of 6 RIRs"


def test_a_rendered_twin_comes_from_the_label_at_the_rooms_t30(bank_dir):
    cfg = BuildConfig(room_source="twin", bank=str(bank_dir), room_seed=3, rir=SETTINGS)
    source = rir_source("twin")
    rooms, placements, digest = source.room_set(cfg)
    room = next(r for r in rooms if r.room_id == "roomA")
    # back-low: a direction with azimuth and elevation both away from the axes
    p = next(q for q in placements
             if q.room_id == "roomA" and (q.azimuth_deg, q.elevation_deg) == (135.0, -30.0))
    rir, record = source.render(room, p, SETTINGS)
    assert (record.method, record.engine_version, record.room_set_hash) == ("ism", TWIN_VERSION, digest)
    # The source is 0.25 m above the floor: its floor reflection arrives 0.8 ms after the direct sound,
    # so the window stops 0.5 ms after the onset (with the default 2 ms it pulls elevation 3.5 deg down).
    est = direct_sound_doa(rir, SETTINGS.fs, post_ms=0.5, band_hz=None)
    assert float(angular_distance_deg(est.azimuth_deg, est.elevation_deg, 135.0, -30.0)) < 3.0
    assert record.t30_s == pytest.approx(room.target_t30_s, rel=SETTINGS.calibration_rel_tol)
    assert record.distance_m == pytest.approx(p.distance_m, abs=1e-9)


def test_a_source_outside_its_twin_is_named(bank_dir):
    bank = load_bank(bank_dir)
    small = {r: TwinGeometry(dims_m=(3.0, 3.0, 3.0)) for r in ("roomA", "roomB", "roomC")}
    with pytest.raises(TwinError, match=r"room roomA: \S*roomA/ls1\.wav .* does not fit its twin"):
        twin_room_set(bank, 3, SETTINGS, geometry=small)
    with pytest.raises(TwinError, match=r"room_dims\.json"):
        twin_room_set(bank, 3, SETTINGS, geometry={})


def test_a_derived_box_holds_every_source_with_its_clearance():
    offsets = np.array([[5.0, 0.0, 0.06], [-1.71, 4.7, 1.15], [-1.71, -4.7, -0.5]])
    dims, receiver = box_and_receiver(TwinGeometry(clearance_m=1.0, receiver_height_m=0.97), offsets)
    assert dims == (12.0, 11.4, 3.12) and receiver == (6.0, 5.7, 0.97)
    inside = np.asarray(receiver) + offsets
    assert np.all(inside >= SOURCE_CLEARANCE_M) and np.all(inside <= np.asarray(dims) - SOURCE_CLEARANCE_M)


@pytest.mark.parametrize("raw", [{}, {"dims_m": [4, 4, 3], "clearance_m": 1.0}, {"receiver_m": [1, 1, 1],
                                 "clearance_m": 1.0}, [4.0, -1.0, 3.0]])
def test_twin_geometry_refuses_contradictions(raw):
    with pytest.raises(ValidationError):
        TwinGeometry.model_validate(raw)


def test_a_broken_dims_file_is_a_typed_error(tmp_path):
    bank_dir = tmp_path / "roomA"
    wav_room(bank_dir, 3)
    (bank_dir / "room_dims.json").write_text(json.dumps({"roomA": [4.0, 4.0]}))
    with pytest.raises(TwinError, match="not a room-dimensions file"):
        twin_room_set(load_bank(bank_dir), 0, SETTINGS)


# --------------------------------------------------------------------------------------------
# S3A (../shared/realdata; absent in a user's clone)


@pytest.mark.realdata
def test_s3a_twins_hold_the_banks_positions():
    if not S3A.exists():
        pytest.skip(f"real data not available: {S3A}")
    bank = load_bank(S3A)
    twins = twin_room_set(bank, 0, SETTINGS)
    _, real, _ = bank_room_set(bank, 0)
    # Vislab's decays reach the noise 10-19 dB down: no T30 to calibrate a twin to.
    assert set(twins.twins) == {"MainChurch", "OldChurch"} and set(twins.skipped) == {"Vislab"}
    by_id = {p.placement_id: p for p in real}
    assert len(twins.placements) == 20
    for p in twins.placements:
        q = by_id[p.placement_id]
        assert (p.split, p.azimuth_deg, p.elevation_deg, p.distance_m) == (
            q.split, q.azimuth_deg, q.elevation_deg, q.distance_m)
        az, el = vector_to_angles(np.subtract(p.source_m, p.receiver_m))
        assert float(angular_distance_deg(az, el, q.azimuth_deg, q.elevation_deg)) < 1e-6
        assert math.dist(p.source_m, p.receiver_m) == pytest.approx(q.distance_m, abs=1e-6)
    for room_id, twin in twins.twins.items():
        assert twin.receiver_m[2] == 0.97 and "Related documentation" in twin.dims_source
        assert 1.1 < twin.target_t30_s < 1.4, room_id  # the churches' measured RIRs: 1.19-1.28 s
    # Vislab's documented walls hold all 30 of its loudspeakers.
    vislab = next(r for r in bank.rooms if r.room_id == "Vislab")
    dims, receiver = box_and_receiver(geometry_of(vislab, bank, {}), np.zeros((1, 3)))
    assert dims == (7.99, 7.73, 3.98)
    sources = np.array([p.source_m for p in real if p.room_id == "Vislab"]) + receiver
    assert sources.shape == (30, 3)
    assert np.all(sources > SOURCE_CLEARANCE_M) and np.all(sources < np.asarray(dims) - SOURCE_CLEARANCE_M)
