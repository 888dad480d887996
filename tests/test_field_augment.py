"""Sound-field rotations and mirrors (training.field_augment): exact on the features, refused for ELSA."""

import numpy as np
import pytest
import torch
from pydantic import ValidationError

from tasks.ambisonics import real_sh_sn3d, unit_vector
from training.config import DataConfig, FeatureConfig, ShardSource, TrainConfig
from training.features import foa_features
from training.field_augment import field_group, random_transforms, transform_field, turn_back

FEAT = FeatureConfig(clip_s=0.25)


def _field(directions: np.ndarray, signals: np.ndarray) -> np.ndarray:
    """ambiX FOA of plane waves: signal k from unit vector k."""
    az = np.arctan2(directions[:, 1], directions[:, 0])
    el = np.arcsin(np.clip(directions[:, 2], -1, 1))
    return real_sh_sn3d(1, az, el) @ signals  # (4, K) @ (K, N)


@pytest.mark.parametrize("mode", ["rotate", "rotate_mirror"])
def test_turning_the_features_equals_the_features_of_the_turned_field(mode):
    """Five sources (a direct sound and four 'reflections' with their own signals): the IVs of the
    field whose every arrival is turned by R equal R applied to the IVs of the original field."""
    rng = np.random.default_rng(3)
    dirs = rng.normal(size=(5, 3))
    dirs /= np.linalg.norm(dirs, axis=1, keepdims=True)
    signals = rng.normal(size=(5, FEAT.max_samples)) * np.array([1.0, 0.6, 0.5, 0.4, 0.3])[:, None]
    mats = random_transforms(4, rng, mode)
    assert np.allclose(mats @ mats.transpose(0, 2, 1), np.eye(3), atol=1e-12)
    mel0, iv0 = foa_features(np.stack([_field(dirs, signals)] * 4), FEAT)
    target = torch.as_tensor(np.tile(dirs[0], (4, 1)), dtype=torch.float32)
    out = transform_field({"mel": mel0, "iv": iv0, "direction": target, "t30_s": torch.ones(4)}, mats)
    for b in range(4):
        mel1, iv1 = foa_features(_field(dirs @ mats[b].T, signals)[None], FEAT)
        torch.testing.assert_close(out["iv"][b, :3], iv1[0, :3], atol=1e-3, rtol=0)
        # frame 0 is centred on the reflect-padded start: a symmetric frame, whose reactive intensity
        # is zero but for rounding, and unit-normalised rounding points anywhere
        torch.testing.assert_close(out["iv"][b, 3:, 1:], iv1[0, 3:, 1:], atol=1e-3, rtol=0)
        torch.testing.assert_close(out["mel"][b], mel1[0], atol=1e-3, rtol=0)  # W does not turn
        turned = torch.as_tensor(mats[b] @ dirs[0], dtype=torch.float32)
        torch.testing.assert_close(out["direction"][b], turned)
    assert torch.equal(out["t30_s"], torch.ones(4))


def test_rotate_keeps_elevation_and_rotate_mirror_flips_it_half_the_time():
    rng = np.random.default_rng(0)
    d = unit_vector(30.0, 20.0)
    turned = random_transforms(2000, rng, "rotate") @ d
    assert np.allclose(turned[:, 2], d[2])
    az = np.degrees(np.arctan2(turned[:, 1], turned[:, 0]))
    assert np.histogram(az, bins=4, range=(-180, 180))[0].min() > 400  # every quadrant
    mirrored = random_transforms(2000, rng, "rotate_mirror") @ d
    assert np.allclose(np.abs(mirrored[:, 2]), d[2]) and 0.45 < np.mean(mirrored[:, 2] < 0) < 0.55
    assert np.array_equal(random_transforms(3, rng, "none"), np.tile(np.eye(3), (3, 1, 1)))


def test_a_missing_direction_stays_missing():
    mats = random_transforms(2, np.random.default_rng(1), "rotate_mirror")
    batch = {"iv": torch.zeros(2, 6, 3, 4), "direction": torch.tensor([[1.0, 0.0, 0.0], [float("nan")] * 3])}
    out = transform_field(batch, mats)
    assert torch.isnan(out["direction"][1]).all() and torch.isfinite(out["direction"][0]).all()


def test_the_test_time_group_holds_each_turn_with_and_without_each_mirror_and_turns_back():
    """field_group(4): 16 distinct orthogonal matrices, identity first, whose mean is zero (so a fixed
    offset in a branch's answers averages out over them); turn_back undoes each."""
    g = field_group(4)
    assert g.shape == (16, 3, 3) and np.array_equal(g[0], np.eye(3))
    assert np.allclose(g @ g.transpose(0, 2, 1), np.eye(3), atol=1e-12)
    assert len({tuple(np.round(m, 9).ravel()) for m in g}) == 16
    assert np.allclose(g.mean(axis=0), 0.0, atol=1e-12)
    assert sorted(np.round(np.linalg.det(g)).tolist()) == [-1.0] * 8 + [1.0] * 8  # half of them mirror
    d = torch.as_tensor(np.random.default_rng(0).normal(size=(16, 3)))
    turned = torch.einsum("bij,bj->bi", torch.as_tensor(g), d)
    torch.testing.assert_close(turn_back(turned, g), d)
    with pytest.raises(ValueError, match="at least one turn"):
        field_group(0)


def test_elsa_refuses_it_because_captions_name_directions(tmp_path):
    data = DataConfig(sources=[ShardSource(root=str(tmp_path))], field_augment="rotate")
    with pytest.raises(ValidationError, match="caption"):
        TrainConfig(run_dir=str(tmp_path / "run"), task="elsa", data=data)
    spatial = TrainConfig(run_dir=str(tmp_path / "run"), task="spatial", data=data)
    assert spatial.data.field_augment == "rotate"
