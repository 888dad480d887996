"""WebDataset shards: deterministic sample→shard plans and byte-identical tars (read by tasks.shard_reader).

A shard is written by a registered ``ShardWriter`` that declares the members of each sample. The
default (``webdataset``) is an uncompressed tar written by webdataset's TarWriter: each sample's
members, ``{key}.flac`` then ``{key}.json`` (and, for a scene sample, ``{key}.csv`` first: its
per-source labels in the DCASE/STARSS23 metadata format; for a build with further formats,
``{key}.binaural.flac`` / ``{key}.mic.flac``), sit next to each other; every header has a fixed
mtime, uid/gid 0, fixed user/group names and mode 0444, so the same samples give the same bytes.

Inside a shard, samples are in sha256(key) order, not input order: shards mix clips and
augmentations. Which samples share a shard is either that same hash order (``plan_samples``: the
same set of samples gives the same shards however it arrives) or a caller's order (the build's
optional locality order, tasks.plan.shard_plans: a shard then needs few RIR-bank chunks). A shard closes at
``max_samples`` samples or before it would pass ``max_bytes``.
"""

from __future__ import annotations

import hashlib
import io
import json
import re
import tarfile
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from typing import BinaryIO, Literal, Protocol

import soundfile as sf
from pydantic import BaseModel, ConfigDict, ValidationError
from webdataset import TarWriter

from schemas.audio import RejectReason, RenderedInfo
from schemas.rooms import RirRecord, Room
from schemas.scenes import SceneSourceLabels
from schemas.shards import (
    CLIP_RE,
    MONO_FORMAT,
    AudioInfo,
    CaptionInfo,
    Descriptors,
    FormatMember,
    Provenance,
    RejectRow,
    SampleRecord,
    ShardRejectReason,
    SpatialLabels,
    make_key,
    member_ext,
)
from tasks.dcase_csv import dcase_csv
from tasks.errors import AudioRejected, SpatialAudioCapsError, registered
from tasks.renderers import DEFAULT_RENDERER, renderer

TAR_MTIME = 946684800  # 2000-01-01T00:00:00Z: any fixed value makes the headers reproducible
TAR_USER = "spatial"
TAR_MODE = 0o444
_BLOCK = tarfile.BLOCKSIZE
DEFAULT_MAX_SAMPLES = 512
DEFAULT_MAX_BYTES = 1 << 30


class SampleRejected(AudioRejected):
    """A sample that cannot go into a shard; ``reason`` is a RejectReason/ShardRejectReason code."""


# --------------------------------------------------------------------------------------------
# keys


def safe_clip_id(raw: str) -> str:
    """A clip id fit for a key: [A-Za-z0-9_-], at most 64 characters, unique per raw id.

    Dots would split the webdataset key, slashes make directories; when anything is replaced or
    cut, 8 hex digits of sha256(raw) keep two different raw ids apart. The raw id stays in the
    record's provenance.
    """
    if CLIP_RE.match(raw):
        return raw
    clean = re.sub(r"[^A-Za-z0-9_-]+", "_", raw).strip("_") or "clip"
    return f"{clean[:55]}_{hashlib.sha256(raw.encode('utf-8', 'surrogatepass')).hexdigest()[:8]}"


# --------------------------------------------------------------------------------------------
# samples


def canonical_json(record: SampleRecord) -> bytes:
    """The .json member: sorted keys, compact, UTF-8. Same record, same bytes."""
    return json.dumps(
        record.model_dump(mode="json"),
        sort_keys=True,
        separators=(",", ":"),
        ensure_ascii=False,
        allow_nan=False,
    ).encode("utf-8")


@dataclass(frozen=True, eq=False)
class ShardSample:
    """A validated sample ready for a shard: its key, FLAC bytes and record."""

    key: str
    flac: bytes
    record: SampleRecord
    extra: Mapping[str, bytes] = field(default_factory=dict)
    """FLAC bytes of the further formats (record.formats), by format."""

    @property
    def format_members(self) -> dict[str, bytes]:
        """The further formats' members by extension (``binaural.flac``, ``mic.flac``): any writer
        writes them beside its declared members, so a new renderer needs no writer change."""
        return {member_ext(fmt): flac for fmt, flac in self.extra.items()}

    @property
    def json_bytes(self) -> bytes:
        return canonical_json(self.record)

    @property
    def split(self) -> str:
        return self.record.split

    @property
    def tar_bytes(self) -> int:
        """Bytes this sample takes in a default shard (a header and the padded data per member)."""
        members = [encode(self) for encode in WRITERS[DEFAULT_WRITER].members.values()]
        members += self.format_members.values()
        return sum(_member_bytes(len(m)) for m in members if m is not None)


