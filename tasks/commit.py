"""The commit protocol: a shard is part of a dataset only once it is verified on storage.

For each planned shard: write the tar to a local temporary file (hashing it on the way), upload
it (multipart with SHA256 checksums), verify size and sha256 on the store (HEAD against the
server's checksum, or a re-read), and only then add its rows to ``manifest.parquet``, which is
rewritten whole and atomically. So the manifest never lists a shard that is not there in full.

A rerun first verifies every shard the manifest lists and drops the rows of any shard whose
object is missing or differs; then it skips shards whose rows and object agree with the plan,
adopts objects that are already there byte for byte (an upload that finished just before a
crash), and writes the rest. ``sizes.json`` (LAION-CLAP's shard sizes, at the root and in each
split directory) and ``rejects.parquet`` are written at the end.

Layout (DESIGN.md, Storage): ``{root}/{dataset}/{version}/{split}/{split}-{shard:06d}.tar``,
``manifest.parquet``, ``sizes.json``, ``rejects.parquet`` (and the card, see dataset_card.py).
"""

from __future__ import annotations

import contextlib
import hashlib
import io
import json
import logging
import os
import tarfile
import tempfile
import time
import types
import typing
from collections import deque
from collections.abc import Callable, Iterable, Sequence
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pyarrow as pa
import pyarrow.parquet as pq
from pydantic import BaseModel, ConfigDict

from schemas.shards import ManifestRow, RejectRow
from tasks.shard_writer import (
    DEFAULT_MAX_BYTES,
    DEFAULT_MAX_SAMPLES,
    MemberOffsets,
    ShardPlan,
    ShardSample,
    dedupe,
    plan_samples,
    write_tar,
)
from tasks.storage import (
    Digest,
    HashingWriter,
    Storage,
    StorageConfig,
    StorageError,
    digest_file,
    join_uri,
    open_storage,
    part_size_for,
    safe_uri,
)

log = logging.getLogger(__name__)

MANIFEST = "manifest.parquet"
SIZES = "sizes.json"
REJECTS = "rejects.parquet"
MANIFEST_SCHEMA_VERSION = "shards/1"


class CommitError(StorageError):
    """An uploaded shard did not verify; it is not listed in the manifest."""


# --------------------------------------------------------------------------------------------
# names and versions


def config_hash(obj: BaseModel | dict[str, Any]) -> str:
    """16 hex digits of sha256 over canonical JSON of a config."""
    data = obj.model_dump(mode="json") if isinstance(obj, BaseModel) else obj
    return hashlib.sha256(json.dumps(data, sort_keys=True, separators=(",", ":")).encode()).hexdigest()[:16]


def dataset_version(room_set_hash: str, cfg_hash: str) -> str:
    """A version directory from the room-set and config hashes: a new room set never overwrites."""
    return f"rs{room_set_hash[:12]}-cfg{cfg_hash[:12]}"


def dataset_uri(root: str, dataset: str, version: str) -> str:
    return join_uri(root, dataset, version)


# --------------------------------------------------------------------------------------------
# parquet


def _arrow_type(annotation: Any) -> pa.DataType:
    origin = typing.get_origin(annotation)
    if origin in (typing.Union, types.UnionType):
        args = [a for a in typing.get_args(annotation) if a is not type(None)]
        return _arrow_type(args[0])
    if origin is list:
        return pa.list_(_arrow_type(typing.get_args(annotation)[0]))
    return {str: pa.string(), int: pa.int64(), float: pa.float64(), bool: pa.bool_()}[annotation]


def arrow_schema(model: type[BaseModel]) -> pa.Schema:
    """An explicit Arrow schema from a flat pydantic model (so all-null columns keep a type)."""
    hints = typing.get_type_hints(model)
    return pa.schema([pa.field(name, _arrow_type(hints[name])) for name in model.model_fields])


