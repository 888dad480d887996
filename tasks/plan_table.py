"""The sample plan on storage: ``plan.parquet`` in shard order, read back one shard's row range.

The plan is the one per-sample table the whole build derives from. Kept as a parquet object in the
version directory (written by the plan task, never held by the flow process), it lets a shard task
receive just ``(start, stop)`` and read its own items, whatever the dataset's size.
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator

import pyarrow as pa

from schemas.scenes import ScenePlan
from tasks.parquet_rows import iter_row_groups, read_rows, write_table_parts
from tasks.plan import PlanItem

PLAN = "plan.parquet"

PLAN_SCHEMA = pa.schema([
    ("key", pa.string()), ("dataset", pa.string()), ("split", pa.string()), ("clip_id", pa.string()),
    ("aug", pa.int32()), ("placement_id", pa.string()), ("captions", pa.list_(pa.string())),
    ("audio_uri", pa.string()), ("small_eval", pa.bool_()), ("seed", pa.int64()),
    ("scene", pa.string()),
])
"""``scene``: the drawn ScenePlan as JSON (null for ELSA samples): nested, validated once when read."""


def _row(item: PlanItem) -> dict:
    row = item.model_dump(exclude={"scene"})
    row["scene"] = item.scene.model_dump_json() if item.scene is not None else None
    return row


def _table(items: list[PlanItem]) -> pa.Table:
    return pa.Table.from_pylist([_row(i) for i in items], schema=PLAN_SCHEMA)


def write_plan(items: Iterable[PlanItem], uri: str, *, part: int = 8192) -> int:
    """Write the items, in the order given (shard order), as ``uri``; returns the row count."""

    def parts() -> Iterator[pa.Table]:
        held: list[PlanItem] = []
        for item in items:
            held.append(item)
            if len(held) == part:
                yield _table(held)
                held = []
        if held:
            yield _table(held)

    return write_table_parts(uri, PLAN_SCHEMA, parts())


def _items(table: pa.Table) -> list[PlanItem]:
    """Rows the plan task wrote from validated PlanItems: constructed, not validated again."""
    rows = table.to_pylist()
    return [PlanItem.model_construct(**{
        **row, "captions": tuple(row["captions"]),
        "scene": ScenePlan.model_validate_json(row["scene"]) if row["scene"] is not None else None,
    }) for row in rows]


def read_plan(uri: str, start: int, stop: int) -> list[PlanItem]:
    """The plan's rows ``[start, stop)``: one shard's items."""
    return _items(read_rows(uri, start, stop))


def iter_plan(uri: str) -> Iterator[PlanItem]:
    """Every item in shard order, a row group at a time."""
    for table in iter_row_groups(uri):
        yield from _items(table)


def iter_plan_keys(uri: str) -> Iterator[str]:
    """Every sample key in shard order, reading only the key column (what shard plans need)."""
    for table in iter_row_groups(uri, columns=["key"]):
        yield from table.column("key").to_pylist()


def iter_scenes(uri: str) -> Iterator[tuple[str, ScenePlan]]:
    """(key, scene) of every scene sample, reading only those two columns (the dataset card's scene
    section); nothing for an ELSA plan."""
    for table in iter_row_groups(uri, columns=["key", "scene"]):
        keys, scenes = table.column("key").to_pylist(), table.column("scene").to_pylist()
        for key, scene in zip(keys, scenes, strict=True):
            if scene is not None:
                yield key, ScenePlan.model_validate_json(scene)
