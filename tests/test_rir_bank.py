"""The RIR bank: content-hash keys, lossless chunk round trip, bad rooms as rejects, the bounded
per-process chunk cache (ranged member reads, LRU by bytes)."""

from __future__ import annotations

import io
import json
from pathlib import Path

import numpy as np
import pytest

from room_specs import DEFAULT_CONFIG
from schemas.rooms import RirSettings
from tasks.rir_bank import BankCache, BankReject, bank_cache, bank_key, pack_chunk, render_chunk, unpack_chunk
from tasks.room_sampling import load_config, sample_room_set
from tasks.storage import LocalStorage, ObjectMissing

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


@pytest.fixture(scope="module")
def bank(room_set, tmp_path_factory):
    """Six chunks of eight synthetic RIRs (distinct lengths, so a mix-up shows), written like the
    build's chunks; one real record cloned per placement (only the arrays are read here)."""
    rooms, placements, _ = room_set
    _, records, _ = render_chunk({r.room_id: r for r in rooms}, placements[:1], FAST)
    root = tmp_path_factory.mktemp("bank")
    chunks: dict[str, dict[str, np.ndarray]] = {}
    for c in range(6):
        pids = [f"room{c}-train-{j}" for j in range(8)]
        rirs = {pid: np.full((4, 4000 + 10 * (8 * c + j)), 8 * c + j, np.float32)
                for j, pid in enumerate(pids)}
        recs = [records[0].model_copy(update={"placement_id": pid}) for pid in pids]
        rejects = [BankReject(placement_id=f"room{c}-train-9", room_id=f"room{c}", reason="X", detail="y")]
        uri = str(root / f"chunk-{c}.npz")
        (root / f"chunk-{c}.npz").write_bytes(pack_chunk(rirs, recs, rejects))
        chunks[uri] = rirs
    return chunks


@pytest.fixture
def reads(monkeypatch):
    """Every ranged read of local storage, as (uri, start, length)."""
    seen: list[tuple[str, int, int]] = []
    real = LocalStorage.read_range

    def counting(self, uri, start, length):
        seen.append((uri, start, length))
        return real(self, uri, start, length)

    monkeypatch.setattr(LocalStorage, "read_range", counting)
    return seen


def test_cache_returns_what_unpack_returns_and_reads_only_the_members_asked_for(bank, reads):
    uris = sorted(bank)
    cache = BankCache(max_bytes=1 << 30)
    wanted = ["room0-train-1", "room0-train-2", "room1-train-7", "room1-train-9", "nowhere"]
    rirs, records = cache.get(uris[:2], wanted)
    assert sorted(rirs) == sorted(records) == ["room0-train-1", "room0-train-2", "room1-train-7"]
    for uri in uris[:2]:
        full, full_records, _ = unpack_chunk(Path(uri).read_bytes())
        for pid in set(rirs) & set(full):
            assert np.array_equal(rirs[pid], full[pid]) and rirs[pid].dtype == np.float32
            assert records[pid] == next(r for r in full_records if r.placement_id == pid)
    used = sum(a.nbytes for a in rirs.values())
    chunk_bytes = sum(Path(u).stat().st_size for u in uris[:2])
    assert cache.bytes_used == used
    assert cache.bytes_read == sum(n for _, _, n in reads)
    assert used < cache.bytes_read < chunk_bytes / 2  # 3 of 16 RIRs: the rest never crossed


def test_a_hit_does_not_touch_storage_and_new_members_read_only_themselves(bank, reads):
    uris = sorted(bank)
    cache = BankCache(max_bytes=1 << 30)
    cache.get(uris[:1], ["room0-train-0"])
    before, read_before = len(reads), cache.bytes_read
    rirs, _ = cache.get(uris[:1], ["room0-train-0"])
    assert len(reads) == before and cache.bytes_read == read_before
    assert cache.bytes_used == 2 * rirs["room0-train-0"].nbytes
    cache.get(uris[:1], ["room0-train-0", "room0-train-5"])
    new = reads[before:]
    assert len(new) == 1 and new[0][2] < 2 * bank[uris[0]]["room0-train-5"].nbytes  # no directory re-read


def test_eviction_keeps_the_cache_under_its_bound_least_recently_used_first(bank, reads):
    uris = sorted(bank)
    chunk = sum(a.nbytes for a in bank[uris[0]].values())
    cache = BankCache(max_bytes=int(2.5 * chunk))
    everything = [pid for rirs in bank.values() for pid in rirs]
    for uri in uris:
        cache.get([uri], everything)
        assert cache.nbytes <= cache.max_bytes
    assert list(cache._chunks) == uris[-2:]
    cache.get([uris[-2]], everything)  # the older of the two becomes the most recent
    cache.get([uris[0]], everything)
    assert list(cache._chunks) == [uris[-2], uris[0]]
    before = len(reads)
    rirs, _ = cache.get([uris[-1]], everything)  # evicted: read again
    assert len(reads) > before and len(rirs) == 8


def test_a_chunk_larger_than_the_bound_is_kept_alone(bank):
    uris = sorted(bank)
    cache = BankCache(max_bytes=1000)
    everything = [pid for rirs in bank.values() for pid in rirs]
    rirs, _ = cache.get(uris[:3], everything)
    assert len(rirs) == 24 and list(cache._chunks) == [uris[2]]


def test_a_missing_chunk_is_a_storage_error(tmp_path):
    with pytest.raises(ObjectMissing, match="no such object"):
        BankCache(1 << 20).get([str(tmp_path / "chunk-gone.npz")], ["room0-train-0"])


def test_the_process_cache_is_one_instance_per_bound():
    assert bank_cache(64) is bank_cache(64)
    assert bank_cache(32).max_bytes == 32 << 20
