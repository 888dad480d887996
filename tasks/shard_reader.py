"""The one reader of the project's own shards: tar members → ShardSample (SampleRecord + FLAC) or a reject.

Inspect, the training loader and evaluation all read shards through here, so only this module
knows a sample's layout (the members tasks.shard_writer's default writer declares: ``{key}.flac``
and ``{key}.json``, the json a SampleRecord, and for a scene sample ``{key}.csv``, its DCASE labels,
which must be exactly what the json's ``sources`` say; and one ``{key}.{format}.flac`` per further
format the json's ``formats`` names, each checked like ``.flac``; ``sample_audio`` picks one) and
what makes a sample unusable; each unusable one comes out as a RejectRow with the reason code that
inspect reports and the loader logs.

``iter_tar_samples`` never gives up on the rest of a file because of one bad member: damaged
headers are skipped (and reported) up to the next valid one. ``decode=False`` checks the FLAC
bytes against the record's sha256 only, for readers that decode the audio themselves with
``decode_audio`` (which checks rate, channels and length against the record as it decodes).
"""

from __future__ import annotations

import hashlib
import io
import json
import re
import tarfile
from collections.abc import Iterator
from typing import BinaryIO

import numpy as np
import soundfile as sf
from pydantic import ValidationError

from schemas.audio import RejectReason
from schemas.shards import (
    SHARD_SAMPLE_RATE,
    AudioInfo,
    RejectRow,
    SampleRecord,
    ShardRejectReason,
    member_ext,
)
from tasks.errors import SpatialAudioCapsError
from tasks.renderers import check_layout
from tasks.shard_writer import DEFAULT_WRITER, WRITERS, SampleRejected, ShardSample, reject_row, scene_csv
from tasks.storage import Storage, open_storage, safe_uri

MEMBER_EXTS = tuple(WRITERS[DEFAULT_WRITER].members)
"""The members the default writer declares; a sample has the required ones, and ``csv`` exactly when
its record has scene ``sources``."""
REQUIRED_EXTS = ("flac", "json")
_BLOCK = tarfile.BLOCKSIZE


def split_member_name(name: str) -> tuple[str, str]:
    """webdataset's rule: the key is the name up to the first dot of its last path component."""
    m = re.match(r"^((?:.*/|)[^.]+)[.]([^/]*)$", name)
    if not m:
        return name, ""
    return m.group(1), m.group(2)


def read_record(raw: bytes) -> SampleRecord:
    """The .json member as a SampleRecord; SampleRejected (invalid_json / invalid_record) if not,
    or if its audio's channels do not fit the layout of the renderer it names."""
    try:
        data = json.loads(raw.decode("utf-8"))
    except (UnicodeDecodeError, json.JSONDecodeError) as e:
        raise SampleRejected(ShardRejectReason.INVALID_JSON, str(e)[:200]) from e
    try:
        record = SampleRecord.model_validate(data)
    except ValidationError as e:
        first = e.errors()[0]
        where = ".".join(str(p) for p in first.get("loc", ()))
        raise SampleRejected(ShardRejectReason.INVALID_RECORD, f"{where}: {first.get('msg')}"[:200]) from e
    try:
        for audio in (record.audio, *(m.audio for m in (record.formats or {}).values())):
            check_layout(audio)
    except SpatialAudioCapsError as e:
        raise SampleRejected(ShardRejectReason.INVALID_RECORD, f"audio: {e}"[:200]) from e
    return record


def audio_record(record: SampleRecord, fmt: str | None = None) -> AudioInfo:
    """The AudioInfo of the sample's ``fmt`` member (None: the ``.flac``); SampleRejected
    (missing_member) when the sample was not rendered in that format."""
    if fmt is None or fmt == record.audio.format:
        return record.audio
    if record.formats is None or fmt not in record.formats:
        have = [record.audio.format, *(record.formats or {})]
        raise SampleRejected(ShardRejectReason.MISSING_MEMBER, f"no {fmt} audio; the sample has {have}")
    return record.formats[fmt].audio


