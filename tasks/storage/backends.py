"""``open_storage``: the one place that decides how a URI is opened (s3:// or a local path)."""

from __future__ import annotations

import threading

from tasks.storage.base import Storage
from tasks.storage.config import StorageConfig
from tasks.storage.local import LocalStorage
from tasks.storage.s3 import S3Storage
from tasks.storage.uris import is_s3

_cache: dict[tuple[str, StorageConfig], Storage] = {}
_cache_lock = threading.Lock()


def open_storage(uri: str, config: StorageConfig | None = None, *, fresh: bool = False) -> Storage:
    """The backend for ``uri`` (one set of S3 clients per config and process, unless ``fresh``)."""
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
