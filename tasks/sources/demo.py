"""The built-in demo corpus as a source (no files: audio is regenerated from the URI)."""

from __future__ import annotations

from schemas.sources import SourceClip
from tasks.demo_corpus import demo_clips

DEFAULT_CLIPS = 32


def read(count: int, seed: int) -> list[SourceClip]:
    return [
        SourceClip(dataset="demo", clip_id=c.clip_id, captions=c.captions, audio_uri=f"demo://{seed}/{i}")
        for i, c in enumerate(demo_clips(count, seed))
    ]
