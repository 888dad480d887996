"""Ambisonic conventions in one place: ambiX (ACN order, SN3D), +azimuth = left, +elevation = up.

Every other module encodes, decodes or converts through these functions, so the channel order
and normalisation cannot drift between the renderer, the DOA estimator and the loaders.
"""

from __future__ import annotations

from math import factorial, isqrt

import numpy as np
from scipy.special import lpmv

from tasks.errors import LayoutError

MAX_ORDER = 3


def n_channels(order: int) -> int:
    """(N+1)^2 channels for ambisonic order N."""
    if not 0 <= order <= MAX_ORDER:
        raise ValueError(f"ambisonic order must be in 0..{MAX_ORDER}, got {order}")
    return (order + 1) ** 2


def order_of(channels: int, what: str = "an ambiX signal") -> int:
    """The ambisonic order N of (N+1)^2 channels (LayoutError otherwise): the one check every
    renderer and reader of ambiX makes before trusting a channel count."""
    order = isqrt(channels) - 1
    if channels < 1 or (order + 1) ** 2 != channels:
        raise LayoutError(f"{what}: {channels} channels is not (N+1)^2 for an ambisonic order N")
    return order


def acn_index(n: int, m: int) -> int:
    """ACN channel number of degree n, index m (-n <= m <= n)."""
    return n * n + n + m


def real_sh_sn3d(order: int, azimuth: np.ndarray, elevation: np.ndarray) -> np.ndarray:
    """Real spherical harmonics, ACN order, SN3D, no Condon-Shortley phase.

    Angles in radians (azimuth counter-clockwise from +x, elevation up from the horizon).
    Returns shape (n_channels, *angles.shape). W is 1 everywhere; first order is Y, Z, X with
    plane-wave gains sin(az)cos(el), sin(el), cos(az)cos(el).
    """
    az = np.asarray(azimuth, dtype=np.float64)
    el = np.asarray(elevation, dtype=np.float64)
    az, el = np.broadcast_arrays(az, el)
    out = np.empty((n_channels(order), *az.shape), dtype=np.float64)
    sin_el = np.sin(el)
    for n in range(order + 1):
        for m in range(-n, n + 1):
            am = abs(m)
            norm = np.sqrt((2.0 - (m == 0)) * factorial(n - am) / factorial(n + am))
            # scipy's lpmv includes the Condon-Shortley phase (-1)^m; ambiX does not.
            legendre = (-1.0) ** am * lpmv(am, n, sin_el)
            trig = np.cos(m * az) if m >= 0 else np.sin(am * az)
            out[acn_index(n, m)] = norm * legendre * trig
    return out


def unit_vector(azimuth_deg: float | np.ndarray, elevation_deg: float | np.ndarray) -> np.ndarray:
    """Cartesian unit vector(s) (x front, y left, z up) for angles in degrees; shape (3, ...)."""
    az = np.radians(azimuth_deg)
    el = np.radians(elevation_deg)
    return np.stack([np.cos(az) * np.cos(el), np.sin(az) * np.cos(el), np.sin(el)])


def vector_to_angles(v: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """(azimuth_deg in (-180, 180], elevation_deg) of vector(s) with shape (3, ...)."""
    x, y, z = v
    az = np.degrees(np.arctan2(y, x))
    az = np.where(az <= -180.0, az + 360.0, az)
    el = np.degrees(np.arctan2(z, np.hypot(x, y)))
    return az, el


def wrap_azimuth(az_deg: np.ndarray | float) -> np.ndarray:
    """Wrap degrees to (-180, 180]."""
    wrapped = -((-np.asarray(az_deg, dtype=np.float64) + 180.0) % 360.0) + 180.0
    return wrapped


def angular_distance_deg(
    az1: np.ndarray | float, el1: np.ndarray | float, az2: np.ndarray | float, el2: np.ndarray | float
) -> np.ndarray:
    """Great-circle angle between two directions, degrees."""
    cos = np.sum(unit_vector(az1, el1) * unit_vector(az2, el2), axis=0)
    return np.degrees(np.arccos(np.clip(cos, -1.0, 1.0)))


def n3d_to_sn3d(signal: np.ndarray) -> np.ndarray:
    """ACN/N3D to ACN/SN3D, shape (channels, n_samples): degree-n channels divided by sqrt(2n + 1)."""
    order = order_of(int(np.shape(signal)[0]), "N3D signal")
    degree = np.concatenate([[n] * (2 * n + 1) for n in range(order + 1)])
    return np.asarray(signal) / np.sqrt(2.0 * degree + 1.0)[:, None]


def fuma_to_ambix(signal: np.ndarray) -> np.ndarray:
    """Convert first-order FuMa (W, X, Y, Z; W at -3 dB) to ambiX (W, Y, Z, X; SN3D).

    ``signal`` has shape (4, n_samples). Only first order is supported: higher-order FuMa
    weights differ per channel and no input we accept uses them.
    """
    sig = np.asarray(signal)
    if sig.ndim != 2 or sig.shape[0] != 4:
        raise ValueError(f"FuMa conversion needs shape (4, n_samples), got {sig.shape}")
    w, x, y, z = sig
    return np.stack([np.sqrt(2.0) * w, y, z, x])


def sh_rotation(order: int, rotation: np.ndarray) -> np.ndarray:
    """(C, C) matrix that turns an ambiX field of ``order`` by the 3x3 rotation ``rotation``: a plane
    wave encoded from direction d becomes the plane wave from ``rotation @ d``, for every d.

    Why fitted rather than built from Wigner-D recursions: the SH of each degree span a space that
    rotations map onto itself, so D with Y(R u) = D Y(u) exists for any normalisation; solving it on
    more directions than channels (a Fibonacci sphere) gives it exactly (to float precision) in ACN/SN3D
    without a second convention to keep in step with ``real_sh_sn3d``. W (degree 0) maps to itself."""
    r = np.asarray(rotation, dtype=np.float64)
    if r.shape != (3, 3) or not np.allclose(r @ r.T, np.eye(3), atol=1e-9) or np.linalg.det(r) < 0:
        raise ValueError(f"expected a 3x3 proper rotation matrix, got {r.tolist()}")
    k = np.arange(4 * n_channels(order)) + 0.5
    z = 1.0 - 2.0 * k / k.size
    u = np.stack([np.sqrt(1 - z * z) * np.cos(np.pi * (1 + 5**0.5) * k),
                  np.sqrt(1 - z * z) * np.sin(np.pi * (1 + 5**0.5) * k), z])

    def sh(v: np.ndarray) -> np.ndarray:
        return real_sh_sn3d(order, np.arctan2(v[1], v[0]), np.arcsin(np.clip(v[2], -1.0, 1.0)))

    d = sh(r @ u) @ np.linalg.pinv(sh(u))
    degree = np.concatenate([[n] * (2 * n + 1) for n in range(order + 1)])
    d[degree[:, None] != degree[None, :]] = 0.0  # ~1e-15 off the degree blocks: exactly zero there
    d[0, 0] = 1.0  # W exactly as it was: every label is measured on it
    return d
