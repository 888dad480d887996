"""One small reader per source dataset, all yielding SourceClip and SourceReject records.

``read_source`` dispatches on the source name; every file-based source takes a local path or an
``s3://`` URI. ``ClipAudio`` (one per shard task) and ``read_audio`` resolve a clip's audio URI.
"""

from __future__ import annotations

from pathlib import Path

from schemas.sources import SourceClip, SourceName, SourceReject
from tasks.errors import SpatialAudioCapsError
from tasks.sources import audiocaps, clotho, csv_generic, demo, freesound
from tasks.sources.audio_uri import ClipAudio, read_audio

__all__ = ["ClipAudio", "read_audio", "read_source"]


def read_source(
    source: SourceName, input_path: str | Path | None, *, limit: int | None = None, seed: int = 0
) -> tuple[list[SourceClip], list[SourceReject]]:
    """Clips and rejects of one source, deterministic order, at most ``limit`` clips."""
    if source == "demo":
        clips, rejects = demo.read(limit or demo.DEFAULT_CLIPS, seed), []
    elif input_path is None:
        raise SpatialAudioCapsError(f"source {source!r} needs an input path")
    elif source == "audiocaps":
        clips, rejects = audiocaps.read(str(input_path))
    elif source == "clotho":
        clips, rejects = clotho.read(str(input_path))
    elif source == "freesound":
        clips, rejects = freesound.read(str(input_path))
    elif source == "csv":
        clips, rejects = csv_generic.read(str(input_path))
    else:
        raise SpatialAudioCapsError(f"unknown source {source!r}")
    return (clips[:limit] if limit else clips), rejects
