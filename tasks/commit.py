"""The commit protocol: a shard belongs to a dataset only once its object is verified on storage
and a receipt beside it says so. One protocol, the one the build flow runs:

1. ``verified_receipt`` (first thing in ``tasks.build_stages.build_shard``, before any rendering):
   a shard whose receipt ``{split}/{split}-{index:06d}.rows.json`` exists, belongs to this plan
   and whose object still verifies against it (size, sha256, the store's checksum) is skipped.
2. ``commit_shard`` (once the shard's samples are built): write the tar to a local temporary
   file, hashing it on the way; adopt the object if it already holds exactly these bytes (an
   upload that finished just before a crash), else upload it (multipart with SHA256 checksums)
   and verify it. Only then write the receipt: the shard's manifest rows. A shard whose samples
   were all rejected gets an empty receipt, so a rerun skips it as well.
3. ``finalize_dataset`` (the flow's finalize task, after every shard task): the only writer of
   ``manifest.parquet``, from the shard tasks' receipt rows, with the schema key in its metadata;
   then ``sizes.json`` (LAION-CLAP's shard sizes, at the root and in each split directory) and
   ``rejects.parquet``.

A receipt is written after a verified upload and never before, so a crash or a server killed
mid-upload leaves none, and a deleted, truncated or overwritten object fails its receipt's check
on the next run, which rebuilds and uploads that shard again. So the manifest never lists a
shard that is not there in full.

Layout (DESIGN.md, Storage): ``{root}/{dataset}/{version}/{split}/{split}-{shard:06d}.tar`` and
its ``.rows.json`` receipt, ``manifest.parquet``, ``sizes.json``, ``rejects.parquet`` (and the
card, see dataset_card.py).
"""

from __future__ import annotations

import hashlib
import io
import json
import logging
import os
import tarfile
import tempfile
import types
import typing
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, Literal

import pyarrow as pa
import pyarrow.parquet as pq
from pydantic import BaseModel, ValidationError

from schemas.shards import ManifestRow, RejectRow
from tasks.shard_writer import MemberOffsets, ShardPlan, ShardSample, write_tar
from tasks.storage import (
    Digest,
    HashingWriter,
    Storage,
    StorageError,
    digest_file,
    join_uri,
    part_size_for,
    safe_uri,
)

log = logging.getLogger(__name__)

MANIFEST = "manifest.parquet"
SIZES = "sizes.json"
REJECTS = "rejects.parquet"
RECEIPT_SUFFIX = ".rows.json"
MANIFEST_SCHEMA_VERSION = "shards/1"


class CommitError(StorageError):
    """A shard did not verify, or a manifest would be wrong; nothing is listed then."""


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


def receipt_uri(base: str, plan: ShardPlan) -> str:
    """The receipt sits beside its shard: ``train/train-000003.tar`` -> ``train/train-000003.rows.json``."""
    return join_uri(base, plan.name.removesuffix(".tar") + RECEIPT_SUFFIX)


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


def _put_parquet(
    storage: Storage, uri: str, rows: Sequence[BaseModel], schema: pa.Schema, meta: dict[str, str]
) -> None:
    """One atomic PUT (or os.replace) of the whole table: a reader sees the old file or the new."""
    table = pa.Table.from_pylist([r.model_dump() for r in rows], schema=schema)
    table = table.replace_schema_metadata({k.encode(): v.encode() for k, v in meta.items()})
    buf = io.BytesIO()
    pq.write_table(table, buf, compression="zstd")
    storage.put_bytes(uri, buf.getvalue(), content_type="application/vnd.apache.parquet")


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


def sizes_json(rows: Iterable[ManifestRow]) -> dict[str, int]:
    """{shard basename: samples}, as LAION-CLAP's get_dataset_size reads it."""
    out: dict[str, int] = {}
    for r in rows:
        name = r.shard.rsplit("/", 1)[-1]
        out[name] = out.get(name, 0) + 1
    return dict(sorted(out.items()))


# --------------------------------------------------------------------------------------------
# one shard


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


def write_shard_file(
    plan: ShardPlan, samples: dict[str, ShardSample], storage: Storage, tmp_dir: Path
) -> BuiltShard:
    """Write the plan's tar to a temporary file, hashing as it goes (no second read pass).

    Per-part digests (for a multipart upload's checksums) are computed for the part size the
    plan's byte count predicts; if the real size needs another part size, the file is hashed again.
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
        if want is not None and digest.part_size != want:
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
                flac_offset=off.spans["flac"][0],
                flac_size=off.spans["flac"][1],
                json_offset=off.spans["json"][0],
                json_size=off.spans["json"][1],
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


def _utc_now() -> str:
    return datetime.now(UTC).replace(microsecond=0).isoformat().replace("+00:00", "Z")


def verified_receipt(storage: Storage, base: str, plan: ShardPlan) -> list[ManifestRow] | None:
    """The shard's manifest rows if its receipt exists, lists only this plan's keys in this
    shard, and the object still verifies against it; else None (the shard must be committed).

    A receipt that cannot be parsed counts as absent: the shard is committed again, which
    rewrites it, rather than the build failing on a file only the protocol writes.
    """
    uri = receipt_uri(base, plan)
    if not storage.exists(uri):
        return None
    try:
        rows = [ManifestRow.model_validate(r) for r in json.loads(storage.read_bytes(uri))]
    except (ValueError, ValidationError) as e:
        log.warning("receipt %s is unreadable (%s): committing the shard again", safe_uri(uri), e)
        return None
    planned = set(plan.sample_keys)
    if any(r.shard != plan.name or r.key not in planned for r in rows):
        log.warning("receipt %s lists other samples than the plan: committing the shard again", safe_uri(uri))
        return None
    if not rows:
        return rows
    r = rows[0]
    check = storage.verify(
        join_uri(base, plan.name), size=r.shard_size, sha256=r.shard_sha256, checksum=r.shard_checksum
    )
    if not check.ok:
        log.warning("%s does not match its receipt (%s): committing it again", r.shard, check.reason)
        return None
    return rows


@dataclass(frozen=True)
class ShardCommit:
    """What committing one shard did; ``rows`` are its receipt's rows."""

    outcome: Literal["skipped", "uploaded", "adopted", "empty"]
    rows: list[ManifestRow]
    bytes_uploaded: int


