"""Ambisonic room impulse responses for shoebox rooms, with measured labels.

Image sources come from pyroomacoustics' C++ engine; each image is encoded with real
spherical harmonics (ambiX ACN/SN3D) at its arrival direction in the receiver frame and laid
down with pyroomacoustics' windowed-sinc ``rir_builder`` per octave band. This is about 45x
faster than the library's spherical-harmonic microphone directivities and leaves W identical
to the library's omni RIR. Long reverberation caps the image order and continues with a
stochastic diffuse tail (SN3D diffuse field: each degree-n channel has 1/(2n+1) of W's energy),
and absorption is calibrated until the measured T30 hits the target.

Three options, all off by default (the ELSA render): a directional source (``SourceDirectivity``,
each image weighted by the pattern at its emission direction; ``MeasuredSourceDirectivity``, a
SOFA-measured pattern weighting each octave band on its own), surface scattering
(``RirSettings.scattering``, see ``specular_share`` and ``_early_diffuse``), and a diffuse field
that flows towards the absorbing surfaces (``RirSettings.tail_flow``, see ``tail_flow``).
"""

from __future__ import annotations

import functools
import math
from collections.abc import Callable
from dataclasses import asdict, dataclass
from functools import cache

import numpy as np
import pyroomacoustics as pra
from pyroomacoustics import libroom
from pyroomacoustics.parameters import constants
from pyroomacoustics.utilities import design_highpass_filter_sos
from scipy.optimize import brentq
from scipy.signal import ShortTimeFFT, sosfiltfilt
from scipy.signal.windows import hann

from schemas.rooms import OCTAVE_BANDS_HZ, SURFACES, IsmDetails, RirRecord, RirSettings, RoomSpec
from tasks import room_acoustics
from tasks.ambisonics import n_channels, real_sh_sn3d, unit_vector, vector_to_angles
from tasks.errors import InvalidRoomError, UnreachableT30Error
from tasks.measured_directivity import MeasuredDirectivity

ENGINE_VERSION = "ism-sh-tail/2"
MAX_ABSORPTION = 0.99
MIN_ABSORPTION = 1e-3
_TAIL_NFFT = 1024
_LN_1E6 = 6.0 * math.log(10.0)  # energy decay of 60 dB, in nepers


@dataclass(frozen=True)
class RenderedRir:
    """An ambisonic RIR (channels, samples) and how it was made."""

    rir: np.ndarray
    fs: int
    absorption_scale: float
    calibration_iterations: int
    ism_max_order: int
    azimuth_deg: float
    elevation_deg: float
    distance_m: float


# pyroomacoustics' analytic first-order family, p + (1 - p) cos(theta). p is read off the
# library's own patterns as their gain 90 degrees off axis (figure-eight 0, hypercardioid 0.25,
# cardioid 0.5, subcardioid 0.75, omni 1), so the coefficients are the library's.
_X, _Y = [1.0, 0.0, 0.0], np.array([[0.0, 1.0, 0.0]])
_PATTERNS: dict[str, float] = {
    name: float(pattern.get_response_cartesian(_Y)[0])
    for name, pattern in {
        "omni": pra.directivities.Omnidirectional(),
        "subcardioid": pra.directivities.SubCardioid(_X),
        "cardioid": pra.directivities.Cardioid(_X),
        "hypercardioid": pra.directivities.HyperCardioid(_X),
        "figure_eight": pra.directivities.FigureEight(_X),
    }.items()
}


@dataclass(frozen=True)
class SourceDirectivity:
    """A directional source: a pattern name of ``_PATTERNS`` and its main axis, world-frame
    (azimuth, elevation) in degrees (azimuth counter-clockwise from the room's +x)."""

    pattern: str
    axis_deg: tuple[float, float]

    def __post_init__(self) -> None:
        if self.pattern not in _PATTERNS:
            raise InvalidRoomError(f"unknown source pattern {self.pattern!r}; known: {sorted(_PATTERNS)}")
        if len(self.axis_deg) != 2 or not all(math.isfinite(a) for a in self.axis_deg):
            raise InvalidRoomError(f"source axis must be finite (azimuth, elevation), got {self.axis_deg}")

    @property
    def coefficient(self) -> float:
        """The library's p: the pattern's omni share (its gain 90 degrees off axis)."""
        return _PATTERNS[self.pattern]

    def gain(self, directions: np.ndarray) -> np.ndarray:
        """Signed pressure gain for emission directions (3, n) in the world frame (any length):
        the rear lobe of a hypercardioid or figure-eight is inverted, as the library has it."""
        axis = unit_vector(*self.axis_deg)
        d = np.asarray(directions, dtype=np.float64)
        p = self.coefficient
        return p + (1.0 - p) * (axis @ d) / np.linalg.norm(d, axis=0)


def source_frame(axis_deg: tuple[float, float]) -> np.ndarray:
    """Rotation (3, 3) whose rows are a source's own axes in the world frame: x its main axis at
    (azimuth, elevation), y to its left and level (no roll: a loudspeaker or a talker stands
    upright), z = x cross y, its up. ``source_frame(a) @ d`` is a world direction in its frame."""
    if len(axis_deg) != 2 or not all(math.isfinite(a) for a in axis_deg):
        raise InvalidRoomError(f"source axis must be finite (azimuth, elevation), got {axis_deg}")
    x = unit_vector(*axis_deg)
    y = unit_vector(axis_deg[0] + 90.0, 0.0)
    return np.stack([x, y, np.cross(x, y)])