MANIFEST_SCHEMA = arrow_schema(ManifestRow)
REJECTS_SCHEMA = arrow_schema(RejectRow)


def _parquet_bytes(rows: Sequence[BaseModel], schema: pa.Schema, meta: dict[str, str]) -> bytes:
    table = pa.Table.from_pylist([r.model_dump() for r in rows], schema=schema)
    table = table.replace_schema_metadata({k.encode(): v.encode() for k, v in meta.items()})
    buf = io.BytesIO()
    pq.write_table(table, buf, compression="zstd")
    return buf.getvalue()


def manifest_sort_key(r: ManifestRow) -> tuple[str, int, int]:
    return (r.split, r.shard_index, r.flac_offset)


def read_manifest(storage: Storage, base: str) -> list[ManifestRow]:
    """Rows of ``manifest.parquet`` (empty if there is none yet)."""
    uri = join_uri(base, MANIFEST)
    if not storage.exists(uri):
        return []
    table = pq.read_table(io.BytesIO(storage.read_bytes(uri)))
    return [ManifestRow.model_validate(r) for r in table.to_pylist()]


def read_rejects(storage: Storage, base: str) -> list[RejectRow]:
    uri = join_uri(base, REJECTS)
    if not storage.exists(uri):
        return []
    return [
        RejectRow.model_validate(r) for r in pq.read_table(io.BytesIO(storage.read_bytes(uri))).to_pylist()
    ]


def write_manifest(storage: Storage, base: str, rows: Iterable[ManifestRow], meta: dict[str, str]) -> int:
    """Rewrite manifest.parquet whole (one atomic PUT / os.replace), rows in shard order."""
    ordered = sorted(rows, key=manifest_sort_key)
    keys = [r.key for r in ordered]
    if len(set(keys)) != len(keys):
        raise CommitError("refusing to write a manifest with a key listed twice")
    storage.put_bytes(
        join_uri(base, MANIFEST),
        _parquet_bytes(ordered, MANIFEST_SCHEMA, meta),
        content_type="application/vnd.apache.parquet",
    )
    return len(ordered)


def write_rejects(storage: Storage, base: str, rows: Iterable[RejectRow], meta: dict[str, str]) -> int:
    """Write rejects.parquet (every input that did not make it, with its reason), sorted."""
    ordered = _sorted_rejects(rows)
    storage.put_bytes(
        join_uri(base, REJECTS),
        _parquet_bytes(ordered, REJECTS_SCHEMA, meta),
        content_type="application/vnd.apache.parquet",
    )
    return len(ordered)


def sizes_json(rows: Iterable[ManifestRow]) -> dict[str, int]:
    """{shard basename: samples}, as LAION-CLAP's get_dataset_size reads it."""
    out: dict[str, int] = {}
    for r in rows:
        name = r.shard.rsplit("/", 1)[-1]
        out[name] = out.get(name, 0) + 1
    return dict(sorted(out.items()))


# --------------------------------------------------------------------------------------------
# shards


@dataclass(frozen=True)
class BuiltShard:
    """A shard tar written locally: where, how big, its sha256 and the store's expected checksum."""

    plan: ShardPlan
    path: Path
    size: int
    sha256: str
    checksum: str | None
    offsets: tuple[MemberOffsets, ...]
    digest: Digest


