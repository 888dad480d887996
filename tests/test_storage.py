"""tasks.storage against a real S3 HTTP server (moto_server on 127.0.0.1) and the local disk."""

from __future__ import annotations

import base64
import hashlib
import logging
import os
import socket
import time

import pytest
from conftest import FAKE_KEY_ID, FAKE_SECRET
from pydantic import ValidationError

from tasks import storage as stg
from tasks.storage import (
    Digest,
    LocalStorage,
    ObjectMissing,
    S3Storage,
    StorageConfig,
    StorageError,
    digest_file,
    join_uri,
    open_storage,
    redact,
    webdataset_url,
)

SMALL_PARTS = StorageConfig(multipart_threshold=5 << 20, multipart_chunksize=5 << 20, max_attempts=2)


@pytest.fixture(params=["local", "s3"])
def root(request: pytest.FixtureRequest, tmp_path) -> str:
    if request.param == "local":
        return str(tmp_path / "store")
    return request.getfixturevalue("s3").root


def test_one_interface_for_paths_and_s3(root: str, tmp_path):
    st = open_storage(root)
    assert isinstance(st, S3Storage if root.startswith("s3://") else LocalStorage)
    a, b = join_uri(root, "x/a.bin"), join_uri(root, "x/y/b.json")
    assert st.info(a) is None and not st.exists(a)
    with pytest.raises(ObjectMissing):
        st.open_read(a)
    st.put_bytes(a, b"0123456789")
    st.put_bytes(b, b'{"k": 1}')
    assert st.info(a).size == 10
    assert st.read_bytes(a) == b"0123456789"
    assert st.read_range(a, 3, 4) == b"3456"
    with st.open_read(a) as fh:  # streaming: chunked reads
        assert fh.read(4) == b"0123" and fh.read() == b"456789"
    assert [o.uri for o in st.list(join_uri(root, "x") + "/")] == [a, b]
    src = tmp_path / "f.bin"
    src.write_bytes(os.urandom(1000))
    sha = hashlib.sha256(src.read_bytes()).hexdigest()
    st.upload_file(src, join_uri(root, "f.bin"), sha256=sha)
    d = digest_file(src, st.config.multipart_chunksize)
    v = st.verify(join_uri(root, "f.bin"), size=1000, sha256=sha, checksum=st.expected_checksum(d))
    assert v.ok, v
    st.delete(a)
    assert not st.exists(a)


def test_digest_matches_s3_single_and_composite_checksums(s3, tmp_path):
    """Our locally predicted SHA256 checksum is what the server computed, for 1 and for 3 parts."""
    st = open_storage(s3.root, SMALL_PARTS)
    for name, size in (("one.bin", 1 << 20), ("three.bin", 12 << 20)):
        p = tmp_path / name
        p.write_bytes(os.urandom(size))
        d = digest_file(p, SMALL_PARTS.multipart_chunksize)
        uri = join_uri(s3.root, name)
        st.upload_file(p, uri, sha256=d.hexdigest())
        info = st.info(uri)
        assert info.size == size and info.sha256 == d.hexdigest()
        assert info.checksum_sha256 is not None
        want = st.expected_checksum(d)
        assert info.checksum_sha256.split("-")[0] == want.split("-")[0]
        if size > SMALL_PARTS.multipart_threshold:
            assert want.endswith("-3")
            assert info.etag.strip('"').endswith("-3")  # a multipart object's ETag counts its parts
        else:
            assert want == base64.b64encode(hashlib.sha256(p.read_bytes()).digest()).decode()
        assert st.verify(uri, size=size, sha256=d.hexdigest(), checksum=want).ok
    # Same size, other bytes, written by someone else without our metadata: caught.
    uri = join_uri(s3.root, "three.bin")
    s3.client().put_object(Bucket=s3.bucket, Key=uri.split("/", 3)[3], Body=os.urandom(12 << 20))
    v = st.verify(uri, size=12 << 20, sha256=d.hexdigest(), checksum=st.expected_checksum(d))
    assert not v.ok and v.reason in ("sha256", "checksum")


def test_digest_streaming_equals_one_shot():
    data = os.urandom(3 * 1000 + 17)
    d = Digest(1000)
    for i in range(0, len(data), 333):
        d.update(data[i : i + 333])
    assert d.hexdigest() == hashlib.sha256(data).hexdigest()
    parts = [hashlib.sha256(data[i : i + 1000]).digest() for i in range(0, len(data), 1000)]
    assert d.checksum(1000) == base64.b64encode(hashlib.sha256(b"".join(parts)).digest()).decode() + "-4"


