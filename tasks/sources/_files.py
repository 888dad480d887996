"""Shared helpers of the file-based readers: listing a source's root, audio lookup, CSV loading.

Every input is a URI, a local path or ``s3://``, listed and read through ``tasks.storage``, so a
reader works on either without knowing which it got.
"""

from __future__ import annotations

from pathlib import PurePosixPath

import pandas as pd

from tasks.errors import SpatialAudioCapsError
from tasks.storage import StorageError, join_uri, open_storage

AUDIO_SUFFIXES = (".wav", ".flac", ".mp3", ".ogg")


def list_files(root: str) -> list[str]:
    """Every file under the directory ``root`` (recursively), sorted; [] when there is none."""
    return [o.uri for o in open_storage(root).list(join_uri(root, "") + "/")]


def files_in(root: str, files: list[str]) -> list[str]:
    """Those of ``files`` that lie directly in ``root`` (not in a subdirectory)."""
    prefix = join_uri(root, "") + "/"
    return [u for u in files if u.startswith(prefix) and "/" not in u[len(prefix):]]


def audio_index(root: str, files: list[str]) -> tuple[str, dict[str, str]]:
    """The audio directory (``root/audio`` when it holds files, else ``root``) and every audio
    file under it by its file name and by its stem."""
    if not files:
        raise SpatialAudioCapsError(f"audio directory {root} does not exist or is empty")
    audio_dir = join_uri(root, "audio")
    under_audio = [u for u in files if u.startswith(audio_dir + "/")]
    directory, candidates = (audio_dir, under_audio) if under_audio else (root, files)
    index: dict[str, str] = {}
    for uri in candidates:
        p = PurePosixPath(uri)
        if p.suffix.lower() in AUDIO_SUFFIXES:
            index.setdefault(p.name, uri)
            index.setdefault(p.stem, uri)
    return directory, index


def read_csv(uri: str, required: list[str]) -> pd.DataFrame:
    """A caption CSV with its required columns checked, every value as a string."""
    try:
        with open_storage(uri).open_read(uri) as fh:
            df = pd.read_csv(fh, dtype=str, keep_default_na=False)
    except (StorageError, pd.errors.ParserError, UnicodeDecodeError) as exc:
        raise SpatialAudioCapsError(f"cannot read caption CSV {uri}: {exc}") from exc
    missing = [c for c in required if c not in df.columns]
    if missing:
        raise SpatialAudioCapsError(f"{uri} lacks columns {missing} (has {list(df.columns)})")
    return df
