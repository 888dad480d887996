"""``evaluate-sim2real``: pretrain the spatial branch on a simulated build and test it on builds over
measured SRIR banks, beside the classical intensity estimator (training.sim2real)."""

from __future__ import annotations

from prefect import flow, task
from prefect.artifacts import create_markdown_artifact
from prefect.cache_policies import NO_CACHE

from training.sim2real import Sim2RealConfig, Sim2RealReport, run_sim2real


@task(name="sim2real", cache_policy=NO_CACHE, tags=["gpu"])
def sim2real_task(cfg: Sim2RealConfig) -> Sim2RealReport:
    return run_sim2real(cfg)


def _table(report: Sim2RealReport) -> str:
    """Per room and pooled; with several members, each member's own median direction error too."""
    head = "| room | n | DOA model (deg) | DOA classical (deg) | T30 rel. error | DRR abs. error (dB) |"
    rule = "|---|---|---|---|---|---|"
    if report.members > 1:
        head, rule = head + " DOA per member (deg) |", rule + "---|"
    rows = [head, rule]
    for room, s in [*report.rooms.items(), ("pooled", report.pooled)]:
        t30 = "-" if s.t30_rel_error_median is None else f"{s.t30_rel_error_median:.0%}"
        classical = "-" if s.doa_classical_median_deg is None else f"{s.doa_classical_median_deg:.1f}"
        members = " / ".join(f"{m:.1f}" for m in s.doa_member_medians_deg)
        rows.append(f"| {room} | {s.n} | {s.doa_model_median_deg:.1f} | {classical} | {t30} | "
                    f"{s.drr_abs_error_median_db:.1f} |" + (f" {members} |" if report.members > 1 else ""))
    if report.targets is not None:
        marks = {True: "met", False: "missed", None: "no T30 labels"}
        rows.append("\nIssue 15's targets: " + ", ".join(
            f"{name} {marks[met]}" for name, met in report.targets.model_dump().items()))
    return "\n".join(rows)


@flow(name="evaluate-sim2real", log_prints=True)
def evaluate_sim2real(config: Sim2RealConfig) -> Sim2RealReport:
    """Train on ``config.train_root``, test on ``config.test_roots``; the report lands in ``run_dir``."""
    report = sim2real_task(config)
    create_markdown_artifact(key="sim2real", markdown=_table(report),
                             description=f"sim-to-real of {config.train_root}")
    return report
