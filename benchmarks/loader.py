"""Loader throughput: 10 s FOA samples per second per CPU core through the shard → feature pipeline.

The spatial train samples of a demo build (``spatial-audiocaps build``: the pipeline's own shards,
clips looped to at least 10 s, 4-channel 16-bit FLAC) are read by training.data.ShardStream in this
process (torch on one thread), so CPU time per sample is the cost one loader worker pays: shard
read (tasks.shard_reader), FLAC decode, crop/pad, one STFT of the four channels, log-mel of W and
the six mel-band intensity vectors, collation.

Reported in the same run: the waveform-only mode (features computed on the GPU instead), the
features alone on decoded audio, and the baseline transformers' ClapFeatureExtractor (numpy
float64, log-mel of one channel only). Target: >= 25 samples/s/core for the full pipeline.
"""

from __future__ import annotations

import json
import os
import platform
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from tasks.shard_reader import read_shard
from tasks.shard_writer import ShardSample
from training.config import DataConfig, FeatureConfig, ShardSource
from training.data import SampleMode, ShardStream, decode_audio, list_shards
from training.features import clip_features

CLIPS = 8
REPEATS = 3


def build_shards(root: Path) -> str:
    """A demo build into ``root`` (the flow, as a user runs it); returns the dataset version root."""
    cmd = [sys.executable, "-m", "spatial_audiocaps.cli", "build", "--out", str(root), "--limit", str(CLIPS),
           "--n-rooms", "20", "--set", "audio.min_loop_s=10", "--set", "run.n_workers=1"]
    res = subprocess.run(cmd, capture_output=True, text=True, check=True,
                         env=os.environ | {"PREFECT_HOME": str(root / "prefect-home")})
    return json.loads(next(line for line in reversed(res.stdout.splitlines()) if line.startswith("{")))["uri"]


def spatial_samples(root: str) -> list[ShardSample]:
    return [s for url in list_shards(root, "train") for s in read_shard(url)
            if isinstance(s, ShardSample) and s.record.spatial]


def cpu_time(fn) -> float:
    fn()
    ts = []
    for _ in range(REPEATS):
        t = time.process_time()
        fn()
        ts.append(time.process_time() - t)
    return statistics.median(ts)


def main() -> None:
    torch.set_num_threads(1)
    feat = FeatureConfig()
    with tempfile.TemporaryDirectory() as d:
        root = build_shards(Path(d))
        samples = spatial_samples(root)
        n_samples = len(samples)
        cfg = DataConfig(
            sources=[ShardSource(root=root, only="spatial")],
            batch_size=n_samples,
            num_workers=0,
            shuffle_buffer=0,
            resampled=False,
        )

        def pipeline(features: bool) -> None:
            n = sum(
                len(b["keys"])
                for b in ShardStream(cfg, feat, seed=0, mode=SampleMode(features=features), drop_last=False)
            )
            assert n == n_samples

        full = cpu_time(lambda: pipeline(True))
        wave = cpu_time(lambda: pipeline(False))
        audio = [decode_audio(s.flac, s.record, 48000) for s in samples]
        rng = np.random.default_rng(0)
        feats = cpu_time(lambda: [clip_features(a, feat, rng) for a in audio])
        decode = cpu_time(lambda: [decode_audio(s.flac, s.record, 48000) for s in samples])
        clip_s = statistics.mean(s.record.audio.duration_s for s in samples)
        from transformers import ClapFeatureExtractor

        hf = ClapFeatureExtractor(
            truncation="rand_trunc", padding="repeatpad", frequency_min=50, frequency_max=14000
        )
        base = cpu_time(lambda: [hf(a[0], sampling_rate=48000, return_tensors="np") for a in audio])
    cpu_s = {"full": full, "wave": wave, "feat": feats, "decode": decode, "hf": base}
    per = {k: n_samples / v for k, v in cpu_s.items()}
    print(
        json.dumps(
            {
                "benchmark": "loader",
                "clip_s": round(clip_s, 2),
                "channels": 4,
                "samples": n_samples,
                "repeats": REPEATS,
                "pipeline_samples_per_s_per_core": round(per["full"], 1),
                "waveform_only_samples_per_s_per_core": round(per["wave"], 1),
                "features_only_samples_per_s_per_core": round(per["feat"], 1),
                "flac_decode_only_samples_per_s_per_core": round(per["decode"], 1),
                "baseline_hf_clap_mel_only_samples_per_s_per_core": round(per["hf"], 1),
                "features_speedup_vs_hf_mel_only": round(per["feat"] / per["hf"], 2),
                "target_samples_per_s_per_core": 25,
                "meets_target": per["full"] >= 25,
                "cpu_count": os.cpu_count(),
                "machine": platform.machine(),
                "python": platform.python_version(),
                "torch": torch.__version__,
                "load_avg_1m": round(os.getloadavg()[0], 2),
            }
        )
    )


if __name__ == "__main__":
    main()
