"""Renderers: the seam between a sample's ambisonic scene and the audio its shard carries.

The scene of a spatial sample is the prepared mono clip convolved with its ambiX RIR
((order + 1)^2 channels, ACN/SN3D, from any room source). A ``Renderer`` turns that scene into
the channels of one output format and declares three things the rest of the pipeline must not
guess:

- ``name``: the format, written as ``AudioInfo.format`` in every sample's json;
- the channel layout: how many channels it outputs and whether they are ambisonic (the order
  recorded in ``AudioInfo.ambisonic_order``), checked when a sample is built and when it is read;
- ``level_channels``: the channels whose RMS sets the sample's one gain (one gain for every
  channel keeps the inter-channel ratios that carry direction): W for ambiX; both ears would be
  the reference of a binaural renderer.

The non-spatial original is the ``mono`` renderer of the dry clip. A new output format (issue
14's binaural and tetrahedral-mic renders) is one class here plus a ``RENDERERS`` entry.
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import Protocol

import numpy as np

from schemas.shards import AMBIX_FORMAT, FOA_FORMAT, MONO_FORMAT, AudioInfo
from tasks.ambisonics import order_of
from tasks.binaural import Binaural
from tasks.capture_chain import Tetra
from tasks.errors import LayoutError, UnknownComponentError, registered
from tasks.mic_array import TetraMic


class Renderer(Protocol):
    """One output format of a sample."""

    name: str
    """``AudioInfo.format``; the registry key."""
    spatial: bool
    """True: renders an ambiX scene (a spatial sample). False: the dry clip (a non-spatial original)."""
    level_channels: tuple[int, ...]
    """Output channels whose RMS is levelled to the target (tasks.audio_prep.normalise_level)."""

    identity: str | None
    """What the output depends on beyond the scene, recorded in ``AudioInfo.renderer_id`` (a
    binaural render's HRTF set and decoder, a mic render's array model); None for ambiX and mono,
    whose output is the scene itself."""

    def render(self, scene: np.ndarray, fs: int) -> np.ndarray:
        """(scene channels, N) float32 at ``fs`` Hz -> (output channels, N)."""
        ...

    def ambisonic_order(self, channels: int) -> int | None:
        """``AudioInfo.ambisonic_order`` of output with this many channels (None: not ambisonic);
        raises LayoutError when the format cannot have that many channels."""
        ...


class _AsIs:
    """A format whose audio is its input as it is, once the channel count fits the layout."""

    def ambisonic_order(self, channels: int) -> int | None:
        raise NotImplementedError

    identity = None

    def render(self, scene: np.ndarray, fs: int) -> np.ndarray:
        self.ambisonic_order(int(scene.shape[0]))
        return scene


class Ambix(_AsIs):
    """ambiX order N (ACN/SN3D), (N+1)^2 channels: the scene itself, levelled on W."""

    name = AMBIX_FORMAT
    spatial = True
    level_channels = (0,)

    def ambisonic_order(self, channels: int) -> int | None:
        return order_of(channels, "ambiX")


class FirstOrder:
    """FOA: the first four channels (W, Y, Z, X) of an ambiX scene of any order, levelled on W.

    The ``.flac`` member LAION-CLAP-style loaders expect, even when the build renders the scene at
    a higher order for its binaural and mic members (which need order 3 to be accurate: see
    tasks/binaural.py and tasks/mic_array.py). ACN/SN3D truncation is exact: a higher-order scene's
    first four channels are the FOA scene."""

    name = FOA_FORMAT
    spatial = True
    level_channels = (0,)
    identity = None

    def render(self, scene: np.ndarray, fs: int) -> np.ndarray:
        if order_of(int(scene.shape[0]), "FOA's scene") < 1:
            raise LayoutError(f"FOA needs an ambiX scene of order >= 1, got {scene.shape[0]} channel(s)")
        return scene[:4]

    def ambisonic_order(self, channels: int) -> int | None:
        if channels != 4:
            raise LayoutError(f"FOA has 4 channels, got {channels}")
        return 1


class Mono(_AsIs):
    """The dry clip as it is: one channel, the non-spatial original of a clip."""

    name = MONO_FORMAT
    spatial = False
    level_channels = (0,)

    def ambisonic_order(self, channels: int) -> int | None:
        if channels != 1:
            raise LayoutError(f"a mono original has 1 channel, got {channels}")
        return None


DEFAULT_RENDERER = Ambix.name
RENDERERS: dict[str, Renderer] = {
    r.name: r for r in (Ambix(), FirstOrder(), Mono(), Binaural(), TetraMic(), Tetra())
}


def renderer(name: str) -> Renderer:
    """The registered renderer called ``name`` (UnknownComponentError lists the others)."""
    return registered(RENDERERS, name, "renderer")


def check_formats(names: Iterable[str]) -> None:
    """Every name is a registered renderer of spatial scenes (a build's ``formats``) whose identity
    resolves (a binaural renderer's HRTF loads), checked when a build is planned rather than in its
    first shard task, after the RIR bank and the caption stage."""
    for name in names:
        out = renderer(name)
        if not out.spatial:
            raise UnknownComponentError(f"renderer {name!r} does not render a spatial scene")
        _ = out.identity


def check_layout(info: AudioInfo) -> None:
    """The record's format is a registered renderer whose layout has its channels and order."""
    order = renderer(info.format).ambisonic_order(info.channels)
    if order != info.ambisonic_order:
        raise LayoutError(
            f"{info.format} audio with {info.channels} channels has ambisonic order {order}, "
            f"the record says {info.ambisonic_order}"
        )
