"""Physics of the ambisonic RIR engine: SH gains, agreement with pyroomacoustics, DOA, T30, tail."""

from __future__ import annotations

import math

import numpy as np
import pyroomacoustics as pra
import pytest
from pydantic import ValidationError

from room_specs import DEFAULT_CONFIG
from schemas.rooms import OCTAVE_BANDS_HZ, SURFACES, RirSettings, RoomSpec, Surface
from tasks import room_acoustics
from tasks.ambisonics import unit_vector
from tasks.errors import InvalidRoomError, UnreachableT30Error
from tasks.rir_engine import _shoebox, measure, render_rir
from tasks.room_sampling import load_config, parametric_room, sample_room_set

FREE_FIELD = RirSettings(calibrate=False, late_tail=False)


def _room(dims=(12.0, 10.0, 6.0), alpha=0.3, t30=0.5, material="x") -> RoomSpec:
    surface = Surface(material=material, absorption=[alpha] * 8, scattering=[0.1] * 8)
    return RoomSpec(
        room_id="t", dims_m=dims, surfaces=dict.fromkeys(SURFACES, surface), target_t30_s=t30
    )


def _source(receiver, az, el, dist, yaw=0.0):
    v = unit_vector(az + yaw, el) * dist
    return tuple(float(a) for a in np.asarray(receiver) + v)


def _sn3d_reference(az_deg: float, el_deg: float) -> np.ndarray:
    """Order-3 real SH, ACN/SN3D, written out as Cartesian polynomials (independent of the code)."""
    x, y, z = unit_vector(az_deg, el_deg)
    s3, s15 = math.sqrt(3), math.sqrt(15)
    s58, s38 = math.sqrt(5 / 8), math.sqrt(3 / 8)
    return np.array([
        1.0,
        y, z, x,
        s3 * x * y, s3 * y * z, 0.5 * (3 * z * z - 1), s3 * x * z, 0.5 * s3 * (x * x - y * y),
        s58 * y * (3 * x * x - y * y), s15 * x * y * z, s38 * y * (5 * z * z - 1),
        0.5 * z * (5 * z * z - 3), s38 * x * (5 * z * z - 1), 0.5 * s15 * z * (x * x - y * y),
        s58 * x * (x * x - 3 * y * y),
    ])


@pytest.mark.parametrize("yaw", [0.0, 37.0])
@pytest.mark.parametrize("az", [0.0, 90.0, 180.0, -90.0])
@pytest.mark.parametrize("el", [-45.0, 0.0, 45.0])
def test_free_field_first_order_gains_are_sn3d(az, el, yaw):
    receiver = (6.0, 5.0, 3.0)
    source = _source(receiver, az, el, 2.0, yaw)
    r = render_rir(_room(), receiver, source, yaw_deg=yaw, settings=FREE_FIELD, anechoic=True)
    assert r.rir.shape[0] == 4
    assert r.azimuth_deg == pytest.approx(az if az != -180 else 180, abs=1e-6)
    assert r.elevation_deg == pytest.approx(el, abs=1e-6)
    peak = int(np.argmax(np.abs(r.rir[0])))
    ratios = r.rir[1:, peak] / r.rir[0, peak]
    a, e = math.radians(az), math.radians(el)
    expected = [math.sin(a) * math.cos(e), math.sin(e), math.cos(a) * math.cos(e)]  # Y, Z, X
    np.testing.assert_allclose(ratios, expected, atol=1e-3)
    # Whole-channel check: every channel is W scaled by its gain, not just at the peak.
    np.testing.assert_allclose(r.rir[1:], np.outer(expected, r.rir[0]), atol=1e-3 * np.abs(r.rir[0]).max())


def test_left_means_positive_y():
    receiver = (6.0, 5.0, 3.0)
    left = (6.0, 7.0, 3.0)  # +y of a receiver facing +x
    r = render_rir(_room(), receiver, left, settings=FREE_FIELD, anechoic=True)
    peak = int(np.argmax(np.abs(r.rir[0])))
    assert r.azimuth_deg == pytest.approx(90.0)
    assert r.rir[1, peak] / r.rir[0, peak] == pytest.approx(1.0, abs=1e-3)


