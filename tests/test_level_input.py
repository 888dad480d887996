"""SpatialBranchConfig.level_input: the branch may read W's level per (frame, band).

What must hold: the level it reads is the room's part of the level (each band relative to its own
loudest frame, so a clip's gain and spectrum drop out); ELSA's branch (the default) ignores the mel
entirely; a level-reading branch refuses to run without one; and the level is what lets a branch
read a decay that unit intensity vectors do not carry.
"""

from __future__ import annotations

import numpy as np
import pytest
import torch

from training.config import TINY_SPATIAL, FeatureConfig, SpatialBranchConfig
from training.features import foa_features
from training.model import SpatialPretrainModel
from training.spatial_branch import LEVEL_RANGE_DB, SpatialBranch, band_level

FEAT = FeatureConfig(clip_s=1.0, fmax=8000.0)


def test_band_level_is_each_band_relative_to_its_loudest_frame():
    rng = np.random.default_rng(0)
    mel = torch.as_tensor(rng.normal(-40.0, 15.0, (3, 1, 50, 64)), dtype=torch.float32)
    lv = band_level(mel)
    assert lv.shape == mel.shape
    assert torch.allclose(lv.amax(dim=2), torch.zeros(3, 1, 64))  # every band's loudest frame is 0
    assert float(lv.min()) == pytest.approx(-LEVEL_RANGE_DB / 20.0)  # 60 dB down and below: clipped
    inside = (mel - mel.amax(dim=2, keepdim=True)) > -LEVEL_RANGE_DB
    assert torch.allclose(lv[inside] * 20.0, (mel - mel.amax(dim=2, keepdim=True))[inside], atol=1e-4)
    # a louder clip, or one with another spectrum (a gain per band), reads the same
    tilt = torch.linspace(-30.0, 10.0, 64)
    assert torch.allclose(band_level(mel + 17.0 + tilt), lv, atol=1e-5)


def test_elsa_branch_ignores_the_mel_and_a_level_branch_needs_it():
    torch.manual_seed(0)
    iv = torch.randn(2, 6, 101, 64)
    mel = torch.randn(2, 1, 101, 64) * 20 - 40
    elsa = SpatialBranch(TINY_SPATIAL).eval()
    with torch.no_grad():
        assert torch.equal(elsa(iv), elsa(iv, mel))
    level = SpatialBranch(TINY_SPATIAL.model_copy(update={"level_input": True})).eval()
    with torch.no_grad():
        a, b = level(iv, mel), level(iv, mel.flip(2))  # the same levels in another order in time
    assert not torch.allclose(a, b)
    with pytest.raises(ValueError, match="level_input needs"):
        level(iv)
    with pytest.raises(ValueError, match="level_input needs"):
        level(iv, mel[:, :, :50])
    with pytest.raises(ValueError, match="level_input needs"):
        level(iv, mel.repeat(1, 2, 1, 1))  # else a convolution shape error, not this message
    # one more input channel per IV branch, nothing else: the full-size branch grows by 2 x 32 x 9 weights
    full, full_level = SpatialBranch(), SpatialBranch(SpatialBranchConfig(level_input=True))
    n = sum(p.numel() for p in full.parameters())
    assert sum(p.numel() for p in full_level.parameters()) - n == 2 * 32 * 9


def _diffuse_decay(rng: np.random.Generator, t30: float) -> np.ndarray:
    """1 s of FOA: a noise burst at a random onset decaying at ``t30``, the four channels independent
    (a diffuse field: its unit IVs point anywhere) over a noise floor 70 dB down (so no IV is ever
    zeroed for lack of energy, which would leak the decay)."""
    fs, n = FEAT.sample_rate, FEAT.max_samples
    t = np.arange(n) / fs
    onset = rng.uniform(0.05, 0.25)
    env = np.where(t >= onset, 10.0 ** (-3.0 * (t - onset) / t30), 0.0)
    x = rng.standard_normal((4, n)) * env + 10 ** (-70 / 20) * rng.standard_normal((4, n))
    x[1:] /= np.sqrt(3.0)
    return (x * rng.uniform(0.05, 1.0)).astype(np.float32)


def _fit_t30(level_input: bool, train: tuple, test: tuple, steps: int = 150) -> float:
    torch.manual_seed(0)
    model = SpatialPretrainModel(TINY_SPATIAL.model_copy(update={"level_input": level_input}), head_hidden=16)
    opt = torch.optim.Adam(model.parameters(), lr=3e-3)
    (mel, iv, y), (mel_t, iv_t, y_t) = train, test
    g = torch.Generator().manual_seed(0)
    for _ in range(steps):
        i = torch.randint(0, len(y), (16,), generator=g)
        loss = torch.nn.functional.mse_loss(model(iv[i], mel[i])["t30"], y[i])
        opt.zero_grad()
        loss.backward()
        opt.step()
    model.eval()
    with torch.no_grad():
        return float((model(iv_t, mel_t)["t30"] - y_t).abs().median())


@pytest.mark.slow
def test_a_decay_the_ivs_do_not_carry_is_read_from_the_level():
    """Diffuse decays of T30 0.1-0.8 s: the unit IVs are the same random field whatever the T30, so an
    IV-only branch can only guess the middle; the level-reading one must do far better."""
    rng = np.random.default_rng(1)

    def batch(n: int) -> tuple:
        t30 = rng.uniform(0.1, 0.8, n)
        mel, iv = foa_features(torch.as_tensor(np.stack([_diffuse_decay(rng, t) for t in t30])), FEAT)
        return mel, iv, torch.as_tensor(t30, dtype=torch.float32)

    train, test = batch(160), batch(48)
    spread = float((test[2] - test[2].median()).abs().median())  # the error of always answering the middle
    with_level, iv_only = _fit_t30(True, train, test), _fit_t30(False, train, test)
    assert with_level < 0.5 * iv_only, (with_level, iv_only)
    assert with_level < 0.5 * spread, (with_level, spread)
    assert iv_only > 0.6 * spread, (iv_only, spread)


@pytest.mark.parametrize("g", [1.0, 0.5])
def test_iv_level_exponent_weighs_each_iv_by_its_bands_relative_power(g):
    """A branch with iv_level_exponent g answers exactly what the same weights without it answer on IVs
    multiplied by (W's power / the band's loudest frame's in this input) ** g: a frame 20 dB down counts
    0.01 ** g. Relative to the input, so a louder or recoloured clip is weighed alike; and the option
    needs the level input's log-mel."""
    torch.manual_seed(0)
    cfg = TINY_SPATIAL.model_copy(update={"level_input": True})
    plain = SpatialBranch(cfg).eval()
    weighed = SpatialBranch(SpatialBranchConfig.model_validate(cfg.model_dump() | {"iv_level_exponent": g}))
    weighed.eval()
    weighed.load_state_dict(plain.state_dict())
    iv = torch.randn(2, 6, 20, cfg.n_mels)
    mel = -40.0 * torch.rand(2, 1, 20, cfg.n_mels)
    rel_db = mel - mel.amax(dim=2, keepdim=True)
    want = plain(iv * 10.0 ** (g * rel_db / 10.0), mel)
    with torch.no_grad():
        assert torch.allclose(weighed(iv, mel), want, atol=1e-5)
        assert torch.allclose(weighed(iv, mel + 12.0 + torch.linspace(0, 9, cfg.n_mels)), want, atol=1e-5)
        assert not torch.allclose(plain(iv, mel), want, atol=1e-3)
    with pytest.raises(ValueError, match="level_input"):
        SpatialBranchConfig(iv_level_exponent=g)
