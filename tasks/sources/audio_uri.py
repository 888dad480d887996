"""Clip audio from its URI: the demo corpus, a member of a tar, or a file (local or ``s3://``).

Files and tars are opened through ``tasks.storage.open_storage``, the one place that decides how a
URI opens. A tar member (``tar://<tar uri>#<member>``) is read at its offset from an index of
the tar's members built when the tar is opened (only headers are read). ``ClipAudio`` keeps each
tar open for as long as it lives, one shard task: a shard reads each of its tars once and
indexes it once, instead of rescanning the tar for every clip.
"""

from __future__ import annotations

import tarfile
from dataclasses import dataclass
from types import TracebackType
from typing import BinaryIO

from tasks.demo_corpus import demo_clip
from tasks.errors import AudioRejected
from tasks.storage import ObjectMissing, StorageError, open_storage


@dataclass(frozen=True)
class TarMember:
    """Where a member's bytes lie in its (uncompressed) tar."""

    offset: int
    size: int


def index_tar(fh: BinaryIO) -> dict[str, TarMember]:
    """The regular files of an uncompressed tar by name (the last of a repeated name wins, as in tar)."""
    with tarfile.open(fileobj=fh, mode="r:") as tar:
        return {m.name: TarMember(m.offset_data, m.size) for m in tar.getmembers()
                if m.isfile() and not m.issparse()}


def _rejected(uri: str, exc: Exception) -> AudioRejected:
    if isinstance(exc, ObjectMissing | FileNotFoundError):
        return AudioRejected("audio_missing", f"{uri}: not found")
    return AudioRejected("unreadable", f"{uri}: {exc}")


_READ_ERRORS = (StorageError, OSError, KeyError, ValueError, tarfile.TarError)


class ClipAudio:
    """Reads clips' audio for one shard task; holds each tar it touched open until ``close``.

    Not thread-safe: one instance per task (a tar's handle is shared by its members' reads).
    """

    def __init__(self) -> None:
        self._tars: dict[str, tuple[BinaryIO, dict[str, TarMember]] | AudioRejected] = {}

    def read(self, uri: str) -> bytes:
        """Bytes of the audio at ``uri``; a missing or unreadable one is an AudioRejected."""
        try:
            if uri.startswith("demo://"):
                seed, index = (int(v) for v in uri.removeprefix("demo://").split("/"))
                return demo_clip(index, seed).audio
            if uri.startswith("tar://"):
                tar_uri, member = uri.removeprefix("tar://").split("#", 1)
                return self._member(tar_uri, member)
            return open_storage(uri).read_bytes(uri)
        except AudioRejected:
            raise
        except _READ_ERRORS as exc:
            raise _rejected(uri, exc) from exc

    def _tar(self, tar_uri: str) -> tuple[BinaryIO, dict[str, TarMember]]:
        got = self._tars.get(tar_uri)
        if got is None:
            try:
                fh = open_storage(tar_uri).open_read(tar_uri, random_access=True)
                try:
                    got = (fh, index_tar(fh))
                except BaseException:
                    fh.close()
                    raise
            except _READ_ERRORS as exc:  # remembered: a bad tar is not reopened for each of its clips
                got = _rejected(f"tar://{tar_uri}", exc)
            self._tars[tar_uri] = got
        if isinstance(got, AudioRejected):
            raise AudioRejected(got.reason, got.detail)
        return got

    def _member(self, tar_uri: str, member: str) -> bytes:
        fh, index = self._tar(tar_uri)
        where = index.get(member)
        if where is None:
            raise AudioRejected("unreadable", f"{member} is not a file in {tar_uri}")
        fh.seek(where.offset)
        data = fh.read(where.size)
        if len(data) != where.size:
            raise AudioRejected("unreadable", f"{tar_uri} ends inside {member}")
        return data

    def close(self) -> None:
        for got in self._tars.values():
            if not isinstance(got, AudioRejected):
                got[0].close()
        self._tars.clear()

    def __enter__(self) -> ClipAudio:
        return self

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.close()


def read_audio(uri: str) -> bytes:
    """Bytes of the audio at one ``uri`` (a batch of clips should share one ``ClipAudio``)."""
    with ClipAudio() as audio:
        return audio.read(uri)
