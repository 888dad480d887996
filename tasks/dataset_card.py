"""The dataset card: card.json, README.md and plots/*.png, computed from the manifest alone.

Every number is recomputed from ``manifest.parquet`` (and ``rejects.parquet``), so the card can
be rebuilt at any time (``spatial-audiocaps report URI``) and always agrees with what is listed.
The manifest is read as Arrow, only the columns the card needs (``CARD_COLUMNS``), and every
statistic is a vectorised reduction over them: a paper-scale manifest is never a list of rows.
The statistics follow the ELSA paper's Tables A.T.1 (samples and hours per split) and A.T.2
(ranges of azimuth, elevation, distance, floor area and T30 for train & val and for test),
plus descriptor frequencies, caption quality (validation and fallback rates; per rephraser
backend: first-pass rate, retries, fallback rate and the flaws of every failed attempt) and label
QA figures.

Plots use matplotlib's Agg backend (no display): one histogram per label with its descriptor
bands shaded, and a room-size scatter (floor area against T30, one point per room).
"""

from __future__ import annotations

import io
import itertools
import json
import math
from collections.abc import Iterator, Sequence
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq

from schemas.captions import DescriptorConfig
from schemas.measured import MeasuredRoom
from schemas.scenes import ScenePlan, SceneStats, SpeedStats
from schemas.shards import (
    AMBIX_FORMAT,
    DESCRIPTOR_ATTRIBUTES,
    TETRA_FORMAT,
    BackendCaptionStats,
    BankCredit,
    BinauralCueStats,
    CaptionStats,
    DatasetCard,
    LabelQA,
    LabelRange,
    RealismStats,
    SplitStats,
)
from tasks.binaural_card import BINAURAL, binaural_points, cue_figure, cue_stats
from tasks.commit import MANIFEST, read_manifest, read_rejects
from tasks.descriptors import SLOT_LABELS
from tasks.descriptors import descriptor_bands as table_bands
from tasks.errors import SpatialAudioCapsError
from tasks.plan_table import PLAN, iter_scenes
from tasks.scene_card import scene_figures, tally
from tasks.storage import Storage, join_uri, open_storage, safe_uri

CARD_JSON = "card.json"
CARD_README = "README.md"
PLOTS_DIR = "plots"
ROOMS = "rooms.parquet"
PLACEMENTS = "placements.parquet"
BUILD_JSON = "build.json"
LABELS: tuple[tuple[str, str, str], ...] = (  # manifest column, title, unit
    ("azimuth_deg", "Source azimuth", "deg (+90 = left)"),
    ("elevation_deg", "Source elevation", "deg (+90 = up)"),
    ("distance_m", "Source distance", "m"),
    ("floor_area_m2", "Room floor area", "m²"),
    ("t30_s", "Full-band T30", "s"),
)
SPLIT_GROUPS: dict[str, tuple[str, ...]] = {"train_val": ("train", "val"), "test": ("test",)}


def descriptor_bands(cfg: DescriptorConfig | None = None) -> dict[str, list[tuple[str, float, float]]]:
    """The descriptor table's bands per label column (tasks.descriptors, the table the captions use),
    clipped to each label's range, for shading."""
    ranges = {"azimuth_deg": (-180.0, 180.0), "elevation_deg": (-90.0, 90.0)}
    out = {}
    for slot, bands in table_bands(cfg or DescriptorConfig()).items():
        column = SLOT_LABELS[slot]
        lo, hi = ranges.get(column, (0.0, math.inf))
        out[column] = [(b.word, max(b.lo, lo), min(b.hi, hi)) for b in bands]
    return out


DESCRIPTOR_BANDS = descriptor_bands()
_BAND_COLOURS = {
    "front": "#1b9e77",
    "left": "#d95f02",
    "right": "#7570b3",
    "back": "#e7298a",
    "up": "#66a61e",
    "down": "#e6ab02",
    "near": "#1b9e77",
    "far": "#d95f02",
    "small": "#1b9e77",
    "large": "#d95f02",
    "acoustically dampened": "#1b9e77",
    "highly reverberant": "#d95f02",
}
_SPLIT_COLOURS = {"train": "#4c72b0", "val": "#dd8452", "test": "#55a868"}


# --------------------------------------------------------------------------------------------
# numbers




def _round(x: float | None, nd: int = 6) -> float | None:
    return None if x is None or not math.isfinite(x) else round(float(x), nd)


def _sum(t: pa.Table, column: str) -> Any:
    return pc.sum(t.column(column)).as_py() or 0


