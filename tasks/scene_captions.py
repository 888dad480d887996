"""A scene's words: where each source is and how it moves, as the captions say it.

A scene caption binds every sound to its own words (``schemas.captions.SourceWords``): the
descriptors of the source's place, from DESIGN.md's table like an ELSA caption's, and motion words
for a moving source. A moving source's descriptors are those of where it starts (its first
trajectory point, at its onset); the motion words carry the change from there to where it ends
(its last point, at its offset). Each motion word is stated only when it is true of the points,
beyond a threshold a listener would notice:

- "moving from left to right" / "moving from right to left": the source starts at least
  ``SIDE_MARGIN_DEG`` into one side (azimuth 15°..165° is left, -165°..-15° right) and ends as far
  into the other side, by the front or by the back;
- "passing behind": the path crosses the rear median plane (azimuth goes through ±180°, between
  two consecutive points both more than 90° off the front) and reaches the "back" band
  (|azimuth| > ``DescriptorConfig.back_above_deg``, 145° by default);
- "approaching" / "receding": the distance shrinks / grows by at least ``RANGE_CHANGE_M`` and by a
  factor of at least ``RANGE_RATIO`` (about 2 dB of direct-sound level), start to end;
- "rising" / "descending": the elevation grows / falls by at least ``HEIGHT_CHANGE_DEG``.

A moving source that crosses none of these (a short arc within one side) gets no motion words:
its descriptors still hold where it starts, and nothing is claimed that the points do not show.
The phrasing of these words, their binding checks and the swapped-binding hard negative belong to
the rephrase backends (``tasks.rephrase.phrasing`` and ``tasks.rephrase.validation``), which every
backend shares whether it runs a model or not.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from itertools import pairwise

from schemas.captions import DescriptorConfig, Descriptors, SourceWords
from schemas.scenes import ScenePoint, SceneSource
from tasks.descriptors import DEFAULT_DESCRIPTOR_CONFIG, direction_word, distance_word, elevation_word
from tasks.errors import InvalidSceneError

SIDE_MARGIN_DEG = 15.0
"""How far into the left (right) half a source must start and end to be said to cross sides."""
RANGE_CHANGE_M = 0.5
"""Least change of distance, start to end, for "approaching" / "receding"."""
RANGE_RATIO = 1.25
"""Least ratio of the distances, start to end, for "approaching" / "receding"."""
HEIGHT_CHANGE_DEG = 10.0
"""Least change of elevation, start to end, for "rising" / "descending"."""


def _side(azimuth_deg: float) -> int:
    """+1 well inside the left half, -1 well inside the right half, 0 near the median plane."""
    lateral = math.sin(math.radians(azimuth_deg))
    limit = math.sin(math.radians(SIDE_MARGIN_DEG))
    return 1 if lateral >= limit else -1 if lateral <= -limit else 0


def motion_words(
    points: Sequence[ScenePoint], cfg: DescriptorConfig = DEFAULT_DESCRIPTOR_CONFIG
) -> list[str]:
    """The motion words true of a trajectory's points (module docstring), in MOTION_GROUPS order
    (schemas.captions); [] for a static source (one point)."""
    if len(points) < 2:
        return []
    first, last = points[0], points[-1]
    words: list[str] = []
    sides = (_side(first.azimuth_deg), _side(last.azimuth_deg))
    if sides == (1, -1):
        words.append("moving from left to right")
    elif sides == (-1, 1):
        words.append("moving from right to left")
    crosses_back = any(
        a.azimuth_deg * b.azimuth_deg < 0 and min(abs(a.azimuth_deg), abs(b.azimuth_deg)) > 90.0
        for a, b in pairwise(points)
    )
    if crosses_back and any(abs(p.azimuth_deg) > cfg.back_above_deg for p in points):
        words.append("passing behind")
    near, far = sorted((first.distance_m, last.distance_m))
    if far - near >= RANGE_CHANGE_M and far / near >= RANGE_RATIO:
        words.append("approaching" if last.distance_m < first.distance_m else "receding")
    rise = last.elevation_deg - first.elevation_deg
    if abs(rise) >= HEIGHT_CHANGE_DEG:
        words.append("rising" if rise > 0 else "descending")
    return words


def source_words(
    source: SceneSource, caption: str | None = None, cfg: DescriptorConfig = DEFAULT_DESCRIPTOR_CONFIG
) -> SourceWords:
    """One source's caption (``caption``, else its first) with the descriptors of where it starts
    and its motion words: what a scene request binds to that sound."""
    if caption is None:
        if not source.captions:
            raise InvalidSceneError(f"source {source.index} ({source.clip_id}) has no caption")
        caption = source.captions[0]
    start = source.points[0]
    return SourceWords(
        caption=caption,
        descriptors=Descriptors(
            distance=distance_word(start.distance_m, cfg),
            elevation=elevation_word(start.elevation_deg, cfg),
            direction=direction_word(start.azimuth_deg, cfg),
        ),
        motion=motion_words(source.points, cfg),
    )
