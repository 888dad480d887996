"""Source readers: one per corpus, honest rejects for what is missing, real files where present."""

from __future__ import annotations

import io
import json
import tarfile
from pathlib import Path

import numpy as np
import pytest
import soundfile as sf

from tasks.demo_corpus import demo_clips
from tasks.errors import AudioRejected, SpatialAudioCapsError
from tasks.sources import read_audio, read_source

REALDATA = Path(__file__).resolve().parents[2] / "shared" / "realdata"


def _wav(path: Path, seconds: float = 0.5, fs: int = 16000) -> None:
    sf.write(path, np.random.default_rng(0).standard_normal(int(seconds * fs)) * 0.1, fs)


def test_demo_source_resolves_its_audio():
    clips, rejects = read_source("demo", None, limit=6, seed=2)
    assert len(clips) == 6 and not rejects
    assert [read_audio(c.audio_uri) for c in clips] == [c.audio for c in demo_clips(6, 2)]


def test_audiocaps_groups_captions_and_rejects_missing_audio(tmp_path):
    (tmp_path / "audio").mkdir()
    rows = ["audiocap_id,youtube_id,start_time,caption"]
    rows += [f"{i},abc,30,caption number {i}" for i in range(5)]
    rows += ["10,Yzz,0,a dog barks", "11,missing1,10,a car passes"]
    (tmp_path / "val.csv").write_text("\n".join(rows) + "\n")
    _wav(tmp_path / "audio" / "abc_30.wav")
    _wav(tmp_path / "audio" / "YYzz.flac")
    clips, rejects = read_source("audiocaps", tmp_path)
    assert {c.clip_id: len(c.captions) for c in clips} == {"Yzz_0": 1, "abc_30": 5}
    assert all(c.source_split == "val" for c in clips)
    assert [(r.clip_id, r.reason) for r in rejects] == [("missing1_10", "audio_missing")]
    assert sf.info(io.BytesIO(read_audio(clips[0].audio_uri))).samplerate == 16000


def test_clotho_csv_with_missing_file(tmp_path):
    header = "file_name," + ",".join(f"caption_{i}" for i in range(1, 6))
    (tmp_path / "clotho_captions_evaluation.csv").write_text(
        f"{header}\nhere.wav,a,b,c,d,e\ngone.wav,a,b,c,d,e\n"
    )
    _wav(tmp_path / "here.wav")
    clips, rejects = read_source("clotho", tmp_path)
    assert [(c.clip_id, c.source_split, len(c.captions)) for c in clips] == [("here", "test", 5)]
    assert [r.reason for r in rejects] == ["audio_missing"]


def test_generic_csv(tmp_path):
    _wav(tmp_path / "a.wav")
    (tmp_path / "list.csv").write_text("path,caption\na.wav,first,second\nb.wav,gone\nc.wav,\n")
    _wav(tmp_path / "c.wav")
    clips, rejects = read_source("csv", tmp_path / "list.csv")
    assert [c.captions for c in clips] == [("first", "second")]
    assert sorted(r.reason for r in rejects) == ["audio_missing", "no_caption"]


def test_freesound_tars(tmp_path):
    tar_path = tmp_path / "shard-000.tar"
    flac = io.BytesIO()
    sf.write(flac, np.zeros(4800) + 0.1, 48000, format="FLAC")
    members = {
        "a.flac": flac.getvalue(), "a.json": json.dumps({"text": ["rain on a roof"]}).encode(),
        "b.flac": flac.getvalue(), "b.json": json.dumps({"tag": ["wind", "storm"]}).encode(),
        "c.flac": flac.getvalue(), "c.json": b"{not json",
        "d.json": json.dumps({"text": "no audio here"}).encode(),
    }
    with tarfile.open(tar_path, "w") as tar:
        for name, data in members.items():
            info = tarfile.TarInfo(name)
            info.size = len(data)
            tar.addfile(info, io.BytesIO(data))
    clips, rejects = read_source("freesound", tmp_path)
    assert [(c.clip_id, c.captions) for c in clips] == [
        ("shard-000/a", ("rain on a roof",)), ("shard-000/b", ("wind, storm",)),
    ]
    assert sorted((r.clip_id, r.reason) for r in rejects) == [
        ("shard-000/c", "corrupt_member"), ("shard-000/d", "audio_missing"),
    ]
    assert read_audio(clips[0].audio_uri) == flac.getvalue()


def test_bad_paths_are_named(tmp_path):
    with pytest.raises(AudioRejected) as exc:
        read_audio(str(tmp_path / "nope.wav"))
    assert exc.value.reason == "audio_missing"
    with pytest.raises(SpatialAudioCapsError, match="needs an input path"):
        read_source("clotho", None)
    with pytest.raises(SpatialAudioCapsError, match="lacks columns"):
        (tmp_path / "bad.csv").write_text("file,caption\nx.wav,y\n")
        read_source("clotho", tmp_path / "bad.csv")


@pytest.mark.realdata
def test_real_clotho_sample_and_esc50(tmp_path):
    clotho = REALDATA / "mono" / "clotho_eval_sample" / "captions.csv"
    esc = REALDATA / "mono" / "esc50"
    if not clotho.exists() or not esc.exists():
        pytest.skip("../shared/realdata is absent")
    clips, rejects = read_source("clotho", clotho)
    assert len(clips) == 3 and not rejects and all(len(c.captions) == 5 for c in clips)
    assert sf.info(io.BytesIO(read_audio(clips[0].audio_uri))).samplerate == 44100
    import csv

    rows = list(csv.DictReader((esc / "selected_subset.csv").open()))
    lines = [f"{esc / 'audio' / r['filename']},the sound of a {r['category'].replace('_', ' ')}"
             for r in rows]
    (tmp_path / "esc.csv").write_text("path,caption\n" + "\n".join(lines) + "\n")
    clips, rejects = read_source("csv", tmp_path / "esc.csv")
    assert len(clips) == 40 and not rejects
