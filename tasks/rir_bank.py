"""The RIR bank: one measured ambisonic RIR per placement, computed once, keyed by content hash.

RIRs depend only on (room, placement, render settings, room source and its version), so the bank
is rendered once per room set and reused by every clip (about 100 each at paper scale). Chunks of
the bank travel as single ``.npz`` blobs so that a stage task moves one object, not thousands.

A shard task reads its RIRs through the process's ``BankCache``: only the members it needs, by
byte range, and a chunk member once per worker process while it stays cached.
"""

from __future__ import annotations

import hashlib
import io
import json
import os
import threading
import zipfile
from collections import OrderedDict
from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import Any

import numpy as np
from pydantic import BaseModel, ConfigDict

from schemas.rooms import Placement, RirRecord, RirSettings, RoomSpec
from tasks.errors import SpatialAudioCapsError
from tasks.rir_sources import DEFAULT_RIR_SOURCE, rir_source
from tasks.storage import ObjectMissing, Storage, open_storage, safe_uri


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


_RIR = "rir/"  # a RIR's member name is rir/{placement_id} (.npy inside the zip)


def pack_chunk(rirs: dict[str, np.ndarray], records: list[RirRecord], rejects: list[BankReject]) -> bytes:
    """One self-describing blob: the float32 RIRs plus their records and rejects as JSON."""
    buf = io.BytesIO()
    meta = {
        "records": [r.model_dump(mode="json") for r in records],
        "rejects": [r.model_dump(mode="json") for r in rejects],
    }
    arrays = {_RIR + pid: rir.astype(np.float32) for pid, rir in rirs.items()}
    np.savez(buf, meta=np.frombuffer(json.dumps(meta).encode(), dtype=np.uint8), **arrays)
    return buf.getvalue()


def unpack_chunk(data: bytes) -> tuple[dict[str, np.ndarray], list[RirRecord], list[BankReject]]:
    """Inverse of pack_chunk."""
    with np.load(io.BytesIO(data), allow_pickle=False) as z:
        records, rejects = _meta(z["meta"])
        rirs = {name.removeprefix(_RIR): z[name] for name in z.files if name.startswith(_RIR)}
    return rirs, records, rejects


def _meta(meta: np.ndarray) -> tuple[list[RirRecord], list[BankReject]]:
    """A chunk's records and rejects from its ``meta`` member (JSON bytes)."""
    doc = json.loads(meta.tobytes())
    return ([RirRecord.model_validate(r) for r in doc["records"]],
            [BankReject.model_validate(r) for r in doc["rejects"]])


# --------------------------------------------------------------------------------------------
# the per-process chunk cache

TAIL_BYTES = 16 << 10
"""First read of a chunk: its last 16 KiB, which hold the zip's central directory (about 100
bytes a member) so that opening the chunk costs one ranged read."""
LOCAL_HEADER_MAX = 30 + 64
"""A member's local zip header beyond its name: 30 fixed bytes plus numpy's zip64 extra (20)
with room to spare; a longer one is fetched on demand, so this is a guess, not a rule."""
MERGE_GAP = 64 << 10
"""Members closer than this are fetched as one range: a request saved is worth the gap's bytes."""


class _RangeView(io.RawIOBase):
    """A seekable read-only view of one stored object that fetches exact byte ranges (counted in
    ``fetched``) and serves reads from what it fetched, so zipfile can walk a chunk on s3:// while
    only the bytes a caller asked for cross the network."""

    def __init__(self, storage: Storage, uri: str, size: int, spans: Iterable[tuple[int, bytes]] = ()):
        super().__init__()
        self._storage, self._uri, self.size = storage, uri, size
        self._spans = list(spans)
        self._pos = 0
        self.fetched = 0

    def fetch(self, start: int, stop: int) -> tuple[int, bytes]:
        """Read [start, stop) (clipped to the object) from storage; the span it keeps."""
        start, stop = max(0, start), min(self.size, stop)
        data = self._storage.read_range(self._uri, start, stop - start) if stop > start else b""
        self._spans.append((start, data))
        self.fetched += len(data)
        return start, data

    def prefetch(self, ranges: Iterable[tuple[int, int]]) -> None:
        """Fetch ranges, merging those closer than MERGE_GAP into one request."""
        merged: list[list[int]] = []
        for start, stop in sorted(ranges):
            if merged and start - merged[-1][1] <= MERGE_GAP:
                merged[-1][1] = max(merged[-1][1], stop)
            else:
                merged.append([start, stop])
        for start, stop in merged:
            self.fetch(start, stop)

    def readable(self) -> bool:
        return True

    def seekable(self) -> bool:
        return True

    def tell(self) -> int:
        return self._pos

    def seek(self, offset: int, whence: int = os.SEEK_SET) -> int:
        base = {os.SEEK_SET: 0, os.SEEK_CUR: self._pos, os.SEEK_END: self.size}[whence]
        self._pos = max(0, base + offset)
        return self._pos

    def readinto(self, b: Any) -> int:
        n = max(0, min(len(b), self.size - self._pos))
        if n == 0:
            return 0
        start, data = self._covering(self._pos, self._pos + n) or self.fetch(self._pos, self._pos + n)
        b[:n] = data[self._pos - start : self._pos - start + n]
        self._pos += n
        return n

    def _covering(self, start: int, stop: int) -> tuple[int, bytes] | None:
        return next(((s, d) for s, d in self._spans if s <= start and stop <= s + len(d)), None)


