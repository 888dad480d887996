"""Binaural renderer (tasks/binaural.py): a MagLS decode of ambiX plane waves through MIT KEMAR.

Plane waves are unit impulses encoded with the project's own SN3D harmonics, so every figure here is
the decoder's response to one direction, compared with KEMAR's measured HRIR pair for that direction.
"""

from __future__ import annotations

import hashlib

import numpy as np
import pytest
import sofar

from tasks.ambisonics import angular_distance_deg, real_sh_sn3d
from tasks.binaural import (
    Binaural,
    HrtfError,
    HrtfSet,
    InterauralCueError,
    interaural_cues,
    kemar_sofa_path,
    load_sofa_hrtf,
    resample_hrtf,
)
from tasks.errors import LayoutError, SpatialAudioCapsError

FS = 48_000
N = 2048


@pytest.fixture(scope="module")
def renderer(tmp_path_factory: pytest.TempPathFactory) -> Binaural:
    """KEMAR converted from slab's package data into a per-run cache (not the user's ~/.cache)."""
    return Binaural(kemar_sofa_path(tmp_path_factory.mktemp("hrtf")))


@pytest.fixture(scope="module")
def hrtf48(renderer: Binaural) -> HrtfSet:
    return resample_hrtf(renderer.hrtf, FS)


def plane_wave(order: int, az_deg: float, el_deg: float = 0.0) -> np.ndarray:
    """An impulse from (az, el) in ambiX: (channels, N) float32."""
    gains = real_sh_sn3d(order, np.radians(az_deg), np.radians(el_deg))
    return (gains[:, None] * np.eye(1, N)).astype(np.float32)


def nearest_hrir(hrtf: HrtfSet, az_deg: float, el_deg: float) -> np.ndarray:
    d = len(hrtf.azimuth_deg)
    dist = angular_distance_deg(hrtf.azimuth_deg, hrtf.elevation_deg, np.full(d, az_deg), np.full(d, el_deg))
    return hrtf.hrirs[int(np.argmin(dist))]


def fibonacci_cap(n: int, min_el_deg: float) -> tuple[np.ndarray, np.ndarray]:
    """n near-uniform directions (equal-area Fibonacci lattice) with elevation >= min_el_deg."""
    i = np.arange(n) + 0.5
    z_min = np.sin(np.radians(min_el_deg))
    z = z_min + (1.0 - z_min) * i / n
    az = np.degrees((i * np.pi * (3.0 - np.sqrt(5.0))) % (2.0 * np.pi))
    return (az + 180.0) % 360.0 - 180.0, np.degrees(np.arcsin(z))


def test_kemar_loads_in_project_frame(renderer: Binaural, tmp_path_factory: pytest.TempPathFactory) -> None:
    hrtf = renderer.hrtf
    assert hrtf.hrirs.shape == (710, 2, 512) and hrtf.fs == 44_100
    assert hrtf.elevation_deg.min() == -40.0 and hrtf.elevation_deg.max() == 90.0
    assert np.all((hrtf.azimuth_deg > -180.0) & (hrtf.azimuth_deg <= 180.0))
    # +90 deg = left: the left ear (ear 0) is louder and earlier for a source on the left.
    left_source = nearest_hrir(hrtf, 90.0, 0.0)
    energy = (left_source**2).sum(axis=1)
    assert energy[0] > 10 * energy[1]
    assert np.argmax(np.abs(left_source[0])) < np.argmax(np.abs(left_source[1]))
    # The identity is the SOFA file's bytes, and the conversion is reproducible (same bytes again).
    path = kemar_sofa_path(tmp_path_factory.mktemp("again"))
    assert hashlib.sha256(path.read_bytes()).hexdigest() == hrtf.sha256
    assert renderer.identity == f"magls/{hrtf.name}/{hrtf.sha256[:12]}"


@pytest.mark.parametrize("order", [1, 3])
@pytest.mark.parametrize("az", [90.0, -90.0])
def test_ild_has_the_sign_of_the_side(renderer: Binaural, order: int, az: float) -> None:
    ild, _ = interaural_cues(renderer.render(plane_wave(order, az), FS), FS)
    assert np.sign(ild) == np.sign(az) and abs(ild) > 3.0