def _values(t: pa.Table, column: str) -> np.ndarray:
    """The non-null values of a numeric column as float64."""
    return np.asarray(pc.drop_null(t.column(column)).to_numpy(), dtype=float)


def _where(t: pa.Table, column: str, values: Sequence[str]) -> pa.Table:
    return t.filter(pc.is_in(t.column(column), value_set=pa.array(values, pa.string())))


def _spatial(t: pa.Table, columns: Sequence[str]) -> pa.Table:
    """``columns`` of the spatial rows (select first: a filter copies every column it keeps)."""
    return t.select(list(columns)).filter(t.column("spatial"))


def _rooms(t: pa.Table) -> int:
    return pc.count_distinct(t.column("room_id"), mode="only_valid").as_py()


def _counts(column: pa.ChunkedArray | pa.Array) -> dict[str, int]:
    """value -> occurrences (nulls left out)."""
    return {d["values"]: d["counts"] for d in pc.value_counts(column).to_pylist() if d["values"] is not None}


SPLIT_COLUMNS = ("split", "shard", "shard_size", "spatial", "duration_s", "source_dataset", "source_id",
                 "room_id")
CAPTION_COLUMNS = ("n_captions", "n_validated", "n_fallback", "caption_attempts", "n_first_pass", "n_retried",
                   "caption_retries", "caption_flaws", "rephraser_backend", "rephraser_model")


CARD_COLUMNS = (
    *SPLIT_COLUMNS, "azimuth_deg", "elevation_deg", "distance_m", "floor_area_m2", "t30_s", "target_t30_s",
    "volume_m3", "direct_doa_error_deg", *(f"desc_{a}" for a in DESCRIPTOR_ATTRIBUTES), *CAPTION_COLUMNS,
    "pipeline_version", "room_set_hash",
)  # the manifest columns the card reads (never the captions' text)


def split_stats(t: pa.Table) -> SplitStats:
    shards = t.select(["shard", "shard_size"]).group_by("shard").aggregate([("shard_size", "max")])
    spatial = _sum(t, "spatial")
    return SplitStats(
        samples=t.num_rows,
        spatial_samples=spatial,
        mono_samples=t.num_rows - spatial,
        hours=round(_sum(t, "duration_s") / 3600.0, 6),
        clips=t.select(["source_dataset", "source_id"]).group_by(["source_dataset", "source_id"]).aggregate(
            []
        ).num_rows,
        rooms=_rooms(t),
        shards=shards.num_rows,
        bytes=_sum(shards, "shard_size_max"),
    )


def label_range(t: pa.Table, column: str) -> LabelRange:
    vals = _values(t, column)
    vals = vals[np.isfinite(vals)]
    return LabelRange(
        min=_round(vals.min()) if vals.size else None, max=_round(vals.max()) if vals.size else None,
        count=int(vals.size),
    )


def descriptor_frequencies(t: pa.Table) -> dict[str, dict[str, int]]:
    """attribute -> word -> spatial samples; "none" counts samples between bands (no word)."""
    return {
        attr: dict(sorted(_counts(pc.fill_null(_spatial(t, [f"desc_{attr}"]).column(0), "none")).items()))
        for attr in DESCRIPTOR_ATTRIBUTES
    }


def _rate(k: int, n: int) -> float | None:
    return _round(k / n) if n else None


def backend_caption_stats(backend: str, model: str | None, t: pa.Table) -> BackendCaptionStats:
    """Caption quality of one backend's spatial samples. Flaws are counted by whatever names occur
    (the OutputFlaw set grows), most frequent first."""
    n = _sum(t, "n_captions")
    first, retried = _sum(t, "n_first_pass"), _sum(t, "n_retried")
    retries, fb = _sum(t, "caption_retries"), _sum(t, "n_fallback")
    flaws = _counts(pc.list_flatten(t.column("caption_flaws")))
    return BackendCaptionStats(
        backend=backend,
        model=model,
        captions=n,
        first_pass=first,
        first_pass_rate=_rate(first, n),
        retries=retries,
        mean_retries=_rate(retries, n),
        retried=retried,
        retried_rate=_rate(retried, n),
        fallback=fb,
        fallback_rate=_rate(fb, n),
        flaw_counts=dict(sorted(flaws.items(), key=lambda kv: (-kv[1], kv[0]))),
    )


