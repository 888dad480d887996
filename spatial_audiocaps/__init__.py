"""spatial-audiocaps: spatial audio-caption data engine (ELSA-style)."""

__version__ = "0.1.0"