def _member_range(info: zipfile.ZipInfo) -> tuple[int, int]:
    """The bytes a stored member spans: local header (name, extra) and data."""
    start = info.header_offset
    return start, start + LOCAL_HEADER_MAX + len(info.filename.encode()) + info.compress_size


@dataclass
class _Chunk:
    """What the cache holds of one chunk: its zip directory (the tail bytes), records, and the
    RIRs read so far. ``nbytes`` counts the RIR arrays plus the tail, the cache's unit of size."""

    size: int
    tail: tuple[int, bytes]
    records: dict[str, RirRecord]
    rirs: dict[str, np.ndarray] = field(default_factory=dict)

    @property
    def nbytes(self) -> int:
        return len(self.tail[1]) + sum(a.nbytes for a in self.rirs.values())


class BankCache:
    """RIR-bank chunks held by one worker process, least recently used out first, bounded by
    ``max_bytes`` of unpacked RIRs (a single chunk larger than the bound is kept alone).

    Chunks are content-addressed (a URI's bytes never change), so a member once read is never read
    again while its chunk stays cached; a miss reads only the members asked for, by byte range.
    ``bytes_read`` counts the storage bytes fetched, ``bytes_used`` the bytes of the RIR arrays
    handed out: their ratio is a shard task's read amplification (the difference of the counters
    around one ``get``; worker processes run one task at a time).
    """

    def __init__(self, max_bytes: int) -> None:
        if max_bytes < 1:
            raise ValueError("max_bytes must be positive")
        self.max_bytes = max_bytes
        self.bytes_read = 0
        self.bytes_used = 0
        self._chunks: OrderedDict[str, _Chunk] = OrderedDict()
        self._lock = threading.Lock()

    @property
    def nbytes(self) -> int:
        return sum(c.nbytes for c in self._chunks.values())

    def get(
        self, uris: Iterable[str], placement_ids: Iterable[str]
    ) -> tuple[dict[str, np.ndarray], dict[str, RirRecord]]:
        """The RIRs and records of ``placement_ids`` found in the chunks at ``uris``; a placement
        in none of them (its RIR failed: a reject, no member) is absent from both."""
        wanted = set(placement_ids)
        rirs: dict[str, np.ndarray] = {}
        records: dict[str, RirRecord] = {}
        with self._lock:
            for uri in uris:
                chunk = self._load(uri, wanted)
                here = wanted & chunk.rirs.keys() & chunk.records.keys()
                rirs.update((pid, chunk.rirs[pid]) for pid in here)
                records.update((pid, chunk.records[pid]) for pid in here)
                self._evict()
            self.bytes_used += sum(a.nbytes for a in rirs.values())
        return rirs, records

    def _load(self, uri: str, wanted: set[str]) -> _Chunk:
        """The cached chunk with every wanted member it holds read; reads only what is missing
        (on a miss: the tail with the zip directory, then the meta and wanted members)."""
        storage = open_storage(uri)
        chunk = self._chunks.get(uri)
        if chunk is None:
            info = storage.info(uri)
            if info is None:
                raise ObjectMissing(f"RIR-bank chunk {safe_uri(uri)}: no such object")
            view = _RangeView(storage, uri, info.size)
            tail = view.fetch(info.size - TAIL_BYTES, info.size)
        else:
            self._chunks.move_to_end(uri)
            view = _RangeView(storage, uri, chunk.size, [chunk.tail])
            tail = chunk.tail
        have = chunk.rirs.keys() if chunk is not None else set()
        with zipfile.ZipFile(view) as zf:
            members = {i.filename.removesuffix(".npy"): i for i in zf.infolist()}
            names = [] if chunk is not None else ["meta"]
            names += [_RIR + pid for pid in sorted(wanted - have) if _RIR + pid in members]
            view.prefetch(_member_range(members[n]) for n in names)
            arrays = {n: np.lib.format.read_array(zf.open(members[n]), allow_pickle=False) for n in names}
        self.bytes_read += view.fetched
        if chunk is None:
            records, _ = _meta(arrays.pop("meta"))
            chunk = _Chunk(size=view.size, tail=tail, records={r.placement_id: r for r in records})
            self._chunks[uri] = chunk
        chunk.rirs.update((n.removeprefix(_RIR), a) for n, a in arrays.items())
        return chunk

    def _evict(self) -> None:
        while len(self._chunks) > 1 and self.nbytes > self.max_bytes:
            self._chunks.popitem(last=False)


_PROCESS_CACHE: BankCache | None = None
_PROCESS_LOCK = threading.Lock()


def bank_cache(max_mib: int) -> BankCache:
    """This process's BankCache (a Dask worker keeps it between shard tasks), bounded at
    ``max_mib`` MiB; a different bound replaces it."""
    global _PROCESS_CACHE
    with _PROCESS_LOCK:
        if _PROCESS_CACHE is None or _PROCESS_CACHE.max_bytes != max_mib << 20:
            _PROCESS_CACHE = BankCache(max_mib << 20)
        return _PROCESS_CACHE
