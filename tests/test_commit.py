"""The commit protocol the build flow runs (tasks.commit), on local storage and on a real S3 server:
a receipt only after a verified upload, a skip on a verified receipt, a new upload when the
object is missing or altered, and a manifest that never lists a shard that does not verify."""

from __future__ import annotations

import io
import os
from pathlib import Path

import boto3
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from committed import DS, VER, commit_samples, many
from conftest import FAKE_KEY_ID, FAKE_SECRET

from schemas.shards import RejectRow
from tasks.commit import (
    MANIFEST,
    MANIFEST_SCHEMA_VERSION,
    RECEIPT_SUFFIX,
    CommitError,
    Finalized,
    commit_shard,
    dataset_uri,
    finalize_dataset,
    put_rejects,
    read_manifest,
    read_rejects,
    receipt_uri,
    reject_part_uri,
    rejects_part,
    verified_receipt,
    verify_shards,
)
from tasks.inspect_dataset import inspect_dataset
from tasks.shard_writer import ShardPlan, plan_samples
from tasks.storage import StorageConfig, StorageError, clear_storage_cache, join_uri, open_storage

SMALL_PARTS = StorageConfig(
    multipart_threshold=5 << 20, multipart_chunksize=5 << 20, max_attempts=2, max_concurrency=2
)


@pytest.fixture(params=["local", "s3"])
def root(request: pytest.FixtureRequest, tmp_path: Path) -> str:
    """A dataset root on local disk, or in a fresh bucket of the local S3 server (versioned, so a
    test can count every write an object ever had)."""
    if request.param == "local":
        return str(tmp_path / "out")
    s3 = request.getfixturevalue("s3")
    s3.client().put_bucket_versioning(Bucket=s3.bucket, VersioningConfiguration={"Status": "Enabled"})
    return s3.root


def writes(uri: str) -> object:
    """Something that changes whenever the object is written again: its list of S3 versions, or
    the local file's inode and mtime (every write is a new file moved into place)."""
    if uri.startswith("s3://"):
        bucket, key = uri[5:].split("/", 1)
        found = boto3.client("s3").list_object_versions(Bucket=bucket, Prefix=key).get("Versions", [])
        return sorted(v["VersionId"] for v in found if v["Key"] == key)
    st = os.stat(uri)
    return (st.st_ino, st.st_mtime_ns)


def overwrite(uri: str, data: bytes) -> None:
    """Another writer replaces the object (boto3 straight to the server, not our storage layer).
    On S3 it even keeps our sha256 metadata: only the server's own checksum can tell."""
    if uri.startswith("s3://"):
        bucket, key = uri[5:].split("/", 1)
        client = boto3.client("s3")
        old = client.head_object(Bucket=bucket, Key=key)["Metadata"]["sha256"]
        meta = {"sha256": old}
        client.put_object(Bucket=bucket, Key=key, Body=data, ChecksumAlgorithm="SHA256", Metadata=meta)
    else:
        Path(uri).write_bytes(data)


# --------------------------------------------------------------------------------------------
# one shard


def test_receipt_only_after_a_verified_upload_then_skip_then_adopt(root, samples, tmp_path):
    st = open_storage(root)
    base = dataset_uri(root, DS, VER)
    plan = plan_samples(samples, max_samples=50)[0]
    by_key = {s.key: s for s in samples}
    shard, receipt = join_uri(base, plan.name), receipt_uri(base, plan)
    assert receipt == join_uri(base, plan.name.removesuffix(".tar") + ".rows.parquet")
    assert verified_receipt(st, base, plan) is None
    sent: list[int] = []
    done = commit_shard(st, base, plan, by_key, tmp_dir=tmp_path, progress=sent.append)
    assert done.outcome == "uploaded" and done.bytes_uploaded == sum(sent) == st.info(shard).size
    assert done.rows.column("key").to_pylist() == list(plan.sample_keys)
    assert not list(tmp_path.glob("*.partial"))
    assert pq.read_table(pa.BufferReader(st.read_bytes(receipt))) == done.rows
    r = done.rows.slice(0, 1).to_pylist()[0]
    assert st.read_range(shard, r["flac_offset"], r["flac_size"]) == by_key[r["key"]].flac
    assert st.verify(shard, size=r["shard_size"], sha256=r["shard_sha256"], checksum=None, deep=True).ok
    # A verified receipt: its rows, and the flow skips the shard.
    assert verified_receipt(st, base, plan) == done.rows
    # A crash after the upload, before the receipt: the object is adopted, not sent again.
    before = writes(shard)
    st.delete(receipt)
    again = commit_shard(st, base, plan, by_key, tmp_dir=tmp_path, progress=sent.append)
    assert (again.outcome, again.bytes_uploaded, sum(sent)) == ("adopted", 0, done.bytes_uploaded)
    assert writes(shard) == before and verified_receipt(st, base, plan) == again.rows
    # A receipt of another plan (other samples under this shard's name) is no receipt.
    other = ShardPlan(split=plan.split, index=plan.index, sample_keys=plan.sample_keys[1:])
    assert verified_receipt(st, base, other) is None


