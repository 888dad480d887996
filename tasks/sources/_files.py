"""Shared helpers of the file-based readers: audio lookup in a directory, CSV loading."""

from __future__ import annotations

from pathlib import Path

import pandas as pd

from tasks.errors import SpatialAudioCapsError

AUDIO_SUFFIXES = (".wav", ".flac", ".mp3", ".ogg")


def audio_index(directory: Path) -> dict[str, Path]:
    """Every audio file under ``directory`` by its file name and by its stem."""
    if not directory.is_dir():
        raise SpatialAudioCapsError(f"audio directory {directory} does not exist")
    index: dict[str, Path] = {}
    for p in sorted(directory.rglob("*")):
        if p.suffix.lower() in AUDIO_SUFFIXES:
            index.setdefault(p.name, p)
            index.setdefault(p.stem, p)
    return index


def read_csv(path: Path, required: list[str]) -> pd.DataFrame:
    """A caption CSV with its required columns checked, every value as a string."""
    try:
        df = pd.read_csv(path, dtype=str, keep_default_na=False)
    except (OSError, pd.errors.ParserError, UnicodeDecodeError) as exc:
        raise SpatialAudioCapsError(f"cannot read caption CSV {path}: {exc}") from exc
    missing = [c for c in required if c not in df.columns]
    if missing:
        raise SpatialAudioCapsError(f"{path} lacks columns {missing} (has {list(df.columns)})")
    return df
