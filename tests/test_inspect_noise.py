"""inspect's direct-sound check on samples rendered with sensor noise (issue 15).

A steady sound at 10 dB SNR peaks only ~3x its RMS, so the noise alone reaches the plain
0.2-of-peak onset threshold in the propagation gap before the direct sound arrives. The check then
reads the SNR the sample records and seeks the onset above the noise's peaks.
"""

import io

import numpy as np
import soundfile as sf
from scipy.signal import fftconvolve

from tasks.ambisonics import real_sh_sn3d
from tasks.inspect_dataset import doa_check

FS = 48000


def _steady_foa_in_noise(seed: int, snr_db: float, az_deg: float, el_deg: float) -> bytes:
    """A 1 s hum (three harmonics) arriving at 4 ms from (az, el), four early reflections from
    elsewhere (0.5 to 0.2 of it), an exponentially decaying diffuse tail, white noise on every
    channel ``snr_db`` under W's power; 24-bit FOA FLAC."""
    rng = np.random.default_rng(seed)
    t = np.arange(FS) / FS
    hum = sum(np.sin(2 * np.pi * f * t + rng.uniform(0, 2 * np.pi)) for f in (220.0, 330.0, 550.0))
    n_rir = int(0.3 * FS)
    rir = np.zeros((4, n_rir))

    def arrive(delay_s: float, gain: float, az: float, el: float) -> None:
        rir[:, round(delay_s * FS)] += gain * real_sh_sn3d(1, np.radians(az), np.radians(el))

    arrive(0.004, 1.0, az_deg, el_deg)
    for k, (d, az, el) in enumerate([(0.009, az_deg + 140, -20), (0.013, az_deg - 100, 35),
                                     (0.018, az_deg + 70, 0), (0.024, az_deg + 180, 10)]):
        arrive(d, 0.5 - 0.1 * k, az, el)
    tail = np.arange(int(0.03 * FS), n_rir, 7)  # diffuse tail, T60 ~ 0.6 s, random directions
    gains = rng.normal(size=tail.size) * 0.1 * 10 ** (-3 * (tail / FS) / 0.6)
    rir[:, tail] += gains * real_sh_sn3d(1, rng.uniform(-np.pi, np.pi, tail.size),
                                         np.arcsin(rng.uniform(-1, 1, tail.size)))
    wet = fftconvolve(hum[None, :], rir)
    noise_rms = np.sqrt(np.mean(wet[0] ** 2) / 10 ** (snr_db / 10))
    y = wet + rng.normal(0.0, noise_rms, wet.shape)
    y *= 0.5 / np.abs(y).max()
    buf = io.BytesIO()
    sf.write(buf, y.T, FS, format="FLAC", subtype="PCM_24")
    return buf.getvalue()


def test_known_snr_lifts_the_onset_above_the_noise_at_10_db():
    """Twelve hums from twelve directions: the plain threshold's window lands on noise for most, the
    SNR-aware one finds every direct sound."""
    blind, informed = [], []
    for seed in range(12):
        az, el = -170.0 + 30 * seed, 15.0
        flac = _steady_foa_in_noise(seed, 10.0, az, el)
        blind.append(doa_check("k", flac, az, el).direct_error_deg)
        check = doa_check("k", flac, az, el, snr_db=10.0)
        informed.append(check.direct_error_deg)
        assert not check.flagged
    assert np.median(blind) > 45
    assert max(informed) < 20


def test_noise_as_loud_as_the_sound_is_a_note_not_a_guess():
    flac = _steady_foa_in_noise(0, -10.0, 30.0, 0.0)
    check = doa_check("k", flac, 30.0, 0.0, snr_db=-10.0)
    assert check.direct_error_deg is None and "no onset above it" in (check.note or "")