@pytest.mark.parametrize(("az", "el"), [(0, 0), (30, 20), (-120, -35), (150, 60), (75, -10)])
def test_free_field_order3_matches_reference(az, el):
    receiver = (6.0, 5.0, 3.0)
    settings = FREE_FIELD.model_copy(update={"order": 3})
    r = render_rir(_room(), receiver, _source(receiver, az, el, 1.7), settings=settings, anechoic=True)
    assert r.rir.shape[0] == 16
    peak = int(np.argmax(np.abs(r.rir[0])))
    np.testing.assert_allclose(r.rir[:, peak] / r.rir[0, peak], _sn3d_reference(az, el), atol=1e-3)


@pytest.mark.parametrize("highpass", [False, True])
def test_w_equals_pyroomacoustics_omni(highpass):
    spec = _room(dims=(7.0, 5.5, 3.1), alpha=0.25)
    uneven = {
        s: Surface(material="m", absorption=[0.1 + 0.03 * i + 0.01 * b for b in range(8)],
                   scattering=[0.1] * 8)
        for i, s in enumerate(SURFACES)
    }
    spec = spec.model_copy(update={"surfaces": uneven})
    receiver, source = (2.1, 3.3, 1.4), (5.2, 1.7, 1.9)
    settings = RirSettings(calibrate=False, late_tail=False, max_ism_order=12, order=1)
    hpf = pra.constants.get("rir_hpf_enable")
    pra.constants.set("rir_hpf_enable", highpass)
    try:
        ours = render_rir(spec, receiver, source, settings=settings).rir[0]
        room = _shoebox(spec, 1.0, settings, 12)
        room.add_source(list(source))
        room.add_microphone(list(receiver))
        room.compute_rir()
        ref = room.rir[0][0]
    finally:
        pra.constants.set("rir_hpf_enable", hpf)
    n = min(ref.size, ours.size)
    assert n > 0.9 * ref.size
    assert np.abs(ours[:n] - ref[:n]).max() <= 1e-6 * np.abs(ref).max()
    assert np.abs(ours[n:]).max(initial=0.0) <= 1e-6 * np.abs(ref).max()


def test_direct_path_doa_matches_labels_in_reverberant_rooms():
    cfg = load_config(DEFAULT_CONFIG)
    rooms, placements, digest = sample_room_set(cfg, seed=11, n_rooms=100)
    by_id = {r.room_id: r for r in rooms}
    settings = RirSettings(calibrate=False, max_ism_order=6)
    train = [p for p in placements if p.split == "train"]
    assert len(train) == 100
    errors = []
    for p in train:
        room = by_id[p.room_id]
        r = render_rir(room, p.receiver_m, p.source_m, p.receiver_yaw_deg, settings)
        assert r.azimuth_deg == pytest.approx(p.azimuth_deg, abs=1e-6)
        assert r.elevation_deg == pytest.approx(p.elevation_deg, abs=1e-6)
        rec = measure(r, placement_id=p.placement_id, room_id=room.room_id, room_set_hash=digest,
                      target_t30_s=room.target_t30_s, order=1)
        assert rec.drr_db < 30  # genuinely reverberant: reflections are in the RIR
        errors.append(rec.direct_doa_error_deg)
    assert max(errors) <= 2.0, sorted(errors)[-5:]


