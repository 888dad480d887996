"""A scene sample's labels: per-source frame-wise trajectories and the DCASE/STARSS23 metadata csv.

The json's ``sources`` entries carry each source's trajectory at 100 ms label frames (frame f is
labelled at its centre, (f + 0.5) * LABEL_FRAME_S), taken from the drawn path
(tasks.scene_geometry.directions_at), for the frames where the render says the source sounds.

The csv is the DCASE 2024 (STARSS23 with distance) metadata form, one row per active source per
frame, no header: ``frame, class, track, azimuth, elevation, distance`` in integers, azimuth in
[-180, 180) with +azimuth = left, elevation in [-90, 90], distance in cm, rows sorted by frame then
track. It is written from the json labels (``dcase_rows``), so a reader can check that the two
agree: ``read_dcase_csv(csv) == dcase_rows(sources)``. Integers are rounded half up (not Python's
half to even), and an azimuth that rounds to 180 is written -180.
"""

from __future__ import annotations

import math
import re
from collections import Counter
from collections.abc import Sequence
from typing import NamedTuple

import numpy as np

from schemas.scenes import LABEL_FRAME_S, FrameLabel, ScenePlan, SceneSource, SceneSourceLabels
from tasks.errors import InvalidSceneError, SpatialAudioCapsError
from tasks.rephrase.sound_sources import implied_sources, mentions
from tasks.scene_geometry import directions_at

CLASSES: tuple[str, ...] = (
    "person", "animal", "vehicle", "instrument", "signal", "machine", "tool", "object", "food",
    "water", "air", "weather", "fire", "plant", "blast", "other",
)
"""DCASE class list: the families of the sound-source lexicon (tasks.rephrase.sound_sources) and a
catch-all, ``other``, for clips whose captions name none. Append-only (a new lexicon family goes at
the end), so a class index means the same in every dataset version."""
OTHER = CLASSES.index("other")
_INDEX = {name: i for i, name in enumerate(CLASSES)}
_INT = re.compile(r"-?\d+")


class DcaseCsvError(SpatialAudioCapsError):
    """A metadata csv that breaks the STARSS23 rules (columns, integers, ranges, frame order)."""


class DcaseRow(NamedTuple):
    """One csv row: a source active in one 100 ms frame."""

    frame: int
    class_index: int
    track: int
    azimuth_deg: int
    elevation_deg: int
    distance_cm: int


def class_index(captions: Sequence[str]) -> int:
    """The clip's class: the lexicon family most of its captions name (ties go to the family earlier
    in CLASSES), ``OTHER`` when they name none.

    A caption names a family through its source words (dog, car); a caption with no source word
    through the sources its sound events imply (barking: animal), when those are of one family.
    A bare person word (someone, people) is left out when the caption names another family: it is
    usually the agent of that sound ("someone types on a keyboard" is an object's sound).
    """
    votes: Counter[str] = Counter()
    for caption in captions:
        votes.update(_families(caption))
    known = [f for f in votes if f in _INDEX]
    if not known:
        return OTHER
    return _INDEX[min(known, key=lambda f: (-votes[f], _INDEX[f]))]


def _families(caption: str) -> set[str]:
    paths = mentions(caption)
    sources = {p for p in paths if p[0] != "sound"}
    if not sources:
        for event in paths:
            implied = {q[0] for q in implied_sources(event)}
            if len(implied) == 1:
                sources.add((implied.pop(),))
    families = {p[0] for p in sources}
    if len(families) > 1 and not any(p[0] == "person" and len(p) > 1 for p in sources):
        families.discard("person")
    return families


def frame_labels(scene: ScenePlan, source: SceneSource, active: np.ndarray) -> list[FrameLabel]:
    """The source's labels at the centres of its active frames (``active``: one bool per frame)."""
    flags = np.asarray(active, dtype=bool)
    if flags.ndim != 1:
        raise InvalidSceneError(
            f"source {source.index}: activity must be one flag per frame, got shape {flags.shape}"
        )
    frames = np.flatnonzero(flags)
    az, el, dist = directions_at(scene, source, (frames + 0.5) * LABEL_FRAME_S)
    return [
        FrameLabel(frame=int(f), azimuth_deg=float(a), elevation_deg=float(e), distance_m=float(d))
        for f, a, e, d in zip(frames, az, el, dist, strict=True)
    ]


