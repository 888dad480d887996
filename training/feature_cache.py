"""In-memory feature cache: every sample of the training sources featurised once, crops cut from it.

Why: on a CPU box the loader, not the model, bounds spatial pretraining. Decoding a sample's
four-channel FLAC and taking its STFT costs more than the branch's forward and backward pass
(issue 15's runs: 8 samples/s through the loader, 29 through ELSA's branch alone, on 2 cores). A
split of a few thousand clips fits in memory as float16 features (about 0.5 MB per 6 s clip), so
decoding it once and cutting every later random crop from the cached frames trains several times
more steps in the same CPU time. ``TrainConfig.features_on = "cache"`` selects it.

What changes against the streaming loader (``training.data``):

- a crop is frames [o, o + T) of the whole clip's STFT, which equals the STFT of the audio crop at
  o·hop except in the frames within n_fft/2 of the cut, where the clip's real neighbours replace the
  crop's reflect padding;
- a clip shorter than the window is repeat-padded in frame space, as repeatpad does with audio:
  whole copies, then silent frames (mel 10·log10(1e-10) dB, IVs 0, which is what silence gives);
- samples are drawn with replacement, source by weight, then uniformly within the source (the
  loader's resampled mode, without shard granularity), or with ``DataConfig.room_balance`` so that
  their T30 and DRR are independent (``balance_weights``); batch j of an epoch depends only on
  (seed, epoch, rank, j), so a resumed run cuts the same batches.
"""

from __future__ import annotations

import logging
from collections.abc import Iterator
from dataclasses import dataclass
from functools import cached_property
from typing import Any

import numpy as np
import torch

from training.config import DataConfig, FeatureConfig
from training.data import DataError, collate, decode_audio, list_shards, raw_samples, sample_targets
from training.features import AudioFeatures, foa_features

log = logging.getLogger(__name__)
SILENT_MEL_DB = -100.0  # 10·log10(1e-10): features.log_mel's floor


@dataclass(frozen=True)
class CachedSample:
    """One sample's whole-clip features (float16) and everything a batch needs besides them."""

    key: str
    texts: tuple[str, ...]
    targets: dict[str, Any]
    mel: torch.Tensor  # (1, T, M)
    iv: torch.Tensor  # (6, T, M)
    num_samples: int

    @cached_property
    def power(self) -> float:
        """W's mean power per frame over the whole clip (``mel_power``)."""
        return mel_power(self.mel)


def window_frames(feat: FeatureConfig) -> int:
    """STFT frames of one ``clip_s`` window (centred framing: one per hop, plus one)."""
    return feat.max_samples // feat.hop_length + 1


