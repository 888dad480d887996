"""Shared builders for the training tests: rendered shards, a tiny tokenizer, a tiny CLAP checkpoint.

Built once per pytest process (lru_cache) into a temporary directory, so every training test
module reuses the same files; nothing is downloaded.
"""

from __future__ import annotations

import atexit
import json
import os
import shutil
import subprocess
import sys
import tempfile
from functools import lru_cache
from pathlib import Path

from training.config import TINY_AUDIO_CONFIG, TINY_TEXT_CONFIG, FeatureConfig, ModelConfig
from training.synthetic import SyntheticSpec, build_synthetic_shards, train_tiny_tokenizer

_ROOT = Path(tempfile.mkdtemp(prefix="elsa-tests-"))
atexit.register(shutil.rmtree, _ROOT, True)

# 1 s clips keep the tiny HTSAT (spec_size 128: at most 256 frames) and the CPU budget happy.
TEST_FEATURES = FeatureConfig(clip_s=1.0)
# 12 rooms: 12 train placements x 2 sounds + their mono originals, and held-out val/test placements.
SMALL = SyntheticSpec(n_rooms=12, sounds_per_placement=2, sound_s=1.2, samples_per_shard=6, seed=3)
# The learning test: 80 directions x 3 sounds to train on, 32 held-out directions in test rooms.
LEARN = SyntheticSpec(
    n_rooms=80,
    sounds_per_placement=3,
    sound_s=1.5,
    nonspatial_originals=False,
    samples_per_shard=32,
    holdout_placements_per_room=4,
    holdout_sounds_per_placement=1,
    splits=("train", "test"),
    seed=0,
)


@lru_cache(maxsize=4)
def shards(spec: SyntheticSpec = SMALL) -> Path:
    root = _ROOT / f"shards-{abs(hash(spec.model_dump_json()))}"
    build_synthetic_shards(root, spec)
    return root


def demo_build(out_root: str) -> str:
    """A real ``spatial-audiocaps build`` of the demo corpus into ``out_root`` (local or s3://, with the
    AWS environment of this process); returns the dataset version's root, which the loader reads."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("PREFECT_")} | {
        "PREFECT_HOME": str(_ROOT / "prefect-home"),
        "PREFECT_SERVER_ANALYTICS_ENABLED": "false",
        "PREFECT_SERVER_EPHEMERAL_STARTUP_TIMEOUT_SECONDS": "180",
        "OMP_NUM_THREADS": "1",
    }
    cmd = [sys.executable, "-m", "spatial_audiocaps.cli", "build", "--out", out_root, "--limit", "12",
           "--n-rooms", "30", "--shard-size", "6", "--workers", "1"]
    res = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=900, check=False)
    assert res.returncode == 0, res.stderr[-3000:]
    result = json.loads(next(line for line in reversed(res.stdout.splitlines()) if line.startswith("{")))
    assert result["samples"] == 36 and result["rejects"] == 0, result
    return result["uri"]


@lru_cache(maxsize=1)
def tokenizer_dir() -> Path:
    return train_tiny_tokenizer(_ROOT / "tokenizer")


def tiny_model_config(**kw: object) -> ModelConfig:
    return ModelConfig.tiny(str(tokenizer_dir()), **kw)


@lru_cache(maxsize=1)
def tiny_clap_dir() -> Path:
    """A laion/clap-htsat-unfused-format directory from a tiny random ClapModel (save_pretrained)."""
    import torch
    from transformers import ClapConfig, ClapFeatureExtractor, ClapModel

    from training.model import load_tokenizer

    out = _ROOT / "tiny-clap"
    tok = load_tokenizer(tokenizer_dir())
    torch.manual_seed(0)
    cfg = ClapConfig(
        text_config={**TINY_TEXT_CONFIG, "vocab_size": len(tok)},
        audio_config=TINY_AUDIO_CONFIG,
        projection_dim=32,
    )
    ClapModel(cfg).save_pretrained(out)
    tok.save_pretrained(out)
    ClapFeatureExtractor(
        truncation="rand_trunc", padding="repeatpad", frequency_min=50, frequency_max=14000
    ).save_pretrained(out)
    return out
