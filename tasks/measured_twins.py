"""Engine twins of measured rooms: the sim-to-real control of issue 15.

A twin is the project's own shoebox engine (tasks/rir_engine.py) rendering the same
source/receiver geometry as a measured SRIR bank (tasks/measured_bank.py), in a shoebox of the
real room's size whose uniform absorption is calibrated to the real room's measured T30. Scoring a
model on the real rooms beside their twins then separates what the simulator misses (directivity of
real loudspeakers, non-shoebox shape, furniture, a real microphone) from what is merely a harder room.

Per measured room a twin needs:

- its size. In order: the bank manifest's ``dims_m`` (MeasuredRoom.dims_m); a ``room_dims.json``
  inside a WAV bank's folder (beside a SOFA file) mapping room id to ``[L, W, H]`` or to a
  ``TwinGeometry`` object (documented walls with the receiver's position in them, or a box derived
  around the loudspeakers); last, ``S3A_GEOMETRY`` for the S3A rooms of ../shared/realdata. A room
  with none of these is an error (a twin of a room of unknown size would be made up).
- its T30: the median of the full-band T30s the measured source itself records for the room's
  RIRs (render_measured at the build's settings), so the twin is calibrated to exactly what the
  real build labels. A room whose decay has too little range above its noise for any T30 (S3A's
  Vislab: 10-19 dB) gets no twin; the room set says why (``TwinSet.skipped``).

Frames: the shoebox's origin is a corner and its x axis the receiver's front (yaw 0); each source
sits at the receiver plus its labelled (azimuth, elevation, distance) vector, so the twin's labels
are the bank's by construction and its direct path comes from where the label says. Splits and
placement ids come from bank_room_set, so a twin build and the real build hold the same rooms and
positions in each split. Materials: frequency-flat absorption on every surface
(room_sampling.parametric_room), which the engine then calibrates against the rendered T30: the
measured rooms give one full-band T30, not a spectrum, so nothing better is known.
"""

from __future__ import annotations

import hashlib
import json
import math
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
from pydantic import BaseModel, ConfigDict, Field, TypeAdapter, ValidationError, model_validator

from schemas.measured import MeasuredBank, MeasuredRoom
from schemas.rooms import Placement, RirSettings, RoomSpec
from tasks.errors import InvalidRoomError, UnreachableT30Error
from tasks.measured_bank import MeasuredBankError, bank_room_set, render_measured
from tasks.rir_engine import ENGINE_VERSION, validate_geometry
from tasks.room_sampling import parametric_room

TWIN_VERSION = f"twin/1+{ENGINE_VERSION}"
"""The twin source's version: its own string (RIR-bank keys must not collide with ``ism``'s), moving
with the engine's, whose RIRs it is."""
DIMS_FILE = "room_dims.json"
DEFAULT_RECEIVER_HEIGHT_M = 1.5
SOURCE_CLEARANCE_M = 0.1
"""A twin source must be this far inside every wall: an image source on a wall is degenerate."""


class TwinError(InvalidRoomError):
    """A measured room that cannot be twinned as asked: no size, or a source outside the shoebox."""


class TwinGeometry(BaseModel):
    """How big a measured room's twin is and where its receiver stands (a ``room_dims.json`` entry).

    Either ``dims_m`` (documented or measured walls), optionally with the receiver's position in
    that box (default: centred horizontally at ``receiver_height_m``); or ``clearance_m``, for a
    room whose size is not known: the smallest box centred horizontally on the receiver that holds
    every loudspeaker with that much clearance to the walls and the ceiling, floor at
    ``receiver_height_m`` below the receiver. A plain ``[L, W, H]`` reads as ``dims_m``.
    """

    model_config = ConfigDict(frozen=True, extra="forbid")

    dims_m: tuple[float, float, float] | None = None
    receiver_m: tuple[float, float, float] | None = Field(
        None, description="in the box: origin at a corner, x = the receiver's front, y its left, z up")
    receiver_height_m: float | None = Field(None, gt=0.0, description="receiver above the floor")
    clearance_m: float | None = Field(None, gt=0.0, description="derive the box around the loudspeakers")
    source: str = Field("", description="where these numbers come from")

    @model_validator(mode="before")
    @classmethod
    def _plain_dims(cls, data: Any) -> Any:
        return {"dims_m": data} if isinstance(data, list | tuple) else data

    @model_validator(mode="after")
    def _one_way(self) -> TwinGeometry:
        if (self.dims_m is None) == (self.clearance_m is None):
            raise ValueError("give the room's dims_m or a clearance_m to derive them, not both or neither")
        if self.receiver_m is not None and self.dims_m is None:
            raise ValueError("receiver_m is a position in dims_m: give dims_m too")
        if self.receiver_m is not None and self.receiver_height_m is not None:
            raise ValueError("receiver_m already holds the receiver's height")
        if self.dims_m is not None and any(not math.isfinite(d) or d <= 0 for d in self.dims_m):
            raise ValueError(f"room dimensions must be positive, got {self.dims_m}")
        return self


