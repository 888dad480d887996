"""Tetrahedral MIC renderer: the em32 rigid-sphere array model against DCASE's own formula.

The reference throughout is the steering vector the STARSS23 README gives for MIC, written here
from the README's formula (Legendre polynomials of the capsule-to-source angle, degrees up to 30),
independently of the renderer's SH projection and FIRs. Time differences of arrival (TDOA) are
GCC-PHAT peaks (upsampled, parabolic sub-sample interpolation) of a rendered plane-wave impulse,
compared with the same estimator on the reference in the same band.

Why the reference is the full rigid-sphere steering vector and not d.(p_i - p_j)/c: on a hard
sphere the inter-capsule delay is not the free-field one. It is 1.5 times it as kR -> 0 and falls
towards the free-field value as frequency rises, so "the array geometry" of a baffled array is its
scattering solution, band by band. The free-field geometry is checked where it is exact: the
1.5 x limit at low frequency, and an open (unbaffled) sphere, whose delays are d.(p_i - p_j)/c.
"""

from __future__ import annotations

import functools
import itertools
import re
from pathlib import Path

import numpy as np
import pytest
from scipy.special import eval_legendre, spherical_jn, spherical_yn

from schemas.scenes import SPEED_OF_SOUND_M_S as C
from tasks.ambisonics import real_sh_sn3d, unit_vector
from tasks.errors import LayoutError, SpatialAudioCapsError
from tasks.mic_array import (
    CAPSULES,
    RADIUS_M,
    MicArrayError,
    TetraMic,
    capsule_directions_deg,
    radial_filters,
    radial_weight,
)

FS = 48_000
N_FFT = 8192
FREQS = np.fft.rfftfreq(N_FFT, 1.0 / FS)
README = Path(__file__).resolve().parents[2] / "shared" / "realdata" / "foa" / "docs" / "STARSS23_README.md"

# Front/left/right/back, on a capsule's axis, between capsules, steep up and down.
DIRECTIONS = [
    (0, 0),
    (90, 0),
    (-90, 0),
    (180, 0),
    (45, 35),
    (135, -35),
    (-135, 35),
    (30, -60),
    (-100, 20),
    (10, 80),
]
PAIRS = list(itertools.combinations(range(len(CAPSULES)), 2))


def _kr_band(kr_max: float) -> tuple[float, float]:
    """50 Hz up to the frequency where kR = kr_max."""
    return 50.0, kr_max * C / (2 * np.pi * RADIUS_M)


def _capsule_cosines(az: float, el: float) -> np.ndarray:
    """cos(angle) between each capsule and the source direction, in output channel order."""
    return unit_vector(*capsule_directions_deg()).T @ unit_vector(az, el)


@functools.cache
def _dcase_radial(n_max: int) -> np.ndarray:
    """(n_max + 1, freqs > 0): (2n+1) i^(n-1) / ((kR)^2 h_n'(kR)), shared by every direction."""
    x = 2 * np.pi * FREQS[1:] * RADIUS_M / C
    degrees = np.arange(n_max + 1)[:, None]
    dh = spherical_jn(degrees, x, derivative=True) - 1j * spherical_yn(degrees, x, derivative=True)
    return (2 * degrees + 1) * 1j ** (degrees - 1) / (dh * x**2)


def _dcase_steering(az: float, el: float, n_max: int = 30) -> np.ndarray:
    """(4, freqs) STARSS23 README MIC response: 1/(kR)^2 sum_n i^(n-1)/h_n'(kR) (2n+1) P_n(cos g)."""
    legendre = eval_legendre(np.arange(n_max + 1)[None, :], _capsule_cosines(az, el)[:, None])
    return np.concatenate([np.ones((len(CAPSULES), 1)), legendre @ _dcase_radial(n_max)], axis=1)


