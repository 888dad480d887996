"""Audio preparation and rendering: properties on real signals, and every reject code."""

from __future__ import annotations

import io
import math
from pathlib import Path

import numpy as np
import pytest
import soundfile as sf
from bad_inputs import write_hour_long_wav
from scipy import signal

from schemas.audio import AudioPrepConfig, RejectReason
from tasks import audio_prep as ap
from tasks.errors import AudioRejected

CFG = AudioPrepConfig()
REALDATA = Path(__file__).resolve().parents[2] / "shared" / "realdata"


def wav_bytes(x: np.ndarray, sr: int, subtype: str = "PCM_16", fmt: str = "WAV") -> bytes:
    bio = io.BytesIO()
    sf.write(bio, x, sr, format=fmt, subtype=subtype)
    return bio.getvalue()


def noise(n: int, seed: int = 0, lo: float = 0.1, hi: float = 0.5) -> np.ndarray:
    """Noise whose every sample has |x| in [lo, hi]: trimming thresholds then bite exactly."""
    rng = np.random.default_rng(seed)
    return (rng.choice([-1.0, 1.0], n) * rng.uniform(lo, hi, n)).astype(np.float32)


def synthetic_rir(channels: int, t30: float, sr: int = 48000, seed: int = 0) -> np.ndarray:
    rng = np.random.default_rng(seed)
    n = int(1.5 * t30 * sr)
    env = 10.0 ** (-3.0 * np.arange(n) / (t30 * sr))
    h = rng.standard_normal((channels, n)) * env
    h[:, 0] += 1.0
    return (h * 0.1).astype(np.float32)


def reason_of(fn, *args) -> str:
    with pytest.raises(AudioRejected) as ei:
        fn(*args)
    assert isinstance(ei.value.reason, str)
    return ei.value.reason


# ---------------------------------------------------------------------------------- resample


