"""Readers that summarise a dataset version or a single shard, and check labels against audio.

The DOA check decodes a sample's FOA and asks the repo's intensity estimator (tasks.doa) where
the sound comes from, then compares that with the json labels. Two estimates are made: the
direct sound (a 2.5 ms broadband window at the first arrival on W, which for a rendered clip
holds no reflection yet) and the whole clip (300–3000 Hz); the smaller error counts, and a
sample is flagged when even that exceeds the tolerance. A left/right or front/back swap, a
FuMa/ambiX mix-up or labels from another sample give errors far beyond it. A scene sample's
labels are its source 0's first point, so its audio is checked only before any other source starts
(``solo_until_s``; source 0 starts the scene), and not at all when that leaves under MIN_SOLO_S.

A sample rendered with sensor noise records its SNR. Its first arrival is then sought on a
short-term RMS envelope clear of the noise (NOISE_ENVELOPE_SIGMAS), and its direct window is read
in the 300-3000 Hz band: at 10 dB SNR a steady sound (a hum, a tone) peaks only ~3x its RMS, so the
noise alone reaches the plain 0.2-of-peak threshold before the direct sound arrives, and the window
lands on noise.

A dataset summary needs nothing but a few columns of the manifest (read as Arrow: a paper-scale
manifest is never a list of row objects) and a HEAD or stat per shard; ``--deep`` re-reads every
shard for its sha256. The DOA check reads only the FLAC bytes of the chosen samples (ranged GETs at
the manifest's offsets).
"""

from __future__ import annotations

import io
import json
import math
from collections import Counter
from collections.abc import Sequence
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import soundfile as sf
from pydantic import BaseModel, ConfigDict
from scipy.ndimage import uniform_filter1d

from schemas.shards import RejectRow, SampleRecord
from tasks.ambisonics import angular_distance_deg
from tasks.commit import MANIFEST, SIZES, read_manifest, read_rejects, shard_counts, sizes_json, verify_shards
from tasks.doa import DEFAULT_BAND_HZ, DoaError, first_arrival_index, intensity_doa
from tasks.errors import SpatialAudioCapsError
from tasks.shard_reader import iter_tar_samples, read_record
from tasks.shard_writer import ShardSample, shard_order
from tasks.storage import ObjectMissing, Storage, StorageError, join_uri, open_storage, safe_uri

DEFAULT_TOLERANCE_DEG = 30.0
MIN_SOLO_S = 0.25
"""A scene whose second source starts sooner is not checked: too little of source 0 alone."""
DEFAULT_DOA_SAMPLES = 64
DIRECT_ONSET = 0.2
"""First arrival: the first W sample at this fraction of the clip's peak (tasks.doa.first_arrival_index)."""
NOISE_ENVELOPE_S = 0.0005
NOISE_ENVELOPE_SIGMAS = 2.0
"""Onset over a known noise floor, on a 0.5 ms RMS envelope (24 samples at 48 kHz): noise alone reaches
twice its RMS there with odds ~1e-10 per window, and a direct sound 5 dB over the noise passes it."""
_MAX_LISTED = 20