def test_retry_config_and_clean_failure_on_dead_endpoint(monkeypatch, tmp_path):
    """botocore retries with backoff, then a typed, redacted error; nothing hangs."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]  # closed again: nothing listens there
    from conftest import set_aws_env

    set_aws_env(monkeypatch, f"http://127.0.0.1:{port}", tmp_path)
    st = S3Storage(StorageConfig(max_attempts=3, connect_timeout_s=1))
    retries = st.client.meta.config.retries
    assert retries == {"total_max_attempts": 3, "mode": "standard"}
    attempts = []
    st.client.meta.events.register("before-send.s3.PutObject", lambda **kw: attempts.append(1))
    t0 = time.monotonic()
    with pytest.raises(StorageError) as ei:
        st.put_bytes("s3://nobucket/k", b"x")
    assert time.monotonic() - t0 < 30
    assert len(attempts) == 3  # the first try and two retries
    assert FAKE_KEY_ID not in str(ei.value) and FAKE_SECRET not in str(ei.value)


def test_config_holds_no_credentials():
    with pytest.raises(ValidationError):
        StorageConfig(aws_secret_access_key="x")  # type: ignore[call-arg]
    assert not any("secret" in f or "key_id" in f for f in StorageConfig.model_fields)


def test_redaction_of_signatures_tokens_and_known_values():
    stg.register_secrets("AKIAREDACTME0000TEST", "s3cr3t/value+xyz")
    line = (
        "Sending http request: <AWSPreparedRequest headers={'Authorization': b'AWS4-HMAC-SHA256 "
        "Credential=AKIAREDACTME0000TEST/20250101/us-east-1/s3/aws4_request, SignedHeaders=host, "
        "Signature=" + "ab" * 32 + "', 'X-Amz-Security-Token': b'tok3n'}> "
        "url=https://h/b/k?X-Amz-Credential=AKIAREDACTME0000TEST%2F2025&X-Amz-Signature="
        + "cd" * 32
        + " endpoint=http://user:pa55@host:9000/ secret s3cr3t/value+xyz"
    )
    out = redact(line)
    for s in ("AKIAREDACTME0000TEST", "s3cr3t/value+xyz", "ab" * 32, "cd" * 32, "tok3n", "pa55"):
        assert s not in out
    assert "Credential=***" in out


def test_library_debug_logs_are_redacted(s3, caplog):
    """botocore's DEBUG log prints the Authorization header; the filter scrubs the key id."""
    caplog.set_level(logging.DEBUG)
    st = S3Storage()
    st.put_bytes(join_uri(s3.root, "k"), b"v")
    assert st.read_bytes(join_uri(s3.root, "k")) == b"v"
    text = "\n".join(r.getMessage() for r in caplog.records)
    assert any(r.name.startswith("botocore") for r in caplog.records)  # the check has teeth
    assert "Authorization" in text or "Credential" in text
    assert FAKE_KEY_ID not in text and FAKE_SECRET not in text


def test_webdataset_urls(s3):
    uri = join_uri(s3.root, "ds/v/train/train-000000.tar")
    pipe = webdataset_url(uri)
    assert pipe.startswith("pipe:") and uri in pipe and FAKE_KEY_ID not in pipe
    signed = webdataset_url(uri, "presigned")
    assert signed.startswith(s3.endpoint) and FAKE_SECRET not in signed
    assert webdataset_url(uri, "aws-cli") == f"pipe:aws s3 cp {uri} -"
    assert webdataset_url("/data/x.tar") == "/data/x.tar"


def test_reads_go_through_fsspec_on_the_same_endpoint_and_config(s3):
    """s3fs (reads) resolves AWS_ENDPOINT_URL and the retry config exactly as boto3 (writes) does."""
    import s3fs

    st = open_storage(s3.root, SMALL_PARTS)
    assert isinstance(st.fs, s3fs.S3FileSystem)
    assert st.fs.s3.meta.endpoint_url == st.client.meta.endpoint_url == s3.endpoint
    assert st.fs.s3.meta.config.retries == st.client.meta.config.retries == {
        "total_max_attempts": 2, "mode": "standard"}
    uri = join_uri(s3.root, "r/a.bin")
    st.put_bytes(uri, b"written by boto3")
    gets: list[str] = []
    st.fs.s3.meta.events.register("before-parameter-build.s3.GetObject", lambda params, **_: gets.append(1))
    assert st.read_bytes(uri) == b"written by boto3" and st.read_range(uri, 8, 2) == b"by"
    assert len(gets) >= 2  # both reads were s3fs requests, not boto3's


