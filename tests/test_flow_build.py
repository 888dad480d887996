"""The build flow as users run it (`spatial-audiocaps build`, a real ephemeral Prefect and Dask
LocalCluster in a subprocess): resume after SIGKILL, regeneration, bad input, real data."""

from __future__ import annotations

import csv
import hashlib
import io
import json
import os
import signal
import subprocess
import sys
import tarfile
import time
from pathlib import Path

import pyarrow.parquet as pq
import pytest
import soundfile as sf
from bad_inputs import BAD_CAPTIONS, NON_UTF8_CAPTION, write_bad_audio
from srir_bank import GEOMETRY, wav_room

from tasks.demo_corpus import demo_clips
from tasks.shard_reader import read_shard

pytestmark = pytest.mark.slow
REPO = Path(__file__).resolve().parents[1]
REALDATA = REPO.parent / "shared" / "realdata"
SMALL = ["--n-rooms", "40", "--workers", "2"]


@pytest.fixture(scope="module")
def flow_env(tmp_path_factory: pytest.TempPathFactory) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith(("PREFECT_", "AWS_"))}
    env |= {
        "PREFECT_HOME": str(tmp_path_factory.mktemp("prefect-home")),
        "PREFECT_SERVER_ANALYTICS_ENABLED": "false",
        "PREFECT_SERVER_EPHEMERAL_STARTUP_TIMEOUT_SECONDS": "180",
        "PYTHONUNBUFFERED": "1",
        "OMP_NUM_THREADS": "1",
    }
    return env


def _cmd(out: Path, *args: str) -> list[str]:
    return [sys.executable, "-m", "spatial_audiocaps.cli", "build", "--out", str(out), *SMALL, *args]


def _json_line(stdout: str) -> dict:
    return json.loads(next(line for line in reversed(stdout.splitlines()) if line.startswith("{")))


def build(out: Path, env: dict[str, str], *args: str) -> dict:
    res = subprocess.run(_cmd(out, *args), env=env, cwd=REPO, capture_output=True, text=True, timeout=900,
                         check=False)
    assert res.returncode == 0, res.stderr[-4000:]
    return _json_line(res.stdout)


def _version_dir(result: dict) -> Path:
    return Path(result["uri"])


def _manifest(version: Path) -> list[dict]:
    rows = pq.read_table(version / "manifest.parquet").to_pylist()
    return sorted(({k: v for k, v in r.items() if k != "committed_at"} for r in rows), key=lambda r: r["key"])


def _tree_digest(root: Path) -> dict[str, str]:
    return {str(p.relative_to(root)): hashlib.sha256(p.read_bytes()).hexdigest()
            for p in sorted(root.rglob("*")) if p.is_file()}


