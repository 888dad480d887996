"""Audio features: LAION-CLAP's log-mel of the W channel and unit-norm intensity vectors (ELSA Eq. 2).

The log-mel equals transformers' ClapFeatureExtractor with the laion/clap-htsat-unfused settings
(rand_trunc / repeatpad, slaney mels): the same slaney filter bank, periodic Hann window, reflect
padding and 10·log10(max(mel, 1e-10)); only the arithmetic is float32 torch instead of float64
numpy, for loader throughput. One STFT of the four ambiX channels (W, Y, Z, X) serves both:

  I_active = Re[conj(W) · (X, Y, Z)],  I_reactive = Im[conj(W) · (X, Y, Z)]

per STFT bin, summed into the same 64 mel bands, then scaled to unit norm per (frame, band)
(``FeatureConfig.iv_scale = "energy"`` divides by the band's energy density instead, keeping how
directional each bin is).
Components are in (x, y, z) order (front, left, up), so for a plane wave the active IV points at
the source. A mono signal copied to all four channels gives identical IVs for every clip.
"""

from __future__ import annotations

from dataclasses import dataclass
from functools import lru_cache

import numpy as np
import torch

from training.config import FeatureConfig

FOA_CHANNELS = 4
# ambiX ACN order is W, Y, Z, X: the dipoles in (x, y, z) order are channels 3, 1, 2.
_XYZ = (3, 1, 2)


@dataclass(frozen=True)
class AudioFeatures:
    """mel: (1, T, n_mels) log-mel dB of W; iv: (6, T, n_mels) active xyz then reactive xyz."""

    mel: torch.Tensor
    iv: torch.Tensor


@lru_cache(maxsize=8)
def mel_filters(cfg: FeatureConfig) -> tuple[torch.Tensor, int, int]:
    """Slaney filter bank (as ClapFeatureExtractor.mel_filters_slaney), trimmed to its non-zero bins.

    Returns (filters (n_bins_used, n_mels), first bin, last bin + 1): bins outside fmin..fmax
    carry zero weight, so skipping them changes nothing and saves 40 % of the work.
    """
    from transformers.audio_utils import mel_filter_bank

    fb = mel_filter_bank(
        num_frequency_bins=cfg.n_fft // 2 + 1,
        num_mel_filters=cfg.n_mels,
        min_frequency=cfg.fmin,
        max_frequency=cfg.fmax,
        sampling_rate=cfg.sample_rate,
        norm="slaney",
        mel_scale="slaney",
    )
    used = np.flatnonzero(np.abs(fb).sum(axis=1) > 0)
    lo, hi = int(used[0]), int(used[-1]) + 1
    return torch.from_numpy(np.ascontiguousarray(fb[lo:hi], dtype=np.float32)), lo, hi


@lru_cache(maxsize=8)
def _window(n_fft: int) -> torch.Tensor:
    return torch.hann_window(n_fft, periodic=True, dtype=torch.float32)