def _member_bytes(n: int) -> int:
    return _BLOCK + -(-n // _BLOCK) * _BLOCK


def audio_info(flac: bytes, fmt: str = DEFAULT_RENDERER) -> AudioInfo:
    """AudioInfo of FLAC bytes (header only) in the ``fmt`` renderer's format, for a SampleRecord;
    the channel count must fit that renderer's layout."""
    try:
        info = sf.info(io.BytesIO(flac))
    except (sf.SoundFileError, RuntimeError) as e:
        raise SampleRejected(RejectReason.UNDECODABLE, f"FLAC header: {e}") from e
    try:
        order = renderer(fmt).ambisonic_order(int(info.channels))
    except SpatialAudioCapsError as e:
        raise SampleRejected(ShardRejectReason.INVALID_RECORD, f"audio: {e}") from e
    return AudioInfo(
        sample_rate=int(info.samplerate),  # type: ignore[arg-type]
        channels=int(info.channels),
        ambisonic_order=order,
        format=fmt,
        num_samples=int(info.frames),
        duration_s=info.frames / info.samplerate,
        flac_subtype="PCM_24" if info.subtype == "PCM_24" else "PCM_16",
        sha256=hashlib.sha256(flac).hexdigest(),
        n_bytes=len(flac),
        renderer_id=renderer(fmt).identity,
    )


def labels_from_rir(rir: RirRecord, room: Room) -> SpatialLabels:
    """The labels of a sample rendered with this (measured) RIR in this room."""
    return SpatialLabels(
        azimuth_deg=rir.azimuth_deg,
        elevation_deg=rir.elevation_deg,
        distance_m=rir.distance_m,
        t30_s=rir.t30_s,
        target_t30_s=rir.ism.target_t30_s if rir.ism else None,
        edt_s=rir.edt_s,
        drr_db=rir.drr_db,
        c50_db=rir.c50_db,
        floor_area_m2=room.floor_area_m2,
        volume_m3=room.volume_m3,
        room_dims_m=room.dims_m,
        direct_doa_error_deg=rir.direct_doa_error_deg,
        room_id=rir.room_id,
        placement_id=rir.placement_id,
    )


def build_sample(
    flac: bytes,
    *,
    dataset: str,
    split: str,
    clip_id: str,
    aug: int,
    captions: Sequence[CaptionInfo],
    provenance: Provenance,
    labels: SpatialLabels | None = None,
    descriptors: Descriptors | None = None,
    audio_format: str | None = None,
    sources: Sequence[SceneSourceLabels] | None = None,
    formats: Mapping[str, tuple[bytes, RenderedInfo]] | None = None,
    scene_order: int | None = None,
) -> ShardSample:
    """A ShardSample from rendered FLAC bytes and what the earlier stages produced.

    Spatial when labels are given, else a mono original. ``audio_format`` is the renderer that
    made the FLAC (RenderedSample.format); unset, the default renderer for a spatial sample and
    ``mono`` otherwise. ``clip_id`` is passed through ``safe_clip_id``; the raw id belongs in
    ``provenance.source_id``. ``sources``: a scene sample's per-source labels (its ``.csv`` too).
    ``formats``: further formats of a spatial sample (RenderedSample.extra), one member each, rendered
    from a scene of ambisonic order ``scene_order`` (the RIR's; required with ``formats``).
    """
    cid = safe_clip_id(clip_id)
    key = make_key(dataset, split, cid, aug)
    fmt = audio_format or (DEFAULT_RENDERER if labels is not None else MONO_FORMAT)
    audio = audio_info(flac, fmt)
    if formats and scene_order is None:
        raise ValueError("further formats need the order of the scene they were rendered from")
    members = {name: FormatMember(audio=audio_info(b, name), rendered=info, scene_order=scene_order)
               for name, (b, info) in (formats or {}).items()}
    try:
        record = SampleRecord(
            text=[c.spatial for c in captions],
            original_text=[c.original for c in captions],
            key=key,
            dataset=dataset,
            split=split,
            clip_id=cid,
            aug=aug,  # type: ignore[arg-type]
            spatial=labels is not None,
            captions=list(captions),
            labels=labels,
            descriptors=descriptors,
            audio=audio,
            provenance=provenance,
            sources=list(sources) if sources is not None else None,
            formats=members or None,
        )
    except ValidationError as e:
        first = e.errors()[0]
        where = ".".join(str(p) for p in first.get("loc", ()))
        raise SampleRejected(ShardRejectReason.INVALID_RECORD, f"{where}: {first.get('msg')}"[:200]) from e
    return ShardSample(key=key, flac=flac, record=record,
                       extra={name: b for name, (b, _) in (formats or {}).items()})


def reject_row(e: AudioRejected, *, key: str | None, source: str, stage: str = "shard") -> RejectRow:
    ds = split = None
    if key:
        parts = key.split("-")
        if len(parts) >= 4:
            ds, split = parts[0], parts[1]
    return RejectRow(
        stage=stage,
        reason=str(e.reason),
        detail=e.detail[:500],
        key=key,
        source=source,
        dataset=ds,
        split=split,
    )


# --------------------------------------------------------------------------------------------
# plans


class ShardPlan(BaseModel):
    """One shard: its split, index and the keys it holds, in tar order."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    split: str
    index: int
    sample_keys: tuple[str, ...]
    est_bytes: int = 0

    @property
    def name(self) -> str:
        """Path relative to the dataset version root: ``{split}/{split}-{index:06d}.tar``."""
        return f"{self.split}/{self.split}-{self.index:06d}.tar"


def shard_order(key: str) -> str:
    return hashlib.sha256(key.encode()).hexdigest()


ShardOrder = Literal["hash", "given"]
"""How a split's samples are cut into shards: ``hash``, membership by sha256(key) (every shard a
uniform draw of the split); ``given``, membership follows the entries' order (a caller's locality
order, tasks.plan.shard_plans). Inside a shard the order is sha256(key) either way."""


def plan_shards(
    entries: Iterable[tuple[str, str, int]],
    *,
    max_samples: int = DEFAULT_MAX_SAMPLES,
    max_bytes: int = DEFAULT_MAX_BYTES,
    order: ShardOrder = "hash",
) -> list[ShardPlan]:
    """Shards from (key, split, tar bytes) triples; bytes may be 0 when unknown (count-only plans).

    Keys must be unique. Splits come out in sorted order, shards numbered from 0 within each
    split; each shard is a contiguous run of its split's samples in the membership order (see
    ``ShardOrder``), closed at ``max_samples`` or before it would pass ``max_bytes``.
    """
    if max_samples < 1 or max_bytes < 1:
        raise ValueError("max_samples and max_bytes must be positive")
    by_split: dict[str, list[tuple[str, str, int]]] = {}
    seen: set[str] = set()
    for key, split, nbytes in entries:
        if key in seen:
            raise ValueError(f"duplicate key {key}: a key is planned once")
        seen.add(key)
        by_split.setdefault(split, []).append((shard_order(key), key, int(nbytes)))
    plans: list[ShardPlan] = []
    for split in sorted(by_split):
        rows = by_split[split] if order == "given" else sorted(by_split[split])
        for index, run in enumerate(_runs(rows, max_samples, max_bytes)):
            members = run if order == "hash" else sorted(run)
            plans.append(ShardPlan(split=split, index=index, sample_keys=tuple(key for _, key, _ in members),
                                   est_bytes=sum(nbytes for _, _, nbytes in members)))
    return plans


def _runs(
    rows: list[tuple[str, str, int]], max_samples: int, max_bytes: int
) -> Iterator[list[tuple[str, str, int]]]:
    """Consecutive runs of (hash, key, bytes) rows, each closed at max_samples rows or before its
    bytes would pass max_bytes (a single larger row is a run of its own)."""
    run: list[tuple[str, str, int]] = []
    total = 0
    for row in rows:
        if run and (len(run) >= max_samples or total + row[2] > max_bytes):
            yield run
            run, total = [], 0
        run.append(row)
        total += row[2]
    if run:
        yield run


def plan_samples(
    samples: Sequence[ShardSample],
    *,
    max_samples: int = DEFAULT_MAX_SAMPLES,
    max_bytes: int = DEFAULT_MAX_BYTES,
) -> list[ShardPlan]:
    return plan_shards(
        ((s.key, s.split, s.tar_bytes) for s in samples), max_samples=max_samples, max_bytes=max_bytes
    )


# --------------------------------------------------------------------------------------------
# writing


MemberEncoder = Callable[[ShardSample], bytes | None]
"""The bytes of one member of a sample (its FLAC, its json, ...); None: this sample has no such member
(an ELSA sample has no ``.csv``)."""


@dataclass(frozen=True)
class MemberOffsets:
    """Where a sample's members sit in its shard, by extension: (data offset, size), for ranged
    reads of one sample. The manifest keeps the audio and json spans."""

    key: str
    spans: dict[str, tuple[int, int]]


class ShardWriter(Protocol):
    """The seam on the write side: how samples become one shard object.

    ``members`` declares each member a sample gets (extension -> encoder); the writer lays them
    out and says where each one landed. A new container or an extra member (issue 13's ``.csv``
    labels, issue 14's ``.binaural.flac``) is a writer here plus a ``WRITERS`` entry.
    """

    name: str
    suffix: str
    """The shard object's file suffix (``.tar``)."""
    members: Mapping[str, MemberEncoder]

    def write(self, samples: Iterable[ShardSample], fh: BinaryIO) -> list[MemberOffsets]: ...


@dataclass(frozen=True)
class WebDatasetTar:
    """An uncompressed WebDataset tar with reproducible headers; members in webdataset's order
    (sorted by extension, as TarWriter writes them), each ``{key}.{ext}``."""

    name: str
    members: Mapping[str, MemberEncoder]
    suffix: str = ".tar"

    def write(self, samples: Iterable[ShardSample], fh: BinaryIO) -> list[MemberOffsets]:
        """Write samples in order as one tar; offsets come from the layout and are checked
        against the stream, so a header webdataset writes differently (a long name) fails loudly."""
        offsets: list[MemberOffsets] = []
        writer = TarWriter(
            fh, user=TAR_USER, group=TAR_USER, mode=TAR_MODE, compress=False, encoder=False, mtime=TAR_MTIME
        )
        try:
            for s in samples:
                data = {ext: b for ext, encode in self.members.items() if (b := encode(s)) is not None}
                data.update(s.format_members)
                pos = writer.tarstream.offset
                spans: dict[str, tuple[int, int]] = {}
                for ext in sorted(data):
                    spans[ext] = (pos + _BLOCK, len(data[ext]))
                    pos += _member_bytes(len(data[ext]))
                writer.write({"__key__": s.key, **data})
                if writer.tarstream.offset != pos:
                    raise RuntimeError(f"unexpected tar layout for {s.key} (long name?)")
                offsets.append(MemberOffsets(s.key, spans))
        finally:
            writer.close()
        return offsets


def scene_csv(sample: ShardSample) -> bytes | None:
    """A scene sample's ``.csv`` member: its ``sources`` in the DCASE/STARSS23 metadata format, which SELD
    tools read unchanged; None for ELSA samples."""
    sources = sample.record.sources
    return dcase_csv(sources) if sources else None


DEFAULT_WRITER = "webdataset"
WRITERS: dict[str, ShardWriter] = {
    DEFAULT_WRITER: WebDatasetTar(
        DEFAULT_WRITER, {"flac": lambda s: s.flac, "json": lambda s: s.json_bytes, "csv": scene_csv}
    ),
}


def shard_writer(name: str) -> ShardWriter:
    """The registered writer called ``name`` (UnknownComponentError lists the others)."""
    return registered(WRITERS, name, "shard writer")


def write_tar(
    samples: Iterable[ShardSample], fh: BinaryIO, writer: str = DEFAULT_WRITER
) -> list[MemberOffsets]:
    """Write samples in order as one shard with a registered writer (a WebDataset tar by default)."""
    return shard_writer(writer).write(samples, fh)


def tar_bytes_of(samples: Sequence[ShardSample]) -> bytes:
    """A whole tar in memory (tests, small staging files)."""
    bio = io.BytesIO()
    write_tar(samples, bio)
    return bio.getvalue()


__all__ = [
    "DEFAULT_MAX_BYTES",
    "DEFAULT_MAX_SAMPLES",
    "DEFAULT_WRITER",
    "WRITERS",
    "MemberEncoder",
    "MemberOffsets",
    "SampleRejected",
    "ShardOrder",
    "ShardPlan",
    "ShardSample",
    "ShardWriter",
    "WebDatasetTar",
    "audio_info",
    "build_sample",
    "canonical_json",
    "labels_from_rir",
    "make_key",
    "plan_samples",
    "plan_shards",
    "reject_row",
    "safe_clip_id",
    "shard_writer",
    "tar_bytes_of",
    "write_tar",
]
