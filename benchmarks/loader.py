"""Loader throughput: 10 s FOA samples per second per CPU core through the shard → feature pipeline.

Eight 10 s, 4-channel, 16-bit FLAC samples (a synthetic sound convolved with a rendered RIR) in a
local shard are read by training.data.ShardStream in this process (torch on one thread), so CPU
time per sample is the cost one loader worker pays: tar read, FLAC decode, crop/pad, one STFT of
the four channels, log-mel of W and the six mel-band intensity vectors, collation.

Reported in the same run: the waveform-only mode (features computed on the GPU instead), the
features alone on decoded audio, and the baseline transformers' ClapFeatureExtractor (numpy
float64, log-mel of one channel only). Target: >= 25 samples/s/core for the full pipeline.
"""

from __future__ import annotations

import json
import os
import platform
import statistics
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from training.config import DataConfig, FeatureConfig, ShardSource
from training.data import SampleMode, ShardStream, decode_audio
from training.features import clip_features

N = 8
REPEATS = 3


def build_shard(root: Path) -> list[bytes]:
    from room_specs import DEFAULT_CONFIG
    from schemas.audio import AudioPrepConfig
    from schemas.rooms import RirSettings
    from tasks.audio_prep import RirSpectrum, convolve, encode_flac, normalise_level
    from tasks.rir_engine import render_rir
    from tasks.room_sampling import load_config, sample_room_set
    from training.synthetic import SOUND_KINDS, synthetic_sound

    rooms, placements, _ = sample_room_set(load_config(DEFAULT_CONFIG), 0, 2)
    room = {r.room_id: r for r in rooms}[placements[0].room_id]
    p = placements[0]
    rir = render_rir(
        room, p.receiver_m, p.source_m, p.receiver_yaw_deg, RirSettings(calibrate=False, max_ism_order=6)
    )
    spec = RirSpectrum.from_rir(rir.rir, 48000)
    flacs = []
    for i in range(N):
        x = synthetic_sound(SOUND_KINDS[i % len(SOUND_KINDS)], i, 10.0)
        y, _ = normalise_level(convolve(x, spec)[:, : x.shape[0]], AudioPrepConfig())
        flacs.append(encode_flac(y, 48000))
    import webdataset as wds

    (root / "train").mkdir(parents=True)
    with open(root / "train" / "train-000000.tar", "wb") as f, wds.TarWriter(f) as w:
        for i, fl in enumerate(flacs):
            meta = {
                "text": ["a sound"],
                "spatial": True,
                "azimuth_deg": 10.0,
                "elevation_deg": 0.0,
                "distance_m": 2.0,
                "floor_area_m2": 40.0,
                "t30_s": 0.5,
                "drr_db": 3.0,
            }
            w.write({"__key__": f"bench-train-{i:04d}-1", "flac": fl, "json": json.dumps(meta).encode()})
    return flacs


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
        root = Path(d)
        flacs = build_shard(root)
        cfg = DataConfig(
            sources=[ShardSource(root=str(root))],
            batch_size=N,
            num_workers=0,
            shuffle_buffer=0,
            resampled=False,
        )

        def pipeline(features: bool) -> None:
            n = sum(
                len(b["keys"])
                for b in ShardStream(cfg, feat, seed=0, mode=SampleMode(features=features), drop_last=False)
            )
            assert n == N

        full = cpu_time(lambda: pipeline(True))
        wave = cpu_time(lambda: pipeline(False))
        audio = [decode_audio(f, 48000) for f in flacs]
        rng = np.random.default_rng(0)
        feats = cpu_time(lambda: [clip_features(a, feat, rng) for a in audio])
        decode = cpu_time(lambda: [decode_audio(f, 48000) for f in flacs])
        from transformers import ClapFeatureExtractor

        hf = ClapFeatureExtractor(
            truncation="rand_trunc", padding="repeatpad", frequency_min=50, frequency_max=14000
        )
        base = cpu_time(lambda: [hf(a[0], sampling_rate=48000, return_tensors="np") for a in audio])
    per = {
        k: N / v for k, v in {"full": full, "wave": wave, "feat": feats, "decode": decode, "hf": base}.items()
    }
    print(
        json.dumps(
            {
                "benchmark": "loader",
                "clip_s": 10.0,
                "channels": 4,
                "samples": N,
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
