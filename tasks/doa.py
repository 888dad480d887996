"""Direction of arrival from the active intensity vector of first-order ambiX.

This is the label QA tool: every direction written into a record is checked against what the
audio itself says. Active intensity is W times the velocity channels (X, Y, Z); its direction
points towards the source, so azimuth = atan2(Iy, Ix) in the DESIGN.md convention (+90 = left).
Only the first four ambiX channels (W, Y, Z, X) are used; the SN3D/N3D scaling of the first-order
channels is common to all three components and does not change the direction.
"""

from __future__ import annotations

from pathlib import Path
from typing import Literal

import numpy as np
import soundfile as sf
from scipy.signal import ShortTimeFFT
from scipy.signal.windows import hann

from schemas.doa import DoaEstimate
from tasks.ambisonics import fuma_to_ambix, vector_to_angles
from tasks.errors import SpatialAudioCapsError

__all__ = [
    "ChannelCountError",
    "DoaError",
    "DoaEstimate",
    "EmptyWindowError",
    "FoaFileError",
    "NoEnergyError",
    "WindowOutsideSignalError",
    "direct_sound_doa",
    "estimate_doa_file",
    "first_arrival_index",
    "intensity_doa",
    "load_foa",
    "window_indices",
]

FoaFormat = Literal["ambix", "fuma"]
DEFAULT_BAND_HZ: tuple[float, float] = (300.0, 3000.0)
# Beyond order 7 a "channel" axis is almost certainly the time axis of a channels-last array.
MAX_CHANNELS = 64
_FRAMES_PER_BLOCK = 512


class DoaError(SpatialAudioCapsError):
    """Input on which no direction can be estimated."""


class ChannelCountError(DoaError):
    """Not a first-order (or higher) ambisonic signal, or a FuMa file that is not 4 channels."""


class EmptyWindowError(DoaError):
    """The analysis window holds no samples."""


class WindowOutsideSignalError(DoaError):
    """The analysis window starts before 0 or reaches past the end of the signal."""


class NoEnergyError(DoaError):
    """Silence (or no directional energy) in the window/band: the direction is undefined."""


class FoaFileError(DoaError):
    """A file that cannot be read as FOA audio."""


# ---------------------------------------------------------------------------------------------
# estimation


def intensity_doa(
    foa: np.ndarray,
    fs: int,
    *,
    band_hz: tuple[float, float] | None = DEFAULT_BAND_HZ,
    start_s: float | None = None,
    end_s: float | None = None,
    n_fft: int = 1024,
) -> DoaEstimate:
    """Direction of the active intensity of ambiX ``foa`` (channels first) within a time window.

    With ``band_hz`` the intensity is Re{conj(W) [X, Y, Z]} summed over STFT bins in the band
    (the band keeps out low-frequency noise and the microphone's spatial aliasing). A window
    shorter than ``n_fft`` is analysed as one rectangular frame zero-padded to ``n_fft``, so a
    direct-path window of a few milliseconds still gets a band-limited estimate. With
    ``band_hz=None`` it is the broadband time-domain sum of W(t) [X, Y, Z](t): the exact answer
    for a clean synthetic direct path of a few dozen samples.
    """
    sig = _check_foa(foa)
    fs = _check_fs(fs)
    i0, i1 = window_indices(sig.shape[1], fs, start_s, end_s)
    return _estimate(sig[:4, i0:i1], fs, band_hz=band_hz, n_fft=n_fft, offset_samples=i0)


def first_arrival_index(w: np.ndarray, threshold: float = 0.5) -> int:
    """First sample whose |W| reaches ``threshold`` times the peak: the direct-sound onset of a RIR.

    A relative threshold (not the argmax) is used because a strong early reflection can exceed
    the direct sound, while the direct sound is nearly always the first thing that loud.
    """
    env = np.abs(np.asarray(w, dtype=np.float64))
    if env.ndim != 1 or env.size == 0:
        raise DoaError(f"first_arrival_index needs a non-empty 1-D W channel, got shape {env.shape}")
    if not 0.0 < threshold <= 1.0:
        raise DoaError(f"threshold must be in (0, 1], got {threshold}")
    peak = env.max()
    if not np.isfinite(peak):
        raise DoaError("W contains NaN or inf samples")
    if peak <= 0.0:
        raise NoEnergyError("W is silent: no direct sound to find")
    return int(np.argmax(env >= threshold * peak))


