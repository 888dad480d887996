"""Freesound as packed by LAION-Audio-630K: WebDataset tars of ``<key>.flac`` + ``<key>.json``.

The json's ``text`` (a string or a list) gives the captions; ``tag`` words are used only when
there is no text. Audio stays inside the tar and is read on demand through a ``tar://`` URI.
"""

from __future__ import annotations

import json
import tarfile
from pathlib import Path

from schemas.sources import SourceClip, SourceReject
from tasks.errors import SpatialAudioCapsError

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


def read(input_path: Path) -> tuple[list[SourceClip], list[SourceReject]]:
    tars = [input_path] if input_path.suffix == ".tar" else sorted(input_path.rglob("*.tar"))
    if not tars:
        raise SpatialAudioCapsError(f"no .tar shards under {input_path}")
    clips: list[SourceClip] = []
    rejects: list[SourceReject] = []
    for tar_path in tars:
        try:
            with tarfile.open(tar_path) as tar:
                members = {m.name: m for m in tar.getmembers() if m.isfile()}
                keys = sorted({name.rsplit(".", 1)[0] for name in members})
                for key in keys:
                    audio = next((key + e for e in AUDIO_EXT if key + e in members), None)
                    clip_id = f"{tar_path.stem}/{key}"
                    try:
                        f = tar.extractfile(members[key + ".json"]) if key + ".json" in members else None
                        meta = json.loads(f.read()) if f else {}
                    except (tarfile.TarError, OSError, json.JSONDecodeError, UnicodeDecodeError) as exc:
                        rejects.append(_reject(clip_id, "corrupt_member", f"{key}.json: {exc}"))
                        continue
                    captions = _captions(meta) if isinstance(meta, dict) else ()
                    if audio is None:
                        rejects.append(_reject(clip_id, "audio_missing", f"no audio member for {key}"))
                    elif not captions:
                        rejects.append(_reject(clip_id, "no_caption", f"{key}.json has no text or tag"))
                    else:
                        clips.append(SourceClip(dataset="freesound", clip_id=clip_id, captions=captions,
                                                audio_uri=f"tar://{tar_path}#{audio}"))
        except (tarfile.TarError, OSError) as exc:
            rejects.append(_reject(tar_path.name, "corrupt_tar", str(exc)))
    return clips, rejects
