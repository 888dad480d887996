"""Turn a spatial sample's late field by its own random rotation (schemas.audio.TailTurn says why).

A RIR h (C, L) is cut at ``onset + after_s`` by a raised-cosine window w (0 before, 1 after): h =
h (1 - w) + h w. Convolution is linear and a rotation mixes channels only, so the sample convolved
with the turned RIR is clip * (h (1 - w)) + D (clip * (h w)) with D the rotation's SH matrix
(tasks.ambisonics.sh_rotation). A placement's two parts are transformed once (``SplitSpectrum``) and
each sample mixes its own rotation into the late part's spectra, so a shard still computes one
RIR's spectrum per placement, not one per sample.

Each rotation is uniform over all rotations (Shoemake's quaternion from three uniforms), drawn from
(build seed, sample key) with the plan's stable draw, so a rebuild gives the same bytes.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
from scipy.spatial.transform import Rotation

from schemas.audio import TailTurn
from tasks.ambisonics import order_of, sh_rotation
from tasks.audio_prep import RirSpectrum
from tasks.plan import stable_unit

ONSET_BELOW_PEAK = 0.1
"""The direct sound's onset: the first sample of |W| at least this share of its peak (-20 dB). Nothing
arrives before the direct sound, and a reflection louder than it (a source turned away) comes a few ms
later, well inside ``after_s``."""


def draw_turn(cfg: TailTurn | None, seed: int, key: str) -> tuple[float, float, float, float] | None:
    """The sample's rotation as a unit quaternion (x, y, z, w), uniform over SO(3); None when off."""
    if cfg is None:
        return None
    u1, u2, u3 = (stable_unit("tail_turn", seed, key, k) for k in range(3))
    a, b = math.sqrt(1.0 - u1), math.sqrt(u1)
    return (a * math.sin(2 * math.pi * u2), a * math.cos(2 * math.pi * u2),
            b * math.sin(2 * math.pi * u3), b * math.cos(2 * math.pi * u3))


def tail_window(w: np.ndarray, fs: int, cfg: TailTurn) -> np.ndarray:
    """(L,) weights of the late part of a RIR whose W channel is ``w``: 0 up to onset + after_s, then a
    raised cosine over fade_s to 1."""
    w = np.abs(np.asarray(w, dtype=np.float64))
    peak = float(w.max()) if w.size else 0.0
    if not peak > 0.0:
        raise ValueError("a silent RIR has no direct sound to keep")
    start = int(np.argmax(w >= ONSET_BELOW_PEAK * peak)) + round(cfg.after_s * fs)
    fade = round(cfg.fade_s * fs)
    t = np.arange(w.size) - start
    out = np.clip((t + 1) / (fade + 1), 0.0, 1.0)
    return 0.5 - 0.5 * np.cos(np.pi * out)


@dataclass(frozen=True, eq=False)
class SplitSpectrum:
    """One placement's RIR as its kept part and its late part, each transformed once."""

    early: RirSpectrum
    late: RirSpectrum

    @classmethod
    def from_rir(cls, rir: np.ndarray, fs: int, cfg: TailTurn) -> SplitSpectrum:
        h = np.asarray(rir, dtype=np.float64)
        order_of(int(h.shape[0]), "a RIR whose tail is turned")
        w = tail_window(h[0], fs, cfg)
        return cls(RirSpectrum.from_rir(h * (1.0 - w), fs), RirSpectrum.from_rir(h * w, fs))

    def turned(self, quat: tuple[float, float, float, float]) -> RirSpectrum:
        """The spectrum of the RIR whose late part is turned by ``quat``."""
        d = sh_rotation(order_of(self.late.channels), Rotation.from_quat(quat).as_matrix())
        spectra = self.early.spectra + np.einsum("ij,jpf->ipf", d.astype(np.float32), self.late.spectra)
        spectra.flags.writeable = False
        e = self.early
        return RirSpectrum(spectra, e.block_size, e.partition, e.fft_size, e.rir_length, e.sample_rate)
