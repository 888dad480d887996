"""Shards on a real S3 HTTP server: write, list, read back with plain webdataset; faults; determinism."""

from __future__ import annotations

import hashlib
import io
import json
import logging
import os
import random
import tarfile

import numpy as np
import pyarrow.parquet as pq
import pytest
import soundfile as sf
import webdataset as wds
from committed import DS, VER, commit_samples, many
from conftest import FAKE_KEY_ID, FAKE_SECRET, make_sample

from schemas.shards import RejectRow, SampleRecord
from tasks.commit import MANIFEST, read_manifest, read_rejects
from tasks.inspect_dataset import inspect_shard
from tasks.shard_reader import iter_tar_samples
from tasks.shard_writer import (
    TAR_MTIME,
    build_sample,
    plan_samples,
    plan_shards,
    safe_clip_id,
    write_tar,
)
from tasks.storage import (
    StorageConfig,
    join_uri,
    open_storage,
    register_webdataset_s3,
    webdataset_url,
)


def shard_uris(storage, base: str, split: str) -> list[str]:
    return [o.uri for o in storage.list(join_uri(base, split) + "/") if o.uri.endswith(".tar")]


def read_wds(urls: str | list[str]) -> list[dict]:
    ds = wds.WebDataset(urls, shardshuffle=False, empty_check=False)
    return list(ds)


def laion_clap_view(sample: dict) -> tuple[list[str], np.ndarray, int]:
    """What LAION-CLAP's preprocess does with a webdataset sample: json text list, flac via soundfile."""
    meta = json.loads(sample["json"].decode("utf-8"))
    audio, sr = sf.read(io.BytesIO(sample["flac"]))
    return meta["text"], audio, sr


def laion_clap_size(sizes: dict[str, int], urls: list[str]) -> int:
    """LAION-CLAP's get_dataset_size: sizes.json beside the shards, keyed by basename."""
    return sum(int(sizes[os.path.basename(u.replace(".tar -", ".tar"))]) for u in urls)


# --------------------------------------------------------------------------------------------
# round trip


def test_write_list_read_back_with_plain_webdataset(s3, samples, tmp_path):
    rep = commit_samples(samples, s3.root, max_samples=5, tmp_dir=tmp_path)
    assert rep.outcomes == {"uploaded": 5} and len(rep.rows) == len(samples)
    st = open_storage(s3.root)
    base = join_uri(s3.root, DS, VER)
    assert read_rejects(st, base).num_rows == 0
    by_key = {s.key: s for s in samples}
    names = [o.uri[len(base) + 1 :] for o in st.list(base + "/")]
    assert {
        "manifest.parquet",
        "sizes.json",
        "rejects.parquet",
        "train/sizes.json",
        "val/sizes.json",
        "test/sizes.json",
        "train/train-000000.tar",
        "test/test-000000.tar",
    } <= set(names)
    seen = []
    for split in ("train", "val", "test"):
        uris = shard_uris(st, base, split)
        sizes = json.loads(st.read_bytes(join_uri(base, split, "sizes.json")))
        for how in ("presigned", "pipe"):  # curl over HTTP, and a pipe: command using boto3
            got = read_wds([webdataset_url(u, how) for u in uris])  # type: ignore[arg-type]
            assert laion_clap_size(sizes, uris) == len(got)
            for smp in got:
                src = by_key[smp["__key__"]]
                assert smp["flac"] == src.flac  # byte-identical audio
                text, audio, sr = laion_clap_view(smp)
                assert sr == 48000 and audio.shape[1] == 4 and text == src.record.text
                assert SampleRecord.model_validate_json(smp["json"]) == src.record
            if how == "pipe":
                seen += [smp["__key__"] for smp in got]
    assert sorted(seen) == sorted(by_key)
    # Brace-expanded URLs as LAION-CLAP writes them, and s3:// opened in-process.
    register_webdataset_s3()
    n = len(shard_uris(st, base, "train"))
    got = read_wds(f"{base}/train/train-{{000000..{n - 1:06d}}}.tar")  # a string: webdataset expands it
    assert len(got) == sum(1 for s in samples if s.split == "train")


