"""Measured source directivities from SOFA files: band reduction, rendering, placements, bad files."""

from __future__ import annotations

import math

import numpy as np
import pytest
import sofar
from test_source_directivity import _direct_energy, _facing, _room

from room_specs import DEFAULT_CONFIG
from schemas.room_set import SourceDirectivityConfig
from schemas.rooms import OCTAVE_BANDS_HZ, RirSettings
from tasks.ambisonics import unit_vector
from tasks.measured_directivity import DirectivityFileError, load_directivity
from tasks.rir_bank import bank_key
from tasks.rir_engine import MeasuredSourceDirectivity, SourceDirectivity, render_rir, source_frame
from tasks.rir_sources import ShoeboxIsm, placement_directivity
from tasks.room_sampling import load_config, sample_room_set

FREE_FIELD = RirSettings(calibrate=False, late_tail=False, order=0)
FREQS = np.geomspace(100.0, 20000.0, 64)
# A DIRPAT-like grid: 5 degrees in azimuth and elevation, poles once.
_AZ, _EL = np.meshgrid(np.arange(-180.0, 180.0, 5.0), np.arange(-85.0, 90.0, 5.0))
GRID = np.concatenate([np.column_stack([_AZ.ravel(), _EL.ravel()]), [[0.0, 90.0], [0.0, -90.0]]])


def _cardioid(cos_off: np.ndarray, freqs: np.ndarray) -> np.ndarray:
    return np.broadcast_to((0.5 + 0.5 * cos_off)[:, None], (cos_off.size, freqs.size))


def _omni_low_cardioid_high(cos_off: np.ndarray, freqs: np.ndarray) -> np.ndarray:
    """Omni below 700 Hz (125-500 Hz bands), cardioid above 1.5 kHz (2-16 kHz bands)."""
    high = (freqs >= 1500.0)[None, :]
    return np.where(high, (0.5 + 0.5 * cos_off)[:, None], 1.0)


def _write_tf(path, magnitude, grid=GRID, freqs=FREQS) -> str:
    """A FreeFieldDirectivityTF file whose transfer function has the given magnitude (of the cosine
    off the +x axis and the frequency) and an arbitrary phase (the reduction must drop it)."""
    cos_off = unit_vector(grid[:, 0], grid[:, 1])[0]
    mag = np.asarray(magnitude(cos_off, freqs), dtype=np.float64)
    phase = np.exp(-2j * np.pi * freqs[None, :] * 1e-3)
    sofa = sofar.Sofa("FreeFieldDirectivityTF")
    sofa.Data_Real = (mag * phase).real[:, None, :]
    sofa.Data_Imag = (mag * phase).imag[:, None, :]
    sofa.N = freqs
    sofa.SourcePosition = np.column_stack([grid, np.full(len(grid), 2.0)])
    sofa.SourcePosition_Type = "spherical"
    sofa.SourcePosition_Units = "degree, degree, metre"
    sofa.delete("Description")
    sofa.delete("EmitterDescriptions")
    sofar.write_sofa(str(path), sofa)
    return str(path)


def test_band_gains_are_the_pattern_normalised_on_axis(tmp_path):
    m = load_directivity(_write_tf(tmp_path / "card.sofa", _cardioid))
    assert m.gains.shape == (len(OCTAVE_BANDS_HZ), len(GRID))
    assert m.label == f"sofa:card:{m.sha256[:12]}"
    local = unit_vector(np.array([0.0, 90.0, 180.0, 60.0]), np.zeros(4))
    np.testing.assert_allclose(m.gain(local), np.tile([1.0, 0.5, 0.0, 0.75], (len(OCTAVE_BANDS_HZ), 1)),
                               atol=1e-9)


