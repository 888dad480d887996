"""Resolve a clip's audio URI to bytes: local files, s3://, tar members, the demo corpus."""

from __future__ import annotations

import tarfile
from pathlib import Path

from tasks.demo_corpus import demo_clip
from tasks.errors import AudioRejected


def read_audio(uri: str) -> bytes:
    """Bytes of the audio at ``uri``; a missing or unreadable one is an AudioRejected."""
    try:
        if uri.startswith("demo://"):
            seed, index = (int(v) for v in uri.removeprefix("demo://").split("/"))
            return demo_clip(index, seed).audio
        if uri.startswith("s3://"):
            from tasks.storage import open_storage  # the object-storage layer

            return open_storage(uri).read_bytes(uri)
        if uri.startswith("tar://"):
            tar_path, member = uri.removeprefix("tar://").split("#", 1)
            with tarfile.open(tar_path) as tar:
                f = tar.extractfile(member)
                if f is None:
                    raise AudioRejected("unreadable", f"{member} is not a file in {tar_path}")
                return f.read()
        return Path(uri).read_bytes()
    except AudioRejected:
        raise
    except FileNotFoundError as exc:
        raise AudioRejected("audio_missing", f"{uri}: {exc.strerror or exc}") from exc
    except (OSError, KeyError, ValueError, tarfile.TarError) as exc:
        raise AudioRejected("unreadable", f"{uri}: {exc}") from exc