def _rendered_spectra(order: int, az: float, el: float, rigid: bool = True) -> np.ndarray:
    """(4, freqs) spectra of the render of a plane-wave impulse, referenced to the array centre."""
    scene = np.zeros(((order + 1) ** 2, N_FFT), dtype=np.float32)
    scene[:, N_FFT // 2] = real_sh_sn3d(order, np.radians(az), np.radians(el))
    mic = TetraMic(rigid=rigid).render(scene, FS)
    centre = np.exp(2j * np.pi * FREQS * (N_FFT // 2) / FS)  # undo the impulse's own delay
    return np.fft.rfft(mic.astype(np.float64), axis=1) * centre


def _gcc_phat_lag(cross: np.ndarray, band: tuple[float, float], upsample: int = 32) -> float:
    """Lag in samples (positive: the first signal arrives later) of the PHAT-weighted cross spectrum
    X_i X_j* restricted to ``band``; upsampled correlation refined by a parabola through its peak."""
    low, high = band
    keep = (low <= FREQS) & (high >= FREQS)
    phat = np.zeros_like(cross)
    phat[keep] = cross[keep] / np.abs(cross[keep])
    n = N_FFT * upsample
    corr = np.roll(np.fft.irfft(phat, n), n // 2)
    k = int(np.argmax(corr))
    a, b, c = corr[k - 1 : k + 2]
    return (k + 0.5 * (a - c) / (a - 2 * b + c) - n // 2) / upsample


def _tdoas(spectra: np.ndarray, band: tuple[float, float]) -> np.ndarray:
    """TDOA (arrival at i minus arrival at j, samples) for every capsule pair."""
    return np.array([_gcc_phat_lag(spectra[i] * np.conj(spectra[j]), band) for i, j in PAIRS])


def _free_field_tdoas(az: float, el: float) -> np.ndarray:
    """d.(p_i - p_j)/c in samples: a capsule nearer the source (larger cosine) hears it earlier."""
    arrival = -_capsule_cosines(az, el) * RADIUS_M / C * FS
    return np.array([arrival[i] - arrival[j] for i, j in PAIRS])


@functools.cache
def tdoa_errors(order: int, band: tuple[float, float]) -> np.ndarray:
    """|rendered - reference| TDOA, samples, over DIRECTIONS x PAIRS; the reference is DCASE's
    degree-30 rigid-sphere steering vector through the same estimator and band."""
    return np.concatenate(
        [
            np.abs(_tdoas(_rendered_spectra(order, az, el), band) - _tdoas(_dcase_steering(az, el), band))
            for az, el in DIRECTIONS
        ]
    )


def test_render_equals_dcase_formula_truncated_at_the_scene_order() -> None:
    """The SH projection + radial FIRs are DCASE's Legendre series cut at n <= N, up to 20 kHz: this
    pins the SN3D addition theorem, the (2n+1) i^(n-1) factors, the time convention and capsules."""
    audible = FREQS <= 20_000
    for order in (1, 3):
        for az, el in DIRECTIONS:
            rendered = _rendered_spectra(order, az, el)
            reference = _dcase_steering(az, el, n_max=order)
            err = np.abs(rendered - reference)[:, audible].max()
            assert err < 2e-3, (order, az, el, err)


@pytest.mark.parametrize(("order", "kr_max"), [(1, 0.5), (3, 1.5), (3, 3.0)])
def test_tdoa_matches_the_rigid_sphere_array_within_one_sample(order: int, kr_max: float) -> None:
    """The issue's claim, for a plane wave from 10 directions and all 6 capsule pairs, in the band
    the order-N scene supports (measured at N = 1 up to kR = 1: max 1.3 samples, not within one)."""
    errors = tdoa_errors(order, _kr_band(kr_max))
    assert errors.max() < 1.0, errors.max()


def test_tdoa_converges_to_the_array_as_the_order_rises() -> None:
    """Same band, more degrees, closer to the full array: the truncation is the only model error."""
    band = _kr_band(0.5)
    first, third = tdoa_errors(1, band), tdoa_errors(3, band)
    assert third.max() < first.max() / 4
    assert np.median(third) < np.median(first)


@pytest.mark.parametrize("order", [1, 3])
def test_low_frequency_tdoa_is_the_rigid_sphere_geometry(order: int) -> None:
    """Below 500 Hz the baffle stretches the free-field delays d.(p_i - p_j)/c by 1.5 (kR -> 0 limit
    of the n = 0, 1 terms). The plain free-field delays are off by up to half of them, > 1 sample."""
    band = (50.0, 500.0)
    rendered = np.array([_tdoas(_rendered_spectra(order, az, el), band) for az, el in DIRECTIONS])
    free_field = np.array([_free_field_tdoas(az, el) for az, el in DIRECTIONS])
    assert np.abs(rendered - 1.5 * free_field).max() < 1.0
    assert np.abs(rendered - free_field).max() > 1.0


@pytest.mark.parametrize(("order", "kr_max"), [(1, 0.5), (3, 1.5)])
def test_open_sphere_tdoa_is_the_free_field_geometry(order: int, kr_max: float) -> None:
    """Without the baffle the capsules hear the plane wave at d.(p_i - p_j)/c: a sanity check of the
    capsule positions and signs with no scattering in between."""
    band = _kr_band(kr_max)
    for az, el in DIRECTIONS:
        rendered = _tdoas(_rendered_spectra(order, az, el, rigid=False), band)
        assert np.abs(rendered - _free_field_tdoas(az, el)).max() < 1.0, (az, el)


@pytest.mark.parametrize("fs", [44_100, 48_000, 96_000])
def test_radial_firs_have_the_analytic_response(fs: int) -> None:
    """Frequency sampling + truncation + taper keeps each FIR within 1e-3 of w_n(kR) up to 20 kHz,
    with its time zero at the centre tap (so the render stays aligned with the scene)."""
    filters = radial_filters(3, fs)
    half = filters.shape[1] // 2
    n = 1 << 15
    freqs = np.fft.rfftfreq(n, 1.0 / fs)
    kr = 2 * np.pi * freqs * RADIUS_M / C
    padded = np.zeros((filters.shape[0], n))
    padded[:, : filters.shape[1]] = filters
    response = np.fft.rfft(np.roll(padded, -half, axis=1), axis=1)
    audible = freqs <= 20_000
    for degree in range(4):
        err = np.abs(response[degree] - radial_weight(degree, kr))[audible].max()
        assert err < 1e-3, (fs, degree, err)
    assert not filters.flags.writeable


def test_render_keeps_length_and_is_float32_with_four_capsules() -> None:
    scene = np.random.default_rng(0).standard_normal((4, 1001)).astype(np.float32)
    mic = TetraMic()
    out = mic.render(scene, FS)
    assert out.shape == (4, 1001)
    assert out.dtype == np.float32
    assert mic.ambisonic_order(out.shape[0]) is None
    assert (mic.name, mic.spatial, mic.level_channels) == ("mic", True, (0, 1, 2, 3))
    assert mic.identity == "em32-tetra-rigid/r0.042"
    assert TetraMic(rigid=False).identity != mic.identity


@pytest.mark.parametrize("channels", [1, 2, 3, 5, 16])
def test_output_layout_other_than_four_channels_is_refused(channels: int) -> None:
    with pytest.raises(LayoutError, match="4 channels"):
        TetraMic().ambisonic_order(channels)


@pytest.mark.parametrize(
    "shape", [(5, 100), (8, 100), (25, 100), (100,), (4, 10, 10)], ids=["5ch", "8ch", "order4", "1d", "3d"]
)
def test_scene_that_is_not_an_ambix_scene_is_refused(shape: tuple[int, ...]) -> None:
    with pytest.raises(LayoutError):
        TetraMic().render(np.zeros(shape, dtype=np.float32), FS)


@pytest.mark.parametrize("fs", [0, -48_000, 48_000.0, True])
def test_bad_sample_rate_is_refused(fs: object) -> None:
    with pytest.raises(MicArrayError, match="sample rate") as caught:
        TetraMic().render(np.zeros((4, 100), dtype=np.float32), fs)  # type: ignore[arg-type]
    assert isinstance(caught.value, SpatialAudioCapsError)


def test_capsules_are_em32_capsules_6_10_26_22() -> None:
    """em32 release notes give (colatitude, azimuth) per capsule: 6 (55, 45), 10 (125, 315),
    26 (125, 135), 22 (55, 225); DCASE's M1..M4 are those, and they form a near-regular
    tetrahedron (pairwise 109.2-110 degrees, not 109.47: elevation 35, not 35.26; centroid at the centre)."""
    em32 = {6: (55, 45), 10: (125, 315), 26: (125, 135), 22: (55, 225)}
    for number, az, el in CAPSULES:
        colatitude, azimuth = em32[number]
        assert (az % 360, el) == (azimuth, 90 - colatitude)
    v = unit_vector(*capsule_directions_deg())
    angles = np.degrees(np.arccos([v[:, i] @ v[:, j] for i, j in PAIRS]))
    assert np.allclose(angles, 109.47, atol=0.6)
    assert np.linalg.norm(v.sum(axis=1)) < 1e-9


@pytest.mark.realdata
def test_capsules_are_the_ones_the_starss23_readme_gives() -> None:
    """The README is the authority for DCASE's MIC: M1..M4 (azimuth, elevation, radius)."""
    if not README.is_file():
        pytest.skip(f"{README} absent")
    found = {}
    for line in README.read_text(encoding="utf-8").splitlines():
        flat = line.replace("&", "").replace("\\quad", "")
        hit = re.search(r"M(\d):\s*\((-?[\d.]+)\^\\circ,\s*(-?[\d.]+)\^\\circ,\s*([\d.]+)\\mathrm\{cm", flat)
        if hit:
            found[int(hit[1])] = (float(hit[2]), float(hit[3]), float(hit[4]) / 100)
    assert found == {i + 1: (az, el, RADIUS_M) for i, (_, az, el) in enumerate(CAPSULES)}