def caption_stats(t: pa.Table) -> CaptionStats:
    """Rates over every spatial caption, and per rephraser (backend, model) of the build."""
    spatial = _spatial(t, CAPTION_COLUMNS)
    n = _sum(spatial, "n_captions")
    val, fb = _sum(spatial, "n_validated"), _sum(spatial, "n_fallback")
    att = _sum(spatial, "caption_attempts")
    backend = pc.fill_null(spatial.column("rephraser_backend"), "none")
    model = pc.fill_null(spatial.column("rephraser_model"), "")
    pairs = pa.table({"b": backend, "m": model}).group_by(["b", "m"]).aggregate([]).to_pylist()
    backends = [
        backend_caption_stats(p["b"], p["m"] or None,
                              spatial.filter(pc.and_(pc.equal(backend, p["b"]), pc.equal(model, p["m"]))))
        for p in sorted(pairs, key=lambda p: (p["b"], p["m"]))
    ]
    return CaptionStats(
        captions=n,
        validated=val,
        fallback=fb,
        validated_rate=_rate(val, n),
        fallback_rate=_rate(fb, n),
        mean_attempts=_rate(att, n),
        backends=backends,
    )


def label_qa(t: pa.Table) -> LabelQA:
    errs = _values(t, "direct_doa_error_deg")
    t30 = t.select(["t30_s", "target_t30_s"])
    measured = t30.filter(pc.and_(pc.is_valid(t30.column(0)), pc.not_equal(t30.column(1), 0.0)))
    rel = np.abs(_values(measured, "t30_s") / _values(measured, "target_t30_s") - 1.0)
    return LabelQA(
        direct_doa_error_deg_median=_round(float(np.median(errs))) if errs.size else None,
        direct_doa_error_deg_p95=_round(float(np.percentile(errs, 95))) if errs.size else None,
        direct_doa_error_deg_max=_round(float(errs.max())) if errs.size else None,
        direct_doa_error_over_5deg=int((errs > 5.0).sum()),
        t30_rel_error_median=_round(float(np.median(rel))) if rel.size else None,
        t30_rel_error_max=_round(float(rel.max())) if rel.size else None,
    )


def _unique(t: pa.Table, column: str) -> list[str]:
    """Sorted distinct non-empty values."""
    return sorted(v for v in pc.unique(t.column(column)).to_pylist() if v)


def compute_card(
    rows: pa.Table,
    rejects: pa.Table,
    *,
    dataset: str,
    version: str,
    generated_at: str | None = None,
    plots: Sequence[str] = (),
) -> DatasetCard:
    """All card numbers from a manifest table (``CARD_COLUMNS`` at least) and a rejects table (its
    ``reason`` column at least), vectorised (pure)."""
    splits = _unique(rows, "split")
    ranges: dict[str, dict[str, LabelRange]] = {}
    rooms: dict[str, int] = {}
    groups = {**SPLIT_GROUPS, **{s: (s,) for s in splits}}
    spatial = _spatial(rows, ["split", "room_id", *(c for c, _, _ in LABELS)])
    for g, members in groups.items():
        rs = _where(spatial, "split", members)
        ranges[g] = {col: label_range(rs, col) for col, _, _ in LABELS}
        rooms[g] = _rooms(rs)
    return DatasetCard(
        dataset=dataset,
        version=version,
        generated_at=generated_at
        or datetime.now(UTC).replace(microsecond=0).isoformat().replace("+00:00", "Z"),
        pipeline_versions=_unique(rows, "pipeline_version"),
        room_set_hashes=_unique(rows, "room_set_hash"),
        source_datasets=_unique(rows, "source_dataset"),
        totals=split_stats(rows),
        splits={s: split_stats(_where(rows.select(SPLIT_COLUMNS), "split", [s])) for s in splits},
        ranges=ranges,
        group_rooms=rooms,
        descriptor_frequencies=descriptor_frequencies(rows),
        captions=caption_stats(rows),
        label_qa=label_qa(rows),
        rejects=dict(sorted(_counts(rejects.column("reason")).items())),
        plots=list(plots),
    )


# --------------------------------------------------------------------------------------------
# plots


def _plt() -> Any:
    import matplotlib

    matplotlib.use("Agg", force=True)
    import matplotlib.pyplot as plt

    return plt


def _png(fig: Any) -> bytes:
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=110, metadata={"Software": None})
    _plt().close(fig)
    return buf.getvalue()


