"""Losses: CLIP against a hand-written reference, masked regressions, and the all-gathered
contrastive loss of 2 torchrun ranks (gloo) equal to the single-process loss of the global batch."""

from __future__ import annotations

import json
import math
import os
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest
import torch
import torch.nn.functional as nnf

from training.config import LossConfig
from training.losses import angular_error_deg, clip_loss, direction_loss, masked_mean, mse, spatial_terms

REPO = Path(__file__).resolve().parents[1]


def _reference_clip(a: torch.Tensor, t: torch.Tensor, scale: float) -> float:
    """Paper Eq. 4, written out with loops."""
    n = a.shape[0]
    sim = [[math.exp(scale * float(a[i] @ t[j])) for j in range(n)] for i in range(n)]
    a2t = -sum(math.log(sim[i][i] / sum(sim[j][i] for j in range(n))) for i in range(n)) / n
    t2a = -sum(math.log(sim[i][i] / sum(sim[i][j] for j in range(n))) for i in range(n)) / n
    return 0.5 * (a2t + t2a)


def test_clip_loss_matches_reference() -> None:
    g = torch.Generator().manual_seed(0)
    a = nnf.normalize(torch.randn(6, 8, generator=g), dim=-1)
    t = nnf.normalize(torch.randn(6, 8, generator=g), dim=-1)
    got = float(clip_loss(a, t, torch.tensor(10.0)))
    assert got == pytest.approx(_reference_clip(a, t, 10.0), rel=1e-5)
    assert float(clip_loss(a, a, torch.tensor(100.0))) < 1e-3  # perfect alignment


def test_masked_regressions() -> None:
    pred = torch.tensor([[1.0, 0, 0], [0, 1, 0], [0, 0, 5]], requires_grad=True)
    nan = float("nan")
    target = torch.tensor([[1.0, 0, 0], [1, 0, 0], [nan, nan, nan]])
    mask = torch.tensor([True, True, False])
    d = direction_loss(pred, target, mask)
    assert float(d.detach()) == pytest.approx(0.5)  # (0 + 1) / 2; the NaN row is ignored
    d.backward()
    assert torch.isfinite(pred.grad).all() and not pred.grad[2].any()
    assert float(masked_mean(torch.tensor([1.0, 2.0]), torch.tensor([False, False]))) == 0.0
    assert (
        float(
            mse(torch.tensor([1.0, 2.0, 3.0]), torch.tensor([1.0, 4.0, nan]), torch.ones(3, dtype=torch.bool))
        )
        == 2.0
    )
    assert angular_error_deg(
        torch.tensor([[0.0, 2.0, 0.0]]), torch.tensor([[1.0, 0.0, 0.0]])
    ).item() == pytest.approx(90.0)


def test_a_weighted_direction_term_counts_each_row_by_its_weight() -> None:
    """Rows off by 0, 90 and 180 deg (1 - cos: 0, 1, 2) with weights 1, 0.5, 0: (0 + 0.5) / 1.5; a
    masked-out row counts for nothing whatever its weight; and spatial_terms reads the batch's
    ``direction_weight`` only with ``direction_by_energy``."""
    pred = torch.tensor([[1.0, 0, 0], [0, 1, 0], [-1, 0, 0], [0, 0, 1]])
    nan = float("nan")
    target = torch.tensor([[1.0, 0, 0], [1, 0, 0], [1, 0, 0], [nan, nan, nan]])
    mask = torch.tensor([True, True, True, False])
    weight = torch.tensor([1.0, 0.5, 0.0, 1.0])
    assert float(direction_loss(pred, target, mask, weight)) == pytest.approx(0.5 / 1.5)
    assert float(direction_loss(pred, target, mask)) == pytest.approx(1.0)
    batch = {"spatial": mask, "direction": target, "direction_weight": weight, "distance_m": torch.ones(4),
             "floor_area_m2": torch.ones(4)}
    heads = {"direction": pred, "distance": torch.ones(4), "area": torch.ones(4) / 100.0}
    assert float(spatial_terms(heads, batch, LossConfig())["direction"]) == pytest.approx(1.0)
    weighted = spatial_terms(heads, batch, LossConfig(direction_by_energy=True))["direction"]
    assert float(weighted) == pytest.approx(0.5 / 1.5)


