"""Rendering a drawn scene: each source convolved along its trajectory, levelled, mixed, encoded.

A scene (schemas.scenes.ScenePlan) holds sources with their own active interval, level and
trajectory; every trajectory point is a bank placement whose ambiX RIR is given by placement id.

Per source: the prepared mono clip is looped (tasks.audio_prep.loop_to_min_length) or cut to its
interval, with ``EDGE_FADE_S`` fades at both edges, and convolved:

- static (one point): one RIR, tasks.audio_prep.convolve (the partitioned convolution ELSA uses);
- moving: a time-varying convolution ``y = sum_k (w_k x) * h_k``. The weights w_k are triangles on
  the input's time axis, a partition of unity peaking at point k's time, so between two points the
  input crossfades linearly from one RIR to the next. It is computed piece by piece between
  consecutive points (only two terms are non-zero there; their spectra are summed before one
  inverse FFT) and overlap-added. Because a listener hears the late diffuse tail of a room
  as the same from every position, only the *early* part of each point's RIR (up to
  ``EARLY_AFTER_DIRECT_S`` past the latest direct sound, then a ``SPLIT_FADE_S`` raised-cosine
  handover) is convolved per point; the late part is taken from one point (the first: the bank
  renders a path's later points as early parts only, schemas.scenes.POINT_EARLY_WINDOW_S) and
  convolved once with the whole input. This keeps a moving source at about two static
  convolutions of CPU instead of one per point; with identical point RIRs the split is exact, and
  against the exact time-varying convolution with every point's full RIR the 100 ms frame DOAs
  stay within 1 deg (tests/test_scene_render.py).

What is approximated (documented, not hidden):

- no Doppler shift: the propagation delay changes in steps between points (each point's RIR has
  its own delay), blended by the crossfade, not continuously;
- image sources move only through the point RIRs: the reflections are exact at the points and
  crossfaded in between, which is the same approximation as for the direct path;
- the late part past the early window is one point's for the whole path (a diffuse room's late
  field does not depend on the source position; its level changes little over a path);
- the output is the scene's length: reverberation that runs past the end of the scene is cut.

Mix: source 0 keeps its level; each further source gets the gain that puts its wet W RMS over its
active interval at ``level_db`` relative to source 0's (the gains are recorded, and the same
inputs give the same gains and bytes). An optional diffuse background (independent pink noise per
channel, degree-n channels at 1/(2n+1) of W's energy: the SN3D diffuse field) sits
``background_snr_db`` below the mixture's W. The mixture is then levelled and encoded exactly like
a single clip (tasks.audio_prep.encode_formats).

Activity per 100 ms label frame (schemas.scenes.LABEL_FRAME_S) comes from each source's dry signal
on the scene's time axis, with the rule that trims silence (tasks.audio_prep.trim_silence): a
frame is active when its RMS is at least the source's peak + ``silence_threshold_db``.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field

import numpy as np
from scipy import fft as sfft

from schemas.audio import AudioPrepConfig, RejectReason, RenderedInfo
from schemas.scenes import EARLY_AFTER_DIRECT_S, LABEL_FRAME_S, SPLIT_FADE_S, ScenePlan, SceneSource
from tasks.audio_prep import (
    Encoded,
    RirSpectrum,
    convolve,
    default_block_size,
    encode_formats,
    loop_to_min_length,
)
from tasks.doa import first_arrival_index
from tasks.errors import AudioRejected
from tasks.renderers import DEFAULT_RENDERER
from tasks.sensor_noise import SampleNoise, pink

EDGE_FADE_S = 0.01
"""Raised-cosine fade at both edges of a source's active interval (no click at onset/offset)."""
MISSING_RIR = "rir_failed"
"""The reject code of a sample whose RIR the bank does not hold (as tasks/render.py)."""
_CHUNK_BYTES = 1 << 25  # bound on the spectra of one batch of trajectory points


@dataclass(frozen=True)
class SceneRendered:
    """What render_scene did, beside the FLAC bytes.

    ``rendered`` is the mixture's record as for one clip (its ``gain_db`` is the final level gain,
    ``rir_samples`` the longest RIR, ``block_size`` the input block of the full-length
    convolutions, ``fft_size`` the longest FFT taken). ``gains_db[i]`` was applied to source i's
    wet render before the mix (source 0: 0 dB). ``activity[i]`` is a read-only bool array, one
    entry per label frame of the scene.
    """

    rendered: RenderedInfo
    gains_db: tuple[float, ...]
    activity: tuple[np.ndarray, ...]
    extra: Encoded = field(default_factory=dict)
    """The further output formats asked for (binaural, mic) of the same mix, by format."""


