"""The storage layer's typed errors; every message is redacted before it is raised."""

from __future__ import annotations

from tasks.errors import SpatialAudioCapsError


class StorageError(SpatialAudioCapsError):
    """A storage operation failed (after the client's retries); the message is redacted."""


class ObjectMissing(StorageError):
    """The object does not exist."""
