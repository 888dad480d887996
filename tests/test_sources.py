"""Source readers: one per corpus, honest rejects for what is missing, real files where present.

Every file-based reader runs twice, on a local directory and on the same files uploaded to the
local S3 server (moto_server), through the one storage layer.
"""

from __future__ import annotations

import io
import json
import sys
import tarfile
from pathlib import Path

import numpy as np
import pytest
import soundfile as sf

from schemas.audio import AudioPrepConfig
from tasks.demo_corpus import demo_clips
from tasks.errors import AudioRejected, SpatialAudioCapsError
from tasks.plan import PlanItem
from tasks.render import render_items
from tasks.sources import ClipAudio, read_audio, read_source
from tasks.storage import join_uri, open_storage

REALDATA = Path(__file__).resolve().parents[2] / "shared" / "realdata"


def _wav(path: Path, seconds: float = 0.5, fs: int = 16000) -> None:
    sf.write(path, np.random.default_rng(0).standard_normal(int(seconds * fs)) * 0.1, fs)


def _tar(path: Path, members: dict[str, bytes]) -> None:
    with tarfile.open(path, "w") as tar:
        for name, data in members.items():
            info = tarfile.TarInfo(name)
            info.size = len(data)
            tar.addfile(info, io.BytesIO(data))


@pytest.fixture(params=["local", "s3"])
def place(request: pytest.FixtureRequest, tmp_path: Path):
    """Where a test's input files live: ``place(local_dir)`` gives the root URI readers are handed,
    the directory itself, or a copy of its files on the local S3 server."""
    if request.param == "local":
        return str
    s3 = request.getfixturevalue("s3")

    def upload(local: Path) -> str:
        root = join_uri(s3.root, "inputs", local.name)
        storage = open_storage(root)
        for p in sorted(local.rglob("*")):
            if p.is_file():
                storage.put_bytes(join_uri(root, p.relative_to(local).as_posix()), p.read_bytes())
        return root

    return upload


def test_demo_source_resolves_its_audio():
    clips, rejects = read_source("demo", None, limit=6, seed=2)
    assert len(clips) == 6 and not rejects
    assert [read_audio(c.audio_uri) for c in clips] == [c.audio for c in demo_clips(6, 2)]


def test_audiocaps_groups_captions_and_rejects_missing_audio(tmp_path, place):
    src = tmp_path / "ac"
    (src / "audio").mkdir(parents=True)
    rows = ["audiocap_id,youtube_id,start_time,caption"]
    rows += [f"{i},abc,30,caption number {i}" for i in range(5)]
    rows += ["10,Yzz,0,a dog barks", "11,missing1,10,a car passes"]
    (src / "val.csv").write_text("\n".join(rows) + "\n")
    _wav(src / "audio" / "abc_30.wav")
    _wav(src / "audio" / "YYzz.flac")
    root = place(src)
    clips, rejects = read_source("audiocaps", root)
    assert {c.clip_id: len(c.captions) for c in clips} == {"Yzz_0": 1, "abc_30": 5}
    assert all(c.source_split == "val" for c in clips)
    assert all(c.audio_uri.startswith(join_uri(root, "audio") + "/") for c in clips)
    assert [(r.clip_id, r.reason) for r in rejects] == [("missing1_10", "audio_missing")]
    assert sf.info(io.BytesIO(read_audio(clips[0].audio_uri))).samplerate == 16000


def test_clotho_csv_with_missing_file(tmp_path, place):
    src = tmp_path / "clotho"
    src.mkdir()
    header = "file_name," + ",".join(f"caption_{i}" for i in range(1, 6))
    (src / "clotho_captions_evaluation.csv").write_text(f"{header}\nhere.wav,a,b,c,d,e\ngone.wav,a,b,c,d,e\n")
    _wav(src / "here.wav")
    root = place(src)
    for given in (root, join_uri(root, "clotho_captions_evaluation.csv")):  # a directory or one CSV
        clips, rejects = read_source("clotho", given)
        assert [(c.clip_id, c.source_split, len(c.captions)) for c in clips] == [("here", "test", 5)]
        assert [r.reason for r in rejects] == ["audio_missing"]
        assert read_audio(clips[0].audio_uri) == (src / "here.wav").read_bytes()


def test_generic_csv(tmp_path, place):
    src = tmp_path / "generic"
    src.mkdir()
    _wav(src / "a.wav")
    _wav(src / "c.wav")
    (src / "list.csv").write_text("path,caption\na.wav,first,second\nb.wav,gone\nc.wav,\n")
    root = place(src)
    clips, rejects = read_source("csv", join_uri(root, "list.csv"))
    assert [c.captions for c in clips] == [("first", "second")]
    assert clips[0].audio_uri == join_uri(root, "a.wav")
    assert sorted(r.reason for r in rejects) == ["audio_missing", "no_caption"]
    assert read_audio(clips[0].audio_uri) == (src / "a.wav").read_bytes()


