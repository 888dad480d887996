"""The evaluation record (Report) and its files: report.json, report.md, samples.parquet, plots/.

``write_report(report, out_dir)`` is the only writer. report.json holds every number (the
per-sample columns and projection points go to samples.parquet and the plots instead, so the
JSON stays small at any test-set size); report.md is the same as tables with the plots inline:

- plots/projection.png: test audio (filled) and caption (hollow) embeddings in 2-D, coloured by
  direction word, as the paper's Fig. 2;
- plots/doa_boxplots.png: DOA-probe errors by azimuth, elevation, distance, floor area and T30
  (Fig. A.F.3 (a)-(e)), one box per bin, ELSA and the semantic-only baseline side by side;
- plots/real_<name>.png: real-recording errors per event class (Fig. A.F.3 (f)).

On scene test sets it adds the frame-wise localisation (training.scene_eval): median error and
share within the threshold of each estimator on frames where exactly one source is active.
"""

from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Any

import numpy as np
from pydantic import BaseModel, ConfigDict, Field

from training.direction_swap import SwapResult
from training.doa_probe import BREAKDOWN_DIMENSIONS, DoaResult
from training.scene_eval import SceneLocalisation
from training.zero_shot import ATTRIBUTE_TITLES, ZeroShotResult

SCHEMA_VERSION = "eval/1"
ROW_TITLES = {"elsa": "ELSA", "semantic_only": "semantic only (spatial branch zeroed)"}
DIRECTION_COLOURS = {
    "front": "tab:blue",
    "left": "tab:orange",
    "right": "tab:green",
    "back": "tab:red",
    None: "lightgray",
}
METRIC_KEYS = ("t2a_R@1", "t2a_R@5", "t2a_R@10", "t2a_mAP@10", "a2t_R@1", "a2t_R@5", "a2t_R@10", "a2t_mAP@10")


class RetrievalResult(BaseModel):
    """One retrieval set: sizes and training.metrics.retrieval_metrics' dict."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    set: str
    n_audio: int
    n_text: int
    metrics: dict[str, float]


class RowResult(BaseModel):
    """Everything evaluated for one row (the model, or its semantic-only baseline)."""

    model_config = ConfigDict(extra="forbid")

    retrieval: list[RetrievalResult] = Field(default_factory=list)
    zero_shot: dict[str, ZeroShotResult] = Field(default_factory=dict)
    doa: DoaResult | None = None
    direction_swap: SwapResult | None = None
    real: dict[str, DoaResult] = Field(default_factory=dict)


class Projection(BaseModel):
    """2-D points of test embeddings (audio, then their first caption) and their direction words."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    method: str
    fitted_on: str
    x: list[float]
    y: list[float]
    modality: list[str]
    direction: list[str | None]


class Report(BaseModel):
    """One evaluation of one checkpoint on one shard root."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    schema_version: str = SCHEMA_VERSION
    created_at: str
    checkpoint: str
    step: int | None
    shards: str
    test_split: str
    train_split: str | None
    config: dict[str, Any]
    counts: dict[str, int]
    rows: dict[str, RowResult]
    projection: Projection | None = None
    scene_localisation: SceneLocalisation | None = Field(
        None, exclude_if=lambda v: v is None,
        description="frame-wise localisation on the test split's scene samples (absent: no scene)",
    )
    samples: dict[str, list[Any]] = Field(
        default_factory=dict, description="per spatial test sample with direction labels"
    )
    timings_s: dict[str, float] = Field(default_factory=dict)
    notes: list[str] = Field(default_factory=list)

    def headline(self) -> dict[str, Any]:
        """The few numbers a CLI line or a flow log shows, per row."""
        out: dict[str, Any] = {}
        for r, row in self.rows.items():
            h: dict[str, Any] = {}
            for rr in row.retrieval:
                if rr.set.endswith("/spatial") or rr.set.endswith("/nonspatial"):
                    h[f"{rr.set}:t2a_R@10"] = rr.metrics["t2a_R@10"]
                    h[f"{rr.set}:a2t_R@10"] = rr.metrics["a2t_R@10"]
            for a, z in row.zero_shot.items():
                h[f"zero_shot_{a}_accuracy"] = z.accuracy
            if row.doa is not None:
                h["doa_mae_deg"] = row.doa.mae_deg
            if row.direction_swap is not None:
                h["swap_accuracy"] = row.direction_swap.swap_accuracy
            for name, d in row.real.items():
                h[f"real_{name}_doa_mae_deg"] = d.mae_deg
            out[r] = h
        if (sl := self.scene_localisation) is not None:
            thr = f"{sl.config.threshold_deg:g}"
            out["scene_frames"] = {}
            for name, e in sl.estimators.items():
                out["scene_frames"][f"{name}_median_deg"] = e.median_deg
                out["scene_frames"][f"{name}_within_{thr}deg"] = e.within_share
        return _finite(out)


class ReportFiles(BaseModel):
    """Where write_report put things (absolute paths)."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    out_dir: str
    report_json: str
    report_md: str
    samples: str | None
    plots: list[str]