def direct_sound_doa(
    rir: np.ndarray,
    fs: int,
    *,
    pre_ms: float = 0.5,
    post_ms: float = 2.0,
    threshold: float = 0.5,
    band_hz: tuple[float, float] | None = DEFAULT_BAND_HZ,
    n_fft: int = 1024,
) -> DoaEstimate:
    """Direction of the direct sound of an ambiX RIR: a short window around its first arrival.

    The window (``pre_ms`` before to ``post_ms`` after the onset) is short enough to exclude the
    first reflections in ordinary rooms. Use ``band_hz=None`` for rendered (noise-free) RIRs and a
    band for measured ones, whose microphones are noisy at low and aliased at high frequencies.
    """
    sig = _check_foa(rir)
    fs = _check_fs(fs)
    if pre_ms < 0.0 or post_ms <= 0.0:
        raise DoaError(f"need pre_ms >= 0 and post_ms > 0, got {pre_ms}, {post_ms}")
    onset = first_arrival_index(sig[0], threshold)
    i0 = max(onset - round(pre_ms * 1e-3 * fs), 0)
    i1 = min(onset + max(round(post_ms * 1e-3 * fs), 1), sig.shape[1])
    return _estimate(sig[:4, i0:i1], fs, band_hz=band_hz, n_fft=n_fft, offset_samples=i0)


# ---------------------------------------------------------------------------------------------
# files


def load_foa(path: str | Path, fmt: FoaFormat) -> tuple[np.ndarray, int]:
    """Read an FOA file as ambiX, shape (channels, n_samples) float64, and its sample rate.

    FuMa (W, X, Y, Z; W at -3 dB) is converted through the one conversion in tasks.ambisonics, so
    a FuMa file can never be mistaken for ambiX silently: the caller must say which it is.
    """
    return _read_foa(path, fmt)


def estimate_doa_file(
    path: str | Path,
    fmt: FoaFormat = "ambix",
    start_s: float | None = None,
    end_s: float | None = None,
    band_hz: tuple[float, float] | None = DEFAULT_BAND_HZ,
    *,
    n_fft: int = 1024,
) -> DoaEstimate:
    """DOA of a file's time window (what ``spatial-audiocaps doa`` prints).

    Only the window is decoded, so an hour-long recording costs no more than its excerpt.
    start_s/end_s in the result are times in the file.
    """
    n_frames, fs, _ = _info(path)
    i0, i1 = window_indices(n_frames, fs, start_s, end_s)
    sig, fs = _read_foa(path, fmt, start=i0, stop=i1)
    return _estimate(sig[:4], fs, band_hz=band_hz, n_fft=n_fft, offset_samples=i0)


# ---------------------------------------------------------------------------------------------
# helpers


def window_indices(n_samples: int, fs: int, start_s: float | None, end_s: float | None) -> tuple[int, int]:
    """Sample range [i0, i1) of a time window, refusing windows that do not fit the signal.

    A window reaching past the end is an error rather than silently clipped: for a QA tool a
    mistyped time is a bug to report, not a shorter window to analyse.
    """
    duration = n_samples / fs
    t0 = 0.0 if start_s is None else float(start_s)
    t1 = duration if end_s is None else float(end_s)
    if not (np.isfinite(t0) and np.isfinite(t1)):
        raise WindowOutsideSignalError(f"window times must be finite, got start={t0}, end={t1}")
    if t0 < 0.0:
        raise WindowOutsideSignalError(f"window starts at {t0:g} s, before the signal (0 s)")
    if t0 >= duration:
        raise WindowOutsideSignalError(
            f"window starts at {t0:g} s but the signal is only {duration:g} s long"
        )
    if t1 <= t0:
        raise EmptyWindowError(f"empty window: end ({t1:g} s) must be after start ({t0:g} s)")
    half_sample = 0.5 / fs
    if t1 > duration + half_sample:
        raise WindowOutsideSignalError(f"window ends at {t1:g} s, past the end of the {duration:g} s signal")
    i0 = round(t0 * fs)
    i1 = min(round(t1 * fs), n_samples)
    if i1 <= i0:
        raise EmptyWindowError(f"window {t0:g}-{t1:g} s is shorter than one sample at {fs} Hz")
    return i0, i1


