"""The DCASE/STARSS23 metadata csv of a scene sample: written from its json labels, read and checked.

The DCASE 2024 form (STARSS23 with distance): one row per active source per 100 ms frame, no
header, ``frame, class, track, azimuth, elevation, distance`` in integers, azimuth in [-180, 180)
with +azimuth = left, elevation in [-90, 90], distance in cm, rows sorted by frame then track, so
SELD tools read it unchanged. It is written from the json's ``sources`` (``dcase_rows``), so a
reader checks that the two agree: ``read_dcase_csv(csv) == dcase_rows(sources)``. Integers are
rounded half up (not Python's half to even), and an azimuth that rounds to 180 is written -180.
Only schemas here: the shard writer and reader use it without the scene geometry.
"""

from __future__ import annotations

import math
import re
from collections.abc import Sequence
from typing import NamedTuple

from schemas.scenes import SceneSourceLabels
from tasks.errors import SpatialAudioCapsError

CLASSES: tuple[str, ...] = (
    "person", "animal", "vehicle", "instrument", "signal", "machine", "tool", "object", "food",
    "water", "air", "weather", "fire", "plant", "blast", "other",
)
"""DCASE class list: the families of the sound-source lexicon (tasks.rephrase.sound_sources) and a
catch-all, ``other``, for clips whose captions name none. Append-only (a new lexicon family goes at
the end), so a class index means the same in every dataset version."""
OTHER = CLASSES.index("other")
_INT = re.compile(r"-?\d+")


class DcaseCsvError(SpatialAudioCapsError):
    """A metadata csv that breaks the STARSS23 rules (columns, integers, ranges, frame order)."""


class DcaseRow(NamedTuple):
    """One csv row: a source active in one 100 ms frame."""

    frame: int
    class_index: int
    track: int
    azimuth_deg: int
    elevation_deg: int
    distance_cm: int


def dcase_rows(sources: Sequence[SceneSourceLabels]) -> list[DcaseRow]:
    """The csv's rows from the json labels: integers, sorted by frame then track."""
    rows = [
        DcaseRow(f.frame, s.class_index, s.index, _azimuth(f.azimuth_deg), _half_up(f.elevation_deg),
                 _half_up(f.distance_m * 100.0))
        for s in sources
        for f in s.frames
    ]
    return sorted(rows, key=lambda r: (r.frame, r.track))


def dcase_csv(sources: Sequence[SceneSourceLabels]) -> bytes:
    """The ``.csv`` member: DCASE 2024 metadata, no header (as STARSS23)."""
    return "".join(",".join(str(v) for v in row) + "\n" for row in dcase_rows(sources)).encode("ascii")


def read_dcase_csv(data: bytes, n_classes: int = len(CLASSES)) -> list[DcaseRow]:
    """Rows of a metadata csv, checked against the STARSS23 rules: six integer columns, frame and
    track >= 0, class in [0, n_classes), azimuth in [-180, 180), elevation in [-90, 90], distance
    (cm) >= 0, frames in order, no (frame, class, track) twice. DcaseCsvError names the bad row."""
    try:
        text = data.decode("ascii")
    except UnicodeDecodeError as exc:
        raise DcaseCsvError(f"metadata csv is not ASCII text: {exc}") from None
    rows: list[DcaseRow] = []
    seen: set[tuple[int, int, int]] = set()
    for n, line in enumerate(text.splitlines(), 1):
        cells = line.split(",")
        if len(cells) != len(DcaseRow._fields):
            raise DcaseCsvError(
                f"row {n}: {len(cells)} columns, want 6 ({', '.join(DcaseRow._fields)}): {line!r}"
            )
        bad = [name for name, cell in zip(DcaseRow._fields, cells, strict=True) if not _INT.fullmatch(cell)]
        if bad:
            raise DcaseCsvError(f"row {n}: {', '.join(bad)} not an integer: {line!r}")
        row = DcaseRow(*(int(c) for c in cells))
        problems = [
            what for what, ok in (
                ("frame < 0", row.frame >= 0),
                (f"class outside [0, {n_classes})", 0 <= row.class_index < n_classes),
                ("track < 0", row.track >= 0),
                ("azimuth outside [-180, 180)", -180 <= row.azimuth_deg < 180),
                ("elevation outside [-90, 90]", -90 <= row.elevation_deg <= 90),
                ("distance < 0", row.distance_cm >= 0),
                ("frame before the previous row's", not rows or row.frame >= rows[-1].frame),
                ("(frame, class, track) repeated", (row.frame, row.class_index, row.track) not in seen),
            ) if not ok
        ]
        if problems:
            raise DcaseCsvError(f"row {n}: {'; '.join(problems)}: {line!r}")
        seen.add((row.frame, row.class_index, row.track))
        rows.append(row)
    return rows


def _half_up(x: float) -> int:
    return math.floor(x + 0.5)


def _azimuth(az_deg: float) -> int:
    """Integer azimuth in [-180, 180): the label's (-180, 180] rounded, 180 written as -180."""
    r = _half_up(az_deg)
    return r - 360 if r >= 180 else r
