"""Audio preparation and rendering: pure functions, no Prefect, no global state.

prepare_clip: decode → mono → resample to 48 kHz → trim silence → loop to >= 4 s.
render_clip:  convolve with a cached multichannel RIR spectrum → renderer → one gain → FLAC bytes.

Every bad input ends in ``AudioRejected(reason, detail)`` with a ``RejectReason`` code; no
soundfile or numpy exception escapes ``decode``. The rules for the codes are in ``decode``'s
docstring and in ``schemas.audio.RejectReason``.

Performance notes (the render worker spends its time here): the RIR spectra are computed once per
(RIR, block size) in ``RirSpectrum`` and shared by the ~100 clips that use that RIR; everything
stays float32/complex64; the default block makes the RIR a single partition, which was the
fastest layout measured for 0.5–3 s RIRs and 4–30 s clips; no BLAS call sits on the hot path
(OpenBLAS's spinning idle threads made a render cost 1.6x the bare kernel in CPU time).
"""

from __future__ import annotations

import io
import math
import os
from collections.abc import Sequence
from dataclasses import dataclass
from math import gcd
from typing import BinaryIO

import numpy as np
import soundfile as sf
from scipy import fft as sfft
from scipy import signal

from schemas.audio import (
    AudioPrepConfig,
    FlacSubtype,
    PreparedClip,
    RejectReason,
    RenderedInfo,
    SourceInfo,
)
from tasks.errors import AudioRejected, SpatialAudioCapsError
from tasks.renderers import DEFAULT_RENDERER, renderer
from tasks.sensor_noise import SampleNoise, add_sensor_noise

AudioSource = bytes | bytearray | memoryview | str | os.PathLike[str]

# Bytes of the file head read to find the WAV data chunk; headers with more metadata than this
# simply skip the WAV byte-count check (the frame-count check still applies).
_HEAD_BYTES = 1 << 16
# Lossy containers report an estimated frame count; tolerate this fraction of shortfall.
_LOSSY_FORMATS = frozenset({"MP3", "MPEG", "OGG"})
_LOSSY_TOLERANCE = 0.02
_DECODE_ERRORS = (sf.SoundFileError, RuntimeError, OSError, ValueError, EOFError, TypeError)


def _why(e: BaseException) -> str:
    """libsndfile's own message, without the repr of the BytesIO it was reading."""
    return str(getattr(e, "error_string", "") or e)


def _db(x: float) -> float:
    """Amplitude to dB; -inf for zero."""
    return 20.0 * math.log10(x) if x > 0 else -math.inf


# --------------------------------------------------------------------------------------------
# decode


def _open(data: AudioSource) -> tuple[BinaryIO | str, int, bytes]:
    """(what soundfile should open, total size in bytes, first bytes of the file)."""
    if isinstance(data, bytes | bytearray | memoryview):
        raw = bytes(data)
        if not raw:
            raise AudioRejected(RejectReason.EMPTY, "zero bytes")
        return io.BytesIO(raw), len(raw), raw[:_HEAD_BYTES]
    path = os.fspath(data)
    try:
        size = os.path.getsize(path)
        with open(path, "rb") as fh:
            head = fh.read(_HEAD_BYTES)
    except OSError as e:
        raise AudioRejected(RejectReason.UNREADABLE, f"{path}: {e}") from e
    if size == 0:
        raise AudioRejected(RejectReason.EMPTY, f"{path}: zero bytes")
    return path, size, head


def _wav_missing_bytes(head: bytes, size: int) -> int:
    """Bytes that a RIFF/WAVE file's data chunk declares but the file does not hold.

    libsndfile silently clamps a WAV's frame count to the bytes present, so a cut WAV decodes
    "fine" and its header frame count already agrees with the data. We therefore read the
    declared data chunk size ourselves. Returns 0 when not WAV, when the size is the streaming
    placeholder (0 or 0xFFFFFFFF), or when the data chunk is not within the first bytes read.
    """
    if len(head) < 12 or head[:4] != b"RIFF" or head[8:12] != b"WAVE":
        return 0
    pos = 12
    while pos + 8 <= len(head):
        cid = head[pos : pos + 4]
        csz = int.from_bytes(head[pos + 4 : pos + 8], "little")
        if cid == b"data":
            if csz in (0, 0xFFFFFFFF):
                return 0
            return max(0, pos + 8 + csz - size)
        pos += 8 + csz + (csz & 1)
    return 0