@dataclass(frozen=True)
class MeasuredSourceDirectivity:
    """A source radiating as a measured pattern (tasks/measured_directivity.py), its main axis at
    world-frame (azimuth, elevation) in degrees; its gains are per octave band (n_bands, n)."""

    measured: MeasuredDirectivity
    axis_deg: tuple[float, float]

    def __post_init__(self) -> None:
        source_frame(self.axis_deg)

    def gain(self, directions: np.ndarray) -> np.ndarray:
        """Magnitude gains (n_bands, n) for emission directions (3, n) in the world frame."""
        return self.measured.gain(source_frame(self.axis_deg) @ np.asarray(directions, dtype=np.float64))


Directivity = SourceDirectivity | MeasuredSourceDirectivity
"""What the engine weights images with: the analytic family's one gain per direction, or a
measured pattern's gain per band and direction."""


@dataclass(frozen=True)
class _Images:
    times_s: np.ndarray  # arrival time of each visible image
    dist_m: np.ndarray
    amp: np.ndarray  # (n_bands, n_images): damping / distance * air absorption (* directivity)
    azimuth: np.ndarray  # radians, receiver frame
    elevation: np.ndarray
    orders: np.ndarray
    cells: np.ndarray  # (3, n_images): image-room index per axis (see image_cells)


def image_cells(images: np.ndarray, source: tuple[float, float, float], dims: tuple[float, float, float]
                ) -> np.ndarray:
    """Image-room index c per axis (3, n): the image lies in the mirrored room [cL, (c+1)L).

    Along one axis an image is at 2nL + x_s (even: c = 2n, reached by |c| reflections, none net
    mirroring) or at 2nL - x_s (odd: c = 2n - 1, mirrored). Matching both forms, rather than
    flooring x/L, stays exact when floating point puts an image a hair across a cell boundary.
    """
    x = np.asarray(images, dtype=np.float64).reshape(3, -1)
    s = np.asarray(source, dtype=np.float64)[:, None]
    two_l = 2.0 * np.asarray(dims, dtype=np.float64)[:, None]
    n_even, n_odd = np.rint((x - s) / two_l), np.rint((x + s) / two_l)
    odd = np.abs(x + s - n_odd * two_l) < np.abs(x - s - n_even * two_l)
    return np.where(odd, 2 * n_odd - 1, 2 * n_even).astype(np.int64)


