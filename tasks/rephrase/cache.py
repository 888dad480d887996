"""Content-addressed cache of rephrased captions: the same request never reaches the LLM twice.

A key is the sha256 of everything that decides a result: the caption, its descriptors, the model,
the base seed, the prompt and template versions, and the sampling and validation settings; for a
scene request also every source's words and the scene prompt and template versions (entries an ELSA
request's key does not have, so ELSA keys are what they were before scenes).

Each finished batch is one parquet part, ``<batch hash>.parquet``, with a ``key`` column (the
32-byte digest) and a ``result`` column (the result as JSON), written atomically
(storage.put_bytes), so a crash leaves either the whole batch or none of it, and a rerun reuses
every finished batch. Opening the cache reads only the key columns into a sorted digest array
(about 40 bytes per cached result, no JSON parsed, no pydantic), so resuming costs O(1) per
cached row however large the cache is; a result is decoded only when asked for, from its part,
which is read once and kept in a small LRU of parts.

Parts of the earlier JSON-lines format (``*.jsonl``) are not read: a cache from before this format
is regenerated, not reused.
"""

from __future__ import annotations

import hashlib
import io
import json
from collections import OrderedDict
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
from pydantic import ValidationError

from schemas.captions import CaptionSettings, RephraseRequest, RephraseResult
from tasks.errors import SpatialAudioCapsError
from tasks.prompting import PROMPT_VERSION, SCENE_PROMPT_VERSION
from tasks.rephrase.phrasing import SCENE_TEMPLATE_VERSION, TEMPLATE_VERSION
from tasks.storage import StorageError, is_s3, join_uri, open_storage

PART_SUFFIX = ".parquet"
KEY_TYPE = pa.binary(32)
"""A key as stored: the sha256 digest (the hex form is what callers pass)."""
PART_SCHEMA = pa.schema([("key", KEY_TYPE), ("result", pa.string())])
PARTS_KEPT = 16
"""Parts whose results stay decoded in memory (a part is one batch: about 1 MB at 512 requests)."""
OPEN_THREADS = 16
"""Parts whose key columns are read at once when a cache on s3:// opens: each part costs a few
round trips, so thousands of parts are read concurrently rather than one after another."""
MERGE_AT = 1 << 16
"""Keys written by this process that stay in a dict before they are folded into the sorted arrays
(also at least a quarter of them, so folding costs O(1) amortised per key)."""
_DIGEST = np.dtype("S32")


def cache_key(req: RephraseRequest, model: str, settings: CaptionSettings) -> str:
    """sha256 hex of (caption, descriptors, model, seed, prompt version, sampling, validation); never
    of the engine options (endpoint, parallelism, memory), which change no caption."""
    caption = req.caption if isinstance(req.caption, str) else "bytes:" + req.caption.hex()
    payload = {
        "caption": caption, "descriptors": req.descriptors.model_dump(), "model": model, "seed": req.seed,
        "prompt_version": PROMPT_VERSION, "template_version": TEMPLATE_VERSION,
        "temperature": settings.temperature, "max_tokens": settings.max_tokens,
        "max_retries": settings.max_retries, "validation": settings.validation.model_dump(),
    }
    if req.scene is not None:
        payload |= {"scene": [s.model_dump() for s in req.scene],
                    "scene_prompt_version": SCENE_PROMPT_VERSION,
                    "scene_template_version": SCENE_TEMPLATE_VERSION}
    blob = json.dumps(payload, sort_keys=True, ensure_ascii=False, separators=(",", ":"))
    return hashlib.sha256(blob.encode("utf-8", "surrogatepass")).hexdigest()


def digests(keys: pa.Array | pa.ChunkedArray) -> np.ndarray:
    """A ``binary(32)`` key column as a numpy ``S32`` array (one copy, no Python object per key)."""
    arr = keys.combine_chunks() if isinstance(keys, pa.ChunkedArray) else keys
    if arr.type != KEY_TYPE or arr.null_count:
        raise ValueError(f"keys must be non-null {KEY_TYPE}, got {arr.type}")
    if len(arr) == 0:
        return np.empty(0, _DIGEST)
    return np.frombuffer(arr.buffers()[1], _DIGEST, count=len(arr), offset=arr.offset * 32).copy()


