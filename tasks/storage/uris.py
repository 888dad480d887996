"""URI algebra for local paths and ``s3://bucket/key``: split, join, parent, and a log-safe form.

Nothing here opens anything; ``tasks.storage.backends.open_storage`` is the one place that
decides how a URI is opened.
"""

from __future__ import annotations

from pathlib import Path
from urllib.parse import urlparse, urlunparse

from tasks.storage.errors import StorageError


def safe_uri(uri: str) -> str:
    """A URI fit for logs and records: no query string, no userinfo."""
    p = urlparse(uri)
    if not p.scheme or len(p.scheme) == 1:  # plain or Windows path
        return uri
    netloc = p.hostname or ""
    if p.port:
        netloc += f":{p.port}"
    return urlunparse((p.scheme, netloc, p.path, "", "", ""))


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


def parent_uri(uri: str) -> str:
    """The directory holding ``uri`` (``s3://b/x`` for ``s3://b/x/y.csv``; ``.`` for a bare file name)."""
    if is_s3(uri):
        return uri.rstrip("/").rsplit("/", 1)[0]
    return str(local_path(uri).parent)


def resolve_uri(base_dir: str, ref: str) -> str:
    """``ref`` as written when it is absolute (s3:// or /path), else relative to ``base_dir``.

    Local results are spelled as ``Path`` joins them, so a relative CSV row keeps its old URI.
    """
    if is_s3(ref) or Path(ref).is_absolute():
        return ref
    return join_uri(base_dir, ref) if is_s3(base_dir) else str(local_path(base_dir) / ref)


def local_path(uri: str) -> Path:
    return Path(uri[7:]) if uri.startswith("file://") else Path(uri)
