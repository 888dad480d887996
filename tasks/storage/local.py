"""Plain files: reads and listings through fsspec's local filesystem, atomic writes by rename."""

from __future__ import annotations

import os
import tempfile
from collections.abc import Callable
from pathlib import Path
from typing import IO

from fsspec.implementations.local import LocalFileSystem

from tasks.storage.base import ObjectInfo, Storage, Upload
from tasks.storage.config import READ_CHUNK, StorageConfig
from tasks.storage.digests import Digest
from tasks.storage.errors import StorageError
from tasks.storage.uris import join_uri, local_path

PARTIAL = ".partial"  # suffix of a write in progress: never listed


class LocalStorage(Storage):
    """Plain files. Writes go to a sibling temporary file, fsync, then os.replace (atomic)."""

    def __init__(self, config: StorageConfig | None = None) -> None:
        self.config = config or StorageConfig()
        self.fs = LocalFileSystem()

    def fs_path(self, uri: str) -> str:
        return str(local_path(uri))

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
        return ObjectInfo(uri=uri, size=st.st_size, modified_ns=st.st_mtime_ns)

    def _atomic_write(self, uri: str, writer: Callable[[IO[bytes]], None]) -> None:
        dest = local_path(uri)
        try:
            dest.parent.mkdir(parents=True, exist_ok=True)
            fd, tmp = tempfile.mkstemp(prefix=f".{dest.name}.", suffix=PARTIAL, dir=dest.parent)
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

    def _upload(self, job: Upload) -> None:
        def copy(fh: IO[bytes]) -> None:
            with open(job.path, "rb") as src:
                while chunk := src.read(READ_CHUNK):
                    fh.write(chunk)
                    if job.progress:
                        job.progress(len(chunk))

        self._atomic_write(job.uri, copy)

    def list(self, prefix: str) -> list[ObjectInfo]:
        """Files under the directory ``prefix`` (or ``prefix`` itself when it is a file).

        URIs keep the caller's spelling of the prefix (relative, absolute, file://), so a source
        listed from a relative path yields relative URIs, as before.
        """
        root = self.fs_path(prefix)
        try:
            found = self.fs.find(root, detail=True)
        except OSError as e:
            raise StorageError(f"listing {root}: {e}") from e
        absolute = os.path.abspath(root)  # fsspec reports absolute paths
        out = []
        for path, meta in found.items():
            if meta.get("type") != "file" or path.endswith(PARTIAL):
                continue
            rel = os.path.relpath(path, absolute)
            uri = prefix if rel == "." else join_uri(prefix, rel)
            out.append(ObjectInfo(uri=uri, size=int(meta["size"])))
        return sorted(out, key=lambda o: o.uri)

    def delete(self, uri: str) -> None:
        local_path(uri).unlink(missing_ok=True)

    def expected_checksum(self, digest: Digest) -> str | None:
        return None  # a file keeps no checksum: verify re-reads it
