"""Measured source directivities read from SOFA files, per octave band of the shoebox engine.

DIRPAT (and other loudspeaker / talker directivity sets) distribute a source's radiation as a
SOFA file: "FreeFieldDirectivityTF" (complex transfer functions ``Data.Real``/``Data.Imag``
(M, 1, N) at frequencies ``N``) or "GeneralFIR" (impulse responses ``Data.IR`` (M, 1, N) at
``Data.SamplingRate``), one measurement per direction. The directions are read from
``ReceiverPosition`` when it holds M points (the microphone array around the source), else from
``SourcePosition`` (M rows: the source turned on a turntable), spherical in degrees or cartesian,
in the source's own frame (x = main axis, y = left, z = up; the SOFA and ambiX conventions agree).

The engine weights image sources per octave band, so each measurement is reduced to one
magnitude per band of ``OCTAVE_BANDS_HZ``: the root of the mean power over the frequency bins in
[fc/sqrt 2, fc sqrt 2), normalised to 1 on the main axis (the measurement nearest +x) per band,
so the directivity changes the balance of directions, never the on-axis level or spectrum (the
engine's sources are flat; a loudspeaker's on-axis response belongs to the dry signal). Phase is
dropped: the engine lays down each image as a per-band delayed impulse.

A file enters placements and RIR-bank keys as ``sofa:<stem>:<first 12 hex of its sha256>``
(``MeasuredDirectivity.label``), so a changed file changes the key and a placement names exactly
the data it was drawn with.
"""

from __future__ import annotations

import functools
import hashlib
import math
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import sofar
from scipy.spatial import cKDTree

from schemas.rooms import OCTAVE_BANDS_HZ
from tasks.ambisonics import unit_vector
from tasks.errors import InvalidRoomError

CONVENTIONS = ("FreeFieldDirectivityTF", "GeneralFIR")
LABEL_PREFIX = "sofa:"
_HASH_HEX = 12


class DirectivityFileError(InvalidRoomError):
    """A SOFA directivity file that cannot be used (unreadable, wrong convention, missing or
    mis-shaped fields, a band with no data) or that no longer matches a placement's hash."""


@dataclass(frozen=True, eq=False)
class MeasuredDirectivity:
    """A measured source pattern: ``gains`` (n_bands, M) at unit ``directions`` (3, M) in the
    source's frame, 1 on the main axis per band. Equal and hashed by content (``sha256``), so it
    can key the engine's memoised calibration."""

    name: str
    sha256: str
    directions: np.ndarray = field(repr=False)
    gains: np.ndarray = field(repr=False)

    @property
    def label(self) -> str:
        """What a placement records: ``sofa:<stem>:<sha256 prefix>``."""
        return f"{LABEL_PREFIX}{self.name}:{self.sha256[:_HASH_HEX]}"

    def __eq__(self, other: object) -> bool:
        return isinstance(other, MeasuredDirectivity) and other.sha256 == self.sha256

    def __hash__(self) -> int:
        return hash(self.sha256)

    @functools.cached_property
    def _tree(self) -> cKDTree:
        return cKDTree(self.directions.T)

    def gain(self, local_directions: np.ndarray) -> np.ndarray:
        """Magnitude gains (n_bands, n) for directions (3, n) in the source's frame (any length),
        from the nearest measured direction: DIRPAT grids are 5-10 degrees apart, finer than any
        change a band's pattern makes, so interpolating would buy nothing measurable."""
        d = np.asarray(local_directions, dtype=np.float64).reshape(3, -1)
        d = d / np.linalg.norm(d, axis=0)
        _, nearest = self._tree.query(d.T)
        return self.gains[:, nearest]


def _directions(sofa: sofar.Sofa, m: int, path: Path) -> np.ndarray:
    """Unit vectors (3, M) of the measurements, from ReceiverPosition when it has M points, else
    SourcePosition."""
    for name in ("ReceiverPosition", "SourcePosition"):
        pos = np.asarray(getattr(sofa, name, np.zeros((0, 3))), dtype=np.float64)
        if pos.ndim == 3 and pos.shape[:2] == (1, 3):  # (R=1, C=3, M)
            pos = pos[0].T
        if pos.ndim != 2 or pos.shape != (m, 3):
            continue
        kind = str(getattr(sofa, f"{name}_Type", "")).lower()
        if kind == "spherical":
            xyz = unit_vector(pos[:, 0], pos[:, 1])
        elif kind == "cartesian":
            xyz = pos.T
        else:
            raise DirectivityFileError(f"{path}: {name}_Type {kind!r} is neither spherical nor cartesian")
        norm = np.linalg.norm(xyz, axis=0)
        if not np.all(np.isfinite(xyz)) or np.any(norm == 0):
            raise DirectivityFileError(f"{path}: {name} has a direction that is not finite or is zero")
        return xyz / norm
    raise DirectivityFileError(f"{path}: neither ReceiverPosition nor SourcePosition holds the {m} "
                               "measurement directions")


