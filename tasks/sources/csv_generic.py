"""Generic CSV: ``path,caption[,caption...]``; relative paths are resolved against the CSV.

The CSV and the audio it names may each be a local path or an ``s3://`` URI.
"""

from __future__ import annotations

import csv as csv_module
from pathlib import PurePosixPath

from schemas.sources import SourceClip, SourceReject
from tasks.errors import SpatialAudioCapsError
from tasks.storage import StorageError, open_storage, parent_uri, resolve_uri


def read(input_uri: str) -> tuple[list[SourceClip], list[SourceReject]]:
    try:
        text = open_storage(input_uri).read_bytes(input_uri).decode("utf-8", errors="replace")
    except StorageError as exc:
        raise SpatialAudioCapsError(f"cannot read {input_uri}: {exc}") from exc
    rows = list(csv_module.reader(text.splitlines()))
    if rows and rows[0] and rows[0][0].strip().lower() == "path":
        rows = rows[1:]
    base = parent_uri(input_uri)
    clips: list[SourceClip] = []
    rejects: list[SourceReject] = []
    for n, row in enumerate(rows):
        if not row or not row[0].strip():
            continue
        uri = resolve_uri(base, row[0].strip())
        clip_id = f"{n:06d}-{PurePosixPath(uri).stem}"
        captions = tuple(c.strip() for c in row[1:] if c.strip())
        if not open_storage(uri).exists(uri):
            rejects.append(SourceReject(dataset="csv", clip_id=clip_id, reason="audio_missing",
                                        detail=f"{uri} does not exist"))
        elif not captions:
            rejects.append(SourceReject(dataset="csv", clip_id=clip_id, reason="no_caption",
                                        detail=f"row {n + 1} has no caption"))
        else:
            clips.append(SourceClip(dataset="csv", clip_id=clip_id, captions=captions, audio_uri=uri))
    return clips, rejects