def test_resume_after_sigkill_matches_an_uninterrupted_run(tmp_path, flow_env):
    args = ("--limit", "10", "--shard-size", "2")
    full = build(tmp_path / "a", flow_env, *args)
    assert full["samples"] == 30 and full["rejects"] == 0

    proc = subprocess.Popen(_cmd(tmp_path / "b", *args), env=flow_env, cwd=REPO, start_new_session=True,
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    deadline = time.monotonic() + 600
    receipts: list[Path] = []
    while not receipts and time.monotonic() < deadline and proc.poll() is None:
        time.sleep(0.05)
        receipts = list((tmp_path / "b").rglob("*.rows.parquet"))
    os.killpg(proc.pid, signal.SIGKILL)
    proc.wait()
    assert receipts, "no shard finished before the deadline"
    version_b = receipts[0].parents[1]
    assert not (version_b / "manifest.parquet").exists(), "the run finished before it could be killed"
    finished = {r: (r.with_name(r.name.replace(".rows.parquet", ".tar"))) for r in receipts}
    stamps = {tar: tar.stat().st_mtime_ns for tar in finished.values() if tar.exists()}

    resumed = build(tmp_path / "b", flow_env, *args)
    assert resumed["version"] == full["version"]
    assert resumed["shards"].get("skipped", 0) >= len(stamps) >= 1  # cache hits, recorded
    assert resumed["rir_chunks_cached"] >= 1
    for tar, mtime in stamps.items():
        assert tar.stat().st_mtime_ns == mtime, f"{tar.name} was rendered again"
    assert _manifest(version_b) == _manifest(_version_dir(full))
    for tar in sorted(_version_dir(full).rglob("*.tar")):
        assert (version_b / tar.relative_to(_version_dir(full))).read_bytes() == tar.read_bytes()


def test_regeneration_lands_beside_the_old_version(tmp_path, flow_env):
    first = build(tmp_path / "out", flow_env, "--limit", "4", "--room-seed", "0")
    before = _tree_digest(_version_dir(first))
    script = tmp_path / "regen.py"
    script.write_text(
        "import json\nfrom flows.regenerate import regenerate_room_set\n"
        "from schemas.build import BuildConfig, RunOptions\n"
        "if __name__ == '__main__':\n"
        "    r = regenerate_room_set(config=BuildConfig(limit=4, n_rooms=40), run=RunOptions(n_workers=2),\n"
        f"                            output={str(tmp_path / 'out')!r})\n"
        "    print(json.dumps(r.model_dump(mode='json')))\n"
    )
    res = subprocess.run([sys.executable, str(script)], env=flow_env, cwd=REPO, capture_output=True,
                         text=True, timeout=900, check=False)
    assert res.returncode == 0, res.stderr[-4000:]
    second = _json_line(res.stdout)
    assert second["version"] != first["version"]
    assert _version_dir(second).parent == _version_dir(first).parent
    assert _tree_digest(_version_dir(first)) == before  # untouched
    hashes = {pq.read_table(_version_dir(r) / "manifest.parquet").column("room_set_hash")[0].as_py()
              for r in (first, second)}
    assert len(hashes) == 2


def test_a_scene_build_from_the_cli(tmp_path, flow_env):
    """`spatial-audiocaps build --source demo --scene-config room_specs/scenes_demo.yaml`: the flow
    renders the scenes' trajectory RIRs in the bank, writes json sources and DCASE csv members, and
    the card has its scene section and plots."""
    result = build(tmp_path / "out", flow_env, "--source", "demo", "--limit", "3",
                   "--scene-config", str(REPO / "room_specs" / "scenes_demo.yaml"))
    version = _version_dir(result)
    assert (version / "scene_placements.parquet").exists()
    spatial = [r for r in _manifest(version) if r["spatial"]]
    assert spatial and result["samples"] == len(_manifest(version))
    members = []
    for tar in version.rglob("*.tar"):
        with tarfile.open(tar) as tf:
            members += tf.getnames()
    assert {n.rsplit(".", 1)[0] for n in members if n.endswith(".csv")} == {r["key"] for r in spatial}
    card = json.loads((version / "card.json").read_text())
    assert card["scenes"]["scenes"] == len(spatial)
    assert "plots/scene_sources.png" in card["plots"]


def test_a_measured_bank_in_three_formats_from_the_cli(tmp_path, flow_env):
    """`build --room-source measured --bank DIR --formats foa,binaural,mic` on a FuMa WAV bank of three
    rooms (known geometry, no manifest): one room per split, labels from the bank's table, every
    spatial sample in three members, and a card naming the bank's licence with its binaural section."""
    bank = tmp_path / "bank"
    for room in ("booth", "hall", "studio"):
        wav_room(bank / room, 6, fmt="fuma")
    (bank / "LICENSE").write_text("CC BY 4.0, test recordings\n")
    env = flow_env | {"XDG_CACHE_HOME": str(tmp_path / "cache")}
    result = build(tmp_path / "out", env, "--source", "demo", "--limit", "12", "--workers", "1",
                   "--room-source", "measured", "--bank", str(bank), "--formats", "foa,binaural,mic")
    version = _version_dir(result)
    placements = pq.read_table(version / "placements.parquet").to_pylist()
    assert str(bank) not in json.dumps(placements)  # relative names: a moved bank is the same version
    splits = {room: {p["split"] for p in placements if p["room_id"] == room}
              for room in ("booth", "hall", "studio")}
    assert sorted(map(tuple, splits.values())) == [("test",), ("train",), ("val",)]
    spatial = [r for r in _manifest(version) if r["spatial"]]
    assert spatial and all(r["formats"] == ["foa", "binaural", "mic"] for r in spatial)
    assert {r["split"] for r in spatial} == {"train", "val", "test"}
    labelled = {(az, el, d) for az, el, d in GEOMETRY}
    for tar in version.rglob("*.tar"):
        for sample in read_shard(str(tar)):
            rec = sample.record
            if not rec.spatial:
                continue
            lab = rec.labels
            assert (lab.azimuth_deg, lab.elevation_deg, lab.distance_m) in labelled
            assert lab.floor_area_m2 is None and lab.direct_doa_error_deg < 5.0
            assert rec.formats["binaural"].audio.channels == 2 and rec.formats["mic"].audio.channels == 4
            assert "kemar" in rec.formats["binaural"].audio.renderer_id
            assert rec.formats["binaural"].scene_order == rec.formats["mic"].scene_order == 1
            assert rec.formats["mic"].audio.renderer_id.startswith("em32-tetra-rigid")
    card = json.loads((version / "card.json").read_text())
    (credit,) = card["measured_banks"]
    assert credit["rooms"] == ["booth", "hall", "studio"] and credit["licence"].startswith("CC BY 4.0")
    assert credit["rooms_held_out_whole"] is True
    assert card["binaural"]["samples"] == len(spatial) and "plots/binaural_cues.png" in card["plots"]
    assert card["binaural"]["lateral_samples"] > 0 and card["binaural"]["ild_side_agreement"] == 1.0


def test_bad_input_is_rejected_with_reasons_and_good_samples_survive(tmp_path, flow_env):
    corpus = tmp_path / "corpus"
    bad_audio = write_bad_audio(corpus / "bad")
    good = []
    for clip in demo_clips(6, seed=5):
        path = corpus / f"{clip.clip_id}.wav"
        path.write_bytes(clip.audio)
        good.append(path)
    rows: list[list[str]] = [[str(path), "a steady sound heard in a room"] for path in good[:3]]
    caption_ids: dict[str, str] = {}  # bad caption name -> clip id the csv source gives its row
    for n, (name, (caption, _)) in enumerate(BAD_CAPTIONS.items()):
        path = good[3 + n % 3]
        caption_ids[name] = f"{len(rows):06d}-{path.stem}"
        rows.append([str(path), caption])
    audio_ids: dict[str, str] = {}
    for name, (path, _) in bad_audio.items():
        audio_ids[name] = f"{len(rows):06d}-{path.stem}"
        rows.append([str(path), f"the {name} clip"])
    non_utf8 = f"{len(rows):06d}-{good[4].stem}"
    buf = io.StringIO()
    csv.writer(buf, lineterminator="\n").writerows([["path", "caption"], *rows])
    non_utf8_line = str(good[4]).encode() + b"," + NON_UTF8_CAPTION + b"\n"
    (corpus / "list.csv").write_bytes(buf.getvalue().encode() + non_utf8_line)

    result = build(tmp_path / "out", flow_env, "--source", "csv", "--input", str(corpus / "list.csv"))
    version = _version_dir(result)
    manifest = pq.read_table(version / "manifest.parquet").to_pylist()
    rejects = pq.read_table(version / "rejects.parquet").to_pylist()
    kept_sources = {r["source_id"] for r in manifest}
    # Every good clip with a good caption is present, spatial and original.
    for n in range(3):
        clip_rows = [r for r in manifest if r["source_id"].startswith(f"{n:06d}-")]
        assert clip_rows and any(r["spatial"] for r in clip_rows) and any(not r["spatial"] for r in clip_rows)
    # Every bad audio file is rejected with its reason, and nothing of it reaches a shard.
    reasons: dict[str, set[str]] = {}
    for r in rejects:
        reasons.setdefault(r["source"] or "", set()).add(r["reason"])
    for name, (_, reason) in bad_audio.items():
        assert reasons.get(audio_ids[name]) == {reason}, (name, reasons.get(audio_ids[name]))
        assert audio_ids[name] not in kept_sources
    # Bad captions: rejected with a reason, or (an instruction-like caption) rephrased and validated.
    for name, (_, allowed) in BAD_CAPTIONS.items():
        got = reasons.get(caption_ids[name]) or ({"ok"} if caption_ids[name] in kept_sources else {"lost"})
        assert got <= allowed, (name, got)
    assert reasons.get(non_utf8) == {"not_utf8"}
    assert non_utf8 not in kept_sources
    assert sum(len(v) for v in reasons.values()) >= len(bad_audio) + 2


@pytest.mark.realdata
def test_real_clotho_and_esc50_run_end_to_end(tmp_path, flow_env):
    clotho = REALDATA / "mono" / "clotho_eval_sample" / "captions.csv"
    esc = REALDATA / "mono" / "esc50"
    if not clotho.exists() or not esc.exists():
        pytest.skip("../shared/realdata is absent")
    result = build(tmp_path / "out", flow_env, "--source", "clotho", "--input", str(clotho))
    manifest = pq.read_table(_version_dir(result) / "manifest.parquet").to_pylist()
    assert {r["source_id"] for r in manifest} == {"01 hospital elevator with computer voice",
                                                   "02-Bakken_Rollercoaster", "Tenerife_bazaar_2"}
    assert all(r["n_captions"] == 5 for r in manifest)
    rows = list(csv.DictReader((esc / "selected_subset.csv").open()))[:8]
    lines = [f"{esc / 'audio' / r['filename']},the sound of a {r['category'].replace('_', ' ')}"
             for r in rows]
    (tmp_path / "esc.csv").write_text("path,caption\n" + "\n".join(lines) + "\n")
    result = build(tmp_path / "out", flow_env, "--source", "csv", "--input", str(tmp_path / "esc.csv"),
                   "--dataset", "esc50")
    version = _version_dir(result)
    manifest = pq.read_table(version / "manifest.parquet").to_pylist()
    assert len({r["source_id"] for r in manifest}) == 8 and result["rejects"] == 0
    with tarfile.open(next(version.rglob("*.tar"))) as tf:
        flac = next(m for m in tf.getmembers() if m.name.endswith(".flac"))
        info = sf.info(io.BytesIO(tf.extractfile(flac).read()))
    assert info.samplerate == 48000 and info.channels in (1, 4)