def probe(data: AudioSource, cfg: AudioPrepConfig) -> SourceInfo:
    """Read and check the header only: no sample is decoded.

    Raises AudioRejected with empty / unreadable / undecodable / too_many_channels /
    sample_rate_too_low / sample_rate_too_high / too_long / too_short / truncated (WAV whose
    data chunk declares more bytes than the file holds).
    """
    src, size, head = _open(data)
    try:
        info = sf.info(src)
    except _DECODE_ERRORS as e:
        raise AudioRejected(RejectReason.UNDECODABLE, _why(e)) from e
    sr, ch, frames = int(info.samplerate), int(info.channels), int(info.frames)
    if sr <= 0 or ch <= 0:
        raise AudioRejected(RejectReason.UNDECODABLE, f"header: {sr} Hz, {ch} channels")
    src_info = SourceInfo(
        format=str(info.format),
        subtype=str(info.subtype),
        sample_rate=sr,
        channels=ch,
        frames=frames,
        duration_s=frames / sr,
    )
    if ch > cfg.max_channels:
        raise AudioRejected(RejectReason.TOO_MANY_CHANNELS, f"{ch} channels > max {cfg.max_channels}")
    if sr < cfg.min_sr:
        raise AudioRejected(RejectReason.SAMPLE_RATE_TOO_LOW, f"{sr} Hz < min {cfg.min_sr} Hz")
    if sr > cfg.max_sr:
        raise AudioRejected(RejectReason.SAMPLE_RATE_TOO_HIGH, f"{sr} Hz > max {cfg.max_sr} Hz")
    if src_info.duration_s > cfg.max_duration_s:
        raise AudioRejected(
            RejectReason.TOO_LONG,
            f"header says {src_info.duration_s:.1f} s > max {cfg.max_duration_s:g} s",
        )
    missing = _wav_missing_bytes(head, size)
    if missing:
        raise AudioRejected(
            RejectReason.TRUNCATED, f"WAV data chunk is {missing} bytes short of its declared size"
        )
    if frames == 0:
        raise AudioRejected(RejectReason.EMPTY, "header declares zero frames")
    if src_info.duration_s < cfg.min_duration_s:
        raise AudioRejected(
            RejectReason.TOO_SHORT,
            f"{src_info.duration_s:.3f} s < min {cfg.min_duration_s:g} s",
        )
    return src_info


def decode_with_info(data: AudioSource, cfg: AudioPrepConfig) -> tuple[np.ndarray, SourceInfo]:
    """``decode`` that also returns the header record (used by prepare_clip)."""
    info = probe(data, cfg)
    src, _, _ = _open(data)
    try:
        a = sf.read(src, dtype="float32", always_2d=True)[0]
    except _DECODE_ERRORS as e:
        # libsndfile cannot tell a stream that stops early from one damaged part-way
        # (FLAC reports "lost sync" for both): after a valid header, both are "truncated".
        raise AudioRejected(RejectReason.TRUNCATED, f"decoding failed after the header: {_why(e)}") from e
    n = int(a.shape[0])
    if n == 0:
        raise AudioRejected(RejectReason.EMPTY, "no frames decoded")
    tolerance = int(info.frames * _LOSSY_TOLERANCE) if info.format in _LOSSY_FORMATS else 0
    if n < info.frames - tolerance:
        raise AudioRejected(
            RejectReason.TRUNCATED, f"decoded {n} of the {info.frames} frames the header declares"
        )
    # A float64 sum cannot overflow on float32 input, so it is finite iff every sample is.
    if not math.isfinite(float(a.sum(dtype=np.float64))):
        raise AudioRejected(RejectReason.NONFINITE, "NaN or inf samples")
    if a.shape[1] == 1:
        mono = np.ascontiguousarray(a[:, 0])
    else:
        mono = a.mean(axis=1, dtype=np.float64).astype(np.float32)
    return mono, info


