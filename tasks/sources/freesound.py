"""Freesound as packed by LAION-Audio-630K: WebDataset tars of ``<key>.flac`` + ``<key>.json``.

The json's ``text`` (a string or a list) gives the captions; ``tag`` words are used only when
there is no text. Audio stays inside the tar and is read on demand through a ``tar://`` URI.
``input`` is a tar or a directory of tars, local or ``s3://``; tars are read uncompressed and
seekably (only headers and json members are fetched), as ``ClipAudio`` later reads them.
"""

from __future__ import annotations

import json
import tarfile
from pathlib import PurePosixPath

from schemas.sources import SourceClip, SourceReject
from tasks.errors import SpatialAudioCapsError
from tasks.sources._files import list_files
from tasks.storage import StorageError, open_storage

AUDIO_EXT = (".flac", ".wav", ".mp3", ".ogg")


def _captions(meta: dict) -> tuple[str, ...]:
    text = meta.get("text")
    texts = [text] if isinstance(text, str) else list(text or [])
    captions = tuple(t.strip() for t in texts if isinstance(t, str) and t.strip())
    if not captions and meta.get("tag"):
        tags = meta["tag"] if isinstance(meta["tag"], list) else [meta["tag"]]
        captions = (", ".join(str(t) for t in tags),)
    return captions


def _reject(clip_id: str, reason: str, detail: str) -> SourceReject:
    return SourceReject(dataset="freesound", clip_id=clip_id, reason=reason, detail=detail)


def _read_tar(tar_uri: str, tar: tarfile.TarFile) -> tuple[list[SourceClip], list[SourceReject]]:
    clips: list[SourceClip] = []
    rejects: list[SourceReject] = []
    members = {m.name: m for m in tar.getmembers() if m.isfile()}
    keys = sorted({name.rsplit(".", 1)[0] for name in members})
    for key in keys:
        audio = next((key + e for e in AUDIO_EXT if key + e in members), None)
        clip_id = f"{PurePosixPath(tar_uri).stem}/{key}"
        try:
            f = tar.extractfile(members[key + ".json"]) if key + ".json" in members else None
            meta = json.loads(f.read()) if f else {}
        except (tarfile.TarError, OSError, StorageError, json.JSONDecodeError, UnicodeDecodeError) as exc:
            rejects.append(_reject(clip_id, "corrupt_member", f"{key}.json: {exc}"))
            continue
        captions = _captions(meta) if isinstance(meta, dict) else ()
        if audio is None:
            rejects.append(_reject(clip_id, "audio_missing", f"no audio member for {key}"))
        elif not captions:
            rejects.append(_reject(clip_id, "no_caption", f"{key}.json has no text or tag"))
        else:
            clips.append(SourceClip(dataset="freesound", clip_id=clip_id, captions=captions,
                                    audio_uri=f"tar://{tar_uri}#{audio}"))
    return clips, rejects


def read(input_uri: str) -> tuple[list[SourceClip], list[SourceReject]]:
    is_tar = PurePosixPath(input_uri).suffix == ".tar"
    tars = [input_uri] if is_tar else [u for u in list_files(input_uri) if PurePosixPath(u).suffix == ".tar"]
    if not tars:
        raise SpatialAudioCapsError(f"no .tar shards under {input_uri}")
    clips: list[SourceClip] = []
    rejects: list[SourceReject] = []
    for tar_uri in tars:
        try:
            with (open_storage(tar_uri).open_read(tar_uri, random_access=True) as fh,
                  tarfile.open(fileobj=fh, mode="r:") as tar):
                got, bad = _read_tar(tar_uri, tar)
        except (tarfile.TarError, OSError, StorageError) as exc:
            rejects.append(_reject(PurePosixPath(tar_uri).name, "corrupt_tar", str(exc)))
            continue
        clips += got
        rejects += bad
    return clips, rejects
