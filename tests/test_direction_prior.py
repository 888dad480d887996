"""ModelConfig.direction_prior: the pretraining's direction head corrects the intensity direction.

What must hold: the prior is the clip's power-weighted active-intensity direction, so a plane wave's
is its source's to a fraction of a degree with either IV scaling, and padding adds nothing; a head
that answers no correction answers the prior exactly; the option needs W's level, and only the
spatial task may use it; a run's config restores it.
"""

from __future__ import annotations

import numpy as np
import pytest
import torch

from tasks.ambisonics import real_sh_sn3d, vector_to_angles
from training.config import TINY_SPATIAL, DataConfig, FeatureConfig, ModelConfig, ShardSource, TrainConfig
from training.doa_probe import angular_errors_deg, directions_from_angles
from training.feature_cache import SILENT_MEL_DB
from training.features import foa_features
from training.model import SpatialPretrainModel, intensity_prior

FS = 48_000


def plane_wave(az: float, el: float, seconds: float = 1.0, seed: int = 0) -> np.ndarray:
    """ambiX (4, N) of white noise arriving from (az, el): SN3D gains times one signal."""
    s = np.random.default_rng(seed).standard_normal(int(FS * seconds))
    gains = real_sh_sn3d(1, np.array([np.deg2rad(az)]), np.array([np.deg2rad(el)]))[:, 0]
    return gains[:, None] * s[None, :]


@pytest.mark.parametrize("iv_scale", ["unit", "energy"])
@pytest.mark.parametrize(("az", "el"), [(0.0, 0.0), (90.0, 20.0), (-135.0, -40.0)])
def test_a_plane_waves_prior_is_its_source_direction(iv_scale, az, el):
    feat = FeatureConfig(clip_s=1.0, fmax=8000.0, iv_scale=iv_scale)
    f = foa_features(plane_wave(az, el), feat)
    prior = intensity_prior(f.iv[None], f.mel[None])
    assert prior.shape == (1, 3) and float(prior.norm()) == pytest.approx(1.0, abs=1e-5)
    truth = directions_from_angles(np.array([az]), np.array([el]))
    assert float(angular_errors_deg(prior.numpy(), truth)[0]) < 0.5


def test_the_louder_source_pulls_the_prior_and_padding_adds_nothing():
    feat = FeatureConfig(clip_s=1.0, fmax=8000.0, iv_scale="energy")
    mix = plane_wave(0.0, 0.0, seed=1) + 0.3 * plane_wave(90.0, 0.0, seed=2)  # 10.5 dB quieter, to the left
    f = foa_features(mix, feat)
    az, el = vector_to_angles(intensity_prior(f.iv[None], f.mel[None])[0].numpy())
    # power-weighted energy-scaled IVs sum to about the intensity, 1 x front + 0.09 x left: W's power
    # over the bin's energy density holds the two noises' cross term, which a 1 s clip does not
    # average away (6.5 deg measured against 5.1)
    assert az == pytest.approx(np.rad2deg(np.arctan2(0.09, 1.0)), abs=2.0) and abs(el) < 1.0
    pad_iv = torch.cat([f.iv, torch.zeros_like(f.iv)], dim=1)
    pad_mel = torch.cat([f.mel, torch.full_like(f.mel, SILENT_MEL_DB)], dim=1)
    padded = intensity_prior(pad_iv[None], pad_mel[None])
    assert torch.allclose(padded, intensity_prior(f.iv[None], f.mel[None]), atol=1e-6)


def test_a_head_with_no_correction_answers_the_prior_and_needs_the_mel():
    torch.manual_seed(0)
    feat = FeatureConfig(clip_s=1.0, fmax=8000.0, iv_scale="energy")
    f = foa_features(plane_wave(60.0, 10.0), feat)
    iv, mel = f.iv[None], f.mel[None]
    model = SpatialPretrainModel.from_config(ModelConfig(spatial=TINY_SPATIAL, head_hidden=16,
                                                         direction_prior=True)).eval()
    last = model.heads.direction.linear2
    with torch.no_grad():
        last.weight.zero_()
        last.bias.zero_()
        assert torch.allclose(model(iv, mel)["direction"], intensity_prior(iv, mel))
        # a correction is added to the prior, not put in its place
        last.bias.copy_(torch.tensor([0.0, 0.0, 0.5]))
        assert torch.allclose(model(iv, mel)["direction"], intensity_prior(iv, mel) + last.bias)
    plain = SpatialPretrainModel.from_config(ModelConfig(spatial=TINY_SPATIAL, head_hidden=16))
    assert not plain.direction_prior
    with pytest.raises(ValueError, match="log-mel"):
        model(iv)


def test_only_the_spatial_task_may_use_it(tmp_path):
    data = DataConfig(sources=[ShardSource(root=str(tmp_path))])
    TrainConfig(run_dir=str(tmp_path), task="spatial", data=data, model=ModelConfig(direction_prior=True))
    with pytest.raises(ValueError, match="direction_prior"):
        TrainConfig(run_dir=str(tmp_path), task="elsa", data=data, model=ModelConfig(direction_prior=True))
