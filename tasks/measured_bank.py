"""Measured SRIR banks as a room source: read a bank, split it by room, render one of its RIRs.

A bank is a SOFA file (SingleRoomSRIR or GeneralFIR: Data.IR (M, R, N) with R ambisonic channels)
or a folder of WAVs with a ``labels_derived.csv`` (columns file, azimuth_deg, elevation_deg,
distance_m in the project's convention: the S3A layout of ../shared/realdata), either one room
folder or a folder of room folders. ``load_bank`` reads what it holds once; ``bank_room_set`` turns
it into placements (whole rooms per split); ``render_measured`` is what the ``measured`` RirSource
(tasks/rir_sources.py) does for one placement: convert to ambiX, truncate, resample, align, measure.

The channel format is taken, in order, from the caller, a ``bank.json``/``bank.yaml`` manifest, the
files' own metadata (the SOFA attribute ``GLOBAL_AmbisonicsFormat``; for WAVs, README/metadata text
such as S3A's "W, X, Y, Z" B-format description), and last from the data: the direct sound's
(X^2+Y^2+Z^2)/W^2 is 1 for SN3D, 2 for FuMa (W at -3 dB) and 3 for N3D. The bank records which one
decided it, so a wrong guess can be traced.
"""

from __future__ import annotations

import csv
import hashlib
import json
import math
import re
from collections.abc import Callable, Iterable
from dataclasses import replace
from functools import lru_cache
from pathlib import Path

import numpy as np
import soundfile as sf
import yaml
from pydantic import ValidationError
from scipy.signal import butter, sosfiltfilt

from schemas.measured import (
    BankManifest,
    ChannelFormat,
    FormatSource,
    Licence,
    MeasuredBank,
    MeasuredDetails,
    MeasuredPosition,
    MeasuredRef,
    MeasuredRoom,
)
from schemas.rooms import Placement, RirRecord, RirSettings
from tasks.ambisonics import (
    angular_distance_deg,
    fuma_to_ambix,
    n3d_to_sn3d,
    n_channels,
    order_of,
    unit_vector,
    vector_to_angles,
    wrap_azimuth,
)
from tasks.audio_prep import resample
from tasks.doa import DEFAULT_BAND_HZ, direct_sound_doa, first_arrival_index
from tasks.errors import LayoutError, SpatialAudioCapsError
from tasks.room_acoustics import direct_index, measure_response
from tasks.room_sampling import SPEED_OF_SOUND

MEASURED_VERSION = "measured/1"
LABELS_FILE = "labels_derived.csv"
LABEL_COLUMNS = ("file", "azimuth_deg", "elevation_deg", "distance_m")
MANIFEST_NAMES = ("bank.json", "bank.yaml", "bank.yml")
FORMAT_ATTRIBUTE = "GLOBAL_AmbisonicsFormat"
"""The SOFA global attribute naming a bank's channel format (ambix, fuma or n3d): SOFA has no
standard one, so this project reads (and its tests write) this custom attribute."""
SOFA_CONVENTIONS = ("SingleRoomSRIR", "GeneralFIR")
SOFAR_DEFAULT_LICENCE = "No license provided, ask the author for permission"
RATIO_BOUNDS = (1.5, 2.5)
"""Direct-sound (X^2+Y^2+Z^2)/W^2 (300-3000 Hz) below 1.5 reads as SN3D (1), up to 2.5 as FuMa (2),
above as N3D (3); S3A's measured Soundfield FuMa RIRs give 2.2 in the median of each room."""
RATIO_FILES = 24  # the format ratio is a median over at most this many files
NOISE_BLOCK_S = 0.01
T30_RANGE_DB = 45.0
DOA_POST_MS = 2.0
MIN_KEEP_S = 0.1
MAX_LABEL_ERROR_DEG = 20.0
"""Largest direct-sound DOA error a measured RIR may have against its label (S3A's worst is 15 deg:
a real microphone and loudspeaker, not a swapped or mislabelled file)."""
"""Never cut a measured RIR shorter than this: C50 and DRR need a late part to compare against."""


class MeasuredBankError(SpatialAudioCapsError):
    """A measured SRIR bank that cannot be read as labelled ambisonic RIRs."""


# --------------------------------------------------------------------------------------------
# loading


def load_bank(path: str | Path, bank_format: ChannelFormat | None = None) -> MeasuredBank:
    """Read a SOFA file or a WAV folder (one room, or a folder of rooms) as a MeasuredBank."""
    p = Path(path).expanduser().resolve()
    if p.is_file() and p.suffix.lower() == ".sofa":
        return _load_sofa(p, bank_format)
    if p.is_dir():
        return _load_wav_dir(p, bank_format)
    raise MeasuredBankError(f"{p}: neither a .sofa file nor a folder of WAVs with {LABELS_FILE}")