def test_listing_keeps_each_backends_prefix_semantics(s3, tmp_path, monkeypatch):
    """S3 lists by key prefix (as LIST does); a local prefix is a directory, spelled as the caller did."""
    st = open_storage(s3.root)
    for key in ("x/eng/1.json", "x/engines.json", "x/a/b.bin", "y"):
        st.put_bytes(join_uri(s3.root, key), b"abc")
    assert [o.uri for o in st.list(join_uri(s3.root, "x/eng"))] == [
        join_uri(s3.root, "x/eng/1.json"), join_uri(s3.root, "x/engines.json")]
    assert [o.uri for o in st.list(join_uri(s3.root, "x") + "/")] == [
        join_uri(s3.root, k) for k in ("x/a/b.bin", "x/eng/1.json", "x/engines.json")]
    assert st.list(join_uri(s3.root, "nothing/")) == []
    local = open_storage(str(tmp_path))
    (tmp_path / "d" / "sub").mkdir(parents=True)
    (tmp_path / "d" / "sub" / "f.txt").write_bytes(b"12345")
    (tmp_path / "d" / ".f.txt.x.partial").write_bytes(b"half")  # a write in progress is never listed
    monkeypatch.chdir(tmp_path)
    assert [(o.uri, o.size) for o in local.list("d/")] == [("d/sub/f.txt", 5)]
    assert [o.uri for o in local.list("d/sub/f.txt")] == ["d/sub/f.txt"]
    assert local.list("missing") == []


def test_cat_cli_streams_an_object_and_fails_cleanly(s3):
    """``python -m tasks.storage cat`` (webdataset pipe: URLs) in a fresh process, env credentials only."""
    import subprocess
    import sys

    uri = join_uri(s3.root, "c/blob.bin")
    data = os.urandom(3 << 20)
    open_storage(uri).put_bytes(uri, data)
    ok = subprocess.run([sys.executable, "-m", "tasks.storage", "cat", uri], capture_output=True, timeout=120)
    assert ok.returncode == 0 and ok.stdout == data
    missing = subprocess.run([sys.executable, "-m", "tasks.storage", "cat", uri + ".nope"],
                             capture_output=True, timeout=120)
    assert missing.returncode == 1 and b"no such object" in missing.stderr
    assert FAKE_KEY_ID.encode() not in missing.stderr and FAKE_SECRET.encode() not in missing.stderr


def test_fsspec_read_debug_logs_are_redacted(s3, caplog):
    """aiobotocore (under s3fs) logs requests at DEBUG too; the filter scrubs them."""
    st = S3Storage()
    uri = join_uri(s3.root, "k")
    st.put_bytes(uri, b"v")
    caplog.set_level(logging.DEBUG)
    caplog.clear()
    assert st.read_bytes(uri) == b"v" and [o.uri for o in st.list(s3.root + "/")] == [uri]
    text = "\n".join(r.getMessage() for r in caplog.records)
    signed = [ln for ln in text.splitlines() if "aiobotocore/" in ln and "Authorization" in ln]
    assert signed  # the check has teeth: s3fs's own signed requests were logged
    assert FAKE_KEY_ID not in text and FAKE_SECRET not in text


def test_reads_on_a_dead_endpoint_fail_typed_and_redacted(monkeypatch, tmp_path):
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    from conftest import set_aws_env

    set_aws_env(monkeypatch, f"http://127.0.0.1:{port}", tmp_path)
    st = S3Storage(StorageConfig(max_attempts=2, connect_timeout_s=1))
    t0 = time.monotonic()
    for read in (lambda: st.read_bytes("s3://nobucket/k"), lambda: st.list("s3://nobucket/")):
        with pytest.raises(StorageError) as ei:
            read()
        assert FAKE_KEY_ID not in str(ei.value) and FAKE_SECRET not in str(ei.value)
    assert time.monotonic() - t0 < 60