def test_a_receipt_from_before_further_formats_is_adopted(root, samples, tmp_path):
    """Receipts written before the manifest's ``formats`` column: a resumed build reads them with
    the one .flac each sample had (ambix when spatial, mono otherwise) and skips the shard."""
    st = open_storage(root)
    base = dataset_uri(root, DS, VER)
    plan = plan_samples(samples, max_samples=50)[0]
    done = commit_shard(st, base, plan, {s.key: s for s in samples}, tmp_dir=tmp_path)
    old = done.rows.drop_columns(["formats"])
    buf = io.BytesIO()
    pq.write_table(old, buf)
    st.put_bytes(receipt_uri(base, plan), buf.getvalue())
    read = verified_receipt(st, base, plan)
    assert read is not None and read == done.rows
    assert {tuple(f) for f in read.column("formats").to_pylist()} <= {("ambix",), ("mono",)}


def test_a_shard_with_only_rejected_samples_gets_an_empty_receipt(root, samples, tmp_path):
    st = open_storage(root)
    base = dataset_uri(root, DS, VER)
    plan = plan_samples(samples, max_samples=50)[0]
    kept = {s.key: s for s in samples if s.key in plan.sample_keys[1:]}  # the first one was rejected
    done = commit_shard(st, base, plan, kept, tmp_dir=tmp_path)
    assert done.rows.column("key").to_pylist() == list(plan.sample_keys[1:])
    assert verified_receipt(st, base, plan) == done.rows
    empty = ShardPlan(split="test", index=7, sample_keys=("gone",))
    assert commit_shard(st, base, empty, {}, tmp_dir=tmp_path).outcome == "empty"
    assert verified_receipt(st, base, empty).num_rows == 0 and not st.exists(join_uri(base, empty.name))


# --------------------------------------------------------------------------------------------
# a dataset, rerun after faults


def test_rerun_skips_verified_shards_and_commits_missing_or_altered_ones(root, samples, tmp_path):
    first = commit_samples(samples, root, max_samples=4, tmp_dir=tmp_path)
    st, base = open_storage(root), first.base
    assert first.outcomes == {"uploaded": 5} and len(read_manifest(st, base)) == len(samples)
    tars = sorted(join_uri(base, name) for name in first.shards)
    receipts = [t.removesuffix(".tar") + RECEIPT_SUFFIX for t in tars]
    before = {u: writes(u) for u in tars + receipts}

    again = commit_samples(samples, root, max_samples=4, tmp_dir=tmp_path)
    assert again.outcomes == {"skipped": 5} and again.rows == first.rows
    assert {u: writes(u) for u in tars + receipts} == before  # nothing uploaded or rewritten

    gone, shorter, altered = tars[0], tars[1], tars[2]
    st.delete(gone)
    size = st.info(altered).size
    overwrite(shorter, st.read_bytes(shorter)[:-512])
    overwrite(altered, os.urandom(size))  # same size, other bytes
    checks = {c.shard: c.reason for c in verify_shards(st, base, first.rows) if not c.ok}
    assert set(checks) == {u[len(base) + 1 :] for u in (gone, shorter, altered)}
    assert all(st.exists(r) for r in receipts)  # the receipts are still there, and must not count
    # The finalize step refuses to list them (rows of an earlier run, say), and leaves the manifest be.
    manifest_before = st.read_bytes(join_uri(base, MANIFEST))
    with pytest.raises(CommitError, match="unverified"):
        finalize_dataset(st, base, first.plans, {"dataset": DS, "version": VER})
    assert st.read_bytes(join_uri(base, MANIFEST)) == manifest_before

    fixed = commit_samples(samples, root, max_samples=4, tmp_dir=tmp_path)
    redone = {n for n, c in fixed.shards.items() if c.outcome == "uploaded"}
    assert redone == set(checks) and fixed.outcomes == {"uploaded": 3, "skipped": 2}
    untouched = tars[3:] + receipts[3:]
    assert {u: writes(u) for u in untouched} == {u: before[u] for u in untouched}
    rows = read_manifest(st, base)
    assert sorted(rows.column("key").to_pylist()) == sorted(s.key for s in samples)
    assert all(c.ok for c in verify_shards(st, base, rows, deep=True))
    meta = pq.read_schema(io.BytesIO(st.read_bytes(join_uri(base, MANIFEST)))).metadata
    assert {k.decode(): v.decode() for k, v in meta.items()} == {
        "dataset": DS, "version": VER, "schema": MANIFEST_SCHEMA_VERSION,
    }
    assert inspect_dataset(base, doa_samples=0)["ok"]


