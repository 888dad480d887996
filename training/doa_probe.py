"""Direction-of-arrival probe (ELSA Table 1, appendix A.9 / Table A.T.6).

A 2-layer MLP (512 → 64 → 3, 33k parameters: the paper's "32,768") is trained on frozen
train-set audio embeddings to predict the unit direction vector (1 − cos loss, as the model's own
direction head), then scored on the test set by the great-circle angle between predicted and true
directions. Errors are broken down by azimuth, elevation, distance, floor area and T30 in
equal-width bins over the test range, as in Table A.T.6 (which prints radians; errors here are
in degrees, bin edges in each dimension's own unit).

``fit_mlp`` is the shared trainer (also the 4-class direction classifier of the swap experiment):
seeded, on its own RNG, so evaluating never moves the global torch RNG.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import numpy as np
from pydantic import BaseModel, ConfigDict, Field

from tasks.ambisonics import unit_vector
from training.metrics import CountMismatchError, EmptyEvaluationSetError, check_embeddings

BREAKDOWN_DIMENSIONS: dict[str, str] = {
    "azimuth_deg": "azimuth (deg)",
    "elevation_deg": "elevation (deg)",
    "distance_m": "distance (m)",
    "floor_area_m2": "floor area (m²)",
    "t30_s": "T30 (s)",
}


class ProbeConfig(BaseModel):
    """Training of the probe MLPs: full-batch-ish Adam for a fixed number of steps, seeded."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    hidden: int = Field(64, ge=1, description="512 → 64 → 3 is the paper's 33k-parameter probe")
    steps: int = Field(1500, ge=1)
    batch_size: int = Field(512, ge=1)
    lr: float = Field(3e-3, gt=0)
    weight_decay: float = Field(1e-4, ge=0)
    seed: int = 0
    n_bins: int = Field(10, ge=1, description="bins per breakdown dimension (Table A.T.6 uses 10)")


@dataclass
class Mlp2:
    """A trained Linear → ReLU → Linear (torch module held on CPU) and how it was trained."""

    module: object
    n_params: int
    final_loss: float

    def __call__(self, x: np.ndarray) -> np.ndarray:
        import torch

        with torch.no_grad():
            return self.module(torch.from_numpy(np.ascontiguousarray(x, dtype=np.float32))).numpy()


def fit_mlp(
    x: np.ndarray,
    y: np.ndarray,
    out_dim: int,
    loss: Callable,
    cfg: ProbeConfig,
) -> Mlp2:
    """Train a 2-layer MLP on (x, y) with ``loss(pred, target)`` (torch tensors); returns it in eval mode."""
    import torch

    x = check_embeddings(x, "probe inputs")
    if len(y) != x.shape[0]:
        raise CountMismatchError(f"{x.shape[0]} probe inputs but {len(y)} targets")
    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # a 33k-parameter MLP: more threads only contend (8x slower on 2 busy cores)
    try:
        return _fit(x, y, out_dim, loss, cfg)
    finally:
        torch.set_num_threads(threads)


def _fit(x: np.ndarray, y: np.ndarray, out_dim: int, loss: Callable, cfg: ProbeConfig) -> Mlp2:
    import torch
    from torch import nn

    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(cfg.seed)
        net = nn.Sequential(nn.Linear(x.shape[1], cfg.hidden), nn.ReLU(), nn.Linear(cfg.hidden, out_dim))
        opt = torch.optim.AdamW(net.parameters(), lr=cfg.lr, weight_decay=cfg.weight_decay)
        sched = torch.optim.lr_scheduler.CosineAnnealingLR(opt, T_max=cfg.steps)
        xt = torch.from_numpy(x)
        yt = torch.from_numpy(np.asarray(y))
        g = torch.Generator().manual_seed(cfg.seed)
        n = x.shape[0]
        bs = min(cfg.batch_size, n)
        perm = torch.randperm(n, generator=g)
        pos = 0
        last = float("nan")
        for _ in range(cfg.steps):
            if pos + bs > n:
                perm, pos = torch.randperm(n, generator=g), 0
            idx = perm[pos : pos + bs]
            pos += bs
            opt.zero_grad(set_to_none=True)
            value = loss(net(xt[idx]), yt[idx])
            value.backward()
            opt.step()
            sched.step()
            last = float(value.detach())
        net.eval()
    return Mlp2(module=net, n_params=sum(p.numel() for p in net.parameters()), final_loss=last)


def _cosine_loss(pred, target):  # torch tensors
    import torch

    return (1.0 - torch.nn.functional.cosine_similarity(pred, target, dim=-1, eps=1e-8)).mean()


