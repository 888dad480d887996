"""Features: log-mel identical to transformers' ClapFeatureExtractor; intensity vectors are physical."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from transformers import ClapFeatureExtractor

from training.config import FeatureConfig
from training.features import clip_features, fit_length, foa_features, log_mel, to_foa

CFG = FeatureConfig()


@pytest.fixture(scope="module")
def extractor() -> ClapFeatureExtractor:
    # the laion/clap-htsat-unfused preprocessor settings
    return ClapFeatureExtractor(
        truncation="rand_trunc", padding="repeatpad", frequency_min=50, frequency_max=14000
    )


@pytest.mark.parametrize("n", [48000 * 3 + 17, 480000, 480000 + 12345, 1000])
def test_log_mel_matches_clap_feature_extractor(extractor: ClapFeatureExtractor, n: int) -> None:
    rng = np.random.default_rng(n)
    x = (rng.standard_normal(n) * 0.1 * np.sin(np.arange(n) / 3000.0)).astype(np.float32)
    x[:500] = 0.0  # exact zeros exercise the 1e-10 floor
    np.random.seed(7)
    ref = extractor(x, sampling_rate=48000, return_tensors="np")["input_features"][0, 0]
    np.random.seed(7)  # reproduce the extractor's crop draw
    offset = np.random.randint(0, n - CFG.max_samples + 1) if n > CFG.max_samples else None
    y, longer = fit_length(x, CFG, offset=offset)
    assert longer == (n > CFG.max_samples)
    ours = log_mel(torch.from_numpy(y[0]), CFG).numpy()
    assert ours.shape == ref.shape == (1001, 64)
    assert np.abs(ours - ref).max() < 1e-3  # dB; float32 here, float64 there
    # the FOA path gives the same mel of W
    feats = clip_features(np.repeat(x[None], 4, axis=0), CFG, offset=offset)
    assert np.abs(feats.mel[0].numpy() - ref).max() < 1e-3


def test_fit_length_patterns() -> None:
    cfg = FeatureConfig(clip_s=1.0)
    x = np.arange(1, 30001, dtype=np.float32)[None]
    rp, _ = fit_length(x, cfg)
    assert rp.shape == (1, 48000) and np.array_equal(rp[0, 30000:], np.zeros(18000, np.float32))
    r, _ = fit_length(x, cfg.model_copy(update={"padding": "repeat"}))
    assert np.array_equal(r[0, 30000:], x[0, :18000])
    p, _ = fit_length(x, cfg.model_copy(update={"padding": "pad"}))
    assert np.array_equal(p[0, :30000], x[0]) and not p[0, 30000:].any()
    short = np.ones((4, 1000), np.float32)
    assert fit_length(short, cfg)[0][:, : 48 * 1000].sum() == 4 * 48000  # 48 whole copies
    long = np.arange(4 * 60000, dtype=np.float32).reshape(4, 60000)
    crop, longer = fit_length(long, cfg, rng=np.random.default_rng(0))
    off = int(crop[0, 0])
    assert longer and np.array_equal(crop, long[:, off : off + 48000])  # same crop on every channel
    with pytest.raises(ValueError):
        fit_length(np.zeros((4, 0), np.float32), cfg)


@pytest.mark.parametrize(("az", "el"), [(0, 0), (90, 0), (-90, 0), (180, 0), (30, 45), (-120, -30)])
def test_active_intensity_points_at_a_plane_wave_source(az: float, el: float) -> None:
    s = np.random.default_rng(0).standard_normal(48000).astype(np.float32)
    a, e = np.radians(az), np.radians(el)
    gains = [1.0, np.sin(a) * np.cos(e), np.sin(e), np.cos(a) * np.cos(e)]  # ambiX W, Y, Z, X
    f = clip_features(np.stack([g * s for g in gains]), FeatureConfig(clip_s=1.0))
    want = np.array([np.cos(a) * np.cos(e), np.sin(a) * np.cos(e), np.sin(e)])
    active = f.iv[:3].numpy()
    assert np.allclose(np.linalg.norm(active, axis=0), 1.0, atol=1e-4)  # unit norm per (frame, band)
    assert np.abs(active.mean(axis=(1, 2)) - want).max() < 1e-3  # x front, y left (+az), z up


def test_mono_is_copied_to_four_channels_with_identical_ivs() -> None:
    cfg = FeatureConfig(clip_s=1.0)
    rng = np.random.default_rng(1)
    ivs = []
    for _ in range(2):
        mono = rng.standard_normal((1, 40000)).astype(np.float32)
        f = clip_features(mono, cfg)
        assert f.mel.shape == (1, 101, 64) and f.iv.shape == (6, 101, 64)
        assert torch.allclose(
            f.mel[0], log_mel(torch.from_numpy(fit_length(mono, cfg)[0][0]), cfg), atol=1e-4
        )
        ivs.append(f.iv)
    # the same for every non-spatial clip (to rounding): the model learns "no direction" from it
    assert torch.allclose(ivs[0], ivs[1], atol=1e-6)
    sounding = ivs[0][:, :80]  # frames before the zero padding (silent bins map to 0)
    assert torch.allclose(sounding[:3], torch.full_like(sounding[:3], 3**-0.5), atol=1e-6)
    assert not ivs[0][3:].any()


def test_batched_features_equal_single() -> None:
    cfg = FeatureConfig(clip_s=0.5)
    x = np.random.default_rng(2).standard_normal((3, 4, 24000)).astype(np.float32)
    mel, iv = foa_features(torch.from_numpy(x), cfg)
    for i in range(3):
        one = foa_features(x[i], cfg)
        assert torch.allclose(mel[i], one.mel, atol=1e-5) and torch.allclose(iv[i], one.iv, atol=1e-5)


def test_channel_layouts() -> None:
    assert to_foa(np.zeros((1, 10))).shape == (4, 10)
    hoa = np.arange(90, dtype=np.float32).reshape(9, 10)
    assert np.array_equal(to_foa(hoa), hoa[:4])  # ACN: the first four are the first order
    for bad in (2, 3, 5):
        with pytest.raises(ValueError, match="channels"):
            to_foa(np.zeros((bad, 10)))


def _plane_wave(s: np.ndarray, az_deg: float, el_deg: float) -> np.ndarray:
    """(4, N) ambiX SN3D of signal ``s`` arriving from (az, el)."""
    a, e = np.radians(az_deg), np.radians(el_deg)
    return np.stack([g * s for g in (1.0, np.sin(a) * np.cos(e), np.sin(e), np.cos(a) * np.cos(e))])


def test_energy_scaled_ivs_measure_how_directional_a_band_is() -> None:
    """iv_scale="energy": a plane wave keeps norm 1 and its direction; an isotropic diffuse field
    (many incoherent plane waves from directions spread evenly over the sphere) gives a short active IV;
    a plane wave in that field at equal power gives the direct share, 0.5 (DirAC: 1 - diffuseness)."""
    cfg = FeatureConfig(clip_s=1.0, iv_scale="energy")
    rng = np.random.default_rng(3)
    n = 48000
    direct = _plane_wave(rng.standard_normal(n), 30.0, 20.0)
    k = 400  # Fibonacci sphere: evenly spread directions
    z = 1.0 - (2.0 * np.arange(k) + 1.0) / k
    az = np.degrees(np.arange(k) * np.pi * (3.0 - np.sqrt(5.0)))
    el = np.degrees(np.arcsin(z))
    diffuse = sum(_plane_wave(rng.standard_normal(n), a, e) for a, e in zip(az, el, strict=True))
    diffuse /= np.sqrt(k)  # each wave carries 1/k of the power: the same total as ``direct``

    def active(foa: np.ndarray) -> np.ndarray:
        return clip_features(foa.astype(np.float32), cfg).iv[:3, 5:-5].numpy()  # away from the padded edges

    plane = clip_features(direct.astype(np.float32), cfg).iv[:3].numpy()
    assert np.allclose(np.linalg.norm(plane, axis=0), 1.0, atol=1e-3)
    want = _plane_wave(np.ones(1), 30.0, 20.0)[[3, 1, 2], 0]
    assert np.abs(plane.mean(axis=(1, 2)) - want).max() < 1e-3
    # one frame of a band is a short sample of a random field, so its IV is not 0 in a diffuse field;
    # it shrinks as the band holds more STFT bins, and averages out over frames
    per_bin = np.linalg.norm(active(diffuse), axis=0)
    assert np.median(per_bin) < 0.6 and np.median(per_bin[:, 32:]) < 0.35
    assert np.median(np.linalg.norm(active(diffuse).mean(axis=1), axis=0)) < 0.1
    mixed = active(direct + diffuse).mean(axis=1)  # (3, bands), averaged over frames
    assert abs(np.median(np.linalg.norm(mixed, axis=0)) - 0.5) < 0.1
    assert np.degrees(np.arccos(want @ mixed.sum(axis=1) / np.linalg.norm(mixed.sum(axis=1)))) < 5.0
    # the unit-norm default cannot tell them apart
    unit = clip_features(diffuse.astype(np.float32), FeatureConfig(clip_s=1.0)).iv[:3, 5:-5].numpy()
    assert np.allclose(np.linalg.norm(unit, axis=0), 1.0, atol=1e-3)


def test_unit_scaling_is_unchanged_by_the_option() -> None:
    x = np.random.default_rng(4).standard_normal((4, 24000)).astype(np.float32)
    unit = foa_features(x, FeatureConfig(clip_s=0.5))
    energy = foa_features(x, FeatureConfig(clip_s=0.5, iv_scale="energy"))
    assert torch.equal(unit.mel, energy.mel)
    # the same directions, only the lengths differ
    a, b = unit.iv[:3], torch.nn.functional.normalize(energy.iv[:3], dim=0)
    assert torch.allclose(a, b, atol=1e-4)
    assert (energy.iv[:3].norm(dim=0) <= 1.0 + 1e-5).all() and (energy.iv[3:].norm(dim=0) <= 1.0 + 1e-5).all()

