"""Intensity-vector DOA: synthetic plane waves in the DESIGN.md convention, then real recordings."""

from __future__ import annotations

import csv
import json
from pathlib import Path

import numpy as np
import pytest
import soundfile as sf

from tasks.ambisonics import angular_distance_deg, real_sh_sn3d, wrap_azimuth
from tasks.doa import (
    ChannelCountError,
    DoaError,
    DoaEstimate,
    EmptyWindowError,
    FoaFileError,
    NoEnergyError,
    WindowOutsideSignalError,
    direct_sound_doa,
    estimate_doa_file,
    first_arrival_index,
    intensity_doa,
    load_foa,
)
from tasks.errors import SpatialAudioCapsError

FS = 48_000
REALDATA = Path(__file__).resolve().parents[2] / "shared" / "realdata"

# Directions that catch sign and wrap mistakes: left/right, back (180), up/down.
DIRECTIONS = [
    (0.0, 0.0),
    (90.0, 0.0),
    (-90.0, 0.0),
    (180.0, 0.0),
    (45.0, 45.0),
    (-135.0, -45.0),
    (120.0, 30.0),
    (-30.0, -20.0),
    (10.0, 80.0),
    (179.0, 10.0),
]


def _white(rng: np.random.Generator, n: int) -> np.ndarray:
    return rng.standard_normal(n)


def _pink(rng: np.random.Generator, n: int) -> np.ndarray:
    spec = np.fft.rfft(rng.standard_normal(n))
    f = np.fft.rfftfreq(n, 1.0 / FS)
    spec[1:] /= np.sqrt(f[1:])
    spec[0] = 0.0
    x = np.fft.irfft(spec, n)
    return x / x.std()


def _encode(mono: np.ndarray, az_deg: float, el_deg: float) -> np.ndarray:
    """Order-1 ambiX plane wave through the project's one SH definition."""
    gains = real_sh_sn3d(1, np.radians(az_deg), np.radians(el_deg))
    return gains[:, None] * mono[None, :]


def _diffuse(rng: np.random.Generator, n: int, w_power: float) -> np.ndarray:
    """Independent noise with SN3D diffuse-field energies 1 : 1/3 : 1/3 : 1/3."""
    std = np.sqrt(w_power * np.array([1.0, 1 / 3, 1 / 3, 1 / 3]))
    return std[:, None] * rng.standard_normal((4, n))


def _err(est: DoaEstimate, az: float, el: float) -> float:
    return float(angular_distance_deg(est.azimuth_deg, est.elevation_deg, az, el))


def _az_err(a: float, b: float) -> float:
    return float(abs(wrap_azimuth(a - b)))


# ---------------------------------------------------------------------------------------------
# synthetic plane waves


