"""The built-in demo corpus as a source (no files: audio is regenerated from the URI)."""

from __future__ import annotations

from schemas.sources import SourceClip
from tasks.demo_corpus import demo_clip

DEFAULT_CLIPS = 32


def read(count: int, seed: int) -> list[SourceClip]:
    """One clip at a time: the audio of each is synthesised for its captions and dropped at once
    (shard tasks regenerate it from the URI), so a large demo corpus costs no memory here."""
    clips = []
    for i in range(count):
        c = demo_clip(i, seed)
        clips.append(SourceClip(dataset="demo", clip_id=c.clip_id, captions=c.captions,
                                audio_uri=f"demo://{seed}/{i}"))
    return clips
