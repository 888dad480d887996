"""Binaural renderer: an ambiX scene (order 1..3, ACN/SN3D) decoded to two ears through an HRTF set.

Decoder: magnitude least squares (MagLS; Schoerkhuber, Zaunschirm and Hoeldrich 2018, "Binaural
rendering of Ambisonic signals via magnitude least squares", DAGA). Per frequency bin it fits SH-domain
filters B (channels x 2) so that, for every measured direction d with SH vector y(d), the decoded ear
signals y(d)^T B approximate the HRTF H(d):

- below f_c = N c / (2 pi r_head) (625 Hz at order 1, 1.9 kHz at order 3 for r_head = 8.75 cm), where
  an order-N sound field still describes the field around a head, B is the complex least-squares fit,
  so phase (hence ITD, the dominant low-frequency cue) is kept;
- above f_c the order-N truncation cannot reproduce the HRTF's phase, and a complex fit spends the
  few SH coefficients on it, losing level and smearing ILD (the classic high-frequency roll-off and
  blur of plain LS / virtual-loudspeaker decodes at low order). MagLS fits the magnitude only,
  carrying each direction's phase over from the previous bin's decode (the paper's one-iteration
  solution), which keeps the energy and ILDs that dominate above ~1.5 kHz. Before the fit the HRTFs
  are advanced by the set's common delay (its median arrival at the head's centre) and the filters
  delayed by it afterwards: the carried phase is then that of a centred arrival, so the magnitude-fit
  band stays causal and in time with the low band (without it the high band sits at t = 0, wraps
  around and loses 3-6 dB).

Known limit, inherent to any linear order-1 decode: the ITD is right only below f_c, so over the
0-1.5 kHz ITD band an order-1 render at +-90 deg gives ~0.2 ms against KEMAR's 0.7 ms; at order 3
(f_c 1.9 kHz) it is within 20 us. ILD and energy hold at every order (tests/test_binaural.py).

Why MagLS over a virtual-loudspeaker decode: it is the usual low-order binaural decoder (IEM's
BinauralDecoder and SPARTA's ambiBIN offer it), it needs no loudspeaker layout or regular HRTF grid,
and the paper shows it keeps the high-frequency level and ILDs that LS and virtual-loudspeaker
decodes lose at orders 1..3.

The fit is plain least squares over the HRTF's measured directions (with a small Tikhonov term):
the measurement grids we use are near-uniform in solid angle (KEMAR's ring sizes follow cos(el)), so
unweighted LS is close to a sphere quadrature. Grids with a missing cap (KEMAR has nothing below
-40 deg) leave the decode there an extrapolation; the regularisation keeps it bounded.

Normalisation: the fit uses the same SN3D harmonics (tasks.ambisonics.real_sh_sn3d) that encode
the scene, so the filters decode ambiX directly; no N3D conversion is needed or wanted.

HRTF input: SOFA SimpleFreeFieldHRIR (read with ``sofar``). SOFA's spherical azimuth is
counter-clockwise from +x, i.e. +90 deg = left, which is already the project's convention;
receiver 0 is the left ear unless ReceiverPosition says otherwise. The default set is MIT KEMAR
(Gardner and Martin 1994, normal pinna) as shipped inside the PyPI package ``slab``: there it is a
bz2-compressed pickle of slab's HRTF object, not a SOFA file, so it is converted once to a SOFA file
in a cache directory (keyed by the sha256 of slab's file) and read back like any other SOFA; slab
itself is never imported (its import needs PortAudio).

Heavy work (reading the HRTF, designing filters) happens on first use; filters are cached per
(HRTF sha256, order, fs).
"""

from __future__ import annotations

import bz2
import functools
import hashlib
import importlib.util
import io
import math
import os
import pickle
import tempfile
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from scipy.fft import next_fast_len

from tasks.ambisonics import order_of, real_sh_sn3d, vector_to_angles, wrap_azimuth
from tasks.errors import LayoutError, SpatialAudioCapsError

