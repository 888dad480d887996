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

The radial weights become linear-phase FIRs by frequency sampling (``centred_fir``): the weight
sampled densely, inverse-transformed, centred on time zero, truncated to +-2.5 ms (> 20 time
constants R/c of the slowest, degree-0 response) and tapered (Tukey). Each FIR's response stays
within 6e-5 of w_n up to 20 kHz at 44.1, 48 and 96 kHz (what is left in the tails is ringing from
the cut at Nyquist, where |w_n| is still (2n+1)/kR). The filters are applied centred, so the
output stays aligned with the scene (time zero = the plane wave at the array centre, as DCASE's
labels and the project's ambiX RIRs have it).

``rigid=False`` gives the same capsules in free field (an open sphere, w_n = (2n+1) i^n j_n(kR)):
their truncated series converges to a pure delay of u . v R / c, the geometric time difference
of arrival, which is what the tests check the geometry against.

The array is a ``SphereArray`` (radius, capsule directions, baffle, capsule pattern), so other
arrays reuse the projection and FIRs: tasks/capture_chain.py's Soundfield-like tetrahedron of
first-order capsules on an open sphere, whose weight is derived in ``radial_weight``.
"""

from __future__ import annotations

import functools
import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass

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
    """An array model, or a sample rate, that cannot be simulated."""


@dataclass(frozen=True)
class SphereArray:
    """Point capsules at ``radius_m`` on a sphere, each facing outwards with the first-order pattern
    ``omni + (1 - omni) cos(angle)`` (1: omnidirectional, 0.5: cardioid); ``rigid``: on a hard
    sphere (omnidirectional capsules only), else in free field (an open sphere). Frozen and
    hashable: it keys the FIR cache."""

    radius_m: float
    directions_deg: tuple[tuple[float, float], ...]
    """(azimuth, elevation) per capsule, in output channel order."""
    rigid: bool = True
    omni: float = 1.0

    def __post_init__(self) -> None:
        if not (math.isfinite(self.radius_m) and self.radius_m > 0):
            raise MicArrayError(f"array radius must be a positive number of metres, got {self.radius_m!r}")
        if not 0.0 <= self.omni <= 1.0:
            raise MicArrayError(f"capsule pattern omni + (1 - omni) cos: 0 <= omni <= 1, got {self.omni!r}")
        if self.rigid and self.omni != 1.0:
            # A hard surface has no normal velocity: a gradient capsule flush with it hears pressure.
            raise MicArrayError("a rigid-sphere array is modelled with omnidirectional capsules only")


EM32_MIC = SphereArray(RADIUS_M, tuple((az, el) for _, az, el in CAPSULES))
"""DCASE MIC: em32 capsules 6, 10, 26, 22 on the rigid em32 sphere."""


def capsule_directions_deg(array: SphereArray = EM32_MIC) -> tuple[np.ndarray, np.ndarray]:
    """(azimuth_deg, elevation_deg) arrays of the array's capsules, in output channel order."""
    az, el = zip(*array.directions_deg, strict=True)
    return np.array(az), np.array(el)


def radial_weight(n: int, kr: np.ndarray, rigid: bool = True, omni: float = 1.0) -> np.ndarray:
    """w_n(kR): the factor of sum_m Y_nm(capsule) a_nm in a capsule's signal (module docstring).

    Rigid sphere: (2n+1) i^(n-1) / ((kR)^2 h_n^(2)'(kR)); at kR = 0 the expression is 0/0-like, so
    its limit is used: 1 for n = 0, else 0.

    Open sphere, capsule pattern g(t) = a + (1 - a) t of t = cos(angle to its axis), a = ``omni``:
    a plane wave from u reaches the capsule at R v as g(u . v) e^{i kR u . v}. With
    e^{i x t} = sum_n (2n+1) i^n j_n(x) P_n(t) and t e^{i x t} = -i d/dx e^{i x t}
    = sum_n (2n+1) i^(n-1) j_n'(x) P_n(t) (pressure term and velocity term),

        w_n(kR) = (2n+1) i^n (a j_n(kR) - i (1 - a) j_n'(kR)),

    which is (2n+1) i^n j_n(kR) for omnidirectional capsules, and a, 1 - a for n = 0, 1 at kR = 0
    (the capsule pattern itself). A gradient capsule's degree n starts at (kR)^(n-1), not (kR)^n:
    its degree-2 term is already first order in kR.
    """
    kr = np.asarray(kr, dtype=np.float64)
    if not rigid:
        pressure = spherical_jn(n, kr)
        velocity = spherical_jn(n, kr, derivative=True)
        return (2 * n + 1) * 1j**n * (omni * pressure - 1j * (1.0 - omni) * velocity)
    out = np.full(kr.shape, 1.0 + 0j if n == 0 else 0j)
    pos = kr > 0
    x = kr[pos]
    dh = spherical_jn(n, x, derivative=True) - 1j * spherical_yn(n, x, derivative=True)
    out[pos] = (2 * n + 1) * 1j ** (n - 1) / (x**2 * dh)
    return out


def centred_fir(response: Callable[[np.ndarray], np.ndarray], fs: int) -> np.ndarray:
    """Linear-phase FIR of ``response`` (complex, of frequency in Hz, referenced to time zero) at
    ``fs``: frequency sampling on a grid 8 times the FIR length, centred, cut to +-HALF_LENGTH_S and
    Tukey-tapered. Tap ``taps // 2`` is time zero, so responses that lead (a capsule nearer the
    source than the centre) fit as well as ones that lag."""
    half = math.ceil(fs * HALF_LENGTH_S)
    taps = 2 * half + 1
    n_fft = 1 << (8 * taps - 1).bit_length()
    from scipy.signal.windows import tukey  # here: shard readers import this module, not scipy.signal

    impulse = np.fft.irfft(response(np.fft.rfftfreq(n_fft, 1.0 / fs)), n_fft)
    return np.roll(impulse, half)[:taps] * tukey(taps, 0.5)


@functools.lru_cache(maxsize=32)
def radial_filters(order: int, fs: int, array: SphereArray = EM32_MIC) -> np.ndarray:
    """(order + 1, taps) ``centred_fir`` of w_0..w_order of ``array`` at ``fs``.

    Cached per (order, fs, array): every sample of a build shares them. Read-only, since the cache
    hands the same array to every caller.
    """
    to_kr = 2 * np.pi * array.radius_m / SPEED_OF_SOUND_M_S
    filters = np.stack(
        [
            centred_fir(lambda f, n=n: radial_weight(n, f * to_kr, array.rigid, array.omni), fs)
            for n in range(order + 1)
        ]
    )
    filters.setflags(write=False)
    return filters


def sum_filtered(terms: Sequence[tuple[np.ndarray, np.ndarray]]) -> np.ndarray:
    """sum_i fir_i * x_i as float32, each x_i (channels, samples) and each ``centred_fir`` (taps,)
    or (channels, taps) applied centred, so the output keeps the inputs' length and time zero. One
    inverse FFT for the whole sum."""
    n_samples = terms[0][0].shape[-1]
    taps = terms[0][1].shape[-1]
    n_fft = next_fast_len(n_samples + taps - 1, real=True)
    spectrum = sum(
        rfft(np.asarray(x, dtype=np.float32), n_fft, axis=-1) * rfft(np.asarray(fir, dtype=np.float32), n_fft)
        for x, fir in terms
    )
    half = taps // 2
    return irfft(spectrum, n_fft, axis=-1)[..., half : half + n_samples].astype(np.float32)


def capsule_render(scene: np.ndarray, fs: int, array: SphereArray, what: str) -> np.ndarray:
    """(N+1)^2 ambiX channels at ``fs`` -> (capsules, samples) float32, time-aligned with the scene:
    per degree n, the scene's degree-n channels projected on Y_nm(capsule) and filtered by w_n."""
    order = scene_order(scene, what)
    if isinstance(fs, bool) or not isinstance(fs, int | np.integer) or fs <= 0:
        raise MicArrayError(f"sample rate must be a positive integer in Hz, got {fs!r}")
    filters = radial_filters(order, int(fs), array)
    az, el = capsule_directions_deg(array)
    sh = real_sh_sn3d(order, np.radians(az), np.radians(el)).astype(np.float32)  # (channels, capsules)
    x = np.asarray(scene, dtype=np.float32)
    blocks = [slice(n * n, (n + 1) ** 2) for n in range(order + 1)]
    return sum_filtered([(sh[b].T @ x[b], filters[n]) for n, b in enumerate(blocks)])


class TetraMic:
    """DCASE MIC: em32 capsules 6, 10, 26, 22 on a rigid sphere (module docstring: the model)."""

    name = "mic"
    spatial = True
    level_channels = (0, 1, 2, 3)
    """All four capsules: one gain keeps the inter-capsule level and time differences."""

    def __init__(self, rigid: bool = True) -> None:
        self.array = SphereArray(RADIUS_M, EM32_MIC.directions_deg, rigid)
        self.identity = f"em32-tetra-{'rigid' if rigid else 'open'}/r{RADIUS_M}"

    def ambisonic_order(self, channels: int) -> int | None:
        if channels != len(CAPSULES):
            raise LayoutError(f"MIC audio has {len(CAPSULES)} channels, got {channels}")
        return None

    def render(self, scene: np.ndarray, fs: int) -> np.ndarray:
        """(N+1)^2 ambiX channels at ``fs`` -> (4, samples) float32, time-aligned with the scene."""
        return capsule_render(scene, fs, self.array, "the MIC renderer")


def scene_order(scene: np.ndarray, what: str) -> int:
    """The ambisonic order N of a (channels, samples) scene; LayoutError unless (N+1)^2 channels."""
    if np.ndim(scene) != 2:
        raise LayoutError(f"an ambiX scene is (channels, samples), got shape {np.shape(scene)}")
    channels = int(np.shape(scene)[0])
    order = order_of(channels, what)
    if order > MAX_ORDER:
        raise LayoutError(
            f"{what} needs an ambiX scene of (N+1)^2 channels with N <= {MAX_ORDER}, got {channels} channels"
        )
    return order