@pytest.mark.parametrize("az", [90.0, -90.0, 30.0, -135.0])
def test_itd_matches_the_hrtf_at_order_3(renderer: Binaural, hrtf48: HrtfSet, az: float) -> None:
    """At order 3 the complex LS band reaches f_c = 1.9 kHz, above the 1.5 kHz ITD band."""
    _, itd = interaural_cues(renderer.render(plane_wave(3, az), FS), FS)
    _, itd_hrtf = interaural_cues(nearest_hrir(hrtf48, az, 0.0), FS)
    assert abs(itd - itd_hrtf) <= 100e-6


@pytest.mark.parametrize("az", [90.0, -90.0])
def test_itd_at_order_1_keeps_the_side_but_is_short(renderer: Binaural, hrtf48: HrtfSet, az: float) -> None:
    """Order 1 keeps the HRTF's phase only below f_c = 625 Hz, so the 0-1.5 kHz ITD is known to
    be too small (any linear first-order decode underestimates it); it must still point to the side."""
    _, itd = interaural_cues(renderer.render(plane_wave(1, az), FS), FS)
    _, itd_hrtf = interaural_cues(nearest_hrir(hrtf48, az, 0.0), FS)
    assert np.sign(itd) == np.sign(itd_hrtf) == np.sign(az)
    assert 100e-6 < abs(itd) < abs(itd_hrtf)


@pytest.mark.parametrize("order", [1, 2, 3])
def test_decoded_energy_follows_the_hrtf_within_3_db(renderer: Binaural, hrtf48: HrtfSet, order: int) -> None:
    """Energy of the decode = both ears' summed squared output for a unit plane wave; compared per
    direction with the both-ear energy of KEMAR's nearest measured HRIR pair, over 150 Fibonacci
    directions in KEMAR's elevation range (>= -40 deg). Every ratio must lie within +-3 dB; and the
    decode's own energy over the sphere is flat within +-3 dB of its mid-range (the issue's claim:
    KEMAR's own varies by 6.5 dB, ipsilateral and pinna gains, which the ratio test follows)."""
    ratios, energies = [], []
    for az, el in zip(*fibonacci_cap(150, -40.0), strict=True):
        ears = renderer.render(plane_wave(order, az, el), FS).astype(np.float64)
        energies.append(10 * np.log10((ears**2).sum()))
        ratios.append(energies[-1] - 10 * np.log10((nearest_hrir(hrtf48, az, el) ** 2).sum()))
    assert np.max(np.abs(ratios)) <= 3.0
    assert (max(energies) - min(energies)) / 2 <= 3.0


def test_render_layout(renderer: Binaural) -> None:
    scene = np.random.default_rng(0).standard_normal((9, 4000)).astype(np.float32)
    out = renderer.render(scene, FS)
    assert out.shape == (2, 4000) and out.dtype == np.float32 and np.all(np.isfinite(out))
    assert renderer.name == "binaural" and renderer.spatial and renderer.level_channels == (0, 1)
    assert renderer.ambisonic_order(2) is None
    with pytest.raises(LayoutError):
        renderer.ambisonic_order(4)
    for channels in (1, 5, 25):  # order 0, not (N+1)^2, order 4
        with pytest.raises(LayoutError):
            renderer.render(np.zeros((channels, 100), np.float32), FS)


def test_render_is_linear_and_time_invariant(renderer: Binaural) -> None:
    wave = plane_wave(1, 40.0)
    delayed = np.roll(wave, 300, axis=1)
    out, out_delayed = renderer.render(wave, FS), renderer.render(delayed, FS)
    np.testing.assert_allclose(out_delayed[:, 300:], out[:, : N - 300], atol=1e-6)
    np.testing.assert_allclose(renderer.render(2 * wave, FS), 2 * out, rtol=1e-5, atol=1e-7)


def test_interaural_cues_of_a_known_pair() -> None:
    """Right ear = left ear 20 samples later at -6 dB: ILD +6 dB, ITD +20/fs (left leads)."""
    noise = np.random.default_rng(1).standard_normal(8000)
    right = 10 ** (-6 / 20) * np.concatenate([np.zeros(20), noise[:-20]])
    ild, itd = interaural_cues(np.stack([noise, right]), FS)
    assert ild == pytest.approx(6.0, abs=0.2)
    assert itd == pytest.approx(20 / FS, abs=3e-6)
    ild_swapped, itd_swapped = interaural_cues(np.stack([right, noise]), FS)
    assert ild_swapped == pytest.approx(-ild) and itd_swapped == pytest.approx(-itd, abs=3e-6)
    with pytest.raises(InterauralCueError):
        interaural_cues(np.zeros((2, 1000)), FS)
    with pytest.raises(InterauralCueError):
        interaural_cues(noise[None, :], FS)


