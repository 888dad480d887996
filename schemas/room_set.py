"""Room-set configuration (room_specs/*.yaml): the distribution the sampler draws rooms from."""

from __future__ import annotations

from typing import Literal

from pydantic import BaseModel, ConfigDict, Field, model_validator

from schemas.rooms import SourcePattern

Range = tuple[float, float]


def _ordered(name: str, r: Range) -> None:
    if not r[0] <= r[1]:
        raise ValueError(f"{name}: lower bound {r[0]} exceeds upper bound {r[1]}")


class SplitPlacement(BaseModel):
    """Where sources may sit relative to the receiver in one split, and how many per room."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    azimuth_deg: Range = (-180.0, 180.0)
    elevation_deg: Range
    distance_m: Range
    placements_per_room: int = Field(default=1, ge=1)
    room_fraction: float = Field(default=1.0, gt=0.0, le=1.0, description="share of rooms used")

    @model_validator(mode="after")
    def _ranges(self) -> SplitPlacement:
        for name in ("azimuth_deg", "elevation_deg", "distance_m"):
            _ordered(name, getattr(self, name))
        if self.distance_m[0] <= 0:
            raise ValueError("distance_m must be positive")
        return self


class SourceDirectivityConfig(BaseModel):
    """Directional sources: loudspeakers and talkers face roughly towards the listener, which is
    why measured rooms have a higher DRR than omni shoebox twins at the same distance and T30."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    patterns: list[SourcePattern] = Field(
        default_factory=list, description="analytic patterns; one of these or of sofa_files is drawn "
        "uniformly per placement",
    )
    sofa_files: list[str] = Field(
        default_factory=list, exclude_if=lambda v: not v,
        description="measured directivities (SOFA FreeFieldDirectivityTF or GeneralFIR, e.g. DIRPAT; "
        "paths absolute or relative to the working directory), drawn alongside patterns; left out "
        "of the dump when empty so room sets without them keep their hash",
    )
    facing_spread_deg: float = Field(
        default=60.0, ge=0.0, le=180.0,
        description="main-axis azimuth: towards the receiver + uniform within +-this",
    )
    elevation_jitter_deg: float = Field(
        default=10.0, ge=0.0, le=90.0,
        description="main-axis elevation: towards the receiver's height + uniform within +-this "
        "(a talker or a loudspeaker on a stand tilts a little, not arbitrarily)",
    )

    @model_validator(mode="after")
    def _something_to_draw(self) -> SourceDirectivityConfig:
        if not self.patterns and not self.sofa_files:
            raise ValueError("source_directivity needs at least one of patterns and sofa_files")
        return self


class Materials(BaseModel):
    """pyroomacoustics material-database names each surface type is drawn from."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    walls: list[str] = Field(min_length=1)
    floor: list[str] = Field(min_length=1)
    ceiling: list[str] = Field(min_length=1)


class RoomSetConfig(BaseModel):
    """A room distribution, e.g. the ELSA paper's Table A.T.2."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    name: str
    n_rooms: int = Field(ge=1)
    floor_area_m2: Range
    aspect_ratio: Range = (1.0, 2.0)
    height_m: Range = (2.4, 5.0)
    t30_s: Range
    mean_absorption: Range = Field(
        default=(0.02, 0.9), description="bounds on the fitted absorption when placing the target T30"
    )
    materials: Materials
    scattering: Range = (0.05, 0.4)
    receiver_height_m: Range = (1.0, 2.0)
    wall_clearance_m: float = Field(default=0.5, ge=0.0)
    source_clearance_m: float = Field(default=0.3, ge=0.0)
    min_test_separation_m: float = Field(
        default=0.5, ge=0.0, description="test sources are at least this far from train sources"
    )
    split_policy: Literal["paper", "room_disjoint"] = "paper"
    source_directivity: SourceDirectivityConfig | None = Field(
        None, exclude_if=lambda v: v is None,
        description="directional sources; None: omnidirectional (ELSA; left out of the dump so the "
        "room-set hash does not change)",
    )
    splits: dict[Literal["train", "val", "test"], SplitPlacement]

    @model_validator(mode="after")
    def _valid(self) -> RoomSetConfig:
        for name in ("floor_area_m2", "aspect_ratio", "height_m", "t30_s", "mean_absorption"):
            _ordered(name, getattr(self, name))
        if self.floor_area_m2[0] <= 0 or self.t30_s[0] <= 0 or self.height_m[0] <= 0:
            raise ValueError("floor area, height and T30 must be positive")
        if "train" not in self.splits:
            raise ValueError("a room set needs a train split")
        return self
