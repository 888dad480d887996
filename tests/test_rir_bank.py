"""The RIR bank: content-hash keys, lossless chunk round trip, bad rooms as rejects."""

from __future__ import annotations

import io
import json

import numpy as np
import pytest

from room_specs import DEFAULT_CONFIG
from schemas.rooms import RirSettings
from tasks.rir_bank import bank_key, pack_chunk, render_chunk, unpack_chunk
from tasks.room_sampling import load_config, sample_room_set

FAST = RirSettings(calibrate=False, max_ism_order=4)


@pytest.fixture(scope="module")
def room_set():
    return sample_room_set(load_config(DEFAULT_CONFIG), seed=9, n_rooms=3)


def test_chunk_round_trip_is_lossless(room_set):
    rooms, placements, digest = room_set
    rirs, records, rejects = render_chunk({r.room_id: r for r in rooms}, placements[:3], FAST)
    assert len(rirs) == 3 and not rejects
    assert {r.room_set_hash for r in records} == {digest}
    back_rirs, back_records, back_rejects = unpack_chunk(pack_chunk(rirs, records, rejects))
    assert back_records == records and back_rejects == []
    for pid, rir in rirs.items():
        assert back_rirs[pid].dtype == np.float32 and np.array_equal(back_rirs[pid], rir)


def test_key_tracks_every_input(room_set):
    rooms, placements, _ = room_set
    key = bank_key(rooms, placements[:2], FAST)
    assert key == bank_key(list(reversed(rooms)), list(reversed(placements[:2])), FAST)
    assert key != bank_key(rooms, placements[:2], FAST.model_copy(update={"seed": 1}))
    assert key != bank_key(rooms, placements[:3], FAST)
    moved = placements[0].model_copy(update={"receiver_yaw_deg": 10.0})
    assert key != bank_key(rooms, [moved, placements[1]], FAST)


def test_impossible_room_becomes_a_reject(room_set):
    rooms, placements, _ = room_set
    bad = rooms[0].model_copy(update={"target_t30_s": 50.0})
    by_id = {r.room_id: r for r in rooms} | {bad.room_id: bad}
    wanted = (rooms[0].room_id, rooms[1].room_id)
    chosen = [p for p in placements if p.room_id in wanted and p.split == "train"]
    rirs, records, rejects = render_chunk(by_id, chosen, FAST.model_copy(update={"calibrate": True}))
    assert [r.room_id for r in rejects] == [bad.room_id]
    assert rejects[0].reason == "UnreachableT30Error" and "render limit" in rejects[0].detail
    assert [r.room_id for r in records] == [rooms[1].room_id] and len(rirs) == 1


def test_chunk_from_before_room_sources_still_unpacks(room_set):
    """Chunk keys hash the inputs, not the record, so a rebuild finds chunks written when the
    shoebox fields sat flat on RirRecord; they must read back as the same ISM records."""
    rooms, placements, _ = room_set
    rirs, records, _ = render_chunk({r.room_id: r for r in rooms}, placements[:2], FAST)
    flat = []
    for r in records:
        row = r.model_dump(mode="json")
        row.pop("method")
        flat.append(row | row.pop("ism"))
    legacy = io.BytesIO()
    meta = json.dumps({"records": flat, "rejects": []}).encode()
    np.savez(legacy, meta=np.frombuffer(meta, dtype=np.uint8), **{f"rir/{k}": v for k, v in rirs.items()})
    _, back, _ = unpack_chunk(legacy.getvalue())
    assert back == records and {r.method for r in back} == {"ism"}
    assert all(r.ism is not None and r.ism.target_t30_s > 0 for r in back)
