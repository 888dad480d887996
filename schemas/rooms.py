"""Room, placement and RIR records: what the sampler writes and the RIR bank measures."""

from __future__ import annotations

from typing import Annotated, Literal

from pydantic import (
    BaseModel,
    ConfigDict,
    Field,
    StringConstraints,
    computed_field,
    field_validator,
    model_validator,
)

from schemas.measured import MeasuredDetails, MeasuredRef, MeasuredRoom

# Octave-band centres used by pyroomacoustics at 48 kHz (125 Hz base, up to fs/2).
OCTAVE_BANDS_HZ: tuple[float, ...] = (125.0, 250.0, 500.0, 1000.0, 2000.0, 4000.0, 8000.0, 16000.0)
# pyroomacoustics' shoebox wall order: x walls, y walls, z walls.
SURFACES: tuple[str, ...] = ("west", "east", "south", "north", "floor", "ceiling")

Split = Literal["train", "val", "test"]
SourcePattern = Literal["omni", "subcardioid", "cardioid", "hypercardioid", "figure_eight"]
"""A source's directivity: pyroomacoustics' first-order family a + (1 - a) cos(theta), its
DirectivityPattern coefficients (tasks/rir_engine.py reads them from the library)."""
MeasuredPattern = Annotated[str, StringConstraints(pattern=r"^sofa:[^:/\\]+:[0-9a-f]{12}$")]
"""A measured directivity (tasks/measured_directivity.py): ``sofa:<file stem>:<sha256 prefix>``."""


class Surface(BaseModel):
    """One wall's octave-band energy absorption and scattering (one value per OCTAVE_BANDS_HZ)."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    material: str
    absorption: list[float] = Field(min_length=len(OCTAVE_BANDS_HZ), max_length=len(OCTAVE_BANDS_HZ))
    scattering: list[float] = Field(min_length=len(OCTAVE_BANDS_HZ), max_length=len(OCTAVE_BANDS_HZ))

    @field_validator("absorption", "scattering")
    @classmethod
    def _unit_interval(cls, v: list[float]) -> list[float]:
        bad = [a for a in v if not 0.0 <= a <= 1.0]
        if bad:
            raise ValueError(f"coefficients must lie in [0, 1], got {bad}")
        return v


class RoomSpec(BaseModel):
    """A shoebox room: geometry, surfaces and the full-band T30 it should be calibrated to."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    room_id: str
    dims_m: tuple[float, float, float]
    surfaces: dict[str, Surface]
    target_t30_s: float = Field(gt=0.0)

    @field_validator("dims_m")
    @classmethod
    def _positive(cls, v: tuple[float, float, float]) -> tuple[float, float, float]:
        if any(d <= 0 for d in v):
            raise ValueError(f"room dimensions must be positive, got {v}")
        return v

    @field_validator("surfaces")
    @classmethod
    def _all_surfaces(cls, v: dict[str, Surface]) -> dict[str, Surface]:
        if set(v) != set(SURFACES):
            raise ValueError(f"surfaces must be exactly {SURFACES}, got {sorted(v)}")
        return v

    @computed_field  # type: ignore[prop-decorator]
    @property
    def floor_area_m2(self) -> float:
        return self.dims_m[0] * self.dims_m[1]

    @computed_field  # type: ignore[prop-decorator]
    @property
    def volume_m3(self) -> float:
        return self.dims_m[0] * self.dims_m[1] * self.dims_m[2]


Room = RoomSpec | MeasuredRoom
"""A room of a room set: a simulated shoebox, or a room of a measured SRIR bank (whose size is
known only when its manifest gives it). Labels take floor area, volume and dims from either."""