def _ramp(n: int) -> np.ndarray:
    """Raised cosine rising from ~0 to ~1 over n samples (mid-sample points), float32."""
    t = (np.arange(n, dtype=np.float64) + 0.5) / max(n, 1)
    return (np.sin(0.5 * np.pi * t) ** 2).astype(np.float32)


def source_interval(source: SceneSource, sr: int, n_total: int) -> tuple[int, int]:
    """Sample indices [start, stop) of a source's active interval on the scene's time axis."""
    start = min(round(source.onset_s * sr), n_total - 1)
    return start, max(start + 1, min(round(source.offset_s * sr), n_total))


def active_signal(mono: np.ndarray, n: int, sr: int, loop_crossfade_s: float) -> np.ndarray:
    """The prepared clip looped (crossfaded joins, as prepare_clip loops) or cut to n samples,
    faded in and out over EDGE_FADE_S (at most a quarter of n each)."""
    if mono.shape[0] < n:  # (half a sample more: float rounding must not lose the last one)
        mono, _ = loop_to_min_length(mono, sr, (n + 0.5) / sr, crossfade_s=loop_crossfade_s)
    x = np.array(mono[:n], dtype=np.float32)
    fade = min(round(EDGE_FADE_S * sr), n // 4)
    if fade:
        ramp = _ramp(fade)
        x[:fade] *= ramp
        x[n - fade :] *= ramp[::-1]
    return x


def frame_activity(dry: np.ndarray, start: int, n_total: int, sr: int, threshold_db: float) -> np.ndarray:
    """Active label frames of one source: its dry signal placed at ``start`` on a scene of
    ``n_total`` samples, cut into LABEL_FRAME_S frames (the last one may be short); a frame is
    active when its RMS reaches the dry peak + ``threshold_db`` (trim_silence's rule)."""
    hop = round(LABEL_FRAME_S * sr)
    n_frames = -(-n_total // hop)
    energy = np.zeros(n_frames * hop, dtype=np.float64)
    energy[start : start + dry.shape[0]] = np.square(dry, dtype=np.float64)
    counts = np.full(n_frames, hop, dtype=np.float64)
    counts[-1] = n_total - (n_frames - 1) * hop
    rms = np.sqrt(energy.reshape(n_frames, hop).sum(axis=1) / counts)
    peak = float(np.max(np.abs(dry)))
    active = rms >= peak * 10.0 ** (threshold_db / 20.0) if peak > 0 else np.zeros(n_frames, bool)
    active.flags.writeable = False
    return active


def _pieces(offsets: Sequence[int], n: int, most: int) -> list[tuple[int, int, int, int, int, int]]:
    """The input's pieces between consecutive points, at most ``most`` samples each:
    (start, stop, point left, point right, segment start, segment length).

    On the segment [p_j, p_j+1) the triangles of points j and j+1 are 1 - u and u, u rising
    linearly from 0 over the segment, the only two that are not zero there; before the first point
    only point 0 sounds, after the last only the last one (left == right). Empty segments (points
    sharing a time) are dropped: the later point takes over at that time. Long segments are cut
    so that one FFT length fits every piece without padding the short ones far."""
    last = len(offsets) - 1
    segments = [(0, offsets[0], 0, 0)]
    segments += [(offsets[j], offsets[j + 1], j, j + 1) for j in range(last)]
    segments.append((offsets[last], n, last, last))
    return [
        (a, min(a + most, stop), left, right, start, stop - start)
        for start, stop, left, right in segments
        for a in range(start, stop, most)
    ]


def _early_overlap_add(x: np.ndarray, offsets: Sequence[int], early: np.ndarray, out: np.ndarray) -> int:
    """out += sum_k (w_k x) * early[k], piece by piece: each piece's two weighted inputs are
    transformed, multiplied by the two points' early spectra and summed before one inverse
    transform per channel. Pieces are at most twice the early part long and share one FFT
    length (returned); they go in chunks so the spectra stay under _CHUNK_BYTES."""
    channels, e_len = early.shape[1:]
    pieces = _pieces(offsets, x.shape[0], 2 * e_len)
    seg_len = max(b - a for a, b, *_ in pieces)
    m = sfft.next_fast_len(seg_len + e_len - 1, real=True)
    chunk = max(1, _CHUNK_BYTES // (8 * (2 * channels + 2) * (m // 2 + 1)))
    for c0 in range(0, len(pieces), chunk):
        part = pieces[c0 : c0 + chunk]
        k0, k1 = part[0][2], part[-1][3] + 1
        spectra = sfft.rfft(early[k0:k1], n=m, axis=-1)  # (points, C, F)
        weighted = np.zeros((2, len(part), seg_len), dtype=np.float32)
        for j, (a, b, left, right, s0, s_len) in enumerate(part):
            if left == right:
                weighted[0, j, : b - a] = x[a:b]
            else:
                u = np.arange(a - s0, b - s0, dtype=np.float32) / np.float32(s_len)
                weighted[1, j, : b - a] = x[a:b] * u
                weighted[0, j, : b - a] = x[a:b] - weighted[1, j, : b - a]
        X = sfft.rfft(weighted, n=m, axis=-1)  # (2, J, F)
        Y = spectra[[p[2] - k0 for p in part]]
        Y *= X[0, :, None, :]
        Y += spectra[[p[3] - k0 for p in part]] * X[1, :, None, :]
        y = sfft.irfft(Y, n=m, axis=-1)  # (J, C, M)
        for j, (a, b, *_) in enumerate(part):
            length = b - a + e_len - 1
            out[:, a : a + length] += y[j, :, :length]
    return m


def convolve_trajectory(
    x: np.ndarray, offsets: Sequence[int], rirs: Sequence[np.ndarray], sr: int, block_size: int
) -> tuple[np.ndarray, int]:
    """A source's wet signal (C, len(x) + L - 1): one RIR convolved, or the crossfaded
    time-varying convolution over the trajectory's RIRs (``offsets``: each point's sample in x,
    non-decreasing); and the longest FFT it took. ``block_size`` is the input block of the
    full-length convolution (the static RIR or the shared late part)."""
    x = np.asarray(x, dtype=np.float32)
    hs = [np.asarray(h, dtype=np.float32) for h in rirs]
    if len({h.shape[0] for h in hs}) != 1:
        raise ValueError(f"trajectory RIRs differ in channel count: {sorted({h.shape[0] for h in hs})}")
    if len(hs) == 1:
        spectrum = RirSpectrum.from_rir(hs[0], sr, block_size)
        return convolve(x, spectrum), spectrum.fft_size
    length = max(h.shape[1] for h in hs)
    split = max(first_arrival_index(h[0]) for h in hs) + round(EARLY_AFTER_DIRECT_S * sr)
    fade = round(SPLIT_FADE_S * sr)
    e_len = min(split + fade, length)
    early = np.zeros((len(hs), hs[0].shape[0], e_len), dtype=np.float32)
    for k, h in enumerate(hs):  # a shorter RIR ends early (anechoic, or an early part: all it holds)
        part = h[:, :e_len]
        early[k, :, : part.shape[1]] = part
    out = np.zeros((hs[0].shape[0], x.shape[0] + length - 1), dtype=np.float32)
    fft_size = 0
    # The late part is the longest RIR's: the first point's, the only whole RIR of a path whose
    # later points the bank rendered as early parts (schemas.scenes.POINT_EARLY_WINDOW_S).
    full = max(range(len(hs)), key=lambda k: hs[k].shape[1])
    if e_len < length:
        ramp = _ramp(fade)
        early[:, :, split:e_len] *= ramp[::-1]
        tail = hs[full][:, split:].copy()
        tail[:, :fade] *= ramp[: tail.shape[1]]
        late = RirSpectrum.from_rir(tail, sr, block_size)
        y = convolve(x, late)
        out[:, split : split + y.shape[1]] += y
        fft_size = late.fft_size
    return out, max(fft_size, _early_overlap_add(x, offsets, early, out))


def _w_rms(y: np.ndarray) -> float:
    """RMS of a 1-D signal, float64 accumulation, no BLAS call (see tasks.audio_prep._rms)."""
    return math.sqrt(float(np.einsum("i,i->", y, y, dtype=np.float64)) / max(1, y.shape[0]))


def diffuse_background(channels: int, n: int, sr: int, seed: int) -> np.ndarray:
    """(channels, n) float32 SN3D diffuse pink noise with a W RMS of exactly 1.

    Independent noise per channel (no net intensity: no direction), a 1/f power spectrum from
    20 Hz up (flat below), each degree-l channel scaled to RMS 1/sqrt(2l+1) as a diffuse field
    has in SN3D. Seeded, so the same scene gets the same background.
    """
    noise = pink(np.random.default_rng(seed).standard_normal((channels, n)), sr)
    for c in range(channels):
        noise[c] *= 1.0 / (math.sqrt(2 * math.isqrt(c) + 1) * _w_rms(noise[c]))
    return noise.astype(np.float32)


def render_scene(
    scene: ScenePlan,
    monos: Sequence[np.ndarray],
    rirs: Mapping[str, np.ndarray],
    cfg: AudioPrepConfig,
    fmt: str = DEFAULT_RENDERER,
    extra_formats: Sequence[str] = (),
    noise: SampleNoise | None = None,
) -> tuple[bytes, SceneRendered]:
    """Render a drawn scene to FLAC bytes with the ``fmt`` renderer (and with each of
    ``extra_formats``, from the same mix, into ``SceneRendered.extra``), each format with the
    sample's sensor noise ``noise`` (tasks.sensor_noise.sample_noise; None: none).

    ``monos`` are the prepared clips (cfg.target_sr, float32) in source order; ``rirs`` the ambiX
    RIRs (C, L) by placement id. Raises AudioRejected: ``rir_failed`` when a point's RIR is
    missing, ``silent`` when a source is silent in its interval or the mixture is.
    """
    if len(monos) != len(scene.sources):
        raise ValueError(f"{len(monos)} clips for {len(scene.sources)} sources")
    missing = sorted({pid for pid in scene.placement_ids if pid not in rirs})
    if missing:
        raise AudioRejected(MISSING_RIR, f"no RIR for placement(s) {', '.join(missing)}")
    sr = cfg.target_sr
    n = round(scene.duration_s * sr)
    rir_samples = max(int(rirs[pid].shape[1]) for pid in scene.placement_ids)
    block = default_block_size(rir_samples)
    fft_size = 0
    wets: list[np.ndarray] = []
    levels: list[float] = []
    activity: list[np.ndarray] = []
    for src, mono in zip(scene.sources, monos, strict=True):
        start, stop = source_interval(src, sr, n)
        dry = active_signal(mono, stop - start, sr, cfg.loop_crossfade_s)
        peak = float(np.max(np.abs(dry)))
        if peak <= 0.0 or 20.0 * math.log10(peak) < cfg.silence_floor_dbfs:
            raise AudioRejected(RejectReason.SILENT, f"source {src.index} ({src.clip_id}) is silent")
        activity.append(frame_activity(dry, start, n, sr, cfg.silence_threshold_db))
        offsets = [min(max(round(p.time_s * sr) - start, 0), stop - start) for p in src.points]
        wet, used = convolve_trajectory(dry, offsets, [rirs[p.placement_id] for p in src.points], sr, block)
        fft_size = max(fft_size, used)
        placed = np.zeros((wet.shape[0], n), dtype=np.float32)
        kept = min(wet.shape[1], n - start)
        placed[:, start : start + kept] = wet[:, :kept]
        rms = _w_rms(placed[0, start:stop])
        if rms <= 0.0:
            raise AudioRejected(RejectReason.SILENT, f"source {src.index} ({src.clip_id}) renders silent")
        wets.append(placed)
        levels.append(rms)
    gains_db = [0.0] + [
        s.level_db - scene.sources[0].level_db + 20.0 * math.log10(levels[0] / rms)
        for s, rms in zip(scene.sources[1:], levels[1:], strict=True)
    ]
    mix = wets[0]
    for wet, g in zip(wets[1:], gains_db[1:], strict=True):
        mix += wet * np.float32(10.0 ** (g / 20.0))
    if scene.background_snr_db is not None:
        level = _w_rms(mix[0]) * 10.0 ** (-scene.background_snr_db / 20.0)
        mix += diffuse_background(mix.shape[0], n, sr, scene.seed) * np.float32(level)
    encoded = encode_formats(
        mix, cfg, (fmt, *extra_formats), noise, rir_samples=rir_samples, block_size=block, fft_size=fft_size
    )
    flac, info = encoded.pop(fmt)
    return flac, SceneRendered(info, tuple(gains_db), tuple(activity), encoded)
