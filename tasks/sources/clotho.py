"""Clotho: the CSV ``file_name,caption_1..caption_5`` plus an audio directory (5 captions a clip).

``input`` is a caption CSV (audio beside it or in ``audio/``) or a directory of
``clotho_captions_{development,validation,evaluation}.csv`` files, mapped to train/val/test;
either a local path or an ``s3://`` URI.
"""

from __future__ import annotations

from pathlib import PurePosixPath

from schemas.sources import SourceClip, SourceReject
from tasks.sources._files import audio_index, files_in, list_files, read_csv
from tasks.storage import parent_uri

SPLITS = {"development": "train", "validation": "val", "evaluation": "test"}
CAPTIONS = [f"caption_{i}" for i in range(1, 6)]


def _split_of(csv: str) -> str | None:
    return next((split for key, split in SPLITS.items() if key in PurePosixPath(csv).stem), None)


def read(input_uri: str) -> tuple[list[SourceClip], list[SourceReject]]:
    is_csv = PurePosixPath(input_uri).suffix == ".csv"
    root = parent_uri(input_uri) if is_csv else input_uri
    files = list_files(root)
    csvs = [input_uri] if is_csv else [u for u in files_in(root, files) if u.endswith(".csv")]
    _, index = audio_index(root, files)
    clips: list[SourceClip] = []
    rejects: list[SourceReject] = []
    for csv in csvs:
        df = read_csv(csv, ["file_name", *CAPTIONS])
        for row in df.itertuples(index=False):
            name = row.file_name
            captions = tuple(c.strip() for c in (getattr(row, col) for col in CAPTIONS) if c.strip())
            uri = index.get(name)
            if uri is None:
                rejects.append(SourceReject(dataset="clotho", clip_id=name, reason="audio_missing",
                                            detail=f"{name} not found beside {PurePosixPath(csv).name}"))
            elif not captions:
                rejects.append(SourceReject(dataset="clotho", clip_id=name, reason="no_caption",
                                            detail="all five captions are empty"))
            else:
                clips.append(SourceClip(dataset="clotho", clip_id=PurePosixPath(name).stem, captions=captions,
                                        audio_uri=uri, source_split=_split_of(csv)))
    return clips, rejects
