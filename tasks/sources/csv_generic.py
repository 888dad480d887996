"""Generic CSV: ``path,caption[,caption...]``; relative paths are resolved against the CSV."""

from __future__ import annotations

import csv as csv_module
from pathlib import Path

from schemas.sources import SourceClip, SourceReject
from tasks.errors import SpatialAudioCapsError


def read(input_path: Path) -> tuple[list[SourceClip], list[SourceReject]]:
    try:
        rows = list(csv_module.reader(input_path.read_text(encoding="utf-8", errors="replace").splitlines()))
    except OSError as exc:
        raise SpatialAudioCapsError(f"cannot read {input_path}: {exc}") from exc
    if rows and rows[0] and rows[0][0].strip().lower() == "path":
        rows = rows[1:]
    clips: list[SourceClip] = []
    rejects: list[SourceReject] = []
    for n, row in enumerate(rows):
        if not row or not row[0].strip():
            continue
        path = Path(row[0].strip())
        path = path if path.is_absolute() else input_path.parent / path
        clip_id = f"{n:06d}-{path.stem}"
        captions = tuple(c.strip() for c in row[1:] if c.strip())
        if not path.exists():
            rejects.append(SourceReject(dataset="csv", clip_id=clip_id, reason="audio_missing",
                                        detail=f"{path} does not exist"))
        elif not captions:
            rejects.append(SourceReject(dataset="csv", clip_id=clip_id, reason="no_caption",
                                        detail=f"row {n + 1} has no caption"))
        else:
            clips.append(SourceClip(dataset="csv", clip_id=clip_id, captions=captions, audio_uri=str(path)))
    return clips, rejects