def test_generalfir_impulse_responses_give_the_same_gains(tmp_path):
    tf = load_directivity(_write_tf(tmp_path / "tf.sofa", _cardioid))
    ir = np.zeros((len(GRID), 1, 256))
    ir[:, 0, 10] = 0.5 + 0.5 * unit_vector(GRID[:, 0], GRID[:, 1])[0]
    sofa = sofar.Sofa("GeneralFIR")
    sofa.Data_IR = ir
    sofa.Data_SamplingRate = 48000
    sofa.SourcePosition = np.column_stack([GRID, np.full(len(GRID), 2.0)])
    sofar.write_sofa(str(tmp_path / "fir.sofa"), sofa)
    fir = load_directivity(tmp_path / "fir.sofa")
    np.testing.assert_allclose(fir.gains, tf.gains, atol=1e-9)


def test_source_frame_turns_the_axis_onto_x():
    frame = source_frame((120.0, 20.0))
    np.testing.assert_allclose(frame @ frame.T, np.eye(3), atol=1e-12)
    np.testing.assert_allclose(frame @ unit_vector(120.0, 20.0), [1.0, 0.0, 0.0], atol=1e-12)
    np.testing.assert_allclose(frame @ unit_vector(210.0, 0.0), [0.0, 1.0, 0.0], atol=1e-12)  # left
    assert (frame @ [0.0, 0.0, 1.0])[2] > 0.9  # up stays up


@pytest.mark.parametrize("off_deg", [60.0, 90.0, 180.0])
def test_measured_cardioid_renders_like_the_analytic_one(tmp_path, off_deg):
    """Facing the receiver vs turned by off_deg: the direct sound drops as the analytic cardioid's."""
    measured = load_directivity(_write_tf(tmp_path / "card.sofa", _cardioid))
    room, receiver, source = _room(), (5.0, 3.2, 1.5), (3.0, 2.6, 1.5)

    def level(off: float, measured_pattern: bool) -> float:
        axis = _facing(source, receiver, off)
        d = (MeasuredSourceDirectivity(measured, axis) if measured_pattern
             else SourceDirectivity("cardioid", axis))
        return _direct_energy(render_rir(room, receiver, source, settings=FREE_FIELD, anechoic=True,
                                         directivity=d).rir)

    ratio = level(off_deg, True) / level(0.0, True)
    if off_deg == 180.0:
        assert ratio < 1e-6  # the null
    else:
        got_db = 10 * math.log10(ratio)
        want_db = 10 * math.log10(level(off_deg, False) / level(0.0, False))
        assert got_db == pytest.approx(want_db, abs=0.5)
        assert got_db == pytest.approx(20 * math.log10(0.5 + 0.5 * math.cos(math.radians(off_deg))), abs=0.5)


def _band_db(rir: np.ndarray, ref: np.ndarray, fs: int, fc: float) -> float:
    """Energy ratio in dB of W around an octave centre (within a sixth of an octave)."""
    spec, spec_ref = (np.abs(np.fft.rfft(x[0], 1 << 15)) ** 2 for x in (rir, ref))
    f = np.fft.rfftfreq(1 << 15, 1.0 / fs)
    near = (f > fc * 2 ** -(1 / 6)) & (f < fc * 2 ** (1 / 6))
    return 10 * math.log10(spec[near].sum() / spec_ref[near].sum())


def test_frequency_dependent_pattern_shows_per_band(tmp_path):
    """Turned 90 degrees off the receiver, a source that is omni at low and cardioid at high
    frequencies keeps its low bands (0 dB vs omni) and loses 6 dB in its high ones. Checked from
    500 Hz up: below, pyroomacoustics' short octave filters overlap enough that the high bands'
    0.5 leaks in (measured -0.9 dB at 250 Hz, -0.2 at 500, +0.1 at 1 kHz, -6.0 at 4 and 8 kHz)."""
    measured = load_directivity(_write_tf(tmp_path / "mixed.sofa", _omni_low_cardioid_high))
    room, receiver, source = _room(), (5.0, 3.2, 1.5), (3.0, 2.6, 1.5)
    omni = render_rir(room, receiver, source, settings=FREE_FIELD, anechoic=True).rir
    side = render_rir(room, receiver, source, settings=FREE_FIELD, anechoic=True,
                      directivity=MeasuredSourceDirectivity(measured, _facing(source, receiver, 90.0))).rir
    for fc in (500.0, 1000.0):
        assert _band_db(side, omni, FREE_FIELD.fs, fc) == pytest.approx(0.0, abs=0.5)
    for fc in (4000.0, 8000.0):
        assert _band_db(side, omni, FREE_FIELD.fs, fc) == pytest.approx(-6.02, abs=0.5)


