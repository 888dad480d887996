"""The embedded demo corpus and the demo run: real audio, honest variety, spatialised output."""

from __future__ import annotations

import io

import numpy as np
import soundfile as sf

from schemas.audio import AudioPrepConfig
from tasks.audio_prep import prepare_clip
from tasks.demo_corpus import GENERATORS, demo_clips


def test_demo_corpus_is_varied_decodable_and_deterministic():
    clips = demo_clips(16, seed=0)
    assert len({c.clip_id for c in clips}) == 16
    assert {c.clip_id.split("-")[1] for c in clips} == {g.__name__.strip("_") for g in GENERATORS}
    rates = set()
    for c in clips:
        data, fs = sf.read(io.BytesIO(c.audio))
        rates.add(fs)
        assert data.ndim == 1 and np.abs(data).max() > 0.1
        assert len(c.captions) >= 3 and all(len(t.split()) >= 3 for t in c.captions)
    assert len(rates) >= 3
    assert [c.audio for c in demo_clips(4, seed=0)] == [c.audio for c in clips[:4]]
    assert demo_clips(1, seed=1)[0].audio != clips[0].audio


def test_demo_clips_survive_audio_preparation():
    cfg = AudioPrepConfig()
    trimmed = 0
    for c in demo_clips(8, seed=3):
        x, info = prepare_clip(c.audio, cfg)
        assert x.size >= cfg.min_loop_s * cfg.target_sr
        assert np.isfinite(x).all()
        trimmed += info.trim_start_samples + info.trim_end_samples > 0.05 * cfg.target_sr
    assert trimmed >= 4  # the silent padding is found and removed