def _spectra(sofa: sofar.Sofa, path: Path) -> tuple[np.ndarray, np.ndarray]:
    """Power spectra (M, n_freqs) and their frequencies in Hz, from either convention."""
    convention = str(sofa.GLOBAL_SOFAConventions)
    if convention not in CONVENTIONS:
        raise DirectivityFileError(f"{path}: SOFA convention {convention!r}; a directivity must be one of "
                                   f"{list(CONVENTIONS)}")
    names = ("Data_Real", "Data_Imag", "N") if convention == "FreeFieldDirectivityTF" else ("Data_IR",)
    missing = [n for n in names if np.asarray(getattr(sofa, n, 0)).size <= 1]
    if missing:
        raise DirectivityFileError(f"{path}: {convention} without data in {missing}")
    if convention == "FreeFieldDirectivityTF":
        re, im = np.asarray(sofa.Data_Real, np.float64), np.asarray(sofa.Data_Imag, np.float64)
        freqs = np.asarray(sofa.N, np.float64).reshape(-1)
        if re.ndim != 3 or re.shape != im.shape or re.shape[2] != freqs.size:
            raise DirectivityFileError(f"{path}: Data.Real {re.shape} / Data.Imag {im.shape} do not match "
                                       f"(M, R, N={freqs.size})")
        data = re + 1j * im
    else:
        ir = np.asarray(sofa.Data_IR, np.float64)
        fs = float(np.asarray(sofa.Data_SamplingRate).reshape(-1)[0])
        if ir.ndim != 3 or not fs > 0:
            raise DirectivityFileError(f"{path}: Data.IR {ir.shape} at {fs} Hz is not (M, R, N) at a rate")
        # Zero-padded to bins of 20 Hz or finer: a short IR's spectrum is smooth, and the 125 Hz
        # octave (88-177 Hz) would otherwise hold no bin of a 256-tap response at 48 kHz.
        n = max(ir.shape[2], 1 << math.ceil(math.log2(fs / 20.0)))
        data, freqs = np.fft.rfft(ir, n, axis=2), np.fft.rfftfreq(n, 1.0 / fs)
    if data.shape[1] != 1:
        raise DirectivityFileError(f"{path}: {data.shape[1]} receivers per measurement; one is expected")
    power = np.abs(data[:, 0, :]) ** 2
    if not np.all(np.isfinite(power)):
        raise DirectivityFileError(f"{path}: the data hold values that are not finite")
    return power, freqs


def band_gains(power: np.ndarray, freqs: np.ndarray, directions: np.ndarray, where: str) -> np.ndarray:
    """(n_bands, M) root-mean power per octave band, 1 at the measurement nearest the main axis."""
    gains = []
    for fc in OCTAVE_BANDS_HZ:
        in_band = (freqs >= fc / math.sqrt(2.0)) & (freqs < fc * math.sqrt(2.0))
        if not in_band.any():
            raise DirectivityFileError(f"{where}: no frequency in the {fc:g} Hz octave band "
                                       f"(data span {freqs.min():g}-{freqs.max():g} Hz)")
        gains.append(np.sqrt(power[:, in_band].mean(axis=1)))
    g = np.stack(gains)
    front = int(np.argmax(directions[0]))
    if np.any(g[:, front] <= 0):
        raise DirectivityFileError(f"{where}: no energy on the main axis in some band; cannot normalise")
    return g / g[:, front:front + 1]


@functools.lru_cache(maxsize=32)
def _parse(path: str, sha256: str) -> MeasuredDirectivity:
    """The parsed file, memoised by content (a bank renders many placements with one file)."""
    p = Path(path)
    try:
        sofa = sofar.read_sofa(str(p), verify=False, verbose=False)
    except (OSError, ValueError, KeyError) as exc:
        raise DirectivityFileError(f"{p}: not a readable SOFA file ({exc})") from None
    power, freqs = _spectra(sofa, p)
    if power.shape[0] < 2:
        raise DirectivityFileError(f"{p}: {power.shape[0]} measurement(s); a directivity needs directions")
    directions = _directions(sofa, power.shape[0], p)
    gains = band_gains(power, freqs, directions, str(p))
    directions.setflags(write=False)
    gains.setflags(write=False)
    return MeasuredDirectivity(name=p.stem, sha256=sha256, directions=directions, gains=gains)


def load_directivity(path: str | Path) -> MeasuredDirectivity:
    """Read and reduce a SOFA directivity file; DirectivityFileError names what is wrong."""
    p = Path(path)
    try:
        digest = hashlib.sha256(p.read_bytes()).hexdigest()
    except OSError as exc:
        raise DirectivityFileError(f"{p}: cannot read the directivity file ({exc.strerror})") from None
    if ":" in p.stem:
        raise DirectivityFileError(f"{p}: a directivity file's name may not contain ':' (it enters labels)")
    return _parse(str(p), digest)


def resolve_directivity(label: str, path: str | Path) -> MeasuredDirectivity:
    """The file a placement's ``source_pattern`` label names, refused when its content changed
    since the placement was drawn (its key would no longer say what is rendered)."""
    measured = load_directivity(path)
    if measured.label != label:
        raise DirectivityFileError(f"{path}: placement asks for {label!r}, the file is now "
                                   f"{measured.label!r}; draw the room set again")
    return measured