def test_resample_preserves_sine_frequency_and_amplitude():
    sr_in, sr_out, f, amp = 44100, 48000, 1000.0, 0.5
    t = np.arange(2 * sr_in) / sr_in
    y = ap.resample((amp * np.sin(2 * np.pi * f * t)).astype(np.float32), sr_in, sr_out)
    assert y.dtype == np.float32
    assert abs(len(y) - 2 * sr_out) <= 1
    core = y[sr_out // 4 : -sr_out // 4].astype(np.float64)  # away from the filter edges
    tt = (np.arange(len(core)) + sr_out // 4) / sr_out
    # least squares fit of a sine at f: all the energy must be there, with the right amplitude
    basis = np.stack([np.sin(2 * np.pi * f * tt), np.cos(2 * np.pi * f * tt)], axis=1)
    coef, *_ = np.linalg.lstsq(basis, core, rcond=None)
    assert math.hypot(*coef) == pytest.approx(amp, rel=1e-3)
    resid = core - basis @ coef
    assert np.sqrt(np.mean(resid**2)) < 1e-3 * amp
    # and the spectral peak sits at f
    spec = np.abs(np.fft.rfft(core * np.hanning(len(core))))
    assert abs(np.argmax(spec) * sr_out / len(core) - f) < 2.0


def test_resample_identity_and_integer_ratio():
    x = noise(4800)
    assert ap.resample(x, 48000, 48000) is not None
    np.testing.assert_array_equal(ap.resample(x, 48000, 48000), x)
    assert len(ap.resample(x, 16000, 48000)) == 3 * len(x)


# --------------------------------------------------------------------------------------- trim


def test_trim_removes_leading_and_trailing_silence_exactly():
    sr = 48000
    lead, body, gap, body2, tail = 14_401, 24_000, 4_800, 9_600, 20_003
    x = np.concatenate(
        [
            np.zeros(lead, np.float32),
            noise(body, 1),
            np.zeros(gap, np.float32),  # inner silence: kept
            noise(body2, 2),
            np.zeros(tail, np.float32),
        ]
    )
    y, start, stop = ap.trim_silence(x, sr, -50.0)
    assert start == lead
    assert stop == len(x) - tail
    np.testing.assert_array_equal(y, x[start:stop])


def test_trim_keeps_a_clip_without_silence_and_ignores_quiet_noise_floor():
    sr = 48000
    x = noise(sr, 3)
    y, start, stop = ap.trim_silence(x, sr, -50.0)
    assert (start, stop) == (0, sr)
    np.testing.assert_array_equal(y, x)
    # a -70 dB hiss under a 0.5-amplitude burst is silence relative to the peak
    hiss = (np.random.default_rng(4).standard_normal(3 * sr) * 1e-4).astype(np.float32)
    hiss[sr : 2 * sr] += noise(sr, 5)
    _, start, stop = ap.trim_silence(hiss, sr, -50.0)
    assert abs(start - sr) <= 1 and abs(stop - 2 * sr) <= 1


def test_trim_rejects_silence_and_too_short():
    sr = 48000
    assert reason_of(ap.trim_silence, np.zeros(sr, np.float32), sr, -50.0) == "silent"
    x = np.zeros(sr, np.float32)
    x[1000 : 1000 + 2400] = noise(2400)  # 0.05 s of sound in 1 s of silence
    assert reason_of(ap.trim_silence, x, sr, -50.0) == "too_short"


# --------------------------------------------------------------------------------------- loop


@pytest.mark.parametrize("dur", [0.1, 0.7, 1.3, 3.99])
def test_loop_reaches_min_length_with_whole_copies(dur):
    sr = 48000
    x = noise(round(dur * sr), 6)
    y, copies = ap.loop_to_min_length(x, sr, 4.0)
    assert y.dtype == np.float32
    assert len(y) >= 4 * sr
    assert copies >= 2
    xf = min(round(0.01 * sr), len(x) // 4)
    assert len(y) == copies * len(x) - (copies - 1) * xf
    hop = len(x) - xf
    # away from the crossfades, every copy is the clip itself; start and end are untouched
    np.testing.assert_array_equal(y[: len(x) - xf], x[: len(x) - xf])
    np.testing.assert_array_equal(y[-(len(x) - xf) :], x[xf:])
    k = copies // 2
    np.testing.assert_array_equal(y[k * hop + xf : k * hop + len(x) - xf], x[xf : len(x) - xf])
    # the joins do not click: no sample exceeds the clip's own peak by more than sqrt(2)
    assert np.max(np.abs(y)) <= np.sqrt(2) * np.max(np.abs(x)) + 1e-6


def test_loop_leaves_long_clip_alone():
    x = noise(5 * 48000)
    y, copies = ap.loop_to_min_length(x, 48000, 4.0)
    assert copies == 1
    np.testing.assert_array_equal(y, x)


# -------------------------------------------------------------------------------- convolution


@pytest.mark.parametrize(
    ("rir_len", "block_size", "clip_lens"),
    [
        (2400, None, [1, 17, 4800, 16384, 16385, 50_000]),  # default: one partition
        (5000, 1024, [1, 1023, 1024, 1025, 3 * 1024 + 17, 20_000]),  # 5 partitions, last partial
        (4096, 1024, [1024, 4096, 4097, 9999]),  # partitions that tile the RIR exactly
        (3000, 4096, [100, 4096, 8193]),  # block longer than the RIR
    ],
)
def test_convolution_matches_fftconvolve(rir_len, block_size, clip_lens):
    h = synthetic_rir(4, 0.2, seed=rir_len)[:, :rir_len]
    spec = ap.RirSpectrum.from_rir(h, block_size=block_size)
    for n in clip_lens:
        x = noise(n, n)
        y = ap.convolve(x, spec)
        ref = signal.fftconvolve(x[None, :].astype(np.float64), h.astype(np.float64), axes=-1)
        assert y.shape == (4, n + rir_len - 1) == ref.shape
        assert y.dtype == np.float32
        assert np.max(np.abs(y - ref)) <= 1e-5 * np.max(np.abs(ref)), (n, block_size)


def test_cached_spectrum_is_reused_unchanged():
    h = synthetic_rir(4, 0.5)
    spec = ap.RirSpectrum.from_rir(h)
    assert not spec.spectra.flags.writeable
    before = spec.spectra.copy()
    x1, x2 = noise(4 * 48000, 1), noise(3 * 48000, 2)
    y1 = ap.convolve(x1, spec)
    ap.convolve(x2, spec)  # another clip in between
    y1b = ap.convolve(x1, spec)
    np.testing.assert_array_equal(y1, y1b)
    np.testing.assert_array_equal(spec.spectra, before)
    # and equals a freshly computed spectrum
    np.testing.assert_array_equal(y1, ap.convolve(x1, ap.RirSpectrum.from_rir(h)))
    ref = signal.fftconvolve(x1[None, :].astype(np.float64), h.astype(np.float64), axes=-1)
    assert np.max(np.abs(y1 - ref)) <= 1e-5 * np.max(np.abs(ref))


def test_rir_spectrum_rejects_bad_rirs():
    from tasks.errors import SpatialAudioCapsError

    with pytest.raises(SpatialAudioCapsError):
        ap.RirSpectrum.from_rir(np.zeros((4, 0), np.float32))
    bad = synthetic_rir(4, 0.05)
    bad[2, 10] = np.nan
    with pytest.raises(SpatialAudioCapsError):
        ap.RirSpectrum.from_rir(bad)


# -------------------------------------------------------------------------------------- level


def test_level_one_gain_for_all_channels_rms_target():
    rng = np.random.default_rng(7)
    base = rng.standard_normal(48000).astype(np.float32) * 0.01
    y = np.stack([base, 0.5 * base, -0.25 * base, 0.1 * base])
    out, gain_db = ap.normalise_level(y, CFG)
    g = 10 ** (gain_db / 20)
    np.testing.assert_allclose(out, y * g, rtol=1e-6, atol=1e-9)
    np.testing.assert_allclose(out[1:] / out[0], y[1:] / y[0], rtol=1e-5)
    rms_w = np.sqrt(np.mean(out[0].astype(np.float64) ** 2))
    assert 20 * np.log10(rms_w) == pytest.approx(CFG.target_rms_dbfs, abs=1e-3)
    assert np.max(np.abs(out)) <= 10 ** (CFG.headroom_db / 20)


def test_level_peak_ceiling_wins_for_spiky_audio():
    y = np.zeros((4, 48000), np.float32)
    y[:, 100] = [0.001, 0.004, 0.002, 0.003]  # huge crest factor; the loudest channel is Y
    y[0, 1000:2000] = 1e-5
    out, gain_db = ap.normalise_level(y, CFG)
    ceiling = 10 ** (CFG.headroom_db / 20)
    peak = np.max(np.abs(out))
    assert peak <= ceiling
    assert peak == pytest.approx(ceiling, rel=1e-6)
    rms_w = np.sqrt(np.mean(out[0].astype(np.float64) ** 2))
    assert 20 * np.log10(rms_w) < CFG.target_rms_dbfs
    np.testing.assert_allclose(out, y * 10 ** (gain_db / 20), rtol=1e-6, atol=1e-12)


def test_level_rejects_silent_and_nonfinite_renders():
    assert reason_of(ap.normalise_level, np.zeros((4, 100), np.float32), CFG) == "silent"
    y = np.ones((4, 100), np.float32)
    y[3, 5] = np.inf
    assert reason_of(ap.normalise_level, y, CFG) == "nonfinite"


# --------------------------------------------------------------------------------------- FLAC


@pytest.mark.parametrize(("subtype", "bits"), [("PCM_16", 16), ("PCM_24", 24)])
def test_flac_round_trip(subtype, bits):
    rng = np.random.default_rng(8)
    y = (rng.uniform(-0.89, 0.89, (4, 24000))).astype(np.float32)
    y[2, :10] = [1.0, -1.0, 0.999999, -0.999999, 0, 0, 0, 0, 0, 0]  # full scale clips, no wrap
    data = ap.encode_flac(y, 48000, subtype)
    info = sf.info(io.BytesIO(data))
    assert (info.format, info.subtype, info.channels, info.samplerate, info.frames) == (
        "FLAC",
        subtype,
        4,
        48000,
        24000,
    )
    back, fsr = sf.read(io.BytesIO(data), dtype="float64", always_2d=True)
    assert fsr == 48000
    err = np.abs(back.T - y)
    lsb = 2.0 ** -(bits - 1)
    assert err[:, 10:].max() <= 0.5 * lsb * (1 + 1e-6) + 1e-7
    assert err.max() <= lsb  # the +1.0 sample clips to the top code


def test_flac_mono_input_and_bad_subtype():
    data = ap.encode_flac(noise(1000), 48000)
    assert sf.info(io.BytesIO(data)).channels == 1
    with pytest.raises(ValueError):
        ap.encode_flac(noise(1000), 48000, "PCM_8")  # type: ignore[arg-type]


# ---------------------------------------------------------------------------- the full chains


def test_prepare_and_render_end_to_end():
    sr = 44100
    x = np.concatenate([np.zeros(sr // 2), noise(sr, 9), np.zeros(sr // 4)]).astype(np.float32)
    stereo = np.stack([x, 0.5 * x], axis=1)
    clip, rec = ap.prepare_clip(wav_bytes(stereo, sr, "FLOAT"), CFG)
    assert rec.source.channels == 2 and rec.source.sample_rate == sr and rec.resampled
    assert rec.sample_rate == 48000 and clip.dtype == np.float32
    assert len(clip) == rec.num_samples >= 4 * 48000
    # fewest whole copies that reach 4 s, with 10 ms crossfades at the joins
    n, xf = rec.trimmed_samples, rec.crossfade_samples
    assert rec.loop_count * n - (rec.loop_count - 1) * xf >= 4 * 48000
    assert (rec.loop_count - 1) * n - (rec.loop_count - 2) * xf < 4 * 48000
    # the resampling filter rings a few samples into the silence: within 0.5 ms
    assert abs(rec.trim_start_samples - 24000) <= 24 and abs(rec.trim_end_samples - 12000) <= 24
    # mono is the mean of the channels
    mono, msr = ap.decode(wav_bytes(stereo, sr, "FLOAT"), CFG)
    assert msr == sr
    np.testing.assert_allclose(mono, 0.75 * x, rtol=1e-6)

    h = synthetic_rir(4, 0.3)
    spec = ap.RirSpectrum.from_rir(h)
    flac, info = ap.render_clip(clip, spec, CFG)
    back, fsr = sf.read(io.BytesIO(flac), dtype="float32", always_2d=True)
    assert fsr == 48000 and back.shape == (len(clip) + h.shape[1] - 1, 4)
    assert info.channels == 4 and info.num_samples == back.shape[0] and info.flac_bytes == len(flac)
    assert info.peak_dbfs <= CFG.headroom_db + 1e-6
    assert np.max(np.abs(back)) <= 10 ** (CFG.headroom_db / 20) + 2**-15
    # the render is the convolution times one gain (within 16-bit quantisation)
    ref = signal.fftconvolve(clip[None, :], h, axes=-1) * 10 ** (info.gain_db / 20)
    assert np.max(np.abs(back.T - ref)) < 2**-15 + 1e-5

    cfg24 = CFG.model_copy(update={"flac_subtype": "PCM_24"})
    flac24, info24 = ap.render_clip(clip, spec, cfg24)
    assert sf.info(io.BytesIO(flac24)).subtype == "PCM_24" and info24.flac_subtype == "PCM_24"


def test_render_refuses_rir_at_another_rate():
    spec = ap.RirSpectrum.from_rir(synthetic_rir(4, 0.05), sample_rate=44100)
    with pytest.raises(ValueError):
        ap.render_clip(noise(48000), spec, CFG)


# ---------------------------------------------------------------------------------- bad input


def test_empty_bytes():
    assert reason_of(ap.decode, b"", CFG) == RejectReason.EMPTY


def test_header_only_wav_is_empty():
    assert reason_of(ap.decode, wav_bytes(np.zeros(0, np.float32), 48000), CFG) == "empty"


def test_garbage_bytes_are_undecodable():
    rng = np.random.default_rng(10)
    for n in (1, 44, 5000):
        assert reason_of(ap.decode, rng.bytes(n), CFG) == "undecodable"
    assert reason_of(ap.decode, b"RIFF\x00\x00\x00\x00WAVEjunk", CFG) == "undecodable"


def test_truncated_wav_and_flac():
    """Rule: a WAV whose data chunk declares more bytes than the file holds is truncated (libsndfile
    would silently decode the half that is there); a FLAC cut in half fails to decode after a valid
    header ("lost sync"), which is truncated too. Cut inside the header: undecodable."""
    x = noise(48000)
    wav = wav_bytes(x, 48000)
    assert reason_of(ap.decode, wav[: len(wav) // 2], CFG) == "truncated"
    assert reason_of(ap.decode, wav[:-1], CFG) == "truncated"
    assert reason_of(ap.decode, wav[:30], CFG) == "undecodable"
    flac = wav_bytes(x, 48000, "PCM_16", "FLAC")
    assert reason_of(ap.decode, flac[: len(flac) // 2], CFG) == "truncated"
    # the intact files decode
    assert len(ap.decode(wav, CFG)[0]) == len(ap.decode(flac, CFG)[0]) == 48000


def test_corrupted_files_never_leak_raw_exceptions():
    rng = np.random.default_rng(11)
    x = noise(9600)
    for fmt in ("WAV", "FLAC"):
        good = wav_bytes(x, 48000, "PCM_16", fmt)
        for _ in range(25):
            b = bytearray(good)
            cut = int(rng.integers(0, len(b)))
            if rng.random() < 0.5:
                b = b[:cut]
            else:
                idx = rng.integers(0, len(b), 8)
                b_arr = np.frombuffer(bytes(b), np.uint8).copy()
                b_arr[idx] = rng.integers(0, 256, 8)
                b = bytearray(b_arr.tobytes())
            try:
                ap.prepare_clip(bytes(b), CFG)
            except AudioRejected as e:
                assert e.reason in set(RejectReason)


@pytest.mark.parametrize("bad", [np.nan, np.inf, -np.inf])
def test_nonfinite_float_wav(bad):
    x = noise(4800)
    x[100] = bad
    assert reason_of(ap.decode, wav_bytes(x, 48000, "FLOAT"), CFG) == "nonfinite"


def test_all_zeros_is_silent():
    assert reason_of(ap.prepare_clip, wav_bytes(np.zeros(48000, np.float32), 48000), CFG) == "silent"


def test_clip_of_005_s_is_too_short():
    assert reason_of(ap.decode, wav_bytes(noise(2400), 48000), CFG) == "too_short"


def test_six_channels():
    assert reason_of(ap.decode, wav_bytes(np.tile(noise(4800)[:, None], 6), 48000), CFG) == (
        "too_many_channels"
    )


def test_8_khz_sample_rate():
    assert reason_of(ap.decode, wav_bytes(noise(8000), 8000), CFG) == "sample_rate_too_low"


def test_missing_path_is_unreadable(tmp_path):
    assert reason_of(ap.decode, tmp_path / "nope.wav", CFG) == "unreadable"


def test_one_hour_file_rejected_from_header_without_decoding(tmp_path, monkeypatch):
    """A real, sparse one-hour 16 kHz 8-bit WAV: soundfile writes the header, the data are a hole."""
    seconds = 3600
    path = tmp_path / "hour.wav"
    write_hour_long_wav(path, seconds=seconds)
    assert sf.info(path).duration == pytest.approx(seconds)

    def no_decoding(*a, **k):
        raise AssertionError("the stage decoded a file it should have refused from its header")

    monkeypatch.setattr(sf, "read", no_decoding)
    monkeypatch.setattr(sf.SoundFile, "read", no_decoding)
    assert reason_of(ap.decode, path, CFG) == "too_long"
    assert reason_of(ap.prepare_clip, str(path), CFG) == "too_long"


def test_odd_sample_rate_is_resampled_not_rejected():
    x = noise(22050 * 2)
    clip, rec = ap.prepare_clip(wav_bytes(x, 22051), CFG)
    assert rec.source.sample_rate == 22051 and rec.sample_rate == 48000
    assert len(clip) >= 4 * 48000


def test_config_is_validated():
    with pytest.raises(ValueError):
        AudioPrepConfig(min_duration_s=700)
    with pytest.raises(ValueError):
        AudioPrepConfig(target_rms_dbfs=0.0)
    with pytest.raises(ValueError):
        AudioPrepConfig(flac_subtype="PCM_8")


# ----------------------------------------------------------------------------------- real data


@pytest.mark.realdata
def test_real_esc50_clips():
    audio = REALDATA / "mono" / "esc50" / "audio"
    if not audio.is_dir():
        pytest.skip(f"{audio} absent (a user's clone has no ../shared/realdata)")
    files = sorted(audio.glob("*.wav"))[:3]
    if not files:
        pytest.skip(f"no wav files under {audio}")
    spec = ap.RirSpectrum.from_rir(synthetic_rir(4, 0.5))
    done = 0
    for f in files:
        try:
            clip, rec = ap.prepare_clip(f, CFG)
        except AudioRejected as e:  # ESC-50 has a few near-silent clips: a reason, not a crash
            assert e.reason in {"silent", "too_short"}
            continue
        assert rec.sample_rate == 48000 and rec.source.sample_rate == 44100
        assert len(clip) >= 4 * 48000 and np.isfinite(clip).all()
        flac, info = ap.render_clip(clip, spec, CFG)
        assert sf.info(io.BytesIO(flac)).samplerate == 48000 and info.channels == 4
        done += 1
    assert done >= 1