def _finite(obj: Any) -> Any:
    """NaN/inf → None anywhere (JSON without NaN)."""
    if isinstance(obj, float):
        return obj if math.isfinite(obj) else None
    if isinstance(obj, dict):
        return {k: _finite(v) for k, v in obj.items()}
    if isinstance(obj, list | tuple):
        return [_finite(v) for v in obj]
    return obj


# --------------------------------------------------------------------------------------------
# plots


def _plt():
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def plot_projection(p: Projection, path: Path) -> Path:
    """Fig. 2: filled markers audio, hollow markers captions, colour = direction word."""
    plt = _plt()
    fig, ax = plt.subplots(figsize=(6, 5))
    x, y = np.asarray(p.x), np.asarray(p.y)
    mod = np.asarray(p.modality)
    words = np.asarray([w or "" for w in p.direction], dtype=object)
    for w, colour in DIRECTION_COLOURS.items():
        m = words == (w or "")
        for modality, face in (("audio", colour), ("text", "none")):
            sel = m & (mod == modality)
            if sel.any():
                ax.scatter(
                    x[sel],
                    y[sel],
                    s=14,
                    facecolors=face,
                    edgecolors=colour,
                    linewidths=0.8,
                    label=f"{w or 'no word'} ({modality})",
                    alpha=0.8,
                )
    ax.set_title(f"Test embeddings ({p.method.upper()}, fit on {p.fitted_on})", fontsize=9)
    ax.legend(fontsize=7, ncol=2, loc="best")
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)
    return path


def _bins(values: np.ndarray, n_bins: int) -> tuple[np.ndarray, np.ndarray]:
    ok = np.isfinite(values)
    lo, hi = (float(values[ok].min()), float(values[ok].max())) if ok.any() else (0.0, 1.0)
    edges = np.linspace(lo, hi, n_bins + 1) if hi > lo else np.array([lo, hi + 1e-9])
    which = np.clip(np.searchsorted(edges, values, side="right") - 1, 0, len(edges) - 2)
    return edges, np.where(ok, which, -1)