def _sofa(ir: np.ndarray, positions: np.ndarray) -> sofar.Sofa:
    sofa = sofar.Sofa("SimpleFreeFieldHRIR")
    sofa.Data_IR = ir
    sofa.Data_SamplingRate = 32_000.0
    sofa.SourcePosition = positions
    return sofa


def test_sofa_directions_and_ears_enter_the_project_frame(tmp_path) -> None:
    """Cartesian positions become (az, el) with +y = left; a file whose ReceiverPosition puts the
    right ear first is reordered to left first; resampling keeps the identity."""
    ir = np.zeros((2, 2, 64))
    ir[:, 0, 3] = 1.0  # receiver 0 (made the right ear below) peaks at sample 3
    ir[:, 1, 9] = 1.0
    sofa = _sofa(ir, np.array([[0.0, 2.0, 0.0], [1.0, 0.0, 1.0]]))
    sofa.SourcePosition_Type, sofa.SourcePosition_Units = "cartesian", "metre"
    sofa.ReceiverPosition = np.array([[0.0, -0.09, 0.0], [0.0, 0.09, 0.0]])
    sofar.write_sofa(str(tmp_path / "h.sofa"), sofa)
    hrtf = load_sofa_hrtf(tmp_path / "h.sofa")
    np.testing.assert_allclose(hrtf.azimuth_deg, [90.0, 0.0], atol=1e-9)
    np.testing.assert_allclose(hrtf.elevation_deg, [0.0, 45.0], atol=1e-9)
    assert np.argmax(hrtf.hrirs[0, 0]) == 9 and np.argmax(hrtf.hrirs[0, 1]) == 3
    assert hrtf.fs == 32_000 and hrtf.name == "h"
    up = resample_hrtf(hrtf, FS)
    assert up.fs == FS and up.hrirs.shape == (2, 2, 96) and up.sha256 == hrtf.sha256


def test_sofa_without_positions_is_a_typed_error(tmp_path) -> None:
    sofa = _sofa(np.ones((2, 2, 16)), np.array([[0.0, 0.0, 1.0], [90.0, 0.0, 1.0]]))
    sofa.verify(mode="write")  # sets the file's dimensions from the data, then the positions go
    sofa.protected = False
    del sofa.SourcePosition, sofa.SourcePosition_Type, sofa.SourcePosition_Units
    sofar.io._write_sofa(str(tmp_path / "nopos.sofa"), sofa, verify=False)  # sofar's writer of invalid files
    with pytest.raises(HrtfError, match="SourcePosition"):
        load_sofa_hrtf(tmp_path / "nopos.sofa")


def test_hrtf_with_one_ear_is_a_typed_error(tmp_path) -> None:
    sofa = _sofa(np.ones((2, 1, 16)), np.array([[0.0, 0.0, 1.0], [90.0, 0.0, 1.0]]))
    sofa.ReceiverPosition = np.array([[0.0, 0.09, 0.0]])
    sofa.Data_Delay = np.zeros((1, 1))
    sofar.write_sofa(str(tmp_path / "one_ear.sofa"), sofa)
    with pytest.raises(HrtfError, match="2 receivers"):
        Binaural(tmp_path / "one_ear.sofa").render(plane_wave(1, 0.0), FS)


def test_unreadable_or_wrong_convention_is_a_typed_error(tmp_path) -> None:
    (tmp_path / "junk.sofa").write_bytes(b"not a netCDF file")
    with pytest.raises(HrtfError, match="cannot read"):
        load_sofa_hrtf(tmp_path / "junk.sofa")
    fir = sofar.Sofa("GeneralFIR")
    sofar.write_sofa(str(tmp_path / "fir.sofa"), fir)
    with pytest.raises(HrtfError, match="SimpleFreeFieldHRIR"):
        load_sofa_hrtf(tmp_path / "fir.sofa")
    assert issubclass(HrtfError, SpatialAudioCapsError)
