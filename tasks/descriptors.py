"""Numbers to words: DESIGN.md's table, one band per slot, values in the gaps get no word.

``descriptor_bands`` is the table: every word's interval, with its edges' sides, read from a
DescriptorConfig (the sides are documented there). Everything else derives from it: the scalar
``*_word`` functions and ``describe``, ``describe_arrays`` (the same rule over numpy arrays for
whole sample plans), the dataset card's shaded bands and evaluation's zero-shot classes, so the
words of a dataset follow from its config and labels alone.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import yaml
from pydantic import ValidationError

from schemas.captions import DescriptorConfig, Descriptors, SpatialAttributes
from tasks.errors import SpatialAudioCapsError

DEFAULT_DESCRIPTOR_CONFIG = _DEFAULT = DescriptorConfig()
SLOT_LABELS: dict[str, str] = {
    "distance": "distance_m",
    "elevation": "elevation_deg",
    "direction": "azimuth_deg",
    "size": "floor_area_m2",
    "reverb": "t30_s",
}
"""The measured label each descriptor slot reads (azimuth wrapped to (-180, 180] first)."""


@dataclass(frozen=True)
class Band:
    """One word's interval of a label; ``closed`` says whether the (lo, hi) edges belong to it."""

    word: str
    lo: float
    hi: float
    closed: tuple[bool, bool] = (False, False)

    def holds(self, x: np.ndarray | float) -> np.ndarray | bool:
        """Whether x (a number or an array; NaN never) lies in the band."""
        above = x >= self.lo if self.closed[0] else x > self.lo
        below = x <= self.hi if self.closed[1] else x < self.hi
        return above & below


def descriptor_bands(cfg: DescriptorConfig = _DEFAULT) -> dict[str, tuple[Band, ...]]:
    """DESIGN.md's table: slot → its words' bands, first match wins (back spans ±180°)."""
    inf = math.inf
    return {
        "distance": (Band("near", -inf, cfg.near_below_m), Band("far", cfg.far_above_m, inf)),
        "elevation": (Band("up", cfg.up_above_deg, inf), Band("down", -inf, cfg.down_below_deg)),
        "direction": (
            Band("front", -cfg.front_max_deg, cfg.front_max_deg, (True, True)),
            Band("left", cfg.side_min_deg, cfg.side_max_deg, (True, True)),
            Band("right", -cfg.side_max_deg, -cfg.side_min_deg, (True, True)),
            Band("back", cfg.back_above_deg, 180.0, (False, True)),
            Band("back", -180.0, -cfg.back_above_deg),
        ),
        "size": (Band("small", -inf, cfg.small_below_m2), Band("large", cfg.large_above_m2, inf)),
        "reverb": (
            Band("acoustically dampened", -inf, cfg.dampened_below_s),
            Band("highly reverberant", cfg.reverberant_above_s, inf),
        ),
    }


def _word(slot: str, value: float | None, cfg: DescriptorConfig) -> str | None:
    if value is None:
        return None
    return next((b.word for b in descriptor_bands(cfg)[slot] if b.holds(value)), None)


def load_descriptor_config(path: str | Path) -> DescriptorConfig:
    """Read thresholds from YAML; keys not given keep DESIGN.md's defaults."""
    try:
        raw = yaml.safe_load(Path(path).read_text()) or {}
        return DescriptorConfig.model_validate(raw)
    except (OSError, yaml.YAMLError, ValidationError) as exc:
        raise SpatialAudioCapsError(f"invalid descriptor config {path}: {exc}") from exc


def wrap_azimuth(azimuth_deg: float | np.ndarray) -> float | np.ndarray:
    """Map any angle (or array of angles) to (-180, 180], the convention's range (-180 becomes +180)."""
    return -((-azimuth_deg + 180.0) % 360.0 - 180.0)


def distance_word(distance_m: float | None, cfg: DescriptorConfig = _DEFAULT) -> str | None:
    """near below near_below_m, far above far_above_m, both exclusive."""
    return _word("distance", distance_m, cfg)


def direction_word(azimuth_deg: float | None, cfg: DescriptorConfig = _DEFAULT) -> str | None:
    """front/left/right inclusive of their edges, back exclusive, after wrapping to (-180, 180]."""
    return _word("direction", None if azimuth_deg is None else wrap_azimuth(azimuth_deg), cfg)


def elevation_word(elevation_deg: float | None, cfg: DescriptorConfig = _DEFAULT) -> str | None:
    """up above up_above_deg, down below down_below_deg, both exclusive."""
    return _word("elevation", elevation_deg, cfg)


def reverb_word(t30_s: float | None, cfg: DescriptorConfig = _DEFAULT) -> str | None:
    """Full-band T30 in seconds; both edges exclusive."""
    return _word("reverb", t30_s, cfg)


def size_word(floor_area_m2: float | None, cfg: DescriptorConfig = _DEFAULT) -> str | None:
    """Floor area in m²; both edges exclusive."""
    return _word("size", floor_area_m2, cfg)


def describe(attrs: SpatialAttributes, cfg: DescriptorConfig = _DEFAULT) -> Descriptors:
    """The descriptors of one sample's measured labels."""
    return Descriptors(
        distance=distance_word(attrs.distance_m, cfg),
        elevation=elevation_word(attrs.elevation_deg, cfg),
        direction=direction_word(attrs.azimuth_deg, cfg),
        size=size_word(attrs.floor_area_m2, cfg),
        reverb=reverb_word(attrs.t30_s, cfg),
    )


def describe_arrays(
    azimuth_deg: np.ndarray,
    elevation_deg: np.ndarray,
    distance_m: np.ndarray,
    floor_area_m2: np.ndarray,
    t30_s: np.ndarray,
    cfg: DescriptorConfig = DEFAULT_DESCRIPTOR_CONFIG,
) -> list[Descriptors]:
    """``describe`` over whole columns (NaN = unknown), for sample plans of ~1e6 rows."""
    az, el, dist, area, t30 = (np.asarray(a, dtype=np.float64) for a in
                               (azimuth_deg, elevation_deg, distance_m, floor_area_m2, t30_s))
    az = wrap_azimuth(az)
    values = {"distance": dist, "elevation": el, "direction": az, "size": area, "reverb": t30}
    words = {}
    for slot, bands in descriptor_bands(cfg).items():
        column = np.full(values[slot].shape, None, dtype=object)
        for band in reversed(bands):  # the first band that holds a value writes last
            column[band.holds(values[slot])] = band.word
        words[slot] = column
    columns = list(words)
    return [Descriptors(**dict(zip(columns, row, strict=True))) for row in zip(*words.values(), strict=True)]