def wall_hits(cells: np.ndarray) -> np.ndarray:
    """Reflections on each surface (6, n), in SURFACES order (low then high wall of x, y, z).

    Walking from the real room (c = 0) to cell c > 0 crosses planes L, 2L, ..., cL, which are
    alternately the high and the low wall: ceil(c/2) high and floor(c/2) low; c < 0 the reverse.
    """
    c = np.asarray(cells, dtype=np.int64)
    high = np.where(c > 0, (c + 1) // 2, (-c) // 2)
    low = np.where(c > 0, c // 2, (1 - c) // 2)
    return np.stack([low, high], axis=1).reshape(6, -1)


def emission_directions(images: np.ndarray, cells: np.ndarray, receiver: tuple[float, float, float]
                        ) -> np.ndarray:
    """Direction (3, n) in which the real source emitted the sound each image delivers.

    The image radiates towards the receiver; every mirroring in an axis flips that component,
    so the source's own direction has the component negated where the image is odd in that axis.
    """
    towards = np.asarray(receiver, dtype=np.float64)[:, None] - np.asarray(images).reshape(3, -1)
    return np.where(cells % 2 == 1, -towards, towards)


def specular_share(spec: RoomSpec, cells: np.ndarray) -> np.ndarray:
    """(n_bands, n) share of each image's energy still specular: prod over its reflections of
    (1 - s_wall,band). The rest was scattered (not absorbed) and re-enters as diffuse energy."""
    s = np.array([spec.surfaces[w].scattering for w in SURFACES])
    log_keep = np.log(np.clip(1.0 - s, 1e-12, 1.0))  # (6, n_bands)
    return np.exp(log_keep.T @ wall_hits(cells))


def validate_geometry(
    dims: tuple[float, float, float],
    receiver: tuple[float, float, float],
    source: tuple[float, float, float],
    clearance_m: float = 0.0,
) -> None:
    """Raise InvalidRoomError naming the problem if the room or a point in it is impossible."""
    d = np.asarray(dims, dtype=float)
    if d.shape != (3,) or not np.all(np.isfinite(d)) or np.any(d <= 0):
        raise InvalidRoomError(f"room dimensions must be three positive numbers, got {dims}")
    for name, p in (("receiver", receiver), ("source", source)):
        q = np.asarray(p, dtype=float)
        shown = tuple(float(v) for v in q)
        if q.shape != (3,) or not np.all(np.isfinite(q)):
            raise InvalidRoomError(f"{name} position must be three finite numbers, got {p}")
        if np.any(q < clearance_m) or np.any(q > d - clearance_m):
            raise InvalidRoomError(
                f"{name} at {shown} is outside the room {tuple(float(v) for v in d)}"
                + (f" (wall clearance {clearance_m} m)" if clearance_m else "")
            )
    if np.linalg.norm(np.subtract(source, receiver)) < 1e-3:
        raise InvalidRoomError("source and receiver coincide")


def relative_direction(
    receiver: tuple[float, float, float], yaw_deg: float, point: np.ndarray
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Azimuth, elevation (radians) and distance of point(s) (3, n) seen by a receiver facing yaw."""
    v = np.asarray(point, dtype=np.float64).reshape(3, -1) - np.asarray(receiver)[:, None]
    c, s = math.cos(math.radians(yaw_deg)), math.sin(math.radians(yaw_deg))
    local = np.stack([c * v[0] + s * v[1], -s * v[0] + c * v[1], v[2]])
    az_deg, el_deg = vector_to_angles(local)
    return np.radians(az_deg), np.radians(el_deg), np.linalg.norm(v, axis=0)


@cache
def air_absorption(fs: int = 48000) -> np.ndarray:
    """Air absorption per octave band (energy, 1/m), exactly as pyroomacoustics applies it."""
    coeffs = np.asarray(pra.ShoeBox([1.0, 1.0, 1.0], fs=fs, air_absorption=True).air_absorption)
    coeffs.setflags(write=False)
    return coeffs


SCALE_RANGE = (1e-3, 1e3)


def scaled_absorption(alpha: np.ndarray, scale: float) -> np.ndarray:
    """Absorption after calibration: the reflected energy 1 - alpha is raised to ``scale``.

    Scaling -ln(1 - alpha) rather than alpha moves every surface together, keeps alpha inside
    (0, 1) for any scale, and makes the Millington-Sette decay rate linear in the scale.
    """
    base = np.clip(np.asarray(alpha, dtype=np.float64), MIN_ABSORPTION, MAX_ABSORPTION)
    return np.clip(1.0 - (1.0 - base) ** scale, MIN_ABSORPTION, MAX_ABSORPTION)


def _absorption(spec: RoomSpec, scale: float) -> np.ndarray:
    """(6 surfaces, n_bands) absorption of the room at a calibration scale."""
    return scaled_absorption(np.array([spec.surfaces[s].absorption for s in SURFACES]), scale)


def _surface_areas(dims: tuple[float, float, float]) -> np.ndarray:
    lx, ly, lz = dims
    return np.array([ly * lz, ly * lz, lx * lz, lx * lz, lx * ly, lx * ly])


def decay_rates(spec: RoomSpec, scale: float, air: np.ndarray, c: float) -> np.ndarray:
    """Energy decay rate per band (1/s), Millington-Sette: the law the shoebox ISM follows."""
    alpha = _absorption(spec, scale)
    areas = _surface_areas(spec.dims_m)
    wall = -c / (4.0 * spec.volume_m3) * (areas[:, None] * np.log1p(-alpha)).sum(axis=0)
    return wall + air * c


def predicted_t30(spec: RoomSpec, scale: float, air: np.ndarray, c: float) -> float:
    """Full-band reverberation time predicted at mid frequencies (500 Hz and 1 kHz)."""
    k = decay_rates(spec, scale, air, c)
    mid = [OCTAVE_BANDS_HZ.index(500.0), OCTAVE_BANDS_HZ.index(1000.0)]
    return float(_LN_1E6 / k[mid].mean())


def _shoebox(
    spec: RoomSpec, scale: float, settings: RirSettings, max_order: int
) -> pra.ShoeBox:
    alpha = _absorption(spec, scale)
    materials = {
        name: pra.Material(
            energy_absorption={"coeffs": list(alpha[i]), "center_freqs": list(OCTAVE_BANDS_HZ)},
            scattering={
                "coeffs": spec.surfaces[name].scattering,
                "center_freqs": list(OCTAVE_BANDS_HZ),
            },
        )
        for i, name in enumerate(SURFACES)
    }
    return pra.ShoeBox(
        list(spec.dims_m),
        fs=settings.fs,
        materials=materials,
        max_order=max_order,
        air_absorption=settings.air_absorption,
    )


def _image_sources(
    room: pra.ShoeBox,
    receiver: tuple[float, float, float],
    yaw_deg: float,
    source: tuple[float, float, float],
    dims: tuple[float, float, float],
    directivity: Directivity | None = None,
) -> _Images:
    """Visible image sources with their per-band amplitudes and receiver-frame directions; a
    directional source weights each by its pattern at the image's emission direction."""
    room.add_source(list(source))
    room.add_microphone(list(receiver))
    room.image_source_model()
    src = room.sources[0]
    visible = room.visibility[0][0, :].astype(bool)
    images = src.images[:, visible]
    az, el, dist = relative_direction(receiver, yaw_deg, images)
    amp = src.damping[:, visible] / dist
    if room.air_absorption is not None:
        amp = amp * np.exp(-0.5 * np.asarray(room.air_absorption)[:, None] * dist)
    cells = image_cells(images, source, dims)
    if directivity is not None:
        # (n,) analytic or (n_bands, n) measured gains: both broadcast over amp's (n_bands, n)
        amp = amp * directivity.gain(emission_directions(images, cells, receiver))
    return _Images(dist / room.c, dist, amp, az, el, src.orders[visible], cells)


def _lay_down(
    times_s: np.ndarray,
    amp: np.ndarray,
    gains: np.ndarray,
    room: pra.ShoeBox,
    n_samples: int,
) -> np.ndarray:
    """Channels (C, n_samples) from images: sinc fractional delays per band, then band filters.

    Mirrors pyroomacoustics' own omni path (same delays, same float32 rounding, same buffer
    length, the high-pass applied to this part alone), so W equals the library's RIR.
    """
    fs = room.fs
    fdl = constants.get("frac_delay_length")
    lut = constants.get("sinc_lut_granularity")
    threads = constants.get("num_threads")
    t = (times_s + (fdl // 2) / fs).astype(np.float32)
    out = np.zeros((gains.shape[0], n_samples), dtype=np.float32)
    if t.size == 0:
        return out
    # Same buffer length as the library: the band filters see the same signal, so W matches.
    n_build = math.ceil(float(t.max()) * fs + fdl // 2 + 1) + 1
    n_bands = amp.shape[0]
    ism = np.zeros((gains.shape[0], n_build), dtype=np.float32)
    for b in range(n_bands):
        band = np.zeros((gains.shape[0], n_build), dtype=np.float32)
        for ch in range(gains.shape[0]):
            libroom.rir_builder(
                band[ch], t, (amp[b] * gains[ch]).astype(np.float32), fs, fdl, lut, threads
            )
        if n_bands > 1:
            band = room.octave_bands.analysis(band, band=b)
        ism[:] += band
    ism = _highpass(ism, fs)
    n = min(n_build, n_samples)
    out[:, :n] = ism[:, :n]
    return out


def _highpass(x: np.ndarray, fs: int) -> np.ndarray:
    """pyroomacoustics' RIR high-pass (zero-phase), when the library has it enabled.

    Applied to the image-source part and to the tail separately: the image-source part carries
    a DC offset that the zero-mean tail does not continue, and filtering the sum would smear
    that step backwards into the early reflections.
    """
    if not constants.get("rir_hpf_enable"):
        return x
    sos = design_highpass_filter_sos(fs, constants.get("rir_hpf_fc"), **constants.get("rir_hpf_kwargs"))
    return sosfiltfilt(sos, x, axis=-1).astype(np.float32)


_MAX_FLOW = 0.5  # tail_flow's cap on the flow's length (a dipole carries at most 1/sqrt(3) per axis)


def tail_flow(
    spec: RoomSpec, scale: float, receiver: tuple[float, float, float], yaw_deg: float
) -> np.ndarray:
    """(3, n_bands) net direction the diffuse field arrives from at the receiver (x, y, z of the
    receiver frame): E[W (X, Y, Z)] / E[W^2], in units where a plane wave has length 1.

    A real late field is not isotropic: energy flows from the reflecting surfaces into the
    absorbing ones (measured in S3A's churches: |flow| 0.10-0.17, from above, onto an absorbing
    floor). The acoustic diffusion model of the late field (Picaut et al. 1997, Valeau et al. 2006)
    gives that flow: the field decays uniformly, so along each axis the flux is linear between the
    two opposite surfaces, each taking c w A of it with A = -ln(1 - alpha) / 4 (the Millington-Sette
    exchange of ``decay_rates``, so the surfaces together take exactly the energy the tail loses).
    At p on an axis of length L the energy arrives along it with strength A_lo - (p / L)(A_lo + A_hi)
    (positive: from the high wall's side), away from the reflecting surface into the absorbing one,
    most strongly close to the absorber. At the room's centre this is (A_lo - A_hi) / 2, close to what
    specular images give: averaged over directions, an image an odd number of reflections deep keeps
    r = (1 - alpha_hi) / (1 - alpha_lo) times more energy on the reflecting side, a net flow of
    tanh(ln(r) / 4) / 2 (0.106 against 0.108 for alpha 0.6 below and 0.05 above). Its length is
    capped at 0.5 (near a surface absorbing almost everything the model grows past what a dipole
    can carry, 1/sqrt(3) per axis), which bounds every component in any frame, so the cap does
    not depend on the receiver's yaw.
    """
    exchange = -np.log1p(-_absorption(spec, scale)) / 4.0  # (6, n_bands), walls lo/hi per axis
    share = (np.asarray(receiver, dtype=np.float64) / np.asarray(spec.dims_m))[:, None]
    room = exchange[0::2] - share * (exchange[0::2] + exchange[1::2])
    room *= np.minimum(1.0, _MAX_FLOW / np.maximum(np.linalg.norm(room, axis=0), 1e-12))
    c, s = math.cos(math.radians(yaw_deg)), math.sin(math.radians(yaw_deg))
    return np.stack([c * room[0] + s * room[1], -s * room[0] + c * room[1], room[2]])


# ACN channel -> its axis in tail_flow's (x, y, z): Y, Z, X.
_DIPOLE_AXIS = {1: 1, 2: 2, 3: 0}


def _shaped_noise(
    n: int, fs: int, gain: Callable[[np.ndarray, np.ndarray], np.ndarray], seed: list[int],
    channels: list[int], flow: np.ndarray | None = None,
) -> np.ndarray:
    """(C, n) diffuse noise whose STFT is scaled by gain(log2 frequency, frame time from 0).

    Shaping in the STFT domain costs one STFT pair per channel instead of a filter bank over
    seconds of signal. Each channel gets its own noise (stream ``[*seed, ch]``); degree-n
    channels carry 1/(2n+1) of W's energy, the SN3D diffuse field. ``flow`` (``tail_flow``'s
    (3, n_bands)) mixes W's noise into each dipole, a * W + sqrt(1/3 - a^2) * its own: E[W X] =
    a E[W^2] while X keeps 1/3 of W's energy, so W, and with it the calibrated T30, is unchanged.
    Channels of degree 2 and up stay isotropic.
    """
    stft = ShortTimeFFT(hann(_TAIL_NFFT, sym=False), _TAIL_NFFT // 4, fs)
    octave = np.log2(np.maximum(stft.f, OCTAVE_BANDS_HZ[0]))
    g = gain(octave, np.clip(stft.t(n), 0.0, None))
    w_spec = None
    if flow is not None and any(ch in _DIPOLE_AXIS for ch in channels):
        w_spec = stft.stft(np.random.default_rng([*seed, 0]).standard_normal(n))
    out = np.empty((len(channels), n))
    for row, ch in enumerate(channels):
        rng = np.random.default_rng([*seed, ch])
        bins = stft.stft(rng.standard_normal(n) / math.sqrt(2 * math.isqrt(ch) + 1))
        if w_spec is not None and ch in _DIPOLE_AXIS:
            a = np.interp(octave, np.log2(OCTAVE_BANDS_HZ), flow[_DIPOLE_AXIS[ch]])[:, None]
            bins = np.sqrt(1.0 - 3.0 * a**2) * bins + a * w_spec
        out[row] = stft.istft(bins * g, k1=n)
    return out


def _late_tail(
    k: np.ndarray,
    level: np.ndarray,
    t_start: float,
    n_samples: int,
    fs: int,
    fade_s: float,
    seed: int,
    channels: list[int],
    flow: np.ndarray | None = None,
) -> np.ndarray:
    """Diffuse tail from t_start on: noise decaying at the band rates k from energy `level`
    (band values interpolated over log-frequency), flowing as ``flow`` (None: isotropic)."""
    i0 = round(t_start * fs) + constants.get("frac_delay_length") // 2
    out = np.zeros((len(channels), n_samples), dtype=np.float32)
    if i0 >= n_samples:
        return out
    n = n_samples - i0
    centres = np.log2(OCTAVE_BANDS_HZ)
    log_level = np.log(np.maximum(level, 1e-30))

    def gain(octave: np.ndarray, t: np.ndarray) -> np.ndarray:
        k_f = np.interp(octave, centres, k)
        log_level_f = np.interp(octave, centres, log_level)
        return np.exp(0.5 * (log_level_f[:, None] - k_f[:, None] * t[None, :])) / math.sqrt(fs)

    n_fade = max(1, round(fade_s * fs))
    fade = np.ones(n)
    fade[:n_fade] = np.sin(0.5 * np.pi * (np.arange(n_fade) + 0.5) / n_fade) ** 2
    out[:, i0:] = _shaped_noise(n, fs, gain, [seed], channels, flow) * fade
    return out


def scattered_share_rate(spec: RoomSpec, c: float) -> np.ndarray:
    """Per band rate r <= 0 (1/s): of the energy arriving t seconds after emission, the share
    exp(r t) is still specular and 1 - exp(r t) has been scattered.

    A ray travelling c t metres hits each wall of axis i about c t / (4 L_i) times (direction
    averaged: E|u_i| = 1/2, one wall in two); each hit keeps 1 - s of the specular energy.
    Summed over the six walls the hits are c t S / 4V, Kuttruff's mean reflection rate.
    """
    s = np.array([spec.surfaces[w].scattering for w in SURFACES])
    log_keep = np.log(np.clip(1.0 - s, 1e-12, 1.0))  # (6, n_bands)
    per_m = np.repeat(1.0 / (4.0 * np.asarray(spec.dims_m)), 2)  # hits per metre of path, per wall
    return c * (per_m[:, None] * log_keep).sum(axis=0)


def _early_diffuse(
    spec: RoomSpec,
    k: np.ndarray,
    level: np.ndarray,
    t_first: float,
    tail_from: float,
    c: float,
    n_samples: int,
    settings: RirSettings,
    channels: list[int],
    flow: np.ndarray | None = None,
) -> np.ndarray:
    """The scattered energy of the image sources, as diffuse noise from the first reflection on
    (flowing as ``flow``, like the late tail it joins).

    Energy model (Kuttruff, "Room Acoustics", ch. 4 on diffuse reflection; the "diffuse rain" of
    hybrid image-source / ray-tracing renderers, e.g. Heinz 1993, Schroeder 2011): scattering
    does not absorb, it moves energy from the specular path into a diffuse field. Each image keeps
    ``specular_share`` of its energy; the rest reappears here as noise whose energy rate is the
    scattered share 1 - exp(r t) (``scattered_share_rate``) of the reflections' smooth decay
    level * exp(-k (t - tail_from)), the very decay the late tail continues. The sum of the two
    parts follows the decay of the specular-only render, so the calibrated T30 is unchanged; what
    changes is the early part: weaker discrete reflections, diffuse energy before the mixing time.
    It fades out with the images' crossfade, where the late tail (the whole field) takes over.
    """
    fs, fdl = settings.fs, constants.get("frac_delay_length")
    i0 = round(t_first * fs) + fdl // 2
    i1 = min(round(tail_from * fs) + fdl // 2, n_samples)
    out = np.zeros((len(channels), n_samples), dtype=np.float32)
    if i1 <= i0:
        return out
    centres = np.log2(OCTAVE_BANDS_HZ)
    log_level = np.log(np.maximum(level, 1e-30))
    rate = scattered_share_rate(spec, c)

    def gain(octave: np.ndarray, t: np.ndarray) -> np.ndarray:
        t_abs = t_first + t
        k_f = np.interp(octave, centres, k)[:, None]
        share = -np.expm1(np.interp(octave, centres, rate)[:, None] * t_abs[None, :])
        energy = np.interp(octave, centres, log_level)[:, None] - k_f * (t_abs - tail_from)[None, :]
        return np.sqrt(share * np.exp(energy) / fs)

    t = t_first + np.arange(i1 - i0) / fs
    fade = settings.crossfade_s
    x = np.clip((tail_from - t) / max(fade, 1e-9), 0.0, 1.0)
    weight = np.where(t > tail_from - fade, np.sin(0.5 * np.pi * x) ** 2, 1.0)
    out[:, i0:i1] = _shaped_noise(i1 - i0, fs, gain, [settings.seed, 1], channels, flow) * weight
    return out


def tail_start_s(times_s: np.ndarray, orders: np.ndarray, volume_m3: float, settings: RirSettings) -> float:
    """When the diffuse tail takes over from the image sources.

    Images are complete up to the nearest image of the highest order computed; past the mixing
    time (2*sqrt(V) ms after the direct sound by default) the field is treated as diffuse anyway,
    so the tail starts at the earlier of the two. Without the mixing time, large damped rooms keep
    a few strong axial reflections whose stepped decay no T30 fit can describe.
    """
    complete = float(times_s[orders == orders.max()].min())
    mixing = max(settings.min_mixing_time_s, settings.mixing_ms_per_sqrt_m3 * 1e-3 * math.sqrt(volume_m3))
    return min(complete, float(times_s.min()) + mixing)


def _render_channels(
    spec: RoomSpec,
    receiver: tuple[float, float, float],
    yaw_deg: float,
    source: tuple[float, float, float],
    settings: RirSettings,
    scale: float,
    channels: list[int],
    anechoic: bool,
    early_window_s: float | None = None,
    directivity: Directivity | None = None,
) -> tuple[np.ndarray, int]:
    """Render the given ACN channels at one absorption scale; returns (C, N) and the ISM order.
    ``early_window_s``: only the first samples of that RIR, up to that long after the direct sound
    (the same images, crossfade and tail noise as the whole RIR there; the tail's shaping and the
    high-pass see the shorter buffer, which moves only its last milliseconds)."""
    max_order = 0 if anechoic else settings.max_ism_order
    room = _shoebox(spec, scale, settings, max_order)
    img = _image_sources(room, receiver, yaw_deg, source, spec.dims_m, directivity)
    fs = settings.fs
    direct_s = float(img.times_s.min())
    length_s = direct_s + 0.05 if anechoic else direct_s + settings.length_factor * spec.target_t30_s
    n_samples = math.ceil(length_s * fs) + constants.get("frac_delay_length")

    keep = np.ones(img.times_s.size, dtype=bool)
    weight = np.ones(img.times_s.size)
    tail_from: float | None = None
    if settings.late_tail and not anechoic and max_order > 0:
        t_complete = tail_start_s(img.times_s, img.orders, spec.volume_m3, settings)
        if t_complete < length_s:
            tail_from = t_complete
            keep = img.times_s < t_complete
            fade = settings.crossfade_s
            x = np.clip((t_complete - img.times_s) / max(fade, 1e-9), 0.0, 1.0)
            weight = np.where(img.times_s > t_complete - fade, np.sin(0.5 * np.pi * x) ** 2, 1.0)

    if early_window_s is not None and not anechoic:
        length_s = min(length_s, direct_s + early_window_s)
        n_samples = math.ceil(length_s * fs) + constants.get("frac_delay_length")
        keep &= img.times_s < length_s
    sh = real_sh_sn3d(settings.order, img.azimuth, img.elevation)[channels]
    amp = img.amp * weight[None, :]
    # Scattering needs the diffuse part that takes the scattered energy: without a tail, none.
    scattering = settings.scattering and tail_from is not None
    if scattering:
        amp = amp * np.sqrt(specular_share(spec, img.cells))
    rir = _lay_down(img.times_s[keep], amp[:, keep], sh[:, keep], room, n_samples)

    if tail_from is not None:
        air = np.asarray(room.air_absorption) if room.air_absorption is not None else 0.0
        k = decay_rates(spec, scale, np.broadcast_to(air, (len(OCTAVE_BANDS_HZ),)), room.c)
        # Energy rate at tail_from that explains every reflection before it under decay k.
        window = tail_from - direct_s - 0.001
        sel = (img.times_s > direct_s + 0.001) & (img.times_s < tail_from)
        integral = (np.exp(k * window) - 1.0) / k
        level = (img.amp[:, sel] ** 2).sum(axis=1) / integral
        flow = tail_flow(spec, scale, receiver, yaw_deg) if settings.tail_flow else None
        diffuse = _late_tail(k, level, tail_from, n_samples, fs, settings.crossfade_s, settings.seed,
                             channels, flow)
        if scattering:
            t_first = float(img.times_s[img.orders > 0].min())
            diffuse += _early_diffuse(spec, k, level, t_first, tail_from, room.c, n_samples, settings,
                                      channels, flow)
        rir += _highpass(diffuse, fs)

    return np.ascontiguousarray(rir, dtype=np.float32), int(img.orders.max())


def check_reachable(spec: RoomSpec, settings: RirSettings, air: np.ndarray, c: float) -> None:
    """Raise UnreachableT30Error when no physical absorption scaling gives the target T30."""
    target = spec.target_t30_s
    if target > settings.max_t30_s:
        raise UnreachableT30Error(
            f"target T30 {target:.3f} s exceeds the render limit {settings.max_t30_s} s"
        )
    t_min = predicted_t30(spec, SCALE_RANGE[1], air, c)
    t_max = predicted_t30(spec, SCALE_RANGE[0], air, c)
    if not 0.8 * t_min <= target <= 1.25 * t_max:
        raise UnreachableT30Error(
            f"target T30 {target:.3f} s is outside what this room can reach "
            f"({t_min:.3f}..{t_max:.3f} s for absorption {MIN_ABSORPTION}..{MAX_ABSORPTION})"
        )


def render_rir(
    spec: RoomSpec,
    receiver: tuple[float, float, float],
    source: tuple[float, float, float],
    yaw_deg: float = 0.0,
    settings: RirSettings | None = None,
    anechoic: bool = False,
    early_window_s: float | None = None,
    calibrate_at: tuple[float, float, float] | None = None,
    directivity: Directivity | None = None,
) -> RenderedRir:
    """Render a calibrated ambisonic RIR (ACN/SN3D) for one source and receiver.

    ``early_window_s``: only the direct sound and the reflections arriving within that long after
    it, at the calibrated absorption (calibration renders W alone; the early part is then cheap:
    no late tail, images up to the window). For the points of a moving source, whose late part the
    scene renderer takes from one whole RIR: at the room's uncalibrated absorption instead, the
    early reflections' strength differed enough to move frame directions by ~2 deg.
    ``calibrate_at``: take the absorption calibrated for a source there instead (the path's first
    point: every point of a path then shares the absorption of the RIR whose late part it uses, and
    the calibration, the costly part of an early part, runs once per path and process).
    ``directivity``: a directional source (None: omni); the calibration sees it too, since the
    pattern shifts energy between the direct sound, the early reflections and the tail.
    """
    settings = settings or RirSettings()
    validate_geometry(spec.dims_m, receiver, source)
    az, el, dist = relative_direction(receiver, yaw_deg, np.asarray(source, dtype=float))
    all_channels = list(range(n_channels(settings.order)))
    scale, iterations = 1.0, 0
    w: np.ndarray | None = None
    if settings.calibrate and not anechoic:
        c = pra.constants.get("c")
        air = air_absorption(settings.fs) if settings.air_absorption else np.zeros(len(OCTAVE_BANDS_HZ))
        check_reachable(spec, settings, air, c)
        if calibrate_at is None:
            scale, iterations, w = _calibrate(spec, receiver, yaw_deg, source, settings, air, c, directivity)
        else:
            validate_geometry(spec.dims_m, receiver, calibrate_at)
            room_json = spec.model_dump_json(exclude=set(RoomSpec.model_computed_fields))
            scale, iterations = _calibrated_scale(room_json, tuple(receiver), yaw_deg, tuple(calibrate_at),
                                                  settings.model_dump_json(), directivity)
    if early_window_s is not None:
        rir, ism_order = _render_channels(
            spec, receiver, yaw_deg, source, settings, scale, all_channels, anechoic, early_window_s,
            directivity,
        )
    elif w is None:
        rir, ism_order = _render_channels(
            spec, receiver, yaw_deg, source, settings, scale, all_channels, anechoic, directivity=directivity
        )
    else:
        rest, ism_order = _render_channels(
            spec, receiver, yaw_deg, source, settings, scale, all_channels[1:], anechoic,
            directivity=directivity,
        )
        rir = np.concatenate([w, rest]) if rest.size else w
    return RenderedRir(
        rir=rir,
        fs=settings.fs,
        absorption_scale=scale,
        calibration_iterations=iterations,
        ism_max_order=ism_order,
        azimuth_deg=float(np.degrees(az[0])),
        elevation_deg=float(np.degrees(el[0])),
        distance_m=float(dist[0]),
    )


@functools.lru_cache(maxsize=256)
def _calibrated_scale(
    spec_json: str, receiver: tuple[float, float, float], yaw_deg: float, source: tuple[float, float, float],
    settings_json: str,
    directivity: Directivity | None = None,
) -> tuple[float, int]:
    """_calibrate's absorption scale and iterations for a source position, memoised per process
    (keys are the frozen inputs as JSON): the points of one path ask for their first point's."""
    spec, settings = RoomSpec.model_validate_json(spec_json), RirSettings.model_validate_json(settings_json)
    c = pra.constants.get("c")
    air = air_absorption(settings.fs) if settings.air_absorption else np.zeros(len(OCTAVE_BANDS_HZ))
    scale, iterations, _ = _calibrate(spec, receiver, yaw_deg, source, settings, air, c, directivity)
    return scale, iterations


def _calibrate(
    spec: RoomSpec,
    receiver: tuple[float, float, float],
    yaw_deg: float,
    source: tuple[float, float, float],
    settings: RirSettings,
    air: np.ndarray,
    c: float,
    directivity: Directivity | None = None,
) -> tuple[float, int, np.ndarray]:
    """Scale absorption until the W channel's measured T30 is within tolerance of the target.

    The first step trusts the Millington-Sette model up to the measured/predicted ratio; later
    steps use the measurements (see _next_scale), which also handles rooms whose image-source
    decay departs from the model (strongly uneven absorption, grazing axial paths).
    """
    target = spec.target_t30_s
    lo, hi = SCALE_RANGE
    history: list[tuple[float, float]] = []
    best: tuple[float, float, np.ndarray] | None = None
    scale = 1.0
    for it in range(1, settings.calibration_max_iter + 1):
        w, _ = _render_channels(spec, receiver, yaw_deg, source, settings, scale, [0], False,
                                directivity=directivity)
        measured = room_acoustics.t30(w[0], settings.fs)
        err = abs(measured / target - 1.0)
        if best is None or err < best[0]:
            best = (err, scale, w)
        if err <= settings.calibration_rel_tol:
            return scale, it, w
        history.append((math.log(scale), math.log(measured)))
        new = _next_scale(history, math.log(target))
        if new is None:
            new = _model_step(spec, scale, measured, target, air, c)
        if (new <= lo and measured < target) or (new >= hi and measured > target):
            raise UnreachableT30Error(
                f"target T30 {target:.3f} s cannot be reached (measured {measured:.3f} s at the "
                f"absorption limit)"
            )
        scale = min(max(new, lo), hi)
    assert best is not None
    if best[0] > settings.calibration_fail_tol:
        raise UnreachableT30Error(
            f"target T30 {target:.3f} s not reached in {settings.calibration_max_iter} renders "
            f"(closest {best[0]:.0%} off): the decay of this room cannot be steered there"
        )
    return best[1], settings.calibration_max_iter, best[2]


def _next_scale(history: list[tuple[float, float]], log_target: float) -> float | None:
    """Next scale from the measurements so far, or None when they say too little.

    Once one measurement lies on each side of the target, interpolate inside the tightest
    bracket (kept at least 10% away from its ends, so the bracket always shrinks): T30 against
    scale can fall steeply where the direct sound starts to dominate the decay curve, and a
    bracket cannot overshoot that cliff the way a secant can. Before that, a secant on the last
    two points when T30 falls with scale as it should.
    """
    above = [h for h in history if h[1] > log_target]
    below = [h for h in history if h[1] <= log_target]
    if above and below:
        (sa, ta) = min(above, key=lambda h: h[1])
        (sb, tb) = max(below, key=lambda h: h[1])
        frac = min(max((log_target - ta) / (tb - ta), 0.1), 0.9) if tb != ta else 0.5
        return math.exp(sa + frac * (sb - sa))
    if len(history) >= 2:
        (s0, t0), (s1, t1) = history[-2], history[-1]
        slope = (t1 - t0) / (s1 - s0) if s1 != s0 else 0.0
        if slope < -0.05:
            return math.exp(s1 + (log_target - t1) / slope)
    return None


def _model_step(
    spec: RoomSpec, scale: float, measured: float, target: float, air: np.ndarray, c: float
) -> float:
    """Next scale from the model, corrected by the measured/predicted ratio.

    Where the corrected model cannot reach the target (all surfaces near the absorption limit
    while the measured decay is still slower), step as if T30 were inversely proportional to
    the scale, which the Millington-Sette rate is without air absorption.
    """
    wanted = target * predicted_t30(spec, scale, air, c) / measured
    lo, hi = SCALE_RANGE

    def f(x: float) -> float:
        return predicted_t30(spec, x, air, c) - wanted

    if f(lo) * f(hi) > 0:
        return scale * measured / target
    return float(brentq(f, lo, hi, xtol=1e-9))


def measure(rendered: RenderedRir, *, placement_id: str, room_id: str, room_set_hash: str,
            target_t30_s: float, order: int, anechoic: bool = False,
            early_window_s: float | None = None, decay_below_hz: float | None = None) -> RirRecord:
    """The record of a rendered shoebox RIR: the common measures plus the ISM sub-record (an early
    part alone has no decay: no T30/EDT, and its DRR and C50 are of that part)."""
    m = room_acoustics.measure_response(
        rendered.rir, rendered.fs, rendered.azimuth_deg, rendered.elevation_deg,
        anechoic=anechoic or early_window_s is not None, decay_below_hz=decay_below_hz,
    )
    return RirRecord(
        placement_id=placement_id,
        room_id=room_id,
        room_set_hash=room_set_hash,
        method="ism",
        fs=rendered.fs,
        order=order,
        n_samples=int(rendered.rir.shape[1]),
        azimuth_deg=rendered.azimuth_deg,
        elevation_deg=rendered.elevation_deg,
        distance_m=rendered.distance_m,
        engine_version=ENGINE_VERSION,
        ism=IsmDetails(
            ism_max_order=rendered.ism_max_order,
            absorption_scale=rendered.absorption_scale,
            calibration_iterations=rendered.calibration_iterations,
            target_t30_s=target_t30_s,
            early_window_s=early_window_s,
        ),
        **asdict(m),
    )