class DoaCheck(BaseModel):
    """Audio-estimated direction of one sample against its labels."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    key: str
    label_azimuth_deg: float
    label_elevation_deg: float
    direct_azimuth_deg: float | None
    direct_elevation_deg: float | None
    direct_error_deg: float | None
    clip_azimuth_deg: float | None
    clip_elevation_deg: float | None
    clip_error_deg: float | None
    error_deg: float | None
    flagged: bool
    note: str | None = None


def doa_check(
    key: str,
    flac: bytes,
    azimuth_deg: float,
    elevation_deg: float,
    *,
    tolerance_deg: float = DEFAULT_TOLERANCE_DEG,
    until_s: float | None = None,
    snr_db: float | None = None,
) -> DoaCheck:
    """Direct-sound and whole-clip intensity DOA of FOA FLAC bytes against the labelled direction;
    ``until_s``: only the audio before it (a scene's first other onset); ``snr_db``: the sensor noise
    the sample was rendered with (its W power is the clip's over that SNR, on every channel)."""
    try:
        y, fs = sf.read(io.BytesIO(flac), dtype="float64", always_2d=True)
    except (sf.SoundFileError, RuntimeError) as e:
        return _failed(key, azimuth_deg, elevation_deg, f"undecodable FLAC: {e}")
    sig = np.ascontiguousarray(y.T if until_s is None else y[: round(until_s * fs)].T)
    if sig.shape[0] < 4:
        return _failed(key, azimuth_deg, elevation_deg, f"{sig.shape[0]} channel(s): not FOA")
    estimates: dict[str, tuple[float, float, float] | None] = {}
    notes = []
    try:
        onset = _direct_onset(sig[0], y[:, 0], fs, snr_db)
        i0 = max(0, onset - round(0.0005 * fs))
        i1 = min(sig.shape[1], onset + round(0.002 * fs))
        band = None if snr_db is None else DEFAULT_BAND_HZ  # a band keeps most of the noise out
        est = intensity_doa(sig, fs, band_hz=band, start_s=i0 / fs, end_s=i1 / fs)
        estimates["direct"] = (est.azimuth_deg, est.elevation_deg, _err(est, azimuth_deg, elevation_deg))
    except DoaError as e:
        estimates["direct"] = None
        notes.append(f"direct: {e}")
    try:
        est = intensity_doa(sig, fs)
        estimates["clip"] = (est.azimuth_deg, est.elevation_deg, _err(est, azimuth_deg, elevation_deg))
    except DoaError as e:
        estimates["clip"] = None
        notes.append(f"clip: {e}")
    errors = [e[2] for e in estimates.values() if e is not None]
    error = min(errors) if errors else None
    d, c = estimates["direct"], estimates["clip"]
    return DoaCheck(
        key=key,
        label_azimuth_deg=azimuth_deg,
        label_elevation_deg=elevation_deg,
        direct_azimuth_deg=d[0] if d else None,
        direct_elevation_deg=d[1] if d else None,
        direct_error_deg=d[2] if d else None,
        clip_azimuth_deg=c[0] if c else None,
        clip_elevation_deg=c[1] if c else None,
        clip_error_deg=c[2] if c else None,
        error_deg=error,
        flagged=error is None or error > tolerance_deg,
        note="; ".join(notes) or None,
    )


def _direct_onset(w: np.ndarray, whole_w: np.ndarray, fs: int, snr_db: float | None) -> int:
    """First arrival on W: its first sample at DIRECT_ONSET of the peak; with a known SNR, the first
    point where W's short-term RMS (NOISE_ENVELOPE_S, centred) reaches DIRECT_ONSET of its peak and
    NOISE_ENVELOPE_SIGMAS of the noise (whose power is ``whole_w``'s over 1 + SNR: the SNR holds over
    the whole clip, which a scene's check may cut). A floor that high leaves no onset (DoaError)."""
    if snr_db is None:
        return first_arrival_index(w, DIRECT_ONSET)
    n = max(1, round(NOISE_ENVELOPE_S * fs))
    envelope = np.sqrt(np.maximum(uniform_filter1d(np.square(w), n, mode="constant"), 0.0))
    noise_rms = math.sqrt(float(np.mean(np.square(whole_w))) / (1.0 + 10.0 ** (snr_db / 10.0)))
    peak = float(envelope.max())
    floor = NOISE_ENVELOPE_SIGMAS * noise_rms
    if peak <= floor:
        raise DoaError(f"the sensor noise ({snr_db:.1f} dB SNR) is as loud as the sound: no onset above it")
    return first_arrival_index(envelope, max(DIRECT_ONSET, floor / peak))


def _err(est: Any, az: float, el: float) -> float:
    return round(float(angular_distance_deg(est.azimuth_deg, est.elevation_deg, az, el)), 3)


def _failed(key: str, az: float, el: float, note: str) -> DoaCheck:
    return DoaCheck(
        key=key,
        label_azimuth_deg=az,
        label_elevation_deg=el,
        direct_azimuth_deg=None,
        direct_elevation_deg=None,
        direct_error_deg=None,
        clip_azimuth_deg=None,
        clip_elevation_deg=None,
        clip_error_deg=None,
        error_deg=None,
        flagged=True,
        note=note,
    )


def summarise_checks(checks: Sequence[DoaCheck], tolerance_deg: float) -> dict[str, Any]:
    """Counts and error statistics of DOA checks, with the flagged ones listed (up to 20)."""
    errs = [c.error_deg for c in checks if c.error_deg is not None]
    flagged = [c for c in checks if c.flagged]
    return {
        "checked": len(checks),
        "flagged": len(flagged),
        "tolerance_deg": tolerance_deg,
        "median_error_deg": _r(float(np.median(errs))) if errs else None,
        "max_error_deg": _r(max(errs)) if errs else None,
        "mismatches": [c.model_dump(mode="json") for c in flagged[:_MAX_LISTED]],
    }


def _r(x: float | None) -> float | None:
    return None if x is None or not math.isfinite(x) else round(x, 3)


# --------------------------------------------------------------------------------------------
# a single shard


def inspect_shard(
    uri: str,
    *,
    storage: Storage | None = None,
    doa: bool = True,
    tolerance_deg: float = DEFAULT_TOLERANCE_DEG,
    max_samples: int | None = None,
) -> dict[str, Any]:
    """Stream one tar: samples per split, hours, problems found, and the DOA check per sample."""
    st = storage or open_storage(uri)
    splits: Counter[str] = Counter()
    seconds = 0.0
    keys: Counter[str] = Counter()
    rejects: list[RejectRow] = []
    checks: list[DoaCheck] = []
    samples = 0
    try:
        fh = st.open_read(uri)
    except ObjectMissing as e:
        raise SpatialAudioCapsError(str(e)) from None
    with fh:
        for item in iter_tar_samples(fh, safe_uri(uri)):
            if isinstance(item, RejectRow):
                rejects.append(item)
                continue
            samples += 1
            keys[item.key] += 1
            splits[item.split] += 1
            seconds += item.record.audio.duration_s
            if doa and item.record.labels is not None and (max_samples is None or len(checks) < max_samples):
                check = _check_sample(item, tolerance_deg)
                if check is not None:
                    checks.append(check)
    dup = sorted(k for k, n in keys.items() if n > 1)
    out: dict[str, Any] = {
        "uri": safe_uri(uri),
        "kind": "shard",
        "samples": samples,
        "splits": dict(sorted(splits.items())),
        "hours": round(seconds / 3600.0, 6),
        "duplicate_keys": dup[:_MAX_LISTED],
        "problems": len(rejects),
        "problem_reasons": dict(sorted(Counter(r.reason for r in rejects).items())),
        "problem_list": [r.model_dump(mode="json") for r in rejects[:_MAX_LISTED]],
    }
    if doa:
        out["doa_check"] = summarise_checks(checks, tolerance_deg)
    out["ok"] = not rejects and not dup and not (doa and out["doa_check"]["flagged"])
    return out


def _check_sample(s: ShardSample, tolerance_deg: float) -> DoaCheck | None:
    lab = s.record.labels
    assert lab is not None
    until = solo_until_s(s.record)
    if until is not None and until < MIN_SOLO_S:
        return None
    return doa_check(s.key, s.flac, lab.azimuth_deg, lab.elevation_deg, tolerance_deg=tolerance_deg,
                     until_s=until, snr_db=sensor_snr_db(s.record))


def sensor_snr_db(record: SampleRecord) -> float | None:
    """The SNR of the sensor noise in the sample's main FLAC (None: rendered without)."""
    rendered = record.provenance.rendered
    return rendered.sensor_snr_db if rendered is not None else None


def solo_until_s(record: SampleRecord) -> float | None:
    """When the first source after source 0 starts (None: ELSA, or a one-source scene)."""
    onsets = [src.onset_s for src in record.sources or () if src.index != 0]
    return min(onsets) if onsets else None


# --------------------------------------------------------------------------------------------
# a dataset version


INSPECT_COLUMNS = (
    "key", "split", "shard", "shard_size", "shard_sha256", "shard_checksum", "duration_s", "spatial",
    "azimuth_deg", "elevation_deg", "flac_offset", "flac_size", "json_offset", "json_size",
)  # what a dataset summary and the DOA check read of the manifest


def pick_for_check(rows: pa.Table, n: int | None) -> pa.Table:
    """Deterministic sample of spatial rows (ordered by sha256 of the key)."""
    spatial = rows.filter(pc.and_(rows.column("spatial"), pc.is_valid(rows.column("azimuth_deg"))))
    order = np.argsort([shard_order(k) for k in spatial.column("key").to_pylist()], kind="stable")
    return spatial.take(order if n is None else order[:n])


def check_rows(
    storage: Storage, base: str, rows: pa.Table, *, tolerance_deg: float = DEFAULT_TOLERANCE_DEG
) -> list[DoaCheck]:
    """DOA checks of manifest rows, reading only their FLAC bytes (ranged reads)."""
    out = []
    cols = ["key", "shard", "flac_offset", "flac_size", "json_offset", "json_size", "azimuth_deg",
            "elevation_deg"]
    for r in rows.select(cols).to_pylist():
        shard = join_uri(base, r["shard"])
        flac = storage.read_range(shard, r["flac_offset"], r["flac_size"])
        record = read_record(storage.read_range(shard, r["json_offset"], r["json_size"]))
        until = solo_until_s(record)
        if until is not None and until < MIN_SOLO_S:
            continue
        az, el = r["azimuth_deg"], r["elevation_deg"]
        out.append(doa_check(r["key"], flac, az, el, tolerance_deg=tolerance_deg, until_s=until,
                             snr_db=sensor_snr_db(record)))
    return out


def _hours(seconds: float | None) -> float:
    return round((seconds or 0.0) / 3600.0, 6)


def inspect_dataset(
    uri: str,
    *,
    doa_samples: int | None = DEFAULT_DOA_SAMPLES,
    tolerance_deg: float = DEFAULT_TOLERANCE_DEG,
    deep: bool = False,
) -> dict[str, Any]:
    """Summary of a dataset version from its manifest (only ``INSPECT_COLUMNS``, as Arrow), with
    shard verification (``check_shard``; ``deep`` re-reads every shard) and the DOA check."""
    st = open_storage(uri)
    base = uri.rstrip("/")
    if not st.exists(join_uri(base, MANIFEST)):
        raise SpatialAudioCapsError(f"no {MANIFEST} under {safe_uri(base)}: not a dataset version root")
    rows = read_manifest(st, base, INSPECT_COLUMNS)
    checks = verify_shards(st, base, rows, deep=deep)
    listed = {c.shard for c in checks}
    on_store = {o.uri[len(base) + 1 :] for o in st.list(base + "/") if o.uri.endswith(".tar")}
    orphans = sorted(on_store - listed)
    per_split = rows.group_by("split", use_threads=False).aggregate(
        [("split", "count"), ("duration_s", "sum"), ("shard", "count_distinct")]
    )
    splits = {
        g["split"]: {"samples": g["split_count"], "hours": _hours(g["duration_s_sum"]),
                     "shards": g["shard_count_distinct"]}
        for g in per_split.sort_by("split").to_pylist()
    }
    keys = pc.value_counts(rows.column("key"))
    twice = keys.filter(pc.greater(keys.field("counts"), 1)).field("values").to_pylist()
    sizes_ok = None
    if st.exists(join_uri(base, SIZES)):
        sizes_ok = json.loads(st.read_bytes(join_uri(base, SIZES))) == sizes_json(shard_counts(rows))
    reasons = pc.value_counts(read_rejects(st, base, ["reason"]).column("reason")).to_pylist()
    bad = [c for c in checks if not c.ok]
    out: dict[str, Any] = {
        "uri": safe_uri(base),
        "kind": "dataset",
        "samples": rows.num_rows,
        "hours": _hours(pc.sum(rows.column("duration_s")).as_py()),
        "shards": len(listed),
        "splits": splits,
        "shards_failing_verification": {c.shard: c.reason for c in bad},
        "orphan_shards": orphans[:_MAX_LISTED],
        "duplicate_keys": sorted(twice)[:_MAX_LISTED],
        "sizes_json_matches_manifest": sizes_ok,
        "rejects": dict(sorted((r["values"], r["counts"]) for r in reasons)),
    }
    doa_ok = True
    if doa_samples != 0:
        good = pa.array(sorted(c.shard for c in checks if c.ok), pa.string())
        chosen = pick_for_check(rows.filter(pc.is_in(rows.column("shard"), value_set=good)), doa_samples)
        try:
            res = check_rows(st, base, chosen, tolerance_deg=tolerance_deg)
        except StorageError as e:
            raise SpatialAudioCapsError(f"DOA check could not read the audio: {e}") from None
        out["doa_check"] = summarise_checks(res, tolerance_deg)
        doa_ok = out["doa_check"]["flagged"] == 0
    out["ok"] = not bad and not out["duplicate_keys"] and sizes_ok is not False and doa_ok
    return out


def inspect_uri(uri: str, **kw: Any) -> dict[str, Any]:
    """A shard (``*.tar``) or a dataset version root, local or s3://."""
    if uri.rstrip("/").endswith(".tar"):
        kw.pop("deep", None)
        n = kw.pop("doa_samples", None)
        return inspect_shard(uri, doa=n != 0, max_samples=n, **kw)
    return inspect_dataset(uri, **kw)


__all__ = [
    "INSPECT_COLUMNS",
    "DoaCheck",
    "check_rows",
    "doa_check",
    "inspect_dataset",
    "inspect_shard",
    "inspect_uri",
    "pick_for_check",
    "summarise_checks",
]
