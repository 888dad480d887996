"""AudioCaps: the official CSVs (audiocap_id,youtube_id,start_time,caption) plus an audio directory.

``input`` (a local path or an ``s3://`` URI) is a directory holding ``{train,val,test}.csv`` (or
one CSV) and the audio, either beside the CSVs or in ``audio/``. Audio files may be named by
YouTube id, ``Y<id>``, ``<id>_<start>`` or the audiocap id, as the common download scripts do.
Val and test list five captions per clip; they are grouped into one clip.
"""

from __future__ import annotations

from pathlib import PurePosixPath

from schemas.sources import SourceClip, SourceReject
from tasks.sources._files import audio_index, list_files, read_csv
from tasks.storage import join_uri, parent_uri

COLUMNS = ["audiocap_id", "youtube_id", "start_time", "caption"]
SPLITS = {"train": "train", "val": "val", "test": "test"}


def read(input_uri: str) -> tuple[list[SourceClip], list[SourceReject]]:
    is_csv = PurePosixPath(input_uri).suffix == ".csv"
    root = parent_uri(input_uri) if is_csv else input_uri
    files = list_files(root)
    present = set(files)
    csvs = [input_uri] if is_csv else [
        join_uri(root, f"{name}.csv") for name in SPLITS if join_uri(root, f"{name}.csv") in present
    ]
    audio_dir, index = audio_index(root, files)
    clips: list[SourceClip] = []
    rejects: list[SourceReject] = []
    for csv in csvs:
        split = SPLITS.get(PurePosixPath(csv).stem)
        df = read_csv(csv, COLUMNS)
        for (yt, start), group in df.groupby(["youtube_id", "start_time"], sort=True):
            clip_id = f"{yt}_{start}"
            names = [yt, f"Y{yt}", clip_id, *group["audiocap_id"]]
            uri = next((index[n] for n in names if n in index), None)
            captions = tuple(c.strip() for c in group["caption"] if c.strip())
            if uri is None:
                rejects.append(SourceReject(dataset="audiocaps", clip_id=clip_id, reason="audio_missing",
                                            detail=f"no audio named {yt} / Y{yt} / {clip_id} in {audio_dir}"))
            elif not captions:
                rejects.append(SourceReject(dataset="audiocaps", clip_id=clip_id, reason="no_caption",
                                            detail="every caption of this clip is empty"))
            else:
                clips.append(SourceClip(dataset="audiocaps", clip_id=clip_id, captions=captions,
                                        audio_uri=uri, source_split=split))
    return clips, rejects
