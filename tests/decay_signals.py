"""Single-channel responses of known decay, for the tests of decay labels and their band readings."""

from __future__ import annotations

import numpy as np
from scipy.signal import butter, sosfiltfilt

FS = 48000


def noise_decay(t30_s: float, seed: int, n_s: float = 2.5) -> np.ndarray:
    """A unit impulse, then white noise decaying by 60 dB in ``t30_s``: the same decay in every band."""
    t = np.arange(round(n_s * FS)) / FS
    x = np.random.default_rng(seed).standard_normal(t.size) * 10 ** (-3.0 * t / t30_s)
    x[0] = 1.0
    return x


def two_rates() -> np.ndarray:
    """Below 3 kHz a 1.2 s decay; above 5 kHz, with most of the energy, a 0.4 s one. The broadband
    curve bends (EDT well under T30), as the engine's responses do (issue 15, benchmarks/t30_bands.py)."""
    low = sosfiltfilt(butter(8, 3000, fs=FS, output="sos"), noise_decay(1.2, 1))
    high = sosfiltfilt(butter(8, 5000, btype="high", fs=FS, output="sos"), noise_decay(0.4, 2))
    return low + 3.0 * high
