"""The capture chain of a real tetrahedral FOA microphone (Soundfield-like), simulated from the
ambiX scene: format ``tetra``, first-order B-format (ambiX W, Y, Z, X, SN3D) as such a microphone
delivers it, spatial aliasing included.

Why: a model trained on ideal B-format meets real recordings whose first order is ideal only
below a few kHz. Above it the four capsules' spacing aliases the scene's higher degrees into
W, X, Y, Z; this renderer reproduces that, so a build can train on what a microphone records.

Model (Gerzon 1975, "The design of precisely coincident microphone arrays for stereo and surround
sound", 50th AES Convention, preprint L-20; Craven & Gerzon, US patent 4,042,779 (1977); Farrar
1979, "Soundfield microphone", Wireless World 85):

- Four capsules on an OPEN sphere (free field, no baffle) of radius R = 1.47 cm, facing outwards
  along the regular tetrahedron FLU, FRD, BLD, BRU: (azimuth, elevation) (45, 35.26),
  (-45, -35.26), (135, -35.26), (-135, 35.26) in this project's convention (+azimuth = left), that
  is the unit vectors (1, 1, 1), (1, -1, -1), (-1, 1, -1), (-1, -1, 1) over sqrt(3).
- Each capsule first order, pattern g(t) = a + (1 - a) t of t = cos(angle to its axis), a = 0.5
  (cardioid) by default; matched, noiseless, frequency-independent.
- A plane wave from u reaches capsule q as g(u . v_q) e^{i kR u . v_q} (numpy's FFT time
  convention, x(t) = sum X(f) e^{+i 2 pi f t}: a capsule nearer the source hears it earlier).
  Per degree n its weight is w_n(kR) = (2n+1) i^n (a j_n(kR) - i (1 - a) j_n'(kR))
  (tasks.mic_array.radial_weight derives it; tests/test_capture_chain.py checks it against the
  direct formula summed to degree 40), and the capsule signal is the scene's degree-n channels
  projected on Y_nm(v_q), filtered by w_n and summed over n <= N (tasks.mic_array.capsule_render).

A -> B (``a_to_b``, usable on a real A-format recording with the same geometry):

- Matrix. W' = A + B + C + D, X' = A + B - C - D, Y' = A - B + C - D, Z' = A - B - C + D for
  capsules A..D = FLU, FRD, BLD, BRU. At kR -> 0 a capsule is g(u . v_q), the sum of the v_q is 0
  and (X', Y', Z') = 4 (1 - a) / sqrt(3) (x, y, z), so W = W' / (4 a) and
  (X, Y, Z) = sqrt(3) (X', Y', Z') / (4 (1 - a)) are exactly SN3D at low frequency.
- Spacing equalisation (Gerzon's, designed here from the array's exact on-axis response instead of
  his series in kR). For a plane wave from the front, u . v_q = +-1/sqrt(3); with
  phi = kR / sqrt(3) the matrixed outputs are exactly
      W = cos(phi) + i (1 - a) / (sqrt(3) a) sin(phi),     X = cos(phi) + i sqrt(3) a / (1 - a) sin(phi),
  and Y, Z on their own axes equal X on its own (the tetrahedron is invariant under cyclic
  permutation of x, y, z). The filters are their inverses, 1/W for W and 1/X for X, Y, Z, as
  linear-phase FIRs (tasks.mic_array.centred_fir). For 0 < a < 1 neither response has a zero
  (|W| >= min(1, beta), the same for X), so the inverses are bounded. The on-axis response is
  then flat at every frequency; off axis the first order is exact up to O(kR): W holds no degree
  1 or 2 (a tetrahedron is a spherical 2-design), but X, Y, Z pick up the degree-2 products yz, xz,
  xy in quadrature at O(kR) (a gradient capsule's degree 2 starts at (kR)^1), which is what bends
  their magnitude and, at O(kR)^2, the intensity direction.

Measured (tests/test_capture_chain.py, 48 kHz, a = 0.5, 200 directions on a Fibonacci sphere;
"theory" is the direct plane-wave formula through the same A -> B, every degree, no truncation):

- Below aliasing the B-format is first order. Band-integrated over 200 Hz-2 kHz, first-order
  channels of at least half W's level are within 0.5 dB of SN3D and the intensity direction within
  1.7 deg. The error grows as (kR)^2: mean direction error 0.8 deg at 1 kHz, 2.7 deg at 2 kHz,
  7.4 deg at 4 kHz (third octaves); per octave the 1 dB / 3 deg claim holds for every direction up
  to the 1 kHz octave (1.4 kHz) and not in the 2 kHz one (worst 1.3 dB, 4.7 deg).
- Above it the dipole / W power ratio over the sphere (1 for ideal SN3D) is 1.00 up to 6.3 kHz,
  then 1.05 (8 kHz), 1.25 (10 kHz), 1.88 (12.5 kHz), 2.53 (14 kHz), 3.92 (16 kHz), and the mean
  direction error 11 deg at 8 kHz, 19-44 deg at 10-16 kHz. Real Soundfields reach dipole / W
  2.2-2.6 and 30-35 deg from 8 kHz: their capsules are not ideal first-order points and their
  acoustic centres lie further out, so they alias lower than this model.
- Truncation. The scene holds degrees <= N only, so the capsules receive the series cut at N and
  miss the aliasing of the higher degrees. From an order-3 scene the B-format equals theory
  within 0.02 (W = 1) up to kR = 1 (3.7 kHz) and 0.06 up to kR = 1.5 (5.6 kHz), but 0.15 at kR = 2
  and 0.5 at kR = 3. Band quantities hold further: the dipole / W ratio within 3 % of theory to
  14 kHz (kR 3.8; 11 % at 16 kHz), the mean direction error within 1 deg to the 8 kHz octave,
  then below theory (25 vs 37 deg at 12.5 kHz): the render is better than the microphone above
  kR ~ 2. An order-1 scene has no aliasing at all (direction exact) and too little dipole power
  (ratio 0.93 at 2 kHz, 0.81 at 4-8 kHz: the equalisation restores degrees it does not hold).
  Order 3 is the order to use.
  (These figures are of the matched model, IDEAL_SOUNDFIELD: its equaliser knows its radius.)

Calibration (issue 15; tests/test_capture_chain_realdata.py). S3A's 50 measured Soundfield RIRs
(../shared/realdata, three rooms), direct path (-0.5..+2 ms around the first arrival), medians per
third octave: dipole / W 1.06 (1 kHz), 1.10 (2 kHz), 1.42 (3.15 kHz), 1.91 (4 kHz), 2.46 (5 kHz),
3.23 (6.3 kHz), 3.09 (8 kHz), 2.97 (10 kHz), 2.03 (12.5 kHz), 1.64 (14 kHz), 1.79 (16 kHz); DOA
error 8-10 deg up to 6.3 kHz (a floor of label and alignment error: no tetrahedron aliases at
1 kHz), 21 deg at 8 kHz, 30-35 deg at 10-16 kHz. The matched model is flat to 6 kHz (rms log2 of
its dipole / W against the real one, 1-16 kHz: 0.91). The real dipole power rises an octave before
its direction goes wrong, so the two have different causes: aliasing turns the direction, while a
spacing equalisation that is too weak for the capsules' acoustic spacing raises X, Y, Z against W
without turning anything (the same filter on X, Y and Z). Soundfield processors approximate the
correction (Faller & Kolundzija, "Design and limitations of non-coincidence correction filters
for soundfield microphones", AES convention paper, 2009), and a capsule's acoustic centre lies further out
than its geometric one (E. Benjamin on the sursound list: r = l + 0.2887 d for cylinders; 1.47 cm for
the Mk IV/V in the literature, 1.77-2.71 cm measured on other tetrahedral mics). The model
therefore has ``equalised_radius_m``, the radius a_to_b's equaliser is designed for. Fitted (grid,
then Nelder-Mead on rms log2 dipole / W over 1-16 kHz plus rms DOA error over 2-16 kHz / 10 deg,
the model's error added in quadrature to the real floor; every degree, at S3A's label directions):
acoustic radius 1.60 cm, equaliser radius 1.06 cm, cardioid (a = 0.49, rounded to 0.5); S3A_SOUNDFIELD,
the ``tetra`` default. Its rms log2 dipole / W misfit is 0.24 (worst 0.68x at 6.3 kHz) and its DOA
error is within 9 deg of the real one at 8-16 kHz (rms 4.5 deg; the matched model 6.6 deg). The
published 1.47 cm with a 0.97 cm equaliser fits almost as well (rms 0.30): the data fix the
mismatch better than the radius. Order-3 renders hold the calibration to 10 kHz (dipole / W within
a factor 1.5, DOA within 8.5 deg); above, truncation makes their dipole / W 2-3 times the real one.
"""

