"""The commit protocol: a shard belongs to a dataset only once its object is verified on storage
and a receipt beside it says so. One protocol, the one the build flow runs:

1. ``verified_receipt`` (first thing in ``tasks.build_stages.build_shard``, before any rendering):
   a shard whose receipt ``{split}/{split}-{index:06d}.rows.parquet`` exists, belongs to this plan
   and whose object is still the one it vouches for (``check_shard``) is skipped.
2. ``commit_shard`` (once the shard's samples are built): write the tar to a local temporary
   file, hashing it on the way; adopt the object if it already holds exactly these bytes (an
   upload that finished just before a crash), else upload it (multipart with SHA256 checksums)
   and verify it. Only then write the receipt: the shard's manifest rows, a parquet table with
   the manifest's schema. A shard whose samples were all rejected gets an empty receipt, so a
   rerun skips it as well.
3. ``put_rejects`` (every stage that refuses inputs: the source, each RIR chunk, each shard task
   before its commit): its rejects as one part ``rejects/{part}.parquet``, so a shard skipped on a
   rerun keeps the rejects of the run that built it.
4. ``finalize_dataset`` (the flow's finalize task, after every shard task): the only writer of
   ``manifest.parquet``, streamed from the plans' receipts in row groups, with the schema key in
   its metadata; then ``sizes.json`` (LAION-CLAP's shard sizes, at the root and in each split
   directory) and ``rejects.parquet`` (the parts merged). Its memory is a row group and the keys,
   whatever the dataset's size.

A receipt is written after a verified upload and never before, so a crash or a server killed
mid-upload leaves none, and a deleted, truncated or overwritten object fails its receipt's check
on the next run, which rebuilds and uploads that shard again. So the manifest never lists a
shard that is not there in full.

How an object is checked against its receipt (``check_shard``) without reading it: on S3 a HEAD
compares size and the server's own SHA256 checksum with the receipt's. A local file keeps no
checksum, so its size is compared and its mtime must not be later than its receipt's (the
receipt is written after the verified copy, so a file written over later shows a later mtime).
That misses only a same-size rewrite within the clock's tick of the receipt, or one that forges
the mtime; ``spatial-audiocaps inspect --deep`` re-reads every shard for its sha256.

Layout (DESIGN.md, Storage): ``{root}/{dataset}/{version}/{split}/{split}-{shard:06d}.tar`` and
its ``.rows.parquet`` receipt, ``rejects/*.parquet`` parts, ``manifest.parquet``, ``sizes.json``,
``rejects.parquet`` (and the card, see dataset_card.py). A version written before receipts were
parquet has ``.rows.json`` receipts, which count as absent: the rerun adopts each shard (its bytes
verify) and writes the new receipt.
"""

from __future__ import annotations

import hashlib
import io
import json
import logging
import os
import re
import tarfile
import tempfile
import types
import typing
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, Literal, NamedTuple

import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq
from pydantic import BaseModel, ValidationError

