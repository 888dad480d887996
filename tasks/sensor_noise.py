"""Sensor noise at a drawn SNR: what makes a simulated B-format sample sound recorded.

Real recordings carry capsule and preamp self-noise, independent on every channel and of equal
power on each. ``add_sensor_noise`` adds such noise to one format's rendered channels (before the
sample's one levelling gain, so the SNR survives levelling) at an SNR measured on that format's
level channels (schemas.audio.SensorNoise defines it). The noise is scaled from its own measured
power, not an expected one, so the SNR of a sample is the drawn one to float precision.

Every spatial sample draws its SNR and its noise from (build seed, sample key) with the plan's
stable sha256 draw (tasks.plan.stable_unit), so a rebuild gives the same bytes and no two samples
share noise; each format of a sample gets its own noise (independent devices) at the same SNR.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
from scipy import fft as sfft

from schemas.audio import NoiseSpectrum, SensorNoise
from tasks.plan import stable_unit

PINK_FROM_HZ = 20.0
"""Pink noise is 1/f from here up and flat below (no unbounded rumble)."""


def pink(white: np.ndarray, sr: int) -> np.ndarray:
    """White noise (..., n) shaped to a 1/f power spectrum from PINK_FROM_HZ up (-3 dB per octave),
    flat below; float64, unnormalised (its level is the caller's to set)."""
    n = white.shape[-1]
    spectrum = sfft.rfft(white, axis=-1)
    spectrum /= np.sqrt(np.maximum(sfft.rfftfreq(n, 1.0 / sr), PINK_FROM_HZ))
    return sfft.irfft(spectrum, n=n, axis=-1)


def _power(x: np.ndarray) -> float:
    """Mean square of a 1-D signal, float64 accumulation, no BLAS call (tasks.audio_prep._rms says why)."""
    return float(np.einsum("i,i->", x, x, dtype=np.float64)) / max(1, x.shape[0])


def add_sensor_noise(
    audio: np.ndarray,
    snr_db: float,
    rng: np.random.Generator,
    spectrum: NoiseSpectrum = "white",
    level_channels: Sequence[int] = (0,),
    sr: int = 48000,
) -> np.ndarray:
    """``audio`` (C, N) plus independent noise of equal power on every channel, ``snr_db`` below
    the mean power of ``level_channels``; float32. Silent level channels get no noise (a silent
    render stays silent and is rejected as such when levelled)."""
    y = np.asarray(audio, dtype=np.float32)
    if y.ndim != 2 or y.shape[1] == 0:
        raise ValueError(f"expected (channels, samples) audio, got shape {y.shape}")
    if not math.isfinite(snr_db):
        raise ValueError(f"snr_db must be finite, got {snr_db}")
    signal_power = sum(_power(y[c]) for c in level_channels) / max(1, len(level_channels))
    noise = rng.standard_normal(y.shape)
    if spectrum == "pink":
        noise = pink(noise, sr)
    target = math.sqrt(signal_power * 10.0 ** (-snr_db / 10.0))
    for c in range(noise.shape[0]):
        power = _power(noise[c])
        noise[c] *= target / math.sqrt(power) if power > 0.0 else 0.0
    return y + noise.astype(np.float32)


@dataclass(frozen=True)
class SampleNoise:
    """One spatial sample's draw: its SNR and spectrum, and the (build seed, key) its noise comes from."""

    snr_db: float
    spectrum: NoiseSpectrum
    seed: int
    key: str

    def rng(self, fmt: str) -> np.random.Generator:
        """The noise stream of format ``fmt`` of this sample (each format its own)."""
        return np.random.default_rng(round(stable_unit("sensor_noise", self.seed, self.key, fmt) * 2**53))


def sample_noise(cfg: SensorNoise | None, seed: int, key: str) -> SampleNoise | None:
    """The sample's draw under ``cfg`` (None: no sensor noise): SNR uniform in cfg.snr_db."""
    if cfg is None:
        return None
    lo, hi = cfg.snr_db
    snr = lo + (hi - lo) * stable_unit("sensor_snr", seed, key)
    return SampleNoise(snr_db=snr, spectrum=cfg.spectrum, seed=seed, key=key)
