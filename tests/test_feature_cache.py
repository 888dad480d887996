"""The in-memory feature cache (training.feature_cache): its crops are the loader's features of the
same audio, its batches are a function of (seed, epoch, rank, batch) so resume is exact, sources
are drawn by weight, and a training run on it resumes to the same losses."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch
from pydantic import ValidationError
from training_helpers import TEST_FEATURES, shards

from training.config import DataConfig, LossConfig, ModelConfig, OptimConfig, ShardSource, TrainConfig
from training.data import direction_vector
from training.feature_cache import (
    CachedSample,
    FeatureCache,
    balance_weights,
    crop_window,
    power_share,
    window_frames,
)
from training.features import clip_features, foa_features

SR = TEST_FEATURES.sample_rate
HOP = TEST_FEATURES.hop_length
# frames of a crop whose STFT window lies inside the crop (centred framing: n_fft/2 each side)
EDGE = -(-TEST_FEATURES.n_fft // 2 // HOP)


def _plane_wave(n: int, az_deg: float, seed: int = 0) -> np.ndarray:
    """(4, n) ambiX of pink-ish noise from azimuth ``az_deg`` (SN3D: dipoles are W times the direction)."""
    rng = np.random.default_rng(seed)
    s = np.cumsum(rng.standard_normal(n)).astype(np.float32)
    s -= np.convolve(s, np.ones(64) / 64, mode="same")  # keep it band-limited, not a random walk
    x, y, z = direction_vector(az_deg, 0.0)
    return np.stack([s, y * s, z * s, x * s]).astype(np.float32)


def _sample(audio: np.ndarray, key: str, az: float = 0.0) -> CachedSample:
    f = foa_features(audio, TEST_FEATURES)
    targets = {"spatial": True, "source_target": True, "distance_m": 1.0, "floor_area_m2": 20.0,
               "t30_s": 0.5, "drr_db": 3.0, "direction": torch.from_numpy(direction_vector(az, 0.0))}
    return CachedSample(key=key, texts=(f"text {key}",), targets=targets, mel=f.mel.half(), iv=f.iv.half(),
                        num_samples=audio.shape[1])


def test_a_crop_of_a_long_clip_is_the_loaders_features_of_that_audio_crop() -> None:
    audio = _plane_wave(int(2.7 * SR), 40.0)
    s = _sample(audio, "long")
    t = window_frames(TEST_FEATURES)
    for frame in (0, 37, s.iv.shape[1] - t):
        mel, iv = crop_window(s, TEST_FEATURES, np.random.default_rng(0), offset=frame)
        ref = clip_features(audio, TEST_FEATURES, offset=frame * HOP)
        assert mel.shape == ref.mel.shape and iv.shape == ref.iv.shape
        inner = slice(EDGE, t - EDGE)
        assert torch.allclose(iv[:, inner], ref.iv[:, inner], atol=2e-3), frame
        assert torch.allclose(mel[:, inner], ref.mel[:, inner], atol=0.1), frame
        # the cut frames differ only by what lies beyond the crop (real audio, not reflect padding)
        assert not torch.allclose(iv[:, :1], ref.iv[:, :1], atol=2e-3) or frame == 0
    # a random crop draws one offset for both mel and IVs
    mel, iv = crop_window(s, TEST_FEATURES, np.random.default_rng(3))
    o = next(k for k in range(s.iv.shape[1] - t + 1) if torch.equal(s.iv[:, k : k + t].float(), iv))
    assert torch.equal(s.mel[:, o : o + t].float(), mel)


def test_a_crop_of_silence_between_calls_weighs_nothing_and_a_loud_one_weighs_one() -> None:
    """A 3 s clip: sound in its first second only. A crop of the first second is louder than the clip
    on average (share capped at 1); one of the last second holds only the floor (share ~0); the
    batch carries the share as ``direction_weight``. A training config refuses the weighting without
    the cache, which alone holds the whole clip."""
    audio = _plane_wave(3 * SR, 30.0)
    audio[:, SR:] *= 1e-4  # 80 dB down
    s = _sample(audio, "call")
    t = window_frames(TEST_FEATURES)
    loud, _ = crop_window(s, TEST_FEATURES, np.random.default_rng(0), offset=0)
    quiet, _ = crop_window(s, TEST_FEATURES, np.random.default_rng(0), offset=s.mel.shape[1] - t)
    assert power_share(loud, s.power) == 1.0
    assert power_share(quiet, s.power) < 1e-6
    batch = FeatureCache([[s]], [1.0]).batch(16, TEST_FEATURES, np.random.default_rng(1))
    w = batch["direction_weight"]
    assert w.shape == (16,) and bool(((w >= 0.0) & (w <= 1.0)).all()) and float(w.max()) == 1.0
    data = DataConfig(sources=[ShardSource(root="/nowhere")])
    with pytest.raises(ValidationError, match="features_on: cache"):
        TrainConfig(run_dir="/tmp/r", task="spatial", data=data, loss=LossConfig(direction_by_energy=True))
    TrainConfig(run_dir="/tmp/r", task="spatial", data=data, loss=LossConfig(direction_by_energy=True),
                features_on="cache")


def test_a_short_clip_is_repeat_padded_in_frames_then_silent() -> None:
    n = int(0.4 * SR)  # two whole copies fit in the 1 s window, then 0.2 s of silence
    audio = _plane_wave(n, -70.0, seed=1)
    mel, iv = crop_window(_sample(audio, "short"), TEST_FEATURES, np.random.default_rng(0))
    ref = clip_features(audio, TEST_FEATURES)
    t = window_frames(TEST_FEATURES)
    assert iv.shape == ref.iv.shape
    copy = n // HOP  # frames of one copy, less its closing frame
    inner = slice(EDGE, copy - EDGE)
    assert torch.allclose(iv[:, inner], ref.iv[:, inner], atol=2e-3)
    silent = slice(2 * (copy + 1), t)
    assert float(iv[:, silent].abs().max()) == 0.0 and float(mel[:, silent].max()) == -100.0
    # the loader's zero-padded audio is silent there too
    assert float(ref.iv[:, 2 * copy + EDGE : t].abs().max()) == 0.0


def test_batches_depend_only_on_seed_epoch_rank_and_index_and_sources_are_drawn_by_weight() -> None:
    a = [_sample(_plane_wave(int(1.5 * SR), 30.0, seed=i), f"a{i}", 30.0) for i in range(3)]
    b = [_sample(_plane_wave(int(1.5 * SR), -30.0, seed=10 + i), f"b{i}", -30.0) for i in range(2)]
    cache = FeatureCache([a, b], [3.0, 1.0])
    cfg = DataConfig(sources=[ShardSource(root="unused")], batch_size=8, batches_per_epoch=5)
    full = list(cache.epoch(cfg, TEST_FEATURES, seed=1, rank=0, epoch=2))
    resumed = list(cache.epoch(cfg, TEST_FEATURES, seed=1, rank=0, epoch=2, skip_batches=3))
    assert resumed[:3] == [None] * 3
    for x, y in zip(full[3:], resumed[3:], strict=True):
        assert x["keys"] == y["keys"] and torch.equal(x["iv"], y["iv"])
    other = next(iter(cache.epoch(cfg, TEST_FEATURES, seed=1, rank=0, epoch=3)))
    assert other["keys"] != full[0]["keys"] or not torch.equal(other["iv"], full[0]["iv"])
    batch = full[0]
    assert batch["iv"].shape == (8, 6, window_frames(TEST_FEATURES), TEST_FEATURES.n_mels)
    assert batch["iv"].dtype == torch.float32 and batch["texts"][0] == f"text {batch['keys'][0]}"
    # each key keeps its own targets
    for k, d in zip(batch["keys"], batch["direction"], strict=True):
        assert float(d[1]) > 0 if k.startswith("a") else float(d[1]) < 0
    # 3:1 weights over 4,000 draws (a fixed seed: the share is a property of the weights, not luck)
    rngs = (np.random.default_rng([9, j]) for j in range(500))
    keys = [k for rng in rngs for k in cache.batch(8, TEST_FEATURES, rng)["keys"]]
    share = sum(k.startswith("a") for k in keys) / len(keys)
    assert abs(share - 0.75) < 0.03, share


def test_a_cached_run_on_pipeline_shards_resumes_to_the_same_losses(tmp_path: Path) -> None:
    """With and without field augmentation (training.field_augment, whose draws are a function of
    seed, epoch, rank and batch); the augmented run's losses differ, so the turn is applied."""
    from training.config import TINY_SPATIAL
    from training.launch import read_log
    from training.train import run

    root = str(shards())
    cache = FeatureCache.load(DataConfig(sources=[ShardSource(root=root, only="spatial")]), TEST_FEATURES)
    assert len(cache) > 20 and all(s.targets["spatial"] for src in cache.sources for s in src)
    straight_by_mode = {}
    for mode in ("none", "rotate_mirror"):
        cfg = TrainConfig(
            run_dir=str(tmp_path / mode / "a"), task="spatial", features=TEST_FEATURES, features_on="cache",
            model=ModelConfig(spatial=TINY_SPATIAL),
            data=DataConfig(sources=[ShardSource(root=root, only="spatial")], batch_size=4,
                            batches_per_epoch=3, field_augment=mode),
            optim=OptimConfig(lr=1e-3, warmup_steps=0, max_steps=5), checkpoint_every=2, log_every=1,
            keep_checkpoints=5, torch_threads=1,
        )
        assert run(cfg)["step"] == 5
        straight = {r["step"]: r["loss"] for r in read_log(cfg.run_dir) if "loss" in r}
        resumed_cfg = cfg.model_copy(update={
            "run_dir": str(tmp_path / mode / "b"),
            "resume_from": str(tmp_path / mode / "a" / "checkpoints" / "step-00000002")})
        assert run(resumed_cfg)["step"] == 5
        resumed = {r["step"]: r["loss"] for r in read_log(resumed_cfg.run_dir) if "loss" in r}
        assert sorted(resumed) == [3, 4, 5]  # step 4 is the next epoch's first batch
        for step in (3, 4, 5):
            assert abs(resumed[step] - straight[step]) < 1e-5, (mode, step, resumed, straight)
        straight_by_mode[mode] = straight
    assert straight_by_mode["none"][1] != straight_by_mode["rotate_mirror"][1]


