"""The dataset card's binaural section: interaural cues of the rendered set against its labels.

A binaural member is only worth shipping if its ears agree with the label: a source labelled left
must be louder (ILD, 1-4 kHz) and earlier (ITD) at the left ear. The card measures that on the
audio actually written, not on the HRTF: it reads the ``binaural`` members of the first
single-source spatial samples in shard order (scenes with several sources have no one azimuth),
measures ILD and ITD with ``tasks.binaural.interaural_cues`` and plots both against the labelled
azimuth. Reading stops after ``limit`` samples or ``MAX_SHARDS`` shards (a scene build's samples
all have several sources), so the section costs the same at any scale.
"""

from __future__ import annotations

import itertools
from collections.abc import Iterable
from typing import Any

import numpy as np

from schemas.shards import SHARD_SAMPLE_RATE, BinauralCueStats
from tasks.binaural import interaural_cues
from tasks.shard_reader import decode_audio, read_shard, sample_audio
from tasks.shard_writer import ShardSample
from tasks.storage import Storage

BINAURAL = "binaural"
CARD_SAMPLES = 300
MAX_SHARDS = 8
LATERAL_DEG = (30.0, 150.0)


def binaural_points(
    shard_uris: Iterable[str], storage: Storage, limit: int = CARD_SAMPLES
) -> tuple[np.ndarray, list[str], list[int]]:
    """(n, 4) rows of (azimuth, elevation, ILD dB, ITD s) of up to ``limit`` single-source binaural
    samples, their renderer ids and scene orders, in shard order; at most MAX_SHARDS shards are
    read, and only until ``limit`` is met."""
    rows: list[tuple[float, float, float, float]] = []
    ids: set[str] = set()
    orders: set[int] = set()
    for uri in itertools.islice(shard_uris, MAX_SHARDS):
        for s in read_shard(uri, storage=storage, decode=False):
            if not _single_binaural(s):
                continue
            member = s.record.formats[BINAURAL]  # type: ignore[index]
            ears = decode_audio(sample_audio(s, BINAURAL), s.record, fmt=BINAURAL)
            ild, itd = interaural_cues(ears, SHARD_SAMPLE_RATE)
            rows.append((s.record.labels.azimuth_deg, s.record.labels.elevation_deg, ild, itd))  # type: ignore[union-attr]
            ids.add(member.audio.renderer_id or BINAURAL)
            orders.add(member.scene_order)
            if len(rows) >= limit:
                return np.asarray(rows), sorted(ids), sorted(orders)
    return np.asarray(rows).reshape(-1, 4), sorted(ids), sorted(orders)


def _single_binaural(s: ShardSample | Any) -> bool:
    return (isinstance(s, ShardSample) and s.record.labels is not None and s.record.sources is None
            and BINAURAL in (s.record.formats or {}))


def cue_stats(points: np.ndarray, renderer_ids: list[str], scene_orders: list[int]) -> BinauralCueStats:
    """How often the ears agree with the labelled side, over the clearly lateral samples."""
    az = points[:, 0] if len(points) else np.zeros(0)
    lateral = (np.abs(az) > LATERAL_DEG[0]) & (np.abs(az) < LATERAL_DEG[1])
    left = az[lateral] > 0
    n = int(lateral.sum())

    def agree(column: int) -> float | None:
        return round(float(np.mean((points[lateral, column] > 0) == left)), 4) if n else None

    return BinauralCueStats(samples=len(points), renderer_ids=renderer_ids, scene_orders=scene_orders,
                            lateral_samples=n,
                            ild_side_agreement=agree(2), itd_side_agreement=agree(3))


def cue_figure(points: np.ndarray, stats: BinauralCueStats, plt: Any) -> Any:
    """ILD and ITD of the rendered set against labelled azimuth (+90 = left), coloured by elevation."""
    fig, (a, b) = plt.subplots(1, 2, figsize=(9.0, 3.4))
    for ax, column, scale, unit in ((a, 2, 1.0, "ILD 1-4 kHz (dB, + = left louder)"),
                                    (b, 3, 1e6, "ITD (us, + = left leads)")):
        sc = ax.scatter(points[:, 0], points[:, column] * scale, c=points[:, 1], s=12, cmap="viridis",
                        vmin=-90, vmax=90)
        ax.axhline(0.0, color="0.6", lw=0.8)
        ax.set_xlim(-180, 180)
        ax.set_xlabel("labelled azimuth (deg, +90 = left)")
        ax.set_ylabel(unit)
    agree = stats.ild_side_agreement
    a.set_title(f"{stats.samples} samples; ILD side agrees {100 * agree:.0f} %" if agree is not None
                else f"{stats.samples} samples")
    agree = stats.itd_side_agreement
    b.set_title(f"ITD side agrees {100 * agree:.0f} %" if agree is not None else "ITD")
    fig.colorbar(sc, ax=b, label="elevation (deg)")
    fig.tight_layout()
    return fig