def test_a_manifest_never_lists_a_key_twice(samples, tmp_path):
    root = str(tmp_path / "out")
    done = commit_samples(samples, root, max_samples=4, tmp_dir=tmp_path)
    st = open_storage(root)
    manifest = st.read_bytes(join_uri(done.base, MANIFEST))
    with pytest.raises(CommitError, match="twice"):
        finalize_dataset(st, done.base, [*done.plans, done.plans[0]], {})
    assert st.read_bytes(join_uri(done.base, MANIFEST)) == manifest
    with pytest.raises(ValueError, match="duplicate key"):  # and a plan never holds one twice
        plan_samples([*samples, samples[3]], max_samples=4)


def test_finalize_streams_receipts_in_shard_order_names_a_missing_one_and_reads_no_shard(
    samples, tmp_path, monkeypatch
):
    root = str(tmp_path / "out")
    done = commit_samples(samples, root, max_samples=4, tmp_dir=tmp_path)
    st = open_storage(root)
    manifest = st.read_bytes(join_uri(done.base, MANIFEST))
    unfinished = ShardPlan(split="train", index=99, sample_keys=("never-built",))
    with pytest.raises(CommitError, match=r"no receipt for train/train-000099\.tar"):
        finalize_dataset(st, done.base, [*done.plans, unfinished], {"dataset": DS, "version": VER})
    assert st.read_bytes(join_uri(done.base, MANIFEST)) == manifest

    def no_reads(*_: object, **__: object) -> str:
        raise AssertionError("finalize re-read a shard")

    # Local shards are checked by size and mtime against their receipts, never re-read; row
    # groups of 5 rows give the same table as one group, in (split, shard, offset) order.
    monkeypatch.setattr(type(st), "sha256_of", no_reads)
    monkeypatch.setattr("tasks.commit.ROW_GROUP", 5)
    assert finalize_dataset(st, done.base, done.plans[::-1], {"dataset": DS, "version": VER}) == Finalized(
        len(samples), 0
    )
    streamed = pq.ParquetFile(pa.BufferReader(st.read_bytes(join_uri(done.base, MANIFEST))))
    assert streamed.metadata.num_row_groups > 1
    table = streamed.read()
    assert table == pq.read_table(pa.BufferReader(manifest))
    order = table.select(["split", "shard_index", "flac_offset"]).to_pylist()
    assert order == sorted(order, key=lambda r: (r["split"], r["shard_index"], r["flac_offset"]))


def test_reject_parts_survive_a_resumed_build(samples, tmp_path):
    """Each stage's rejects are a part of their own: a shard skipped on its receipt keeps the
    rejects of the run that built it; the parts merge in part-name order, each part sorted."""
    root = str(tmp_path / "out")
    source = RejectRow(stage="source", reason="unreadable", detail="no such file", source="x.wav")
    done = commit_samples([*samples, source], root, max_samples=4, tmp_dir=tmp_path)
    st = open_storage(root)
    shard = rejects_part(done.plans[1].name)
    assert shard == done.plans[1].name.removesuffix(".tar").replace("/", "-")
    render = [RejectRow(stage="render", reason=r, detail="d", key=f"k{i}", source="c")
              for i, r in ((2, "silent"), (1, "too_short"))]
    put_rejects(st, done.base, shard, render)
    again = commit_samples([*samples, source], root, max_samples=4, tmp_dir=tmp_path)
    assert again.outcomes == {"skipped": 5}
    got = [RejectRow.model_validate(r) for r in read_rejects(st, done.base).to_pylist()]
    assert got == [source, render[1], render[0]]  # "source" < "train-...", then by key within the part
    put_rejects(st, done.base, shard, [])  # the stage ran again and refused nothing
    assert not st.exists(reject_part_uri(done.base, shard))
    commit_samples(samples, root, max_samples=4, tmp_dir=tmp_path)
    assert read_rejects(st, done.base).num_rows == 0
    with pytest.raises(ValueError, match="reject part"):
        put_rejects(st, done.base, "train/train-000001", render)


def test_a_crash_mid_write_leaves_no_object_and_no_receipt(samples, tmp_path):
    st = open_storage(str(tmp_path / "out"))
    base = dataset_uri(str(tmp_path / "out"), DS, VER)
    plan = plan_samples(samples, max_samples=50)[0]

    def crash(_: int) -> None:
        raise KeyboardInterrupt  # the process stops in the middle of the copy

    with pytest.raises(KeyboardInterrupt):
        commit_shard(st, base, plan, {s.key: s for s in samples}, tmp_dir=tmp_path, progress=crash)
    assert not st.exists(join_uri(base, plan.name)) and not st.exists(receipt_uri(base, plan))
    assert not [p for p in tmp_path.rglob("*") if p.is_file()]  # no temporary file anywhere


