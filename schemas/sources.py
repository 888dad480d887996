"""Source clips: what every dataset reader yields, whatever the corpus looked like on disk."""

from __future__ import annotations

from typing import Literal

from pydantic import BaseModel, ConfigDict, Field

SourceName = Literal["demo", "audiocaps", "clotho", "freesound", "csv"]


class SourceClip(BaseModel):
    """One clip and its original captions; audio is fetched lazily from ``audio_uri``.

    ``audio_uri`` is a local path, an ``s3://`` URI, ``tar://<tar path>#<member>`` for
    WebDataset-packed corpora, or ``demo://<seed>/<index>`` for the built-in demo corpus.
    """

    model_config = ConfigDict(frozen=True, extra="forbid")

    dataset: str
    clip_id: str = Field(min_length=1)
    captions: tuple[str, ...]
    audio_uri: str
    source_split: Literal["train", "val", "test"] | None = None


class SourceReject(BaseModel):
    """An input that never became a clip (missing audio, unreadable row), with the reason."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    dataset: str
    clip_id: str
    stage: str = "source"
    reason: str
    detail: str