HEAD_RADIUS_M = 0.0875
SPEED_OF_SOUND = 343.0
MIN_ORDER, MAX_ORDER = 1, 3
FILTER_SECONDS = 512 / 48000
"""Decoder FIR length (512 taps at 48 kHz): KEMAR's HRIRs are 512 taps at 44.1 kHz and their energy
is inside the first ~5 ms, so this keeps the HRIR and the MagLS phase continuation's spread."""
REGULARISATION = 1e-3
"""Tikhonov weight relative to the largest eigenvalue of the SH Gram matrix."""
KEMAR_NAME = "mit-kemar-normal-pinna"
KEMAR_RESOURCE = ("data", "mit_kemar_normal_pinna.bz2")
ILD_BAND_HZ = (1000.0, 4000.0)
ITD_LOWPASS_HZ = 1500.0
ITD_MAX_S = 1e-3


class HrtfError(SpatialAudioCapsError):
    """An HRTF set that cannot be used: unreadable file, wrong convention, no source positions,
    not two ears, or a missing default set."""


class InterauralCueError(SpatialAudioCapsError):
    """Ear signals whose interaural cues are undefined (wrong shape, silent in the band)."""


@dataclass(frozen=True, eq=False)
class HrtfSet:
    """HRIRs in the project's frame: azimuth +90 = left, elevation +90 = up; ear 0 = left."""

    name: str
    sha256: str
    """sha256 of the SOFA file's bytes: the identity recorded with every binaural sample."""
    fs: int
    azimuth_deg: np.ndarray
    """(D,) in (-180, 180]."""
    elevation_deg: np.ndarray
    """(D,)"""
    hrirs: np.ndarray
    """(D, 2, L) float64, left ear first."""


def load_sofa_hrtf(path: str | Path, name: str | None = None) -> HrtfSet:
    """Read a SimpleFreeFieldHRIR SOFA file into an HrtfSet (typed errors for what we cannot use)."""
    import sofar  # a 0.7 s import (netCDF4): only when an HRTF is actually read

    path = Path(path)
    try:
        raw = path.read_bytes()
        sofa = sofar.read_sofa(str(path), verify=False, verbose=False)
    except (OSError, ValueError, KeyError, AttributeError, TypeError) as exc:
        raise HrtfError(f"cannot read SOFA file {path}: {exc}") from exc
    convention = getattr(sofa, "GLOBAL_SOFAConventions", None)
    if convention != "SimpleFreeFieldHRIR":
        raise HrtfError(f"{path}: SOFA convention {convention!r}, expected SimpleFreeFieldHRIR")
    if not hasattr(sofa, "SourcePosition"):
        raise HrtfError(f"{path}: the SOFA file has no SourcePosition (HRIRs without directions)")
    ir = np.asarray(getattr(sofa, "Data_IR", np.empty(0)), dtype=np.float64)
    if ir.ndim != 3:
        raise HrtfError(f"{path}: Data.IR must be (measurements, receivers, samples), got {ir.shape}")
    if ir.shape[1] != 2:
        raise HrtfError(f"{path}: an HRTF needs 2 receivers (ears), the file has {ir.shape[1]}")
    if not np.all(np.isfinite(ir)):
        raise HrtfError(f"{path}: Data.IR has missing or non-finite samples")
    fs = float(np.asarray(getattr(sofa, "Data_SamplingRate", np.nan)).ravel()[0])
    if not (np.isfinite(fs) and fs > 0 and fs == round(fs)):
        raise HrtfError(f"{path}: Data.SamplingRate must be a positive integer in Hz, got {fs}")
    delay = np.asarray(getattr(sofa, "Data_Delay", 0.0), dtype=np.float64)
    if np.any(delay != 0):
        raise HrtfError(f"{path}: non-zero Data.Delay is not supported (bake the delays into Data.IR)")
    _check_listener_frame(sofa, path)
    az, el = _source_angles(sofa, ir.shape[0], path)
    if _right_ear_first(sofa):
        ir = ir[:, ::-1, :]
    return HrtfSet(
        name=name or path.stem,
        sha256=hashlib.sha256(raw).hexdigest(),
        fs=int(fs),
        azimuth_deg=az,
        elevation_deg=el,
        hrirs=np.ascontiguousarray(ir),
    )


