"""The ``tetra`` renderer's default microphone against the real Soundfield of S3A's measured RIRs.

Both sides are measured the same way: the direct path (0.5 ms before to 2 ms after the first
arrival, tasks.doa.first_arrival_index) of each of S3A's 50 B-format RIRs, and of the renderer's
output for an order-3 plane-wave scene from the same RIR's label direction; per third-octave band,
the (X^2 + Y^2 + Z^2) / W^2 power ratio (1 for SN3D) and the intensity DOA error against the label
(tasks.doa.intensity_doa with band_hz); medians over the 50. The real DOA error has a floor of
about 9 deg that is no microphone's doing (label and alignment error, the real error below 3 kHz
where no tetrahedron aliases), so the model's error is compared after adding that floor in
quadrature. The tolerances are the fit's worst residuals with some room (module docstring of
tasks/capture_chain.py, "Calibration"); the ideal model fails the dipole/W ones.
"""

from __future__ import annotations

import functools

import numpy as np
import pytest
from srir_bank import S3A

from schemas.rooms import RirSettings
from schemas.scenes import SPEED_OF_SOUND_M_S
from tasks.ambisonics import angular_distance_deg, real_sh_sn3d, unit_vector
from tasks.capture_chain import CAPSULE_DIRECTIONS, IDEAL_SOUNDFIELD, SOUNDFIELD, Tetra, TetraModel, a_to_b
from tasks.doa import first_arrival_index, intensity_doa
from tasks.measured_bank import bank_room_set, load_bank, render_measured

pytestmark = pytest.mark.realdata

FS = 48_000
N_FFT = 4096
PRE_MS, POST_MS = 0.5, 2.0
CENTRES = (1000, 1250, 1600, 2000, 2500, 3150, 4000, 5000, 6300, 8000, 10000, 12500, 14000, 16000)
LOW = [c <= 3150 for c in CENTRES]  # below any tetrahedron's aliasing: the real error floor


def _band(centre: float) -> tuple[float, float]:
    return centre / 2 ** (1 / 6), centre * 2 ** (1 / 6)


def direct_path_curves(rir: np.ndarray, az: float, el: float) -> tuple[np.ndarray, np.ndarray]:
    """Per band of CENTRES: dipole / W power and intensity DOA error (deg) of an ambiX RIR's direct path."""
    onset = first_arrival_index(rir[0])
    seg = rir[:4, onset - round(PRE_MS * FS / 1000) : onset + round(POST_MS * FS / 1000)].astype(np.float64)
    spectrum = np.fft.rfft(seg, N_FFT, axis=1)
    freqs = np.fft.rfftfreq(N_FFT, 1 / FS)
    ratio, error = [], []
    for c in CENTRES:
        low, high = _band(c)
        power = (np.abs(spectrum[:, (freqs >= low) & (freqs <= high)]) ** 2).sum(axis=1)
        ratio.append(power[1:].sum() / power[0])
        est = intensity_doa(seg, FS, band_hz=(low, high), n_fft=N_FFT)
        error.append(float(angular_distance_deg(est.azimuth_deg, est.elevation_deg, az, el)))
    return np.array(ratio), np.array(error)


@functools.cache
def measured() -> tuple[list[tuple[str, float, float]], np.ndarray, np.ndarray]:
    """Labels (room, az, el) and per-RIR curves of S3A's Soundfield, read as any measured bank is."""
    if not S3A.is_dir():
        pytest.skip(f"{S3A} absent (a user's clone has no ../shared/realdata)")
    rooms, placements, _ = bank_room_set(load_bank(S3A), 0, val_rooms=0, test_rooms=0)
    room = {r.room_id: r for r in rooms}
    labels, curves = [], []
    for p in placements:
        rir, _ = render_measured(room[p.room_id], p, RirSettings(order=1, fs=FS))
        labels.append((p.room_id, p.azimuth_deg, p.elevation_deg))
        curves.append(direct_path_curves(rir, p.azimuth_deg, p.elevation_deg))
    return labels, np.array([c[0] for c in curves]), np.array([c[1] for c in curves])