def label_histogram(rows: pa.Table, column: str, title: str, unit: str) -> bytes:
    """Histogram of one label, stacked by split, with its descriptor bands shaded and named."""
    plt = _plt()
    fig, ax = plt.subplots(figsize=(7.0, 3.6))
    data = {s: _values(_where(rows.select(["split", column]), "split", [s]), column)
            for s in ("train", "val", "test")}
    data = {s: v for s, v in data.items() if v.size}
    n = sum(v.size for v in data.values())
    lo, hi = (min(v.min() for v in data.values()), max(v.max() for v in data.values())) if n else (0.0, 1.0)
    if column == "azimuth_deg":
        lo, hi = -180.0, 180.0
    elif column == "elevation_deg":
        lo, hi = min(lo, -50.0), max(hi, 50.0)
    pad = 0.02 * (hi - lo or 1.0)
    lo, hi = lo - pad, hi + pad
    seen = set()
    for word, a, b in DESCRIPTOR_BANDS.get(column, []):
        a, b = max(a, lo), min(b, hi)
        if a >= b:
            continue
        ax.axvspan(
            a,
            b,
            color=_BAND_COLOURS.get(word, "#999999"),
            alpha=0.18,
            lw=0,
            label=None if word in seen else f'"{word}"',
        )
        seen.add(word)
    if data:
        bins = np.linspace(lo, hi, 37)
        ax.hist(
            list(data.values()),
            bins=bins,
            stacked=True,
            label=list(data),
            color=[_SPLIT_COLOURS[s] for s in data],
            edgecolor="white",
            linewidth=0.4,
        )
    ax.set_xlim(lo, hi)
    ax.set_xlabel(f"{title} ({unit})")
    ax.set_ylabel("samples")
    ax.set_title(f"{title}: {n} samples; shaded: descriptor bands")
    ax.legend(fontsize=7, ncol=2, loc="upper right", framealpha=0.8)
    fig.tight_layout()
    return _png(fig)


def room_scatter(rows: pa.Table) -> bytes:
    """One point per room: floor area against T30, by split, with size/reverb bands marked (a
    room's first row in manifest order gives its point)."""
    plt = _plt()
    fig, ax = plt.subplots(figsize=(6.4, 4.4))
    cols = ["split", "room_id", "floor_area_m2", "t30_s", "volume_m3"]
    placed = rows.select(cols).filter(
        pc.and_(pc.is_valid(rows.column("room_id")),
                pc.and_(pc.is_valid(rows.column("floor_area_m2")), pc.is_valid(rows.column("t30_s"))))
    )
    rooms = placed.group_by(["split", "room_id"], use_threads=False).aggregate(
        [(c, "first", pc.ScalarAggregateOptions(skip_nulls=False)) for c in cols[2:]]
    )
    for split in ("train", "val", "test"):
        pts = _where(rooms, "split", [split])
        if pts.num_rows:
            volume = np.nan_to_num(np.asarray(pts.column("volume_m3_first").to_numpy(), dtype=float))
            ax.scatter(
                pts.column("floor_area_m2_first").to_numpy(),
                pts.column("t30_s_first").to_numpy(),
                s=8 + 0.08 * volume,
                alpha=0.7,
                color=_SPLIT_COLOURS[split],
                label=f"{split} ({pts.num_rows} rooms)",
                edgecolor="k",
                lw=0.3,
            )
    (small, large), (dampened, reverberant) = DESCRIPTOR_BANDS["floor_area_m2"], DESCRIPTOR_BANDS["t30_s"]
    for x, word, ha in ((small[2], "small ← ", "right"), (large[1], " → large", "left")):
        ax.axvline(x, color="#777777", ls="--", lw=0.8)
        ax.text(x, 1.0, word, transform=ax.get_xaxis_transform(), ha=ha, va="bottom", fontsize=7)
    for y, word in ((dampened[2], "dampened <"), (reverberant[1], "> highly reverberant")):
        ax.axhline(y, color="#777777", ls=":", lw=0.8)
        ax.text(1.0, y, f" {word}", transform=ax.get_yaxis_transform(), va="center", fontsize=7)
    ax.set_xscale("log")
    ax.set_yscale("log")
    from matplotlib.ticker import FuncFormatter, LogLocator

    plain = FuncFormatter(lambda v, _: f"{v:g}")
    for axis in (ax.xaxis, ax.yaxis):
        axis.set_major_locator(LogLocator(base=10, subs=(1.0, 2.0, 5.0)))
        axis.set_major_formatter(plain)
        axis.set_minor_formatter(FuncFormatter(lambda v, _: ""))
    ax.set_xlabel("floor area (m²)")
    ax.set_ylabel("measured full-band T30 (s)")
    ax.set_title("Rooms: size against reverberation (marker area ~ volume)")
    if rooms.num_rows:
        ax.legend(fontsize=7, loc="lower right")
    fig.tight_layout()
    return _png(fig)


