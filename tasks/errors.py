"""Typed errors raised at stage boundaries, so callers never see a numpy traceback."""

from __future__ import annotations

from collections.abc import Mapping
from typing import TypeVar

T = TypeVar("T")


class SpatialAudioCapsError(ValueError):
    """Base class: bad input that the pipeline can name."""


class InvalidRoomError(SpatialAudioCapsError):
    """A room or placement that cannot exist (negative size, source outside, absorption > 1)."""


class UnreachableT30Error(InvalidRoomError):
    """The target T30 cannot be reached in this room with physical absorption."""


class InvalidSceneError(SpatialAudioCapsError):
    """A scene config or drawn scene that cannot be rendered (no source, intervals past the clip,
    a trajectory that leaves the room)."""


class AudioRejected(SpatialAudioCapsError):
    """An input clip that cannot be used; ``reason`` is a short code recorded in rejects.parquet."""

    def __init__(self, reason: str, detail: str) -> None:
        super().__init__(f"{reason}: {detail}")
        self.reason = reason
        self.detail = detail


class LayoutError(SpatialAudioCapsError):
    """Audio whose channel count does not fit the format it claims (tasks/renderers.py); here so
    that renderer modules the registry imports can raise it without importing the registry."""


class UnknownComponentError(SpatialAudioCapsError):
    """A room source, renderer or shard writer name that no registry entry has."""


def registered(registry: Mapping[str, T], name: str, kind: str) -> T:
    """The entry called ``name`` of a seam registry (RIR_SOURCES, RENDERERS, WRITERS); a typed
    error that lists the registered names otherwise, so a config typo names its alternatives."""
    try:
        return registry[name]
    except KeyError:
        raise UnknownComponentError(f"no {kind} {name!r}; registered: {sorted(registry)}") from None
