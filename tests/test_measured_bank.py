"""Measured SRIR banks as a room source: synthetic SOFA and WAV banks with known geometry, then S3A.

The synthetic banks are what a measurement would give: a direct impulse encoded with the project's
one SH definition (tasks.ambisonics.real_sh_sn3d) after a measurement latency, and an exponential
SN3D-diffuse tail with a known T60, stored in FuMa or N3D at 44.1 kHz so that the conversion, the
resampling and the labels' frame all have to be right for the checks to pass.
"""

from __future__ import annotations

import csv
import json
import math
import shutil
from pathlib import Path

import netCDF4
import numpy as np
import pytest
import sofar
from srir_bank import FS_BANK, GEOMETRY, LATENCY_S, S3A, T60, C, as_format, srir, wav_room

from schemas.measured import MeasuredRoom
from schemas.rooms import Placement, RirRecord, RirSettings
from tasks.ambisonics import real_sh_sn3d, unit_vector
from tasks.measured_bank import (
    MeasuredBankError,
    bank_room_set,
    load_bank,
    read_srir,
    render_measured,
)
from tasks.rir_bank import bank_key, pack_chunk, render_chunk, unpack_chunk
from tasks.rir_sources import rir_source

SETTINGS = RirSettings()  # 48 kHz, order 1
def _write_sofa(path: Path, data: np.ndarray, src: np.ndarray, *, convention: str = "SingleRoomSRIR",
                spherical: bool = False, listener: np.ndarray | None = None, view: np.ndarray | None = None,
                fmt_attribute: str | None = None, licence: str | None = None) -> Path:
    m, r, _ = data.shape
    s = sofar.Sofa(convention)
    s.Data_IR = data
    s.Data_SamplingRate = FS_BANK
    s.Data_Delay = np.zeros((1, r))
    s.SourcePosition = src
    s.SourcePosition_Type = "spherical" if spherical else "cartesian"
    s.SourcePosition_Units = "degree, degree, metre" if spherical else "metre"
    s.ReceiverPosition = np.zeros((r, 3))
    s.ReceiverPosition_Type, s.ReceiverPosition_Units = "cartesian", "metre"
    if convention == "SingleRoomSRIR":
        s.ReceiverView = np.tile([1.0, 0.0, 0.0], (r, 1))
        s.ReceiverUp = np.tile([0.0, 0.0, 1.0], (r, 1))
        s.delete("ReceiverDescriptions")  # sofar cannot write string variables with this numpy
        s.delete("EmitterDescriptions")
        s.MeasurementDate = np.zeros(m)
        s.ListenerPosition = np.zeros((m, 3)) if listener is None else np.tile(listener, (m, 1))
    if view is not None:
        s.ListenerView = view
    if fmt_attribute is not None:
        s.add_attribute("GLOBAL_AmbisonicsFormat", fmt_attribute)
    if licence is not None:
        s.GLOBAL_License = licence
    sofar.write_sofa(str(path), s)
    return path


@pytest.fixture(scope="module")
def fuma_sofa(tmp_path_factory) -> Path:
    """SingleRoomSRIR, FuMa, cartesian positions around a listener at (2, 3, 1.5) looking along +y
    (so its left is -x): the loader must express the sources in the listener's frame."""
    listener = np.array([2.0, 3.0, 1.5])
    fwd, left, up = np.array([0.0, 1.0, 0.0]), np.array([-1.0, 0.0, 0.0]), np.array([0.0, 0.0, 1.0])
    src = np.array([listener + d * (u[0] * fwd + u[1] * left + u[2] * up)
                    for (az, el, d) in GEOMETRY for u in [unit_vector(az, el)]])
    data = np.stack([as_format("fuma", srir(az, el, d, 1, i)) for i, (az, el, d) in enumerate(GEOMETRY)])
    path = tmp_path_factory.mktemp("fuma") / "hall.sofa"
    return _write_sofa(path, data, src, listener=listener[None], view=fwd[None], fmt_attribute="fuma",
                       licence="CC-BY-4.0")


@pytest.fixture(scope="module")
def n3d_sofa(tmp_path_factory) -> Path:
    """GeneralFIR, second-order N3D, spherical positions, no format attribute: found from the data."""
    src = np.array(GEOMETRY)
    data = np.stack([as_format("n3d", srir(az, el, d, 2, 10 + i)) for i, (az, el, d) in enumerate(GEOMETRY)])
    return _write_sofa(tmp_path_factory.mktemp("n3d") / "lab.sofa", data, src, convention="GeneralFIR",
                       spherical=True)


