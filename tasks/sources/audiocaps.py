"""AudioCaps: the official CSVs (audiocap_id,youtube_id,start_time,caption) plus an audio directory.

``input`` is a directory holding ``{train,val,test}.csv`` (or one CSV) and the audio, either
beside the CSVs or in ``audio/``. Audio files may be named by YouTube id, ``Y<id>``,
``<id>_<start>`` or the audiocap id, as the common download scripts do. Val and test list five
captions per clip; they are grouped into one clip.
"""

from __future__ import annotations

from pathlib import Path

from schemas.sources import SourceClip, SourceReject
from tasks.sources._files import audio_index, read_csv

COLUMNS = ["audiocap_id", "youtube_id", "start_time", "caption"]
SPLITS = {"train": "train", "val": "val", "test": "test"}


def read(input_path: Path) -> tuple[list[SourceClip], list[SourceReject]]:
    csvs = [input_path] if input_path.suffix == ".csv" else [
        input_path / f"{name}.csv" for name in SPLITS if (input_path / f"{name}.csv").exists()
    ]
    root = input_path.parent if input_path.suffix == ".csv" else input_path
    audio_dir = root / "audio" if (root / "audio").is_dir() else root
    index = audio_index(audio_dir)
    clips: list[SourceClip] = []
    rejects: list[SourceReject] = []
    for csv in csvs:
        split = SPLITS.get(csv.stem)
        df = read_csv(csv, COLUMNS)
        for (yt, start), group in df.groupby(["youtube_id", "start_time"], sort=True):
            clip_id = f"{yt}_{start}"
            names = [yt, f"Y{yt}", clip_id, *group["audiocap_id"]]
            path = next((index[n] for n in names if n in index), None)
            captions = tuple(c.strip() for c in group["caption"] if c.strip())
            if path is None:
                rejects.append(SourceReject(dataset="audiocaps", clip_id=clip_id, reason="audio_missing",
                                            detail=f"no audio named {yt} / Y{yt} / {clip_id} in {audio_dir}"))
            elif not captions:
                rejects.append(SourceReject(dataset="audiocaps", clip_id=clip_id, reason="no_caption",
                                            detail="every caption of this clip is empty"))
            else:
                clips.append(SourceClip(dataset="audiocaps", clip_id=clip_id, captions=captions,
                                        audio_uri=str(path), source_split=split))
    return clips, rejects
