"""Scenes: several sources, static or moving, in one room around one receiver.

ELSA's samples hold one static source. A scene holds 1..K sources, each a clip with its own
placement or trajectory, its own active interval and its own level, plus an optional diffuse
background. Three records:

- ``SceneConfig``: the scene distribution of a build (``BuildConfig.scenes``; YAML beside the room
  set). ``None`` in the build config means ELSA's one static source, and the build is byte for byte
  what it was before scenes existed.
- ``ScenePlan``: one drawn scene (what the plan stores per spatial sample): each source's clip,
  interval, level and trajectory points. Every point is a room-set-style Placement with its own
  id, so the RIR bank renders, hashes and reuses trajectory RIRs exactly like static ones.
- ``SceneSourceLabels``: the per-source labels a scene sample's json carries (``sources``): what
  was rendered, with the frame-wise trajectory at 100 ms frames in the project's convention
  (+azimuth = left, elevation up, metres).
"""

from __future__ import annotations

from typing import Literal, Self

from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator

Motion = Literal["static", "linear", "arc"]
LABEL_FRAME_S = 0.1
"""Label frames of the json trajectory and the DCASE csv (STARSS23: 100 ms)."""
EARLY_AFTER_DIRECT_S = 0.05
"""A moving source's per-point RIR part runs this long past the latest direct sound of its points
(tasks.scene_render): the direct path and the early reflections that carry direction (past the
engine's mixing time of 2*sqrt(V) ms for rooms up to ~600 m^3)."""
SPLIT_FADE_S = 0.005
"""Raised-cosine handover from the per-point early parts to the shared late part."""
EARLY_REACH_S = EARLY_AFTER_DIRECT_S + SPLIT_FADE_S
"""How far after the path's latest direct sound each trajectory point is convolved."""
POINT_EARLY_WINDOW_S = 0.12
"""How much of a moving source's later trajectory points the bank renders: the direct sound and
the reflections of this long after it. With EARLY_REACH_S, this covers paths whose range from the
receiver changes by up to (0.12 - 0.055) s x 343 m/s = 22 m; longer changes are refused."""
SPEED_OF_SOUND_M_S = 343.0


def _range(v: tuple[float, float], name: str) -> tuple[float, float]:
    if v[0] > v[1]:
        raise ValueError(f"{name}: low end {v[0]} above high end {v[1]}")
    return v


class MotionConfig(BaseModel):
    """How sources move: the share that moves, the kinds of path, their speeds."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    moving_share: float = Field(0.0, ge=0.0, le=1.0, description="probability that a source moves")
    kinds: dict[Literal["linear", "arc"], float] = Field(
        default_factory=lambda: {"linear": 0.5, "arc": 0.5},
        description="relative weights of the path kinds of a moving source",
    )
    linear_speed_mps: tuple[float, float] = Field((0.3, 1.5), description="straight segment, m/s")
    arc_speed_dps: tuple[float, float] = Field((10.0, 40.0), description="arc around the receiver, deg/s")

    @field_validator("kinds")
    @classmethod
    def _weights(cls, v: dict[str, float]) -> dict[str, float]:
        if not v or any(w < 0 for w in v.values()) or sum(v.values()) <= 0:
            raise ValueError(f"motion kinds need non-negative weights with a positive sum, got {v}")
        return v

    @model_validator(mode="after")
    def _speeds(self) -> Self:
        for name in ("linear_speed_mps", "arc_speed_dps"):
            lo, _ = _range(getattr(self, name), name)
            if lo <= 0:
                raise ValueError(f"{name} must be positive, got {getattr(self, name)}")
        return self


class BackgroundConfig(BaseModel):
    """A diffuse background (an SN3D diffuse field of pink noise) under the sources."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    share: float = Field(1.0, ge=0.0, le=1.0, description="probability that a scene has one")
    snr_db: tuple[float, float] = Field((10.0, 30.0), description="scene (W) to background (W) level, dB")


