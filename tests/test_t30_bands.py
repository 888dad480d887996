"""benchmarks/t30_bands.py's reading of a broadband T30 label band by band, on responses of known decay."""

from __future__ import annotations

import importlib.util
from pathlib import Path

import pytest
from decay_signals import FS, noise_decay, two_rates

from schemas.rooms import IsmDetails, RirRecord
from tasks.rir_bank import pack_chunk
from tasks.room_acoustics import measure_response, t30

REPO = Path(__file__).resolve().parents[1]


def _bench():
    spec = importlib.util.spec_from_file_location("t30_bands_bench", REPO / "benchmarks" / "t30_bands.py")
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


def test_a_decay_that_is_the_same_in_every_band_reads_the_same_in_every_band():
    w = noise_decay(1.0, 0)
    view = _bench().band_view(w, FS, t30(w, FS))
    for key in ("t30_below_4000_over_label", "t30_below_8000_over_label", "t30_500_over_label",
                "t30_1000_over_label", "t30_4000_over_label"):
        assert view[key] == pytest.approx(1.0, abs=0.08), key
    assert view["edt_over_t30"] == pytest.approx(1.0, abs=0.15)
    # white noise: each octave holds about twice the energy of the one below it
    assert view["energy_8000_db"] - view["energy_4000_db"] == pytest.approx(3.0, abs=0.5)


def test_fast_high_bands_make_the_broadband_label_shorter_than_what_lies_below_them():
    """Most of the energy above 5 kHz dying in 0.4 s, the rest (below 3 kHz) in 1.2 s: the broadband
    label falls between, the curve bends (EDT well under T30), and the response below 4 kHz decays at
    the slow rate, so its T30 exceeds the label: the simulated builds' signature in issue 15."""
    w = two_rates()
    label = t30(w, FS)
    view = _bench().band_view(w, FS, label)
    assert 0.5 < label < 1.0
    assert view["t30_below_4000_over_label"] * label == pytest.approx(1.2, rel=0.05)
    assert view["t30_below_4000_over_label"] > 1.25
    assert view["t30_8000_over_label"] * label == pytest.approx(0.4, rel=0.1)
    assert view["edt_over_t30"] < 0.7


def test_a_build_is_read_from_its_rir_chunks_within_the_label_range(tmp_path):
    """Responses come from the build's rirs/ chunks with their records' labels; those outside the
    T30 range, or with no label, are left out."""
    rirs, records = {}, []
    for i, (w, anechoic) in enumerate([(noise_decay(1.0, 3), False), (noise_decay(0.3, 4), False),
                                       (noise_decay(1.2, 5), True)]):
        m = measure_response(w[None, :], FS, 0.0, 0.0, anechoic=anechoic)
        pid = f"p{i}"
        rirs[pid] = w[None, :]
        records.append(RirRecord(
            placement_id=pid, room_id="r", room_set_hash="h", method="ism", fs=FS, order=0,
            n_samples=w.size, t30_s=m.t30_s, edt_s=m.edt_s, drr_db=m.drr_db, c50_db=m.c50_db,
            azimuth_deg=0.0, elevation_deg=0.0, distance_m=1.0, direct_azimuth_deg=0.0,
            direct_elevation_deg=0.0, direct_doa_error_deg=0.0, engine_version="test",
            ism=IsmDetails(ism_max_order=0, absorption_scale=1.0, calibration_iterations=0,
                           target_t30_s=1.0)))
    (tmp_path / "rirs").mkdir()
    (tmp_path / "rirs" / "chunk-a.npz").write_bytes(pack_chunk(rirs, records, []))
    views = _bench().read_build(tmp_path, (0.9, 1.6), 10)
    assert [v["label_s"] for v in views] == [records[0].t30_s]
    assert views[0]["t30_below_8000_over_label"] == pytest.approx(1.0, abs=0.08)