def test_freesound_tars(tmp_path, place):
    src = tmp_path / "fs"
    src.mkdir()
    flac = io.BytesIO()
    sf.write(flac, np.zeros(4800) + 0.1, 48000, format="FLAC")
    _tar(src / "shard-000.tar", {
        "a.flac": flac.getvalue(), "a.json": json.dumps({"text": ["rain on a roof"]}).encode(),
        "b.flac": flac.getvalue(), "b.json": json.dumps({"tag": ["wind", "storm"]}).encode(),
        "c.flac": flac.getvalue(), "c.json": b"{not json",
        "d.json": json.dumps({"text": "no audio here"}).encode(),
    })
    (src / "shard-001.tar").write_bytes(b"not a tar at all" * 64)
    root = place(src)
    clips, rejects = read_source("freesound", root)
    assert [(c.clip_id, c.captions) for c in clips] == [
        ("shard-000/a", ("rain on a roof",)), ("shard-000/b", ("wind, storm",)),
    ]
    assert sorted((r.clip_id, r.reason) for r in rejects) == [
        ("shard-000/c", "corrupt_member"), ("shard-000/d", "audio_missing"), ("shard-001.tar", "corrupt_tar"),
    ]
    assert clips[0].audio_uri == f"tar://{join_uri(root, 'shard-000.tar')}#a.flac"
    assert read_audio(clips[0].audio_uri) == flac.getvalue()
    with pytest.raises(AudioRejected) as exc:
        read_audio(f"tar://{join_uri(root, 'shard-000.tar')}#zzz.flac")
    assert exc.value.reason == "unreadable"


def _tar_clips(directory: Path, n_tars: int, per_tar: int) -> list[str]:
    """``n_tars`` tars of ``per_tar`` distinct 0.5 s FLAC clips each; their tar:// URIs, interleaved
    across tars as a shard's sorted keys interleave them."""
    uris: list[list[str]] = []
    for t in range(n_tars):
        members = {}
        for k in range(per_tar):
            bio = io.BytesIO()
            tone = 0.2 * np.sin(2 * np.pi * (200 + 50 * k + 400 * t) * np.arange(24000) / 48000)
            sf.write(bio, tone, 48000, format="FLAC")
            members[f"clip{k}.flac"] = bio.getvalue()
        _tar(directory / f"part-{t}.tar", members)
        uris.append([f"tar://{directory / f'part-{t}.tar'}#clip{k}.flac" for k in range(per_tar)])
    return [uri for row in zip(*uris, strict=True) for uri in row]


def _originals(uris: list[str]) -> list[PlanItem]:
    return [PlanItem(key=f"k{i:03d}", dataset="freesound", split="train", clip_id=f"c{i}", aug=0,
                     placement_id=None, captions=("a tone",), audio_uri=uri, small_eval=False, seed=0)
            for i, uri in enumerate(uris)]


class _TarOpens:
    """Counts the process's real open() calls on files of one directory (a sys audit hook)."""

    def __init__(self, directory: Path) -> None:
        self.directory, self.paths, self.active = str(directory), [], False
        sys.addaudithook(self._hook)  # hooks cannot be removed; ``active`` switches it off

    def _hook(self, event: str, args: tuple) -> None:
        path = args[0] if event == "open" and args else None
        if self.active and isinstance(path, str) and path.startswith(self.directory):
            self.paths.append(path)


def test_a_shard_task_opens_each_tar_once(tmp_path):
    """render_items (the shard task's reader) opens each source tar once, however many clips it
    reads from it; the old reader rescanned the tar for every clip."""
    uris = _tar_clips(tmp_path, n_tars=2, per_tar=5)
    items = _originals(uris)
    opens = _TarOpens(tmp_path)
    opens.active = True
    done, rejects = render_items(items, {}, {}, AudioPrepConfig(min_loop_s=1.0))
    opens.active = False
    assert not rejects and len(done) == 10
    assert sorted(opens.paths) == sorted({str(tmp_path / "part-0.tar"), str(tmp_path / "part-1.tar")})
    # each sample carries its own member's audio (distinct tones), not a neighbour's
    assert len({d.flac for d in done}) == 10
    with ClipAudio() as audio:
        assert [audio.read(u) for u in uris] == [read_audio(u) for u in uris]


def test_tar_members_on_s3_are_read_through_one_open_per_tar(tmp_path, s3):
    """On s3:// the tar is opened (one HEAD by s3fs) once per ClipAudio; members are ranged reads."""
    local = _tar_clips(tmp_path, n_tars=2, per_tar=4)
    root = join_uri(s3.root, "freesound")
    storage = open_storage(root)
    for t in range(2):
        storage.put_bytes(join_uri(root, f"part-{t}.tar"), (tmp_path / f"part-{t}.tar").read_bytes())
    uris = [u.replace(f"tar://{tmp_path}", f"tar://{root}") for u in local]
    heads: list[str] = []  # s3fs's own client (aiobotocore): the HEAD it sends when a file is opened
    storage.fs.s3.meta.events.register(
        "before-parameter-build.s3.HeadObject", lambda params, **_: heads.append(params["Key"])
    )
    with ClipAudio() as audio:
        got = [audio.read(u) for u in uris]
    assert sorted(heads) == sorted({"datasets/freesound/part-0.tar", "datasets/freesound/part-1.tar"})
    assert got == [read_audio(u) for u in local]


def test_bad_paths_are_named(tmp_path):
    with pytest.raises(AudioRejected) as exc:
        read_audio(str(tmp_path / "nope.wav"))
    assert exc.value.reason == "audio_missing"
    with pytest.raises(AudioRejected) as exc:
        read_audio(f"tar://{tmp_path / 'nope.tar'}#a.flac")
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