def _direct(rir: np.ndarray) -> np.ndarray:
    """The channels at W's direct peak, over W: the plane-wave gains the direct sound carries."""
    k = int(np.argmax(np.abs(rir[0])))
    return rir[:, k] / rir[0, k]


def _render_all(rooms: list[MeasuredRoom], placements: list[Placement], settings: RirSettings = SETTINGS):
    """Through the production bank: render_chunk with the registered source, then pack/unpack."""
    by_id = {r.room_id: r for r in rooms}  # a measured room says where its bank's files are
    rirs, records, rejects = unpack_chunk(pack_chunk(*render_chunk(by_id, placements, settings, "measured")))
    assert not rejects, rejects
    return rirs, {r.placement_id: r for r in records}


def test_fuma_sofa_round_trips_through_the_measured_source(fuma_sofa):
    bank = load_bank(fuma_sofa)
    assert (bank.kind, bank.channel_format, bank.format_source) == ("sofa", "fuma", "sofa_attribute")
    assert bank.licence.model_dump() == {"text": "CC-BY-4.0", "source": "sofa GLOBAL_License"}
    assert [r.fs for r in bank.rooms] == [FS_BANK] and bank.rooms[0].dims_m is None
    got = [(q.azimuth_deg, q.elevation_deg, q.distance_m) for q in bank.positions]
    assert np.allclose(got, GEOMETRY, atol=1e-6)  # labels in the listener's frame, +90 = left
    rooms, placements, _ = bank_room_set(bank, seed=0, val_rooms=0, test_rooms=0)
    assert {p.split for p in placements} == {"train"} and len(placements) == len(GEOMETRY)
    rirs, records = _render_all(rooms, placements)
    for p in placements:
        rir, rec = rirs[p.placement_id], records[p.placement_id]
        assert rec.method == "measured" and rec.ism is None and rec.engine_version == "measured/1"
        assert (rec.fs, rec.order, rir.shape[0]) == (48_000, 1, 4)
        assert rec.measured.native_fs == FS_BANK and rec.measured.channel_format == "fuma"
        assert rec.measured.licence == "CC-BY-4.0" and rec.measured.bank_id == bank.bank_id
        assert rec.direct_doa_error_deg < 3.0
        assert rec.t30_s == pytest.approx(T60, rel=0.1)
        # FuMa -> ambiX restored W: a plane wave's direct sound has SN3D gains (W = 1, |XYZ| = 1).
        assert _direct(rir) == pytest.approx(real_sh_sn3d(1, math.radians(p.azimuth_deg),
                                                          math.radians(p.elevation_deg)), abs=0.02)
        # The measurement latency is cut: the direct sound arrives at distance / c.
        assert rec.measured.predelay_removed_s == pytest.approx(LATENCY_S, abs=2e-4)
        assert int(np.argmax(np.abs(rir[0]))) == pytest.approx(p.distance_m / C * 48_000, abs=2)
    assert RirRecord.model_validate_json(records[placements[0].placement_id].model_dump_json()).measured


def test_n3d_bank_detected_from_its_data_and_truncated_to_the_build_order(n3d_sofa):
    bank = load_bank(n3d_sofa)
    assert (bank.channel_format, bank.format_source, bank.order) == ("n3d", "data", 2)
    assert "median 3.0" in bank.format_evidence  # (X^2+Y^2+Z^2)/W^2 of N3D
    assert bank.licence.text == "unknown" and bank.licence.source == "none found"
    assert np.allclose([(q.azimuth_deg, q.elevation_deg, q.distance_m) for q in bank.positions], GEOMETRY)
    rooms, placements, _ = bank_room_set(bank, seed=1, val_rooms=0, test_rooms=0)
    second = RirSettings(order=2)
    rirs, records = _render_all(rooms, placements, second)
    for p in placements:
        assert rirs[p.placement_id].shape[0] == 9 and records[p.placement_id].direct_doa_error_deg < 3.0
        gains = real_sh_sn3d(2, math.radians(p.azimuth_deg), math.radians(p.elevation_deg))
        assert _direct(rirs[p.placement_id]) == pytest.approx(gains, abs=0.02)  # N3D -> SN3D, order 2
    rir, rec = render_measured(rooms[0], placements[1], SETTINGS)
    assert rir.shape[0] == 4 and rec.order == 1
    with pytest.raises(MeasuredBankError, match=r"order 2.*order 3"):
        render_measured(rooms[0], placements[1], RirSettings(order=3))
    given = load_bank(n3d_sofa, "ambix")  # the caller's word beats the data's
    assert (given.channel_format, given.format_source) == ("ambix", "argument")


