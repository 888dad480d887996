"""Typed errors raised at stage boundaries, so callers never see a numpy traceback."""

from __future__ import annotations


class SpatialAudioCapsError(ValueError):
    """Base class: bad input that the pipeline can name."""


class InvalidRoomError(SpatialAudioCapsError):
    """A room or placement that cannot exist (negative size, source outside, absorption > 1)."""


class UnreachableT30Error(InvalidRoomError):
    """The target T30 cannot be reached in this room with physical absorption."""


class AudioRejected(SpatialAudioCapsError):
    """An input clip that cannot be used; ``reason`` is a short code recorded in rejects.parquet."""

    def __init__(self, reason: str, detail: str) -> None:
        super().__init__(f"{reason}: {detail}")
        self.reason = reason
        self.detail = detail