class SceneConfig(BaseModel):
    """The scene distribution of a build: how many sources, where, how they move, when, how loud.

    Positions of sources other than the base placement's are drawn around the base placement's
    receiver, inside the ranges below (the project's convention), at least ``min_separation_deg``
    apart and ``source_clearance_m`` from every surface; a trajectory must stay inside the same
    clearance over its whole path (source 0 starts at the room set's placement, which keeps the
    room set's own source clearance).
    """

    model_config = ConfigDict(frozen=True, extra="forbid")

    name: str = "scenes"
    sources: dict[int, float] = Field(
        default_factory=lambda: {1: 1.0},
        description="relative weight of each number of sources per scene (1..max_sources)",
    )
    max_sources: int = Field(4, ge=1, le=8)
    max_polyphony: int | None = Field(
        None, ge=1, description="most sources active at once (1: no overlap); None: no limit",
    )
    duration_s: float = Field(10.0, gt=0.0, description="every scene's length; sources are looped or cut")
    min_active_s: float = Field(1.0, gt=0.0, description="shortest active interval of a source")
    onset_s: tuple[float, float] = Field(
        (0.0, 4.0), description="range of the onsets of sources after the first (which starts at 0)",
    )
    level_db: tuple[float, float] = Field(
        (-6.0, 6.0), description="each further source's level relative to the first source, dB (W RMS)",
    )
    azimuth_deg: tuple[float, float] = (-180.0, 180.0)
    elevation_deg: tuple[float, float] = (-40.0, 40.0)
    distance_m: tuple[float, float] = (0.5, 4.0)
    min_separation_deg: float = Field(20.0, ge=0.0, lt=180.0, description="between static sources")
    source_clearance_m: float = Field(0.3, ge=0.0)
    motion: MotionConfig = MotionConfig()
    background: BackgroundConfig | None = None
    rir_step_deg: float = Field(
        2.0, gt=0.0, le=10.0, description="trajectory RIRs are at most this far apart as seen from the "
        "receiver (and 0.25 m in range): the crossfade between two neighbours keeps the rendered "
        "direction within about a quarter step of the label",
    )

    @field_validator("sources")
    @classmethod
    def _counts(cls, v: dict[int, float]) -> dict[int, float]:
        if not v:
            raise ValueError("sources needs at least one count")
        if any(k < 1 for k in v):
            raise ValueError(f"a scene needs at least one source; counts {sorted(v)} include {min(v)}")
        if any(w < 0 for w in v.values()) or sum(v.values()) <= 0:
            raise ValueError(f"source-count weights must be non-negative with a positive sum, got {v}")
        return v

    @model_validator(mode="after")
    def _consistent(self) -> Self:
        for name in ("onset_s", "level_db", "azimuth_deg", "elevation_deg", "distance_m"):
            _range(getattr(self, name), name)
        if max(self.sources) > self.max_sources:
            raise ValueError(f"{max(self.sources)} sources per scene exceeds max_sources={self.max_sources}")
        if self.onset_s[0] < 0:
            raise ValueError(f"onsets start at 0 s or later, got {self.onset_s}")
        if self.onset_s[1] + self.min_active_s > self.duration_s:
            raise ValueError(
                f"an onset up to {self.onset_s[1]} s plus the shortest active interval {self.min_active_s} s "
                f"runs past the scene's {self.duration_s} s"
            )
        p = self.max_polyphony
        for k in sorted(self.sources):
            if p is None or p >= k:
                continue
            # sources take turns in p lanes (tasks.scene_geometry): lane 0 from 0 s, the others
            # from an onset; each source sounds for at least min_active_s
            first, other = -(-k // p), -(-(k - 1) // p)
            if first * self.min_active_s > self.duration_s or (
                self.onset_s[0] + other * self.min_active_s > self.duration_s
            ):
                raise ValueError(
                    f"{k} sources, at most {p} at once, of at least {self.min_active_s} s each "
                    f"do not fit in {self.duration_s} s"
                )
        if self.distance_m[0] <= 0:
            raise ValueError(f"distances must be positive, got {self.distance_m}")
        if self.elevation_deg[0] < -90.0 or self.elevation_deg[1] > 90.0:
            raise ValueError(f"elevations lie in [-90, 90], got {self.elevation_deg}")
        return self

    @property
    def is_elsa(self) -> bool:
        """One static source for the whole clip: what ELSA's samples are."""
        return set(self.sources) == {1} and self.motion.moving_share == 0.0 and self.background is None


class ScenePoint(BaseModel):
    """One trajectory RIR: a placement of the bank, and when the source is there."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    placement_id: str
    time_s: float = Field(ge=0.0, description="scene time at which the source is at this point")
    azimuth_deg: float = Field(gt=-180.0, le=180.0)
    elevation_deg: float = Field(ge=-90.0, le=90.0)
    distance_m: float = Field(gt=0.0)


class SceneSource(BaseModel):
    """One source of a drawn scene: its clip, when it sounds, how loud, and where it is when.

    A static source has one point; a moving source's points run from its onset to its offset
    (``points[0].time_s == onset_s``, ``points[-1].time_s == offset_s``), at most ``rir_step_deg``
    apart. ``start_m``/``end_m`` and ``speed`` are the drawn path itself: labels at any time come
    from the path (tasks.scene_geometry.position_at), not from the nearest point.
    """

    model_config = ConfigDict(frozen=True, extra="forbid")

    index: int = Field(ge=0)
    dataset: str
    clip_id: str
    audio_uri: str
    captions: tuple[str, ...]
    onset_s: float = Field(ge=0.0)
    offset_s: float = Field(gt=0.0)
    level_db: float = Field(description="level relative to source 0 (W RMS of the wet source), dB")
    motion: Motion
    speed: float | None = Field(None, description="m/s for linear, deg/s for arc, None for static")
    arc_direction: Literal[1, -1] | None = Field(None, description="arc: +1 counter-clockwise (towards left)")
    start_m: tuple[float, float, float]
    end_m: tuple[float, float, float]
    points: list[ScenePoint] = Field(min_length=1)

    @model_validator(mode="after")
    def _timed(self) -> Self:
        if self.offset_s <= self.onset_s:
            raise ValueError(
                f"source {self.index}: offset {self.offset_s} s not after onset {self.onset_s} s"
            )
        if (self.motion == "static") != (len(self.points) == 1):
            raise ValueError(f"source {self.index}: a static source has exactly one point")
        times = [p.time_s for p in self.points]
        if times != sorted(times):
            raise ValueError(f"source {self.index}: trajectory points out of time order")
        return self


class ScenePlan(BaseModel):
    """One drawn scene: a spatial sample's sources in one room, around one receiver."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    room_id: str
    base_placement_id: str = Field(description="the room-set placement whose receiver the scene uses")
    receiver_m: tuple[float, float, float]
    receiver_yaw_deg: float = Field(ge=-180.0, le=180.0)
    duration_s: float = Field(gt=0.0)
    sources: list[SceneSource] = Field(min_length=1)
    background_snr_db: float | None = None
    seed: int

    @model_validator(mode="after")
    def _inside(self) -> Self:
        for s in self.sources:
            if s.offset_s > self.duration_s + 1e-9:
                raise ValueError(
                    f"source {s.index} ends at {s.offset_s} s, after the scene's {self.duration_s} s"
                )
        return self

    @property
    def placement_ids(self) -> list[str]:
        """Every RIR the scene needs, in source and time order."""
        return [p.placement_id for s in self.sources for p in s.points]


class FrameLabel(BaseModel):
    """One 100 ms label frame of one source (frames where the source is inactive are absent)."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    frame: int = Field(ge=0)
    azimuth_deg: float = Field(gt=-180.0, le=180.0)
    elevation_deg: float = Field(ge=-90.0, le=90.0)
    distance_m: float = Field(gt=0.0)


class SceneSourceLabels(BaseModel):
    """A scene sample json's ``sources`` entry: one source's identity, timing, level and track."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    index: int = Field(ge=0, description="the DCASE track index")
    class_index: int = Field(ge=0, description="the DCASE class index (tasks.scene_labels.class_index)")
    dataset: str
    clip_id: str
    original_text: list[str]
    onset_s: float
    offset_s: float
    motion: Motion
    speed: float | None
    gain_db: float = Field(description="gain applied to this source's wet render before the mix, dB")
    level_db: float = Field(description="drawn level relative to source 0, dB")
    frames: list[FrameLabel] = Field(description="frame-wise trajectory at LABEL_FRAME_S, active frames only")
    motion_words: list[str] = Field(default_factory=list, description="how the captions describe its motion")


class SpeedStats(BaseModel):
    """Speeds of the moving sources of one path kind (m/s for linear, deg/s for arc)."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    count: int
    min: float | None
    median: float | None
    max: float | None


class SceneStats(BaseModel):
    """The card's scene section: what the scenes of a dataset version hold (from its plan, over the
    samples its manifest lists)."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    scenes: int = Field(description="spatial samples that are scenes")
    sources: int
    sources_per_scene: dict[str, int] = Field(description="number of sources -> scenes")
    moving_share: float = Field(description="share of sources that move")
    motion: dict[str, int] = Field(description="static / linear / arc -> sources")
    linear_speed_mps: SpeedStats
    arc_speed_dps: SpeedStats
    overlap_share: float = Field(description="share of scene time during which two or more sources sound")
    polyphony_seconds: dict[str, float] = Field(description="sources sounding at once -> scene seconds")
    background_share: float = Field(description="share of scenes with a diffuse background")
