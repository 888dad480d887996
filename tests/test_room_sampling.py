"""The room set: the paper's 8,972 rooms, inside its ranges, deterministic, with honest splits."""

from __future__ import annotations

import json
from collections import Counter

import numpy as np
import pytest
import yaml

from room_specs import DEFAULT_CONFIG, RECORDED_HASHES
from tasks.errors import InvalidRoomError
from tasks.rir_engine import relative_direction
from tasks.room_sampling import (
    load_config,
    parquet_bytes,
    placements_table,
    read_placements,
    read_rooms,
    rooms_table,
    sample_room_set,
)

PAPER = {
    "area": (13.3, 277.4),
    "t30": (0.1445, 2.6719),
    "el": {"train": (-47.5, 48.7), "val": (-47.5, 48.7), "test": (-29.8, 42.4)},
    "dist": {"train": (0.5, 4.0), "val": (0.5, 4.0), "test": (0.9, 4.0)},
}


@pytest.fixture(scope="module")
def cfg():
    return load_config(DEFAULT_CONFIG)


@pytest.fixture(scope="module")
def full_set(cfg):
    return sample_room_set(cfg, seed=0)


@pytest.mark.slow
def test_full_room_set_is_inside_the_paper_ranges(full_set, cfg):
    rooms, placements, digest = full_set
    assert len(rooms) == 8972
    assert len({r.room_id for r in rooms}) == 8972
    area = np.array([r.floor_area_m2 for r in rooms])
    t30 = np.array([r.target_t30_s for r in rooms])
    assert PAPER["area"][0] <= area.min() and area.max() <= PAPER["area"][1]
    assert PAPER["t30"][0] <= t30.min() and t30.max() <= PAPER["t30"][1]
    # The set spans the ranges, not a corner of them.
    assert area.min() < 15 and area.max() > 250
    assert t30.min() < 0.16 and t30.max() > 2.5
    counts = Counter(p.split for p in placements)
    assert counts["train"] == 8972 and counts["val"] == counts["test"] == round(0.1 * 8972)
    by_id = {r.room_id: r for r in rooms}
    for split in ("train", "val", "test"):
        ps = [p for p in placements if p.split == split]
        az = np.array([p.azimuth_deg for p in ps])
        el = np.array([p.elevation_deg for p in ps])
        d = np.array([p.distance_m for p in ps])
        assert np.all((az > -180) & (az <= 180))
        assert az.min() < -170 and az.max() > 170
        assert PAPER["el"][split][0] <= el.min() and el.max() <= PAPER["el"][split][1]
        assert PAPER["dist"][split][0] <= d.min() and d.max() <= PAPER["dist"][split][1]
    for p in placements:
        assert p.room_set_hash == digest
        dims = np.array(by_id[p.room_id].dims_m)
        assert np.all(np.array(p.receiver_m) >= cfg.wall_clearance_m)
        assert np.all(np.array(p.receiver_m) <= dims - cfg.wall_clearance_m)
        assert np.all(np.array(p.source_m) >= cfg.source_clearance_m)
        assert np.all(np.array(p.source_m) <= dims - cfg.source_clearance_m)


def test_labels_agree_with_geometry(cfg):
    _, placements, _ = sample_room_set(cfg, seed=2, n_rooms=200)
    for p in placements:
        az, el, dist = relative_direction(p.receiver_m, p.receiver_yaw_deg, np.array(p.source_m))
        assert np.degrees(az[0]) == pytest.approx(p.azimuth_deg, abs=1e-6)
        assert np.degrees(el[0]) == pytest.approx(p.elevation_deg, abs=1e-6)
        assert dist[0] == pytest.approx(p.distance_m, abs=1e-9)


def test_paper_split_holds_out_test_positions(cfg):
    _, placements, _ = sample_room_set(cfg, seed=4, n_rooms=300)
    train = {p.room_id: np.array(p.source_m) for p in placements if p.split == "train"}
    test = [p for p in placements if p.split == "test"]
    assert test and {p.room_id for p in test} <= set(train)  # test rooms are train rooms
    for p in test:
        assert np.linalg.norm(np.array(p.source_m) - train[p.room_id]) >= cfg.min_test_separation_m


def test_room_disjoint_split(cfg):
    disjoint = cfg.model_copy(update={"split_policy": "room_disjoint"})
    _, placements, _ = sample_room_set(disjoint, seed=4, n_rooms=300)
    rooms_of = {s: {p.room_id for p in placements if p.split == s} for s in ("train", "val", "test")}
    assert rooms_of["train"] and rooms_of["val"] and rooms_of["test"]
    assert not rooms_of["train"] & rooms_of["test"]
    assert not rooms_of["train"] & rooms_of["val"]
    assert not rooms_of["val"] & rooms_of["test"]