@pytest.mark.parametrize(("az", "el"), DIRECTIONS)
@pytest.mark.parametrize("noise", [_white, _pink])
def test_clean_plane_wave_is_exact(az: float, el: float, noise) -> None:
    rng = np.random.default_rng(1)
    foa = _encode(noise(rng, FS // 2), az, el)
    est = intensity_doa(foa, FS)
    assert _err(est, az, el) < 0.01
    assert est.diffuseness < 1e-6
    assert est.band_hz == (300.0, 3000.0)


@pytest.mark.parametrize(("az", "el"), DIRECTIONS)
@pytest.mark.parametrize("noise", [_white, _pink])
def test_plane_wave_in_diffuse_noise(az: float, el: float, noise) -> None:
    rng = np.random.default_rng(2)
    n = FS
    src = noise(rng, n)
    foa = _encode(src, az, el) + _diffuse(rng, n, w_power=0.1)  # direct-to-diffuse 10 dB
    est = intensity_doa(foa, FS)
    assert _err(est, az, el) < 2.0
    # one plane wave plus 10 % diffuse power: diffuseness ~ 0.1/1.1
    assert 0.03 < est.diffuseness < 0.2
    bb = intensity_doa(foa, FS, band_hz=None)
    assert _err(bb, az, el) < 2.0


def test_left_right_front_back_signs() -> None:
    """Y > 0 means left (+90); X < 0 means back; the back azimuth is +180, never -180."""
    rng = np.random.default_rng(3)
    src = _white(rng, FS // 4)
    left = intensity_doa(_encode(src, 90.0, 0.0), FS)
    right = intensity_doa(_encode(src, -90.0, 0.0), FS)
    back = intensity_doa(_encode(src, 180.0, 0.0), FS)
    up = intensity_doa(_encode(src, 0.0, 45.0), FS)
    down = intensity_doa(_encode(src, 0.0, -45.0), FS)
    assert left.azimuth_deg == pytest.approx(90.0, abs=0.01)
    assert right.azimuth_deg == pytest.approx(-90.0, abs=0.01)
    assert abs(back.azimuth_deg) == pytest.approx(180.0, abs=0.01)
    assert -180.0 < back.azimuth_deg <= 180.0
    assert up.elevation_deg == pytest.approx(45.0, abs=0.01)
    assert down.elevation_deg == pytest.approx(-45.0, abs=0.01)
    # Raw ambiX with only +Y (channel 1) is a source on the left.
    foa = np.zeros((4, FS // 10))
    foa[0] = foa[1] = _white(rng, FS // 10)
    assert intensity_doa(foa, FS).azimuth_deg == pytest.approx(90.0, abs=0.01)


def test_pure_diffuse_field_has_high_diffuseness() -> None:
    rng = np.random.default_rng(4)
    est = intensity_doa(_diffuse(rng, 2 * FS, 1.0), FS)
    assert est.diffuseness > 0.9


def test_higher_order_input_uses_first_four_channels() -> None:
    rng = np.random.default_rng(5)
    src = _white(rng, FS // 4)
    gains = real_sh_sn3d(3, np.radians(-60.0), np.radians(20.0))
    est = intensity_doa(gains[:, None] * src[None, :], FS)
    assert _err(est, -60.0, 20.0) < 0.01


def test_n3d_scaling_does_not_change_direction() -> None:
    rng = np.random.default_rng(6)
    foa = _encode(_white(rng, FS // 4), 130.0, -25.0)
    foa[1:] *= np.sqrt(3.0)
    assert _err(intensity_doa(foa, FS), 130.0, -25.0) < 0.01


# ---------------------------------------------------------------------------------------------
# time windows and short windows


def test_time_window_selects_the_source() -> None:
    rng = np.random.default_rng(7)
    a = _encode(_pink(rng, FS), 60.0, 10.0)
    b = _encode(_white(rng, FS), -120.0, -30.0)
    foa = np.concatenate([a, b], axis=1) + _diffuse(rng, 2 * FS, 0.01)
    first = intensity_doa(foa, FS, start_s=0.1, end_s=0.9)
    second = intensity_doa(foa, FS, start_s=1.1, end_s=1.9)
    assert _err(first, 60.0, 10.0) < 2.0
    assert _err(second, -120.0, -30.0) < 2.0
    assert (first.start_s, first.end_s) == pytest.approx((0.1, 0.9))
    # Open-ended windows run to the ends of the signal.
    assert _err(intensity_doa(foa, FS, start_s=1.5), -120.0, -30.0) < 2.0
    assert _err(intensity_doa(foa, FS, end_s=0.5), 60.0, 10.0) < 2.0


def _direct_path_rir(az: float, el: float, refl_az: float, refl_el: float) -> np.ndarray:
    """A 0.1 s ambiX RIR: windowed-sinc direct path at sample 100.4, a louder reflection at 400."""
    n = FS // 10
    rir = np.zeros((4, n))
    t = np.arange(-24, 25)
    for delay, gain, (a, e) in [(100.4, 1.0, (az, el)), (400.0, 1.5, (refl_az, refl_el))]:
        k = int(np.floor(delay)) + t
        taps = np.sinc(k - delay) * np.hanning(t.size)
        rir[:, k] += gain * real_sh_sn3d(1, np.radians(a), np.radians(e))[:, None] * taps[None]
    return rir


def test_broadband_short_window_on_direct_path() -> None:
    rir = _direct_path_rir(-75.0, 35.0, 100.0, -10.0)
    # 50 samples around the direct path only (about 1 ms at 48 kHz).
    est = intensity_doa(rir, FS, band_hz=None, start_s=76 / FS, end_s=126 / FS)
    assert _err(est, -75.0, 35.0) < 0.01
    assert est.band_hz is None
    # The band-limited estimate also copes with a window far shorter than n_fft.
    banded = intensity_doa(rir, FS, start_s=76 / FS, end_s=126 / FS)
    assert _err(banded, -75.0, 35.0) < 0.5
    # The whole RIR is dominated by the louder reflection: the window is what matters.
    assert _err(intensity_doa(rir, FS, band_hz=None), -75.0, 35.0) > 20.0


def test_direct_sound_doa_finds_first_arrival() -> None:
    rir = _direct_path_rir(150.0, -20.0, -40.0, 0.0)
    assert first_arrival_index(rir[0]) in range(98, 103)
    for band in (None, (300.0, 3000.0)):
        est = direct_sound_doa(rir, FS, band_hz=band)
        assert _err(est, 150.0, -20.0) < 0.5
        assert est.start_s < 100.4 / FS < est.end_s < 400 / FS


# ---------------------------------------------------------------------------------------------
# files and FuMa


def test_fuma_file_gives_the_same_direction(tmp_path: Path) -> None:
    rng = np.random.default_rng(8)
    az, el = 90.0, 30.0  # left and up: a swapped X/Y or a lost W gain would show
    ambix = 0.2 * _encode(_pink(rng, FS // 2), az, el)
    w, y, z, x = ambix
    fuma = np.stack([w / np.sqrt(2.0), x, y, z])
    sf.write(tmp_path / "fuma.wav", fuma.T, FS, subtype="FLOAT")
    sf.write(tmp_path / "ambix.wav", ambix.T, FS, subtype="FLOAT")

    loaded, fs = load_foa(tmp_path / "fuma.wav", "fuma")
    assert fs == FS and loaded.shape == ambix.shape
    np.testing.assert_allclose(loaded, ambix, atol=1e-6)

    est_fuma = estimate_doa_file(tmp_path / "fuma.wav", fmt="fuma")
    est_ambix = estimate_doa_file(tmp_path / "ambix.wav")
    assert _err(est_fuma, az, el) < 0.05
    assert _err(est_ambix, az, el) < 0.05
    # Reading FuMa as if it were ambiX gets the direction wrong: the format must be stated.
    assert _err(estimate_doa_file(tmp_path / "fuma.wav", fmt="ambix"), az, el) > 30.0


def test_file_window_and_serialisation(tmp_path: Path) -> None:
    rng = np.random.default_rng(9)
    foa = 0.1 * np.concatenate(
        [_encode(_white(rng, FS), 30.0, 0.0), _encode(_white(rng, FS), -150.0, 20.0)], axis=1
    )
    path = tmp_path / "two.flac"
    sf.write(path, foa.T, FS, subtype="PCM_24")
    est = estimate_doa_file(path, start_s=1.2, end_s=1.8)
    assert _err(est, -150.0, 20.0) < 0.5
    assert (est.start_s, est.end_s) == pytest.approx((1.2, 1.8))  # times in the file
    dumped = est.model_dump()
    assert list(dumped)[:2] == ["azimuth_deg", "elevation_deg"]
    assert json.loads(json.dumps(dumped))["azimuth_deg"] == pytest.approx(est.azimuth_deg)
    assert json.loads(est.model_dump_json())["band_hz"] == [300.0, 3000.0]


# ---------------------------------------------------------------------------------------------
# errors


def _noise_foa(n: int = FS // 10) -> np.ndarray:
    return _encode(_white(np.random.default_rng(10), n), 0.0, 0.0)


def test_errors_are_typed_value_errors() -> None:
    for cls in (ChannelCountError, EmptyWindowError, WindowOutsideSignalError, NoEnergyError):
        assert issubclass(cls, DoaError)
        assert issubclass(cls, SpatialAudioCapsError)
        assert issubclass(cls, ValueError)


def test_wrong_channel_count() -> None:
    with pytest.raises(ChannelCountError, match=r"at least 4 ambiX channels.*got 3"):
        intensity_doa(_noise_foa()[:3], FS)
    with pytest.raises(ChannelCountError, match="channels last"):
        intensity_doa(_noise_foa().T, FS)
    with pytest.raises(ChannelCountError, match="2-D"):
        intensity_doa(_noise_foa()[0], FS)


def test_empty_window() -> None:
    with pytest.raises(EmptyWindowError, match="empty window"):
        intensity_doa(_noise_foa(), FS, start_s=0.05, end_s=0.05)
    with pytest.raises(EmptyWindowError, match="shorter than one sample"):
        intensity_doa(_noise_foa(), FS, start_s=0.05, end_s=0.05 + 0.2 / FS)


def test_window_outside_signal() -> None:
    foa = _noise_foa()  # 0.1 s
    with pytest.raises(WindowOutsideSignalError, match=r"past the end of the 0\.1 s signal"):
        intensity_doa(foa, FS, start_s=0.05, end_s=0.5)
    with pytest.raises(WindowOutsideSignalError, match=r"only 0\.1 s long"):
        intensity_doa(foa, FS, start_s=0.2)
    with pytest.raises(WindowOutsideSignalError, match="before the signal"):
        intensity_doa(foa, FS, start_s=-0.01, end_s=0.05)


def test_silence_has_no_direction() -> None:
    with pytest.raises(NoEnergyError, match="no signal energy"):
        intensity_doa(np.zeros((4, FS // 10)), FS)
    with pytest.raises(NoEnergyError, match="no signal energy"):
        intensity_doa(np.zeros((4, 50)), FS, band_hz=None)
    omni_only = np.zeros((4, FS // 10))
    omni_only[0] = 1.0 + _white(np.random.default_rng(11), FS // 10)
    with pytest.raises(NoEnergyError, match="intensity vector is zero"):
        intensity_doa(omni_only, FS)
    # Silence after the sound: the window, not the file, decides.
    foa = np.concatenate([_noise_foa(), np.zeros((4, FS // 10))], axis=1)
    with pytest.raises(NoEnergyError, match=r"0\.15-0\.2 s"):
        intensity_doa(foa, FS, start_s=0.15, end_s=0.2)


def test_bad_values_and_band() -> None:
    foa = _noise_foa()
    foa[2, 10] = np.nan
    with pytest.raises(DoaError, match="NaN"):
        intensity_doa(foa, FS)
    with pytest.raises(DoaError, match="fs/2"):
        intensity_doa(_noise_foa(), FS, band_hz=(300.0, 30_000.0))
    with pytest.raises(DoaError, match="no FFT bin"):
        intensity_doa(_noise_foa(), FS, band_hz=(1000.0, 1001.0), n_fft=256)
    with pytest.raises(DoaError, match="sample rate"):
        intensity_doa(_noise_foa(), 0)


def test_file_errors(tmp_path: Path) -> None:
    with pytest.raises(FoaFileError, match="no such file"):
        load_foa(tmp_path / "missing.wav", "ambix")
    junk = tmp_path / "junk.wav"
    junk.write_bytes(b"not audio at all")
    with pytest.raises(FoaFileError, match="not readable as audio"):
        estimate_doa_file(junk)
    three = tmp_path / "three.wav"
    sf.write(three, np.zeros((100, 3)), FS)
    with pytest.raises(ChannelCountError, match="got 3"):
        load_foa(three, "ambix")
    five = tmp_path / "five.wav"
    sf.write(five, np.zeros((100, 5)), FS)
    with pytest.raises(ChannelCountError, match="FuMa input must be first order"):
        load_foa(five, "fuma")
    with pytest.raises(DoaError, match="'ambix' or 'fuma'"):
        load_foa(five, "acn")  # type: ignore[arg-type]
    short = tmp_path / "short.wav"
    sf.write(short, 0.1 * _noise_foa(FS // 10).T, FS)
    with pytest.raises(WindowOutsideSignalError, match="past the end"):
        estimate_doa_file(short, start_s=0.0, end_s=1.0)


# ---------------------------------------------------------------------------------------------
# real recordings (../shared/realdata; absent in a user's clone)


def _realdata(rel: str) -> Path:
    path = REALDATA / rel
    if not path.exists():
        pytest.skip(f"real data not available: {path}")
    return path


@pytest.mark.realdata
def test_tau2019_cough_direction() -> None:
    """TAU SSE 2019 split1_ir0_ov1_1: cough labelled azi -10, ele -10 (ambiX order, N3D-like)."""
    path = _realdata("foa/tau2019_sse/split1_ir0_ov1_1_first1s.wav")
    est = estimate_doa_file(path, fmt="ambix", start_s=0.4, end_s=0.9)
    assert est.azimuth_deg == pytest.approx(-10.0, abs=15.0)
    assert est.elevation_deg == pytest.approx(-10.0, abs=15.0)


def _s3a_errors(room: str, band_hz: tuple[float, float] | None) -> np.ndarray:
    """Rows (az error, el error, label az, est az, label el) for every loudspeaker of a room."""
    room_dir = _realdata(f"foa/s3a_soundfield_rirs/{room}")
    rows = []
    with open(room_dir / "labels_derived.csv", newline="") as fh:
        for lab in csv.DictReader(fh):
            rir, fs = load_foa(room_dir / lab["file"], "fuma")
            est = direct_sound_doa(rir, fs, pre_ms=0.5, post_ms=2.0, band_hz=band_hz)
            az, el = float(lab["azimuth_deg"]), float(lab["elevation_deg"])
            rows.append((_az_err(est.azimuth_deg, az), est.elevation_deg - el, az, est.azimuth_deg, el))
    return np.array(rows)


@pytest.mark.realdata
@pytest.mark.parametrize("room", ["MainChurch", "OldChurch"])
def test_s3a_church_direct_sound(room: str) -> None:
    """Measured Soundfield RIRs (FuMa), loudspeakers at known positions; +y labels are left."""
    e = _s3a_errors(room, (300.0, 3000.0))
    assert len(e) == 10
    assert np.median(e[:, 0]) <= 15.0
    assert np.median(np.abs(e[:, 1])) <= 15.0
    # Left/right sign: every lateral loudspeaker is estimated on its own side.
    lateral = np.abs(e[:, 2]) > 20.0
    assert np.all(np.sign(e[lateral, 3]) == np.sign(e[lateral, 2]))
    # The broadband estimate on the same window is coarser but still usable.
    assert np.median(_s3a_errors(room, None)[:, 0]) <= 15.0


@pytest.mark.realdata
def test_s3a_vislab_direct_sound() -> None:
    """Vislab's lateral sign was fitted to the data, so this checks accuracy, not handedness."""
    e = _s3a_errors("Vislab", (300.0, 3000.0))
    not_zenith = np.abs(e[:, 4]) < 60.0  # azimuth is meaningless at the zenith speaker
    assert np.median(e[not_zenith, 0]) <= 15.0
    assert np.median(np.abs(e[:, 1])) <= 15.0