def _source_angles(sofa: object, n_measurements: int, path: Path) -> tuple[np.ndarray, np.ndarray]:
    """Source directions from SourcePosition (spherical degrees or cartesian) in the project frame."""
    pos = np.ma.filled(np.ma.asarray(sofa.SourcePosition, dtype=np.float64), np.nan)
    pos = np.atleast_2d(pos)
    if pos.shape != (n_measurements, 3) or not np.all(np.isfinite(pos)):
        raise HrtfError(
            f"{path}: SourcePosition must give one finite (3,) position per measurement "
            f"({n_measurements}), got shape {pos.shape}"
        )
    kind = str(getattr(sofa, "SourcePosition_Type", "")).lower()
    units = str(getattr(sofa, "SourcePosition_Units", "")).lower().replace(" ", "")
    if kind == "cartesian":
        if np.any(np.linalg.norm(pos, axis=1) == 0):
            raise HrtfError(f"{path}: a cartesian SourcePosition at the origin has no direction")
        az, el = vector_to_angles(pos.T)
    elif kind == "spherical" and units.startswith("degree,degree"):
        az, el = wrap_azimuth(pos[:, 0]), pos[:, 1]
    else:
        raise HrtfError(f"{path}: unsupported SourcePosition type/units {kind!r} / {units!r}")
    return np.asarray(az, dtype=np.float64), np.asarray(el, dtype=np.float64)


def _check_listener_frame(sofa: object, path: Path) -> None:
    """Source positions are in the listener's frame only if the listener looks along +x, up +z."""
    for attr, expected in (("ListenerView", (1.0, 0.0, 0.0)), ("ListenerUp", (0.0, 0.0, 1.0))):
        if not hasattr(sofa, attr):
            continue
        if str(getattr(sofa, f"{attr}_Type", "cartesian")).lower() != "cartesian":
            vec = np.asarray(getattr(sofa, attr), dtype=np.float64).ravel()[:2]
            ok = np.allclose(vec, (0.0, 0.0) if attr == "ListenerView" else (0.0, 90.0))
        else:
            vec = np.asarray(getattr(sofa, attr), dtype=np.float64).ravel()[:3]
            ok = vec.shape == (3,) and np.allclose(vec / (np.linalg.norm(vec) or 1.0), expected)
        if not ok:
            raise HrtfError(f"{path}: {attr} {vec.tolist()} is not {expected}; rotated listeners unsupported")


def _right_ear_first(sofa: object) -> bool:
    """True when ReceiverPosition puts receiver 0 on the right (negative y); SOFA's habit is left first."""
    rec = np.asarray(getattr(sofa, "ReceiverPosition", np.zeros((2, 3))), dtype=np.float64)
    cartesian = str(getattr(sofa, "ReceiverPosition_Type", "cartesian")).lower() == "cartesian"
    if not cartesian or rec.shape[:2] != (2, 3):
        return False
    y = rec[:, 1, 0] if rec.ndim == 3 else rec[:, 1]
    return bool(y[0] < y[1])


def kemar_sofa_path(cache_dir: str | Path | None = None) -> Path:
    """The MIT KEMAR set shipped in ``slab``, converted once to a SOFA file in ``cache_dir``.

    The file name carries the sha256 of slab's compressed file, so a new slab release gets a new
    file; the write is atomic (temp file + rename) so concurrent workers never read a partial file.
    """
    spec = importlib.util.find_spec("slab")
    if spec is None or not spec.submodule_search_locations:
        raise HrtfError("the default HRTF (MIT KEMAR) comes from the PyPI package 'slab': not installed")
    source = Path(next(iter(spec.submodule_search_locations))).joinpath(*KEMAR_RESOURCE)
    try:
        packed = source.read_bytes()
    except OSError as exc:
        raise HrtfError(f"slab's KEMAR data is missing: {exc}") from exc
    digest = hashlib.sha256(packed).hexdigest()
    directory = Path(cache_dir) if cache_dir is not None else _default_cache_dir()
    target = directory / f"{KEMAR_NAME}-{digest[:16]}.sofa"
    if target.exists():
        return target
    directory.mkdir(parents=True, exist_ok=True)
    fs, az, el, hrirs = _unpickle_slab_hrtf(bz2.decompress(packed))
    fd, tmp = tempfile.mkstemp(suffix=".sofa", dir=directory)
    os.close(fd)
    try:
        title = f"MIT KEMAR normal pinna (slab, sha256 {digest})"
        _write_hrtf_sofa(Path(tmp), fs, az, el, hrirs, title=title)
        os.replace(tmp, target)
    finally:
        Path(tmp).unlink(missing_ok=True)
    return target