class Placement(BaseModel):
    """Source and receiver in one room, with the labels in our convention (+azimuth = left)."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    placement_id: str
    room_id: str
    split: Split
    receiver_m: tuple[float, float, float]
    receiver_yaw_deg: float = Field(ge=-180.0, le=180.0)
    source_m: tuple[float, float, float]
    azimuth_deg: float = Field(gt=-180.0, le=180.0)
    elevation_deg: float = Field(ge=-90.0, le=90.0)
    distance_m: float = Field(gt=0.0)
    room_set_hash: str
    early_window_s: float | None = Field(
        None, gt=0.0, exclude_if=lambda v: v is None,
        description="a moving source's trajectory point: render only the direct sound and the "
        "reflections within this long after it (the scene renderer takes the late part from the "
        "source's first point); None: the whole RIR (every room-set placement)",
    )
    calibrate_at_m: tuple[float, float, float] | None = Field(
        None, exclude_if=lambda v: v is None,
        description="calibrate the absorption for a source at this position instead of source_m (a "
        "trajectory point: its path's first point, so the path shares one absorption)",
    )
    srir: MeasuredRef | None = Field(
        None, exclude_if=lambda v: v is None,
        description="a measured bank's position (tasks/measured_bank.py): the SRIR the 'measured' room "
        "source reads, with its content hash so the RIR-bank key changes when the data do; None: "
        "simulated rooms",
    )
    source_pattern: SourcePattern | MeasuredPattern | None = Field(
        None, exclude_if=lambda v: v is None,
        description="the source's directivity (room sets with source_directivity); None: omnidirectional, "
        "as in every ELSA placement, whose dumps and RIR-bank keys therefore do not change",
    )
    source_axis_deg: tuple[float, float] | None = Field(
        None, exclude_if=lambda v: v is None,
        description="world-frame (azimuth, elevation) in degrees of the directional source's main axis "
        "(azimuth counter-clockwise from the room's +x); set exactly when source_pattern is",
    )
    source_directivity_file: str | None = Field(
        None, exclude_if=lambda v: v is None,
        description="the room set's SOFA file a measured source_pattern was drawn from, as the room-set "
        "config names it (its content is checked against the pattern's hash when rendering)",
    )

    @model_validator(mode="after")
    def _pattern_has_axis(self) -> Placement:
        if (self.source_pattern is None) != (self.source_axis_deg is None):
            raise ValueError("source_pattern and source_axis_deg are set together or not at all")
        measured = self.source_pattern is not None and self.source_pattern.startswith("sofa:")
        if measured != (self.source_directivity_file is not None):
            raise ValueError("a measured source_pattern (sofa:...) and source_directivity_file go together")
        return self


class IsmDetails(BaseModel):
    """How the simulated shoebox source (``method="ism"``) made a RIR: what only that method has."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    ism_max_order: int
    absorption_scale: float = Field(description="calibration factor applied to every surface")
    calibration_iterations: int
    target_t30_s: float = Field(description="the T30 the absorption was calibrated to")
    early_window_s: float | None = Field(
        None, exclude_if=lambda v: v is None,
        description="set when the RIR holds only the direct sound and the reflections of this long "
        "after it (a moving source's trajectory point): no T30/EDT, DRR and C50 of that part only",
    )


