"""Direction-of-arrival estimate: the record the label QA checks and the `doa` CLI print.

Angles follow DESIGN.md: azimuth 0 = front, +90 = left, range (-180, 180]; elevation +90 = up.
azimuth_deg and elevation_deg come first so `model_dump()` prints them first.
"""

from __future__ import annotations

from pydantic import BaseModel, ConfigDict, Field, model_validator


class DoaEstimate(BaseModel):
    """Active-intensity direction of one time window (and frequency band) of an FOA signal."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    azimuth_deg: float = Field(gt=-180.0, le=180.0)
    elevation_deg: float = Field(ge=-90.0, le=90.0)
    # 1 - |<I>| / <E> over the window/band: 0 for one plane wave, 1 for an SN3D diffuse field.
    # Only meaningful for SN3D input (N3D-scaled channels shift it, the direction is unaffected).
    diffuseness: float = Field(ge=0.0, le=1.0)
    start_s: float = Field(ge=0.0, description="window start in the analysed signal, seconds")
    end_s: float = Field(gt=0.0, description="window end (exclusive), seconds")
    band_hz: tuple[float, float] | None = Field(
        description="analysis band; None means the broadband time-domain estimate"
    )

    @model_validator(mode="after")
    def _ordered(self) -> DoaEstimate:
        if self.end_s <= self.start_s:
            raise ValueError(f"end_s ({self.end_s}) must be after start_s ({self.start_s})")
        if self.band_hz is not None and not 0.0 <= self.band_hz[0] < self.band_hz[1]:
            raise ValueError(f"band_hz must be (low, high) with 0 <= low < high, got {self.band_hz}")
        return self
