"""Room-acoustic parameters measured on an impulse response (ISO 3382 style).

Labels are measured, not assumed: every T30/EDT/DRR/C50 in a record comes from here.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from scipy.signal import butter, sosfiltfilt

from tasks.ambisonics import angular_distance_deg
from tasks.doa import DEFAULT_BAND_HZ, direct_sound_doa, first_arrival_index
from tasks.errors import SpatialAudioCapsError

DIRECT_HALF_WINDOW_S = 0.0025  # +-2.5 ms around the direct peak counts as direct sound


def direct_index(ir: np.ndarray) -> int:
    """Sample index of the direct sound (first sample within 6 dB of the peak)."""
    return first_arrival_index(ir, threshold=0.5)


def schroeder_db(ir: np.ndarray, start: int = 0) -> np.ndarray:
    """Energy decay curve (backward-integrated energy) in dB relative to its start."""
    e = np.asarray(ir[start:], dtype=np.float64) ** 2
    edc = np.cumsum(e[::-1])[::-1]
    if edc[0] <= 0:
        raise SpatialAudioCapsError("impulse response has no energy after the onset")
    with np.errstate(divide="ignore"):
        return 10.0 * np.log10(edc / edc[0])


def net_flow(rir: np.ndarray, fs: int, start_s: float, end_s: float) -> np.ndarray:
    """(x, y, z) direction the energy of an ambiX RIR arrives from, start..end seconds after its peak:
    E[W (X, Y, Z)] / E[W^2] at 300-3000 Hz, length 1 for a plane wave and 0 for an isotropic field.
    A late field's net flow is how far it is from diffuse, and which way (tail_flow's measure).
    Filtered before it is cut, so a short window carries no filter edge transients."""
    i0 = int(np.argmax(np.abs(rir[0])))
    band = sosfiltfilt(butter(4, DEFAULT_BAND_HZ, btype="band", fs=fs, output="sos"), rir[:4], axis=1)
    seg = band[:, i0 + round(start_s * fs): i0 + round(end_s * fs)]
    return np.array([seg[0] @ seg[3], seg[0] @ seg[1], seg[0] @ seg[2]]) / float(seg[0] @ seg[0])


def decay_time(ir: np.ndarray, fs: int, hi_db: float, lo_db: float) -> float:
    """Time for 60 dB of decay, from a least-squares line over the EDC between hi_db and lo_db.

    When the curve falls through the range within a sample or two (a direct sound carrying
    most of the energy, as in EDT of a dry room), the two crossing times are used instead.
    """
    onset = direct_index(ir)
    edc = schroeder_db(ir, onset)
    if edc.min() > lo_db:
        raise SpatialAudioCapsError(
            f"decay does not reach {lo_db} dB: the response is too short for this fit"
        )
    idx = np.flatnonzero((edc <= hi_db) & (edc >= lo_db))
    if idx.size < 3:
        t_hi = int(np.argmax(edc <= hi_db))
        t_lo = int(np.argmax(edc <= lo_db))
        return float(60.0 / (hi_db - lo_db) * max(t_lo - t_hi, 1) / fs)
    slope, _ = np.polyfit(idx / fs, edc[idx], 1)
    if slope >= 0:
        raise SpatialAudioCapsError("energy decay curve does not decay")
    return float(-60.0 / slope)


def t30(ir: np.ndarray, fs: int) -> float:
    """Reverberation time from the -5..-35 dB part of the Schroeder curve."""
    return decay_time(ir, fs, -5.0, -35.0)


def edt(ir: np.ndarray, fs: int) -> float:
    """Early decay time from the 0..-10 dB part of the Schroeder curve."""
    return decay_time(ir, fs, 0.0, -10.0)


def drr_db(ir: np.ndarray, fs: int) -> float:
    """Direct-to-reverberant ratio: +-2.5 ms around the direct peak against everything after."""
    e = np.asarray(ir, dtype=np.float64) ** 2
    d = direct_index(ir)
    half = round(DIRECT_HALF_WINDOW_S * fs)
    direct = e[max(0, d - half) : d + half + 1].sum()
    reverb = e[d + half + 1 :].sum()
    return float(10.0 * np.log10(direct / max(reverb, 1e-30)))


def clarity_db(ir: np.ndarray, fs: int, early_s: float = 0.050) -> float:
    """C50 (by default): early (onset..onset+50 ms) to late energy ratio."""
    e = np.asarray(ir, dtype=np.float64) ** 2
    d = direct_index(ir)
    split = d + round(early_s * fs)
    return float(10.0 * np.log10(e[d:split].sum() / max(e[split:].sum(), 1e-30)))


def lowpassed(w: np.ndarray, fs: int, cutoff_hz: float) -> np.ndarray:
    """W through a zero-phase 4th-order Butterworth low-pass: a decay measured in the band below
    ``cutoff_hz`` (zero-phase, so the onset that the fits start from does not move)."""
    if not 0.0 < cutoff_hz < fs / 2:
        raise SpatialAudioCapsError(f"a low-pass at {cutoff_hz} Hz is not below Nyquist ({fs / 2} Hz)")
    return sosfiltfilt(butter(4, cutoff_hz, fs=fs, output="sos"), np.asarray(w, dtype=np.float64))


@dataclass(frozen=True)
class ResponseMeasures:
    """The measured part of a RirRecord, the same for every room source (simulated or measured)."""

    t30_s: float | None
    edt_s: float | None
    drr_db: float
    c50_db: float
    direct_azimuth_deg: float
    direct_elevation_deg: float
    direct_doa_error_deg: float


def measure_response(
    rir: np.ndarray, fs: int, azimuth_deg: float, elevation_deg: float, *, anechoic: bool = False,
    decay_below_hz: float | None = None,
) -> ResponseMeasures:
    """T30/EDT/DRR/C50 on W (channel 0) and the direct-path DOA of an ambiX RIR against its label.

    One function for every room source, so a simulated and a measured RIR are labelled and
    checked the same way. Fewer than 4 channels give no DOA (NaN). ``decay_below_hz``: T30 and EDT
    of W low-passed there (RirSettings.decay_below_hz); DRR and C50 stay broadband.
    """
    doa_az, doa_el, doa_err = float("nan"), float("nan"), float("nan")
    if rir.shape[0] >= 4:
        # Noise-free RIRs: broadband, +-0.5 ms, ahead of the first reflection.
        est = direct_sound_doa(rir, fs, pre_ms=0.5, post_ms=0.5, band_hz=None)
        doa_az, doa_el = est.azimuth_deg, est.elevation_deg
        doa_err = float(angular_distance_deg(doa_az, doa_el, azimuth_deg, elevation_deg))
    w = rir[0]
    decay = w if decay_below_hz is None else lowpassed(w, fs, decay_below_hz)
    return ResponseMeasures(
        t30_s=None if anechoic else t30(decay, fs),
        edt_s=None if anechoic else edt(decay, fs),
        drr_db=drr_db(w, fs),
        c50_db=clarity_db(w, fs),
        direct_azimuth_deg=doa_az,
        direct_elevation_deg=doa_el,
        direct_doa_error_deg=doa_err,
    )