def _manifest(folder: Path) -> tuple[BankManifest, Path | None]:
    for name in MANIFEST_NAMES:
        f = folder / name
        if f.is_file():
            try:
                raw = json.loads(f.read_text()) if f.suffix == ".json" else yaml.safe_load(f.read_text())
                return BankManifest.model_validate(raw or {}), f
            except (ValueError, yaml.YAMLError, ValidationError) as exc:
                raise MeasuredBankError(f"{f}: not a valid bank manifest ({exc})") from exc
    return BankManifest(), None


def _sha256_file(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as fh:
        for block in iter(lambda: fh.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


def _sha256_samples(ir: np.ndarray) -> str:
    """Hash of one SOFA measurement's samples (little-endian float64): a change to another
    measurement of the same file leaves this one's key alone."""
    return hashlib.sha256(np.ascontiguousarray(ir, dtype="<f8").tobytes()).hexdigest()


def _bank_id(parts: list[tuple[str, str]]) -> str:
    """Content hash over (relative name, sha256) of every file the bank was read from."""
    blob = json.dumps(sorted(parts), separators=(",", ":")).encode()
    return hashlib.sha256(blob).hexdigest()[:16]


def _order_of(n_ch: int, where: str) -> int:
    """tasks.ambisonics.order_of with the bank's own error type (bad input, not a bad render)."""
    try:
        return order_of(n_ch, where)
    except LayoutError as exc:
        raise MeasuredBankError(str(exc)) from None


def _label(az: float, el: float, dist: float, where: str) -> tuple[float, float, float]:
    if not (math.isfinite(az) and math.isfinite(el) and math.isfinite(dist)) or dist <= 0:
        raise MeasuredBankError(f"{where}: no usable source position (az {az}, el {el}, distance {dist})")
    if not -90.0 <= el <= 90.0:
        raise MeasuredBankError(f"{where}: elevation {el} outside [-90, 90]")
    return float(wrap_azimuth(az)), float(el), float(dist)


# WAV folders ---------------------------------------------------------------------------------


def _load_wav_dir(root: Path, bank_format: ChannelFormat | None) -> MeasuredBank:
    manifest, manifest_path = _manifest(root)
    if (root / LABELS_FILE).is_file():
        room_dirs = [root]
        # One room of a collection (its parent holds other rooms): the collection's README too; a
        # room folder anywhere else reads only its own texts (not, say, a project's LICENSE).
        siblings = [d for d in root.parent.iterdir() if d != root and (d / LABELS_FILE).is_file()]
        text_dirs = [root, root.parent] if siblings else [root]
    else:
        room_dirs = sorted(d for d in root.iterdir() if d.is_dir() and (d / LABELS_FILE).is_file())
        text_dirs = [root, *room_dirs]
        if not room_dirs:
            raise MeasuredBankError(f"{root}: no {LABELS_FILE} in the folder or its subfolders")
    rooms: list[MeasuredRoom] = []
    positions: list[MeasuredPosition] = []
    hashed: list[tuple[str, str]] = []
    channels: set[int] = set()
    for d in room_dirs:
        room, pos, n_ch = _read_room(d, manifest, root.parent)
        rooms.append(room)
        positions += pos
        channels.add(n_ch)
        hashed += [(q.file, q.sha256) for q in pos]
        hashed.append((str((d / LABELS_FILE).relative_to(root.parent)), _sha256_file(d / LABELS_FILE)))
    if len(channels) > 1:
        raise MeasuredBankError(f"{root}: rooms with different channel counts {sorted(channels)}")
    if manifest_path is not None:
        hashed.append((manifest_path.name, _sha256_file(manifest_path)))
    texts = _texts(text_dirs)
    order = _order_of(channels.pop(), str(root))
    files = [root.parent / q.file for q in positions[:RATIO_FILES]]
    fmt, fmt_source, evidence = _decide_format(
        bank_format, manifest, _text_format(texts, root.parent), lambda: map(_read_wav, files)
    )
    return _bank(
        bank_id=_bank_id(hashed), path=str(root), kind="wav",
        source=manifest.source or _text_source(texts) or "",
        licence=_text_licence(manifest, texts, root.parent),
        channel_format=fmt, format_source=fmt_source, format_evidence=evidence, order=order,
        rooms=rooms, positions=positions,
    )


def _read_room(
    d: Path, manifest: BankManifest, base: Path
) -> tuple[MeasuredRoom, list[MeasuredPosition], int]:
    """One room folder: its labels table checked against its files (columns, presence, rates,
    channel counts); positions name their files relative to ``base``."""
    table = d / LABELS_FILE
    with open(table, newline="") as fh:
        reader = csv.DictReader(fh)
        missing = [c for c in LABEL_COLUMNS if c not in (reader.fieldnames or [])]
        if missing:
            raise MeasuredBankError(f"{table}: missing columns {missing} (need {list(LABEL_COLUMNS)})")
        rows = list(reader)
    if not rows:
        raise MeasuredBankError(f"{table}: no rows")
    rates: dict[int, str] = {}
    counts: set[int] = set()
    positions = []
    for row in rows:
        f = d / row["file"]
        if not f.is_file():
            raise MeasuredBankError(f"{table}: names {row['file']!r}, which is not in {d}")
        try:
            info = sf.info(str(f))
        except (sf.SoundFileError, RuntimeError) as exc:
            raise MeasuredBankError(f"{f}: not readable as audio ({exc})") from exc
        rates.setdefault(int(info.samplerate), f.name)
        counts.add(int(info.channels))
        if manifest.fs is not None and info.samplerate != manifest.fs:
            raise MeasuredBankError(f"{f}: {info.samplerate} Hz, but the bank manifest says {manifest.fs} Hz")
        try:
            az, el, dist = (float(row[c]) for c in LABEL_COLUMNS[1:])
        except (TypeError, ValueError) as exc:  # TypeError: a short row (csv fills None)
            raise MeasuredBankError(f"{table}: row {row['file']!r} has a non-numeric label ({exc})") from exc
        az, el, dist = _label(az, el, dist, f"{table} row {row['file']!r}")
        positions.append(MeasuredPosition(room_id=d.name, file=str(f.relative_to(base)), azimuth_deg=az,
                                          elevation_deg=el,
                                          distance_m=dist, sha256=_sha256_file(f)))
    if len(rates) > 1:
        raise MeasuredBankError(f"{d}: files at different sample rates {rates} (one rate per room)")
    if len(counts) > 1:
        raise MeasuredBankError(f"{d}: files with different channel counts {sorted(counts)}")
    n_ch = counts.pop()
    _order_of(n_ch, str(d))
    room = MeasuredRoom(room_id=d.name, name=d.name, fs=next(iter(rates)), n_positions=len(positions),
                        dims_m=manifest.dims_m.get(d.name))
    return room, positions, n_ch


_TEXT_NAME = re.compile(r"readme|licen[cs]e|copying|notice|metadata", re.I)


def _texts(dirs: list[Path]) -> list[tuple[Path, str]]:
    """README, metadata and licence texts (.txt, .md, no extension; named so) of the given folders."""
    out = []
    for d in dirs:
        for f in sorted(d.iterdir()) if d.is_dir() else []:
            named = _TEXT_NAME.search(f.name) and not f.name.startswith(".")
            text = f.suffix.lower() in (".txt", ".md", "")
            if named and text and f.is_file() and f.stat().st_size < 1 << 20:
                out.append((f, f.read_text(errors="replace")))
    return out


_FORMAT_PATTERNS: dict[str, list[re.Pattern[str]]] = {
    "fuma": [re.compile(r"\bfuma\b|furse[- ]malham", re.I)],
    "ambix": [re.compile(r"\bambix\b", re.I),
              re.compile(r"\bACN\b.*\bSN3D\b|\bSN3D\b.*\bACN\b", re.I | re.S)],
    "n3d": [re.compile(r"\bACN\b.*\bN3D\b|\bN3D\b.*\bACN\b", re.I | re.S)],
}
# Traditional B-format named channel by channel: W, then X, Y, Z (S3A's README and metadata).
_BFORMAT = re.compile(r"b-format", re.I)
_WXYZ = re.compile(r"\bW\b[^\n]{0,80}?\bX\b[^\n]{0,80}?\bY\b[^\n]{0,80}?\bZ\b")


def _text_format(texts: list[tuple[Path, str]], base: Path) -> tuple[ChannelFormat, str] | None:
    """The one format the folder's texts name, with the file that says so; None if none or several."""
    found: dict[str, str] = {}
    for f, text in texts:
        hits = {fmt for fmt, pats in _FORMAT_PATTERNS.items() if any(p.search(text) for p in pats)}
        if _BFORMAT.search(text) and (m := _WXYZ.search(text)):
            hits.add("fuma")
            found.setdefault("fuma", f"{_rel(f, base)}: {m.group(0)!r}")
        for fmt in hits:
            found.setdefault(fmt, _rel(f, base))
    if len(found) != 1:
        return None
    fmt, evidence = found.popitem()
    return fmt, evidence  # type: ignore[return-value]


_LICENCE_LINE = re.compile(r"^\s*licen[cs]e\s*:\s*(.+?)\s*$", re.I | re.M)
_CITATION_LINE = re.compile(r"^.*(?:doi|https?://).*$", re.I | re.M)
_LICENCE_FILE = re.compile(r"licen[cs]e|copying", re.I)


def _rel(f: Path, base: Path) -> str:
    try:
        return str(f.relative_to(base))
    except ValueError:
        return str(f)


def _text_licence(manifest: BankManifest, texts: list[tuple[Path, str]], base: Path) -> Licence:
    """Manifest, else a 'License:' line in a metadata text, else a LICENSE/COPYING file's opening."""
    if manifest.licence:
        return Licence(text=manifest.licence, source="manifest")
    for f, text in texts:
        if m := _LICENCE_LINE.search(text):
            return Licence(text=m.group(1).strip("'\""), source=f"file {_rel(f, base)}")
    for f, text in texts:
        if _LICENCE_FILE.search(f.name):
            opening = " ".join(line.strip() for line in text.splitlines() if line.strip())[:300]
            return Licence(text=opening, source=f"file {_rel(f, base)}")
    return Licence(text="unknown", source="none found")


def _text_source(texts: list[tuple[Path, str]]) -> str | None:
    """The first README/metadata line that cites the data (a DOI or URL) and is not a licence line."""
    for _, text in texts:
        for m in _CITATION_LINE.finditer(text):
            line = m.group(0).strip()
            if not _LICENCE_LINE.match(line):
                return line
    return None


# SOFA ---------------------------------------------------------------------------------------


def _read_sofa(path: Path):
    import sofar

    try:
        return sofar.read_sofa(str(path), verify=False, verbose=False)
    except Exception as exc:  # netCDF4 and sofar raise many kinds; all mean "not a SOFA file"
        raise MeasuredBankError(f"{path}: not readable as SOFA ({type(exc).__name__}: {exc})") from exc


def _sofa_points(sofa, name: str, m: int) -> np.ndarray | None:
    """A SOFA position variable as cartesian metres, shape (m, 3), or None when absent."""
    value = getattr(sofa, name, None)
    if value is None:
        return None
    pts = np.atleast_2d(np.asarray(value, dtype=np.float64))
    if pts.shape[-1] != 3 or pts.shape[0] not in (1, m):
        raise MeasuredBankError(f"{name} has shape {pts.shape}, expected (1 or {m}, 3)")
    pts = np.broadcast_to(pts, (m, 3))
    if str(getattr(sofa, f"{name}_Type", "cartesian")).lower() == "spherical":
        return (pts[:, 2] * unit_vector(pts[:, 0], pts[:, 1])).T
    return pts


def _load_sofa(path: Path, bank_format: ChannelFormat | None) -> MeasuredBank:
    sofa = _read_sofa(path)
    manifest, manifest_path = _manifest(path.parent)
    conv = str(getattr(sofa, "GLOBAL_SOFAConventions", ""))
    if conv not in SOFA_CONVENTIONS:
        raise MeasuredBankError(f"{path}: SOFA conventions {conv!r}, expected one of {SOFA_CONVENTIONS}")
    ir = np.asarray(getattr(sofa, "Data_IR", None), dtype=np.float64)
    if ir.ndim != 3 or ir.shape[2] == 0:
        raise MeasuredBankError(f"{path}: Data.IR must be (M, R, N), got shape {ir.shape}")
    m, r, _ = ir.shape
    fs = _sofa_fs(sofa, path)
    if manifest.fs is not None and fs != manifest.fs:
        raise MeasuredBankError(f"{path}: {fs} Hz, but the bank manifest says {manifest.fs} Hz")
    order = _order_of(r, str(path))
    src = _sofa_points(sofa, "SourcePosition", m)
    if src is None:
        raise MeasuredBankError(f"{path}: no SourcePosition: the bank's labels cannot be known")
    lis = _sofa_points(sofa, "ListenerPosition", m)
    view = _sofa_points(sofa, "ListenerView", m)
    up = _sofa_points(sofa, "ListenerUp", m)
    rel = src - (np.zeros((m, 3)) if lis is None else lis)
    local = _to_listener_frame(
        rel, np.tile([1.0, 0.0, 0.0], (m, 1)) if view is None else view,
        np.tile([0.0, 0.0, 1.0], (m, 1)) if up is None else up, path,
    )
    dist = np.linalg.norm(local, axis=1)
    if not np.all(np.isfinite(dist)) or np.any(dist <= 1e-6):
        raise MeasuredBankError(
            f"{path}: SourcePosition holds no source positions (a source at the listener, or NaN)"
        )
    az, el = vector_to_angles(local.T)
    room_id = str(getattr(sofa, "GLOBAL_RoomShortName", "") or path.stem)
    positions = []
    for i in range(m):
        a, e, d = _label(float(az[i]), float(el[i]), float(dist[i]), f"{path}[{i}]")
        positions.append(MeasuredPosition(room_id=room_id, file=path.name, index=i, azimuth_deg=a,
                                          elevation_deg=e, distance_m=d, sha256=_sha256_samples(ir[i])))
    name = str(getattr(sofa, "GLOBAL_Title", "") or getattr(sofa, "GLOBAL_RoomDescription", "") or path.stem)
    room = MeasuredRoom(room_id=room_id, name=name, fs=fs, n_positions=m,
                        dims_m=manifest.dims_m.get(room_id) or manifest.dims_m.get(path.stem))
    hashed = [(path.name, _sha256_file(path))]
    if manifest_path is not None:
        hashed.append((manifest_path.name, _sha256_file(manifest_path)))
    attr = str(getattr(sofa, FORMAT_ATTRIBUTE, "")).strip().lower()
    attr_fmt = (attr, f"{FORMAT_ATTRIBUTE} = {attr!r}") if attr in ("ambix", "fuma", "n3d") else None
    fmt, fmt_source, evidence = _decide_format(
        bank_format, manifest, attr_fmt, lambda: ((x, fs) for x in ir[:RATIO_FILES]), from_sofa=True
    )
    return _bank(
        bank_id=_bank_id(hashed), path=str(path), kind="sofa",
        source=manifest.source or _sofa_source(sofa), licence=_sofa_licence(manifest, sofa, path),
        channel_format=fmt, format_source=fmt_source, format_evidence=evidence, order=order,
        rooms=[room], positions=positions,
    )


def _sofa_fs(sofa, path: Path) -> int:
    rates = np.unique(np.asarray(getattr(sofa, "Data_SamplingRate", np.nan), dtype=np.float64))
    if rates.size != 1:
        raise MeasuredBankError(f"{path}: measurements at different sample rates {rates.tolist()}")
    fs = float(rates[0])
    if not math.isfinite(fs) or fs <= 0 or fs != round(fs):
        raise MeasuredBankError(f"{path}: invalid sample rate {fs}")
    return int(fs)


def _to_listener_frame(rel: np.ndarray, view: np.ndarray, up: np.ndarray, path: Path) -> np.ndarray:
    """Source offsets in the receiver's frame: x along ListenerView, z along ListenerUp (made
    orthogonal to the view), y = z cross x, its left."""
    fwd = view / np.linalg.norm(view, axis=1, keepdims=True)
    up = up - np.sum(up * fwd, axis=1, keepdims=True) * fwd
    norm = np.linalg.norm(up, axis=1, keepdims=True)
    if not np.all(np.isfinite(fwd)) or np.any(norm < 1e-9):
        raise MeasuredBankError(f"{path}: ListenerView/ListenerUp do not define a frame")
    up = up / norm
    left = np.cross(up, fwd)
    return np.stack([np.sum(rel * fwd, 1), np.sum(rel * left, 1), np.sum(rel * up, 1)], axis=1)


def _sofa_licence(manifest: BankManifest, sofa, path: Path) -> Licence:
    if manifest.licence:
        return Licence(text=manifest.licence, source="manifest")
    text = str(getattr(sofa, "GLOBAL_License", "")).strip()
    if text and text != SOFAR_DEFAULT_LICENCE:
        return Licence(text=text, source="sofa GLOBAL_License")
    return _text_licence(manifest, _texts([path.parent]), path.parent)


def _sofa_source(sofa) -> str:
    keys = ("GLOBAL_Title", "GLOBAL_DatabaseName", "GLOBAL_Origin", "GLOBAL_References")
    return "; ".join(str(v) for k in keys if (v := getattr(sofa, k, "")))


# the channel format ----------------------------------------------------------------------------


def _decide_format(
    bank_format: ChannelFormat | None,
    manifest: BankManifest,
    from_metadata: tuple[ChannelFormat, str] | None,
    data: Callable[[], Iterable[tuple[np.ndarray, int]]],
    *,
    from_sofa: bool = False,
) -> tuple[ChannelFormat, FormatSource, str]:
    if bank_format is not None:
        if bank_format not in ("ambix", "fuma", "n3d"):
            raise MeasuredBankError(f"bank format must be ambix, fuma or n3d, got {bank_format!r}")
        return bank_format, "argument", "given by the caller"
    if manifest.channel_format is not None:
        return manifest.channel_format, "manifest", "channel_format in the bank manifest"
    if from_metadata is not None:
        return from_metadata[0], "sofa_attribute" if from_sofa else "metadata_text", from_metadata[1]
    ratios = [_direct_ratio(x, fs) for x, fs in data()]
    ratio = float(np.median(ratios))
    fmt: ChannelFormat = "ambix" if ratio < RATIO_BOUNDS[0] else "fuma" if ratio <= RATIO_BOUNDS[1] else "n3d"
    return fmt, "data", f"direct-sound (X^2+Y^2+Z^2)/W^2 median {ratio:.2f} over {len(ratios)} RIRs"


def _read_wav(f: Path) -> tuple[np.ndarray, int]:
    x, fs = sf.read(str(f), dtype="float64", always_2d=True)
    return x.T, int(fs)


def _direct_ratio(x: np.ndarray, fs: int) -> float:
    """(X^2+Y^2+Z^2)/W^2 around the direct sound, whatever order the first-order channels are in.

    Band-limited to the DOA band (300-3000 Hz): broadband, a Soundfield's capsule spacing aliases
    the high frequencies into X, Y, Z, and S3A's FuMa RIRs read about 4.5 (N3D-like) instead of 2.2.
    """
    if x.shape[0] < 4:
        raise MeasuredBankError("the channel format of an order-0 bank cannot be read from its data")
    onset = first_arrival_index(x[0])
    head = x[:4, : onset + round(0.05 * fs)]
    band = sosfiltfilt(butter(4, DEFAULT_BAND_HZ, btype="band", fs=fs, output="sos"), head, axis=1)
    seg = band[:, max(0, onset - round(0.0005 * fs)) : onset + round(DOA_POST_MS * 1e-3 * fs) + 1]
    return float(np.sum(seg[1:4] ** 2) / max(np.sum(seg[0] ** 2), 1e-30))


def _bank(**fields: object) -> MeasuredBank:
    bank = MeasuredBank.model_validate(fields)
    if bank.channel_format == "fuma" and bank.order != 1:
        raise MeasuredBankError(
            f"{bank.path}: FuMa banks must be first order (4 channels); this one is order {bank.order}"
        )
    return bank


# --------------------------------------------------------------------------------------------
# room sets


def bank_room_set(
    bank: MeasuredBank, seed: int, *, val_rooms: int = 1, test_rooms: int = 1
) -> tuple[list[MeasuredRoom], list[Placement], str]:
    """Rooms, placements and the set's content hash, with WHOLE rooms held out per split when the
    bank has rooms to spare.

    With more than ``val_rooms + test_rooms`` rooms, a seeded permutation of the rooms (sorted by
    id) gives the first ``val_rooms`` to val, the next ``test_rooms`` to test and the rest to train:
    every position of a room lands in one split and no test room is heard in training
    (``MeasuredRoom.split``). A smaller bank (one SOFA file, one S3A room) cannot do that and still
    train: each room's positions are then spread over the splits (seeded; ~10 % val and test, at
    least one each where the room has three positions), and ``MeasuredRoom.split`` is None, which
    the card reports. Receiver at the origin with yaw 0; the source where the bank's label puts it.
    The hash covers the positions' relative names and content, not where the bank lies.
    """
    rooms = sorted(bank.rooms, key=lambda r: r.room_id)
    if val_rooms < 0 or test_rooms < 0:
        raise MeasuredBankError(f"cannot hold out {val_rooms} val and {test_rooms} test rooms")
    whole = len(rooms) > val_rooms + test_rooms
    rng = np.random.default_rng([seed, 1 << 30])
    perm = rng.permutation(len(rooms))
    room_split = {
        rooms[int(k)].room_id: "val" if i < val_rooms else "test" if i < val_rooms + test_rooms else "train"
        for i, k in enumerate(perm)
    } if whole else {}
    by_room: dict[str, list[MeasuredPosition]] = {}
    for q in bank.positions:
        by_room.setdefault(q.room_id, []).append(q)
    split_of: dict[tuple[str, int], str] = {}
    for room_id, qs in sorted(by_room.items()):
        for j, k in enumerate(rng.permutation(len(qs)) if not whole else range(len(qs))):
            split_of[room_id, int(k)] = room_split[room_id] if whole else _position_split(j, len(qs))
    rows: list[dict] = []
    counters: dict[tuple[str, str], int] = {}
    native = {r.room_id: r.fs for r in rooms}
    for room_id, qs in sorted(by_room.items()):
        for k, q in enumerate(qs):
            split = split_of[room_id, k]
            j = counters.get((room_id, split), 0)
            counters[room_id, split] = j + 1
            source = q.distance_m * unit_vector(q.azimuth_deg, q.elevation_deg)
            rows.append({
                "placement_id": f"{q.room_id}-{split}-{j}",
                "room_id": q.room_id,
                "split": split,
                "receiver_m": (0.0, 0.0, 0.0),
                "receiver_yaw_deg": 0.0,
                "source_m": tuple(float(v) for v in source),
                "azimuth_deg": q.azimuth_deg,
                "elevation_deg": q.elevation_deg,
                "distance_m": q.distance_m,
                "srir": MeasuredRef(
                    bank_id=bank.bank_id, file=q.file, index=q.index, channel_format=bank.channel_format,
                    order=bank.order, native_fs=native[q.room_id], sha256=q.sha256,
                ).model_dump(mode="json"),
            })
    payload = {"bank_id": bank.bank_id, "seed": seed, "val_rooms": val_rooms, "test_rooms": test_rooms,
               "placements": rows}
    blob = json.dumps(payload, sort_keys=True, separators=(",", ":")).encode()
    digest = hashlib.sha256(blob).hexdigest()[:16]
    named = [r.model_copy(update={"bank_id": bank.bank_id, "source": bank.source, "licence": bank.licence,
                                  "split": room_split.get(r.room_id), "root": bank.root})
             for r in rooms]
    return named, [Placement(**r, room_set_hash=digest) for r in rows], digest


def _position_split(j: int, n: int) -> str:
    """The split of the j-th of a room's n positions in seeded order, when rooms cannot be held
    out whole: ~10 % val, ~10 % test (one each from three positions on), the rest train."""
    held = max(1, round(0.1 * n)) if n >= 3 else 0
    return "val" if j < held else "test" if j < 2 * held else "train"


# --------------------------------------------------------------------------------------------
# rendering


@lru_cache(maxsize=2)
def _sofa_data(path: str, mtime_ns: int, size: int) -> tuple[np.ndarray, int]:
    """A SOFA bank's IRs, kept for the next placements of the same file (a chunk renders many)."""
    sofa = _read_sofa(Path(path))
    return np.asarray(sofa.Data_IR, dtype=np.float64), _sofa_fs(sofa, Path(path))


def read_srir(ref: MeasuredRef, root: str | Path) -> tuple[np.ndarray, int]:
    """The referenced SRIR as stored (channels first, the bank's format) and its rate, from the
    bank's folder ``root``, after checking that its content still hashes to what the placement was
    made from."""
    f = Path(root) / ref.file
    if not f.is_file():
        raise MeasuredBankError(f"{f}: the measured SRIR is gone")
    if ref.index is None:
        if _sha256_file(f) != ref.sha256:
            raise MeasuredBankError(f"{f}: content changed since the placement was made (sha256)")
        data, fs = sf.read(str(f), dtype="float64", always_2d=True)
        x = data.T
    else:
        st = f.stat()
        ir, fs = _sofa_data(str(f), st.st_mtime_ns, st.st_size)
        if not 0 <= ref.index < ir.shape[0]:
            raise MeasuredBankError(f"{f}: no measurement {ref.index} (holds {ir.shape[0]})")
        x = ir[ref.index]
        if _sha256_samples(x) != ref.sha256:
            raise MeasuredBankError(f"{f}[{ref.index}]: content changed since the placement was made")
    if fs != ref.native_fs:
        raise MeasuredBankError(f"{f}: {fs} Hz, but the bank was read at {ref.native_fs} Hz")
    return x, int(fs)


def to_ambix(x: np.ndarray, fmt: ChannelFormat) -> np.ndarray:
    """A bank's SRIR (channels first) as ambiX: FuMa through tasks.ambisonics.fuma_to_ambix
    ([sqrt2 W, Y, Z, X]), N3D rescaled to SN3D, ambiX unchanged."""
    if fmt == "fuma":
        if x.shape[0] != 4:
            raise MeasuredBankError(f"FuMa SRIRs must be first order (4 channels), got {x.shape[0]}")
        return fuma_to_ambix(x)
    if fmt == "n3d":
        return n3d_to_sn3d(x)
    return x


def noise_floor_cut(w: np.ndarray, fs: int) -> tuple[int, float]:
    """Where a measured decay meets its noise floor, and the decay's range above that floor (dB).

    The first step of Lundeby et al. (1995): 10 ms block levels, the noise level from the last
    tenth of the response, a line fitted from the loudest block down to 10 dB above the noise,
    cut where the line crosses the noise. Past that point a measured RIR is noise: it would bias
    the Schroeder integral (T30, EDT, DRR) and add hiss to every clip convolved with it.
    """
    b = max(1, round(NOISE_BLOCK_S * fs))
    n = w.size // b
    if n < 4:
        return w.size, 0.0
    level = 10.0 * np.log10((w[: n * b] ** 2).reshape(n, b).mean(axis=1) + 1e-30)
    noise = 10.0 * np.log10(np.mean(w[-max(b, w.size // 10) :] ** 2) + 1e-30)
    i0 = int(np.argmax(level))
    below = np.flatnonzero(level[i0:] <= noise + 10.0)
    i1 = i0 + (int(below[0]) if below.size else n - i0)
    range_db = float(level[i0] - noise)
    if i1 - i0 < 2:
        return min(w.size, i1 * b), range_db
    t = (np.arange(i0, i1) + 0.5) * b / fs
    slope, icpt = np.polyfit(t, level[i0:i1], 1)
    if slope >= 0:
        return w.size, range_db
    return min(w.size, max(i1 * b, round((noise - icpt) / slope * fs))), range_db


def render_measured(
    room: MeasuredRoom, placement: Placement, settings: RirSettings
) -> tuple[np.ndarray, RirRecord]:
    """The ambiX RIR of a measured placement at ``settings.order`` and ``settings.fs``, and its
    record measured like any other source's (T30/EDT/DRR/C50 and the direct-path DOA check).

    The measurement's latency before the direct sound is cut so that the direct sound arrives at
    distance / c, as in a simulated RIR: scene onsets then mean the same for both sources. A
    recording whose direct sound arrives more than MAX_LABEL_ERROR_DEG from its label is refused
    (the placement becomes a bank reject): its label would be untrue.
    """
    ref = placement.srir
    if ref is None:
        raise MeasuredBankError(f"placement {placement.placement_id} names no measured SRIR")
    if room.root is None:
        raise MeasuredBankError(f"room {room.room_id} does not say where its bank is (MeasuredRoom.root)")
    if ref.order < settings.order:
        raise MeasuredBankError(
            f"{ref.file}: the bank is order {ref.order}, the build asks for order {settings.order}"
        )
    raw, fs = read_srir(ref, room.root)
    rir = to_ambix(raw, ref.channel_format)[: n_channels(settings.order)]
    if fs != settings.fs:
        rir = resample(rir, fs, settings.fs, dtype=np.float64)
    onset = direct_index(rir[0])
    cut = max(0, onset - round(placement.distance_m / SPEED_OF_SOUND * settings.fs))
    end, range_db = noise_floor_cut(rir[0, cut:], settings.fs)
    rir = rir[:, cut : cut + max(end, round(MIN_KEEP_S * settings.fs))]
    p = placement
    # Too little decay above the noise for a T30 (ISO 3382-1: the fit's -35 dB plus 10 dB):
    # no reverberation time rather than one fitted to noise.
    m = measure_response(rir, settings.fs, p.azimuth_deg, p.elevation_deg, anechoic=range_db < T30_RANGE_DB,
                         decay_below_hz=settings.decay_below_hz)
    if rir.shape[0] >= 4:
        # A measured microphone is noisy at low and aliased at high frequencies: the band-limited
        # direct-sound DOA (tasks/doa.py's advice for measured RIRs), not measure_response's
        # broadband one for noise-free renders.
        est = direct_sound_doa(rir, settings.fs, pre_ms=0.5, post_ms=DOA_POST_MS, band_hz=DEFAULT_BAND_HZ)
        err = float(angular_distance_deg(est.azimuth_deg, est.elevation_deg, p.azimuth_deg, p.elevation_deg))
        m = replace(m, direct_azimuth_deg=est.azimuth_deg, direct_elevation_deg=est.elevation_deg,
                    direct_doa_error_deg=err)
    if m.direct_doa_error_deg > MAX_LABEL_ERROR_DEG:
        raise MeasuredBankError(
            f"{ref.file}: direct sound from az {m.direct_azimuth_deg:.1f}, el {m.direct_elevation_deg:.1f} "
            f"deg, {m.direct_doa_error_deg:.1f} deg from its label (az {p.azimuth_deg}, el {p.elevation_deg})"
        )
    record = RirRecord(
        placement_id=p.placement_id, room_id=p.room_id, room_set_hash=p.room_set_hash, method="measured",
        fs=settings.fs, order=settings.order, n_samples=rir.shape[1], azimuth_deg=p.azimuth_deg,
        elevation_deg=p.elevation_deg, distance_m=p.distance_m, engine_version=MEASURED_VERSION,
        measured=MeasuredDetails(bank_id=ref.bank_id, file=ref.file, index=ref.index,
                                 channel_format=ref.channel_format, native_fs=ref.native_fs,
                                 licence=room.licence.text if room.licence else "unknown",
                                 predelay_removed_s=cut / settings.fs),
        **vars(m),
    )
    return rir.astype(np.float32), record