def test_placements_name_their_data_so_the_bank_key_follows_it(fuma_sofa, tmp_path):
    copy = shutil.copy(fuma_sofa, tmp_path / "hall.sofa")
    rooms, before, digest = bank_room_set(load_bank(copy), seed=0, val_rooms=0, test_rooms=0)
    # The same bank elsewhere is the same data: same placements, hash and bank key (no paths in them).
    moved = shutil.copy(copy, (tmp_path / "elsewhere").mkdir() or tmp_path / "elsewhere" / "hall.sofa")
    moved_rooms, moved_placements, moved_digest = bank_room_set(load_bank(moved), seed=0, val_rooms=0,
                                                                test_rooms=0)
    assert (moved_placements, moved_digest) == (before, digest) and moved_rooms[0].root != rooms[0].root
    assert bank_key(moved_rooms, moved_placements, SETTINGS, "measured") == bank_key(rooms, before, SETTINGS,
                                                                                       "measured")
    assert str(tmp_path) not in json.dumps([p.model_dump(mode="json") for p in before])
    with netCDF4.Dataset(copy, "a") as nc:  # one measurement changes, the others do not
        nc["Data.IR"][2, 0, 100] = 0.5
    _, after, _ = bank_room_set(load_bank(copy), seed=0, val_rooms=0, test_rooms=0)
    changed = [a.placement_id for a, b in zip(after, before, strict=True) if a.srir.sha256 != b.srir.sha256]
    assert changed == [before[2].placement_id]
    assert bank_key([], before, SETTINGS, "measured") != bank_key([], after, SETTINGS, "measured")
    with pytest.raises(MeasuredBankError, match="content changed"):
        read_srir(before[2].srir, rooms[0].root)
    # Simulated placements and records serialise as before: no srir / measured keys at all.
    plain = before[0].model_copy(update={"srir": None})
    assert "srir" not in json.loads(plain.model_dump_json())
    rec = render_measured(rooms[0], before[0], SETTINGS)[1]
    ism_like = rec.model_dump(exclude={"measured"}) | {"method": "ism", "ism": {
        "ism_max_order": 1, "absorption_scale": 1.0, "calibration_iterations": 0, "target_t30_s": 1.0}}
    assert "measured" not in json.loads(RirRecord.model_validate(ism_like).model_dump_json())
    with pytest.raises(ValueError, match="measured sub-record"):
        RirRecord.model_validate(rec.model_dump() | {"method": "fixed"})
    assert rir_source("measured").version == "measured/1"


# --------------------------------------------------------------------------------------------
# WAV banks


