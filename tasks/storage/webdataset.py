"""How a plain ``webdataset.WebDataset`` opens our shards on S3 without credentials in the URL."""

from __future__ import annotations

import importlib
import shlex
import sys
from typing import Any, BinaryIO, Literal

from tasks.storage.backends import open_storage
from tasks.storage.config import StorageConfig
from tasks.storage.s3 import S3Storage
from tasks.storage.uris import is_s3, local_path


def webdataset_url(uri: str, how: Literal["pipe", "presigned", "aws-cli"] = "pipe") -> str:
    """A URL that a plain ``webdataset.WebDataset`` opens.

    ``pipe`` runs ``python -m tasks.storage cat`` (credentials from the environment; the URL holds
    none). ``presigned`` is an http(s) URL that webdataset fetches with curl: it holds the access
    key id and a signature, so never log or persist it. ``aws-cli`` is the form LAION-CLAP's own
    scripts use (``pipe:aws s3 cp ... -``).
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
    """Let webdataset open ``s3://`` URLs in-process through this layer (gopen_schemes['s3'])."""
    gopen = importlib.import_module("webdataset.gopen")  # the package re-exports a function of that name

    def _open(url: str, mode: str = "rb", bufsize: int = 8192, **_: Any) -> BinaryIO:
        if mode[0] != "r":
            raise ValueError("s3:// URLs are read-only through webdataset; write with tasks.commit")
        return open_storage(url, config).open_read(url)

    gopen.gopen_schemes["s3"] = _open
