"""The storage interface: reads through fsspec, verified writes and HEADs per backend.

Reading, opening and listing go through an fsspec filesystem (``fs``) that each backend builds
from the same settings as its writer; ``open_read``, ``read_range`` and the checks built on them
are written once, here. What a backend adds is how it writes (atomically, with checksums) and
what a HEAD says about an object (``info``), because ``verify`` depends on both.
"""

from __future__ import annotations

import hashlib
import io
import logging
import os
from abc import ABC, abstractmethod
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, BinaryIO

import fsspec

from tasks.storage.config import READ_CHUNK, MiB, StorageConfig
from tasks.storage.digests import Digest, checksum_body
from tasks.storage.errors import ObjectMissing, StorageError
from tasks.storage.redaction import redact
from tasks.storage.uris import safe_uri

log = logging.getLogger(__name__)

RANDOM_ACCESS_BLOCK = MiB  # readahead for reads that jump (tar members), not whole-object streams


@dataclass(frozen=True)
class ObjectInfo:
    """What a HEAD (or stat) says about an object."""

    uri: str
    size: int
    sha256: str | None = None  # hex, from our metadata (or computed, locally)
    checksum_sha256: str | None = None  # base64, the server's own (composite '-N' for multipart)
    checksum_type: str | None = None
    etag: str | None = None
    modified_ns: int | None = None  # local files: the mtime (a receipt written later vouches for it)


@dataclass(frozen=True)
class Upload:
    """One ``upload_file`` call: the local file, where it goes, and what it must hash to."""

    path: str | os.PathLike[str]
    uri: str
    sha256: str
    progress: Callable[[int], None] | None
    digest: Digest | None


@dataclass(frozen=True)
class Verification:
    ok: bool
    reason: str  # "ok", "missing", "size", "sha256", "checksum"
    info: ObjectInfo | None


class _Reader(io.RawIOBase):
    """An fsspec file whose errors become redacted StorageErrors (a read can fail mid-stream)."""

    def __init__(self, fh: Any, uri: str, errors: tuple[type[BaseException], ...]) -> None:
        super().__init__()
        self._fh, self._uri, self._errors = fh, uri, errors

    def _fail(self, e: BaseException) -> StorageError:
        return StorageError(f"reading {safe_uri(self._uri)} failed: {redact(str(e))}")

    def readable(self) -> bool:
        return True

    def seekable(self) -> bool:
        return True

    def seek(self, offset: int, whence: int = os.SEEK_SET) -> int:
        try:
            return int(self._fh.seek(offset, whence))
        except self._errors as e:
            raise self._fail(e) from None

    def tell(self) -> int:
        return int(self._fh.tell())

    def readinto(self, b: Any) -> int:
        try:
            data = self._fh.read(len(b))
        except self._errors as e:
            raise self._fail(e) from None
        b[: len(data)] = data
        return len(data)

    def close(self) -> None:
        if not self.closed:
            self._fh.close()
        super().close()


class Storage(ABC):
    """Local directory or S3 bucket; URIs are absolute (a path, or s3://bucket/key)."""

    config: StorageConfig
    fs: fsspec.AbstractFileSystem
    read_errors: tuple[type[BaseException], ...] = (OSError,)  # what the fsspec side may raise

    @abstractmethod
    def fs_path(self, uri: str) -> str:
        """``uri`` as a path in ``fs``."""

    @abstractmethod
    def info(self, uri: str) -> ObjectInfo | None:
        """HEAD: None when the object does not exist."""

    @abstractmethod
    def put_bytes(self, uri: str, data: bytes, *, content_type: str = "application/octet-stream") -> None:
        """Write a small object atomically (a reader sees the old or the new bytes, never half)."""

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
        self._upload(Upload(path=path, uri=uri, sha256=sha256, progress=progress, digest=digest))

    @abstractmethod
    def _upload(self, job: Upload) -> None:
        """The backend's half of ``upload_file``."""

    @abstractmethod
    def list(self, prefix: str) -> list[ObjectInfo]:
        """Every object under ``prefix`` (recursively), sorted by URI; sizes only."""

    @abstractmethod
    def delete(self, uri: str) -> None: ...

    @abstractmethod
    def expected_checksum(self, digest: Digest) -> str | None:
        """The checksum ``info`` will report for an object with these bytes (None: not kept)."""

    def _read_failed(self, what: str, uri: str, e: BaseException) -> StorageError:
        if isinstance(e, FileNotFoundError):
            return ObjectMissing(f"{safe_uri(uri)}: no such object")
        msg = f"{what} {safe_uri(uri)} failed: {redact(str(e))}"
        log.warning("%s", msg)
        return StorageError(msg)

    def open_read(self, uri: str, *, random_access: bool = False) -> BinaryIO:
        """A seekable streaming reader (the whole object is never held in memory).

        ``random_access``: the caller jumps around (tar members), so fetch what is asked plus a
        small readahead instead of large sequential blocks.
        """
        options = {"block_size": RANDOM_ACCESS_BLOCK} if random_access else {}
        try:
            fh = self.fs.open(self.fs_path(uri), "rb", **options)
        except self.read_errors as e:
            raise self._read_failed("opening", uri, e) from None
        return io.BufferedReader(_Reader(fh, uri, self.read_errors), buffer_size=MiB)  # type: ignore[return-value]

    def read_range(self, uri: str, start: int, length: int) -> bytes:
        try:
            return bytes(self.fs.cat_file(self.fs_path(uri), start=start, end=start + length))
        except self.read_errors as e:
            raise self._read_failed("ranged read of", uri, e) from None

    def read_bytes(self, uri: str) -> bytes:
        with self.open_read(uri) as fh:
            return fh.read()

    def exists(self, uri: str) -> bool:
        return self.info(uri) is not None

    def sha256_of(self, uri: str) -> str:
        """Re-read an object and hash it (the deep check)."""
        h = hashlib.sha256()
        with self.open_read(uri) as fh:
            while chunk := fh.read(READ_CHUNK):
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
        server = checksum_body(info.checksum_sha256)
        if server is not None and checksum is not None:
            if server != checksum_body(checksum):
                return Verification(False, "checksum", info)
            if not deep:
                return Verification(True, "ok", info)
        if self.sha256_of(uri) != sha256:
            return Verification(False, "sha256", info)
        return Verification(True, "ok", info)