def test_room_set_draws_the_sofa_file_and_keys_change(tmp_path):
    path = _write_tf(tmp_path / "card.sofa", _cardioid)
    base = load_config(DEFAULT_CONFIG)
    cfg = base.model_copy(update={"source_directivity": SourceDirectivityConfig(
        patterns=["omni"], sofa_files=[path], facing_spread_deg=0.0, elevation_jitter_deg=0.0)})
    rooms, placements, _ = sample_room_set(cfg, seed=5, n_rooms=3)
    label = load_directivity(path).label
    drawn = [p for p in placements if p.source_pattern == label]
    assert drawn and all(p.source_directivity_file == path for p in drawn)
    assert any(p.source_pattern == "omni" and p.source_directivity_file is None for p in placements)
    p = drawn[0]
    room = next(r for r in rooms if r.room_id == p.room_id)
    directional = ("source_pattern", "source_axis_deg", "source_directivity_file")
    omni = p.model_copy(update=dict.fromkeys(directional))
    assert bank_key([room], [p], FREE_FIELD) != bank_key([room], [omni], FREE_FIELD)
    assert isinstance(placement_directivity(p), MeasuredSourceDirectivity)
    rir, _ = ShoeboxIsm().render(room, p, FREE_FIELD)
    rir_omni, _ = ShoeboxIsm().render(room, omni, FREE_FIELD)
    # Facing the receiver (to the 5 degree grid): the direct sound is the omni one's, reflections weaker.
    assert _direct_energy(rir) == pytest.approx(_direct_energy(rir_omni), rel=0.02)
    assert (rir[0] ** 2).sum() < 0.9 * (rir_omni[0] ** 2).sum()
    # A changed file no longer matches the placement's hash: refused, not silently rendered.
    _write_tf(tmp_path / "card.sofa", _omni_low_cardioid_high)
    with pytest.raises(DirectivityFileError, match="draw the room set again"):
        ShoeboxIsm().render(room, p, FREE_FIELD)
    # Without sofa_files the config dumps (and hashes) as before.
    plain = SourceDirectivityConfig(patterns=["cardioid"])
    assert "sofa_files" not in plain.model_dump()


def test_bad_files_raise_the_typed_error(tmp_path):
    (tmp_path / "junk.sofa").write_bytes(b"not a sofa file")
    with pytest.raises(DirectivityFileError, match="not a readable SOFA file"):
        load_directivity(tmp_path / "junk.sofa")
    with pytest.raises(DirectivityFileError, match="cannot read"):
        load_directivity(tmp_path / "missing.sofa")
    hrir = sofar.Sofa("SimpleFreeFieldHRIR")
    sofar.write_sofa(str(tmp_path / "hrir.sofa"), hrir)
    with pytest.raises(DirectivityFileError, match="convention 'SimpleFreeFieldHRIR'"):
        load_directivity(tmp_path / "hrir.sofa")
    narrow = _write_tf(tmp_path / "narrow.sofa", _cardioid, freqs=np.geomspace(200.0, 5000.0, 16))
    with pytest.raises(DirectivityFileError, match="125 Hz octave band"):
        load_directivity(narrow)
    empty = sofar.Sofa("FreeFieldDirectivityTF")
    empty.delete("Description")
    empty.delete("EmitterDescriptions")
    sofar.write_sofa(str(tmp_path / "empty.sofa"), empty)
    with pytest.raises(DirectivityFileError, match="without data"):
        load_directivity(tmp_path / "empty.sofa")