def _default_cache_dir() -> Path:
    base = os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache"
    return Path(base) / "spatial-audiocaps" / "hrtf"


class _Attributes:
    """Stand-in for slab's HRTF and Filter classes: only their pickled attributes are needed."""

    def __setstate__(self, state: dict) -> None:
        self.__dict__.update(state)


class _SlabUnpickler(pickle.Unpickler):
    """Loads slab's KEMAR pickle without slab, and nothing but slab's two classes and numpy arrays."""

    _STANDINS = frozenset({("slab.hrtf", "HRTF"), ("slab.filter", "Filter")})
    _NUMPY = frozenset({"_reconstruct", "ndarray", "dtype", "scalar"})

    def find_class(self, module: str, name: str) -> object:
        if (module, name) in self._STANDINS:
            return _Attributes
        if module.split(".")[0] == "numpy" and name in self._NUMPY:
            return super().find_class(module, name)
        raise HrtfError(f"slab's KEMAR pickle refers to {module}.{name}, which is not allowed")


def _unpickle_slab_hrtf(payload: bytes) -> tuple[int, np.ndarray, np.ndarray, np.ndarray]:
    """(fs, azimuth_deg, elevation_deg, hrirs (D, 2, L)) of slab's pickled HRTF object.

    slab keeps ``sources`` as (azimuth 0..360 counter-clockwise, elevation, distance) rows and each
    source's FIR as a (taps, 2) Filter, channel 0 the left ear.
    """
    try:
        hrtf = _SlabUnpickler(io.BytesIO(payload)).load()
        sources = np.asarray(hrtf.sources, dtype=np.float64)
        hrirs = np.stack([np.asarray(f.data, dtype=np.float64).T for f in hrtf.data])
        fs = round(float(hrtf.samplerate))
    except (pickle.UnpicklingError, AttributeError, TypeError, ValueError, EOFError) as exc:
        raise HrtfError(f"slab's KEMAR data has an unexpected layout: {exc}") from exc
    if sources.shape != (hrirs.shape[0], 3) or hrirs.shape[1] != 2:
        raise HrtfError(f"slab's KEMAR data: sources {sources.shape} do not match HRIRs {hrirs.shape}")
    return fs, wrap_azimuth(sources[:, 0]), sources[:, 1], hrirs


def _write_hrtf_sofa(
    path: Path, fs: int, az: np.ndarray, el: np.ndarray, hrirs: np.ndarray, title: str
) -> None:
    """A SimpleFreeFieldHRIR file with fixed dates, so the same data always gives the same bytes
    (and the same sha256 identity) with the same netCDF library."""
    import sofar

    sofa = sofar.Sofa("SimpleFreeFieldHRIR")
    sofa.Data_IR = hrirs
    sofa.Data_SamplingRate = float(fs)
    sofa.SourcePosition = np.column_stack([az, el, np.ones_like(az)])
    sofa.SourcePosition_Type = "spherical"
    sofa.SourcePosition_Units = "degree, degree, metre"
    sofa.GLOBAL_Title = title
    sofa.GLOBAL_DateCreated = sofa.GLOBAL_DateModified = "1994-07-01 00:00:00"
    sofar.write_sofa(str(path), sofa)


def resample_hrtf(hrtf: HrtfSet, fs: int) -> HrtfSet:
    """The same set at ``fs`` (polyphase resampling of every HRIR); the identity is unchanged."""
    # Here, not at the top: audio_prep imports the renderer registry, which imports this module.
    from tasks.audio_prep import resample

    if fs == hrtf.fs:
        return hrtf
    hrirs = resample(hrtf.hrirs, hrtf.fs, int(fs), dtype=np.float64)
    return HrtfSet(hrtf.name, hrtf.sha256, int(fs), hrtf.azimuth_deg, hrtf.elevation_deg, hrirs)