def test_whole_rooms_are_held_out(tmp_path):
    root = tmp_path / "bank"
    for k in range(5):
        wav_room(root / f"room{k}", 2 + k % 2)
    (root / "LICENSE").write_text("CC-BY-SA-4.0\nAttribution required.\n")
    bank = load_bank(root)
    assert (bank.channel_format, bank.format_source) == ("ambix", "data")  # ratio ~1 from the data
    assert bank.licence.source == "file bank/LICENSE" and bank.licence.text.startswith("CC-BY-SA-4.0")
    _, placements, digest = bank_room_set(bank, seed=3, val_rooms=1, test_rooms=2)
    assert len(placements) == len(bank.positions) == 12
    split_of: dict[str, set[str]] = {}
    for p in placements:
        split_of.setdefault(p.room_id, set()).add(p.split)
        assert p.receiver_m == (0.0, 0.0, 0.0) and p.receiver_yaw_deg == 0.0
        assert np.allclose(p.source_m, p.distance_m * unit_vector(p.azimuth_deg, p.elevation_deg))
        assert p.room_set_hash == digest
    assert all(len(s) == 1 for s in split_of.values())  # a room's positions all in one split
    per_split = sorted(next(iter(s)) for s in split_of.values())
    assert per_split == ["test", "test", "train", "train", "val"]
    again = bank_room_set(bank, seed=3, val_rooms=1, test_rooms=2)
    assert again[1] == placements and again[2] == digest
    assignments = {tuple(p.split for p in bank_room_set(bank, seed=s, test_rooms=2)[1]) for s in range(8)}
    assert len(assignments) > 1  # the seed decides which rooms are held out
    with pytest.raises(MeasuredBankError, match="cannot hold out"):
        bank_room_set(bank, seed=0, val_rooms=-1)
    # Too few rooms to hold any out whole (one SOFA file, one room folder): each room's positions
    # are spread over the splits instead, and the rooms say so (split None).
    rooms, spread, _ = bank_room_set(bank, seed=0, val_rooms=3, test_rooms=3)
    assert {r.split for r in rooms} == {None}
    for room in rooms:  # two positions: both train; three: one per split
        splits = sorted(p.split for p in spread if p.room_id == room.room_id)
        assert splits == (["train"] * 2 if room.n_positions == 2 else ["test", "train", "val"])
    one = wav_room(tmp_path / "one", 20)
    rooms, spread, _ = bank_room_set(load_bank(one), seed=0)
    assert rooms[0].split is None and sorted(p.split for p in spread).count("train") == 16
    assert {p.split for p in spread} == {"train", "val", "test"}
    assert len({p.placement_id for p in spread}) == 20
    manifest = {"licence": "CC0", "source": "synthetic", "channel_format": "ambix",
                "dims_m": {"room1": [4, 5, 3]}}
    (root / "bank.json").write_text(json.dumps(manifest))
    with_manifest = load_bank(root)
    assert with_manifest.licence.model_dump() == {"text": "CC0", "source": "manifest"}
    assert with_manifest.format_source == "manifest" and with_manifest.bank_id != bank.bank_id
    assert next(r.dims_m for r in with_manifest.rooms if r.room_id == "room1") == (4, 5, 3)


# --------------------------------------------------------------------------------------------
# typed errors


def _no_source_positions(tmp: Path) -> Path:
    path = _write_sofa(tmp / "x.sofa", np.stack([srir(0, 0, 1, 1, 0)] * 2), np.array([[1.0, 0, 0]] * 2))
    with netCDF4.Dataset(path, "a") as nc:
        nc.renameVariable("SourcePosition", "SourcePositionMissing")
    return path


def _source_at_listener(tmp: Path) -> Path:  # sofar's default position is [0, 0, 1]; zero it
    return _write_sofa(tmp / "x.sofa", np.stack([srir(0, 0, 1, 1, 0)] * 2), np.zeros((2, 3)))


def _mixed_rates(tmp: Path) -> Path:
    return wav_room(tmp / "r", 2, rates=[44_100, 48_000])


def _manifest_rate(tmp: Path) -> Path:
    room = wav_room(tmp / "r", 2)
    (room / "bank.yaml").write_text("fs: 48000\n")
    return room


def _three_channels(tmp: Path) -> Path:
    return wav_room(tmp / "r", 2, channels=3)


def _missing_column(tmp: Path) -> Path:
    room = wav_room(tmp / "r", 2)
    table = room / "labels_derived.csv"
    table.write_text(table.read_text().replace("distance_m", "dist"))
    return room


def _absent_file(tmp: Path) -> Path:
    room = wav_room(tmp / "r", 2)
    (room / "ls2.wav").unlink()
    return room


def _short_row(tmp: Path) -> Path:
    room = wav_room(tmp / "r", 2)
    table = room / "labels_derived.csv"
    table.write_text(table.read_text().rstrip("\n").rsplit("\n", 1)[0] + "\nls2.wav,0,0\n")
    return room


def _fuma_second_order(tmp: Path) -> Path:
    return _write_sofa(tmp / "x.sofa", np.stack([srir(0, 0, 1, 2, 0)] * 2), np.array([[1.0, 0, 0]] * 2),
                       fmt_attribute="fuma")


@pytest.mark.parametrize(("make", "match"), [
    (_no_source_positions, "no SourcePosition"),
    (_source_at_listener, "no source positions"),
    (_mixed_rates, "different sample rates"),
    (_manifest_rate, "manifest says 48000"),
    (_three_channels, r"3 channels is not \(N\+1\)\^2"),
    (_missing_column, r"missing columns \['distance_m'\]"),
    (_absent_file, "names 'ls2.wav', which is not in"),
    (_short_row, "non-numeric label"),
    (_fuma_second_order, "FuMa banks must be first order"),
])
def test_bad_banks_give_typed_errors(tmp_path, make, match):
    with pytest.raises(MeasuredBankError, match=match):
        load_bank(make(tmp_path))