def plot_doa_boxplots(
    samples: dict[str, list[Any]], rows: list[str], path: Path, n_bins: int = 10
) -> Path | None:
    """Fig. A.F.3 (a)-(e): absolute DOA errors per bin of each dimension; median line, mean marker."""
    cols = [f"doa_error_deg_{r}" for r in rows if f"doa_error_deg_{r}" in samples]
    if not cols:
        return None
    plt = _plt()
    dims = [d for d in BREAKDOWN_DIMENSIONS if d in samples]
    fig, axes = plt.subplots(len(dims), 1, figsize=(10, 2.6 * len(dims)), squeeze=False)
    for ax, d in zip(axes[:, 0], dims, strict=True):
        v = np.asarray(samples[d], dtype=np.float64)
        edges, which = _bins(v, n_bins)
        width = 0.8 / len(cols)
        for j, c in enumerate(cols):
            e = np.asarray(samples[c], dtype=np.float64)
            data = [e[which == b] for b in range(len(edges) - 1)]
            pos = np.arange(len(data)) + (j - (len(cols) - 1) / 2) * width
            keep = [i for i, x in enumerate(data) if x.size]
            if not keep:
                continue
            bp = ax.boxplot(
                [data[i] for i in keep],
                positions=pos[keep],
                widths=width * 0.9,
                showmeans=True,
                meanline=True,
                patch_artist=True,
                manage_ticks=False,
                medianprops={"color": "tab:orange"},
                meanprops={"color": "tab:green", "ls": "--"},
            )
            for box in bp["boxes"]:
                box.set_facecolor(("tab:blue", "lightgray")[j % 2])
        ax.set_xticks(np.arange(len(edges) - 1))
        ax.set_xticklabels(
            [f"[{edges[i]:.3g}, {edges[i + 1]:.3g})" for i in range(len(edges) - 1)], fontsize=7, rotation=20
        )
        ax.set_xlabel(BREAKDOWN_DIMENSIONS[d], fontsize=8)
        ax.set_ylabel("DOA error (deg)", fontsize=8)
    axes[0, 0].set_title(
        "DOA probe errors: "
        + ", ".join(
            f"{('blue', 'gray')[j % 2]} = {ROW_TITLES.get(c.removeprefix('doa_error_deg_'), c)}"
            for j, c in enumerate(cols)
        ),
        fontsize=9,
    )
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path


def plot_real_by_class(result: DoaResult, name: str, path: Path) -> Path | None:
    """Fig. A.F.3 (f) as bars (mean ± std per event class): the per-segment errors are not kept."""
    if not result.by_class:
        return None
    plt = _plt()
    names = list(result.by_class)
    fig, ax = plt.subplots(figsize=(max(4, 0.6 * len(names) + 2), 3))
    means = [result.by_class[n].mean_deg or 0.0 for n in names]
    stds = [result.by_class[n].std_deg or 0.0 for n in names]
    ax.bar(range(len(names)), means, yerr=stds, color="tab:blue", alpha=0.8, capsize=3)
    ax.set_xticks(range(len(names)))
    ax.set_xticklabels(names, rotation=30, ha="right", fontsize=7)
    ax.set_ylabel("DOA error (deg)")
    ax.set_title(
        f"{name}: DOA probe error per class (MAE {result.mae_deg:.1f} deg, n={result.n_test})", fontsize=9
    )
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path


# --------------------------------------------------------------------------------------------
# markdown


def _f(v: float | None, pct: bool = False, nd: int = 1) -> str:
    if v is None or (isinstance(v, float) and not math.isfinite(v)):
        return "–"
    return f"{100 * v:.{nd}f}" if pct else f"{v:.{nd}f}"


