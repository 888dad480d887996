"""One storage interface for local paths and ``s3://`` URIs.

S3 goes through boto3 with the standard AWS environment only: AWS_ENDPOINT_URL (botocore reads
it itself), the credential chain (env, profile, SSO, instance role), AWS_REGION/AWS_DEFAULT_REGION.
Credentials are never parameters, fields or log text here: ``StorageConfig`` forbids extra fields,
error messages and library log records pass through ``redact``, and ``presign`` output (which
carries the access key id) is for immediate use only.

Integrity: uploads carry SHA256 checksums (``ChecksumAlgorithm='SHA256'``; multipart through
boto3's TransferConfig, so the server checks every part), plus the full-object sha256 as user
metadata. ``verify`` compares size, that metadata and the server's own checksum against what
we computed locally, so a HEAD is enough; without a server checksum it re-reads and hashes.
Retries with exponential backoff are botocore's (``retries={'mode': 'standard'}``).

Run as ``python -m tasks.storage cat URI`` it streams an object to stdout: that is the
``pipe:`` URL ``webdataset_url`` makes, for a plain ``webdataset.WebDataset`` in any process.
"""

from __future__ import annotations

import base64
import hashlib
import io
import logging
import os
import re
import shlex
import sys
import tempfile
import threading
from abc import ABC, abstractmethod
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO, Any, BinaryIO, Literal
from urllib.parse import urlparse, urlunparse

from pydantic import BaseModel, ConfigDict, Field

from tasks.errors import SpatialAudioCapsError

log = logging.getLogger(__name__)

MiB = 1 << 20
_READ_CHUNK = 8 * MiB
_S3_MIN_PART = 5 * MiB
_S3_MAX_PARTS = 10_000


class StorageError(SpatialAudioCapsError):
    """A storage operation failed (after botocore's retries); the message is redacted."""


class ObjectMissing(StorageError):
    """The object does not exist."""


