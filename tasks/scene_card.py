"""The dataset card's scene section: sources per scene, share moving, speeds, overlap, with plots.

Computed from the drawn scenes (plan.parquet's ``scene`` column) of the samples the manifest lists,
so a sample rejected after planning is not counted. Intervals are the drawn onsets and offsets, the
same ones the json's ``sources`` and the .csv carry.
"""

from __future__ import annotations

import itertools
from collections import Counter
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
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


@dataclass
class SceneTally:
    """The section's numbers gathered in one pass over the scenes (speeds kept for the plot)."""

    scenes: int = 0
    backgrounds: int = 0
    counts: Counter[int] = field(default_factory=Counter)
    motion: Counter[str] = field(default_factory=Counter)
    speeds: dict[str, list[float]] = field(default_factory=lambda: {"linear": [], "arc": []})
    poly: Counter[int] = field(default_factory=Counter)

    def add(self, scene: ScenePlan) -> None:
        self.scenes += 1
        self.counts[len(scene.sources)] += 1
        self.backgrounds += scene.background_snr_db is not None
        for s in scene.sources:
            self.motion[s.motion] += 1
            if s.motion != "static" and s.speed is not None:
                self.speeds[s.motion].append(s.speed)
        self.poly.update(polyphony(scene))

    def stats(self) -> SceneStats | None:
        """None when no sample is a scene (an ELSA build's card has no scene section)."""
        if not self.scenes:
            return None
        sources = sum(self.motion.values())
        total = sum(self.poly.values())
        return SceneStats(
            scenes=self.scenes, sources=sources,
            sources_per_scene={str(k): v for k, v in sorted(self.counts.items())},
            moving_share=round((sources - self.motion["static"]) / sources, 6),
            motion={k: self.motion[k] for k in ("static", "linear", "arc")},
            linear_speed_mps=_speeds(self.speeds["linear"]), arc_speed_dps=_speeds(self.speeds["arc"]),
            overlap_share=round(sum(v for k, v in self.poly.items() if k >= 2) / total, 6) if total else 0.0,
            polyphony_seconds={str(k): round(v, 3) for k, v in sorted(self.poly.items())},
            background_share=round(self.backgrounds / self.scenes, 6),
        )


def tally(scenes: Iterable[ScenePlan]) -> SceneTally:
    """One pass over the scenes (a stream: nothing but counts and speeds is kept)."""
    out = SceneTally()
    for scene in scenes:
        out.add(scene)
    return out


def scene_figures(stats: SceneStats, speeds: dict[str, list[float]], plt: Any) -> dict[str, Any]:
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
        ax.hist(speeds[kind], bins=20, color="#55a868")
        ax.set_xlabel(f"{kind} speed ({unit})")
        ax.set_ylabel("sources")
        ax.set_title(f"{kind}: {len(speeds[kind])} moving sources")
    fig.tight_layout()
    out["scene_motion"] = fig
    return out