def crop_window(
    s: CachedSample, feat: FeatureConfig, rng: np.random.Generator, offset: int | None = None
) -> tuple[torch.Tensor, ...]:
    """(mel, iv) of one window, as ``features.fit_length`` cuts audio: the same random crop of both
    for a longer clip (from frame ``offset`` if given); whole copies of a shorter one, then silent
    frames."""
    t = window_frames(feat)
    n_clip = s.iv.shape[1]
    if s.num_samples > feat.max_samples:
        o = int(rng.integers(0, max(0, n_clip - t) + 1)) if offset is None else offset
        return s.mel[:, o : o + t].float(), s.iv[:, o : o + t].float()
    out = []
    for x, fill in ((s.mel, SILENT_MEL_DB), (s.iv, 0.0)):
        if s.num_samples < feat.max_samples and feat.padding in ("repeat", "repeatpad"):
            x = x.repeat(1, feat.max_samples // s.num_samples + (feat.padding == "repeat"), 1)
        x = x[:, :t].float()
        if x.shape[1] < t:
            x = torch.cat([x, torch.full((x.shape[0], t - x.shape[1], x.shape[2]), fill)], dim=1)
        out.append(x)
    return tuple(out)


def mel_power(mel: torch.Tensor) -> float:
    """W's mean power per frame of a (1, T, M) log-mel in dB, summed over its bands: what a training
    crop's and a test window's direction weights compare (``power_share``, ``sim2real.window_heads``)."""
    return float(torch.pow(10.0, mel.double() / 10.0).sum(dim=-1).mean())


def power_share(crop_mel: torch.Tensor, clip_power: float) -> float:
    """A crop's power over its whole clip's, capped at 1: ~0 for a crop of silence between calls, 1 for
    one at least as loud as the clip on average (``LossConfig.direction_by_energy``)."""
    return min(1.0, mel_power(crop_mel) / clip_power) if clip_power > 0.0 else 0.0


def _cached(raw: dict[str, Any], feat: FeatureConfig) -> CachedSample:
    record = raw["record"]
    audio = decode_audio(raw["flac"], record, feat.sample_rate)
    f = foa_features(audio, feat)
    assert isinstance(f, AudioFeatures)
    return CachedSample(
        key=raw["key"], texts=tuple(record.text), targets=sample_targets(record),
        mel=f.mel.half(), iv=f.iv.half(), num_samples=audio.shape[1],
    )


# Quartiles: in the sim2real build's 2,716 spatial train samples the 4 x 4 cells hold 36-347 each, and
# balancing takes their T30-DRR correlation from -0.43 to -0.13; finer cells would rest on a few samples.
BALANCE_BINS = 4


def balance_weights(samples: list[CachedSample], bins: int = BALANCE_BINS) -> np.ndarray:
    """Draw probabilities that make T30 and DRR independent across the samples: each sample gets 1 /
    the count of its cell in the ``bins`` x ``bins`` grid of their quantiles, so every occupied cell is
    drawn equally often. Samples without both labels share one cell of their own."""
    t30 = np.array([s.targets["t30_s"] for s in samples], dtype=np.float64)
    drr = np.array([s.targets["drr_db"] for s in samples], dtype=np.float64)
    known = np.isfinite(t30) & np.isfinite(drr)
    cell = np.full(len(samples), -1)
    if known.any():
        qs = np.linspace(0.0, 1.0, bins + 1)[1:-1]
        ti = np.searchsorted(np.quantile(t30[known], qs), t30[known], side="right")
        di = np.searchsorted(np.quantile(drr[known], qs), drr[known], side="right")
        cell[known] = ti * bins + di
    _, inverse, counts = np.unique(cell, return_inverse=True, return_counts=True)
    w = 1.0 / counts[inverse]
    return w / w.sum()


class FeatureCache:
    """The featurised samples of each source of a DataConfig, and batches cut from them."""

    def __init__(self, sources: list[list[CachedSample]], weights: list[float], room_balance: bool = False
                 ) -> None:
        if not sources or any(not s for s in sources):
            raise DataError("a cached source has no usable sample")
        self.sources, self.weights = sources, np.asarray(weights, dtype=np.float64) / sum(weights)
        # per source: None draws uniformly (rng.integers, as without the option), else balance_weights
        self.within = [balance_weights(s) if room_balance else None for s in sources]

    @classmethod
    def load(cls, cfg: DataConfig, feat: FeatureConfig) -> FeatureCache:
        """Read every shard of every source once (through ``training.data.raw_samples``, which logs
        unusable samples); a sample that does not decode is logged and left out."""
        sources: list[list[CachedSample]] = []
        for src in cfg.expanded_sources():
            got: list[CachedSample] = []
            for raw in raw_samples(list_shards(src.root, src.split), src.only):
                try:
                    got.append(_cached(raw, feat))
                except Exception as e:  # corrupt FLAC, wrong rate or channel count: as the loader does
                    log.warning("sample %s could not be decoded: %s", raw.get("key"), e)
            if not got:
                raise DataError(f"no usable {src.only or ''} sample in {src.root} {src.split}")
            sources.append(got)
        return cls(sources, [s.weight for s in cfg.expanded_sources()], cfg.room_balance)

    def __len__(self) -> int:
        return sum(len(s) for s in self.sources)

    def batch(self, batch_size: int, feat: FeatureConfig, rng: np.random.Generator,
              tokenizer: Any | None = None, max_text_len: int = 77) -> dict[str, Any]:
        """One collated batch (the loader's layout) of random crops of random samples."""
        picks = []
        for i in rng.choice(len(self.sources), size=batch_size, p=self.weights):
            src, p = self.sources[int(i)], self.within[int(i)]
            s = src[int(rng.integers(len(src)) if p is None else rng.choice(len(src), p=p))]
            mel, iv = crop_window(s, feat, rng)
            picks.append({"key": s.key, "text": s.texts[int(rng.integers(len(s.texts)))], **s.targets,
                          "mel": mel, "iv": iv, "direction_weight": power_share(mel, s.power)})
        return collate(picks, tokenizer, max_text_len)

    def epoch(self, cfg: DataConfig, feat: FeatureConfig, *, seed: int, rank: int, epoch: int,
              skip_batches: int = 0, tokenizer: Any | None = None,
              max_text_len: int = 77) -> Iterator[dict[str, Any] | None]:
        """An epoch of ``cfg.batches_per_epoch`` batches, with None for each batch before a resume
        point (the loader's placeholders, so ``training.data.iterate_from`` serves both)."""
        for j in range(cfg.batches_per_epoch):
            if j < skip_batches:
                yield None
                continue
            rng = np.random.default_rng([seed, epoch, rank, j])
            yield self.batch(cfg.batch_size, feat, rng, tokenizer, max_text_len)
