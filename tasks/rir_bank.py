"""The RIR bank: one measured ambisonic RIR per placement, computed once, keyed by content hash.

RIRs depend only on (room, placement, render settings, room source and its version), so the bank
is rendered
once per room set and reused by every clip (about 100 each at paper scale). Chunks of the bank
travel as single ``.npz`` blobs so that a stage task moves one object, not thousands.
"""

from __future__ import annotations

import hashlib
import io
import json

import numpy as np
from pydantic import BaseModel, ConfigDict

from schemas.rooms import Placement, RirRecord, RirSettings, RoomSpec
from tasks.errors import SpatialAudioCapsError
from tasks.rir_sources import DEFAULT_RIR_SOURCE, rir_source


class BankReject(BaseModel):
    """A placement whose RIR could not be rendered (unreachable T30, impossible geometry)."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    placement_id: str
    room_id: str
    reason: str
    detail: str


def bank_key(
    rooms: list[RoomSpec],
    placements: list[Placement],
    settings: RirSettings,
    source: str = DEFAULT_RIR_SOURCE,
) -> str:
    """sha256 over everything a chunk of RIRs depends on; changes whenever a RIR would.

    The source enters through its version (the shoebox's is ENGINE_VERSION, as before sources
    existed, so its keys did not change); sources must not share a version string.
    """
    payload = {
        "engine": rir_source(source).version,
        "settings": settings.model_dump(mode="json"),
        "rooms": sorted((r.model_dump(mode="json") for r in rooms), key=lambda r: r["room_id"]),
        "placements": [p.model_dump(mode="json") for p in sorted(placements, key=lambda p: p.placement_id)],
    }
    return hashlib.sha256(json.dumps(payload, sort_keys=True).encode()).hexdigest()[:20]


def render_chunk(
    rooms: dict[str, RoomSpec],
    placements: list[Placement],
    settings: RirSettings,
    source: str = DEFAULT_RIR_SOURCE,
) -> tuple[dict[str, np.ndarray], list[RirRecord], list[BankReject]]:
    """Render and measure the RIRs of some placements with a room source (tasks/rir_sources.py);
    bad rooms become rejects, not crashes."""
    src = rir_source(source)
    rirs: dict[str, np.ndarray] = {}
    records: list[RirRecord] = []
    rejects: list[BankReject] = []
    for p in placements:
        try:
            rir, record = src.render(rooms[p.room_id], p, settings)
        except SpatialAudioCapsError as exc:
            rejects.append(BankReject(placement_id=p.placement_id, room_id=p.room_id,
                                      reason=type(exc).__name__, detail=str(exc)))
            continue
        rirs[p.placement_id] = rir
        records.append(record)
    return rirs, records, rejects


def pack_chunk(rirs: dict[str, np.ndarray], records: list[RirRecord], rejects: list[BankReject]) -> bytes:
    """One self-describing blob: the float32 RIRs plus their records and rejects as JSON."""
    buf = io.BytesIO()
    meta = {
        "records": [r.model_dump(mode="json") for r in records],
        "rejects": [r.model_dump(mode="json") for r in rejects],
    }
    arrays = {f"rir/{pid}": rir.astype(np.float32) for pid, rir in rirs.items()}
    np.savez(buf, meta=np.frombuffer(json.dumps(meta).encode(), dtype=np.uint8), **arrays)
    return buf.getvalue()


def unpack_chunk(data: bytes) -> tuple[dict[str, np.ndarray], list[RirRecord], list[BankReject]]:
    """Inverse of pack_chunk."""
    with np.load(io.BytesIO(data), allow_pickle=False) as z:
        meta = json.loads(z["meta"].tobytes())
        rirs = {name.removeprefix("rir/"): z[name] for name in z.files if name.startswith("rir/")}
    return (
        rirs,
        [RirRecord.model_validate(r) for r in meta["records"]],
        [BankReject.model_validate(r) for r in meta["rejects"]],
    )