@pytest.mark.slow
def test_same_seed_gives_byte_identical_parquet_and_recorded_hash(full_set, cfg):
    rooms, placements, digest = full_set
    again = sample_room_set(cfg, seed=0)
    assert again[2] == digest
    assert parquet_bytes(rooms_table(rooms, digest)) == parquet_bytes(rooms_table(again[0], digest))
    assert parquet_bytes(placements_table(placements, digest)) == parquet_bytes(
        placements_table(again[1], digest)
    )
    recorded = json.loads(RECORDED_HASHES.read_text())
    assert recorded["elsa.yaml"]["0"] == digest, "room distribution changed: update hashes.json"


def test_different_seed_gives_a_different_set(cfg):
    a = sample_room_set(cfg, seed=0, n_rooms=30)
    b = sample_room_set(cfg, seed=1, n_rooms=30)
    assert a[2] != b[2]
    assert [r.dims_m for r in a[0]] != [r.dims_m for r in b[0]]
    # Rooms are drawn from per-room streams: a prefix of a larger set is the smaller set.
    c = sample_room_set(cfg, seed=0, n_rooms=60)
    assert c[0][:30] == a[0]


def test_parquet_round_trip(tmp_path, cfg):
    rooms, placements, digest = sample_room_set(cfg, seed=3, n_rooms=25)
    (tmp_path / "rooms.parquet").write_bytes(parquet_bytes(rooms_table(rooms, digest)))
    (tmp_path / "placements.parquet").write_bytes(parquet_bytes(placements_table(placements, digest)))
    assert read_rooms(tmp_path / "rooms.parquet") == rooms
    assert read_placements(tmp_path / "placements.parquet") == placements


def test_bad_configs_are_named(tmp_path):
    raw = yaml.safe_load(DEFAULT_CONFIG.read_text())
    cases = {
        "floor_area_m2": ([100.0, 10.0], "lower bound"),
        "materials": ({"walls": ["no_such_material"], "floor": ["carpet_thin"],
                       "ceiling": ["plasterboard"]}, "unknown material"),
        "t30_s": ([-1.0, 2.0], "positive"),
    }
    for key, (value, message) in cases.items():
        bad = dict(raw, **{key: value})
        path = tmp_path / f"{key}.yaml"
        path.write_text(yaml.safe_dump(bad))
        with pytest.raises(InvalidRoomError, match=message):
            sample_room_set(load_config(path), seed=0, n_rooms=3)
    with pytest.raises(InvalidRoomError, match="No such file"):
        load_config(tmp_path / "missing.yaml")


def test_long_distances_in_large_rooms(cfg):
    """Distances up to 10 m: large rooms hold them, labels stay exact, sources stay inside."""
    far = {"azimuth_deg": (-180.0, 180.0), "elevation_deg": (-20.0, 20.0), "distance_m": (0.5, 10.0)}
    big = cfg.model_copy(update={"floor_area_m2": (200.0, 400.0),
                                 "splits": {"train": cfg.splits["train"].model_copy(update=far)}})
    rooms, placements, _ = sample_room_set(big, seed=5, n_rooms=40)
    by_id = {r.room_id: r for r in rooms}
    d = np.array([p.distance_m for p in placements])
    assert d.min() >= 0.5 and d.max() <= 10.0
    assert (d > 6.0).sum() >= 5  # long distances are drawn, not just the ones the paper uses
    for p in placements:
        _, _, dist = relative_direction(p.receiver_m, p.receiver_yaw_deg, np.array(p.source_m))
        assert dist[0] == pytest.approx(p.distance_m, abs=1e-9)
        assert np.all(np.array(p.source_m) >= big.source_clearance_m)
        assert np.all(np.array(p.source_m) <= np.array(by_id[p.room_id].dims_m) - big.source_clearance_m)


def test_room_too_small_for_the_distances_is_refused_at_once(cfg):
    small = cfg.model_copy(update={
        "floor_area_m2": (14.0, 15.0), "height_m": (2.5, 2.6),
        "splits": {"train": cfg.splits["train"].model_copy(update={"distance_m": (8.0, 10.0)})}})
    with pytest.raises(InvalidRoomError, match="too small for source distances"):
        sample_room_set(small, seed=0, n_rooms=2)