def source_labels(
    scene: ScenePlan,
    activity: Sequence[np.ndarray],
    gains_db: Sequence[float],
    motion_words: Sequence[list[str]],
) -> list[SceneSourceLabels]:
    """The json's ``sources``: one entry per scene source, given each source's frame activity, the
    gain the render applied to it and the motion words its captions use."""
    n = len(scene.sources)
    if not len(activity) == len(gains_db) == len(motion_words) == n:
        raise InvalidSceneError(
            f"a scene of {n} sources needs {n} activities, gains and motion words, got "
            f"{len(activity)}, {len(gains_db)} and {len(motion_words)}"
        )
    return [
        SceneSourceLabels(
            index=s.index, class_index=class_index(s.captions), dataset=s.dataset, clip_id=s.clip_id,
            original_text=list(s.captions), onset_s=s.onset_s, offset_s=s.offset_s, motion=s.motion,
            speed=s.speed, gain_db=float(gain), level_db=s.level_db,
            frames=frame_labels(scene, s, active), motion_words=list(words),
        )
        for s, active, gain, words in zip(scene.sources, activity, gains_db, motion_words, strict=True)
    ]


def dcase_rows(sources: Sequence[SceneSourceLabels]) -> list[DcaseRow]:
    """The csv's rows from the json labels: integers, sorted by frame then track."""
    rows = [
        DcaseRow(f.frame, s.class_index, s.index, _azimuth(f.azimuth_deg), _half_up(f.elevation_deg),
                 _half_up(f.distance_m * 100.0))
        for s in sources
        for f in s.frames
    ]
    return sorted(rows, key=lambda r: (r.frame, r.track))


def dcase_csv(sources: Sequence[SceneSourceLabels]) -> bytes:
    """The ``.csv`` member: DCASE 2024 metadata, no header (as STARSS23)."""
    return "".join(",".join(str(v) for v in row) + "\n" for row in dcase_rows(sources)).encode("ascii")


def read_dcase_csv(data: bytes, n_classes: int = len(CLASSES)) -> list[DcaseRow]:
    """Rows of a metadata csv, checked against the STARSS23 rules: six integer columns, frame and
    track >= 0, class in [0, n_classes), azimuth in [-180, 180), elevation in [-90, 90], distance
    (cm) >= 0, frames in order, no (frame, class, track) twice. DcaseCsvError names the bad row."""
    try:
        text = data.decode("ascii")
    except UnicodeDecodeError as exc:
        raise DcaseCsvError(f"metadata csv is not ASCII text: {exc}") from None
    rows: list[DcaseRow] = []
    seen: set[tuple[int, int, int]] = set()
    for n, line in enumerate(text.splitlines(), 1):
        cells = line.split(",")
        if len(cells) != len(DcaseRow._fields):
            raise DcaseCsvError(
                f"row {n}: {len(cells)} columns, want 6 ({', '.join(DcaseRow._fields)}): {line!r}"
            )
        bad = [name for name, cell in zip(DcaseRow._fields, cells, strict=True) if not _INT.fullmatch(cell)]
        if bad:
            raise DcaseCsvError(f"row {n}: {', '.join(bad)} not an integer: {line!r}")
        row = DcaseRow(*(int(c) for c in cells))
        problems = [
            what for what, ok in (
                ("frame < 0", row.frame >= 0),
                (f"class outside [0, {n_classes})", 0 <= row.class_index < n_classes),
                ("track < 0", row.track >= 0),
                ("azimuth outside [-180, 180)", -180 <= row.azimuth_deg < 180),
                ("elevation outside [-90, 90]", -90 <= row.elevation_deg <= 90),
                ("distance < 0", row.distance_cm >= 0),
                ("frame before the previous row's", not rows or row.frame >= rows[-1].frame),
                ("(frame, class, track) repeated", (row.frame, row.class_index, row.track) not in seen),
            ) if not ok
        ]
        if problems:
            raise DcaseCsvError(f"row {n}: {'; '.join(problems)}: {line!r}")
        seen.add((row.frame, row.class_index, row.track))
        rows.append(row)
    return rows


def _half_up(x: float) -> int:
    return math.floor(x + 0.5)


def _azimuth(az_deg: float) -> int:
    """Integer azimuth in [-180, 180): the label's (-180, 180] rounded, 180 written as -180."""
    r = _half_up(az_deg)
    return r - 360 if r >= 180 else r