class TwinRoom(BaseModel):
    """A twin as built: the shoebox, its receiver, its target T30 and where each came from. What the
    card and the sim-to-real report cite (RoomSpec has no field for provenance)."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    room_id: str = Field(description="the measured room's id, also the twin RoomSpec's")
    dims_m: tuple[float, float, float]
    receiver_m: tuple[float, float, float]
    dims_source: str
    target_t30_s: float = Field(gt=0.0)
    t30_source: str = Field(description="how many measured T30s the median is over")


@dataclass(frozen=True)
class TwinSet:
    """A twin room set: RoomSpecs and placements (the RirSource's room set), each twin's provenance,
    and the measured rooms left out with the reason."""

    rooms: list[RoomSpec]
    placements: list[Placement]
    digest: str
    twins: dict[str, TwinRoom]
    skipped: dict[str, str]


S3A_DOCS = "S3A 'Related documentation {}.pdf' (../shared/realdata/foa/s3a_soundfield_rirs)"
S3A_GEOMETRY: dict[str, TwinGeometry] = {
    "Vislab": TwinGeometry(
        dims_m=(7.99, 7.73, 3.98), receiver_m=(4.19, 3.78, 1.62),
        source=S3A_DOCS.format("Vislab UCA") + ": walls at x=3.80/-4.19 m and y=3.78/-3.95 m, floor at "
        "z=-1.62 m, ceiling at z=2.36 m around the Soundfield microphone; that document's y is the "
        "microphone's right (FRAME_NOTE.txt), so the twin's left wall is its y=-3.95 m",
    ),
    **{room: TwinGeometry(
        clearance_m=1.0, receiver_height_m=0.97,
        source=S3A_DOCS.format(room) + ": floor at z=-0.97 m below the microphone; no room size (Metadata_"
        "SoundField.txt: 'Size = ;'), so walls and ceiling 1 m beyond the farthest loudspeaker, receiver "
        "centred horizontally: a lower bound on the church's size",
    ) for room in ("MainChurch", "OldChurch")},
}
"""The S3A rooms' twin geometry, found in the bank's own documentation (see ``source``)."""
_S3A = re.compile(r"\bS3A\b|10\.15126/surreydata\.00808465")


# --------------------------------------------------------------------------------------------
# geometry


def dims_file(bank: MeasuredBank) -> Path:
    """Where a bank's ``room_dims.json`` is read from: in a WAV bank's folder, beside a SOFA file
    (where the bank manifest is read from too)."""
    p = Path(bank.path)
    return p / DIMS_FILE if bank.kind == "wav" else p.parent / DIMS_FILE


def read_dims_file(path: Path) -> dict[str, TwinGeometry]:
    """A ``room_dims.json``: {room_id: [L, W, H] or a TwinGeometry object}; {} when absent."""
    if not path.is_file():
        return {}
    try:
        raw = TypeAdapter(dict[str, TwinGeometry]).validate_json(path.read_bytes())
    except ValidationError as exc:
        raise TwinError(f"{path}: not a room-dimensions file ({exc})") from exc
    named = {"source": f"file {path.name}"}
    return {k: g if g.source else g.model_copy(update=named) for k, g in raw.items()}


def geometry_of(room: MeasuredRoom, bank: MeasuredBank, from_file: dict[str, TwinGeometry]) -> TwinGeometry:
    """A room's twin geometry: the bank manifest's dims, else the dims file's entry, else the S3A
    documentation's; a TwinError naming the file to write when none has it."""
    if room.dims_m is not None:
        return TwinGeometry(dims_m=room.dims_m, source="bank manifest dims_m")
    if room.room_id in from_file:
        return from_file[room.room_id]
    if room.room_id in S3A_GEOMETRY and _S3A.search(f"{bank.source} {bank.licence.text}"):
        return S3A_GEOMETRY[room.room_id]
    raise TwinError(f"room {room.room_id}: no size for its twin; give dims_m in the bank manifest or "
                    f"{{{room.room_id!r}: [L, W, H]}} in {dims_file(bank)}")


def box_and_receiver(geometry: TwinGeometry, offsets: np.ndarray
                     ) -> tuple[tuple[float, float, float], tuple[float, float, float]]:
    """The twin's dims and receiver position; ``offsets`` (n, 3) are the sources relative to the
    receiver, which only a derived box (``clearance_m``) needs. Derived sizes round up to the cm."""
    height = geometry.receiver_height_m or DEFAULT_RECEIVER_HEIGHT_M
    if geometry.dims_m is not None:
        dims = geometry.dims_m
        receiver = geometry.receiver_m or (dims[0] / 2.0, dims[1] / 2.0, height)
        return tuple(float(d) for d in dims), tuple(float(r) for r in receiver)  # type: ignore[return-value]
    c = float(geometry.clearance_m)  # type: ignore[arg-type]
    half_x, half_y = (_ceil_cm(float(np.abs(offsets[:, i]).max()) + c) for i in (0, 1))
    top = _ceil_cm(height + max(float(offsets[:, 2].max()), 0.0) + c)
    return (2 * half_x, 2 * half_y, top), (half_x, half_y, height)


def _ceil_cm(x: float) -> float:
    return math.ceil(round(x * 100.0, 6)) / 100.0


# --------------------------------------------------------------------------------------------
# T30


def measured_t30(room: MeasuredRoom, placements: list[Placement], settings: RirSettings
                 ) -> tuple[float | None, str]:
    """The median full-band T30 the measured source records for a room's RIRs at ``settings``, and
    what it is over (or why there is none). RIRs it refuses (direct sound too far from the label)
    are left out, as the real build leaves them out; so are RIRs too noisy for a T30."""
    t30s: list[float] = []
    refused = 0
    for p in placements:
        try:
            _, record = render_measured(room, p, settings)
        except MeasuredBankError:
            refused += 1
            continue
        if record.t30_s is not None:
            t30s.append(record.t30_s)
    note = f" ({refused} refused by the measured source)" if refused else ""
    if not t30s:
        return None, (f"no measured T30 in any of its {len(placements)} RIRs{note}: too little decay above "
                      "the noise floor (45 dB needed)")
    return float(np.median(t30s)), f"median of {len(t30s)} measured T30s of {len(placements)} RIRs{note}"


# --------------------------------------------------------------------------------------------
# the room set


def twin_room_set(bank: MeasuredBank, seed: int, settings: RirSettings,
                  geometry: dict[str, TwinGeometry] | None = None) -> TwinSet:
    """Shoebox twins of every measured room that has a T30, with the real build's splits.

    ``geometry`` (room id -> TwinGeometry) stands in for the bank's ``room_dims.json``; the bank
    manifest's dims still come first. Rooms without a T30, or whose T30 no absorption reaches in
    their box, are in ``skipped`` with the reason; a TwinError when that leaves none. A source
    outside its twin (or within SOURCE_CLEARANCE_M of a wall) is a TwinError naming its file.
    """
    from_file = read_dims_file(dims_file(bank)) if geometry is None else geometry
    # T30 is read off W: any order the bank has will do, so a build above the bank's order can twin it.
    measure_at = settings.model_copy(update={"order": min(settings.order, bank.order)})
    real_rooms, real_placements, _ = bank_room_set(bank, seed)
    by_room: dict[str, list[Placement]] = {}
    for p in real_placements:
        by_room.setdefault(p.room_id, []).append(p)
    rooms: list[RoomSpec] = []
    twins: dict[str, TwinRoom] = {}
    skipped: dict[str, str] = {}
    rows: list[dict] = []
    for room in real_rooms:
        positions = by_room[room.room_id]
        geo = geometry_of(room, bank, from_file)
        dims, receiver = box_and_receiver(geo, np.array([p.source_m for p in positions]))
        twin_rows = [_twin_row(p, dims, receiver) for p in positions]
        t30, t30_source = measured_t30(room, positions, measure_at)
        if t30 is None:
            skipped[room.room_id] = t30_source
            continue
        try:
            spec = parametric_room(dims, t30, room.room_id)
        except UnreachableT30Error as exc:
            skipped[room.room_id] = f"measured T30 {t30:.3f} s is out of its twin's reach: {exc}"
            continue
        rooms.append(spec)
        twins[room.room_id] = TwinRoom(room_id=room.room_id, dims_m=dims, receiver_m=receiver,
                                       dims_source=geo.source, target_t30_s=t30, t30_source=t30_source)
        rows += twin_rows
    if not rooms:
        raise TwinError(f"{bank.path}: no room can be twinned: {skipped}")
    payload = {"bank_id": bank.bank_id, "seed": seed, "version": TWIN_VERSION,
               "rooms": [r.model_dump(mode="json") for r in rooms],
               "twins": [t.model_dump(mode="json") for t in twins.values()], "placements": rows}
    blob = json.dumps(payload, sort_keys=True, separators=(",", ":")).encode()
    digest = hashlib.sha256(blob).hexdigest()[:16]
    return TwinSet(rooms=rooms, placements=[Placement(**r, room_set_hash=digest) for r in rows],
                   digest=digest, twins=twins, skipped=skipped)


def _twin_row(p: Placement, dims: tuple[float, float, float], receiver: tuple[float, float, float]) -> dict:
    """The measured placement moved into the twin: the receiver where the twin has it (yaw 0), the
    source at the receiver plus the labelled vector (bank_room_set's source_m, receiver at the
    origin), the labels, id and split unchanged; no SRIR."""
    source = tuple(float(r + s) for r, s in zip(receiver, p.source_m, strict=True))
    try:
        validate_geometry(dims, receiver, source, SOURCE_CLEARANCE_M)  # type: ignore[arg-type]
    except InvalidRoomError as exc:
        name = p.srir.file if p.srir is not None else p.placement_id
        raise TwinError(f"room {p.room_id}: {name} (az {p.azimuth_deg}, el {p.elevation_deg}, "
                        f"{p.distance_m} m) does not fit its twin: {exc}") from None
    return {"placement_id": p.placement_id, "room_id": p.room_id, "split": p.split, "receiver_m": receiver,
            "receiver_yaw_deg": 0.0, "source_m": source, "azimuth_deg": p.azimuth_deg,
            "elevation_deg": p.elevation_deg, "distance_m": p.distance_m}