class StorageConfig(BaseModel):
    """Transfer and retry settings. Deliberately holds no credential: those come from the chain."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    region: str | None = Field(None, description="else AWS_REGION / AWS_DEFAULT_REGION / profile")
    max_attempts: int = Field(5, ge=1, le=20, description="botocore total attempts per request")
    retry_mode: Literal["standard", "adaptive", "legacy"] = "standard"
    connect_timeout_s: float = Field(10.0, gt=0)
    read_timeout_s: float = Field(60.0, gt=0)
    multipart_threshold: int = Field(64 * MiB, ge=_S3_MIN_PART)
    multipart_chunksize: int = Field(16 * MiB, ge=_S3_MIN_PART)
    max_concurrency: int = Field(8, ge=1, le=64)


# --------------------------------------------------------------------------------------------
# secrets: redaction of messages and of library log records

_SECRET_PATTERNS = (
    re.compile(r"(?i)(X-Amz-Credential=)[^&\s'\"]+"),
    re.compile(r"(?i)(X-Amz-Signature=)[^&\s'\"]+"),
    re.compile(r"(?i)(X-Amz-Security-Token=)[^&\s'\"]+"),
    re.compile(r"(Credential=)[^,\s'\"]+"),
    re.compile(r"(Signature=)[0-9a-fA-F]{16,}"),
    re.compile(r"(?i)(['\"]?x-amz-security-token['\"]?\s*:\s*b?['\"])[^'\"]+"),
    re.compile(r"(?i)(aws_secret_access_key\s*[=:]\s*)\S+"),
    re.compile(r"(?i)(aws_session_token\s*[=:]\s*)\S+"),
    re.compile(r"(//[^/@\s:]+:)[^/@\s]+(@)"),  # userinfo in an endpoint URL
)
_known_secrets: set[str] = set()
_secrets_lock = threading.Lock()
_REDACTED = "***"


def register_secrets(*values: str | None) -> None:
    """Remember credential values so that ``redact`` scrubs them wherever they turn up."""
    with _secrets_lock:
        _known_secrets.update(v for v in values if v and len(v) >= 4)


def redact(text: str) -> str:
    """``text`` without credential values, signatures, tokens or URL passwords."""
    for pat in _SECRET_PATTERNS:
        text = pat.sub(lambda m: m.group(1) + _REDACTED + (m.group(2) if m.re.groups > 1 else ""), text)
    with _secrets_lock:
        secrets = sorted(_known_secrets, key=len, reverse=True)
    for s in secrets:
        if s in text:
            text = text.replace(s, _REDACTED)
    return text


class RedactingFilter(logging.Filter):
    """Rewrites a record's message through ``redact``; botocore's DEBUG logs print auth headers."""

    def filter(self, record: logging.LogRecord) -> bool:
        try:
            msg = record.getMessage()
        except Exception:  # a broken record is logging's problem, not ours
            return True
        clean = redact(msg)
        if clean != msg:
            record.msg, record.args = clean, None
        if record.exc_info and record.exc_info[1] is not None and not record.exc_text:
            record.exc_text = redact(logging.Formatter().formatException(record.exc_info))
        elif record.exc_text:
            record.exc_text = redact(record.exc_text)
        return True


_FILTER = RedactingFilter()
_REDACTED_LOGGERS = ("botocore", "boto3", "s3transfer", "urllib3", "tasks", "spatial_audiocaps", "flows")


def install_log_redaction() -> None:
    """Attach the redacting filter to every logger (existing now) of AWS, HTTP and our packages.

    Logger filters only see records created on that very logger, so each child gets one; it is
    idempotent and called whenever an S3 client is made (the libraries' loggers exist by then).
    """
    names = [n for n in list(logging.root.manager.loggerDict) if n.split(".")[0] in _REDACTED_LOGGERS]
    for name in {*names, *_REDACTED_LOGGERS}:
        lg = logging.getLogger(name)
        if _FILTER not in lg.filters:
            lg.addFilter(_FILTER)


def safe_uri(uri: str) -> str:
    """A URI fit for logs and records: no query string, no userinfo."""
    p = urlparse(uri)
    if not p.scheme or len(p.scheme) == 1:  # plain or Windows path
        return uri
    netloc = p.hostname or ""
    if p.port:
        netloc += f":{p.port}"
    return urlunparse((p.scheme, netloc, p.path, "", "", ""))


# --------------------------------------------------------------------------------------------
# URIs and hashing


def is_s3(uri: str) -> bool:
    return uri.startswith("s3://")


def split_s3(uri: str) -> tuple[str, str]:
    """``s3://bucket/key`` -> (bucket, key)."""
    if not is_s3(uri):
        raise StorageError(f"not an s3:// URI: {safe_uri(uri)}")
    rest = uri[5:]
    bucket, _, key = rest.partition("/")
    if not bucket:
        raise StorageError(f"no bucket in {safe_uri(uri)}")
    return bucket, key


def join_uri(base: str, *parts: str) -> str:
    """Join path parts onto a local path or s3:// URI with '/'."""
    out = base.rstrip("/")
    for p in parts:
        p = p.strip("/")
        if p:
            out = f"{out}/{p}"
    return out


def local_path(uri: str) -> Path:
    return Path(uri[7:]) if uri.startswith("file://") else Path(uri)


def part_size_for(size: int, config: StorageConfig) -> int | None:
    """The multipart part size boto3 will use for ``size`` bytes, or None for a single PUT.

    Mirrors s3transfer's ChunksizeAdjuster (at least 5 MiB, at most 10,000 parts), so the
    composite checksum can be predicted locally.
    """
    if size < config.multipart_threshold:
        return None
    chunk = max(config.multipart_chunksize, _S3_MIN_PART)
    while -(-size // chunk) > _S3_MAX_PARTS:
        chunk *= 2
    return chunk


@dataclass
class Digest:
    """sha256 of a byte stream, plus per-part sha256 digests when ``part_size`` is set.

    The part digests give the composite checksum S3 reports for a multipart object, and are sent
    with each part, so the server checks every part against what we hashed when writing it.
    """

    part_size: int | None
    size: int = 0
    full: Any = field(default_factory=hashlib.sha256)
    parts: list[bytes] = field(default_factory=list)
    _part: Any = field(default_factory=hashlib.sha256)
    _in_part: int = 0

    def update(self, data: bytes | bytearray | memoryview) -> None:
        mv = memoryview(data)
        self.full.update(mv)
        self.size += len(mv)
        if self.part_size is None:
            return
        while len(mv):
            take = min(len(mv), self.part_size - self._in_part)
            self._part.update(mv[:take])
            self._in_part += take
            mv = mv[take:]
            if self._in_part == self.part_size:
                self.parts.append(self._part.digest())
                self._part, self._in_part = hashlib.sha256(), 0

    def hexdigest(self) -> str:
        return self.full.hexdigest()

    def part_digests(self) -> list[bytes]:
        """sha256 of each part (the last one may be short); empty when parts were not hashed."""
        if self.part_size is None:
            return []
        parts = list(self.parts)
        if self._in_part or not parts:
            parts.append(self._part.copy().digest())
        return parts

    def checksum(self, part_size: int | None) -> str:
        """The S3 ChecksumSHA256 value: full-object for one PUT, composite ('-N') for multipart."""
        if part_size is None:
            return base64.b64encode(self.full.digest()).decode()
        if part_size != self.part_size:
            raise ValueError("part size differs from the one digested")
        parts = self.part_digests()
        return base64.b64encode(hashlib.sha256(b"".join(parts)).digest()).decode() + f"-{len(parts)}"


class HashingWriter(io.RawIOBase):
    """A write-only file that hashes what passes through: no second read pass over a shard."""

    def __init__(self, fh: BinaryIO, part_size: int | None) -> None:
        super().__init__()
        self._fh = fh
        self.digest = Digest(part_size)

    def writable(self) -> bool:
        return True

    def write(self, b: Any) -> int:
        n = self._fh.write(b)
        self.digest.update(memoryview(b)[:n] if n is not None else b)
        return len(b) if n is None else n

    def flush(self) -> None:
        self._fh.flush()


def digest_file(path: str | os.PathLike[str], part_size: int | None) -> Digest:
    d = Digest(part_size)
    with open(path, "rb") as fh:
        while chunk := fh.read(_READ_CHUNK):
            d.update(chunk)
    return d


def _checksum_body(value: str | None) -> str | None:
    """Compare composite checksums without the '-N' part count (some servers omit it)."""
    return None if not value else value.split("-", 1)[0]


# --------------------------------------------------------------------------------------------
# the interface


@dataclass(frozen=True)
class ObjectInfo:
    """What a HEAD (or stat) says about an object."""

    uri: str
    size: int
    sha256: str | None = None  # hex, from our metadata (or computed, locally)
    checksum_sha256: str | None = None  # base64, the server's own (composite '-N' for multipart)
    checksum_type: str | None = None
    etag: str | None = None


@dataclass(frozen=True)
class Verification:
    ok: bool
    reason: str  # "ok", "missing", "size", "sha256", "checksum"
    info: ObjectInfo | None


class Storage(ABC):
    """Local directory or S3 bucket; URIs are absolute (a path, or s3://bucket/key)."""

    config: StorageConfig

    @abstractmethod
    def info(self, uri: str) -> ObjectInfo | None:
        """HEAD: None when the object does not exist."""

    @abstractmethod
    def put_bytes(self, uri: str, data: bytes, *, content_type: str = "application/octet-stream") -> None:
        """Write a small object atomically (a reader sees the old or the new bytes, never half)."""

    @abstractmethod
    def upload_file(
        self,
        path: str | os.PathLike[str],
        uri: str,
        *,
        sha256: str,
        progress: Callable[[int], None] | None = None,
        digest: Digest | None = None,
    ) -> None:
        """Upload a local file (multipart when large) with SHA256 checksums.

        With ``digest`` (what was hashed while the file was written) the checksums are sent, not
        recomputed: no extra pass over the bytes, and the server checks them against the data.
        """

    @abstractmethod
    def open_read(self, uri: str) -> BinaryIO:
        """A streaming reader (the whole object is never held in memory)."""

    @abstractmethod
    def read_range(self, uri: str, start: int, length: int) -> bytes: ...

    @abstractmethod
    def list(self, prefix: str) -> list[ObjectInfo]:
        """Every object under ``prefix`` (recursively), sorted by URI; sizes only."""

    @abstractmethod
    def delete(self, uri: str) -> None: ...

    @abstractmethod
    def expected_checksum(self, digest: Digest) -> str | None:
        """The checksum ``info`` will report for an object with these bytes (None: not kept)."""

    def read_bytes(self, uri: str) -> bytes:
        with self.open_read(uri) as fh:
            return fh.read()

    def exists(self, uri: str) -> bool:
        return self.info(uri) is not None

    def sha256_of(self, uri: str) -> str:
        """Re-read an object and hash it (the deep check)."""
        h = hashlib.sha256()
        with self.open_read(uri) as fh:
            while chunk := fh.read(_READ_CHUNK):
                h.update(chunk)
        return h.hexdigest()

    def verify(
        self, uri: str, *, size: int, sha256: str, checksum: str | None, deep: bool = False
    ) -> Verification:
        """Does the object hold exactly these bytes? HEAD first; re-read if the server can't say."""
        info = self.info(uri)
        if info is None:
            return Verification(False, "missing", None)
        if info.size != size:
            return Verification(False, "size", info)
        if info.sha256 is not None and info.sha256 != sha256:
            return Verification(False, "sha256", info)
        server = _checksum_body(info.checksum_sha256)
        if server is not None and checksum is not None:
            if server != _checksum_body(checksum):
                return Verification(False, "checksum", info)
            if not deep:
                return Verification(True, "ok", info)
        if self.sha256_of(uri) != sha256:
            return Verification(False, "sha256", info)
        return Verification(True, "ok", info)


# --------------------------------------------------------------------------------------------
# local


class LocalStorage(Storage):
    """Plain files. Writes go to a sibling temporary file, fsync, then os.replace (atomic)."""

    def __init__(self, config: StorageConfig | None = None) -> None:
        self.config = config or StorageConfig()

    def info(self, uri: str) -> ObjectInfo | None:
        p = local_path(uri)
        try:
            st = p.stat()
        except FileNotFoundError:
            return None
        except OSError as e:
            raise StorageError(f"{p}: {e}") from e
        if not p.is_file():
            return None
        return ObjectInfo(uri=uri, size=st.st_size)

    def _atomic_write(self, uri: str, writer: Callable[[IO[bytes]], None]) -> None:
        dest = local_path(uri)
        try:
            dest.parent.mkdir(parents=True, exist_ok=True)
            fd, tmp = tempfile.mkstemp(prefix=f".{dest.name}.", suffix=".partial", dir=dest.parent)
            try:
                with os.fdopen(fd, "wb") as fh:
                    writer(fh)
                    fh.flush()
                    os.fsync(fh.fileno())
                os.chmod(tmp, 0o644)
                os.replace(tmp, dest)
            except BaseException:
                Path(tmp).unlink(missing_ok=True)
                raise
        except OSError as e:
            raise StorageError(f"{dest}: {e}") from e

    def put_bytes(self, uri: str, data: bytes, *, content_type: str = "application/octet-stream") -> None:
        self._atomic_write(uri, lambda fh: fh.write(data))

    def upload_file(
        self,
        path: str | os.PathLike[str],
        uri: str,
        *,
        sha256: str,
        progress: Callable[[int], None] | None = None,
        digest: Digest | None = None,
    ) -> None:
        def copy(fh: IO[bytes]) -> None:
            with open(path, "rb") as src:
                while chunk := src.read(_READ_CHUNK):
                    fh.write(chunk)
                    if progress:
                        progress(len(chunk))

        self._atomic_write(uri, copy)

    def open_read(self, uri: str) -> BinaryIO:
        try:
            return open(local_path(uri), "rb")
        except FileNotFoundError as e:
            raise ObjectMissing(f"{local_path(uri)}: no such file") from e
        except OSError as e:
            raise StorageError(f"{local_path(uri)}: {e}") from e

    def read_range(self, uri: str, start: int, length: int) -> bytes:
        with self.open_read(uri) as fh:
            fh.seek(start)
            return fh.read(length)

    def list(self, prefix: str) -> list[ObjectInfo]:
        root = local_path(prefix)
        if root.is_file():
            return [ObjectInfo(uri=prefix, size=root.stat().st_size)]
        if not root.is_dir():
            return []
        out = [  # URIs keep the caller's spelling of the prefix (relative, absolute, file://)
            ObjectInfo(uri=join_uri(prefix, p.relative_to(root).as_posix()), size=p.stat().st_size)
            for p in root.rglob("*")
            if p.is_file() and not p.name.endswith(".partial")
        ]
        return sorted(out, key=lambda o: o.uri)

    def delete(self, uri: str) -> None:
        local_path(uri).unlink(missing_ok=True)

    def expected_checksum(self, digest: Digest) -> str | None:
        return None  # a file keeps no checksum: verify re-reads it


# --------------------------------------------------------------------------------------------
# S3


_OK_ERRORS = ("404", "NoSuchKey", "NotFound")


class _S3Reader(io.RawIOBase):
    """botocore's StreamingBody as a file, with its errors turned into StorageError."""

    def __init__(self, body: Any, uri: str, errors: tuple[type[BaseException], ...]) -> None:
        super().__init__()
        self._body, self._uri, self._errors = body, uri, errors

    def readable(self) -> bool:
        return True

    def read(self, size: int = -1) -> bytes:
        try:
            return self._body.read(None if size is None or size < 0 else size)
        except self._errors as e:
            raise StorageError(f"reading {safe_uri(self._uri)} failed: {redact(str(e))}") from None

    def readinto(self, b: Any) -> int:
        data = self.read(len(b))
        b[: len(data)] = data
        return len(data)

    def readall(self) -> bytes:
        return self.read(-1)

    def close(self) -> None:
        if not self.closed:
            self._body.close()
        super().close()


class S3Storage(Storage):
    """boto3 over the standard AWS environment; one client per instance (clients are thread-safe)."""

    def __init__(self, config: StorageConfig | None = None) -> None:
        import boto3
        import botocore.config
        import botocore.exceptions
        from boto3.exceptions import Boto3Error
        from boto3.s3.transfer import TransferConfig

        self.config = cfg = config or StorageConfig()
        self._errors: tuple[type[BaseException], ...] = (
            botocore.exceptions.BotoCoreError,
            botocore.exceptions.ClientError,
            Boto3Error,
        )
        self._client_error = botocore.exceptions.ClientError
        install_log_redaction()
        session = boto3.session.Session(region_name=cfg.region)
        creds = session.get_credentials()
        if creds is not None:
            frozen = creds.get_frozen_credentials()
            register_secrets(frozen.access_key, frozen.secret_key, frozen.token)
        bc = botocore.config.Config(
            retries={"total_max_attempts": cfg.max_attempts, "mode": cfg.retry_mode},
            connect_timeout=cfg.connect_timeout_s,
            read_timeout=cfg.read_timeout_s,
            max_pool_connections=max(10, cfg.max_concurrency + 2),
            signature_version="s3v4",
        )
        self.client = session.client("s3", config=bc)
        install_log_redaction()
        self.transfer = TransferConfig(
            multipart_threshold=cfg.multipart_threshold,
            multipart_chunksize=cfg.multipart_chunksize,
            max_concurrency=cfg.max_concurrency,
            use_threads=True,
        )

    def _fail(self, what: str, uri: str, e: BaseException) -> StorageError:
        msg = f"{what} {safe_uri(uri)} failed: {redact(str(e))}"
        log.warning("%s", msg)
        return StorageError(msg)

    def info(self, uri: str) -> ObjectInfo | None:
        bucket, key = split_s3(uri)
        try:
            h = self.client.head_object(Bucket=bucket, Key=key, ChecksumMode="ENABLED")
        except self._client_error as e:
            if str(e.response.get("Error", {}).get("Code")) in _OK_ERRORS:
                return None
            raise self._fail("HEAD", uri, e) from None
        except self._errors as e:
            raise self._fail("HEAD", uri, e) from None
        return ObjectInfo(
            uri=uri,
            size=int(h["ContentLength"]),
            sha256=(h.get("Metadata") or {}).get("sha256"),
            checksum_sha256=h.get("ChecksumSHA256"),
            checksum_type=h.get("ChecksumType"),
            etag=h.get("ETag"),
        )

    def put_bytes(self, uri: str, data: bytes, *, content_type: str = "application/octet-stream") -> None:
        bucket, key = split_s3(uri)
        try:
            self.client.put_object(
                Bucket=bucket,
                Key=key,
                Body=data,
                ContentType=content_type,
                ChecksumAlgorithm="SHA256",
                Metadata={"sha256": hashlib.sha256(data).hexdigest()},
            )
        except self._errors as e:
            raise self._fail("PUT", uri, e) from None

    def upload_file(
        self,
        path: str | os.PathLike[str],
        uri: str,
        *,
        sha256: str,
        progress: Callable[[int], None] | None = None,
        digest: Digest | None = None,
    ) -> None:
        bucket, key = split_s3(uri)
        install_log_redaction()
        size = os.path.getsize(path)
        part = part_size_for(size, self.config)
        meta = {"sha256": sha256}
        try:
            if digest is not None and digest.size == size and (part is None or digest.part_size == part):
                if part is None:
                    with open(path, "rb") as body:
                        self.client.put_object(
                            Bucket=bucket,
                            Key=key,
                            Body=body,
                            ChecksumSHA256=digest.checksum(None),
                            Metadata=meta,
                            ContentType="application/x-tar",
                        )
                    if progress:
                        progress(size)
                else:
                    self._multipart(path, bucket, key, size, part, digest.part_digests(), meta, progress)
                return
            self.client.upload_file(  # boto3's transfer manager computes the checksums itself
                os.fspath(path),
                bucket,
                key,
                ExtraArgs={
                    "ChecksumAlgorithm": "SHA256",
                    "Metadata": meta,
                    "ContentType": "application/x-tar",
                },
                Config=self.transfer,
                Callback=progress,
            )
        except self._errors as e:
            raise self._fail("upload to", uri, e) from None

    def _multipart(
        self,
        path: str | os.PathLike[str],
        bucket: str,
        key: str,
        size: int,
        part: int,
        digests: list[bytes],
        meta: dict[str, str],
        progress: Callable[[int], None] | None,
    ) -> None:
        """Multipart upload with our per-part SHA256 checksums; aborted on any failure."""
        from concurrent.futures import ThreadPoolExecutor

        n = len(digests)
        if n != -(-size // part):
            raise StorageError(f"{n} part digests for {-(-size // part)} parts")
        b64 = [base64.b64encode(d).decode() for d in digests]
        mpu = self.client.create_multipart_upload(
            Bucket=bucket, Key=key, ChecksumAlgorithm="SHA256", Metadata=meta, ContentType="application/x-tar"
        )
        upload_id = mpu["UploadId"]

        def send(i: int) -> dict[str, Any]:
            with open(path, "rb") as fh:
                fh.seek(i * part)
                body = fh.read(min(part, size - i * part))
            r = self.client.upload_part(
                Bucket=bucket, Key=key, UploadId=upload_id, PartNumber=i + 1, Body=body, ChecksumSHA256=b64[i]
            )
            if progress:
                progress(len(body))
            return {"PartNumber": i + 1, "ETag": r["ETag"], "ChecksumSHA256": b64[i]}

        try:
            with ThreadPoolExecutor(max_workers=min(self.config.max_concurrency, n)) as pool:
                done = list(pool.map(send, range(n)))
            self.client.complete_multipart_upload(
                Bucket=bucket, Key=key, UploadId=upload_id, MultipartUpload={"Parts": done}
            )
        except BaseException:
            try:
                self.client.abort_multipart_upload(Bucket=bucket, Key=key, UploadId=upload_id)
            except self._errors:
                log.warning(
                    "could not abort multipart upload of %s (a lifecycle rule cleans it up)",
                    safe_uri(f"s3://{bucket}/{key}"),
                )
            raise

    def open_read(self, uri: str) -> BinaryIO:
        bucket, key = split_s3(uri)
        try:
            body = self.client.get_object(Bucket=bucket, Key=key)["Body"]
        except self._client_error as e:
            if str(e.response.get("Error", {}).get("Code")) in _OK_ERRORS:
                raise ObjectMissing(f"{safe_uri(uri)}: no such object") from None
            raise self._fail("GET", uri, e) from None
        except self._errors as e:
            raise self._fail("GET", uri, e) from None
        return io.BufferedReader(_S3Reader(body, uri, self._errors), buffer_size=MiB)  # type: ignore[return-value]

    def read_range(self, uri: str, start: int, length: int) -> bytes:
        bucket, key = split_s3(uri)
        try:
            body = self.client.get_object(Bucket=bucket, Key=key, Range=f"bytes={start}-{start + length - 1}")
            return body["Body"].read()
        except self._errors as e:
            raise self._fail("ranged GET", uri, e) from None

    def list(self, prefix: str) -> list[ObjectInfo]:
        bucket, key = split_s3(prefix)
        out: list[ObjectInfo] = []
        try:
            for page in self.client.get_paginator("list_objects_v2").paginate(Bucket=bucket, Prefix=key):
                for o in page.get("Contents", []):
                    out.append(
                        ObjectInfo(uri=f"s3://{bucket}/{o['Key']}", size=int(o["Size"]), etag=o.get("ETag"))
                    )
        except self._errors as e:
            raise self._fail("LIST", prefix, e) from None
        return sorted(out, key=lambda o: o.uri)

    def delete(self, uri: str) -> None:
        bucket, key = split_s3(uri)
        try:
            self.client.delete_object(Bucket=bucket, Key=key)
        except self._errors as e:
            raise self._fail("DELETE", uri, e) from None

    def expected_checksum(self, digest: Digest) -> str | None:
        ps = part_size_for(digest.size, self.config)
        if ps is not None and ps != digest.part_size:
            return None  # > 160 GB objects: verify falls back to re-reading
        return digest.checksum(ps)

    def presign(self, uri: str, expires_s: int = 3600) -> str:
        """A presigned GET URL (e.g. for curl). It carries the access key id: never log or store it."""
        bucket, key = split_s3(uri)
        return self.client.generate_presigned_url(
            "get_object", Params={"Bucket": bucket, "Key": key}, ExpiresIn=expires_s
        )


# --------------------------------------------------------------------------------------------
# factories and readers

_cache: dict[tuple[str, StorageConfig], Storage] = {}
_cache_lock = threading.Lock()


def open_storage(uri: str, config: StorageConfig | None = None, *, fresh: bool = False) -> Storage:
    """The backend for ``uri`` (one S3 client per config and process, unless ``fresh``)."""
    cfg = config or StorageConfig()
    kind = "s3" if is_s3(uri) else "local"
    if fresh:
        return S3Storage(cfg) if kind == "s3" else LocalStorage(cfg)
    with _cache_lock:
        st = _cache.get((kind, cfg))
        if st is None:
            st = S3Storage(cfg) if kind == "s3" else LocalStorage(cfg)
            _cache[(kind, cfg)] = st
        return st


def clear_storage_cache() -> None:
    """Forget cached clients (after the endpoint or credentials in the environment changed)."""
    with _cache_lock:
        _cache.clear()


def webdataset_url(uri: str, how: Literal["pipe", "presigned", "aws-cli"] = "pipe") -> str:
    """A URL that a plain ``webdataset.WebDataset`` opens.

    ``pipe`` runs ``python -m tasks.storage cat`` (boto3, credentials from the environment; the
    URL holds none). ``presigned`` is an http(s) URL that webdataset fetches with curl: it holds
    the access key id and a signature, so never log or persist it. ``aws-cli`` is the form
    LAION-CLAP's own scripts use (``pipe:aws s3 cp ... -``).
    """
    if not is_s3(uri):
        return str(local_path(uri))
    if how == "pipe":
        return f"pipe:{shlex.quote(sys.executable)} -m tasks.storage cat {shlex.quote(uri)}"
    if how == "aws-cli":
        return f"pipe:aws s3 cp {uri} -"
    st = open_storage(uri)
    assert isinstance(st, S3Storage)
    return st.presign(uri)


def register_webdataset_s3(config: StorageConfig | None = None) -> None:
    """Let webdataset open ``s3://`` URLs in-process through this module (gopen_schemes['s3'])."""
    import importlib

    gopen = importlib.import_module("webdataset.gopen")  # the package re-exports a function of that name

    def _open(url: str, mode: str = "rb", bufsize: int = 8192, **_: Any) -> BinaryIO:
        if mode[0] != "r":
            raise ValueError("s3:// URLs are read-only through webdataset; write with tasks.commit")
        return open_storage(url, config).open_read(url)

    gopen.gopen_schemes["s3"] = _open


def iter_chunks(fh: BinaryIO, size: int = _READ_CHUNK) -> Iterator[bytes]:
    while chunk := fh.read(size):
        yield chunk


def _main(argv: list[str]) -> int:
    """``python -m tasks.storage cat URI``: stream an object to stdout (webdataset pipe: URLs)."""
    if len(argv) != 2 or argv[0] != "cat":
        print("usage: python -m tasks.storage cat URI", file=sys.stderr)
        return 2
    try:
        with open_storage(argv[1]).open_read(argv[1]) as fh:
            out = sys.stdout.buffer
            for chunk in iter_chunks(fh):
                out.write(chunk)
            out.flush()
    except BrokenPipeError:  # the reader stopped early (e.g. webdataset's slice): not an error
        devnull = os.open(os.devnull, os.O_WRONLY)
        os.dup2(devnull, sys.stdout.fileno())
        return 0
    except StorageError as e:
        print(f"error: {e}", file=sys.stderr)
        return 1
    return 0


__all__ = [
    "Digest",
    "HashingWriter",
    "LocalStorage",
    "ObjectInfo",
    "ObjectMissing",
    "RedactingFilter",
    "S3Storage",
    "Storage",
    "StorageConfig",
    "StorageError",
    "Verification",
    "clear_storage_cache",
    "digest_file",
    "install_log_redaction",
    "is_s3",
    "join_uri",
    "local_path",
    "open_storage",
    "part_size_for",
    "redact",
    "register_secrets",
    "register_webdataset_s3",
    "safe_uri",
    "split_s3",
    "webdataset_url",
]

if __name__ == "__main__":
    sys.exit(_main(sys.argv[1:]))
