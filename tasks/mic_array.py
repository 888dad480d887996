"""The DCASE tetrahedral "MIC" format: four Eigenmike em32 capsules on a rigid sphere, simulated
from the ambiX scene.

DCASE SELD sets (TAU-NIGENS, STARSS22/23) ship each recording twice: FOA and MIC, the raw signals of
em32 capsules 6, 10, 26 and 22 at radius 4.2 cm. Their (azimuth, elevation), in degrees and in
this project's convention (+azimuth = left, DCASE's too), are M1 (45, 35), M2 (-45, -35),
M3 (135, -35), M4 (-135, 35) (STARSS23 README; em32 release notes: colatitude 55/125 degrees).

Array model (the one the STARSS23 README gives for MIC, truncated to the scene's order):
omnidirectional capsules on an acoustically hard sphere of radius R, the incident field a sum of
plane waves described by the ambiX scene of order N at the array centre. A plane wave of unit
amplitude from direction u puts on the sphere, at capsule direction v,

    p(v, kR) = sum_n (2n+1) i^(n-1) / ((kR)^2 h_n'(kR)) P_n(u . v),   h_n = j_n - i y_n,

with the time convention of numpy's FFT (x(t) = sum X(f) e^{+i 2 pi f t}), where outgoing waves
are the spherical Hankel functions of the second kind; this is DCASE's formula term by term. In
SN3D the addition theorem reads P_n(u . v) = sum_m Y_nm(u) Y_nm(v): SN3D absorbs the factor that
N3D harmonics would need, 1/(2n+1), and orthonormal ones, 4pi/(2n+1). An ambiX scene's channel
(n, m) is Y_nm(u) s(t), so each capsule's pressure is, per degree n, the scene's degree-n
channels projected on Y_nm(capsule), filtered by the radial weight
w_n(kR) = (2n+1) i^(n-1) / ((kR)^2 h_n'(kR)), and summed over n <= N. No radial inversion is
needed (scene -> capsules), so nothing blows up: w_0 -> 1 and
w_n ~ (2n+1) i^n (kR)^n / ((n+1)(2n-1)!!) as kR -> 0 (so at low frequency a capsule hears 1.5
times the free-field delay, the rigid-sphere low-frequency factor), and |w_n| ~ (2n+1) / kR at
high kR.

What is approximated, and why it cannot be helped here:

- Order truncation. The full rigid-sphere response needs degrees up to about e kR / 2 (DCASE sums
  to 30 for 20 kHz); the scene holds only n <= N. Against DCASE's degree-30 steering vector, the
  GCC-PHAT time differences of arrival of the render (10 directions x 6 capsule pairs, 48 kHz,
  tests/test_mic_array.py) are off by at most 0.5 samples at N = 1 below kR = 0.5 (650 Hz) but
  1.3 samples up to kR = 1 (1.3 kHz); at N = 3, 0.11 samples up to kR = 1.5 (1.95 kHz) and 0.9
  up to kR = 3 (3.9 kHz). Above that the capsules' directivity and phase are those of the
  truncated series, not of the em32. The missing degrees cannot be added: they are components of
  the incident field that an order-N scene does not contain. Restoring them needs the source
  directions (a parametric up-mix from the ISM image sources or a DOA estimate), which would be
  an estimate of a different scene, not a rendering of this one.
- Plane waves. The scene is a far-field description at the array centre; near-field curvature
  over the 8.4 cm sphere is ignored (as it is in every ambiX RIR of the project).
- Ideal capsules: omnidirectional points, matched, no self-noise, no em32 calibration filters.

The radial weights become linear-phase FIRs by frequency sampling: the weight sampled densely,
inverse-transformed, centred on time zero, truncated to +-2.5 ms (> 20 time constants R/c of the
slowest, degree-0 response) and tapered (Tukey). Each FIR's response stays within 6e-5 of w_n
up to 20 kHz at 44.1, 48 and 96 kHz (what is left in the tails is ringing from the cut at
Nyquist, where |w_n| is still (2n+1)/kR). The filters are applied centred, so the output stays
aligned with the scene (time zero = the plane wave at the array centre, as DCASE's labels and
the project's ambiX RIRs have it).

``rigid=False`` gives the same capsules in free field (an open sphere, w_n = (2n+1) i^n j_n(kR)):
their truncated series converges to a pure delay of u . v R / c, the geometric time difference
of arrival, which is what the tests check the geometry against.
"""

from __future__ import annotations

import functools
import math

import numpy as np
from scipy.fft import irfft, next_fast_len, rfft
from scipy.special import spherical_jn, spherical_yn

from schemas.scenes import SPEED_OF_SOUND_M_S
from tasks.ambisonics import MAX_ORDER, order_of, real_sh_sn3d
from tasks.errors import LayoutError, SpatialAudioCapsError

RADIUS_M = 0.042
"""em32 sphere radius (STARSS23 README)."""

CAPSULES: tuple[tuple[int, float, float], ...] = (
    (6, 45.0, 35.0),
    (10, -45.0, -35.0),
    (26, 135.0, -35.0),
    (22, -135.0, 35.0),
)
"""(em32 capsule number, azimuth_deg, elevation_deg) of MIC channels 1-4, in output order."""

HALF_LENGTH_S = 2.5e-3
"""Half the FIR length: > 20 time constants R/c (122 us) of the sphere's slowest, degree-0 response."""