def render_markdown(report: Report, plots: dict[str, str]) -> str:
    """report.md: the metric tables of the paper, each with the baseline row beside ELSA's."""
    rows = list(report.rows)
    lines = [f"# ELSA evaluation: {report.checkpoint}", ""]
    lines += [
        f"- shards: `{report.shards}` (test split `{report.test_split}`, probes fit on "
        f"`{report.train_split}`)",
        f"- step: {report.step}",
        f"- created: {report.created_at}",
        "- counts: " + ", ".join(f"{k} {v}" for k, v in report.counts.items()),
        "",
    ]
    lines += ["Rows: " + "; ".join(f"**{r}** = {ROW_TITLES.get(r, r)}" for r in rows) + ".", ""]
    lines += ["## Retrieval (%, LAION-CLAP protocol; a2t mAP@10 with sorted ground-truth ranks)", ""]
    lines += [
        "| set | row | audio | captions | " + " | ".join(METRIC_KEYS) + " |",
        "|---|---|---|---|" + "---|" * len(METRIC_KEYS),
    ]
    sets = [rr.set for rr in report.rows[rows[0]].retrieval]
    for s in sets:
        for r in rows:
            rr = next(x for x in report.rows[r].retrieval if x.set == s)
            lines.append(
                f"| {s} | {r} | {rr.n_audio} | {rr.n_text} | "
                + " | ".join(_f(rr.metrics[k], pct=True) for k in METRIC_KEYS)
                + " |"
            )
    lines += [
        "",
        '## Zero-shot spatial attributes (Table 2; accuracy %, "A sound coming from <attribute>")',
        "",
    ]
    lines += [
        "| task | classes | n | " + " | ".join(f"{r} acc | {r} bal. acc" for r in rows) + " | chance |",
        "|---|---|---|" + "---|---|" * len(rows) + "---|",
    ]
    for a, title in ATTRIBUTE_TITLES.items():
        z0 = report.rows[rows[0]].zero_shot.get(a)
        if z0 is None:
            continue
        cells = []
        for r in rows:
            z = report.rows[r].zero_shot.get(a)
            cells += [_f(z.accuracy if z else None, True), _f(z.balanced_accuracy if z else None, True)]
        lines.append(
            f"| {title} ({len(z0.classes)}-class) | {', '.join(z0.classes)} | {z0.n} | "
            + " | ".join(cells)
            + f" | {_f(z0.chance, True)} |"
        )
    if any(report.rows[r].doa for r in rows):
        lines += ["", "## DOA probe (Table 1; 2-layer MLP on frozen embeddings; degrees)", ""]
        lines += [
            "| row | train | test | probe params | MAE | median | std |",
            "|---|---|---|---|---|---|---|",
        ]
        for r in rows:
            d = report.rows[r].doa
            if d:
                lines.append(
                    f"| {r} | {d.n_train} | {d.n_test} | {d.probe_params} | {_f(d.mae_deg)} | "
                    f"{_f(d.median_deg)} | {_f(d.std_deg)} |"
                )
        if "doa_boxplots" in plots:
            lines += ["", f"![DOA errors]({plots['doa_boxplots']})"]
        d0 = report.rows[rows[0]].doa
        if d0:
            lines += ["", f"### Breakdown (Table A.T.6; {rows[0]}; mean ± std deg, n)", ""]
            for dim, bins in d0.breakdown.items():
                lines += [
                    f"**{BREAKDOWN_DIMENSIONS.get(dim, dim)}**: "
                    + "; ".join(
                        f"[{b.lo:.3g}, {b.hi:.3g}) {_f(b.mean_deg)} ± {_f(b.std_deg)} ({b.n})"
                        for b in bins
                        if b.n
                    ),
                    "",
                ]
    if any(report.rows[r].direction_swap for r in rows):
        lines += ["## Direction swap and removal (A.14, Tables A.T.11-12; %)", ""]
        for r in rows:
            s = report.rows[r].direction_swap
            if s is None:
                continue
            lines += [
                f"**{r}**: classifier {s.classifier_params} params, test accuracy "
                f"{_f(s.classifier_accuracy, True)} (n={s.n_test}); swap θ {_f(s.swap_accuracy, True)}, "
                f"ΔR@10 {_f(s.swap_delta_r_at_10, True)}; removal θ {_f(s.removal_accuracy, True)}, "
                f"ΔR@10 {_f(s.removal_delta_r_at_10, True)}",
                "",
            ]
            lines += [
                "| direction | ∉ | N | R@10 | swap θ | swap ΔR@10 | removal θ | removal ΔR@10 |",
                "|---|---|---|---|---|---|---|---|",
            ]
            for w in s.rows:
                lines.append(
                    f"| {w.direction} | {w.excluded} | {w.n} | {_f(w.r_at_10, True)} | "
                    f"{_f(w.swap_accuracy, True)} | {_f(w.swap_delta_r_at_10, True)} | "
                    f"{_f(w.removal_accuracy, True)} | {_f(w.removal_delta_r_at_10, True)} |"
                )
            lines.append("")
    real_names = sorted({n for r in rows for n in report.rows[r].real})
    if real_names:
        lines += [
            "## Real recordings: DOA probe (degrees)",
            "",
            "| set | row | segments | MAE | median |",
            "|---|---|---|---|---|",
        ]
        for n in real_names:
            for r in rows:
                d = report.rows[r].real.get(n)
                if d:
                    lines.append(f"| {n} | {r} | {d.n_test} | {_f(d.mae_deg)} | {_f(d.median_deg)} |")
        lines += [f"![{n}]({plots[f'real_{n}']})" for n in real_names if f"real_{n}" in plots]
        lines.append("")
    if (sl := report.scene_localisation) is not None:
        lines += [
            f"## Frame-wise localisation on scenes ({1000 * sl.frame_s:g} ms frames with exactly one "
            "active source; degrees)",
            "",
            f"{sl.scene_samples} scene sample(s), {sl.solo_frames} solo frame(s). `intensity`: the "
            "intensity-vector DOA of each frame's audio; `model`: the direction head on a "
            f"{sl.config.model_window_s:g} s window within the source's solo run, every "
            f"{sl.config.model_every}th solo frame.",
            "",
            "| estimator | samples | frames | unestimated | median | mean | "
            f"within {sl.config.threshold_deg:g}° |",
            "|---|---|---|---|---|---|---|",
        ]
        for name, e in sl.estimators.items():
            lines.append(
                f"| {name} | {e.n_samples} | {e.n_frames} | {e.n_unestimated} | {_f(e.median_deg)} | "
                f"{_f(e.mean_deg)} | {_f(e.within_share, True)} % |"
            )
        lines.append("")
    if "projection" in plots and report.projection is not None:
        lines += ["## Embedding projection (Fig. 2)", "", f"![projection]({plots['projection']})", ""]
    if report.notes:
        lines += ["## Notes", "", *[f"- {n}" for n in report.notes], ""]
    lines += ["## Timings (s)", "", ", ".join(f"{k} {v}" for k, v in report.timings_s.items()), ""]
    return "\n".join(lines)