def tar_size(member_bytes: int) -> int:
    """Size of an uncompressed tar stream holding ``member_bytes`` of headers and padded members:
    plus the two zero end blocks, rounded up to tarfile's 10 KiB record."""
    rec = tarfile.RECORDSIZE
    return -(-(member_bytes + 2 * tarfile.BLOCKSIZE) // rec) * rec


def build_shard(
    plan: ShardPlan, samples: dict[str, ShardSample], storage: Storage, tmp_dir: Path
) -> BuiltShard:
    """Write the tar to a temporary file, hashing as it goes (no second read pass).

    Per-part digests (for a multipart upload's checksums) are only computed when the shard will
    be uploaded in parts: the plan's byte count gives the exact tar size in advance.
    """
    chunk = storage.config.multipart_chunksize
    part = chunk if plan.est_bytes <= 0 else part_size_for(tar_size(plan.est_bytes), storage.config)
    fd, name = tempfile.mkstemp(prefix=f".{plan.split}-{plan.index:06d}.", suffix=".tar.partial", dir=tmp_dir)
    path = Path(name)
    try:
        with os.fdopen(fd, "wb", buffering=0) as raw:
            hw = HashingWriter(raw, part)
            with io.BufferedWriter(hw, buffer_size=1 << 20) as bw:
                offsets = write_tar((samples[k] for k in plan.sample_keys), bw)  # type: ignore[arg-type]
        digest = hw.digest
        want = part_size_for(digest.size, storage.config)
        if want is not None and digest.part_size != want:  # the plan's size was off: hash again
            digest = digest_file(path, want)
    except BaseException:
        path.unlink(missing_ok=True)
        raise
    return BuiltShard(
        plan, path, digest.size, digest.hexdigest(), storage.expected_checksum(digest), tuple(offsets), digest
    )


def manifest_rows(built: BuiltShard, samples: dict[str, ShardSample], committed_at: str) -> list[ManifestRow]:
    """One manifest row per sample of a verified shard."""
    rows = []
    for off in built.offsets:
        rec = samples[off.key].record
        lab, desc, prov = rec.labels, rec.descriptors, rec.provenance
        rows.append(
            ManifestRow(
                key=rec.key,
                dataset=rec.dataset,
                split=rec.split,
                clip_id=rec.clip_id,
                aug=rec.aug,
                shard=built.plan.name,
                shard_index=built.plan.index,
                shard_sha256=built.sha256,
                shard_size=built.size,
                shard_checksum=built.checksum,
                flac_offset=off.flac_offset,
                flac_size=off.flac_size,
                json_offset=off.json_offset,
                json_size=off.json_size,
                audio_sha256=rec.audio.sha256,
                sample_rate=rec.audio.sample_rate,
                channels=rec.audio.channels,
                num_samples=rec.audio.num_samples,
                duration_s=rec.audio.duration_s,
                spatial=rec.spatial,
                azimuth_deg=lab.azimuth_deg if lab else None,
                elevation_deg=lab.elevation_deg if lab else None,
                distance_m=lab.distance_m if lab else None,
                t30_s=lab.t30_s if lab else None,
                target_t30_s=lab.target_t30_s if lab else None,
                drr_db=lab.drr_db if lab else None,
                floor_area_m2=lab.floor_area_m2 if lab else None,
                volume_m3=lab.volume_m3 if lab else None,
                direct_doa_error_deg=lab.direct_doa_error_deg if lab else None,
                room_id=lab.room_id if lab else None,
                placement_id=lab.placement_id if lab else None,
                desc_distance=desc.distance if desc else None,
                desc_direction=desc.direction if desc else None,
                desc_elevation=desc.elevation if desc else None,
                desc_reverb=desc.reverb if desc else None,
                desc_size=desc.size if desc else None,
                text=list(rec.text),
                original_text=list(rec.original_text),
                n_captions=len(rec.captions),
                n_validated=sum(c.validated for c in rec.captions),
                n_fallback=sum(c.fallback for c in rec.captions),
                caption_attempts=sum(c.attempts for c in rec.captions),
                n_first_pass=sum(c.first_pass for c in rec.captions),
                n_retried=sum(c.retries > 0 for c in rec.captions),
                caption_retries=sum(c.retries for c in rec.captions),
                caption_flaws=[f for c in rec.captions for attempt in c.attempt_flaws for f in attempt],
                source_dataset=prov.source_dataset,
                source_id=prov.source_id,
                room_set_hash=prov.room_set_hash,
                config_hash=prov.config_hash,
                pipeline_version=prov.pipeline_version,
                seed=prov.seed,
                rephraser_backend=prov.rephraser_backend,
                rephraser_model=prov.rephraser_model,
                committed_at=committed_at,
            )
        )
    return rows


@dataclass(frozen=True)
class ShardCheck:
    shard: str
    ok: bool
    reason: str


def verify_shards(
    storage: Storage, base: str, rows: Sequence[ManifestRow], *, deep: bool = False
) -> list[ShardCheck]:
    """Check every shard the rows list against its object (size, sha256, store checksum)."""
    first: dict[str, ManifestRow] = {}
    for r in rows:
        first.setdefault(r.shard, r)
    out = []
    for shard, r in sorted(first.items()):
        v = storage.verify(
            join_uri(base, shard),
            size=r.shard_size,
            sha256=r.shard_sha256,
            checksum=r.shard_checksum,
            deep=deep,
        )
        out.append(ShardCheck(shard, v.ok, v.reason))
    return out


def prune_manifest(
    storage: Storage, base: str, *, deep: bool = False, meta: dict[str, str] | None = None
) -> tuple[list[ManifestRow], list[ShardCheck]]:
    """Drop (and rewrite without) the rows of any listed shard whose object is missing or differs."""
    rows = read_manifest(storage, base)
    checks = verify_shards(storage, base, rows, deep=deep)
    bad = {c.shard for c in checks if not c.ok}
    if bad:
        rows = [r for r in rows if r.shard not in bad]
        write_manifest(storage, base, rows, meta or {})
        for c in checks:
            if not c.ok:
                log.warning("manifest listed %s but its object is %s: rows dropped", c.shard, c.reason)
    return rows, [c for c in checks if not c.ok]


def _utc_now() -> str:
    return datetime.now(UTC).replace(microsecond=0).isoformat().replace("+00:00", "Z")


def listed_and_verified(
    storage: Storage, base: str, plan: ShardPlan, listed: Sequence[ManifestRow], *, deep: bool = False
) -> bool:
    """The manifest lists exactly this plan's keys for the shard, and its object verifies."""
    if not listed or tuple(r.key for r in sorted(listed, key=manifest_sort_key)) != plan.sample_keys:
        return False
    r = listed[0]
    return storage.verify(
        join_uri(base, plan.name),
        size=r.shard_size,
        sha256=r.shard_sha256,
        checksum=r.shard_checksum,
        deep=deep,
    ).ok


def commit_shard(
    storage: Storage,
    base: str,
    plan: ShardPlan,
    samples: dict[str, ShardSample],
    *,
    listed: Sequence[ManifestRow] = (),
    tmp_dir: Path | None = None,
    deep_verify: bool = False,
    clock: Callable[[], str] = _utc_now,
    progress: Callable[[int], None] | None = None,
    built: BuiltShard | None = None,
) -> tuple[str, list[ManifestRow], int]:
    """Make one shard true on storage; returns (outcome, its manifest rows, bytes uploaded).

    outcome is "skipped" (the manifest already lists it with these keys and the object
    verifies), "adopted" (the object was already there with exactly these bytes) or "uploaded".
    Raises StorageError/CommitError when it cannot; nothing is listed then. ``built`` is a tar
    already written by ``build_shard`` (commit_dataset builds the next shard during an upload);
    its temporary file is removed either way.
    """
    uri = join_uri(base, plan.name)
    if listed_and_verified(storage, base, plan, listed, deep=deep_verify):
        if built is not None:
            built.path.unlink(missing_ok=True)
        return "skipped", list(listed), 0
    if built is None:
        built = build_shard(plan, samples, storage, Path(tmp_dir or tempfile.gettempdir()))
    try:
        v = storage.verify(
            uri, size=built.size, sha256=built.sha256, checksum=built.checksum, deep=deep_verify
        )
        if v.ok:
            outcome, sent = "adopted", 0
        else:
            storage.upload_file(built.path, uri, sha256=built.sha256, progress=progress, digest=built.digest)
            v = storage.verify(
                uri, size=built.size, sha256=built.sha256, checksum=built.checksum, deep=deep_verify
            )
            if not v.ok:
                raise CommitError(f"{safe_uri(uri)} did not verify after upload ({v.reason})")
            outcome, sent = "uploaded", built.size
    finally:
        built.path.unlink(missing_ok=True)
    log.info(
        "%s %s: %d samples, %d bytes, sha256 %s",
        outcome,
        safe_uri(uri),
        len(plan.sample_keys),
        built.size,
        built.sha256[:16],
    )
    return outcome, manifest_rows(built, samples, clock()), sent


# --------------------------------------------------------------------------------------------
# a whole dataset


class CommitReport(BaseModel):
    """What commit_dataset did (JSON-serialisable; no credentials, no signed URLs)."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    uri: str
    dataset: str
    version: str
    shards: int
    uploaded: int
    adopted: int
    skipped: int
    dropped_from_manifest: dict[str, str]
    samples: int
    rejects: int
    bytes_uploaded: int
    seconds: float


def _sorted_rejects(rows: Iterable[RejectRow]) -> list[RejectRow]:
    return sorted(rows, key=lambda r: (r.stage, r.key or "", r.source or "", r.reason, r.detail))


def commit_dataset(
    items: Iterable[ShardSample | RejectRow],
    *,
    root: str,
    dataset: str,
    version: str,
    max_samples: int = DEFAULT_MAX_SAMPLES,
    max_bytes: int = DEFAULT_MAX_BYTES,
    storage_config: StorageConfig | None = None,
    tmp_dir: Path | None = None,
    deep_verify: bool = False,
    flush_every: int = 1,
    clock: Callable[[], str] = _utc_now,
    progress: Callable[[str, int], None] | None = None,
) -> CommitReport:
    """Shard, upload, verify and list a set of samples under ``{root}/{dataset}/{version}``.

    ``items`` mixes validated samples and rejects from earlier stages (all land in
    rejects.parquet). Idempotent: a rerun with the same items redoes only what is not verified.
    ``flush_every`` shards between manifest rewrites (1 = after every shard).
    """
    t0 = time.perf_counter()
    storage = open_storage(root, storage_config)
    base = dataset_uri(root, dataset, version)
    samples_in: list[ShardSample] = []
    rejects: list[RejectRow] = []
    for it in items:
        (rejects if isinstance(it, RejectRow) else samples_in).append(it)  # type: ignore[arg-type]
    kept, dups = dedupe(samples_in)
    rejects += dups
    by_key = {s.key: s for s in kept}
    plans = plan_samples(kept, max_samples=max_samples, max_bytes=max_bytes)
    meta = {"dataset": dataset, "version": version, "schema": MANIFEST_SCHEMA_VERSION}

    listed, dropped = prune_manifest(storage, base, deep=deep_verify, meta=meta)
    by_shard: dict[str, list[ManifestRow]] = {}
    for r in listed:
        by_shard.setdefault(r.shard, []).append(r)
    planned = {p.name for p in plans}
    dropped_map = {c.shard: c.reason for c in dropped}
    stale = sorted(set(by_shard) - planned)
    for s in stale:  # shards of an earlier plan (e.g. another shard size): no longer part of it
        dropped_map[s] = "not in plan"
        del by_shard[s]
    if stale:
        write_manifest(storage, base, [r for rs in by_shard.values() for r in rs], meta)

    counts = {"uploaded": 0, "adopted": 0, "skipped": 0}
    todo = []
    replaced = []
    for plan in plans:
        if listed_and_verified(storage, base, plan, by_shard.get(plan.name, ()), deep=deep_verify):
            counts["skipped"] += 1
        else:
            if by_shard.pop(plan.name, None):
                replaced.append(plan.name)
            todo.append(plan)
    if replaced:  # unlist a shard before its object is overwritten with other samples
        for name in replaced:
            dropped_map[name] = "other keys in plan"
        write_manifest(storage, base, [r for rs in by_shard.values() for r in rs], meta)
    sent_total = pending = 0
    tmp = Path(tmp_dir or tempfile.gettempdir())
    # One builder thread writes (and hashes) the next shard while the current one uploads.
    with ThreadPoolExecutor(max_workers=1, thread_name_prefix="shard-build") as builder:
        queue: deque[tuple[ShardPlan, Future[BuiltShard]]] = deque()
        upcoming = iter(todo)

        def prefetch() -> None:
            nxt = next(upcoming, None)
            if nxt is not None:
                queue.append((nxt, builder.submit(build_shard, nxt, by_key, storage, tmp)))

        prefetch()
        try:
            while queue:
                plan, fut = queue.popleft()
                built = fut.result()
                prefetch()
                cb = (lambda n, _name=plan.name: progress(_name, n)) if progress else None
                outcome, rows, sent = commit_shard(
                    storage,
                    base,
                    plan,
                    by_key,
                    tmp_dir=tmp,
                    deep_verify=deep_verify,
                    clock=clock,
                    progress=cb,
                    built=built,
                )
                counts[outcome] += 1
                sent_total += sent
                by_shard[plan.name] = rows
                pending += 1
                if pending >= flush_every:
                    write_manifest(storage, base, [r for rs in by_shard.values() for r in rs], meta)
                    pending = 0
        finally:
            for _, fut in queue:  # a failure: drop the shard built ahead
                with contextlib.suppress(Exception):  # its own error is not the one to report
                    fut.result().path.unlink(missing_ok=True)
    all_rows = sorted((r for rs in by_shard.values() for r in rs), key=manifest_sort_key)
    if pending or not storage.exists(join_uri(base, MANIFEST)):
        write_manifest(storage, base, all_rows, meta)
    write_sizes(storage, base, all_rows)
    n_rejects = write_rejects(storage, base, rejects, meta)
    return CommitReport(
        uri=safe_uri(base),
        dataset=dataset,
        version=version,
        shards=len(plans),
        uploaded=counts["uploaded"],
        adopted=counts["adopted"],
        skipped=counts["skipped"],
        dropped_from_manifest=dropped_map,
        samples=len(all_rows),
        rejects=n_rejects,
        bytes_uploaded=sent_total,
        seconds=round(time.perf_counter() - t0, 3),
    )


def write_sizes(storage: Storage, base: str, rows: Sequence[ManifestRow]) -> None:
    """sizes.json at the root (every shard) and in each split directory (LAION-CLAP reads that one)."""

    def put(uri: str, sizes: dict[str, int]) -> None:
        storage.put_bytes(
            uri,
            (json.dumps(sizes, indent=1, sort_keys=True) + "\n").encode(),
            content_type="application/json",
        )

    put(join_uri(base, SIZES), sizes_json(rows))
    for split in sorted({r.split for r in rows}):
        put(join_uri(base, split, SIZES), sizes_json(r for r in rows if r.split == split))


__all__ = [
    "MANIFEST",
    "MANIFEST_SCHEMA",
    "REJECTS",
    "REJECTS_SCHEMA",
    "SIZES",
    "BuiltShard",
    "CommitError",
    "CommitReport",
    "ShardCheck",
    "arrow_schema",
    "build_shard",
    "commit_dataset",
    "commit_shard",
    "config_hash",
    "dataset_uri",
    "dataset_version",
    "listed_and_verified",
    "manifest_rows",
    "prune_manifest",
    "read_manifest",
    "read_rejects",
    "sizes_json",
    "tar_size",
    "verify_shards",
    "write_manifest",
    "write_rejects",
    "write_sizes",
]