def sample_audio(sample: ShardSample, fmt: str | None = None) -> bytes:
    """The FLAC bytes of the sample's ``fmt`` member: how a reader picks binaural or mic audio
    instead of the ambiX ``.flac`` (then ``decode_audio(..., fmt=fmt)``)."""
    if fmt is None or fmt == sample.record.audio.format:
        return sample.flac
    audio_record(sample.record, fmt)
    return sample.extra[fmt]


def decode_audio(
    flac: bytes, record: SampleRecord, dtype: str = "float32", fmt: str | None = None
) -> np.ndarray:
    """The FLAC of the ``fmt`` member (None: ``.flac``) as (channels, frames), decoded completely
    and agreeing with the record.

    Header unreadable: undecodable; rate/channels/length differ from the record: audio_mismatch;
    the stream ends early or breaks: truncated.
    """
    audio = audio_record(record, fmt)
    try:
        info = sf.info(io.BytesIO(flac))
    except (sf.SoundFileError, RuntimeError) as e:
        raise SampleRejected(RejectReason.UNDECODABLE, f"FLAC header: {e}") from e
    want = (SHARD_SAMPLE_RATE, audio.channels, audio.num_samples)
    got = (int(info.samplerate), int(info.channels), int(info.frames))
    if got != want:
        raise SampleRejected(
            ShardRejectReason.AUDIO_MISMATCH, f"FLAC is (rate, channels, frames) {got}, record says {want}"
        )
    try:
        x = sf.read(io.BytesIO(flac), dtype=dtype, always_2d=True)[0]
    except (sf.SoundFileError, RuntimeError) as e:
        raise SampleRejected(RejectReason.TRUNCATED, f"FLAC decoding failed: {e}") from e
    if x.shape[0] != info.frames:
        raise SampleRejected(RejectReason.TRUNCATED, f"decoded {x.shape[0]} of {info.frames} frames")
    return np.ascontiguousarray(x.T)


def _check_bytes(flac: bytes, record: SampleRecord, fmt: str | None = None) -> None:
    audio = audio_record(record, fmt)
    if len(flac) != audio.n_bytes or hashlib.sha256(flac).hexdigest() != audio.sha256:
        name = f"{fmt} FLAC" if fmt else "FLAC"
        raise SampleRejected(ShardRejectReason.AUDIO_MISMATCH, f"{name} bytes differ from the record's hash")


def check_audio(flac: bytes, record: SampleRecord, fmt: str | None = None) -> None:
    """The FLAC is the record's (size, sha256) and decodes completely as the record says."""
    _check_bytes(flac, record, fmt)
    decode_audio(flac, record, dtype="int16", fmt=fmt)


def sample_from_members(key: str, members: dict[str, bytes], *, decode: bool = True) -> ShardSample:
    """Validate one sample's tar members; raises SampleRejected with the reason."""
    dups = sorted(k[len("__dup__") :] for k in members if k.startswith("__dup__"))
    if dups:
        raise SampleRejected(
            ShardRejectReason.DUPLICATE_KEY, f"key {key} has more than one .{dups[0]} member"
        )
    missing = [e for e in REQUIRED_EXTS if e not in members]
    if missing:
        raise SampleRejected(ShardRejectReason.MISSING_MEMBER, f"no .{' .'.join(missing)} member")
    record = read_record(members["json"])
    if record.key != key:
        raise SampleRejected(ShardRejectReason.KEY_MISMATCH, f"member key {key!r}, record key {record.key!r}")
    formats = {member_ext(fmt): fmt for fmt in record.formats or {}}
    extra = sorted(set(members) - set(MEMBER_EXTS) - set(formats))
    if extra:
        raise SampleRejected(
            ShardRejectReason.UNEXPECTED_MEMBER, f"members {extra} are not among {[*MEMBER_EXTS, *formats]}"
        )
    absent = sorted(ext for ext in formats if ext not in members)
    if absent:
        raise SampleRejected(ShardRejectReason.MISSING_MEMBER, f"no .{' .'.join(absent)} member")
    sample = ShardSample(key=key, flac=members["flac"], record=record,
                         extra={fmt: members[ext] for ext, fmt in formats.items()})
    _check_csv(members.get("csv"), sample)
    check = check_audio if decode else _check_bytes
    check(members["flac"], record)
    for ext, fmt in formats.items():
        check(members[ext], record, fmt)
    return sample