def magls_cutoff_hz(order: int) -> float:
    """f_c = N c / (2 pi r_head): where an order-N field stops describing the field around a head."""
    return order * SPEED_OF_SOUND / (2.0 * math.pi * HEAD_RADIUS_M)


def bulk_delay_s(hrtf: HrtfSet) -> float:
    """The set's common delay: the median over directions of the mean of both ears' peak times,
    i.e. roughly when a sound reaches the centre of the head (the measurement distance's travel)."""
    peaks = np.argmax(np.abs(hrtf.hrirs), axis=-1)  # (D, 2)
    return float(np.median(peaks.mean(axis=1))) / hrtf.fs


def magls_filters(hrtf: HrtfSet, order: int) -> np.ndarray:
    """MagLS decoder FIRs at ``hrtf.fs``: (ambiX channels, 2 ears, taps), ACN/SN3D in, left first.

    Designed on a grid twice the FIR length, then windowed (half-Hann fade over the last eighth)
    and truncated, so the phase-continued bins' spread does not wrap around.
    """
    if not MIN_ORDER <= order <= MAX_ORDER:
        raise LayoutError(f"binaural decoding needs ambisonic order {MIN_ORDER}..{MAX_ORDER}, got {order}")
    taps = 2 * round(FILTER_SECONDS * hrtf.fs / 2)
    nfft = 2 * taps
    spectra = np.fft.rfft(hrtf.hrirs, n=nfft, axis=-1)  # (D, 2, K)
    sh = real_sh_sn3d(order, np.radians(hrtf.azimuth_deg), np.radians(hrtf.elevation_deg)).T  # (D, Q)
    gram = sh.T @ sh
    fit = np.linalg.solve(gram + REGULARISATION * np.linalg.eigvalsh(gram)[-1] * np.eye(len(gram)), sh.T)
    freqs = np.fft.rfftfreq(nfft, 1.0 / hrtf.fs)
    # Time-align by the set's common delay: the phase carried above f_c is then that of an arrival at
    # the head's centre, not of t = 0, so the high band stays causal and in time with the low band.
    align = np.exp(2j * np.pi * freqs * bulk_delay_s(hrtf))
    spectra = spectra * align
    cutoff = magls_cutoff_hz(order)
    coeffs = np.empty((len(freqs), sh.shape[1], 2), dtype=np.complex128)
    for k, f in enumerate(freqs):
        target = spectra[:, :, k]
        if f >= cutoff and k > 0:
            target = np.abs(target) * np.exp(1j * np.angle(sh @ coeffs[k - 1]))
        coeffs[k] = fit @ target
    coeffs /= align[:, None, None]
    firs = np.fft.irfft(np.moveaxis(coeffs, 0, -1), n=nfft, axis=-1)[..., :taps]
    fade = taps // 8
    firs[..., taps - fade :] *= np.hanning(2 * fade)[fade:]
    return firs


_FILTERS: dict[tuple[str, int, int], np.ndarray] = {}
"""Decoder FIRs per (HRTF sha256, order, fs), shared by every Binaural of a process: a design costs
far more than a render, and a build uses one HRTF, one order and one rate."""


def cached_filters(hrtf: HrtfSet, order: int, fs: int) -> np.ndarray:
    """``magls_filters`` of ``hrtf`` resampled to ``fs``, designed once per (sha256, order, fs)."""
    key = (hrtf.sha256, order, int(fs))
    if key not in _FILTERS:
        _FILTERS[key] = magls_filters(resample_hrtf(hrtf, int(fs)), order)
    return _FILTERS[key]


def decode_binaural(scene: np.ndarray, filters: np.ndarray) -> np.ndarray:
    """(Q, N) ambiX scene through (Q, 2, taps) decoder FIRs -> (2, N) float32, the tail cut at N
    (as the ambiX output keeps the scene's length)."""
    scene = np.asarray(scene, dtype=np.float64)
    n = scene.shape[1]
    nfft = next_fast_len(n + filters.shape[-1] - 1, real=True)
    spec = np.fft.rfft(scene, n=nfft, axis=-1)
    ears = np.einsum("qk,qek->ek", spec, np.fft.rfft(filters, n=nfft, axis=-1))
    return np.fft.irfft(ears, n=nfft, axis=-1)[:, :n].astype(np.float32)