class RirRecord(BaseModel):
    """What the RIR bank measured on one RIR: labels stored are measured values.

    The common part (geometry labels, T30/EDT/DRR/C50, the direct-path DOA check) is what every
    room source gives and what samples are labelled from; ``method`` names the RirSource
    (tasks/rir_sources.py) and its own fields sit in that method's sub-record, so a measured bank
    or a trajectory source adds a sub-record instead of loosening the shoebox's fields.
    """

    model_config = ConfigDict(frozen=True, extra="forbid")

    placement_id: str
    room_id: str
    room_set_hash: str
    method: str = Field(pattern=r"^[a-z][a-z0-9_]*$", description="the RirSource that made the RIR")
    fs: int
    order: int = Field(description="ambiX order of the RIR: (order + 1)^2 channels")
    n_samples: int
    t30_s: float | None = Field(description="W channel (low-passed at RirSettings.decay_below_hz when set), "
                                "Schroeder, fitted -5..-35 dB; None if anechoic")
    edt_s: float | None
    drr_db: float
    c50_db: float
    azimuth_deg: float
    elevation_deg: float
    distance_m: float
    direct_azimuth_deg: float = Field(description="direct-path intensity DOA of the rendered RIR")
    direct_elevation_deg: float
    direct_doa_error_deg: float
    engine_version: str = Field(description="version of the source that made it (RirSource.version)")
    ism: IsmDetails | None = Field(default=None, description="set exactly when method is 'ism'")
    measured: MeasuredDetails | None = Field(
        default=None, exclude_if=lambda v: v is None, description="set exactly when method is 'measured'"
    )

    @model_validator(mode="before")
    @classmethod
    def _flat_ism(cls, data: object) -> object:
        """Read RIR-bank chunks written before ``method`` existed: their keys do not change (the
        key hashes the inputs, not the record), so a rebuild finds them and must still read them."""
        if isinstance(data, dict) and "method" not in data and "ism_max_order" in data:
            data = dict(data)
            fields = ("ism_max_order", "absorption_scale", "calibration_iterations", "target_t30_s")
            data["ism"] = {k: data.pop(k) for k in fields}
            data["method"] = "ism"
        return data

    @model_validator(mode="after")
    def _consistent(self) -> RirRecord:
        for name in ("t30_s", "edt_s", "drr_db", "c50_db"):
            v = getattr(self, name)
            if v is not None and v != v:  # NaN
                raise ValueError(f"{name} is NaN")
        if (self.method == "ism") != (self.ism is not None):
            raise ValueError("the ism sub-record is set exactly when method is 'ism'")
        if (self.method == "measured") != (self.measured is not None):
            raise ValueError("the measured sub-record is set exactly when method is 'measured'")
        return self


class RirSettings(BaseModel):
    """How the RIR bank renders: ambisonic order, image-order cap, late tail, calibration."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    fs: int = Field(default=48000, ge=8000)
    order: int = Field(default=1, ge=0, le=3)
    max_ism_order: int = Field(default=18, ge=0, le=60)
    late_tail: bool = True
    air_absorption: bool = True
    calibrate: bool = True
    calibration_max_iter: int = Field(default=8, ge=1)
    calibration_rel_tol: float = Field(default=0.02, gt=0.0)
    calibration_fail_tol: float = Field(
        default=0.25, gt=0.0, description="a room whose best render is further off is rejected"
    )
    length_factor: float = Field(default=1.5, ge=1.0, description="RIR length in target T30s")
    crossfade_s: float = Field(default=0.005, ge=0.0)
    mixing_ms_per_sqrt_m3: float = Field(
        default=2.0, gt=0.0, description="tail starts by 2*sqrt(V) ms after the direct sound"
    )
    min_mixing_time_s: float = Field(default=0.02, ge=0.0)
    max_t30_s: float = Field(default=10.0, gt=0.0, description="bounded time and memory")
    seed: int = 0
    scattering: bool = Field(
        default=False, exclude_if=lambda v: not v,
        description="surfaces' scattering coefficients move specular image energy into an earlier "
        "diffuse onset (tasks/rir_engine.py); off: pure specular images, the ELSA render",
    )
    tail_flow: bool = Field(
        default=False, exclude_if=lambda v: not v,
        description="the diffuse tail carries the net energy flow towards the absorbing surfaces that a "
        "real late field has (tasks/rir_engine.py ``tail_flow``); off: an isotropic tail, the ELSA render",
    )
    decay_below_hz: float | None = Field(
        default=None, gt=0.0, exclude_if=lambda v: v is None,
        description="measure the T30 and EDT labels on W low-passed at this frequency (None: broadband W, "
        "the ELSA labels). A broadband decay is a blend of band decays weighted by the response's "
        "spectrum. The engine's bend more than a real room's (more of W's energy above 8 kHz, where it "
        "dies fastest, and slower low octaves), so its label is 14 % shorter than its decay below 8 kHz, "
        "where a real church's is 3-4 % (benchmarks/t30_bands.py). Labels in the band a model hears "
        "mean the same in simulated and measured rooms. Calibration still aims the broadband T30 at the "
        "room's target, so the rooms are the same",
    )