def _labelled(key: str, t30: float, drr: float) -> CachedSample:
    """A silent one-window sample that carries only labels: what balancing reads."""
    t = window_frames(TEST_FEATURES)
    targets = {"spatial": True, "source_target": True, "direction": torch.tensor([1.0, 0.0, 0.0]),
               "distance_m": 2.0, "floor_area_m2": 50.0, "t30_s": t30, "drr_db": drr}
    m = TEST_FEATURES.n_mels
    return CachedSample(key=key, texts=("t",), targets=targets, mel=torch.full((1, t, m), -100.0),
                        iv=torch.zeros(6, t, m), num_samples=TEST_FEATURES.max_samples)


def test_room_balance_draws_t30_and_drr_independently() -> None:
    """Labels as the sim2real build has them: DRR falls as T30 grows (r ~ -0.48 here, -0.43 there).
    Drawn uniformly they keep that; balanced, every quartile cell comes up about equally often and the
    correlation of what is drawn falls to ~0.1 (what is left is within the cells). Samples without a
    T30 share a cell. Off, the draws are the uniform ones, as before the option; a config refuses it
    without the cache."""
    rng = np.random.default_rng(0)
    t30 = rng.uniform(0.2, 2.0, 400)
    drr = -3.0 * t30 + rng.normal(0.0, 3.0, 400)
    samples = [_labelled(f"s{i}", a, b) for i, (a, b) in enumerate(zip(t30, drr, strict=True))]
    samples.append(_labelled("no-t30", float("nan"), 3.0))
    assert np.corrcoef(t30, drr)[0, 1] < -0.4
    w = balance_weights(samples)
    assert w.shape == (401,) and abs(w.sum() - 1.0) < 1e-12 and w[-1] == w.max()  # a cell of its own
    balanced = FeatureCache([samples], [1.0], room_balance=True)
    draws = [balanced.batch(16, TEST_FEATURES, np.random.default_rng([5, j])) for j in range(300)]
    bt = torch.cat([d["t30_s"] for d in draws]).numpy()
    bd = torch.cat([d["drr_db"] for d in draws]).numpy()
    known = np.isfinite(bt)
    assert abs(np.corrcoef(bt[known], bd[known])[0, 1]) < 0.2
    qt = np.searchsorted(np.quantile(t30, [0.25, 0.5, 0.75]), bt[known], side="right")
    qd = np.searchsorted(np.quantile(drr, [0.25, 0.5, 0.75]), bd[known], side="right")
    cells = np.bincount(qt * 4 + qd, minlength=16)
    occupied = cells[cells > 0]
    assert len(occupied) == 16 and occupied.max() < 1.4 * occupied.min()
    uniform = FeatureCache([samples], [1.0])
    assert uniform.within == [None]
    r = np.random.default_rng(7)  # the draw rule without the option: source by weight, then uniform
    r.choice(1, size=1, p=[1.0])
    assert uniform.batch(1, TEST_FEATURES, np.random.default_rng(7))["keys"] == [samples[r.integers(401)].key]
    plain = [uniform.batch(16, TEST_FEATURES, np.random.default_rng([5, j])) for j in range(100)]
    ut, ud = torch.cat([d["t30_s"] for d in plain]), torch.cat([d["drr_db"] for d in plain])
    fine = torch.isfinite(ut)
    assert np.corrcoef(ut[fine].numpy(), ud[fine].numpy())[0, 1] < -0.4
    data = DataConfig(sources=[ShardSource(root="/nowhere")], room_balance=True)
    with pytest.raises(ValidationError, match="features_on: cache"):
        TrainConfig(run_dir="/tmp/r", task="spatial", data=data)
    TrainConfig(run_dir="/tmp/r", task="spatial", data=data, features_on="cache")
