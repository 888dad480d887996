"""Scenes in the sample plan: how many sources each spatial sample gets and which clips join it.

Each spatial sample of the plan (aug >= 1) keeps its clip as source 0 and its placement as the
scene's base (its receiver, and source 0's start); tasks.scene_geometry draws the rest around
that receiver in a simulated room, tasks.measured_scenes at the recorded positions of a measured
one (which adds no placement: every point is one of the bank's). Counts and partner clips are
stable draws from the sample's key (sha256, like the plan's own), so a rerun plans the same
scenes, and partners come from the same split, so no test clip is heard in a training scene.
Mono originals stay as they are.
"""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Mapping, Sequence
from typing import NamedTuple

from schemas.measured import MeasuredRoom
from schemas.rooms import Placement, Room
from schemas.scenes import SceneConfig, ScenePlan
from schemas.sources import SourceClip
from tasks.errors import InvalidSceneError
from tasks.measured_scenes import draw_measured_scene
from tasks.plan import PlanItem, stable_unit
from tasks.scene_geometry import draw_scene


def source_count(key: str, cfg: SceneConfig, seed: int) -> int:
    """The number of sources of a sample's scene, drawn from ``cfg.sources``' weights."""
    counts = sorted(cfg.sources)
    total = sum(cfg.sources.values())
    u, edge = stable_unit("scene-sources", key, seed) * total, 0.0
    for k in counts:
        edge += cfg.sources[k]
        if u < edge:
            return k
    return counts[-1]


def _clip_of(item: PlanItem) -> SourceClip:
    return SourceClip(dataset=item.dataset, clip_id=item.clip_id, captions=item.captions,
                      audio_uri=item.audio_uri, source_split=item.split)  # type: ignore[arg-type]


def partners(item: PlanItem, pool: Sequence[SourceClip], n: int, seed: int) -> list[SourceClip]:
    """``n`` distinct clips of the item's split other than its own, drawn from the key (fewer when
    the split has fewer clips)."""
    chosen: list[SourceClip] = []
    taken = {(item.dataset, item.clip_id)}
    for attempt in range(8 * n + 8):
        if len(chosen) == n:
            break
        clip = pool[int(stable_unit("scene-partner", item.key, attempt, seed) * len(pool))]
        if (clip.dataset, clip.clip_id) not in taken and clip.captions:  # a scene caption needs each
            taken.add((clip.dataset, clip.clip_id))
            chosen.append(clip)
    return chosen


DRAWS = 4
"""Scene draws tried per sample before it is rejected: paths are redrawn inside tasks.scene_geometry,
but a moving source 0 starts at the base placement, so a room can fit one draw and not another."""


def _draw(
    item: PlanItem, base: Placement, room: Room, clips: list[SourceClip], cfg: SceneConfig, seed: int,
    positions: Sequence[Placement],
) -> tuple[ScenePlan, list[Placement]]:
    """The first of ``DRAWS`` stable draws that fits the room; the last draw's error otherwise.
    ``positions``: a measured room's placements (its recorded positions); unused for a shoebox."""

    def draw(attempt: int) -> tuple[ScenePlan, list[Placement]]:
        scene_seed = int(stable_unit("scene", item.key, attempt, seed) * 2**31)
        if isinstance(room, MeasuredRoom):
            return draw_measured_scene(base, room, positions, clips, cfg, scene_seed), []
        return draw_scene(base, room, clips, cfg, scene_seed)

    for attempt in range(DRAWS - 1):
        try:
            return draw(attempt)
        except InvalidSceneError:
            continue
    return draw(DRAWS - 1)


class SceneReject(NamedTuple):
    """A sample whose scene could not be drawn in its room (a path that cannot stay inside it)."""

    item: PlanItem
    detail: str


def plan_scenes(
    items: Sequence[PlanItem], placements: Mapping[str, Placement], rooms: Mapping[str, Room],
    cfg: SceneConfig, seed: int,
) -> tuple[list[PlanItem], list[Placement], list[SceneReject]]:
    """Every spatial item with its drawn scene, the new placements (trajectory points and further
    sources' positions in simulated rooms; none in measured ones) that the RIR bank must render,
    each once, and the samples whose room cannot hold their scene (rejected, named; if that is
    every spatial sample, the config itself is wrong and InvalidSceneError says so)."""
    pool: dict[str, dict[tuple[str, str], SourceClip]] = defaultdict(dict)
    for item in items:
        pool[item.split].setdefault((item.dataset, item.clip_id), _clip_of(item))
    pools = {split: sorted(clips.values(), key=lambda c: (c.dataset, c.clip_id))
             for split, clips in pool.items()}
    recorded: dict[str, list[Placement]] = defaultdict(list)  # a measured room's positions
    if any(isinstance(r, MeasuredRoom) for r in rooms.values()):
        for p in placements.values():
            if isinstance(rooms.get(p.room_id), MeasuredRoom):
                recorded[p.room_id].append(p)
    out: list[PlanItem] = []
    extra: dict[str, Placement] = {}
    rejects: list[SceneReject] = []
    for item in items:
        if item.placement_id is None:
            out.append(item)
            continue
        base = placements[item.placement_id]
        others = partners(item, pools[item.split], source_count(item.key, cfg, seed) - 1, seed)
        try:
            scene, new = _draw(item, base, rooms[base.room_id], [_clip_of(item), *others], cfg, seed,
                               recorded.get(base.room_id, ()))
        except InvalidSceneError as exc:
            rejects.append(SceneReject(item, str(exc)))
            continue
        for p in new:
            extra.setdefault(p.placement_id, p)
        out.append(item.model_copy(update={"scene": scene}))
    if rejects and not any(i.scene is not None for i in out):
        raise InvalidSceneError(f"no sample's scene fits its room ({len(rejects)} tried), e.g. "
                                f"{rejects[0].item.key}: {rejects[0].detail}")
    return out, list(extra.values()), rejects