def fit_length(
    x: np.ndarray, cfg: FeatureConfig, rng: np.random.Generator | None = None, offset: int | None = None
) -> tuple[np.ndarray, bool]:
    """Crop or pad (C, N) audio to ``cfg.max_samples`` the way LAION-CLAP does, same on all channels.

    Longer: a random crop (``offset`` if given, else drawn from ``rng``); returns is_longer=True.
    Shorter: repeatpad tiles the clip floor(max/N) times then zero-pads; repeat tiles and cuts;
    pad zero-pads.
    """
    x = np.asarray(x, dtype=np.float32)
    if x.ndim == 1:
        x = x[None, :]
    n, m = x.shape[1], cfg.max_samples
    if n == 0:
        raise ValueError("empty audio")
    if n > m:
        if offset is None:
            offset = int((rng or np.random.default_rng()).integers(0, n - m + 1))
        if not 0 <= offset <= n - m:
            raise ValueError(f"offset {offset} outside 0..{n - m}")
        return x[:, offset : offset + m], True
    if n < m:
        if cfg.padding == "repeat":
            x = np.tile(x, (1, m // n + 1))[:, :m]
        elif cfg.padding == "repeatpad":
            x = np.tile(x, (1, m // n))
        x = np.pad(x, ((0, 0), (0, m - x.shape[1])))
    return x, False


def to_foa(x: np.ndarray) -> np.ndarray:
    """(C, N) → (4, N): mono is copied to all four channels; higher-order ambiX keeps its first 4."""
    x = np.asarray(x, dtype=np.float32)
    if x.ndim == 1:
        x = x[None, :]
    c = x.shape[0]
    if c == 1:
        return np.repeat(x, FOA_CHANNELS, axis=0)
    if c >= FOA_CHANNELS and round(np.sqrt(c)) ** 2 == c:
        return x[:FOA_CHANNELS]
    raise ValueError(f"expected mono or ambiX audio ((N+1)^2 channels), got {c} channels")


def _stft(x: torch.Tensor, cfg: FeatureConfig) -> torch.Tensor:
    """(..., N) → complex (..., T, F), framed as the CLAP extractor frames (reflect padding).

    torch.stft's (F, T) result is a transposed view of (T, F) memory: returning (T, F) keeps
    every later op on contiguous rows.
    """
    lead = x.shape[:-1]
    s = torch.stft(
        x.reshape(-1, x.shape[-1]),
        n_fft=cfg.n_fft,
        hop_length=cfg.hop_length,
        win_length=cfg.n_fft,
        window=_window(cfg.n_fft).to(x.device),
        center=True,
        pad_mode="reflect",
        return_complex=True,
    ).transpose(-1, -2)
    return s.reshape(*lead, s.shape[-2], s.shape[-1])


@lru_cache(maxsize=8)
def _interleaved_filters(cfg: FeatureConfig) -> torch.Tensor:
    """(2F, 2M) filter taking interleaved (re, im) bins to [re bands | im bands]."""
    fb, _, _ = mel_filters(cfg)
    f, m = fb.shape
    out = torch.zeros(2 * f, 2 * m)
    out[0::2, :m] = fb
    out[1::2, m:] = fb
    return out


def _unit(v: torch.Tensor, eps: float) -> torch.Tensor:
    """Scale (B, 3, T, M) vectors (components on dim 1) to unit norm; norms below eps give 0."""
    n = (v[:, 0] * v[:, 0]).addcmul_(v[:, 1], v[:, 1]).addcmul_(v[:, 2], v[:, 2]).sqrt_().clamp_(min=eps)
    return v / n[:, None]


def _by_energy(v: torch.Tensor, energy: torch.Tensor, eps: float) -> torch.Tensor:
    """Scale (B, 3, T, M) intensities by the (B, T, M) energy density; bins below eps give 0.

    |conj(W)·a| <= (|W|² + |a|²) / 2 per STFT bin, and the mel sums keep it, so the norms stay in
    [0, 1]: 1 for a single plane wave on an ideal SN3D microphone, P_direct / (P_direct + P_diffuse)
    for the active IV of a plane wave in an isotropic diffuse field."""
    return v / energy.clamp(min=eps)[:, None]


def log_mel(x: torch.Tensor | np.ndarray, cfg: FeatureConfig) -> torch.Tensor:
    """Log-mel (..., T, n_mels) of mono audio (..., N) already cut to length (no crop or pad here)."""
    x = torch.as_tensor(x, dtype=torch.float32)
    fb, lo, hi = mel_filters(cfg)
    s = _stft(x, cfg)[..., lo:hi]
    mel = (s.real.square() + s.imag.square()) @ fb.to(x.device)
    return 10.0 * torch.log10(torch.clamp(mel, min=1e-10))


def foa_features(
    foa: torch.Tensor | np.ndarray, cfg: FeatureConfig
) -> AudioFeatures | tuple[torch.Tensor, ...]:
    """Features of (4, N) or batched (B, 4, N) FOA audio already cut to length.

    Returns AudioFeatures for one clip, or (mel (B,1,T,M), iv (B,6,T,M)) for a batch; works on any
    device, so a GPU trainer can compute them on the fly from waveforms. conj(W)·A for all four
    channels (channel 0 gives |W|², the power) is projected on the mel bands by one matmul over
    interleaved real/imaginary parts, with no strided copies: that keeps 10 s clips cheap.
    """
    x = torch.as_tensor(foa, dtype=torch.float32)
    single = x.ndim == 2
    if single:
        x = x[None]
    if x.ndim != 3 or x.shape[-2] != FOA_CHANNELS:
        raise ValueError(f"expected 4 ambiX channels, got shape {tuple(x.shape)}")
    _, lo, hi = mel_filters(cfg)
    s = _stft(x, cfg)[..., lo:hi]  # (B, 4, T, F)
    cross = s[:, :1].conj() * s  # conj(W)·(W, Y, Z, X)
    b, c, t, f = cross.shape
    proj = torch.view_as_real(cross).reshape(b, c, t, 2 * f) @ _interleaved_filters(cfg).to(x.device)
    m = proj.shape[-1] // 2  # proj: (B, 4, T, [re bands | im bands])
    mel = 10.0 * torch.log10(torch.clamp(proj[:, :1, :, :m], min=1e-10))
    dip = proj[:, list(_XYZ)]  # (B, 3, T, 2M): x, y, z
    if cfg.iv_scale == "energy":
        fb = mel_filters(cfg)[0].to(x.device)
        dip_power = (s[:, 1:].real.square() + s[:, 1:].imag.square()).sum(dim=1) @ fb  # (B, T, M)
        energy = 0.5 * (proj[:, 0, :, :m] + dip_power)
        iv = torch.cat([_by_energy(dip[..., :m], energy, cfg.iv_eps),
                        _by_energy(dip[..., m:], energy, cfg.iv_eps)], dim=1)
    else:
        iv = torch.cat([_unit(dip[..., :m], cfg.iv_eps), _unit(dip[..., m:], cfg.iv_eps)], dim=1)
    if single:
        return AudioFeatures(mel=mel[0], iv=iv[0])
    return mel, iv


def clip_features(
    audio: np.ndarray, cfg: FeatureConfig, rng: np.random.Generator | None = None, offset: int | None = None
) -> AudioFeatures:
    """Decoded (C, N) shard audio → features: to 4 channels, crop/pad to length, STFT once."""
    x, _ = fit_length(to_foa(audio), cfg, rng, offset)
    out = foa_features(x, cfg)
    assert isinstance(out, AudioFeatures)
    return out
