"""benchmarks/t30_bands.py's reading of a broadband T30 label band by band, on responses of known decay."""

from __future__ import annotations

import importlib.util
from pathlib import Path

import numpy as np
import pytest
from scipy.signal import butter, sosfiltfilt

from tasks.room_acoustics import t30

REPO = Path(__file__).resolve().parents[1]
FS = 48000


def _bench():
    spec = importlib.util.spec_from_file_location("t30_bands_bench", REPO / "benchmarks" / "t30_bands.py")
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


def _decay(t30_s: float, seed: int, n_s: float = 2.5) -> np.ndarray:
    """White noise decaying by 60 dB in t30_s, after a unit impulse."""
    t = np.arange(round(n_s * FS)) / FS
    x = np.random.default_rng(seed).standard_normal(t.size) * 10 ** (-3.0 * t / t30_s)
    x[0] = 1.0
    return x


def test_a_decay_that_is_the_same_in_every_band_reads_the_same_in_every_band():
    w = _decay(1.0, 0)
    view = _bench().band_view(w, FS, t30(w, FS))
    for key in ("t30_below_4000_over_label", "t30_below_8000_over_label", "t30_500_over_label",
                "t30_1000_over_label", "t30_4000_over_label"):
        assert view[key] == pytest.approx(1.0, abs=0.08), key
    assert view["edt_over_t30"] == pytest.approx(1.0, abs=0.15)
    # white noise: each octave holds about twice the energy of the one below it
    assert view["energy_8000_db"] - view["energy_4000_db"] == pytest.approx(3.0, abs=0.5)


def test_fast_high_bands_make_the_broadband_label_shorter_than_what_lies_below_them():
    """Most of the energy above 5 kHz dying in 0.4 s, the rest (below 3 kHz) in 1.2 s: the broadband
    label falls between, the curve bends (EDT well under T30), and the response below 4 kHz decays at
    the slow rate, so its T30 exceeds the label: the simulated builds' signature in issue 15."""
    hp = butter(8, 5000, btype="high", fs=FS, output="sos")
    lp = butter(8, 3000, fs=FS, output="sos")
    w = sosfiltfilt(lp, _decay(1.2, 1)) + 3.0 * sosfiltfilt(hp, _decay(0.4, 2))
    label = t30(w, FS)
    view = _bench().band_view(w, FS, label)
    assert 0.5 < label < 1.0
    assert view["t30_below_4000_over_label"] * label == pytest.approx(1.2, rel=0.05)
    assert view["t30_below_4000_over_label"] > 1.25
    assert view["t30_8000_over_label"] * label == pytest.approx(0.4, rel=0.1)
    assert view["edt_over_t30"] < 0.7
