"""ELSA's loss (paper Eq. 5): CLIP over the global batch + direction + distance + area.

The contrastive term sees every rank's embeddings: ``gather_features`` concatenates them in rank
order with torch.distributed.nn's differentiable all_gather, so each rank computes the same
N×N loss as one process holding the whole batch would. Its backward sums every rank's gradient
for the local rows, i.e. world_size × dL/dx; DDP's gradient averaging divides that back, so the
update equals the single-process one (open_clip's gather_with_grad, without local_loss).

Regression terms only count spatial samples (non-spatial originals have no labels): each is a
masked mean, zero (with the graph kept) when a batch has none. Direction and distance count only
samples whose sound comes from one place (``source_target``: ELSA's spatial samples, scene
samples with one static source); the room terms (area, T30, DRR) count every spatial sample. A
masked sample adds nothing to a term's sum nor to its denominator.
"""

from __future__ import annotations

import torch
import torch.distributed as dist
import torch.nn.functional as nnf

from training.config import LossConfig


def gather_features(x: torch.Tensor, with_grad: bool = True) -> torch.Tensor:
    """All ranks' rows of ``x`` concatenated in rank order; ``x`` itself in a world of one.

    ``with_grad=False`` gathers detached copies and puts the local tensor (with its graph) back
    in its own slot: cheaper, and the gradient then only flows through local rows.
    """
    if not (dist.is_available() and dist.is_initialized()) or dist.get_world_size() == 1:
        return x
    if with_grad:
        import torch.distributed.nn.functional as dnnf

        return torch.cat(dnnf.all_gather(x), dim=0)
    parts = [torch.zeros_like(x) for _ in range(dist.get_world_size())]
    dist.all_gather(parts, x.detach())
    parts[dist.get_rank()] = x
    return torch.cat(parts, dim=0)


def clip_loss(audio: torch.Tensor, text: torch.Tensor, logit_scale: torch.Tensor) -> torch.Tensor:
    """Symmetric InfoNCE (paper Eq. 4) over unit-norm embeddings whose row i match."""
    logits = logit_scale * audio.float() @ text.float().t()
    labels = torch.arange(logits.shape[0], device=logits.device)
    return 0.5 * (nnf.cross_entropy(logits, labels) + nnf.cross_entropy(logits.t(), labels))


def masked_mean(values: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """Mean of ``values`` where ``mask``; 0 (still differentiable) when nothing is selected."""
    m = mask.to(values.dtype)
    safe = torch.where(mask, values, torch.zeros_like(values))
    return (safe * m).sum() / m.sum().clamp(min=1.0)


def direction_loss(pred: torch.Tensor, target: torch.Tensor, mask: torch.Tensor,
                   weight: torch.Tensor | None = None) -> torch.Tensor:
    """1 − cos(pred, target) over the rows of ``mask``, a ``weight``-ed mean if given; target rows
    outside the mask may be NaN."""
    t = torch.nan_to_num(target.float())
    cos = nnf.cosine_similarity(pred.float(), t, dim=-1, eps=1e-8)
    if weight is None:
        return masked_mean(1.0 - cos, mask)
    w = torch.where(mask, weight.float(), torch.zeros_like(cos))
    return ((1.0 - cos) * w).sum() / w.sum().clamp(min=1e-6)


def mse(pred: torch.Tensor, target: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    m = mask & torch.isfinite(target)
    return masked_mean((pred.float() - torch.nan_to_num(target.float())) ** 2, m)


def angular_error_deg(pred: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    """Great-circle angle between predicted and true directions, per row, in degrees."""
    cos = nnf.cosine_similarity(pred.float(), target.float(), dim=-1, eps=1e-8).clamp(-1.0, 1.0)
    return torch.rad2deg(torch.arccos(cos))


def spatial_terms(pred: dict[str, torch.Tensor], batch: dict, cfg: LossConfig) -> dict[str, torch.Tensor]:
    """The regression terms present in ``pred``: direction, distance, area (scaled), t30, drr (scaled).

    Direction, distance and DRR (the source's, not only the room's) are targets where
    ``source_target`` says the sample's sound comes from one place; area and T30 on every spatial
    sample. A batch without ``source_target`` (one built by hand, not by training.data.collate)
    holds no scene sample, so those targets are its spatial samples'.
    """
    mask = batch["spatial"]
    source = batch.get("source_target", mask)
    out = {
        "direction": direction_loss(pred["direction"], batch["direction"], source,
                                    batch["direction_weight"] if cfg.direction_by_energy else None),
        "distance": mse(pred["distance"], batch["distance_m"], source),
        "area": mse(pred["area"], batch["floor_area_m2"] / cfg.area_scale_m2, mask),
    }
    if "t30" in pred:
        out["t30"] = mse(pred["t30"], batch["t30_s"], mask)
    if "drr" in pred:
        out["drr"] = mse(pred["drr"], batch["drr_db"] / cfg.drr_scale_db, source)
    return out


def weighted_total(terms: dict[str, torch.Tensor], cfg: LossConfig) -> torch.Tensor:
    return sum(getattr(cfg, k) * v for k, v in terms.items())  # type: ignore[return-value]


def elsa_loss(out, batch: dict, cfg: LossConfig) -> dict[str, torch.Tensor]:
    """Every term and the weighted total ('loss'); the contrastive term over the gathered batch."""
    a = gather_features(out.audio_embeds, cfg.gather_with_grad)
    t = gather_features(out.text_embeds, cfg.gather_with_grad)
    terms = {"clip": clip_loss(a, t, out.logit_scale)}
    terms.update(
        spatial_terms({"direction": out.direction, "distance": out.distance, "area": out.area}, batch, cfg)
    )
    terms["loss"] = weighted_total(terms, cfg)
    return terms


def spatial_loss(pred: dict[str, torch.Tensor], batch: dict, cfg: LossConfig) -> dict[str, torch.Tensor]:
    """The pretraining loss of the spatial branch (A.8): cosine direction + MSE of the rest."""
    terms = spatial_terms(pred, batch, cfg)
    terms["loss"] = weighted_total(terms, cfg)
    return terms