from schemas.shards import AMBIX_FORMAT, MONO_FORMAT, ManifestRow, RejectRow
from tasks.shard_writer import MemberOffsets, ShardPlan, ShardSample, write_tar
from tasks.storage import (
    Digest,
    HashingWriter,
    ObjectInfo,
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
REJECTS_DIR = "rejects"
RECEIPT_SUFFIX = ".rows.parquet"
MANIFEST_SCHEMA_VERSION = "shards/1"
ROW_GROUP = 65_536  # rows per row group of the tables finalize streams out (a few tens of MiB)
_LISTED = 20  # names an error message lists before "and N more"
_PART = re.compile(r"^[A-Za-z0-9_][A-Za-z0-9._-]{0,199}$")


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


def receipt_uri(base: str, shard: ShardPlan | str) -> str:
    """The receipt sits beside its shard: ``train/train-000003.tar`` -> ``train-000003.rows.parquet``."""
    name = shard.name if isinstance(shard, ShardPlan) else shard
    return join_uri(base, name.removesuffix(".tar") + RECEIPT_SUFFIX)


def rejects_part(shard: str) -> str:
    """The reject part of a shard's task: ``train/train-000003.tar`` -> ``train-train-000003``."""
    return shard.removesuffix(".tar").replace("/", "-")


def _listing(names: Sequence[str]) -> str:
    more = f" and {len(names) - _LISTED} more" if len(names) > _LISTED else ""
    return ", ".join(names[:_LISTED]) + more


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


def required_columns(model: type[BaseModel]) -> frozenset[str]:
    """The fields of a flat model that may not be None."""
    hints = typing.get_type_hints(model)
    return frozenset(n for n in model.model_fields if type(None) not in typing.get_args(hints[n]))


MANIFEST_SCHEMA = arrow_schema(ManifestRow)
REJECTS_SCHEMA = arrow_schema(RejectRow)


def rows_table(rows: Sequence[BaseModel], schema: pa.Schema) -> pa.Table:
    """Model rows as a table of ``schema`` (the writers' one conversion)."""
    return pa.Table.from_pylist([r.model_dump() for r in rows], schema=schema)


def check_table(table: pa.Table, model: type[ManifestRow] | type[RejectRow], what: str) -> pa.Table:
    """Validate a table of ``model`` rows without a model object per row.

    The flat row models constrain types and nullability (RejectRow its reason's spelling too), so
    the Arrow types of the columns present, no null in a required column or in a list, and the
    first row through the model (whatever constraint the model gains later, on a sample) check
    what pydantic would, vectorised. Raises CommitError naming ``what``.
    """
    schema = arrow_schema(model)
    required = required_columns(model)
    for field in table.schema:
        if schema.get_field_index(field.name) < 0 or schema.field(field.name).type != field.type:
            raise CommitError(f"{what}: column {field.name} ({field.type}) is not {model.__name__}'s")
        column = table.column(field.name)
        if field.name in required and column.null_count:
            raise CommitError(f"{what}: {column.null_count} null(s) in the required column {field.name}")
        if pa.types.is_list(field.type) and pc.list_flatten(column).null_count:
            raise CommitError(f"{what}: a null inside the list column {field.name}")
    if table.num_rows and table.num_columns == len(schema):
        try:
            model.model_validate(table.slice(0, 1).to_pylist()[0])
        except ValidationError as e:
            raise CommitError(f"{what}: its first row is not a {model.__name__} ({e})") from None
    return table


def _put_table(storage: Storage, uri: str, table: pa.Table, meta: dict[str, str]) -> None:
    """One atomic PUT (or os.replace) of a small table: a reader sees the old file or the new."""
    buf = io.BytesIO()
    pq.write_table(table.replace_schema_metadata(meta), buf, compression="zstd")
    storage.put_bytes(uri, buf.getvalue(), content_type="application/vnd.apache.parquet")


def _parquet_read(source: Any, columns: Sequence[str] | None = None) -> pa.Table:
    """Read parquet from a buffer or stream on the calling thread (no pre-buffering, no Arrow
    reader threads). With torch loaded (webdataset imports it) Arrow's reader threads make about
    one process in three abort at exit ("terminate called without an active exception")."""
    return pq.ParquetFile(source, pre_buffer=False).read(columns=columns, use_threads=False)


def _read_small(storage: Storage, uri: str) -> pa.Table:
    """A small table (a receipt, a reject part) in one GET."""
    return _parquet_read(pa.BufferReader(storage.read_bytes(uri)))


def _read_columns(storage: Storage, uri: str, schema: pa.Schema, columns: Sequence[str] | None) -> pa.Table:
    """Only ``columns`` of a parquet object (all when None), read through a seekable stream so the
    others are never fetched; an empty table of ``schema`` when there is no object."""
    names = list(schema.names if columns is None else columns)
    if not storage.exists(uri):
        return pa.schema([schema.field(n) for n in names]).empty_table()
    with storage.open_read(uri, random_access=True) as fh:
        return _parquet_read(fh, names)


class _RowGroups:
    """Tables appended in order, written to a local parquet file in row groups of about
    ``ROW_GROUP`` rows; ``upload`` then sends the file in one verified upload. Holds one row
    group at most."""

    def __init__(self, path: Path, schema: pa.Schema, meta: dict[str, str]) -> None:
        self.path, self.rows = path, 0
        self._schema = schema.with_metadata(meta)
        self._writer = pq.ParquetWriter(path, self._schema, compression="zstd")
        self._pending: list[pa.Table] = []
        self._held = 0

    def add(self, table: pa.Table) -> None:
        self._pending.append(table)
        self._held += table.num_rows
        self.rows += table.num_rows
        if self._held >= ROW_GROUP:
            self._flush()

    def _flush(self) -> None:
        table = pa.concat_tables(self._pending) if self._pending else self._schema.empty_table()
        self._writer.write_table(table, row_group_size=max(table.num_rows, 1))
        self._pending, self._held = [], 0

    def close(self) -> None:
        if not self._writer.is_open:
            return
        if self._pending or not self.rows:
            self._flush()
        self._writer.close()

    def upload(self, storage: Storage, uri: str) -> None:
        self.close()
        digest = digest_file(self.path, part_size_for(self.path.stat().st_size, storage.config))
        storage.upload_file(self.path, uri, sha256=digest.hexdigest(), digest=digest)


# --------------------------------------------------------------------------------------------
# the manifest and rejects, read


def read_manifest(storage: Storage, base: str, columns: Sequence[str] | None = None) -> pa.Table:
    """``columns`` of ``manifest.parquet`` (every column when None; an empty table if there is no
    manifest yet), validated vectorised (``check_table``): finalize is its only writer."""
    table = _read_columns(storage, join_uri(base, MANIFEST), MANIFEST_SCHEMA, columns)
    return check_table(table, ManifestRow, safe_uri(join_uri(base, MANIFEST)))


def read_rejects(storage: Storage, base: str, columns: Sequence[str] | None = None) -> pa.Table:
    """``columns`` of ``rejects.parquet`` (empty if there is none)."""
    table = _read_columns(storage, join_uri(base, REJECTS), REJECTS_SCHEMA, columns)
    return check_table(table, RejectRow, safe_uri(join_uri(base, REJECTS)))


def shard_counts(manifest: pa.Table) -> list[tuple[str, int]]:
    """(shard, samples) of every shard a manifest table (with a ``shard`` column) lists."""
    return [(d["values"], d["counts"]) for d in pc.value_counts(manifest.column("shard")).to_pylist()]


def sizes_json(counts: Iterable[tuple[str, int]]) -> dict[str, int]:
    """{shard basename: samples} from (shard, samples) pairs, as LAION-CLAP's get_dataset_size
    reads it; a shard with no sample is not listed (it has no object)."""
    return dict(sorted((shard.rsplit("/", 1)[-1], n) for shard, n in counts if n))


# --------------------------------------------------------------------------------------------
# reject parts


def reject_part_uri(base: str, part: str) -> str:
    if not _PART.match(part):
        raise ValueError(f"a reject part's name is letters, digits, '.', '_' and '-', got {part!r}")
    return join_uri(base, REJECTS_DIR, f"{part}.parquet")


def _reject_order(r: RejectRow) -> tuple[str, str, str, str, str]:
    return (r.stage, r.key or "", r.source or "", r.reason, r.detail)


def put_rejects(storage: Storage, base: str, part: str, rejects: Sequence[RejectRow]) -> None:
    """Record one stage's rejects as ``{base}/rejects/{part}.parquet`` (sorted, one atomic write).

    A part holds what its stage refused the last time it ran, so putting it again replaces it; an
    empty list deletes the part (no part = nothing refused), which keeps thousands of clean shard
    tasks from leaving thousands of empty files for finalize to read. ``part`` names the stage's
    unit of work: ``source``, ``rir-<chunk>``, ``rejects_part(shard)``.
    """
    uri = reject_part_uri(base, part)
    if not rejects:
        storage.delete(uri)
        return
    _put_table(storage, uri, rows_table(sorted(rejects, key=_reject_order), REJECTS_SCHEMA), {})


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
                formats=[rec.audio.format, *(rec.formats or {})],
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


@dataclass(frozen=True)
class Receipt:
    """A shard's receipt: its manifest rows, and the receipt object's own HEAD (or stat), whose
    mtime vouches for a local shard written before it."""

    rows: pa.Table
    info: ObjectInfo


def _with_formats(rows: pa.Table) -> pa.Table:
    """A receipt written before samples had further formats lacks ``formats``: each of its samples
    had the one .flac, ambiX when spatial, mono otherwise, so a resumed build adopts its shard."""
    if "formats" in rows.column_names or "spatial" not in rows.column_names:
        return rows
    spatial = rows.column("spatial").to_pylist()
    formats = pa.array([[AMBIX_FORMAT] if s else [MONO_FORMAT] for s in spatial],
                       MANIFEST_SCHEMA.field("formats").type)
    return rows.add_column(MANIFEST_SCHEMA.get_field_index("formats"), "formats", formats)


def read_receipt(storage: Storage, base: str, plan: ShardPlan) -> Receipt | None:
    """The plan's receipt, None when there is none. CommitError when it is unreadable, is not a
    table of manifest rows, or lists other samples than this plan's in this shard."""
    uri = receipt_uri(base, plan)
    info = storage.info(uri)
    if info is None:
        return None
    try:
        rows = _with_formats(_read_small(storage, uri))
    except (OSError, pa.ArrowException) as e:
        raise CommitError(f"receipt {safe_uri(uri)} is unreadable ({e})") from None
    check_table(rows, ManifestRow, f"receipt {safe_uri(uri)}")
    if rows.num_columns != len(MANIFEST_SCHEMA):
        raise CommitError(f"receipt {safe_uri(uri)} lacks manifest columns")
    mine = pc.and_(pc.equal(rows.column("shard"), plan.name),
                   pc.is_in(rows.column("key"), value_set=pa.array(plan.sample_keys, pa.string())))
    if rows.num_rows and not pc.all(mine).as_py():
        raise CommitError(f"receipt {safe_uri(uri)} lists other samples than the plan of {plan.name}")
    return Receipt(rows, info)


@dataclass(frozen=True)
class ShardCheck:
    shard: str
    ok: bool
    reason: str


def check_shard(
    storage: Storage,
    base: str,
    shard: str,
    *,
    size: int,
    sha256: str,
    checksum: str | None,
    deep: bool = False,
    receipt: ObjectInfo | None = None,
) -> ShardCheck:
    """Is the object still the one its receipt vouches for? Without ``deep``, nothing is read
    (see the module's docstring): a HEAD against the store's checksum, or locally size and mtime
    against the receipt's (``receipt``: its info when the caller has it). ``deep``, or a store
    that can tell neither: the object is re-read and hashed."""
    uri = join_uri(base, shard)
    if not deep and checksum is None:
        info = storage.info(uri)
        if info is None:
            return ShardCheck(shard, False, "missing")
        if info.size != size:
            return ShardCheck(shard, False, "size")
        stamp = receipt or storage.info(receipt_uri(base, shard))
        if info.modified_ns is not None and stamp is not None and stamp.modified_ns is not None:
            if info.modified_ns > stamp.modified_ns:
                return ShardCheck(shard, False, "modified after its receipt")
            return ShardCheck(shard, True, "ok")
    v = storage.verify(uri, size=size, sha256=sha256, checksum=checksum, deep=deep)
    return ShardCheck(shard, v.ok, v.reason)


def _check_receipt(storage: Storage, base: str, receipt: Receipt) -> ShardCheck:
    """``check_shard`` of a non-empty receipt's shard (its rows all name the same object)."""
    first = receipt.rows.select(["shard", "shard_size", "shard_sha256", "shard_checksum"]).slice(0, 1)
    r = first.to_pylist()[0]
    return check_shard(storage, base, r["shard"], size=r["shard_size"], sha256=r["shard_sha256"],
                       checksum=r["shard_checksum"], receipt=receipt.info)


def verified_receipt(storage: Storage, base: str, plan: ShardPlan) -> pa.Table | None:
    """The shard's manifest rows if its receipt exists, lists only this plan's keys in this
    shard, and the object is still the one it vouches for (``check_shard``); else None (the shard
    must be committed).

    A receipt that cannot be read, or that belongs to another plan, counts as absent: the shard is
    committed again, which rewrites it, rather than the build failing on a file only the
    protocol writes.
    """
    try:
        receipt = read_receipt(storage, base, plan)
    except CommitError as e:
        log.warning("%s: committing the shard again", e)
        return None
    if receipt is None or not receipt.rows.num_rows:
        return None if receipt is None else receipt.rows
    check = _check_receipt(storage, base, receipt)
    if not check.ok:
        log.warning("%s does not match its receipt (%s): committing it again", plan.name, check.reason)
        return None
    return receipt.rows


def put_receipt(storage: Storage, base: str, plan: ShardPlan, rows: pa.Table) -> pa.Table:
    """Write a shard's receipt (one atomic write of its manifest rows); returns ``rows``. Only
    after its object verified (``commit_shard``), or for a synthetic dataset (benchmarks)."""
    _put_table(storage, receipt_uri(base, plan), rows, {"schema": MANIFEST_SCHEMA_VERSION})
    return rows


@dataclass(frozen=True)
class ShardCommit:
    """What committing one shard did; ``rows`` are its receipt's rows (``len`` = its samples)."""

    outcome: Literal["skipped", "uploaded", "adopted", "empty"]
    rows: pa.Table
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
    if not keys:
        return ShardCommit("empty", put_receipt(storage, base, plan, MANIFEST_SCHEMA.empty_table()), 0)
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
    rows = rows_table(manifest_rows(built, samples, _utc_now()), MANIFEST_SCHEMA)
    put_receipt(storage, base, plan, rows)
    log.info("%s %s: %d samples, %d bytes, sha256 %s", outcome, safe_uri(uri), len(keys), built.size,
             built.sha256[:16])
    return ShardCommit(outcome, rows, built.size if outcome == "uploaded" else 0)


# --------------------------------------------------------------------------------------------
# the dataset


def verify_shards(storage: Storage, base: str, manifest: pa.Table, *, deep: bool = False) -> list[ShardCheck]:
    """``check_shard`` of every shard a manifest table lists (by shard, each once), against the
    size, sha256 and checksum its rows give; ``deep`` re-reads every object."""
    cols = ["shard", "shard_size", "shard_sha256", "shard_checksum"]
    shards = manifest.select(cols).group_by(cols, use_threads=False).aggregate([]).sort_by("shard")
    return [
        check_shard(storage, base, r["shard"], size=r["shard_size"], sha256=r["shard_sha256"],
                    checksum=r["shard_checksum"], deep=deep)
        for r in shards.to_pylist()
    ]


class Finalized(NamedTuple):
    """What finalize listed: samples in the manifest, rows in rejects.parquet."""

    samples: int
    rejects: int


def finalize_dataset(
    storage: Storage,
    base: str,
    plans: Sequence[ShardPlan],
    meta: dict[str, str],
    *,
    tmp_dir: Path | None = None,
) -> Finalized:
    """Write manifest.parquet from the plans' receipts, then sizes.json and rejects.parquet.

    Receipts are read one at a time in shard order (split, index) and streamed into the manifest
    in row groups through a local temporary file (``tmp_dir``), so memory holds one row group and
    the key column, not the dataset. Each receipt is validated vectorised (``check_table``) and its
    shard checked once (``check_shard``: a shard lost or changed after its task fails the build
    here, and the rerun commits it again, instead of being listed). Nothing is written when a plan
    has no receipt (its task did not finish), a shard does not check, or a key is listed twice
    (found by hashing the key column): CommitError naming them. The metadata gets the manifest's
    schema key. The reject parts (``put_rejects``) are merged in part-name order, each part's rows
    in its sorted order.
    """
    meta = {**meta, "schema": MANIFEST_SCHEMA_VERSION}
    missing: list[str] = []
    bad: list[str] = []
    keys: list[pa.ChunkedArray] = []
    counts: list[tuple[str, str, int]] = []
    with tempfile.TemporaryDirectory(prefix=".finalize-", dir=tmp_dir) as tmp:
        manifest = _RowGroups(Path(tmp) / MANIFEST, MANIFEST_SCHEMA, meta)
        try:
            for plan in sorted(plans, key=lambda p: (p.split, p.index)):
                receipt = read_receipt(storage, base, plan)
                if receipt is None:
                    missing.append(plan.name)
                    continue
                if not receipt.rows.num_rows:
                    continue
                check = _check_receipt(storage, base, receipt)
                if not check.ok:
                    bad.append(f"{plan.name} ({check.reason})")
                    continue
                keys.append(receipt.rows.column("key"))
                counts.append((plan.split, plan.name, receipt.rows.num_rows))
                manifest.add(receipt.rows)
        finally:
            manifest.close()
        if missing:
            raise CommitError(f"no receipt for {_listing(missing)}: their shard tasks did not finish; rerun")
        if bad:
            raise CommitError(f"not writing a manifest that lists unverified shards: {_listing(bad)}; rerun")
        twice = _listed_twice(keys)
        if twice:
            raise CommitError(f"refusing to write a manifest with a key listed twice: {_listing(twice)}")
        rejects = _merge_rejects(storage, base, Path(tmp) / REJECTS, meta)
        manifest.upload(storage, join_uri(base, MANIFEST))
        _write_sizes(storage, base, counts)
        rejects.upload(storage, join_uri(base, REJECTS))
    return Finalized(manifest.rows, rejects.rows)


def _listed_twice(keys: list[pa.ChunkedArray]) -> list[str]:
    """Keys that occur more than once (a hash table over the key column: linear)."""
    if not keys:
        return []
    counted = pc.value_counts(pa.chunked_array([c for k in keys for c in k.chunks], pa.string()))
    return sorted(counted.filter(pc.greater(counted.field("counts"), 1)).field("values").to_pylist())


def _merge_rejects(storage: Storage, base: str, path: Path, meta: dict[str, str]) -> _RowGroups:
    """Every reject part, in part-name order, into one local parquet file (one row group held)."""
    out = _RowGroups(path, REJECTS_SCHEMA, meta)
    try:
        for part in storage.list(join_uri(base, REJECTS_DIR) + "/"):
            if part.uri.endswith(".parquet"):
                out.add(check_table(_read_small(storage, part.uri), RejectRow, safe_uri(part.uri)))
    finally:
        out.close()
    return out


def _write_sizes(storage: Storage, base: str, counts: Sequence[tuple[str, str, int]]) -> None:
    """sizes.json at the root (every shard) and in each split directory (LAION-CLAP reads that one)."""

    def put(uri: str, sizes: dict[str, int]) -> None:
        storage.put_bytes(
            uri,
            (json.dumps(sizes, indent=1, sort_keys=True) + "\n").encode(),
            content_type="application/json",
        )

    put(join_uri(base, SIZES), sizes_json((shard, n) for _, shard, n in counts))
    for split in sorted({split for split, _, _ in counts}):
        put(join_uri(base, split, SIZES), sizes_json((shard, n) for s, shard, n in counts if s == split))


__all__ = [
    "MANIFEST",
    "MANIFEST_SCHEMA",
    "MANIFEST_SCHEMA_VERSION",
    "RECEIPT_SUFFIX",
    "REJECTS",
    "REJECTS_DIR",
    "REJECTS_SCHEMA",
    "ROW_GROUP",
    "SIZES",
    "BuiltShard",
    "CommitError",
    "Finalized",
    "Receipt",
    "ShardCheck",
    "ShardCommit",
    "arrow_schema",
    "check_shard",
    "check_table",
    "commit_shard",
    "config_hash",
    "dataset_uri",
    "dataset_version",
    "finalize_dataset",
    "manifest_rows",
    "put_receipt",
    "put_rejects",
    "read_manifest",
    "read_receipt",
    "read_rejects",
    "receipt_uri",
    "reject_part_uri",
    "rejects_part",
    "required_columns",
    "rows_table",
    "shard_counts",
    "sizes_json",
    "tar_size",
    "verified_receipt",
    "verify_shards",
    "write_shard_file",
]