class MicArrayError(SpatialAudioCapsError):
    """A sample rate the array model cannot be sampled at."""


def capsule_directions_deg() -> tuple[np.ndarray, np.ndarray]:
    """(azimuth_deg, elevation_deg) arrays of the four capsules, in output channel order."""
    _, az, el = zip(*CAPSULES, strict=True)
    return np.array(az), np.array(el)


def radial_weight(n: int, kr: np.ndarray, rigid: bool = True) -> np.ndarray:
    """w_n(kR): the factor of sum_m Y_nm(capsule) a_nm in a capsule's pressure (module docstring).

    Rigid sphere: (2n+1) i^(n-1) / ((kR)^2 h_n^(2)'(kR)); open sphere: (2n+1) i^n j_n(kR).
    At kR = 0 the rigid expression is 0/0-like, so its limit is used: 1 for n = 0, else 0.
    """
    kr = np.asarray(kr, dtype=np.float64)
    if not rigid:
        return (2 * n + 1) * 1j**n * spherical_jn(n, kr)
    out = np.full(kr.shape, 1.0 + 0j if n == 0 else 0j)
    pos = kr > 0
    x = kr[pos]
    dh = spherical_jn(n, x, derivative=True) - 1j * spherical_yn(n, x, derivative=True)
    out[pos] = (2 * n + 1) * 1j ** (n - 1) / (x**2 * dh)
    return out


@functools.lru_cache(maxsize=32)
def radial_filters(order: int, fs: int, rigid: bool = True) -> np.ndarray:
    """(order + 1, taps) linear-phase FIRs of w_0..w_order at ``fs``; tap ``taps // 2`` is time zero.

    Cached per (order, fs, rigid): every sample of a build shares them. Read-only, since the cache
    hands the same array to every caller.
    """
    half = math.ceil(fs * HALF_LENGTH_S)
    taps = 2 * half + 1
    n_fft = 1 << (8 * taps - 1).bit_length()
    kr = 2 * np.pi * np.fft.rfftfreq(n_fft, 1.0 / fs) * RADIUS_M / SPEED_OF_SOUND_M_S
    from scipy.signal.windows import tukey  # here: shard readers import this module, not scipy.signal

    window = tukey(taps, 0.5)
    filters = np.empty((order + 1, taps))
    for n in range(order + 1):
        impulse = np.fft.irfft(radial_weight(n, kr, rigid), n_fft)
        filters[n] = np.roll(impulse, half)[:taps] * window
    filters.setflags(write=False)
    return filters


class TetraMic:
    """DCASE MIC: em32 capsules 6, 10, 26, 22 on a rigid sphere (module docstring: the model)."""

    name = "mic"
    spatial = True
    level_channels = (0, 1, 2, 3)
    """All four capsules: one gain keeps the inter-capsule level and time differences."""

    def __init__(self, rigid: bool = True) -> None:
        self.rigid = rigid
        self.identity = f"em32-tetra-{'rigid' if rigid else 'open'}/r{RADIUS_M}"

    def ambisonic_order(self, channels: int) -> int | None:
        if channels != len(CAPSULES):
            raise LayoutError(f"MIC audio has {len(CAPSULES)} channels, got {channels}")
        return None

    def render(self, scene: np.ndarray, fs: int) -> np.ndarray:
        """(N+1)^2 ambiX channels at ``fs`` -> (4, samples) float32, time-aligned with the scene."""
        order = _scene_order(scene)
        if isinstance(fs, bool) or not isinstance(fs, int | np.integer) or fs <= 0:
            raise MicArrayError(f"sample rate must be a positive integer in Hz, got {fs!r}")
        filters = radial_filters(order, int(fs), self.rigid)
        half = filters.shape[1] // 2
        az, el = capsule_directions_deg()
        sh = real_sh_sn3d(order, np.radians(az), np.radians(el))  # (channels, capsules)
        x = np.asarray(scene, dtype=np.float32)
        n_samples = x.shape[1]
        n_fft = next_fast_len(n_samples + filters.shape[1] - 1, real=True)
        # One spectrum per capsule, summed over degrees: a single inverse FFT for all orders.
        spectrum = np.zeros((len(CAPSULES), n_fft // 2 + 1), dtype=np.complex64)
        for n in range(order + 1):
            block = slice(n * n, (n + 1) ** 2)
            projected = sh[block].T.astype(np.float32) @ x[block]
            spectrum += rfft(projected, n_fft, axis=1) * rfft(filters[n].astype(np.float32), n_fft)
        out = irfft(spectrum, n_fft, axis=1)[:, half : half + n_samples]
        return out.astype(np.float32)


def _scene_order(scene: np.ndarray) -> int:
    """The ambisonic order N of a (channels, samples) scene; LayoutError unless (N+1)^2 channels."""
    if np.ndim(scene) != 2:
        raise LayoutError(f"an ambiX scene is (channels, samples), got shape {np.shape(scene)}")
    channels = int(np.shape(scene)[0])
    order = order_of(channels, "the MIC renderer")
    if order > MAX_ORDER:
        raise LayoutError(
            f"the MIC renderer needs an ambiX scene of (N+1)^2 channels with N <= {MAX_ORDER}, "
            f"got {channels} channels"
        )
    return order
