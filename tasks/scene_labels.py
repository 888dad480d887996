"""A scene sample's labels: per-source frame-wise trajectories and the DCASE/STARSS23 metadata csv.

The json's ``sources`` entries carry each source's trajectory at 100 ms label frames (frame f is
labelled at its centre, (f + 0.5) * LABEL_FRAME_S), taken from the drawn path
(tasks.scene_geometry.directions_at), for the frames where the render says the source sounds.

The ``.csv`` member is written from those labels by tasks.dcase_csv (the DCASE/STARSS23 format,
kept apart so that shard readers need none of the geometry); ``class_index`` gives each source its
class from the lexicon.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Sequence

import numpy as np

from schemas.scenes import LABEL_FRAME_S, FrameLabel, ScenePlan, SceneSource, SceneSourceLabels
from tasks.dcase_csv import CLASSES, OTHER
from tasks.errors import InvalidSceneError
from tasks.rephrase.sound_sources import implied_sources, mentions
from tasks.scene_geometry import directions_at

_INDEX = {name: i for i, name in enumerate(CLASSES)}


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
