"""Rendering one shard's samples: spatial FOA, mono originals, bad clips rejected alone."""

from __future__ import annotations

import io

import numpy as np
import soundfile as sf

from room_specs import DEFAULT_CONFIG
from schemas.audio import AudioPrepConfig
from schemas.rooms import RirSettings
from schemas.scenes import SceneConfig
from schemas.sources import SourceClip
from tasks.ambisonics import angular_distance_deg
from tasks.doa import intensity_doa
from tasks.plan import PlanConfig, build_plan, rir_ids
from tasks.render import render_items
from tasks.rir_bank import render_chunk
from tasks.room_sampling import load_config, sample_room_set
from tasks.scene_plan import plan_scenes
from tasks.sources import read_source


def test_render_items_mixes_good_and_bad(tmp_path):
    rooms, placements, _ = sample_room_set(load_config(DEFAULT_CONFIG), seed=1, n_rooms=6)
    clips, _ = read_source("demo", None, limit=3)
    (tmp_path / "bad.wav").write_bytes(b"RIFF0000WAVEfmt garbage")
    clips.append(SourceClip(dataset="demo", clip_id="broken", captions=("x y z",),
                            audio_uri=str(tmp_path / "bad.wav"), source_split="train"))
    items = build_plan(clips, placements, PlanConfig(), seed=0)
    used = {i.placement_id for i in items if i.placement_id}
    rirs, records, _ = render_chunk(
        {r.room_id: r for r in rooms}, [p for p in placements if p.placement_id in used],
        RirSettings(calibrate=False, max_ism_order=6),
    )
    done, rejects = render_items(items, rirs, {r.placement_id: r for r in records}, AudioPrepConfig())
    bad = [i for i in items if i.clip_id == "broken"]
    assert {r.key for r in rejects} == {i.key for i in bad}
    assert {r.reason for r in rejects} == {"undecodable"}
    assert len(done) == len(items) - len(bad)
    errors = []
    for s in done:
        audio, fs = sf.read(io.BytesIO(s.flac), dtype="float32")
        assert fs == 48000 and audio.shape[0] >= 4 * fs
        if s.item.placement_id is None:
            assert audio.ndim == 1  # the non-spatial original stays mono
        else:
            assert audio.shape[1] == 4 and s.rir is not None
            assert s.rir.placement_id == s.item.placement_id
            # The direct sound of the rendered clip points where its label says (first 50 ms).
            est = intensity_doa(audio.T, fs, band_hz=None, end_s=0.05)
            errors.append(angular_distance_deg(est.azimuth_deg, est.elevation_deg,
                                               s.rir.azimuth_deg, s.rir.elevation_deg))
    assert np.median(errors) < 20
    assert np.isfinite([s.gain_db for s in done]).all()


def test_a_scene_whose_partner_clip_is_broken_is_rejected_naming_it(tmp_path):
    """A scene sample needs every source's clip: a broken partner rejects that scene (its reason,
    the partner named), and the broken clip's own samples, and nothing else."""
    rooms, placements, _ = sample_room_set(load_config(DEFAULT_CONFIG), seed=1, n_rooms=6)
    clips, _ = read_source("demo", None, limit=3)
    (tmp_path / "bad.wav").write_bytes(b"RIFF0000WAVEfmt garbage")
    clips = [c.model_copy(update={"source_split": "train"}) for c in clips]
    clips.append(SourceClip(dataset="demo", clip_id="broken", captions=("x y z",),
                            audio_uri=str(tmp_path / "bad.wav"), source_split="train"))
    items = build_plan(clips, placements, PlanConfig(), seed=0)
    scenes = SceneConfig(sources={4: 1.0}, duration_s=5.0, min_active_s=1.0, onset_s=(0.0, 2.0))
    items, extra, _ = plan_scenes(items, {p.placement_id: p for p in placements},
                                  {r.room_id: r for r in rooms}, scenes, seed=0)
    used = {p for i in items for p in rir_ids(i)}
    rirs, records, _ = render_chunk(
        {r.room_id: r for r in rooms}, [p for p in [*placements, *extra] if p.placement_id in used],
        RirSettings(calibrate=False, max_ism_order=4),
    )
    done, rejects = render_items(items, rirs, {r.placement_id: r for r in records}, AudioPrepConfig())
    spatial = [i for i in items if i.scene is not None]
    assert spatial and all(len(i.scene.sources) == 4 for i in spatial)  # every clip is in every scene
    broken = {i.key for i in items if i.clip_id == "broken"}
    assert {r.key for r in rejects} == {i.key for i in spatial} | broken
    assert {r.reason for r in rejects} == {"undecodable"}
    partner = [r for r in rejects if r.clip_id != "broken"]
    assert partner and all("scene source" in r.detail and "bad.wav" in r.detail for r in partner)
    assert {s.item.key for s in done} == {i.key for i in items if i.scene is None and i.clip_id != "broken"}
