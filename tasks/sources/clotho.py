"""Clotho: the CSV ``file_name,caption_1..caption_5`` plus an audio directory (5 captions a clip).

``input`` is a caption CSV (audio beside it or in ``audio/``) or a directory of
``clotho_captions_{development,validation,evaluation}.csv`` files, mapped to train/val/test.
"""

from __future__ import annotations

from pathlib import Path

from schemas.sources import SourceClip, SourceReject
from tasks.sources._files import audio_index, read_csv

SPLITS = {"development": "train", "validation": "val", "evaluation": "test"}
CAPTIONS = [f"caption_{i}" for i in range(1, 6)]


def _split_of(csv: Path) -> str | None:
    return next((split for key, split in SPLITS.items() if key in csv.stem), None)


def read(input_path: Path) -> tuple[list[SourceClip], list[SourceReject]]:
    csvs = [input_path] if input_path.suffix == ".csv" else sorted(input_path.glob("*.csv"))
    root = input_path.parent if input_path.suffix == ".csv" else input_path
    index = audio_index(root / "audio" if (root / "audio").is_dir() else root)
    clips: list[SourceClip] = []
    rejects: list[SourceReject] = []
    for csv in csvs:
        df = read_csv(csv, ["file_name", *CAPTIONS])
        for row in df.itertuples(index=False):
            name = row.file_name
            captions = tuple(c.strip() for c in (getattr(row, col) for col in CAPTIONS) if c.strip())
            path = index.get(name)
            if path is None:
                rejects.append(SourceReject(dataset="clotho", clip_id=name, reason="audio_missing",
                                            detail=f"{name} not found beside {csv.name}"))
            elif not captions:
                rejects.append(SourceReject(dataset="clotho", clip_id=name, reason="no_caption",
                                            detail="all five captions are empty"))
            else:
                clips.append(SourceClip(dataset="clotho", clip_id=Path(name).stem, captions=captions,
                                        audio_uri=str(path), source_split=_split_of(csv)))
    return clips, rejects
