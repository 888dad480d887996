"""Directional sources: pattern gains at the emission direction, mirrored images, DRR, sampling, keys."""

from __future__ import annotations

import math

import numpy as np
import pyroomacoustics as pra
import pytest

from room_specs import DEFAULT_CONFIG
from schemas.room_set import SourceDirectivityConfig
from schemas.rooms import SURFACES, Placement, RirSettings, RoomSpec, Surface
from tasks import room_acoustics
from tasks.ambisonics import unit_vector, vector_to_angles, wrap_azimuth
from tasks.errors import InvalidRoomError
from tasks.rir_bank import bank_key
from tasks.rir_engine import SourceDirectivity, render_rir
from tasks.rir_sources import ShoeboxIsm
from tasks.room_sampling import load_config, sample_room_set

FREE_FIELD = RirSettings(calibrate=False, late_tail=False, order=0)
LIBRARY = {
    "subcardioid": pra.directivities.SubCardioid,
    "cardioid": pra.directivities.Cardioid,
    "hypercardioid": pra.directivities.HyperCardioid,
    "figure_eight": pra.directivities.FigureEight,
}


def _room(dims=(8.0, 6.0, 3.0), alpha=0.2, t30=0.6) -> RoomSpec:
    surface = Surface(material="x", absorption=[alpha] * 8, scattering=[0.1] * 8)
    return RoomSpec(room_id="t", dims_m=dims, surfaces=dict.fromkeys(SURFACES, surface), target_t30_s=t30)


def _facing(source, receiver, off_deg=0.0) -> tuple[float, float]:
    az, el = (float(a) for a in vector_to_angles(np.subtract(receiver, source)))
    return float(wrap_azimuth(az + off_deg)), el


def _direct_energy(rir: np.ndarray) -> float:
    peak = int(np.argmax(np.abs(rir[0])))
    return float((rir[0, max(0, peak - 40): peak + 40] ** 2).sum())


@pytest.mark.parametrize("pattern", sorted(LIBRARY))
def test_gain_is_the_librarys_pattern(pattern):
    rng = np.random.default_rng(3)
    axis = (37.0, -20.0)
    d = rng.standard_normal((3, 50))
    ours = SourceDirectivity(pattern, axis).gain(d)
    ref = LIBRARY[pattern](unit_vector(*axis)).get_response_cartesian(d.T)
    np.testing.assert_allclose(ours, ref, atol=1e-12)


@pytest.mark.parametrize("pattern", ["subcardioid", "cardioid", "hypercardioid"])
@pytest.mark.parametrize("off_deg", [60.0, 90.0, 135.0, 180.0])
def test_anechoic_level_follows_the_pattern(pattern, off_deg):
    """Turning the source by off_deg (source and receiver level) changes the direct sound by
    20 log10 |p + (1-p) cos(off)|."""
    room, receiver, source = _room(), (5.0, 3.2, 1.5), (3.0, 2.6, 1.5)
    on = render_rir(room, receiver, source, settings=FREE_FIELD, anechoic=True,
                    directivity=SourceDirectivity(pattern, _facing(source, receiver)))
    off = render_rir(room, receiver, source, settings=FREE_FIELD, anechoic=True,
                     directivity=SourceDirectivity(pattern, _facing(source, receiver, off_deg)))
    p = {"subcardioid": 0.75, "cardioid": 0.5, "hypercardioid": 0.25}[pattern]
    g = abs(p + (1 - p) * math.cos(math.radians(off_deg)))
    got_db = 10 * math.log10(_direct_energy(off.rir) / _direct_energy(on.rir))
    if g < 1e-6:  # cardioid straight back: the null
        assert got_db < -60.0
    else:
        assert got_db == pytest.approx(20 * math.log10(g), abs=0.5)
    if (pattern, off_deg) == ("cardioid", 90.0):
        assert got_db == pytest.approx(-6.02, abs=0.05)


def test_on_axis_directional_equals_omni():
    room, receiver, source = _room(), (5.0, 3.2, 1.5), (3.0, 2.6, 1.5)
    omni = render_rir(room, receiver, source, settings=FREE_FIELD, anechoic=True).rir
    card = render_rir(room, receiver, source, settings=FREE_FIELD, anechoic=True,
                      directivity=SourceDirectivity("cardioid", _facing(source, receiver))).rir
    np.testing.assert_allclose(card, omni, atol=1e-6 * np.abs(omni).max())


def test_mirrored_images_take_the_emission_direction():
    """A cardioid near the west wall facing east (at the receiver): the west-wall image's sound left
    the source westwards, into the null; the east-wall image's left eastwards, on axis; the floor
    image's left 36.9 deg below the axis (gain 0.9). Without the mirror flip the west image would
    be on axis too."""
    room, source, receiver = _room(), (1.0, 3.0, 1.5), (5.0, 3.0, 1.5)
    settings = RirSettings(calibrate=False, late_tail=False, order=0, max_ism_order=1)
    omni = render_rir(room, receiver, source, settings=settings).rir[0]
    card = render_rir(room, receiver, source, settings=settings,
                      directivity=SourceDirectivity("cardioid", (0.0, 0.0))).rir[0]
    fs, c, fdl2 = settings.fs, pra.constants.get("c"), pra.constants.get("frac_delay_length") // 2

    def ratio_db(dist_m: float) -> float:
        i = round(dist_m / c * fs) + fdl2
        return 10 * math.log10((card[i - 20:i + 20] ** 2).sum() / (omni[i - 20:i + 20] ** 2).sum())

    assert ratio_db(4.0) == pytest.approx(0.0, abs=0.05)  # direct
    assert ratio_db(6.0) < -25.0  # west wall: emitted backwards
    assert ratio_db(10.0) == pytest.approx(0.0, abs=0.1)  # east wall: emitted forwards
    assert ratio_db(5.0) == pytest.approx(20 * math.log10(0.9), abs=0.3)  # floor and ceiling


