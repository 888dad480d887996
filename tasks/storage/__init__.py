"""One storage interface for local paths and ``s3://`` URIs, split by concern.

- ``uris``: split, join, parent, log-safe URIs (nothing opens here).
- ``redaction``: credentials never reach a message or a library log record.
- ``digests``: sha256 whole and per multipart part, computed while a shard is written.
- ``base``: the ``Storage`` interface. Reading, opening and listing go through fsspec
  (s3fs for s3://, fsspec's local filesystem for paths), written once for both backends.
- ``local`` / ``s3``: how each backend writes and what its HEAD says. The verified upload stays on
  boto3 (multipart with our SHA-256 per-part checksums, size + sha256 verify): s3fs cannot send
  caller-computed part checksums (see ``tasks.storage.s3``).
- ``backends``: ``open_storage``, the one place that decides how a URI opens.
- ``webdataset``: URLs and a gopen hook for plain ``webdataset.WebDataset`` readers.
- ``__main__``: ``python -m tasks.storage cat URI`` streams an object to stdout (the ``pipe:``
  URL ``webdataset_url`` makes).

Credentials come from the standard AWS environment only (AWS_ENDPOINT_URL, the credential chain),
identically for the boto3 and the s3fs client; they are never parameters or log text.
"""

from __future__ import annotations

from tasks.storage.backends import clear_storage_cache, open_storage
from tasks.storage.base import ObjectInfo, Storage, Verification
from tasks.storage.config import StorageConfig
from tasks.storage.digests import Digest, HashingWriter, digest_file, part_size_for
from tasks.storage.errors import ObjectMissing, StorageError
from tasks.storage.local import LocalStorage
from tasks.storage.redaction import RedactingFilter, install_log_redaction, redact, register_secrets
from tasks.storage.s3 import S3Storage
from tasks.storage.uris import is_s3, join_uri, local_path, parent_uri, resolve_uri, safe_uri, split_s3
from tasks.storage.webdataset import register_webdataset_s3, webdataset_url

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
    "parent_uri",
    "part_size_for",
    "redact",
    "register_secrets",
    "register_webdataset_s3",
    "resolve_uri",
    "safe_uri",
    "split_s3",
    "webdataset_url",
]
