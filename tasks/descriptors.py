"""Numbers to words: DESIGN.md's table, one band per slot, values in the gaps get no word.

Scalar functions state each edge once; ``describe_arrays`` is the same rule over numpy arrays for
whole sample plans. Both read their thresholds from a DescriptorConfig (the edge sides are
documented there), so the words of a dataset follow from its config and labels alone.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import yaml
from pydantic import ValidationError

from schemas.captions import DescriptorConfig, Descriptors, SpatialAttributes
from tasks.errors import SpatialAudioCapsError

DEFAULT_DESCRIPTOR_CONFIG = _DEFAULT = DescriptorConfig()


def load_descriptor_config(path: str | Path) -> DescriptorConfig:
    """Read thresholds from YAML; keys not given keep DESIGN.md's defaults."""
    try:
        raw = yaml.safe_load(Path(path).read_text()) or {}
        return DescriptorConfig.model_validate(raw)
    except (OSError, yaml.YAMLError, ValidationError) as exc:
        raise SpatialAudioCapsError(f"invalid descriptor config {path}: {exc}") from exc


def wrap_azimuth(azimuth_deg: float) -> float:
    """Map any angle to (-180, 180], the convention's range (so -180 becomes +180)."""
    return -((-azimuth_deg + 180.0) % 360.0 - 180.0)


def distance_word(distance_m: float | None, cfg: DescriptorConfig = _DEFAULT) -> str | None:
    """near below near_below_m, far above far_above_m, both exclusive."""
    if distance_m is None:
        return None
    if distance_m < cfg.near_below_m:
        return "near"
    if distance_m > cfg.far_above_m:
        return "far"
    return None


def direction_word(azimuth_deg: float | None, cfg: DescriptorConfig = _DEFAULT) -> str | None:
    """front/left/right inclusive of their edges, back exclusive, after wrapping to (-180, 180]."""
    if azimuth_deg is None:
        return None
    az = wrap_azimuth(azimuth_deg)
    if -cfg.front_max_deg <= az <= cfg.front_max_deg:
        return "front"
    if cfg.side_min_deg <= az <= cfg.side_max_deg:
        return "left"
    if -cfg.side_max_deg <= az <= -cfg.side_min_deg:
        return "right"
    if abs(az) > cfg.back_above_deg:
        return "back"
    return None


def elevation_word(elevation_deg: float | None, cfg: DescriptorConfig = _DEFAULT) -> str | None:
    """up above up_above_deg, down below down_below_deg, both exclusive."""
    if elevation_deg is None:
        return None
    if elevation_deg > cfg.up_above_deg:
        return "up"
    if elevation_deg < cfg.down_below_deg:
        return "down"
    return None


def reverb_word(t30_s: float | None, cfg: DescriptorConfig = _DEFAULT) -> str | None:
    """Full-band T30 in seconds; both edges exclusive."""
    if t30_s is None:
        return None
    if t30_s < cfg.dampened_below_s:
        return "acoustically dampened"
    if t30_s > cfg.reverberant_above_s:
        return "highly reverberant"
    return None


def size_word(floor_area_m2: float | None, cfg: DescriptorConfig = _DEFAULT) -> str | None:
    """Floor area in m²; both edges exclusive."""
    if floor_area_m2 is None:
        return None
    if floor_area_m2 < cfg.small_below_m2:
        return "small"
    if floor_area_m2 > cfg.large_above_m2:
        return "large"
    return None


def describe(attrs: SpatialAttributes, cfg: DescriptorConfig = _DEFAULT) -> Descriptors:
    """The descriptors of one sample's measured labels."""
    return Descriptors(
        distance=distance_word(attrs.distance_m, cfg),
        elevation=elevation_word(attrs.elevation_deg, cfg),
        direction=direction_word(attrs.azimuth_deg, cfg),
        size=size_word(attrs.floor_area_m2, cfg),
        reverb=reverb_word(attrs.t30_s, cfg),
    )


def _bands(values: np.ndarray, conditions: list[tuple[np.ndarray, str]]) -> np.ndarray:
    """First matching word per element, None elsewhere (NaN, i.e. unknown, matches nothing)."""
    out = np.full(values.shape, None, dtype=object)
    for cond, word in reversed(conditions):
        out[cond] = word
    return out


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
    az = -(np.mod(-az + 180.0, 360.0) - 180.0)
    words = {
        "distance": _bands(dist, [(dist < cfg.near_below_m, "near"), (dist > cfg.far_above_m, "far")]),
        "elevation": _bands(el, [(el > cfg.up_above_deg, "up"), (el < cfg.down_below_deg, "down")]),
        "direction": _bands(az, [
            ((az >= -cfg.front_max_deg) & (az <= cfg.front_max_deg), "front"),
            ((az >= cfg.side_min_deg) & (az <= cfg.side_max_deg), "left"),
            ((az >= -cfg.side_max_deg) & (az <= -cfg.side_min_deg), "right"),
            (np.abs(az) > cfg.back_above_deg, "back"),
        ]),
        "size": _bands(area, [(area < cfg.small_below_m2, "small"), (area > cfg.large_above_m2, "large")]),
        "reverb": _bands(t30, [(t30 < cfg.dampened_below_s, "acoustically dampened"),
                               (t30 > cfg.reverberant_above_s, "highly reverberant")]),
    }
    columns = list(words)
    return [Descriptors(**dict(zip(columns, row, strict=True))) for row in zip(*words.values(), strict=True)]