def interaural_cues(ears: np.ndarray, fs: int) -> tuple[float, float]:
    """(ILD dB, ITD s) of a (2, N) left-first ear pair.

    ILD: energy ratio left/right over 1-4 kHz (positive = left louder), where the head shadow is
    large and the pinna notches of 5+ kHz do not dominate. ITD: lag of the interaural
    cross-correlation peak of both ears low-passed below 1.5 kHz (where ITD is the cue and
    the cross-correlation is unambiguous), searched within +-1 ms and refined by a parabola;
    positive = left leads (the source is on the left).
    """
    from scipy import signal

    ears = np.asarray(ears, dtype=np.float64)
    if ears.ndim != 2 or ears.shape[0] != 2 or ears.shape[1] < 64:
        raise InterauralCueError(f"interaural cues need (2, N >= 64) ear signals, got {ears.shape}")
    spec = np.abs(np.fft.rfft(ears, axis=-1)) ** 2
    freqs = np.fft.rfftfreq(ears.shape[1], 1.0 / fs)
    band = (freqs >= ILD_BAND_HZ[0]) & (freqs <= ILD_BAND_HZ[1])
    energy = spec[:, band].sum(axis=1)
    if not band.any() or np.any(energy <= 0):
        raise InterauralCueError(f"an ear is silent over {ILD_BAND_HZ} Hz: energies {energy.tolist()}")
    ild = 10.0 * math.log10(energy[0] / energy[1])

    sos = signal.butter(4, ITD_LOWPASS_HZ, fs=fs, output="sos")
    left, right = signal.sosfiltfilt(sos, ears, axis=-1)
    xcorr = signal.correlate(right, left, mode="full", method="fft")
    lags = signal.correlation_lags(right.size, left.size, mode="full")
    window = np.abs(lags) <= ITD_MAX_S * fs
    idx = np.flatnonzero(window)[np.argmax(xcorr[window])]
    shift = 0.0
    if 0 < idx < xcorr.size - 1:
        a, b, c = xcorr[idx - 1 : idx + 2]
        denom = a - 2 * b + c
        shift = 0.5 * (a - c) / denom if denom < 0 else 0.0
    return ild, float((lags[idx] + shift) / fs)


class Binaural:
    """Two ears, left first, from an ambiX scene of order 1..3 through an HRTF set (MagLS decode).

    Levelled on both ears: one gain for both keeps the ILD. The output is as long as the scene
    (the filters' tail is cut, as the ambiX format keeps N).
    """

    name = "binaural"
    spatial = True
    level_channels = (0, 1)

    def __init__(self, sofa_path: str | Path | None = None) -> None:
        """``sofa_path``: a SimpleFreeFieldHRIR file; None = MIT KEMAR from slab. Nothing is read yet."""
        self._sofa_path = sofa_path

    @functools.cached_property
    def hrtf(self) -> HrtfSet:
        """The HRTF set, read on first use (a render or the identity)."""
        if self._sofa_path is None:
            return load_sofa_hrtf(kemar_sofa_path(), name=KEMAR_NAME)
        return load_sofa_hrtf(self._sofa_path)

    @property
    def identity(self) -> str:
        """Decoder and HRTF set (name and sha256 prefix of its SOFA bytes). The scene's order, which
        also shapes the output, is not known here: it is the build's ambisonic order (its RIR bank),
        recorded with the build, so every sample of one build shares it."""
        hrtf = self.hrtf
        return f"magls/{hrtf.name}/{hrtf.sha256[:12]}"

    def render(self, scene: np.ndarray, fs: int) -> np.ndarray:
        channels = int(scene.shape[0])
        order = order_of(channels, "binaural decoding")
        if not MIN_ORDER <= order <= MAX_ORDER:
            raise LayoutError(
                f"binaural decoding needs an ambiX scene of order {MIN_ORDER}..{MAX_ORDER} "
                f"((N+1)^2 = 4, 9 or 16 channels), got {channels} channels"
            )
        filters = cached_filters(self.hrtf, order, fs)
        return decode_binaural(scene, filters)

    def ambisonic_order(self, channels: int) -> int | None:
        if channels != 2:
            raise LayoutError(f"binaural audio has 2 channels (left, right), got {channels}")
        return None
