"""Rotations and mirrors of the sound field around the microphone: more directions from the same rooms.

Why: a simulated build holds a few thousand source positions, and a branch trained on them can learn
which directions go with which kinds of room. (Issue 15's upward tilt in real churches was first
taken for such a prior; benchmarks/sim2real_tail.py showed it follows the churches' reverberant
tails, which this cannot teach.) Turning the whole field about the vertical, or mirroring it
left-right or top-bottom, gives the field of the same room turned or mirrored around the
microphone: distance, T30, DRR and floor area are unchanged and the direction turns with it, so one
placement teaches every azimuth and both signs of its elevation.

The intensity vectors (``training.features``: active then reactive, in x, y, z) are vectors in the
microphone's frame, so the transform is exact on them; W's log-mel does not change. Mazzon et al.
(2019) use the 16 axis-aligned members of this group on FOA channels for sound-event localisation;
here the azimuth is continuous. Exact for the ideal encoder; a tetrahedral capture chain's
direction-dependent errors turn with the field, and that is intended: a real array's errors are its
own, not the simulated tetrahedron's. Captions name directions, so only the spatial task may use it
(TrainConfig refuses it for ELSA).
"""

from __future__ import annotations

from typing import Literal

import numpy as np
import torch

FieldAugment = Literal["none", "rotate", "rotate_mirror"]


def random_transforms(n: int, rng: np.random.Generator, mode: FieldAugment) -> np.ndarray:
    """(n, 3, 3) orthogonal matrices on (x, y, z): a uniform turn about z, and with ``rotate_mirror``
    a left-right (y) and a top-bottom (z) mirror, each with probability 1/2; identities for ``none``."""
    out = np.tile(np.eye(3), (n, 1, 1))
    if mode == "none":
        return out
    phi = rng.uniform(0.0, 2.0 * np.pi, n)
    c, s = np.cos(phi), np.sin(phi)
    out[:, 0, 0], out[:, 0, 1], out[:, 1, 0], out[:, 1, 1] = c, -s, s, c
    if mode == "rotate_mirror":
        signs = np.where(rng.random((n, 2)) < 0.5, -1.0, 1.0)
        out[:, :, 1] *= signs[:, :1]  # mirror y before the turn
        out[:, 2, 2] = signs[:, 1]
    return out


def transform_field(batch: dict, mats: np.ndarray) -> dict:
    """The batch with its IVs (B, 6, T, M) and direction targets (B, 3) turned by ``mats`` (B, 3, 3);
    a NaN direction (no target) stays NaN, the other targets and the mel are untouched."""
    r = torch.as_tensor(mats, dtype=batch["iv"].dtype, device=batch["iv"].device)
    iv = batch["iv"]
    turned = [torch.einsum("bij,bjtm->bitm", r, iv[:, k : k + 3]) for k in (0, 3)]
    direction = torch.einsum("bij,bj->bi", r.to(batch["direction"].dtype), batch["direction"])
    return {**batch, "iv": torch.cat(turned, dim=1), "direction": direction}