# --------------------------------------------------------------------------------------------
# S3 faults


def test_server_killed_mid_upload_fails_redacted_without_receipt_then_rerun_ends(s3, foa_clips, tmp_path):
    items = many(foa_clips, 40)  # one ~19 MB shard: 4 parts of 5 MiB
    sent = [0]

    def kill_after_first_part(n: int) -> None:
        sent[0] += n
        if sent[0] > 4 << 20 and s3.server.running():  # part 1 done, part 2 in flight
            s3.server.kill()

    kw = dict(max_samples=100, tmp_dir=tmp_path, storage_config=SMALL_PARTS)
    with pytest.raises(StorageError) as ei:
        commit_samples(items, s3.root, progress=kill_after_first_part, **kw)
    assert not isinstance(ei.value, CommitError)  # the upload failed; nothing was verified
    assert not s3.server.running() and 4 << 20 < sent[0] < 19 << 20
    assert FAKE_KEY_ID not in str(ei.value) and FAKE_SECRET not in str(ei.value)
    assert ei.value.__context__ is None or FAKE_SECRET not in str(ei.value.__context__)
    assert not list(tmp_path.glob("*.partial"))  # the local temporary shard is gone
    s3.server.start()  # a fresh, empty server on the same endpoint
    s3.make_bucket()
    clear_storage_cache()
    done = commit_samples(items, s3.root, **kw)
    assert done.outcomes == {"uploaded": 1} and len(done.rows) == 40
    st = open_storage(s3.root, SMALL_PARTS)
    plan = plan_samples(items, max_samples=100)[0]
    assert verified_receipt(st, done.base, plan) == done.rows
    assert st.info(join_uri(done.base, plan.name)).etag.strip('"').endswith("-4")  # multipart, 4 parts
    out = inspect_dataset(done.base, doa_samples=4)
    assert out["ok"] and out["samples"] == 40, out


def test_an_object_changed_during_the_upload_gets_no_receipt(s3, samples, tmp_path):
    """Another writer replaces the shard between our PUT and our check: the check fails, no
    receipt is written, and the rerun uploads the shard again."""
    st = open_storage(s3.root)
    base = dataset_uri(s3.root, DS, VER)
    plan = plan_samples(samples, max_samples=50)[0]
    by_key = {s.key: s for s in samples}
    shard = join_uri(base, plan.name)

    def clobber(n: int) -> None:  # called once the single PUT has returned, before the check
        overwrite(shard, os.urandom(n))

    with pytest.raises(CommitError, match="did not verify") as ei:
        commit_shard(st, base, plan, by_key, tmp_dir=tmp_path, progress=clobber)
    assert FAKE_KEY_ID not in str(ei.value) and FAKE_SECRET not in str(ei.value)
    assert st.exists(shard) and not st.exists(receipt_uri(base, plan))
    assert verified_receipt(st, base, plan) is None
    done = commit_shard(st, base, plan, by_key, tmp_dir=tmp_path)
    assert done.outcome == "uploaded" and verified_receipt(st, base, plan) == done.rows


def test_a_failure_mid_dataset_keeps_the_finished_shards(s3, samples, tmp_path):
    """The connection drops right after the third shard's PUT, before its check: the two shards
    before it keep their receipts, the third has none, no manifest is written; the rerun skips two,
    adopts the third (its bytes did arrive) and uploads the rest."""
    puts: list[int] = []

    def reset_on_third(n: int) -> None:
        puts.append(n)
        if len(puts) == 3:
            raise StorageError("injected: connection reset by peer")

    with pytest.raises(StorageError, match="injected"):
        commit_samples(samples, s3.root, max_samples=4, tmp_dir=tmp_path, progress=reset_on_third)
    st = open_storage(s3.root)
    base = dataset_uri(s3.root, DS, VER)
    plans = plan_samples(samples, max_samples=4)
    assert [st.exists(receipt_uri(base, p)) for p in plans] == [True, True, False, False, False]
    assert st.exists(join_uri(base, plans[2].name)) and not st.exists(join_uri(base, MANIFEST))
    assert not list(tmp_path.glob("*.partial"))
    done = commit_samples(samples, s3.root, max_samples=4, tmp_dir=tmp_path)
    outcomes = [done.shards[p.name].outcome for p in plans]
    assert outcomes == ["skipped", "skipped", "adopted", "uploaded", "uploaded"]
    assert sorted(read_manifest(st, base).column("key").to_pylist()) == sorted(s.key for s in samples)
