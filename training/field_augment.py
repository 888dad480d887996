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


def _transforms(phi: np.ndarray, sign_y: np.ndarray, sign_z: np.ndarray) -> np.ndarray:
    """(n, 3, 3): mirror y by ``sign_y``, then turn by ``phi`` about z, with z's sign ``sign_z``."""
    c, s = np.cos(phi), np.sin(phi)
    out = np.zeros((len(phi), 3, 3))
    out[:, 0, 0], out[:, 0, 1], out[:, 1, 0], out[:, 1, 1] = c, -s * sign_y, s, c * sign_y
    out[:, 2, 2] = sign_z
    return out


def random_transforms(n: int, rng: np.random.Generator, mode: FieldAugment) -> np.ndarray:
    """(n, 3, 3) orthogonal matrices on (x, y, z): a uniform turn about z, and with ``rotate_mirror``
    a left-right (y) and a top-bottom (z) mirror, each with probability 1/2; identities for ``none``."""
    if mode == "none":
        return np.tile(np.eye(3), (n, 1, 1))
    phi = rng.uniform(0.0, 2.0 * np.pi, n)
    if mode == "rotate":
        return _transforms(phi, np.ones(n), np.ones(n))
    signs = np.where(rng.random((n, 2)) < 0.5, -1.0, 1.0)
    return _transforms(phi, signs[:, 0], signs[:, 1])


def field_group(turns: int) -> np.ndarray:
    """(4·turns, 3, 3): the turns about z by multiples of 360°/``turns``, each with and without the
    left-right and the top-bottom mirror, identity first; a finite part of what ``rotate_mirror``
    draws from, for averaging a branch's answers over it at test time (``turn_back``)."""
    if turns < 1:
        raise ValueError(f"a field group needs at least one turn, got {turns}")
    phi, sy, sz = (g.ravel() for g in np.meshgrid(
        2.0 * np.pi * np.arange(turns) / turns, [1.0, -1.0], [1.0, -1.0], indexing="ij"))
    return _transforms(phi, sy, sz)


def turn_ivs(iv: torch.Tensor, mats: np.ndarray) -> torch.Tensor:
    """IVs (B, 6, T, M), active then reactive xyz, turned by ``mats`` (B, 3, 3)."""
    r = torch.as_tensor(mats, dtype=iv.dtype, device=iv.device)
    return torch.cat([torch.einsum("bij,bjtm->bitm", r, iv[:, k : k + 3]) for k in (0, 3)], dim=1)


def turn_back(directions: torch.Tensor, mats: np.ndarray) -> torch.Tensor:
    """Directions (B, 3) answered on fields turned by ``mats`` (B, 3, 3), in the untouched field's frame
    (the matrices are orthogonal: the inverse is the transpose)."""
    r = torch.as_tensor(mats, dtype=directions.dtype, device=directions.device)
    return torch.einsum("bji,bj->bi", r, directions)


def transform_field(batch: dict, mats: np.ndarray) -> dict:
    """The batch with its IVs (B, 6, T, M) and direction targets (B, 3) turned by ``mats`` (B, 3, 3);
    a NaN direction (no target) stays NaN, the other targets and the mel are untouched."""
    r = torch.as_tensor(mats, dtype=batch["direction"].dtype, device=batch["direction"].device)
    direction = torch.einsum("bij,bj->bi", r, batch["direction"])
    return {**batch, "iv": turn_ivs(batch["iv"], mats), "direction": direction}