def render_plots(rows: pa.Table) -> dict[str, bytes]:
    """{relative path: PNG bytes} of every card plot, from a manifest table's columns."""
    spatial = _spatial(rows, ["split", "room_id", "volume_m3", *(c for c, _, _ in LABELS)])
    out = {f"{PLOTS_DIR}/{c}.png": label_histogram(spatial, c, title, unit) for c, title, unit in LABELS}
    out[f"{PLOTS_DIR}/room_size.png"] = room_scatter(spatial)
    return out


# --------------------------------------------------------------------------------------------
# README


def _fmt(x: float | None, scale: float = 1.0, nd: int = 1) -> str:
    return "–" if x is None else f"{x * scale:.{nd}f}"


def _cell(text: str) -> str:
    """A markdown table cell: a model path or name may hold a pipe."""
    return text.replace("|", "\\|")


def _hours(h: float) -> str:
    return f"{h:.2f}" if h >= 10 else f"{h:.4f}"


def _range(r: LabelRange | None, scale: float = 1.0, nd: int = 1, unit: str = "") -> str:
    if r is None or r.min is None:
        return "–"
    return f"[{_fmt(r.min, scale, nd)}, {_fmt(r.max, scale, nd)}]{unit}"


def _speed(v: SpeedStats, unit: str) -> str:
    if not v.count:
        return "none"
    median = _fmt(v.median, 1, 2)
    return f"{v.count} sources, {_fmt(v.min, 1, 2)}–{_fmt(v.max, 1, 2)} {unit} (median {median})"


def _binaural_lines(b: BinauralCueStats) -> list[str]:
    def share(x: float | None) -> str:
        return "n/a" if x is None else f"{100 * x:.1f} %"

    return [
        "", "## Binaural members", "",
        f"Interaural cues measured on the `.binaural.flac` members of {b.samples} single-source samples "
        f"(renderer {', '.join(f'`{r}`' for r in b.renderer_ids)}; HRTF and decoder named in each json). "
        f"Of the {b.lateral_samples} clearly lateral ones (30° < |azimuth| < 150°), the 1-4 kHz ILD is "
        f"louder at the labelled side's ear in {share(b.ild_side_agreement)} and the ITD leads there in "
        f"{share(b.itd_side_agreement)}. Plot: `plots/binaural_cues.png`.",
        *([f"Decoded from order-{min(b.scene_orders)} scenes: below order 3 a linear decode shortens the ITD "
           "(about 0.2 ms instead of 0.7 ms at ±90° for order 1), so ITD cues are weaker than a listener's; "
           "build with rir.order=3 and formats foa,binaural for accurate ones."] if b.scene_orders and
          min(b.scene_orders) < 3 else []),
    ]


def _scene_lines(sc: SceneStats) -> list[str]:
    """The README's scene section: what a SELD or multi-source user checks first."""
    per = ", ".join(f"{k}: {v}" for k, v in sc.sources_per_scene.items())
    poly = ", ".join(f"{k}: {v:.1f} s" for k, v in sc.polyphony_seconds.items())
    return [
        "", "## Scenes", "",
        f"- {sc.scenes} scenes with {sc.sources} sources; sources per scene: {per}.",
        f"- Moving: {_fmt(sc.moving_share, 100)} % of sources ({sc.motion['linear']} linear, "
        f"{sc.motion['arc']} arc, {sc.motion['static']} static).",
        f"- Linear speeds: {_speed(sc.linear_speed_mps, 'm/s')}; "
        f"arc speeds: {_speed(sc.arc_speed_dps, 'deg/s')}.",
        f"- Overlap: two or more sources sound during {_fmt(sc.overlap_share, 100)} % of scene time "
        f"(sources at once: {poly}).",
        f"- Diffuse background in {_fmt(sc.background_share, 100)} % of scenes.",
        "- Each scene sample's json has `sources` (clip, interval, gain, 100 ms trajectory) and a `.csv` "
        "member in the DCASE/STARSS23 metadata format.",
    ]