def _plane_wave_render(model: TetraModel, az: float, el: float) -> np.ndarray:
    """The ``tetra`` renderer's B-format for an order-3 SN3D plane-wave impulse scene from (az, el)."""
    scene = np.zeros((16, N_FFT), dtype=np.float32)
    scene[:, N_FFT // 4] = real_sh_sn3d(3, np.radians(az), np.radians(el))
    return Tetra(model).render(scene, FS)


def _plane_wave_microphone(model: TetraModel, az: float, el: float) -> np.ndarray:
    """The microphone itself, every degree: the capsules' direct plane-wave formula
    g(u . v_q) e^{i kR u . v_q} through the module's a_to_b (no scene, so no truncation)."""
    freqs = np.fft.rfftfreq(N_FFT, 1 / FS)
    cos = unit_vector(*np.array(CAPSULE_DIRECTIONS).T).T @ unit_vector(az, el)
    kr = 2 * np.pi * freqs * model.radius_m / SPEED_OF_SOUND_M_S
    capsules = (model.omni + (1 - model.omni) * cos)[:, None] * np.exp(1j * kr[None] * cos[:, None])
    delay = np.exp(-2j * np.pi * freqs * (N_FFT // 4) / FS)
    return a_to_b(np.fft.irfft(capsules * delay, N_FFT).astype(np.float32), FS, model)


@functools.cache
def modelled(model: TetraModel, render: bool) -> tuple[np.ndarray, np.ndarray]:
    """Per-RIR curves of the model at S3A's label directions: the renderer (order-3 scenes) or the
    microphone (every degree)."""
    labels, _, _ = measured()
    make = _plane_wave_render if render else _plane_wave_microphone
    curves = [direct_path_curves(make(model, az, el), az, el) for _, az, el in labels]
    return np.array([c[0] for c in curves]), np.array([c[1] for c in curves])


def medians(model: TetraModel, render: bool) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """Median (real dipole/W, model dipole/W, real DOA error, model DOA error with the real floor)."""
    _, real_ratio, real_error = measured()
    ratio, error = modelled(model, render)
    floor = np.median(real_error[:, LOW])
    return (np.median(real_ratio, 0), np.median(ratio, 0), np.median(real_error, 0),
            np.hypot(np.median(error, 0), floor))


def test_s3a_soundfield_is_what_the_calibration_measured() -> None:
    """The real curves the fit was made to: dipole/W 1.1 at 2 kHz, above 2.4 from 5 to 10 kHz,
    back near 2 at 12.5-16 kHz; DOA error at its ~9 deg floor to 6.3 kHz, 21 at 8 kHz, 30-35 above."""
    _, real_ratio, real_error = measured()
    by = dict(zip(CENTRES, zip(np.median(real_ratio, 0), np.median(real_error, 0), strict=True), strict=True))
    assert 1.0 < by[2000][0] < 1.25 and all(by[c][0] > 2.4 for c in (5000, 6300, 8000, 10000))
    assert all(1.5 < by[c][0] < 2.3 for c in (12500, 14000, 16000))
    assert all(e < 11.0 for c, (_, e) in by.items() if c <= 6300)
    assert 17.0 < by[8000][1] < 25.0 and all(28.0 < by[c][1] < 38.0 for c in (10000, 12500, 14000, 16000))


def _misfit(model: TetraModel, render: bool, top_hz: float) -> tuple[np.ndarray, np.ndarray]:
    """log2(model / real) dipole/W per band to ``top_hz``, and model - real DOA error (deg) from 8 kHz."""
    real_ratio, ratio, real_error, error = medians(model, render)
    bands = np.array(CENTRES) <= top_hz
    aliased = bands & (np.array(CENTRES) >= 8000)
    return np.log2(ratio / real_ratio)[bands], (error - real_error)[aliased]


def test_default_microphone_follows_the_real_soundfield_1_to_16_khz() -> None:
    """The default microphone (every degree, through a_to_b): median dipole/W within a factor 1.6
    of the real one in every third octave 1-16 kHz (rms log2 below 0.35; measured 0.24, worst 0.68x
    at 6.3 kHz), DOA error within 10 deg of the real one from 8 kHz (rms below 6 deg; measured 4.5,
    worst +9.0 at 14 kHz). The ideal Gerzon model misses the dipole/W bound (rms log2 0.91: flat to
    6 kHz, where the real one is already 3); its DOA rms (6.6) is only a little worse."""
    log_ratio, doa = _misfit(SOUNDFIELD, render=False, top_hz=16000)
    assert np.abs(log_ratio).max() < np.log2(1.6), np.round(2**log_ratio, 2)
    assert np.sqrt(np.mean(log_ratio**2)) < 0.35 and np.sqrt(np.mean(doa**2)) < 6.0, (log_ratio, doa)
    assert np.abs(doa).max() < 10.0, np.round(doa, 1)
    log_ratio, _ = _misfit(IDEAL_SOUNDFIELD, render=False, top_hz=16000)
    assert np.sqrt(np.mean(log_ratio**2)) > 0.35


def test_default_tetra_render_follows_the_real_soundfield_to_10_khz() -> None:
    """The renderer (order-3 scenes) holds the calibration to 10 kHz: dipole/W within a factor 1.6
    per band, DOA error within 10 deg at 8-10 kHz. Above, the scene lacks the degrees > 3 that the
    microphone aliases (module docstring, "Truncation"), so the render is checked only to 10 kHz."""
    log_ratio, doa = _misfit(SOUNDFIELD, render=True, top_hz=10000)
    assert np.abs(log_ratio).max() < np.log2(1.6), np.round(2**log_ratio, 2)
    assert np.abs(doa).max() < 10.0, np.round(doa, 1)
    log_ratio, _ = _misfit(IDEAL_SOUNDFIELD, render=True, top_hz=10000)
    assert np.sqrt(np.mean(log_ratio**2)) > 2 * np.sqrt(np.mean(_misfit(SOUNDFIELD, True, 10000)[0] ** 2))