from __future__ import annotations

import functools
import hashlib
import json
import math

import numpy as np
from pydantic import BaseModel, ConfigDict, Field

from schemas.scenes import SPEED_OF_SOUND_M_S
from schemas.shards import TETRA_FORMAT
from tasks.errors import LayoutError
from tasks.mic_array import (
    HALF_LENGTH_S,
    MicArrayError,
    SphereArray,
    capsule_render,
    centred_fir,
    scene_order,
    sum_filtered,
)

_EL = math.degrees(math.asin(1.0 / math.sqrt(3.0)))  # 35.26: a vertex of the cube-inscribed tetrahedron
CAPSULE_DIRECTIONS: tuple[tuple[float, float], ...] = (
    (45.0, _EL),
    (-45.0, -_EL),
    (135.0, -_EL),
    (-135.0, _EL),
)
"""(azimuth_deg, elevation_deg) of capsules FLU, FRD, BLD, BRU: A-format channels 1-4."""

SIGNS = np.array([[1, 1, 1, 1], [1, -1, 1, -1], [1, -1, -1, 1], [1, 1, -1, -1]], dtype=np.float64)
"""Rows W', Y', Z', X' (ambiX order) of the A -> B sum and differences of FLU, FRD, BLD, BRU."""


class TetraModel(BaseModel):
    """The microphone: what a ``tetra`` render depends on beyond the scene (its identity)."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    radius_m: float = Field(0.0147, gt=0.0, le=0.1, description="capsule distance from the centre")
    omni: float = Field(
        0.5, gt=0.0, lt=1.0,
        description="capsule pattern omni + (1 - omni) cos: 0.5 cardioid; 0 and 1 leave no W or no XYZ",
    )
    equalised_radius_m: float | None = Field(
        None, gt=0.0, le=0.1, exclude_if=lambda v: v is None,
        description="radius the A -> B spacing equalisation is designed for; None: radius_m (matched)",
    )

    @property
    def array(self) -> SphereArray:
        return SphereArray(self.radius_m, CAPSULE_DIRECTIONS, rigid=False, omni=self.omni)

    @property
    def eq_radius_m(self) -> float:
        return self.radius_m if self.equalised_radius_m is None else self.equalised_radius_m


IDEAL_SOUNDFIELD = TetraModel()
"""Gerzon's published geometry (r 1.47 cm, cardioid) with a processor equalised exactly for it."""
S3A_SOUNDFIELD = TetraModel(radius_m=0.016, omni=0.5, equalised_radius_m=0.0106)
"""Fitted to S3A's measured Soundfield RIRs (module docstring, "Calibration")."""
SOUNDFIELD = S3A_SOUNDFIELD
"""The ``tetra`` renderer's microphone."""