def _estimate(
    seg: np.ndarray,
    fs: int,
    *,
    band_hz: tuple[float, float] | None,
    n_fft: int,
    offset_samples: int,
) -> DoaEstimate:
    """Intensity vector and energy of a (4, n) ambiX segment, turned into a DoaEstimate."""
    if seg.shape[1] == 0:
        raise EmptyWindowError("empty window: no samples to analyse")
    if not np.all(np.isfinite(seg)):
        raise DoaError("the window contains NaN or inf samples")
    band = None if band_hz is None else _check_band(band_hz, fs)
    if band is None:
        w, y, z, x = seg
        intensity = np.array([w @ x, w @ y, w @ z])
        energy = 0.5 * float(np.sum(seg * seg))
    else:
        intensity, energy = _band_intensity(seg, fs, band, n_fft)
    where = f"in {offset_samples / fs:g}-{(offset_samples + seg.shape[1]) / fs:g} s"
    if band is not None:
        where += f", {band[0]:g}-{band[1]:g} Hz"
    if not energy > np.finfo(np.float64).tiny:
        raise NoEnergyError(f"no signal energy {where}: the direction is undefined (silence?)")
    norm = float(np.linalg.norm(intensity))
    if not norm > 1e-12 * energy:
        raise NoEnergyError(
            f"no directional energy {where}: the intensity vector is zero "
            "(only W carries signal, or X, Y, Z are silent)"
        )
    az, el = vector_to_angles(intensity)
    return DoaEstimate(
        azimuth_deg=float(az),
        elevation_deg=float(el),
        diffuseness=float(np.clip(1.0 - norm / energy, 0.0, 1.0)),
        start_s=offset_samples / fs,
        end_s=(offset_samples + seg.shape[1]) / fs,
        band_hz=band,
    )