def directions_from_angles(azimuth_deg: np.ndarray, elevation_deg: np.ndarray) -> np.ndarray:
    """(n, 3) unit vectors (x front, y left, z up) of DESIGN.md angles."""
    return unit_vector(np.asarray(azimuth_deg, np.float64), np.asarray(elevation_deg, np.float64)).T.astype(
        np.float32
    )


def train_doa_probe(
    emb: np.ndarray, azimuth_deg: np.ndarray, elevation_deg: np.ndarray, cfg: ProbeConfig | None = None
) -> Mlp2:
    """The probe, fit on frozen train embeddings and their measured directions."""
    cfg = cfg or ProbeConfig()
    if np.asarray(emb).shape[0] == 0:
        raise EmptyEvaluationSetError("no train embeddings with direction labels to fit the DOA probe on")
    return fit_mlp(emb, directions_from_angles(azimuth_deg, elevation_deg), 3, _cosine_loss, cfg)


def angular_errors_deg(pred: np.ndarray, true: np.ndarray) -> np.ndarray:
    """Great-circle angle between row vectors (any norm), degrees."""
    p = np.asarray(pred, np.float64)
    t = np.asarray(true, np.float64)
    cos = np.sum(p * t, axis=1) / np.maximum(np.linalg.norm(p, axis=1) * np.linalg.norm(t, axis=1), 1e-12)
    return np.degrees(np.arccos(np.clip(cos, -1.0, 1.0)))


class BinStat(BaseModel):
    """One row of Table A.T.6: a value range and the errors of the samples in it."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    lo: float | None = Field(description="None for a per-class row")
    hi: float | None
    mean_deg: float | None
    std_deg: float | None
    median_deg: float | None
    n: int


class DoaResult(BaseModel):
    """The probe's test errors: summary and the per-dimension breakdown."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    n_train: int
    n_test: int
    probe_params: int
    mae_deg: float
    median_deg: float
    std_deg: float
    breakdown: dict[str, list[BinStat]] = Field(default_factory=dict)
    by_class: dict[str, BinStat] = Field(default_factory=dict, description="real recordings: per event class")


def breakdown(errors: np.ndarray, values: np.ndarray, n_bins: int = 10) -> list[BinStat]:
    """Equal-width bins over the finite range of ``values``, last bin closed (Table A.T.6)."""
    e = np.asarray(errors, np.float64)
    v = np.asarray(values, np.float64)
    ok = np.isfinite(v)
    if not ok.any():
        return []
    lo, hi = float(v[ok].min()), float(v[ok].max())
    edges = np.linspace(lo, hi, n_bins + 1) if hi > lo else np.array([lo, hi])
    which = np.clip(np.searchsorted(edges, v[ok], side="right") - 1, 0, len(edges) - 2)
    out = []
    for b in range(len(edges) - 1):
        eb = e[ok][which == b]
        out.append(
            BinStat(
                lo=float(edges[b]),
                hi=float(edges[b + 1]),
                n=int(eb.size),
                mean_deg=float(eb.mean()) if eb.size else None,
                std_deg=float(eb.std()) if eb.size else None,
                median_deg=float(np.median(eb)) if eb.size else None,
            )
        )
    return out


def summarise(
    errors: np.ndarray,
    n_train: int,
    probe_params: int,
    dims: dict[str, np.ndarray] | None = None,
    classes: np.ndarray | None = None,
    n_bins: int = 10,
) -> DoaResult:
    """DoaResult of per-sample errors, with breakdowns by ``dims`` and by event ``classes``."""
    e = np.asarray(errors, np.float64)
    if e.size == 0:
        raise EmptyEvaluationSetError("no test sample with a direction label for the DOA probe")
    by_class = {}
    if classes is not None:
        c = np.asarray(classes, dtype=object)
        for name in sorted({str(x) for x in c}):
            eb = e[c.astype(str) == name]
            by_class[name] = BinStat(
                lo=None,
                hi=None,
                n=int(eb.size),
                mean_deg=float(eb.mean()),
                std_deg=float(eb.std()),
                median_deg=float(np.median(eb)),
            )
    return DoaResult(
        n_train=n_train,
        n_test=int(e.size),
        probe_params=probe_params,
        mae_deg=float(e.mean()),
        median_deg=float(np.median(e)),
        std_deg=float(e.std()),
        breakdown={k: breakdown(e, v, n_bins) for k, v in (dims or {}).items()},
        by_class=by_class,
    )