@pytest.mark.slow
def test_t30_calibration_hits_targets_across_the_range():
    cfg = load_config(DEFAULT_CONFIG)
    rooms, placements, _ = sample_room_set(cfg, seed=5, n_rooms=400)
    by_target = sorted(rooms, key=lambda r: r.target_t30_s)
    chosen = [by_target[i] for i in np.linspace(0, len(by_target) - 1, 24).astype(int)]
    first = {p.room_id: p for p in placements if p.split == "train"}
    errs = []
    for room in chosen:
        p = first[room.room_id]
        r = render_rir(room, p.receiver_m, p.source_m, p.receiver_yaw_deg)
        errs.append(room_acoustics.t30(r.rir[0], r.fs) / room.target_t30_s - 1.0)
    errs = np.abs(errs)
    assert chosen[0].target_t30_s < 0.2 and chosen[-1].target_t30_s > 2.3
    assert np.median(errs) <= 0.10
    assert np.percentile(errs, 95) <= 0.20


@pytest.mark.parametrize("order", [1, 2])
def test_late_tail_has_sn3d_diffuse_energy_ratios(order):
    spec = _room(dims=(9.0, 7.0, 3.5), t30=1.5)
    receiver, source = (3.0, 3.0, 1.5), (6.5, 4.0, 1.8)
    settings = RirSettings(order=order, calibrate=False, seed=3)
    r = render_rir(spec, receiver, source, settings=settings)
    fs = r.fs
    # Well inside the tail: after the image-source part, before the end of the RIR.
    tail = r.rir[:, int(0.4 * fs) : int(1.6 * fs)].astype(np.float64)
    energy = (tail**2).sum(axis=1)
    for ch in range(1, energy.size):
        degree = math.isqrt(ch)
        assert energy[ch] / energy[0] == pytest.approx(1 / (2 * degree + 1), rel=0.25), ch


def test_rir_length_covers_the_decay_and_labels_are_measured():
    spec = parametric_room((8.0, 6.0, 3.0), 0.9)
    r = render_rir(spec, (2.0, 2.0, 1.5), (5.0, 4.0, 1.7))
    assert r.rir.shape[1] >= 1.5 * 0.9 * r.fs
    rec = measure(r, placement_id="p", room_id="r", room_set_hash="h", target_t30_s=0.9, order=1)
    assert rec.t30_s == pytest.approx(0.9, rel=0.05)
    assert rec.edt_s is not None and 0.3 < rec.edt_s < 1.5
    assert -20 < rec.drr_db < 10
    assert rec.method == "ism" and rec.ism is not None and rec.ism.calibration_iterations >= 1


def test_tail_is_deterministic_in_seed():
    spec = _room(t30=0.8)
    a = render_rir(spec, (2, 2, 1.5), (5, 4, 2), settings=RirSettings(seed=1, calibrate=False)).rir
    b = render_rir(spec, (2, 2, 1.5), (5, 4, 2), settings=RirSettings(seed=1, calibrate=False)).rir
    c = render_rir(spec, (2, 2, 1.5), (5, 4, 2), settings=RirSettings(seed=2, calibrate=False)).rir
    assert np.array_equal(a, b)
    assert not np.array_equal(a, c)


# --- bad input: typed errors that name the problem -------------------------------------------


def test_negative_room_size_is_rejected():
    with pytest.raises(ValidationError, match="room dimensions must be positive"):
        _room(dims=(-3.0, 4.0, 3.0))
    with pytest.raises(InvalidRoomError, match="positive"):
        parametric_room((-3.0, 4.0, 3.0), 0.5)


def test_source_outside_room_is_rejected():
    with pytest.raises(InvalidRoomError, match=r"source at \(3.0, 7.0, 1.5\) is outside the room"):
        render_rir(_room(dims=(6.0, 5.0, 3.0)), (3.0, 2.5, 1.5), (3.0, 7.0, 1.5))
    with pytest.raises(InvalidRoomError, match="receiver"):
        render_rir(_room(dims=(6.0, 5.0, 3.0)), (3.0, 2.5, -0.1), (3.0, 3.0, 1.5))
    with pytest.raises(InvalidRoomError, match="coincide"):
        render_rir(_room(dims=(6.0, 5.0, 3.0)), (3.0, 2.5, 1.5), (3.0, 2.5, 1.5))