def render_readme(card: DatasetCard, *, uri: str = "") -> str:
    """README.md of a dataset version: the card as tables (paper A.T.1/A.T.2 style) and plots."""
    lines = [f"# {card.dataset} · {card.version}", ""]
    lines += [
        f"Generated {card.generated_at} from `manifest.parquet`"
        f"{f' at `{uri}`' if uri else ''} by spatial-audiocaps "
        f"{', '.join(card.pipeline_versions) or '?'}. Room sets: {', '.join(card.room_set_hashes) or '–'}; "
        f"sources: {', '.join(card.source_datasets) or '–'}.",
        "",
    ]
    lines += [
        "## Samples (Table A.T.1)",
        "",
        "| split | samples | spatial | mono | hours | clips | rooms | shards | GB |",
        "|---|---:|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for name, s in [*card.splits.items(), ("all", card.totals)]:
        lines.append(
            f"| {name} | {s.samples} | {s.spatial_samples} | {s.mono_samples} | {_hours(s.hours)} | "
            f"{s.clips} | {s.rooms} | {s.shards} | {s.bytes / 1e9:.3f} |"
        )
    tv, te = card.ranges.get("train_val", {}), card.ranges.get("test", {})
    lines += ["", "## Spatial attributes (Table A.T.2)", "", "| | train & val | test |", "|---|---|---|"]
    lines.append(
        f"| rooms | {card.group_rooms.get('train_val', 0)} | {card.group_rooms.get('test', 0)} |"
    )
    for col, label, scale, nd, unit in (
        ("azimuth_deg", "source azimuth", 1, 1, "°"),
        ("elevation_deg", "source elevation", 1, 1, "°"),
        ("distance_m", "source distance", 1, 2, " m"),
        ("floor_area_m2", "room floor area", 1, 1, " m²"),
        ("t30_s", "full-band T30", 1000, 1, " ms"),
    ):
        lines.append(
            f"| {label} | {_range(tv.get(col), scale, nd, unit)} | {_range(te.get(col), scale, nd, unit)} |"
        )
    lines += [
        "",
        "## Descriptor frequencies (spatial samples; none = between bands, no word)",
        "",
        "| attribute | words |",
        "|---|---|",
    ]
    for attr, freq in card.descriptor_frequencies.items():
        lines.append(f"| {attr} | " + ", ".join(f"{w}: {n}" for w, n in freq.items()) + " |")
    c = card.captions
    lines += [
        "",
        "## Captions",
        "",
        f"{c.captions} spatial captions; validated {_fmt(c.validated_rate, 100)} %, template fallback "
        f"{_fmt(c.fallback_rate, 100)} %, mean LLM attempts {_fmt(c.mean_attempts, 1, 2)}.",
        "",
        "Per rephraser: first pass = accepted on the first attempt; retries = generations after the "
        "first (new seeds after a failed validation); fallback = the template's caption after every "
        "attempt failed; flaws = why attempts failed, counted over every failed attempt.",
        "",
        "| backend | model | captions | first pass | retries | retries / caption | ≥ 1 retry | fallback "
        "| flaws over all attempts |",
        "|---|---|---:|---:|---:|---:|---:|---:|---|",
    ]
    for b in c.backends:
        flaws = ", ".join(f"{k}: {v}" for k, v in b.flaw_counts.items()) or "–"
        lines.append(
            f"| {b.backend} | {_cell(b.model or '–')} | {b.captions} | {_fmt(b.first_pass_rate, 100)} % | "
            f"{b.retries} | {_fmt(b.mean_retries, 1, 2)} | {_fmt(b.retried_rate, 100)} % | "
            f"{_fmt(b.fallback_rate, 100)} % | {flaws} |"
        )
    q = card.label_qa
    lines += [
        "",
        "## Label QA",
        "",
        f"- Direct-path intensity DOA of each rendered RIR against its label: median "
        f"{_fmt(q.direct_doa_error_deg_median, 1, 3)}°, p95 {_fmt(q.direct_doa_error_deg_p95, 1, 3)}°, "
        f"max {_fmt(q.direct_doa_error_deg_max, 1, 3)}°; {q.direct_doa_error_over_5deg} over 5°.",
        f"- Measured T30 against the room's target: median |error| {_fmt(q.t30_rel_error_median, 100)} %, "
        f"max {_fmt(q.t30_rel_error_max, 100)} %.",
        "- `spatial-audiocaps inspect URI` re-checks directions on the audio itself.",
    ]
    if card.scenes is not None:
        lines += _scene_lines(card.scenes)
    if card.binaural is not None:
        lines += _binaural_lines(card.binaural)
    if card.realism is not None:
        lines += _realism_lines(card.realism)
    for bank in card.measured_banks or []:
        lines += ["", f"## Measured rooms: bank `{bank.bank_id}`", "",
                  f"- Rooms: {', '.join(bank.rooms)}; "
                  + ("each held out whole in one split." if bank.rooms_held_out_whole else
                     "too few to hold rooms out whole: a room's positions are spread over train, val and "
                     "test, so test rooms are heard in training."),
                  f"- Source: {bank.source}",
                  f"- Licence ({bank.licence_source}): {bank.licence}",
                  "- Labels come from the bank's positions table; each RIR's direct-sound DOA is checked "
                  "against its label (Label QA), and T30/EDT/DRR/C50 are measured on the recording."]
    lines += ["", "## Rejects", ""]
    lines += [f"- {k}: {v}" for k, v in card.rejects.items()] or ["None."]
    lines += ["", "## Plots", ""] + [f"![{Path(p).stem}]({p})" for p in card.plots]
    lines += [
        "",
        "## Loading",
        "",
        "```python",
        "import webdataset as wds",
        "# shards: {split}/{split}-NNNNNN.tar; sizes.json beside them (LAION-CLAP's convention)",
        "ds = wds.WebDataset(urls, shardshuffle=False)  # members: .flac (48 kHz ambiX) and .json",
        "# json['text'] is the list of spatial captions; labels, descriptors, provenance ride along",
        "```",
        "",
    ]
    return "\n".join(lines)


# --------------------------------------------------------------------------------------------
# the stage


def _scenes_of(st: Storage, base: str) -> Iterator[ScenePlan]:
    """The drawn scenes of the manifest's samples, streamed from plan.parquet; none for ELSA builds
    (whose manifest keys are then never read) or a version without a plan."""
    plan = join_uri(base, PLAN)
    if not st.exists(plan):
        return
    scenes = iter_scenes(plan)
    first = next(scenes, None)
    if first is None:
        return
    keys = set(read_manifest(st, base, ["key"]).column("key").to_pylist())
    for key, scene in itertools.chain([first], scenes):
        if key in keys:
            yield scene


def _bank_credits(st: Storage, base: str) -> list[BankCredit] | None:
    """The measured banks of the version's rooms (rooms.parquet), with provenance and licence;
    None for simulated rooms (or a version without rooms.parquet)."""
    uri = join_uri(base, ROOMS)
    if not st.exists(uri):
        return None
    banks: dict[str, list[MeasuredRoom]] = {}
    for row in pq.read_table(io.BytesIO(st.read_bytes(uri))).to_pylist():
        if row.get("bank_id") is not None:  # a shoebox row has no bank_id column
            room = MeasuredRoom.model_validate(row)
            banks.setdefault(room.bank_id, []).append(room)  # type: ignore[arg-type]
    return [BankCredit(bank_id=bank_id, source=rooms[0].source or "unknown",
                       licence=rooms[0].licence.text if rooms[0].licence else "unknown",
                       licence_source=rooms[0].licence.source if rooms[0].licence else "none found",
                       rooms=sorted(r.name for r in rooms),
                       rooms_held_out_whole=all(r.split is not None for r in rooms))
            for bank_id, rooms in sorted(banks.items())] or None


def _binaural_section(st: Storage, base: str, plots: dict[str, bytes]) -> BinauralCueStats | None:
    """Measured ILD/ITD of the version's binaural members (tasks/binaural_card.py) and their plot;
    None when no sample has a binaural member. Only the shards holding one are opened, in order."""
    try:
        t = read_manifest(st, base, ["shard", "formats"])
    except KeyError:  # a version finalized before further formats existed has none
        return None
    formats = t.column("formats").combine_chunks()
    with_binaural = pc.list_parent_indices(formats).filter(pc.equal(pc.list_flatten(formats), BINAURAL))
    if not len(with_binaural):
        return None
    shards = dict.fromkeys(t.column("shard").take(with_binaural).to_pylist())
    points, ids, orders = binaural_points((join_uri(base, s) for s in shards), st)
    stats = cue_stats(points, ids, orders)
    if len(points):
        plots[f"{PLOTS_DIR}/binaural_cues.png"] = _png(cue_figure(points, stats, _plt()))
    return stats


def _realism_section(st: Storage, base: str) -> RealismStats | None:
    """The realism options of the version (build.json) and the drawn source patterns
    (placements.parquet); None when every option is off, as in ELSA builds."""
    build, placements = join_uri(base, BUILD_JSON), join_uri(base, PLACEMENTS)
    if not st.exists(build):
        return None
    cfg = json.loads(st.read_bytes(build))
    noise, rir = (cfg.get("audio") or {}).get("sensor_noise"), cfg.get("rir") or {}
    turn = (cfg.get("audio") or {}).get("tail_turn")
    patterns = None
    if st.exists(placements):
        t = pq.read_table(io.BytesIO(st.read_bytes(placements)))
        if "source_pattern" in t.column_names:
            patterns = {k: v for k, v in _counts(t.column("source_pattern")).items() if k != "None"} or None
    stats = RealismStats(flac_format=(cfg.get("formats") or [AMBIX_FORMAT])[0],
                         sensor_snr_db=tuple(noise["snr_db"]) if noise else None,
                         sensor_noise_spectrum=noise["spectrum"] if noise else None,
                         scattering=bool(rir.get("scattering")), tail_flow=bool(rir.get("tail_flow")),
                         tail_turn_after_s=turn["after_s"] if turn else None, source_patterns=patterns)
    ideal = (stats.flac_format != TETRA_FORMAT and noise is None and not stats.scattering
             and not stats.tail_flow and turn is None and patterns is None)
    return None if ideal else stats


def _realism_lines(r: RealismStats) -> list[str]:
    capture = ("a simulated tetrahedral microphone (`tetra`: four spaced cardioid capsules, A->B encoded; "
               "spatial aliasing above a few kHz, as real B-format has)" if r.flac_format == TETRA_FORMAT
               else "the ideal SN3D encoder (exact at every frequency)")
    noise = (f"{r.sensor_snr_db[0]:g}-{r.sensor_snr_db[1]:g} dB SNR, {r.sensor_noise_spectrum}, drawn per "
             "sample (`rendered.sensor_snr_db` in each json)" if r.sensor_snr_db else "none")
    patterns = (", ".join(f"{k}: {v}" for k, v in sorted(r.source_patterns.items()))
                if r.source_patterns else "omnidirectional")
    return ["", "## Capture chain and sources", "",
            f"- `.flac` audio: {capture}.", f"- Sensor noise: {noise}.",
            f"- Source directivity (placements per pattern): {patterns}.",
            "- Surface scattering: " + ("on (an earlier diffuse onset, T30 unchanged)." if r.scattering
                                        else "off."),
            "- Diffuse field: " + ("flows into the absorbing surfaces, as a real late field does (T30 "
                                   "unchanged)." if r.tail_flow else "isotropic."),
            "- Late field turned: " + (f"from {r.tail_turn_after_s * 1000:g} ms after the direct sound, by "
                                       "each sample's own random rotation (`rendered.tail_turn_quat` in each "
                                       "json; labels unchanged)." if r.tail_turn_after_s else "no.")]


def write_card(uri: str, *, storage: Storage | None = None, generated_at: str | None = None) -> DatasetCard:
    """Rebuild card.json, README.md and plots/*.png of a dataset version from its manifest (only
    ``CARD_COLUMNS``, as Arrow) and the reasons of its rejects."""
    st = storage or open_storage(uri)
    base = uri.rstrip("/")
    if not st.exists(join_uri(base, MANIFEST)):
        raise SpatialAudioCapsError(f"no {MANIFEST} under {safe_uri(base)}: not a dataset version root")
    rows = read_manifest(st, base, CARD_COLUMNS)
    pa.default_memory_pool().release_unused()  # the decoder's freed pages: ~0.4x the table at 890k rows
    rejects = read_rejects(st, base, ["reason"])
    parts = base.rstrip("/").split("/")
    dataset, version = (parts[-2], parts[-1]) if len(parts) >= 2 else ("dataset", parts[-1])
    plots = render_plots(rows)
    scenes = tally(_scenes_of(st, base))
    stats = scenes.stats()
    if stats is not None:
        figures = scene_figures(stats, scenes.speeds, _plt())
        plots.update({f"{PLOTS_DIR}/{name}.png": _png(fig) for name, fig in figures.items()})
    cues = _binaural_section(st, base, plots)
    card = compute_card(
        rows, rejects, dataset=dataset, version=version, generated_at=generated_at, plots=sorted(plots)
    ).model_copy(update={"scenes": stats, "binaural": cues, "measured_banks": _bank_credits(st, base),
                         "realism": _realism_section(st, base)})
    for rel, png in sorted(plots.items()):
        st.put_bytes(join_uri(base, rel), png, content_type="image/png")
    st.put_bytes(
        join_uri(base, CARD_README),
        render_readme(card, uri=safe_uri(base)).encode(),
        content_type="text/markdown",
    )
    st.put_bytes(
        join_uri(base, CARD_JSON),
        (card.model_dump_json(indent=2) + "\n").encode(),
        content_type="application/json",
    )
    return card


__all__ = [
    "CARD_COLUMNS",
    "CARD_JSON",
    "CARD_README",
    "DESCRIPTOR_BANDS",
    "LABELS",
    "backend_caption_stats",
    "caption_stats",
    "compute_card",
    "descriptor_frequencies",
    "label_histogram",
    "label_qa",
    "label_range",
    "render_plots",
    "render_readme",
    "room_scatter",
    "split_stats",
    "write_card",
]