def capsule_signals(scene: np.ndarray, fs: int, model: TetraModel = SOUNDFIELD) -> np.ndarray:
    """(N+1)^2 ambiX channels, 1 <= N <= 3, at ``fs`` -> (4, samples) float32 A-format (FLU, FRD,
    BLD, BRU), time-aligned with the scene. An order-0 scene has no direction for the capsules."""
    if scene_order(scene, "the tetra renderer") < 1:
        raise LayoutError(f"the tetra renderer needs an ambiX scene of order >= 1, got {np.shape(scene)}")
    return capsule_render(scene, fs, model.array, "the tetra renderer")


def onaxis_responses(freqs_hz: np.ndarray, model: TetraModel = SOUNDFIELD) -> tuple[np.ndarray, np.ndarray]:
    """(W, X) of the matrixed A-format for a plane wave along each output's own axis (module
    docstring) of an array of radius ``model.eq_radius_m``: the responses the equalisation inverts."""
    kr = 2 * np.pi * np.asarray(freqs_hz, dtype=np.float64) * model.eq_radius_m / SPEED_OF_SOUND_M_S
    phi = kr / math.sqrt(3.0)
    a = model.omni
    w = np.cos(phi) + 1j * (1.0 - a) / (math.sqrt(3.0) * a) * np.sin(phi)
    x = np.cos(phi) + 1j * math.sqrt(3.0) * a / (1.0 - a) * np.sin(phi)
    return w, x