def write_report(report: Report, out_dir: str | Path) -> ReportFiles:
    """Write report.json, report.md, samples.parquet and plots/*.png under ``out_dir``."""
    out = Path(out_dir)
    (out / "plots").mkdir(parents=True, exist_ok=True)
    plots: dict[str, str] = {}
    if report.projection is not None and report.projection.x:
        plots["projection"] = str(
            plot_projection(report.projection, out / "plots" / "projection.png").relative_to(out)
        )
    n_bins = int(report.config.get("probe", {}).get("n_bins", 10))
    p = plot_doa_boxplots(report.samples, list(report.rows), out / "plots" / "doa_boxplots.png", n_bins)
    if p is not None:
        plots["doa_boxplots"] = str(p.relative_to(out))
    first = next(iter(report.rows.values()), None)
    for name, res in first.real.items() if first else []:
        safe = "".join(c if c.isalnum() or c in "-_" else "_" for c in name)
        q = plot_real_by_class(res, name, out / "plots" / f"real_{safe}.png")
        if q is not None:
            plots[f"real_{name}"] = str(q.relative_to(out))
    samples_path = None
    if report.samples.get("key"):
        import pandas as pd

        samples_path = out / "samples.parquet"
        pd.DataFrame(report.samples).to_parquet(samples_path, index=False)
    body = _finite(
        report.model_dump(
            mode="json", exclude={"samples": True, "projection": {"x", "y", "modality", "direction"}}
        )
    )
    body["plots"] = plots
    body["headline"] = report.headline()
    (out / "report.json").write_text(json.dumps(body, indent=1, allow_nan=False))
    (out / "report.md").write_text(render_markdown(report, plots))
    return ReportFiles(
        out_dir=str(out.resolve()),
        report_json=str((out / "report.json").resolve()),
        report_md=str((out / "report.md").resolve()),
        samples=str(samples_path.resolve()) if samples_path else None,
        plots=[str((out / v).resolve()) for v in plots.values()],
    )