def test_a_recording_that_disagrees_with_its_label_is_a_bank_reject(tmp_path):
    """Left and right swapped in the table: those two RIRs are refused (their labels would be untrue),
    the others render."""
    room = wav_room(tmp_path / "r", 4)  # front, left, right, up
    table = room / "labels_derived.csv"
    rows = table.read_text().splitlines()
    rows[2], rows[3] = rows[2].replace(",90.0,", ",-90.0,"), rows[3].replace(",-90.0,", ",90.0,")
    table.write_text("\n".join(rows) + "\n")
    rooms, placements, _ = bank_room_set(load_bank(room), seed=0, val_rooms=0, test_rooms=0)
    _, records, rejects = render_chunk({r.room_id: r for r in rooms}, placements, SETTINGS, "measured")
    assert sorted(r.placement_id for r in rejects) == [placements[1].placement_id, placements[2].placement_id]
    assert all("from its label" in r.detail for r in rejects) and len(records) == 2


# --------------------------------------------------------------------------------------------
# real measured SRIRs (../shared/realdata; absent in a user's clone)


def _realdata(path: Path) -> Path:
    if not path.exists():
        pytest.skip(f"real data not available: {path}")
    return path


@pytest.mark.realdata
def test_s3a_rooms_through_the_measured_source():
    root = _realdata(S3A)
    bank = load_bank(root)  # the path alone: format from the folders' own README/metadata text
    assert (bank.channel_format, bank.format_source, bank.order) == ("fuma", "metadata_text", 1)
    rates = {"MainChurch": 44_100, "OldChurch": 44_100, "Vislab": 48_000}
    assert {r.room_id: r.fs for r in bank.rooms} == rates
    assert "10.15126/surreydata.00808465" in bank.licence.text
    for room in bank.rooms:
        with open(root / room.room_id / "labels_derived.csv", newline="") as fh:
            table = {r["file"]: r for r in csv.DictReader(fh)}
        for q in (q for q in bank.positions if q.room_id == room.room_id):
            lab = table[Path(q.file).name]
            assert (q.azimuth_deg, q.elevation_deg, q.distance_m) == pytest.approx(
                (float(lab["azimuth_deg"]), float(lab["elevation_deg"]), float(lab["distance_m"])))
    rooms, placements, _ = bank_room_set(bank, seed=0)
    assert sorted(r.split for r in rooms) == ["test", "train", "val"]  # three rooms: each held out whole
    _, records = _render_all(rooms, placements)
    for room in bank.rooms:
        recs = [r for r in records.values() if r.room_id == room.room_id]
        assert len(recs) == room.n_positions
        assert all(r.fs == 48_000 and r.measured.native_fs == room.fs for r in recs)
        assert np.median([r.direct_doa_error_deg for r in recs]) <= 10.0
    church_t30 = [r.t30_s for r in records.values() if r.room_id != "Vislab"]
    assert all(0.9 < t < 1.6 for t in church_t30)  # documented RT60 1.3-1.5 s (500 Hz-2 kHz)
    # Vislab's responses sit 15-20 dB above their noise: too little range for a T30, so none.
    assert all(r.t30_s is None for r in records.values() if r.room_id == "Vislab")
    one = load_bank(root / "OldChurch")  # a single room folder, path alone
    assert (one.channel_format, [r.room_id for r in one.rooms]) == ("fuma", ["OldChurch"])



@pytest.mark.realdata
def test_s3a_format_from_the_data_alone(tmp_path):
    """Without its README/metadata text, a Soundfield room still reads as FuMa from its direct sound."""
    room = _realdata(S3A / "OldChurch")
    bare = tmp_path / "OldChurch"
    bare.mkdir()
    for f in [*room.glob("ls*.wav"), room / "labels_derived.csv"]:
        shutil.copy(f, bare / f.name)
    bank = load_bank(bare)
    assert (bank.channel_format, bank.format_source) == ("fuma", "data")
    assert 1.8 < float(bank.format_evidence.split("median ")[1].split()[0]) < 2.5
