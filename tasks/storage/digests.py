"""sha256 of what we write, whole and per multipart part, so S3 can check every part we send.

``part_size_for`` predicts the part size of a multipart upload, so the composite checksum S3
reports ('<base64>-N') can be computed locally while a shard is written (``HashingWriter``):
no second read pass, and ``verify`` can trust a HEAD.
"""

from __future__ import annotations

import base64
import hashlib
import io
import os
from dataclasses import dataclass, field
from typing import Any, BinaryIO

from tasks.storage.config import READ_CHUNK, S3_MAX_PARTS, S3_MIN_PART, StorageConfig


def part_size_for(size: int, config: StorageConfig) -> int | None:
    """The multipart part size boto3 will use for ``size`` bytes, or None for a single PUT.

    Mirrors s3transfer's ChunksizeAdjuster (at least 5 MiB, at most 10,000 parts), so the
    composite checksum can be predicted locally.
    """
    if size < config.multipart_threshold:
        return None
    chunk = max(config.multipart_chunksize, S3_MIN_PART)
    while -(-size // chunk) > S3_MAX_PARTS:
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
        while chunk := fh.read(READ_CHUNK):
            d.update(chunk)
    return d


def checksum_body(value: str | None) -> str | None:
    """Compare composite checksums without the '-N' part count (some servers omit it)."""
    return None if not value else value.split("-", 1)[0]