@pytest.mark.slow
def test_multipart_shard_over_100mb_reads_back(s3, foa_clips, tmp_path):
    big = many(foa_clips, 240)
    total = sum(s.tar_bytes for s in big)
    assert total > 100 * 2**20
    rep = commit_samples(big, s3.root, max_samples=1000, max_bytes=1 << 30, tmp_dir=tmp_path)
    assert rep.outcomes == {"uploaded": 1}
    st = open_storage(s3.root)
    base = join_uri(s3.root, DS, VER)
    uri = join_uri(base, "train/train-000000.tar")
    info = st.info(uri)
    parts = -(-info.size // StorageConfig().multipart_chunksize)
    assert info.size > 100 * 2**20 and parts > 1
    assert info.etag.strip('"').endswith(f"-{parts}")  # stored as a multipart object
    assert info.checksum_sha256 and info.sha256 == read_manifest(st, base, ["shard_sha256"])[0][0].as_py()
    register_webdataset_s3()
    by_key = {s.key: s for s in big}
    n = 0
    for smp in wds.WebDataset([uri], shardshuffle=False):
        assert hashlib.sha256(smp["flac"]).digest() == hashlib.sha256(by_key[smp["__key__"]].flac).digest()
        n += 1
    assert n == len(big)
    assert st.verify(uri, size=info.size, sha256=info.sha256, checksum=None, deep=True).ok


# --------------------------------------------------------------------------------------------
# plans, keys, determinism


def test_plan_targets_order_invariance_and_adjacent_members(samples):
    plans = plan_samples(samples, max_samples=4)
    assert all(len(p.sample_keys) <= 4 for p in plans)
    shuffled = samples[:]
    random.Random(1).shuffle(shuffled)
    assert plan_samples(shuffled, max_samples=4) == plans
    by_bytes = plan_samples(samples, max_samples=100, max_bytes=3 * max(s.tar_bytes for s in samples))
    assert all(p.est_bytes <= 3 * max(s.tar_bytes for s in samples) for p in by_bytes)
    assert [p.name for p in plans if p.split == "train"][:2] == [
        "train/train-000000.tar",
        "train/train-000001.tar",
    ]
    with pytest.raises(ValueError):
        plan_shards([("k", "train", 1), ("k", "train", 1)])
    bio = io.BytesIO()
    write_tar(samples[:3], bio)
    with tarfile.open(fileobj=io.BytesIO(bio.getvalue())) as tf:
        members = tf.getmembers()
    assert [m.name for m in members] == [f"{s.key}.{e}" for s in samples[:3] for e in ("flac", "json")]
    for m in members:
        assert (m.mtime, m.uid, m.gid, m.uname, m.gname, m.mode) == (
            TAR_MTIME,
            0,
            0,
            "spatial",
            "spatial",
            0o444,
        )


def test_safe_clip_ids_and_keys():
    assert safe_clip_id("91139") == "91139"
    a, b = safe_clip_id("Distorted AM Radio noise.wav"), safe_clip_id("Distorted AM Radio noise.flac")
    assert a != b and "." not in a and len(a) <= 64
    assert safe_clip_id("x" * 200) != safe_clip_id("x" * 199)


def test_no_key_duplicated_across_shards(samples, tmp_path):
    """Every key in exactly one shard and one manifest row (a plan, and the manifest, refuse a
    key twice: test_commit.py)."""
    rep = commit_samples(samples, str(tmp_path / "out"), max_samples=3, tmp_dir=tmp_path)
    st = open_storage(str(tmp_path / "out"))
    keys = []
    for split in ("train", "val", "test"):
        for u in shard_uris(st, rep.base, split):
            keys += [s["__key__"] for s in read_wds([u])]
    assert len(rep.shards) > 3 and len(keys) == len(set(keys)) == len(samples)
    listed = sorted(read_manifest(st, rep.base, ["key"]).column("key").to_pylist())
    assert sorted(keys) == listed == sorted(s.key for s in samples)


def test_same_inputs_same_manifest_and_byte_identical_tars(samples, s3, tmp_path):
    roots = [str(tmp_path / "a"), str(tmp_path / "b"), s3.root]
    shuffled = samples[:]
    random.Random(7).shuffle(shuffled)
    for root, items in zip(roots, (samples, shuffled, shuffled), strict=True):
        commit_samples(items, root, max_samples=6, tmp_dir=tmp_path)
    blobs = []
    for root in roots:
        st = open_storage(root)
        base = join_uri(root, DS, VER)
        tars = {
            o.uri[len(base) :]: st.read_bytes(o.uri) for o in st.list(base + "/") if o.uri.endswith(".tar")
        }
        table = pq.read_table(io.BytesIO(st.read_bytes(join_uri(base, MANIFEST))))
        rows = table.drop_columns(["committed_at", "shard_checksum"]).to_pylist()
        blobs.append((tars, rows, st.read_bytes(join_uri(base, "sizes.json"))))
    assert blobs[0][0] and blobs[0][0] == blobs[1][0] == blobs[2][0]
    assert blobs[0][1] == blobs[1][1] == blobs[2][1]
    assert blobs[0][2] == blobs[1][2] == blobs[2][2]


# --------------------------------------------------------------------------------------------
# bad input


def test_corrupt_members_in_input_are_skipped_with_reasons(foa_clips, tmp_path):
    good = many(foa_clips, 7, start=500)
    buf = io.BytesIO()
    offs = write_tar(good, buf)
    raw = bytearray(buf.getvalue())
    h = offs[1].spans["json"][0]
    raw[h - 512 : h] = b"\xff" * 512  # a destroyed member header
    j = offs[2].spans["json"][0]
    raw[j : j + 8] = b"\x00garbage"  # a json member that is not JSON
    f = offs[3].spans["flac"][0] + offs[3].spans["flac"][1] // 2
    raw[f : f + 64] = bytes(64)  # flipped audio bytes (the record's sha256 catches it)
    cut = bytes(raw[: offs[6].spans["flac"][0] + 1000])  # and the stream ends inside the last sample
    items = list(iter_tar_samples(io.BytesIO(cut), "staging.tar"))
    rep = commit_samples(items, str(tmp_path / "out"), tmp_dir=tmp_path)
    st = open_storage(str(tmp_path / "out"))
    base = join_uri(str(tmp_path / "out"), DS, VER)
    assert sorted(read_manifest(st, base, ["key"]).column("key").to_pylist()) == sorted(
        good[i].key for i in (0, 4, 5)
    )
    rejects = [RejectRow.model_validate(r) for r in read_rejects(st, base).to_pylist()]
    by_key = {r.key: r.reason for r in rejects if r.key}
    assert by_key == {
        good[1].key: "missing_member",
        good[2].key: "invalid_json",
        good[3].key: "audio_mismatch",
        good[6].key: "truncated",
    }
    assert sum(r.reason == "corrupt_member" for r in rejects) == 2  # the bad header, the cut tail
    assert all(r.detail for r in rejects) and len(rep.rows) == 3


def test_invalid_records_are_refused_at_the_boundary(foa_clips):
    s = many(foa_clips, 1)[0]
    with pytest.raises(ValueError):
        SampleRecord.model_validate({**s.record.model_dump(), "key": "other-key"})
    with pytest.raises(ValueError):
        build_sample(
            s.flac,
            dataset="spatial-audiocaps",
            split="train",
            clip_id="x",
            aug=1,
            captions=s.record.captions,
            provenance=s.record.provenance,
            labels=s.record.labels,
            descriptors=s.record.descriptors,
        )


# --------------------------------------------------------------------------------------------
# secrets


def test_fake_keys_appear_in_no_log_output_or_stored_byte(s3, samples, tmp_path, caplog, capfd):
    import argparse

    from spatial_audiocaps.cli_shards import add_commands
    from tasks.dataset_card import write_card

    caplog.set_level(logging.DEBUG)
    base = join_uri(s3.root, DS, VER)
    commit_samples(samples, s3.root, max_samples=7, tmp_dir=tmp_path)
    write_card(base)
    parser = argparse.ArgumentParser()
    add_commands(parser.add_subparsers(dest="command"))
    results = [
        args.func(args)
        for args in (
            parser.parse_args(["inspect", base, "--doa-samples", "3"]),
            parser.parse_args(["report", base]),
            parser.parse_args(["inspect", base + "/val/val-000000.tar"]),
        )
    ]
    print(json.dumps(results))
    logging.getLogger("tasks.test").warning("endpoint %s", os.environ["AWS_ENDPOINT_URL"])
    out, err = capfd.readouterr()
    logs = "\n".join(r.getMessage() for r in caplog.records) + caplog.text
    assert any(r.name.startswith("botocore") for r in caplog.records)
    client = s3.client()
    stored = []
    for o in client.list_objects_v2(Bucket=s3.bucket)["Contents"]:
        stored.append(client.get_object(Bucket=s3.bucket, Key=o["Key"])["Body"].read())
        head = client.head_object(Bucket=s3.bucket, Key=o["Key"])
        stored.append(json.dumps({k: str(v) for k, v in head.items() if k != "ResponseMetadata"}).encode())
    assert len(stored) > 10
    for secret in (FAKE_KEY_ID, FAKE_SECRET):
        for where, text in (
            ("logs", logs),
            ("stdout", out),
            ("stderr", err),
            ("results", json.dumps(results)),
        ):
            assert secret not in text, where
        for blob in stored:
            assert secret.encode() not in blob


# --------------------------------------------------------------------------------------------
# readers


def test_inspect_flags_a_label_that_disagrees_with_the_audio(foa_clips, tmp_path):
    import argparse

    from spatial_audiocaps.cli_shards import add_commands

    good = many(foa_clips, 8, split="test", start=900)
    lateral = max(foa_clips, key=lambda c: abs(np.sin(np.radians(c.rir.azimuth_deg))))
    assert abs(lateral.rir.azimuth_deg) > 40
    ref = make_sample(lateral, split="test", clip_id="mislabelled", aug=1)
    lab = ref.record.labels.model_copy(
        update={"azimuth_deg": -ref.record.labels.azimuth_deg}
    )  # left <-> right
    bad = build_sample(
        ref.flac,
        dataset=DS,
        split="test",
        clip_id="mislabelled",
        aug=1,
        captions=ref.record.captions,
        provenance=ref.record.provenance,
        labels=lab,
        descriptors=ref.record.descriptors,
    )
    root = str(tmp_path / "out")
    commit_samples([*good, bad], root, tmp_dir=tmp_path)
    base = join_uri(root, DS, VER)
    parser = argparse.ArgumentParser()
    add_commands(parser.add_subparsers(dest="command"))
    args = parser.parse_args(["inspect", base, "--all"])
    out = args.func(args)
    json.dumps(out, allow_nan=False)
    assert out["samples"] == 9 and out["doa_check"]["checked"] == 9
    assert [m["key"] for m in out["doa_check"]["mismatches"]] == [bad.key]
    assert out["doa_check"]["mismatches"][0]["error_deg"] > 60
    assert out["ok"] is False and not out["shards_failing_verification"]
    shard = inspect_shard(join_uri(base, "test/test-000000.tar"))
    assert shard["samples"] == 9 and shard["doa_check"]["flagged"] == 1 and shard["problems"] == 0
    assert shard["doa_check"]["median_error_deg"] < 10


def test_cli_inspect_and_report_through_the_real_entry_point(samples, tmp_path):
    """Once cli.py registers these commands: one JSON line out, exit 2 on a bad URI (report: test_card)."""
    import subprocess
    import sys

    from spatial_audiocaps.cli import build_parser

    if "inspect" not in build_parser()._subparsers._group_actions[0].choices:  # type: ignore[union-attr]
        pytest.skip("inspect/report are not wired into spatial_audiocaps/cli.py yet")
    root = str(tmp_path / "out")
    commit_samples(samples[:6], root, tmp_dir=tmp_path)
    base = join_uri(root, DS, VER)

    def run(*args: str) -> subprocess.CompletedProcess:
        return subprocess.run(
            [sys.executable, "-m", "spatial_audiocaps.cli", *args],
            capture_output=True,
            text=True,
            timeout=300,
            check=False,
        )

    res = run("inspect", base, "--doa-samples", "2")
    assert res.returncode == 0, res.stderr
    lines = res.stdout.strip().splitlines()
    assert len(lines) == 1 and json.loads(lines[0])["samples"] == 6
    res = run("inspect", str(tmp_path / "nothing-here"))
    assert res.returncode == 2 and res.stderr.startswith("error:") and "Traceback" not in res.stderr