def _band_intensity(
    seg: np.ndarray, fs: int, band: tuple[float, float], n_fft: int
) -> tuple[np.ndarray, float]:
    """Sum of Re{conj(W) [X, Y, Z]} and of the energy density over the TF bins in the band."""
    if isinstance(n_fft, bool) or not isinstance(n_fft, (int, np.integer)) or n_fft < 2:
        raise DoaError(f"n_fft must be an integer >= 2, got {n_fft!r}")
    freqs = np.fft.rfftfreq(n_fft, 1.0 / fs)
    in_band = (freqs >= band[0]) & (freqs <= band[1])
    if not in_band.any():
        raise DoaError(
            f"band {band[0]:g}-{band[1]:g} Hz holds no FFT bin at n_fft={n_fft}, fs={fs} "
            f"(bin spacing {fs / n_fft:g} Hz): widen the band or raise n_fft"
        )
    n = seg.shape[1]
    if n <= n_fft:
        # One rectangular frame: every sample of a short (direct-path) window weighs the same.
        return _accumulate(np.fft.rfft(seg, n=n_fft, axis=1)[:, in_band, None])
    stft = ShortTimeFFT(hann(n_fft, sym=False), hop=n_fft // 2, fs=fs, mfft=n_fft)
    intensity = np.zeros(3)
    energy = 0.0
    # Frames in blocks, so an hour-long window never holds its whole spectrogram in memory.
    p_min, p_max = stft.p_min, stft.p_max(n)
    for p0 in range(p_min, p_max, _FRAMES_PER_BLOCK):
        spec = stft.stft(seg, p0=p0, p1=min(p0 + _FRAMES_PER_BLOCK, p_max), axis=-1)
        block_i, block_e = _accumulate(spec[:, in_band, :])
        intensity += block_i
        energy += block_e
    return intensity, energy


def _accumulate(s: np.ndarray) -> tuple[np.ndarray, float]:
    """Intensity (x, y, z) and energy summed over the bins of ambiX spectra s[channel, f, t]."""
    cross = np.real(np.conj(s[0])[None] * s[1:4]).sum(axis=(1, 2))  # Y, Z, X
    energy = 0.5 * float(np.sum(s.real**2 + s.imag**2))
    return np.array([cross[2], cross[0], cross[1]]), energy


def _check_foa(foa: np.ndarray) -> np.ndarray:
    sig = np.asarray(foa, dtype=np.float64)
    if sig.ndim != 2:
        raise ChannelCountError(f"FOA must be 2-D, channels first (>= 4, n_samples); got shape {sig.shape}")
    if sig.shape[0] < 4:
        raise ChannelCountError(f"FOA needs at least 4 ambiX channels (W, Y, Z, X), got {sig.shape[0]}")
    if sig.shape[0] > MAX_CHANNELS:
        hint = " (channels last? pass foa.T)" if sig.shape[1] <= MAX_CHANNELS else ""
        raise ChannelCountError(
            f"FOA has {sig.shape[0]} channels, more than ambisonic order 7 ({MAX_CHANNELS}){hint}"
        )
    return sig


def _check_fs(fs: int) -> int:
    if isinstance(fs, bool) or not isinstance(fs, (int, np.integer)) or fs <= 0:
        raise DoaError(f"sample rate must be a positive integer, got {fs!r}")
    return int(fs)


def _check_band(band_hz: tuple[float, float], fs: int) -> tuple[float, float]:
    try:
        lo, hi = (float(b) for b in band_hz)
    except (TypeError, ValueError) as exc:
        raise DoaError(f"band_hz must be (low, high) in Hz or None, got {band_hz!r}") from exc
    if not (0.0 <= lo < hi <= fs / 2):
        raise DoaError(f"band_hz must satisfy 0 <= low < high <= fs/2 = {fs / 2:g}, got {band_hz}")
    return lo, hi


def _check_fmt(fmt: str) -> FoaFormat:
    if fmt not in ("ambix", "fuma"):
        raise DoaError(f"format must be 'ambix' or 'fuma', got {fmt!r}")
    return fmt  # type: ignore[return-value]


def _info(path: str | Path) -> tuple[int, int, int]:
    """(frames, sample rate, channels) of an audio file, with typed errors."""
    p = Path(path)
    if not p.is_file():
        raise FoaFileError(f"{p}: no such file")
    try:
        info = sf.info(str(p))
    except (sf.SoundFileError, RuntimeError) as exc:
        raise FoaFileError(f"{p}: not readable as audio ({exc})") from exc
    if info.frames <= 0:
        raise FoaFileError(f"{p}: holds no samples")
    if info.samplerate <= 0:
        raise FoaFileError(f"{p}: invalid sample rate {info.samplerate}")
    return int(info.frames), int(info.samplerate), int(info.channels)


def _read_foa(
    path: str | Path, fmt: str, *, start: int = 0, stop: int | None = None
) -> tuple[np.ndarray, int]:
    fmt = _check_fmt(fmt)
    _, _, n_ch = _info(path)
    if fmt == "fuma" and n_ch != 4:
        raise ChannelCountError(
            f"{path}: FuMa input must be first order, 4 channels (W, X, Y, Z); got {n_ch}"
        )
    order = round(np.sqrt(n_ch)) - 1
    if fmt == "ambix" and (n_ch < 4 or (order + 1) ** 2 != n_ch):
        raise ChannelCountError(f"{path}: ambiX needs (N+1)^2 >= 4 channels (W, Y, Z, X, ...); got {n_ch}")
    try:
        data, fs = sf.read(str(path), start=start, stop=stop, dtype="float64", always_2d=True)
    except (sf.SoundFileError, RuntimeError) as exc:
        raise FoaFileError(f"{path}: decoding failed ({exc})") from exc
    if data.shape[0] == 0:
        raise FoaFileError(f"{path}: holds no samples in the requested range")
    sig = data.T
    if fmt == "fuma":
        sig = fuma_to_ambix(sig)
    return np.ascontiguousarray(sig), int(fs)