@functools.lru_cache(maxsize=8)
def equalisation_filters(fs: int, model: TetraModel = SOUNDFIELD) -> np.ndarray:
    """(4, taps) centred FIRs 1/W, 1/X, 1/X, 1/X (ambiX order), cached and read-only."""
    inverse_w = centred_fir(lambda f: 1.0 / onaxis_responses(f, model)[0], fs)
    inverse_x = centred_fir(lambda f: 1.0 / onaxis_responses(f, model)[1], fs)
    filters = np.stack([inverse_w, inverse_x, inverse_x, inverse_x])
    filters.setflags(write=False)
    return filters


def encoding_matrix(model: TetraModel = SOUNDFIELD) -> np.ndarray:
    """(4, 4) A (FLU, FRD, BLD, BRU) -> B (W, Y, Z, X) before equalisation: SN3D at kR -> 0."""
    a = model.omni
    scale = np.array([1.0 / (4.0 * a)] + [math.sqrt(3.0) / (4.0 * (1.0 - a))] * 3)
    return scale[:, None] * SIGNS


def a_to_b(capsules: np.ndarray, fs: int, model: TetraModel = SOUNDFIELD) -> np.ndarray:
    """(4, samples) A-format (FLU, FRD, BLD, BRU) -> (4, samples) float32 ambiX W, Y, Z, X:
    the matrix, then the spacing equalisation, centred (time zero stays the array centre)."""
    if np.ndim(capsules) != 2 or np.shape(capsules)[0] != len(CAPSULE_DIRECTIONS):
        raise LayoutError(f"A-format is (4 capsules, samples), got shape {np.shape(capsules)}")
    if isinstance(fs, bool) or not isinstance(fs, int | np.integer) or fs <= 0:
        raise MicArrayError(f"sample rate must be a positive integer in Hz, got {fs!r}")
    b = encoding_matrix(model).astype(np.float32) @ np.asarray(capsules, dtype=np.float32)
    return sum_filtered([(b, equalisation_filters(int(fs), model))])


class Tetra:
    """A tetrahedral FOA microphone's B-format (module docstring: the model), levelled on W."""

    name = TETRA_FORMAT
    spatial = True
    level_channels = (0,)

    def __init__(self, model: TetraModel = SOUNDFIELD) -> None:
        self.model = model
        design = {
            "model": model.model_dump(),
            "capsules": CAPSULE_DIRECTIONS,
            "baffle": "open",
            "equalisation": "inverse on-axis W and X",
            "fir_half_length_s": HALF_LENGTH_S,
        }
        digest = hashlib.sha256(json.dumps(design, sort_keys=True).encode()).hexdigest()[:12]
        eq = "" if model.equalised_radius_m is None else f"eq{model.equalised_radius_m * 100:g}cm/"
        self.identity = f"tetra/r{model.radius_m * 100:g}cm/{eq}a{model.omni:g}/{digest}"

    def render(self, scene: np.ndarray, fs: int) -> np.ndarray:
        """(N+1)^2 ambiX channels at ``fs`` -> (4, samples) float32 B-format, aligned with the scene."""
        return a_to_b(capsule_signals(scene, fs, self.model), fs, self.model)

    def ambisonic_order(self, channels: int) -> int | None:
        if channels != 4:
            raise LayoutError(f"tetra B-format has 4 channels, got {channels}")
        return 1
