"""Commit a set of samples the way the build flow does, for tests that need a dataset on storage.

Per planned shard, what ``tasks.build_stages.build_shard`` does once its samples are rendered
(skip on a verified receipt, else ``commit_shard``), then what the flow's finalize task does
(``finalize_dataset``). No other way to write a dataset exists: this only skips the rendering.
Rejects given with the samples are recorded as the ``source`` stage's reject part.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from pathlib import Path

import pyarrow as pa
from conftest import FoaClip, make_sample

from schemas.shards import RejectRow
from tasks.commit import (
    MANIFEST_SCHEMA,
    ShardCommit,
    commit_shard,
    dataset_uri,
    finalize_dataset,
    put_rejects,
    verified_receipt,
)
from tasks.shard_writer import DEFAULT_MAX_BYTES, DEFAULT_MAX_SAMPLES, ShardPlan, ShardSample, plan_samples
from tasks.storage import StorageConfig, open_storage

DS, VER = "spatial_audiocaps", "v1"


def many(clips: list[FoaClip], n: int, split: str = "train", start: int = 0) -> list[ShardSample]:
    """n distinct samples (distinct clip ids) reusing the rendered audio."""
    return [
        make_sample(clips[i % len(clips)], split=split, clip_id=f"c{start + i:05d}", aug=1 + i % 2, n=i)
        for i in range(n)
    ]


@dataclass(frozen=True)
class Committed:
    base: str
    plans: list[ShardPlan]
    shards: dict[str, ShardCommit]
    rows: pa.Table

    @property
    def outcomes(self) -> Counter[str]:
        return Counter(c.outcome for c in self.shards.values())


def commit_samples(
    items: Iterable[ShardSample | RejectRow],
    root: str,
    *,
    max_samples: int = DEFAULT_MAX_SAMPLES,
    max_bytes: int = DEFAULT_MAX_BYTES,
    tmp_dir: Path | None = None,
    storage_config: StorageConfig | None = None,
    progress: Callable[[int], None] | None = None,
) -> Committed:
    """Shard, commit and finalize ``items`` (samples and earlier rejects) under ``root/DS/VER``."""
    items = list(items)
    samples = [i for i in items if isinstance(i, ShardSample)]
    rejects = [i for i in items if isinstance(i, RejectRow)]
    storage = open_storage(root, storage_config)
    base = dataset_uri(root, DS, VER)
    by_key = {s.key: s for s in samples}
    shards: dict[str, ShardCommit] = {}
    plans = plan_samples(samples, max_samples=max_samples, max_bytes=max_bytes)
    for plan in plans:
        listed = verified_receipt(storage, base, plan)
        shards[plan.name] = (
            ShardCommit("skipped", listed, 0)
            if listed is not None
            else commit_shard(storage, base, plan, by_key, tmp_dir=tmp_dir, progress=progress)
        )
    put_rejects(storage, base, "source", rejects)
    finalize_dataset(storage, base, plans, {"dataset": DS, "version": VER})
    rows = pa.concat_tables([MANIFEST_SCHEMA.empty_table(), *(c.rows for c in shards.values())])
    return Committed(base, plans, shards, rows)
