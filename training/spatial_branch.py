"""Spatial attributes branch: a two-branch CNN over active and reactive intensity vectors.

ELSA (appendix A.8, Fig. A.F.2) feeds the active and reactive IVs to two convolutional branches
that start with AddCoords2D (CoordConv: the network knows which time frame and mel band it is
looking at, which matters because direction cues differ per band). The paper's figure is not
machine-readable, so the layer sizes here are ours, chosen to land on its 485,828 parameters
(the full-size default has 485,900): per branch, AddCoords2D then four Conv3x3-BN-ELU-MaxPool
blocks; the branches are concatenated with the remaining mel bands folded into channels; a 1x1
temporal convolution fuses them; mean and max over time; a 2-layer MLP gives the 192-d output.

With ``level_input`` each branch also gets the W channel's level per (frame, band) as one more
input channel (``band_level``). That departs from ELSA, whose branch sees unit IVs only, and is off
by default.
"""

from __future__ import annotations

import torch
from torch import nn

from training.config import SpatialBranchConfig


class AddCoords2D(nn.Module):
    """Append two channels holding the normalised (time, frequency) coordinate, in [-1, 1]."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        b, _, t, f = x.shape
        tt = torch.linspace(-1.0, 1.0, t, device=x.device, dtype=x.dtype).view(1, 1, t, 1).expand(b, 1, t, f)
        ff = torch.linspace(-1.0, 1.0, f, device=x.device, dtype=x.dtype).view(1, 1, 1, f).expand(b, 1, t, f)
        return torch.cat([x, tt, ff], dim=1)


def _block(c_in: int, c_out: int, pool: tuple[int, int]) -> nn.Sequential:
    layers: list[nn.Module] = [nn.Conv2d(c_in, c_out, 3, padding=1), nn.BatchNorm2d(c_out), nn.ELU()]
    if pool != (1, 1):
        layers.append(nn.MaxPool2d(pool, ceil_mode=True))
    return nn.Sequential(*layers)


# Levels more than this far below a band's loudest frame are clipped: the tail of a 1.3 s T30 stays
# inside it for ~0.8 s, and the rest is the noise floor, whose exact depth says nothing about the room.
LEVEL_RANGE_DB = 60.0


def band_level(mel: torch.Tensor) -> torch.Tensor:
    """(B, 1, T, M) log-mel dB of W → level below each band's loudest frame, in units of 20 dB, in
    [-3, 0].

    Why per band and relative: the clip's own loudness and spectrum are the sound's (a held-out
    category's), not the room's; what the room leaves is each band's course in time, i.e. how fast
    it decays after an onset (T30) and how the direct sound stands above what follows (DRR), and which
    frames are onsets, whose IVs point at the source."""
    rel = mel - mel.amax(dim=2, keepdim=True)
    return rel.clamp(min=-LEVEL_RANGE_DB) / 20.0


class IvBranch(nn.Module):
    """AddCoords2D, then Conv-BN-ELU-MaxPool blocks over (3 IV components [+ level] + 2 coords, T, mels)."""

    def __init__(self, cfg: SpatialBranchConfig) -> None:
        super().__init__()
        self.coords = AddCoords2D()
        blocks = []
        c_in = cfg.in_channels + int(cfg.level_input) + 2
        for c_out, tp, fp in zip(cfg.channels, cfg.time_pool, cfg.freq_pool, strict=True):
            blocks.append(_block(c_in, c_out, (tp, fp)))
            c_in = c_out
        self.blocks = nn.Sequential(*blocks)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """(B, 3, T, M) → (B, C·M', T')."""
        y = self.blocks(self.coords(x))
        b, c, t, f = y.shape
        return y.permute(0, 1, 3, 2).reshape(b, c * f, t)


def reduced_bands(cfg: SpatialBranchConfig) -> int:
    """Mel bands left after the frequency pooling (ceil mode, as the blocks pool)."""
    f = cfg.n_mels
    for p in cfg.freq_pool:
        f = -(-f // p)
    return f


class SpatialBranch(nn.Module):
    """Intensity vectors (B, 6, T, M): active xyz, reactive xyz → (B, out_dim) spatial embedding;
    with ``cfg.level_input`` also the log-mel of W (B, 1, T, M)."""

    def __init__(self, cfg: SpatialBranchConfig | None = None) -> None:
        super().__init__()
        self.cfg = cfg = cfg or SpatialBranchConfig()
        self.active = IvBranch(cfg)
        self.reactive = IvBranch(cfg)
        width = 2 * cfg.channels[-1] * reduced_bands(cfg)
        self.fuse = nn.Sequential(
            nn.Conv1d(width, cfg.fusion_dim, 1), nn.BatchNorm1d(cfg.fusion_dim), nn.ELU()
        )
        self.mlp = nn.Sequential(
            nn.Linear(2 * cfg.fusion_dim, cfg.hidden_dim), nn.ELU(), nn.Linear(cfg.hidden_dim, cfg.out_dim)
        )

    @property
    def out_dim(self) -> int:
        return self.cfg.out_dim

    def forward(self, iv: torch.Tensor, mel: torch.Tensor | None = None) -> torch.Tensor:
        """``mel`` is read only with ``cfg.level_input`` (ELSA's branch ignores it)."""
        n = self.cfg.in_channels
        if iv.shape[1] != 2 * n:
            raise ValueError(f"expected {2 * n} IV channels (active, reactive), got {iv.shape[1]}")
        active, reactive = iv[:, :n], iv[:, n:]
        if self.cfg.level_input:
            if mel is None or mel.shape[:2] != (iv.shape[0], 1) or mel.shape[2:] != iv.shape[2:]:
                got = None if mel is None else tuple(mel.shape)
                raise ValueError(f"level_input needs W's log-mel shaped (B, 1, T, M) like the IVs "
                                 f"{tuple(iv.shape)}, got {got}")
            level = band_level(mel.to(iv.dtype))
            if self.cfg.iv_level_exponent:  # band_level is dB / 20: power ratio ** g = 10 ** (2 g level)
                weight = torch.pow(10.0, 2.0 * self.cfg.iv_level_exponent * level)
                active, reactive = active * weight, reactive * weight
            active, reactive = torch.cat([active, level], dim=1), torch.cat([reactive, level], dim=1)
        if iv.is_cuda:  # cuDNN runs these few-channel convolutions ~2x faster in NHWC (H100, bf16)
            active = active.contiguous(memory_format=torch.channels_last)
            reactive = reactive.contiguous(memory_format=torch.channels_last)
        h = torch.cat([self.active(active), self.reactive(reactive)], dim=1)
        h = self.fuse(h)
        pooled = torch.cat([h.mean(dim=-1), h.amax(dim=-1)], dim=1)
        return self.mlp(pooled)


def count_parameters(module: nn.Module) -> int:
    return sum(p.numel() for p in module.parameters() if p.requires_grad)


def save_spatial_branch(branch: SpatialBranch, path: str) -> None:
    """Write what ``load_spatial_branch`` reads: the config and the weights, nothing else."""
    torch.save({"config": branch.cfg.model_dump(mode="json"), "state_dict": branch.state_dict()}, path)


def load_spatial_branch(path: str, expect: SpatialBranchConfig | None = None) -> SpatialBranch:
    """Rebuild a branch from ``save_spatial_branch`` output; refuse a config other than ``expect``."""
    blob = torch.load(path, map_location="cpu", weights_only=True)
    cfg = SpatialBranchConfig.model_validate(blob["config"])
    if expect is not None and cfg != expect:
        raise ValueError(f"spatial checkpoint {path} has config {cfg}, the model wants {expect}")
    branch = SpatialBranch(cfg)
    branch.load_state_dict(blob["state_dict"])
    return branch