def _check_csv(csv: bytes | None, sample: ShardSample) -> None:
    """A scene sample carries its DCASE labels, and they are its json's; an ELSA sample has none."""
    want = scene_csv(sample)
    if want is None and csv is not None:
        raise SampleRejected(ShardRejectReason.UNEXPECTED_MEMBER, "a .csv member on a sample without sources")
    if want is not None and csv is None:
        raise SampleRejected(ShardRejectReason.MISSING_MEMBER, "no .csv member for a scene sample")
    if csv != want:
        raise SampleRejected(ShardRejectReason.INVALID_RECORD, ".csv labels differ from the json's sources")


def iter_tar_samples(fh: BinaryIO, source: str, *, decode: bool = True) -> Iterator[ShardSample | RejectRow]:
    """Samples of a tar stream in order, or RejectRows saying why one could not be used.

    A member header that does not parse is skipped block by block up to the next valid header
    (tarfile's ignore_zeros), and the skipped byte range is reported as ``corrupt_member``; the
    sample it belonged to then lacks a member and is rejected too. A stream that ends inside a
    member rejects that sample as ``truncated``. Reading goes on wherever it can.
    """
    expected = 0
    key: str | None = None
    members: dict[str, bytes] = {}

    def finish() -> Iterator[ShardSample | RejectRow]:
        if key is None:
            return
        try:
            yield sample_from_members(key, members, decode=decode)
        except SampleRejected as e:
            yield reject_row(e, key=key, source=source)

    try:
        tf = tarfile.open(fileobj=fh, mode="r|", ignore_zeros=True)  # noqa: SIM115 (read in the loop below)
    except tarfile.TarError as e:
        yield RejectRow(
            stage="shard", reason=ShardRejectReason.CORRUPT_MEMBER, detail=f"not a tar: {e}", source=source
        )
        return
    try:
        for ti in tf:
            if ti.offset != expected:
                yield RejectRow(
                    stage="shard",
                    reason=ShardRejectReason.CORRUPT_MEMBER,
                    source=f"{source}@{expected}",
                    detail=f"{ti.offset - expected} bytes at {expected} are not a valid tar header; skipped",
                )
            expected = ti.offset_data + -(-ti.size // _BLOCK) * _BLOCK
            if not ti.isfile():
                continue
            k, ext = split_member_name(ti.name)
            if k != key:
                yield from finish()
                key, members = k, {}
            stream = tf.extractfile(ti)
            data = stream.read() if stream is not None else b""
            if len(data) != ti.size:
                raise tarfile.ReadError(f"{ti.name}: read {len(data)} of {ti.size} bytes")
            if ext in members:
                members["__dup__" + ext] = data
            else:
                members[ext] = data
    except (tarfile.TarError, EOFError, OSError) as e:
        if key is not None:
            yield reject_row(
                SampleRejected(RejectReason.TRUNCATED, f"tar stream broke: {e}"), key=key, source=source
            )
            key = None
        yield RejectRow(
            stage="shard",
            reason=ShardRejectReason.CORRUPT_MEMBER,
            source=f"{source}@{expected}",
            detail=f"tar stream unreadable after offset {expected}: {e}",
        )
        return
    yield from finish()


def read_shard(
    uri: str, *, storage: Storage | None = None, decode: bool = True
) -> Iterator[ShardSample | RejectRow]:
    """``iter_tar_samples`` over one shard URI (local or s3://), streamed through tasks.storage;
    a missing shard raises tasks.storage's ObjectMissing when iteration starts."""
    st = storage or open_storage(uri)
    with st.open_read(uri) as fh:
        yield from iter_tar_samples(fh, safe_uri(uri), decode=decode)


__all__ = [
    "MEMBER_EXTS",
    "check_audio",
    "decode_audio",
    "iter_tar_samples",
    "read_record",
    "read_shard",
    "sample_from_members",
    "split_member_name",
]
