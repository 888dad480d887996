"""Shared builders for the training tests: shards built by the pipeline, a tiny tokenizer, a tiny CLAP.

Every shard the training, loader and evaluation tests read comes from a real ``spatial-audiocaps
build`` of the demo corpus (the Prefect flow: rooms, RIR bank, template captions, render, commit),
so the loader is tested on exactly what the pipeline writes and the labels are measured on the
rendered RIRs. Built once per pytest process (lru_cache) into a temporary directory; nothing is
downloaded.
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

import yaml
from pydantic import BaseModel, ConfigDict

from room_specs import DEFAULT_CONFIG
from training.config import TINY_AUDIO_CONFIG, TINY_TEXT_CONFIG, FeatureConfig, ModelConfig
from training.tiny_tokenizer import train_tiny_tokenizer

_ROOT = Path(tempfile.mkdtemp(prefix="elsa-tests-"))
atexit.register(shutil.rmtree, _ROOT, True)

# 1 s clips keep the tiny HTSAT (spec_size 128: at most 256 frames) and the CPU budget happy.
TEST_FEATURES = FeatureConfig(clip_s=1.0)


class BuildSpec(BaseModel):
    """A demo build for tests: clips, rooms and placements per room (the room YAML's), shard size.

    The RIR bank renders uncalibrated with image order 6 (the labels are still measured on each
    rendered RIR), which keeps a build of hundreds of samples within seconds of CPU.
    """

    model_config = ConfigDict(frozen=True, extra="forbid")

    clips: int
    n_rooms: int
    train_placements: int = 1
    holdout_placements: int = 1
    shard_size: int = 8
    seed: int = 0

    def overrides(self, room_config: Path) -> list[str]:
        return [f"room_config={room_config}", f"n_rooms={self.n_rooms}", f"limit={self.clips}",
                f"shard_size={self.shard_size}", f"seed={self.seed}", "rir.calibrate=false",
                "rir.max_ism_order=6", "run.n_workers=1"]

    def room_yaml(self) -> str:
        rooms = yaml.safe_load(Path(DEFAULT_CONFIG).read_text())
        for split, n in (("train", self.train_placements), ("val", self.holdout_placements),
                         ("test", self.holdout_placements)):
            rooms["splits"][split]["placements_per_room"] = n
        return yaml.safe_dump(rooms)


# 48 clips (about 40 train, the rest val/test), each with two spatial augmentations and its mono
# original; the loader, training and evaluation tests share it.
SMALL = BuildSpec(clips=48, n_rooms=12, holdout_placements=3, shard_size=8, seed=3)
# The learning test: 157 train clips x 2 spatial augmentations at 136 source positions, and 26 test
# clips x 2 at 23 of the test rooms' held-out positions (4 per room).
LEARN = BuildSpec(clips=200, n_rooms=80, train_placements=2, holdout_placements=4, shard_size=32)


def pipeline_build(out_root: str, spec: BuildSpec = SMALL) -> dict:
    """A real ``spatial-audiocaps build`` of the demo corpus into ``out_root`` (local or s3://, with
    the AWS environment of this process); returns the flow's result, whose ``uri`` is the dataset
    version's root, which the loader reads."""
    room_config = _ROOT / f"rooms-{spec.train_placements}-{spec.holdout_placements}.yaml"
    room_config.write_text(spec.room_yaml())
    env = {k: v for k, v in os.environ.items() if not k.startswith("PREFECT_")} | {
        "PREFECT_HOME": str(_ROOT / "prefect-home"),
        "PREFECT_SERVER_ANALYTICS_ENABLED": "false",
        "PREFECT_SERVER_EPHEMERAL_STARTUP_TIMEOUT_SECONDS": "180",
        "OMP_NUM_THREADS": "1",
    }
    cmd = [sys.executable, "-m", "spatial_audiocaps.cli", "build", "--out", out_root]
    for o in spec.overrides(room_config):
        cmd += ["--set", o]
    res = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=1800, check=False)
    assert res.returncode == 0, res.stderr[-3000:]
    result = json.loads(next(line for line in reversed(res.stdout.splitlines()) if line.startswith("{")))
    assert result["samples"] > 0 and result["rejects"] == 0, result
    return result


@lru_cache(maxsize=4)
def shards(spec: BuildSpec = SMALL) -> Path:
    """The dataset version root of a local build of ``spec``."""
    return Path(pipeline_build(str(_ROOT / f"build-{abs(hash(spec))}"), spec)["uri"])


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