@pytest.mark.parametrize(("pattern", "di_db"), [("cardioid", 10 * math.log10(3)), ("subcardioid", 2.34)])
def test_drr_rises_by_the_directivity_index_at_equal_t30(pattern, di_db):
    """Reverberant energy scales with the radiated power (mean g^2 = p^2 + (1-p)^2/3), the direct
    sound on axis does not: DRR gains the directivity index. In a cube the images surround the
    source evenly enough (measured: cardioid +4.82 dB, subcardioid +2.20 dB); in flat rooms the
    images crowd the horizontal plane and the gain is smaller (8 x 6 x 3 m: cardioid +3.4 dB)."""
    room = _room(dims=(6.0, 6.0, 6.0), t30=0.8)
    receiver, source = (3.6, 3.1, 3.2), (2.4, 2.9, 3.0)
    settings = RirSettings(order=0)
    omni = render_rir(room, receiver, source, settings=settings).rir[0]
    directional = render_rir(room, receiver, source, settings=settings,
                             directivity=SourceDirectivity(pattern, _facing(source, receiver))).rir[0]
    for w in (omni, directional):
        assert room_acoustics.t30(w, settings.fs) == pytest.approx(room.target_t30_s, rel=0.05)
    gain = room_acoustics.drr_db(directional, settings.fs) - room_acoustics.drr_db(omni, settings.fs)
    assert gain == pytest.approx(di_db, abs=0.75)


def test_unknown_pattern_is_a_typed_error():
    with pytest.raises(InvalidRoomError, match="unknown source pattern"):
        SourceDirectivity("shotgun", (0.0, 0.0))


@pytest.fixture(scope="module")
def directional_sets():
    cfg = load_config(DEFAULT_CONFIG)
    directional = cfg.model_copy(update={"source_directivity": SourceDirectivityConfig(
        patterns=["cardioid", "subcardioid", "hypercardioid", "omni"], facing_spread_deg=60.0,
        elevation_jitter_deg=10.0)})
    return cfg, sample_room_set(cfg, seed=4, n_rooms=60), directional, sample_room_set(directional, 4, 60)


def test_sampling_records_pattern_and_axis_towards_the_receiver(directional_sets):
    _, (_, omni, omni_hash), cfg, (_, placements, digest) = directional_sets
    spread = cfg.source_directivity
    assert {p.source_pattern for p in placements} == set(spread.patterns)
    for p, q in zip(placements, omni, strict=True):
        assert (p.source_m, p.receiver_m) == (q.source_m, q.receiver_m)  # same positions as omni
        towards_az, towards_el = _facing(p.source_m, p.receiver_m)
        assert abs(float(wrap_azimuth(p.source_axis_deg[0] - towards_az))) <= spread.facing_spread_deg + 1e-9
        assert abs(p.source_axis_deg[1] - towards_el) <= spread.elevation_jitter_deg + 1e-9
        assert q.source_pattern is None and "source_pattern" not in q.model_dump()
    offs = [abs(float(wrap_azimuth(p.source_axis_deg[0] - _facing(p.source_m, p.receiver_m)[0])))
            for p in placements]
    assert max(offs) > 0.5 * spread.facing_spread_deg  # the spread is used, not just its centre
    assert digest != omni_hash
    assert "source_directivity" not in load_config(DEFAULT_CONFIG).model_dump()


def test_bank_key_changes_only_when_directivity_is_set(directional_sets):
    _, (rooms, omni, _), _, _ = directional_sets
    p = omni[0]
    room = [r for r in rooms if r.room_id == p.room_id]
    settings = RirSettings()
    same = Placement.model_validate(p.model_dump())
    card = p.model_copy(update={"source_pattern": "cardioid", "source_axis_deg": (10.0, 0.0)})
    turned = p.model_copy(update={"source_pattern": "cardioid", "source_axis_deg": (40.0, 0.0)})
    keys = {bank_key(room, [q], settings) for q in (same, card, turned)}
    assert bank_key(room, [same], settings) == bank_key(room, [p], settings)
    assert len(keys) == 3


def test_placement_needs_pattern_and_axis_together(directional_sets):
    _, (_, omni, _), _, _ = directional_sets
    with pytest.raises(ValueError, match="together"):
        Placement.model_validate({**omni[0].model_dump(), "source_pattern": "cardioid"})


def test_shoebox_source_renders_the_placements_directivity():
    room, receiver, source = _room(), (5.0, 3.2, 1.5), (3.0, 2.6, 1.5)
    base = Placement(placement_id="p", room_id="t", split="train", receiver_m=receiver,
                     receiver_yaw_deg=0.0, source_m=source, azimuth_deg=-163.3, elevation_deg=0.0,
                     distance_m=2.09, room_set_hash="h")
    settings = RirSettings(calibrate=False, max_ism_order=0, order=0)  # direct sound alone
    rir = {off: ShoeboxIsm().render(room, base.model_copy(update={
        "source_pattern": "cardioid", "source_axis_deg": _facing(source, receiver, off)}), settings)[0]
        for off in (0.0, 90.0)}
    turned_db = 10 * math.log10(_direct_energy(rir[90.0]) / _direct_energy(rir[0.0]))
    assert turned_db == pytest.approx(-6.02, abs=0.05)
