"""The dataset card's scene section: sources per scene, share moving, speeds, overlap, with plots.

Computed from the drawn scenes (plan.parquet's ``scene`` column) of the samples the manifest lists,
so a sample rejected after planning is not counted. Intervals are the drawn onsets and offsets, the
same ones the json's ``sources`` and the .csv carry.
"""

from __future__ import annotations

import itertools
from collections import Counter
from collections.abc import Iterable, Sequence
from typing import Any

import numpy as np

from schemas.scenes import ScenePlan, SceneStats, SpeedStats


def _speeds(values: Sequence[float]) -> SpeedStats:
    v = np.asarray(values, dtype=float)
    if not v.size:
        return SpeedStats(count=0, min=None, median=None, max=None)
    return SpeedStats(count=int(v.size), min=round(float(v.min()), 4), median=round(float(np.median(v)), 4),
                      max=round(float(v.max()), 4))


def polyphony(scene: ScenePlan) -> dict[int, float]:
    """Seconds of the scene during which n sources sound (n = 0 included), from the intervals."""
    edges = sorted({0.0, scene.duration_s, *(t for s in scene.sources for t in (s.onset_s, s.offset_s))})
    out: Counter[int] = Counter()
    for a, b in itertools.pairwise(edges):
        mid = 0.5 * (a + b)
        out[sum(s.onset_s <= mid < s.offset_s for s in scene.sources)] += b - a
    return dict(out)


def scene_stats(scenes: Iterable[ScenePlan]) -> SceneStats | None:
    """The section's numbers; None when no sample is a scene (an ELSA build's card has none)."""
    counts: Counter[int] = Counter()
    motion: Counter[str] = Counter()
    linear: list[float] = []
    arc: list[float] = []
    poly: Counter[int] = Counter()
    n = n_background = 0
    for scene in scenes:
        n += 1
        counts[len(scene.sources)] += 1
        n_background += scene.background_snr_db is not None
        for s in scene.sources:
            motion[s.motion] += 1
            if s.motion == "linear" and s.speed is not None:
                linear.append(s.speed)
            elif s.motion == "arc" and s.speed is not None:
                arc.append(s.speed)
        poly.update(polyphony(scene))
    if not n:
        return None
    sources = sum(motion.values())
    total = sum(poly.values())
    return SceneStats(
        scenes=n, sources=sources, sources_per_scene={str(k): v for k, v in sorted(counts.items())},
        moving_share=round((sources - motion["static"]) / sources, 6),
        motion={k: motion[k] for k in ("static", "linear", "arc")},
        linear_speed_mps=_speeds(linear), arc_speed_dps=_speeds(arc),
        overlap_share=round(sum(v for k, v in poly.items() if k >= 2) / total, 6) if total else 0.0,
        polyphony_seconds={str(k): round(v, 3) for k, v in sorted(poly.items())},
        background_share=round(n_background / n, 6),
    )


def scene_figures(stats: SceneStats, scenes: Sequence[ScenePlan], plt: Any) -> dict[str, Any]:
    """Figures of the section: sources per scene and polyphony; speeds of moving sources."""
    fig, (a, b) = plt.subplots(1, 2, figsize=(9.0, 3.4))
    ks = list(stats.sources_per_scene)
    a.bar(ks, [stats.sources_per_scene[k] for k in ks], color="#4c72b0")
    a.set_xlabel("sources per scene")
    a.set_ylabel("scenes")
    a.set_title(f"{stats.scenes} scenes, {100 * stats.moving_share:.0f} % of sources moving")
    ps = list(stats.polyphony_seconds)
    b.bar(ps, [stats.polyphony_seconds[k] for k in ps], color="#dd8452")
    b.set_xlabel("sources sounding at once")
    b.set_ylabel("scene seconds")
    b.set_title(f"overlap: {100 * stats.overlap_share:.0f} % of scene time")
    fig.tight_layout()
    out = {"scene_sources": fig}
    fig, axes = plt.subplots(1, 2, figsize=(9.0, 3.4))
    for ax, kind, unit in ((axes[0], "linear", "m/s"), (axes[1], "arc", "deg/s")):
        v = [s.speed for sc in scenes for s in sc.sources if s.motion == kind and s.speed is not None]
        ax.hist(v, bins=20, color="#55a868")
        ax.set_xlabel(f"{kind} speed ({unit})")
        ax.set_ylabel("sources")
        ax.set_title(f"{kind}: {len(v)} moving sources")
    fig.tight_layout()
    out["scene_motion"] = fig
    return out