def test_absorption_above_one_is_rejected():
    with pytest.raises(ValidationError, match=r"coefficients must lie in \[0, 1\]"):
        Surface(material="x", absorption=[1.2] * len(OCTAVE_BANDS_HZ), scattering=[0.1] * 8)


def test_calibration_that_cannot_converge_is_rejected_not_kept():
    spec = parametric_room((8.0, 6.0, 3.0), 0.9)
    far = spec.model_copy(update={"target_t30_s": 0.9 * 1.6})  # absorption fitted for 0.9 s
    one_try = RirSettings(calibration_max_iter=1)
    with pytest.raises(UnreachableT30Error, match="not reached in 1 renders"):
        render_rir(far, (2.0, 2.0, 1.5), (5.0, 4.0, 1.7), settings=one_try)
    ok = render_rir(spec, (2.0, 2.0, 1.5), (5.0, 4.0, 1.7), settings=one_try.model_copy(
        update={"calibration_fail_tol": 1.0}))
    assert ok.calibration_iterations == 1


def test_unreachable_t30_is_rejected():
    with pytest.raises(UnreachableT30Error, match="unreachable"):
        parametric_room((30.0, 30.0, 10.0), 0.05)
    big_dead = _room(dims=(30.0, 30.0, 10.0), alpha=0.5, t30=0.05)
    with pytest.raises(UnreachableT30Error, match="outside what this room can reach"):
        render_rir(big_dead, (5.0, 5.0, 1.5), (8.0, 6.0, 1.5))
    with pytest.raises(UnreachableT30Error, match="render limit"):
        render_rir(_room(t30=30.0), (5.0, 5.0, 1.5), (8.0, 6.0, 1.5))


def test_an_early_part_is_the_whole_rirs_first_samples_and_is_recorded_as_such():
    """A moving source's later trajectory points are rendered as their first ``early_window_s``
    only: the same calibrated images, crossfade and tail noise as the whole RIR there (the band
    filters and high-pass see a shorter buffer: under 1e-3 of the peak where the scene renderer
    uses it, a few 1e-3 towards the window's end), at a fraction of
    its length; its record has no T30/EDT and says which part it holds."""
    surface = Surface(material="x", absorption=[0.17] * 8, scattering=[0.1] * 8)
    room = RoomSpec(room_id="e", dims_m=(10.0, 8.0, 3.5), surfaces=dict.fromkeys(SURFACES, surface),
                    target_t30_s=0.7)
    whole = render_rir(room, (4.0, 3.0, 1.5), (6.0, 4.5, 1.8))
    early = render_rir(room, (4.0, 3.0, 1.5), (6.0, 4.5, 1.8), early_window_s=0.12)
    assert early.absorption_scale == whole.absorption_scale
    # a path's later point takes its first point's absorption (memoised per process)
    later = render_rir(room, (4.0, 3.0, 1.5), (6.5, 4.0, 1.8), early_window_s=0.12,
                       calibrate_at=(6.0, 4.5, 1.8))
    assert later.absorption_scale == whole.absorption_scale
    direct = int(np.argmax(np.abs(whole.rir[0])))
    assert early.rir.shape[1] == pytest.approx(direct + 0.12 * 48000, abs=0.005 * 48000)
    peak = np.abs(whole.rir).max()
    for after_s, tol in ((0.055, 2e-3), (0.1, 5e-3)):  # the renderer uses the first 55 ms after it
        cut = direct + round(after_s * 48000)
        assert np.abs(early.rir[:, :cut] - whole.rir[:, :cut]).max() < tol * peak
    record = measure(early, placement_id="p", room_id="e", room_set_hash="h", target_t30_s=0.7, order=1,
                     early_window_s=0.12)
    assert record.t30_s is None and record.edt_s is None and record.ism.early_window_s == 0.12
    assert record.direct_doa_error_deg < 1.0
    assert "early_window_s" not in measure(whole, placement_id="p", room_id="e", room_set_hash="h",
                                           target_t30_s=0.7, order=1).ism.model_dump()