def commit_shard(
    storage: Storage,
    base: str,
    plan: ShardPlan,
    samples: dict[str, ShardSample],
    *,
    tmp_dir: Path | None = None,
    progress: Callable[[int], None] | None = None,
) -> ShardCommit:
    """Make one shard true on storage, then write its receipt (call after ``verified_receipt``).

    The tar holds the plan's keys that are in ``samples``, in plan order (the others were
    rejected on the way). Outcome "adopted": the object already held exactly these bytes;
    "uploaded": sent and verified; "empty": no sample left, an empty receipt. Raises
    StorageError/CommitError when the object cannot be made to verify: no receipt then.
    ``progress`` gets the bytes sent as the upload goes. The temporary tar is removed either way.
    """
    keys = tuple(k for k in plan.sample_keys if k in samples)
    receipt = receipt_uri(base, plan)
    if not keys:
        storage.put_bytes(receipt, b"[]", content_type="application/json")
        return ShardCommit("empty", [], 0)
    kept = ShardPlan(split=plan.split, index=plan.index, sample_keys=keys, est_bytes=plan.est_bytes)
    uri = join_uri(base, plan.name)
    built = write_shard_file(kept, samples, storage, Path(tmp_dir or tempfile.gettempdir()))
    try:
        if storage.verify(uri, size=built.size, sha256=built.sha256, checksum=built.checksum).ok:
            outcome: Literal["uploaded", "adopted"] = "adopted"
        else:
            storage.upload_file(built.path, uri, sha256=built.sha256, progress=progress, digest=built.digest)
            v = storage.verify(uri, size=built.size, sha256=built.sha256, checksum=built.checksum)
            if not v.ok:
                raise CommitError(f"{safe_uri(uri)} did not verify after upload ({v.reason})")
            outcome = "uploaded"
    finally:
        built.path.unlink(missing_ok=True)
    rows = manifest_rows(built, samples, _utc_now())
    body = json.dumps([r.model_dump(mode="json") for r in rows]).encode()
    storage.put_bytes(receipt, body, content_type="application/json")
    log.info("%s %s: %d samples, %d bytes, sha256 %s", outcome, safe_uri(uri), len(keys), built.size,
             built.sha256[:16])
    return ShardCommit(outcome, rows, built.size if outcome == "uploaded" else 0)


# --------------------------------------------------------------------------------------------
# the dataset


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


def _sorted_rejects(rows: Iterable[RejectRow]) -> list[RejectRow]:
    return sorted(rows, key=lambda r: (r.stage, r.key or "", r.source or "", r.reason, r.detail))


def finalize_dataset(
    storage: Storage,
    base: str,
    rows: Iterable[ManifestRow],
    rejects: Iterable[RejectRow],
    meta: dict[str, str],
) -> None:
    """Write manifest.parquet (rows in shard order), sizes.json and rejects.parquet.

    ``rows`` are the shard tasks' receipt rows. Every listed object is verified once more (on S3
    a HEAD against the server's checksum; locally a re-read), so a shard lost or changed after its
    task fails the build here, and the rerun commits it again, instead of being listed. A key
    listed twice is refused too. The metadata gets the manifest's schema key.
    """
    ordered = sorted(rows, key=manifest_sort_key)
    keys = [r.key for r in ordered]
    if len(set(keys)) != len(keys):
        raise CommitError("refusing to write a manifest with a key listed twice")
    bad = [f"{c.shard} ({c.reason})" for c in verify_shards(storage, base, ordered) if not c.ok]
    if bad:
        raise CommitError(f"not writing a manifest that lists unverified shards: {', '.join(bad)}; rerun")
    meta = {**meta, "schema": MANIFEST_SCHEMA_VERSION}
    _put_parquet(storage, join_uri(base, MANIFEST), ordered, MANIFEST_SCHEMA, meta)
    _write_sizes(storage, base, ordered)
    _put_parquet(storage, join_uri(base, REJECTS), _sorted_rejects(rejects), REJECTS_SCHEMA, meta)


def _write_sizes(storage: Storage, base: str, rows: Sequence[ManifestRow]) -> None:
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
    "MANIFEST_SCHEMA_VERSION",
    "RECEIPT_SUFFIX",
    "REJECTS",
    "REJECTS_SCHEMA",
    "SIZES",
    "BuiltShard",
    "CommitError",
    "ShardCheck",
    "ShardCommit",
    "arrow_schema",
    "commit_shard",
    "config_hash",
    "dataset_uri",
    "dataset_version",
    "finalize_dataset",
    "manifest_rows",
    "read_manifest",
    "read_rejects",
    "receipt_uri",
    "sizes_json",
    "tar_size",
    "verified_receipt",
    "verify_shards",
    "write_shard_file",
]