def test_spatial_terms_scale_area_and_drr() -> None:
    batch = {
        "spatial": torch.tensor([True]),
        "direction": torch.tensor([[1.0, 0.0, 0.0]]),
        "distance_m": torch.tensor([2.0]),
        "floor_area_m2": torch.tensor([150.0]),
        "t30_s": torch.tensor([0.5]),
        "drr_db": torch.tensor([-10.0]),
    }
    pred = {
        "direction": torch.tensor([[1.0, 0.0, 0.0]]),
        "distance": torch.tensor([2.0]),
        "area": torch.tensor([1.5]),
        "t30": torch.tensor([0.5]),
        "drr": torch.tensor([-1.0]),
    }
    terms = spatial_terms(pred, batch, LossConfig())
    assert all(float(v) == pytest.approx(0.0, abs=1e-6) for v in terms.values())


_WORKER = textwrap.dedent("""
    import json, os, sys
    import torch, torch.distributed as dist, torch.nn.functional as nnf
    from training.losses import clip_loss, gather_features
    dist.init_process_group("gloo")
    r, w = dist.get_rank(), dist.get_world_size()
    g = torch.Generator().manual_seed(0)
    a_all = nnf.normalize(torch.randn(8, 16, generator=g, dtype=torch.float64), dim=-1)
    t_all = nnf.normalize(torch.randn(8, 16, generator=g, dtype=torch.float64), dim=-1)
    n = a_all.shape[0] // w
    out = {}
    for with_grad in (True, False):
        a = a_all[r * n:(r + 1) * n].clone().requires_grad_(True)
        t = t_all[r * n:(r + 1) * n].clone().requires_grad_(True)
        loss = clip_loss(gather_features(a, with_grad), gather_features(t, with_grad), torch.tensor(20.0))
        loss.backward()
        out[str(with_grad)] = {"loss": loss.item(), "grad_a": a.grad.tolist()}
    json.dump(out, open(os.path.join(sys.argv[1], f"rank{r}.json"), "w"))
    dist.barrier()  # both ranks done with every collective before the group goes away
    dist.destroy_process_group()
""")


@pytest.mark.slow
def test_gathered_loss_equals_single_process(tmp_path: Path) -> None:
    script = tmp_path / "worker.py"
    script.write_text(_WORKER)
    # Loopback for gloo: one node, and no dependence on how the host name resolves.
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": str(REPO), "GLOO_SOCKET_IFNAME": "lo"}
    res = subprocess.run(
        [
            sys.executable,
            "-m",
            "torch.distributed.run",
            "--standalone",
            "--nproc_per_node=2",
            str(script),
            str(tmp_path),
        ],
        env=env,
        check=False,
        timeout=240,
        capture_output=True,
        text=True,
    )
    assert res.returncode == 0, res.stdout[-3000:] + res.stderr[-3000:]
    ranks = [json.loads((tmp_path / f"rank{r}.json").read_text()) for r in range(2)]

    g = torch.Generator().manual_seed(0)
    a_all = nnf.normalize(torch.randn(8, 16, generator=g, dtype=torch.float64), dim=-1).requires_grad_(True)
    t_all = nnf.normalize(torch.randn(8, 16, generator=g, dtype=torch.float64), dim=-1)
    single = clip_loss(a_all, t_all, torch.tensor(20.0))
    single.backward()
    for r, got in enumerate(ranks):
        for with_grad in ("True", "False"):
            assert abs(got[with_grad]["loss"] - single.item()) < 1e-5
        # with_grad: each rank's local gradient is world_size x the global one; DDP's mean divides it back
        local = torch.tensor(got["True"]["grad_a"]) / 2
        assert torch.allclose(local, a_all.grad[r * 4 : (r + 1) * 4].float(), atol=1e-6)