def decode(data: AudioSource, cfg: AudioPrepConfig) -> tuple[np.ndarray, int]:
    """Decode bytes or a path to a mono float32 array (mean of channels) and its sample rate.

    The header is checked first (``probe``), so an hour-long, 6-channel or 8 kHz file is refused
    without decoding a sample. Reject rules, in order:

    - empty: zero bytes, zero frames declared, or zero frames decoded;
    - unreadable: a path the OS cannot stat/open;
    - undecodable: libsndfile does not recognise the header (garbage bytes, cut inside header);
    - too_many_channels / sample_rate_too_low / sample_rate_too_high / too_long / too_short:
      from the header's channels, rate and frames;
    - truncated: (a) WAV whose data chunk declares more bytes than the file holds (libsndfile
      would silently decode the part present); (b) fewer frames decoded than the header declares
      (2 % slack for MP3/OGG, whose counts are estimates); (c) a decode error after a valid
      header (e.g. FLAC cut in half: "lost sync");
    - nonfinite: any NaN/inf sample.
    """
    mono, info = decode_with_info(data, cfg)
    return mono, info.sample_rate


# --------------------------------------------------------------------------------------------
# resample, trim, loop


def resample(x: np.ndarray, sr_in: int, sr_out: int, dtype: type = np.float32) -> np.ndarray:
    """Polyphase resampling (scipy resample_poly, Kaiser window) along the last axis by sr_out/sr_in
    reduced by gcd, in ``dtype`` (float32 for clips; RIRs and HRIRs keep float64).

    Common rates reduce to small factors (44.1k→48k is 160/147). Odd rates (e.g. 44101 Hz) give
    huge factors; resample_poly still handles them exactly, at a one-off filter-design cost.
    """
    x = np.asarray(x, dtype=dtype)
    if sr_in <= 0 or sr_out <= 0:
        raise ValueError(f"sample rates must be positive, got {sr_in} -> {sr_out}")
    if sr_in == sr_out:
        return x
    g = gcd(sr_in, sr_out)
    y = signal.resample_poly(x, sr_out // g, sr_in // g, axis=-1)
    return np.asarray(y, dtype=dtype)


def trim_silence(
    x: np.ndarray,
    sr: int,
    threshold_db: float,
    *,
    min_duration_s: float = 0.1,
    floor_dbfs: float = -80.0,
    frame_s: float = 0.01,
) -> tuple[np.ndarray, int, int]:
    """Cut leading and trailing silence; returns (trimmed, start, stop) with trimmed = x[start:stop].

    A frame (``frame_s``) is sound when its RMS is at least peak·10^(threshold_db/20). The first
    and last sound frames are found, then each edge is refined to the sample: the first (last)
    sample at or above that level in the sound frame or the frame before (after) it. Inner
    silences are kept: they are part of the sound.

    Rejects: silent when the peak is below ``floor_dbfs`` (e.g. all zeros); too_short when what
    remains is under ``min_duration_s``.
    """
    x = np.asarray(x, dtype=np.float32)
    n = int(x.shape[0])
    peak = float(np.max(np.abs(x))) if n else 0.0
    if _db(peak) < floor_dbfs:
        raise AudioRejected(RejectReason.SILENT, f"peak {_db(peak):.1f} dBFS below floor {floor_dbfs:g} dBFS")
    thr = peak * 10.0 ** (threshold_db / 20.0)
    fl = max(1, round(frame_s * sr))
    nf = -(-n // fl)
    xd = np.zeros(nf * fl, dtype=np.float64)
    xd[:n] = x
    frames = xd.reshape(nf, fl)
    counts = np.full(nf, fl, dtype=np.float64)
    counts[-1] = n - (nf - 1) * fl
    rms = np.sqrt(np.einsum("ij,ij->i", frames, frames) / counts)
    loud = np.flatnonzero(rms >= thr)
    # The peak's frame has RMS >= peak/sqrt(frame), so it qualifies unless the threshold is
    # above that (a very high threshold_db); then the peak's frame alone is the sound.
    if loud.size == 0:
        loud = np.array([int(np.argmax(np.abs(x))) // fl])
    f0, f1 = int(loud[0]), int(loud[-1])
    a = max(0, (f0 - 1) * fl)
    seg = np.abs(x[a : (f0 + 1) * fl]) >= thr
    start = a + int(np.argmax(seg)) if seg.any() else f0 * fl
    b = min(n, (f1 + 2) * fl)
    seg = np.abs(x[f1 * fl : b]) >= thr
    stop = f1 * fl + (len(seg) - int(np.argmax(seg[::-1]))) if seg.any() else min(n, (f1 + 1) * fl)
    if (stop - start) < min_duration_s * sr:
        raise AudioRejected(
            RejectReason.TOO_SHORT,
            f"{(stop - start) / sr:.3f} s of sound after trimming < min {min_duration_s:g} s",
        )
    return x[start:stop], start, stop


def loop_to_min_length(
    x: np.ndarray, sr: int, min_s: float, *, crossfade_s: float = 0.01
) -> tuple[np.ndarray, int]:
    """Tile a clip until it lasts at least ``min_s``; returns (looped, number of copies).

    Whole copies only (a loop never ends mid-sound). Each join is an equal-power (sin/cos)
    crossfade of ``crossfade_s`` (at most a quarter of the clip), which avoids the click of a
    hard splice; the very start and end are left untouched.
    """
    x = np.asarray(x, dtype=np.float32)
    n = int(x.shape[0])
    target = math.ceil(min_s * sr)
    if n == 0:
        raise ValueError("cannot loop an empty clip")
    if n >= target:
        return x, 1
    xf = min(round(crossfade_s * sr), n // 4)
    hop = n - xf
    copies = max(2, math.ceil((target - xf) / hop))
    out = np.zeros(hop * (copies - 1) + n, dtype=np.float32)
    if xf:
        t = (np.arange(xf, dtype=np.float64) + 0.5) / xf
        fade_in = np.sin(0.5 * np.pi * t).astype(np.float32)
        fade_out = np.cos(0.5 * np.pi * t).astype(np.float32)
    for k in range(copies):
        seg = x.copy()
        if xf:
            if k > 0:
                seg[:xf] *= fade_in
            if k < copies - 1:
                seg[-xf:] *= fade_out
        out[k * hop : k * hop + n] += seg
    return out, copies


# --------------------------------------------------------------------------------------------
# convolution


def default_block_size(rir_length: int) -> int:
    """Input block for a single-partition layout: ~2×RIR, at least 16 Ki, at most 1 Mi samples.

    Measured on 0.5–3 s RIRs and 4–10 s clips: an FFT of about 3× the RIR length, one RIR
    partition, beat both smaller uniform partitions and scipy's own oaconvolve/fftconvolve.
    """
    return int(min(max(2 * rir_length, 1 << 14), 1 << 20))


@dataclass(frozen=True, eq=False)
class RirSpectrum:
    """The FFTs of one multichannel RIR, cut into uniform partitions; compute once, reuse often.

    The RIR (C, L) is cut into P = ceil(L / partition) partitions of ``partition`` samples,
    ``partition = min(block_size, L)``, each zero-padded to ``fft_size`` >= block_size +
    partition - 1 (a fast FFT length). The input is cut into blocks of ``block_size``; output
    block k is the inverse FFT of sum_p X[k-p]·H[p] (a frequency-domain delay line), added at
    k·block_size. With P = 1 (the default) this is plain overlap-add with a cached RIR spectrum.
    The arrays are read-only so one instance can be shared across clips and threads.
    """

    spectra: np.ndarray  # (C, P, fft_size // 2 + 1) complex64
    block_size: int
    partition: int
    fft_size: int
    rir_length: int
    sample_rate: int

    @property
    def channels(self) -> int:
        return int(self.spectra.shape[0])

    @property
    def partitions(self) -> int:
        return int(self.spectra.shape[1])

    @classmethod
    def from_rir(
        cls, rir: np.ndarray, sample_rate: int = 48000, block_size: int | None = None
    ) -> RirSpectrum:
        """Precompute the partition spectra of ``rir`` (shape (C, L), or (L,) for one channel)."""
        h = np.asarray(rir, dtype=np.float32)
        if h.ndim == 1:
            h = h[None, :]
        if h.ndim != 2 or h.shape[0] == 0 or h.shape[1] == 0:
            raise SpatialAudioCapsError(f"RIR must have shape (channels, length), got {h.shape}")
        if not np.isfinite(h).all():
            raise SpatialAudioCapsError("RIR has NaN or inf samples")
        c, length = h.shape
        b = default_block_size(length) if block_size is None else int(block_size)
        if b <= 0:
            raise SpatialAudioCapsError(f"block_size must be positive, got {b}")
        part = min(b, length)
        p = -(-length // part)
        m = sfft.next_fast_len(b + part - 1, real=True)
        hp = np.zeros((c, p * part), dtype=np.float32)
        hp[:, :length] = h
        spectra = sfft.rfft(hp.reshape(c, p, part), n=m, axis=-1).astype(np.complex64, copy=False)
        spectra.flags.writeable = False
        return cls(spectra, b, part, m, length, int(sample_rate))


def convolve(x: np.ndarray, spectrum: RirSpectrum) -> np.ndarray:
    """Full linear convolution of a mono clip with the RIR: shape (C, len(x) + L - 1), float32.

    Uniform-partitioned overlap-add in float32/complex64; matches scipy.signal.fftconvolve to
    about 1e-6 of the output peak.
    """
    x = np.asarray(x, dtype=np.float32)
    if x.ndim != 1 or x.shape[0] == 0:
        raise ValueError(f"expected a non-empty mono clip, got shape {x.shape}")
    s = spectrum
    n, b, m = int(x.shape[0]), s.block_size, s.fft_size
    c, p, nbins = s.spectra.shape
    j = -(-n // b)
    xp = np.zeros((j, b), dtype=np.float32)
    xp.reshape(-1)[:n] = x
    X = sfft.rfft(xp, n=m, axis=-1)  # (J, F) complex64
    k = j + p - 1
    if p == 1:
        Y = s.spectra[:, 0, None, :] * X[None, :, :]
    else:
        Y = np.zeros((c, k, nbins), dtype=np.complex64)
        tmp = np.empty((c, j, nbins), dtype=np.complex64)
        for q in range(p):
            np.multiply(s.spectra[:, q, None, :], X[None, :, :], out=tmp)
            Y[:, q : q + j, :] += tmp
    yb = sfft.irfft(Y, n=m, axis=-1)  # (C, K, M) float32
    total = n + s.rir_length - 1
    valid = b + s.partition - 1  # non-zero length of each block's output
    out = np.zeros((c, total), dtype=np.float32)
    for i in range(k):
        a = i * b
        e = min(a + valid, total)
        if a >= e:
            break
        out[:, a:e] += yb[:, i, : e - a]
    return out


# --------------------------------------------------------------------------------------------
# level and FLAC


def _rms(y: np.ndarray, channels: tuple[int, ...]) -> float:
    """RMS over some channels of (C, N) audio, float64 accumulation. Not ``w @ w``: that is a BLAS
    call, and OpenBLAS's idle threads then spin on the other cores, which doubled the measured CPU
    time of a render."""
    energy = sum(float(np.einsum("i,i->", y[c], y[c], dtype=np.float64)) for c in channels)
    return math.sqrt(energy / max(1, len(channels) * y.shape[1]))


def _peak(y: np.ndarray) -> float:
    """max |y| without allocating |y|; NaN if y holds a NaN."""
    return float(max(np.max(y), -np.min(y)))


def normalise_level(
    y: np.ndarray,
    cfg: AudioPrepConfig,
    reference: tuple[int, ...] = renderer(DEFAULT_RENDERER).level_channels,
) -> tuple[np.ndarray, float]:
    """Scale all channels by one gain: the RMS of the ``reference`` channels (the renderer's
    ``level_channels``; W of ambiX by default) to ``target_rms_dbfs``, unless that would put the
    peak over ``headroom_db``, in which case the peak sits at the ceiling.

    One gain keeps the inter-channel ratios, which is what carries direction in ambisonics.
    Returns (scaled copy, gain in dB). Rejects: nonfinite or silent (zero reference) renders.
    """
    y = np.asarray(y, dtype=np.float32)
    if y.ndim == 1:
        y = y[None, :]
    peak = _peak(y)
    if not math.isfinite(peak):
        raise AudioRejected(RejectReason.NONFINITE, "rendered audio has NaN or inf samples")
    rms = _rms(y, reference)
    if rms <= 0.0 or peak <= 0.0:
        raise AudioRejected(RejectReason.SILENT, f"rendered reference channels {list(reference)} are silent")
    gain_db = min(cfg.target_rms_dbfs - _db(rms), cfg.headroom_db - _db(peak))
    g = np.float32(10.0 ** (gain_db / 20.0))
    # float32 rounding of g could lift the peak a hair over the ceiling: nudge it back.
    ceiling = 10.0 ** (cfg.headroom_db / 20.0)
    if peak * float(g) > ceiling:
        g = np.nextafter(np.float32(ceiling / peak), np.float32(0.0))
        gain_db = _db(float(g))
    return y * g, float(gain_db)


_FULL_SCALE = {"PCM_16": (np.int16, 32768.0, 0), "PCM_24": (np.int32, 8388608.0, 8)}


def encode_flac(
    y: np.ndarray,
    sr: int,
    subtype: FlacSubtype = "PCM_16",
    *,
    compression_level: float | None = None,
) -> bytes:
    """Encode (C, N) float audio (or (N,) mono) in [-1, 1) to FLAC bytes.

    Quantised here, not in libsndfile: round to nearest, clip to the integer range, scaled by
    2^15 (16-bit) or 2^23 (24-bit, stored left-justified in int32 as libsndfile expects), so
    that soundfile's float read-back (÷2^15, ÷2^31) is exact to half an LSB.
    """
    if subtype not in _FULL_SCALE:
        raise ValueError(f"subtype must be PCM_16 or PCM_24, got {subtype!r}")
    y = np.asarray(y, dtype=np.float32)
    if y.ndim == 1:
        y = y[None, :]
    if y.ndim != 2 or y.shape[1] == 0:
        raise ValueError(f"expected (channels, samples) audio, got shape {y.shape}")
    if not math.isfinite(_peak(y)):
        raise AudioRejected(RejectReason.NONFINITE, "cannot encode NaN or inf samples")
    dtype, scale, shift = _FULL_SCALE[subtype]
    buf = np.empty((y.shape[1], y.shape[0]), dtype=np.float32)  # (N, C) as soundfile wants
    np.multiply(y.T, np.float32(scale), out=buf)
    np.rint(buf, out=buf)
    np.clip(buf, -scale, scale - 1.0, out=buf)
    q = buf.astype(dtype)
    if shift:
        q <<= shift
    bio = io.BytesIO()
    kw = {} if compression_level is None else {"compression_level": compression_level}
    sf.write(bio, q, sr, format="FLAC", subtype=subtype, **kw)
    return bio.getvalue()


# --------------------------------------------------------------------------------------------
# the two chains


def prepare_clip(data: AudioSource, cfg: AudioPrepConfig) -> tuple[np.ndarray, PreparedClip]:
    """decode → mono → resample to cfg.target_sr → trim silence → loop to cfg.min_loop_s."""
    x, info = decode_with_info(data, cfg)
    sr = cfg.target_sr
    y = resample(x, info.sample_rate, sr)
    n_res = int(y.shape[0])
    trimmed, start, stop = trim_silence(
        y,
        sr,
        cfg.silence_threshold_db,
        min_duration_s=cfg.min_duration_s,
        floor_dbfs=cfg.silence_floor_dbfs,
        frame_s=cfg.trim_frame_s,
    )
    looped, copies = loop_to_min_length(trimmed, sr, cfg.min_loop_s, crossfade_s=cfg.loop_crossfade_s)
    n_trim = int(trimmed.shape[0])
    xf = 0 if copies == 1 else min(round(cfg.loop_crossfade_s * sr), n_trim // 4)
    record = PreparedClip(
        source=info,
        sample_rate=sr,
        resampled=info.sample_rate != sr,
        trim_start_samples=start,
        trim_end_samples=n_res - stop,
        trimmed_samples=n_trim,
        loop_count=copies,
        crossfade_samples=xf,
        num_samples=int(looped.shape[0]),
        duration_s=looped.shape[0] / sr,
        peak_dbfs=_db(_peak(looped)),
    )
    return looped, record


Encoded = dict[str, tuple[bytes, RenderedInfo]]
"""FLAC bytes and their record per output format (renderer name), in the order asked for."""


def render_clip(
    clip: np.ndarray, rir_spectrum: RirSpectrum, cfg: AudioPrepConfig, fmt: str = DEFAULT_RENDERER
) -> tuple[bytes, RenderedInfo]:
    """convolve the prepared mono clip with the ambiX RIR (the scene) → the ``fmt`` renderer →
    one gain on its level channels → FLAC bytes (cfg.flac_subtype)."""
    return render_formats(clip, rir_spectrum, cfg, (fmt,))[fmt]


def render_formats(
    clip: np.ndarray,
    rir_spectrum: RirSpectrum,
    cfg: AudioPrepConfig,
    formats: Sequence[str],
    noise: SampleNoise | None = None,
) -> Encoded:
    """render_clip for several output formats of the same sample: the scene is convolved once and
    each renderer reads it (a build's ``formats``: ambiX beside binaural and mic); ``noise``: the
    sample's sensor noise (tasks.sensor_noise.sample_noise), added to each format."""
    if rir_spectrum.sample_rate != cfg.target_sr:
        raise ValueError(f"RIR is at {rir_spectrum.sample_rate} Hz but the clip is at {cfg.target_sr} Hz")
    return encode_formats(
        convolve(clip, rir_spectrum),
        cfg,
        formats,
        noise,
        rir_samples=rir_spectrum.rir_length,
        block_size=rir_spectrum.block_size,
        fft_size=rir_spectrum.fft_size,
    )


def encode_formats(
    scene: np.ndarray,
    cfg: AudioPrepConfig,
    formats: Sequence[str],
    noise: SampleNoise | None = None,
    **convolution: int,
) -> Encoded:
    """level_and_encode of one scene in each format; each format has its own gain, set on its own
    level channels (W for ambiX, both ears for binaural), since their levels differ by design, and
    its own sensor noise at the sample's SNR (none when ``noise`` is None)."""
    return {fmt: level_and_encode(scene, cfg, fmt, noise=noise, **convolution) for fmt in formats}


def level_and_encode(
    scene: np.ndarray,
    cfg: AudioPrepConfig,
    fmt: str,
    *,
    rir_samples: int,
    block_size: int,
    fft_size: int,
    noise: SampleNoise | None = None,
) -> tuple[bytes, RenderedInfo]:
    """The ambiX scene (C, N) → the ``fmt`` renderer → sensor noise (``noise``, on the rendered
    channels: the capture device's own) → one gain on its level channels → FLAC bytes, and the
    record of it; the end of render_clip, shared with the scene renderer (tasks/scene_render.py),
    whose scene is a mix of several convolutions."""
    out = renderer(fmt)
    if not out.spatial:
        raise ValueError(f"renderer {fmt!r} does not render a spatial scene")
    rendered = out.render(scene, cfg.target_sr)
    if noise is not None:
        rendered = add_sensor_noise(rendered, noise.snr_db, noise.rng(fmt), noise.spectrum,
                                    out.level_channels, cfg.target_sr)
    y, gain_db = normalise_level(rendered, cfg, out.level_channels)
    flac = encode_flac(y, cfg.target_sr, cfg.flac_subtype, compression_level=cfg.flac_compression_level)
    peak_db = _db(_peak(y))
    info = RenderedInfo(
        sample_rate=cfg.target_sr,
        channels=int(y.shape[0]),
        num_samples=int(y.shape[1]),
        duration_s=y.shape[1] / cfg.target_sr,
        rir_samples=rir_samples,
        block_size=block_size,
        fft_size=fft_size,
        gain_db=gain_db,
        peak_limited=abs(peak_db - cfg.headroom_db) < 1e-3,
        peak_dbfs=peak_db,
        rms_dbfs_w=_db(_rms(y, out.level_channels)),
        flac_subtype=cfg.flac_subtype,
        flac_bytes=len(flac),
        sensor_snr_db=None if noise is None else noise.snr_db,
        sensor_noise_spectrum=None if noise is None else noise.spectrum,
    )
    return flac, info