class RephraseCache:
    """A folder of ``<batch hash>.parquet`` parts on any storage (local or s3://), indexed by key when
    opened: the caption stage keeps it on the build's own storage, so an LLM worker on another
    machine resumes from what any earlier worker finished.

    The index is three parallel arrays sorted by digest (digest, part, row), plus a dict of what
    this process added since, merged into the arrays when it grows; a key found in several parts
    (two workers finished the same batch) resolves to one of them, all being equal.
    """

    def __init__(self, directory: str | Path, *, parts_kept: int = PARTS_KEPT) -> None:
        self.directory = str(directory)
        self._storage = open_storage(self.directory)
        self._parts: list[str] = []
        self._part_no: dict[str, int] = {}
        self._decoded: OrderedDict[int, pa.StringArray] = OrderedDict()
        self._parts_kept = parts_kept
        self._added: dict[bytes, tuple[int, int]] = {}
        inside = self.directory.rstrip("/") + "/"
        parts = [o.uri for o in self._storage.list(self.directory)
                 if o.uri.endswith(PART_SUFFIX) and o.uri.startswith(inside)]

        def read_keys(uri: str) -> np.ndarray:
            return digests(self._read_part(uri, ["key"]).column("key"))

        if is_s3(self.directory):
            with ThreadPoolExecutor(max_workers=OPEN_THREADS) as pool:
                keys = list(pool.map(read_keys, parts))
        else:  # local reads wait on nothing: threads would only contend
            keys = [read_keys(uri) for uri in parts]
        self._set_index(
            keys,
            [np.full(len(k), self._register(uri), np.int32) for uri, k in zip(parts, keys, strict=True)],
            [np.arange(len(k), dtype=np.int32) for k in keys],
        )

    def _read_part(self, uri: str, columns: list[str]) -> pa.Table:
        try:
            with self._storage.open_read(uri, random_access=True) as fh:
                return pq.ParquetFile(fh).read(columns=columns)
        except (OSError, ValueError, KeyError, pa.ArrowException, StorageError) as exc:
            raise SpatialAudioCapsError(f"corrupt rephrase cache file {uri}: {exc}") from exc

    def _register(self, uri: str) -> int:
        if uri not in self._part_no:
            self._part_no[uri] = len(self._parts)
            self._parts.append(uri)
        return self._part_no[uri]

    def _set_index(self, found: list[np.ndarray], part_nos: list[np.ndarray], rows: list[np.ndarray]) -> None:
        keys = np.concatenate(found) if found else np.empty(0, _DIGEST)
        order = np.argsort(keys, kind="stable")
        keys = keys[order]
        first = np.ones(len(keys), bool)
        first[1:] = keys[1:] != keys[:-1]
        keep = order[first]
        self._keys = keys[first]
        self._part = (np.concatenate(part_nos) if part_nos else np.empty(0, np.int32))[keep]
        self._row = (np.concatenate(rows) if rows else np.empty(0, np.int32))[keep]

    def __len__(self) -> int:
        return len(self._keys) + sum(1 for k in self._added if not self._indexed(k))

    def _find(self, digest: bytes) -> int | None:
        """Position of ``digest`` in the sorted arrays. Compared as ``S32`` arrays, never as numpy
        scalars, which drop a digest's trailing zero bytes."""
        q = np.frombuffer(digest, _DIGEST)
        i = int(np.searchsorted(self._keys, q)[0])
        return i if i < len(self._keys) and bool((self._keys[i : i + 1] == q).all()) else None

    def _indexed(self, digest: bytes) -> bool:
        return self._find(digest) is not None

    def _locate(self, key: str) -> tuple[int, int] | None:
        digest = bytes.fromhex(key)
        if (hit := self._added.get(digest)) is not None:
            return hit
        i = self._find(digest)
        return None if i is None else (int(self._part[i]), int(self._row[i]))

    def __contains__(self, key: str) -> bool:
        return self._locate(key) is not None

    def contains(self, keys: np.ndarray) -> np.ndarray:
        """Which of ``keys`` (an ``S32`` digest array, see ``digests``) are cached, vectorised: how
        the caption stage decides that a batch is finished without a Python step per request."""
        i = np.searchsorted(self._keys, keys)
        found = np.zeros(len(keys), bool)
        inside = i < len(self._keys)
        found[inside] = self._keys[i[inside]] == keys[inside]
        if self._added:
            raw = keys.tobytes()
            found |= np.fromiter((raw[32 * j : 32 * j + 32] in self._added for j in range(len(keys))),
                                 bool, len(keys))
        return found

    def _results(self, part: int) -> pa.StringArray:
        col = self._decoded.get(part)
        if col is None:
            col = self._read_part(self._parts[part], ["result"]).column("result").combine_chunks()
            self._remember(part, col)
        self._decoded.move_to_end(part)
        return col

    def _remember(self, part: int, col: pa.StringArray) -> None:
        self._decoded[part] = col
        while len(self._decoded) > self._parts_kept:
            self._decoded.popitem(last=False)

    def get(self, key: str) -> RephraseResult | None:
        """The cached result for ``key`` (one index lookup; its part is read at most once while kept)."""
        at = self._locate(key)
        if at is None:
            return None
        raw = self._results(at[0])[at[1]].as_py()
        try:
            return RephraseResult.model_validate_json(raw)
        except ValidationError as exc:
            raise SpatialAudioCapsError(f"corrupt rephrase cache file {self._parts[at[0]]}: {exc}") from exc

    def result_json(self, keys: Sequence[str]) -> list[str | None]:
        """The stored JSON of each key's result (None where not cached), parts read once each and no
        result parsed: what the caption stage copies into results.parquet."""
        out: list[str | None] = [None] * len(keys)
        by_part: dict[int, list[tuple[int, int]]] = {}
        for pos, key in enumerate(keys):
            if (at := self._locate(key)) is not None:
                by_part.setdefault(at[0], []).append((pos, at[1]))
        for part, hits in by_part.items():
            col = self._results(part)
            values = col.take(pa.array([row for _, row in hits], pa.int32())).to_pylist()
            for (pos, _), value in zip(hits, values, strict=True):
                out[pos] = value
        return out

    def put_batch(self, items: list[tuple[str, RephraseResult]]) -> str | None:
        """Write one finished batch atomically; returns its URI (None for an empty batch)."""
        if not items:
            return None
        name = hashlib.sha256("".join(k for k, _ in items).encode()).hexdigest()[:32] + PART_SUFFIX
        table = pa.table({
            "key": pa.array([bytes.fromhex(k) for k, _ in items], KEY_TYPE),
            "result": pa.array([r.model_dump_json() for _, r in items], pa.string()),
        }, schema=PART_SCHEMA)
        buf = io.BytesIO()
        pq.write_table(table, buf)
        uri = join_uri(self.directory, name)
        self._storage.put_bytes(uri, buf.getvalue(), content_type="application/vnd.apache.parquet")
        part = self._register(uri)
        self._remember(part, table.column("result").combine_chunks())
        self._added.update((bytes.fromhex(k), (part, row)) for row, (k, _) in enumerate(items))
        if len(self._added) >= max(len(self._keys) // 4, MERGE_AT):
            self._merge_added()
        return uri

    def _merge_added(self) -> None:
        """Fold what this process wrote into the sorted arrays (amortised: the dict stays small)."""
        added = list(self._added.items())
        self._set_index(
            [self._keys, np.array([k for k, _ in added], _DIGEST)],
            [self._part, np.array([p for _, (p, _) in added], np.int32)],
            [self._row, np.array([r for _, (_, r) in added], np.int32)],
        )
        self._added.clear()
