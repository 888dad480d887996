"""plan.parquet and the row-range tables under it: what a shard task reads instead of the flow's lists."""

from __future__ import annotations

import pyarrow as pa
import pytest

from tasks.parquet_rows import iter_row_groups, read_rows, write_table_parts
from tasks.plan import PlanItem
from tasks.plan_table import iter_plan, iter_plan_keys, read_plan, write_plan


def _items(n: int) -> list[PlanItem]:
    return [PlanItem(key=f"d_train_c{k:05d}_{k % 3}", dataset="d", split="train", clip_id=f"c{k}", aug=k % 3,
                     placement_id=None if k % 3 == 0 else f"room-{k % 7}-train-0",
                     captions=tuple(f"caption {k}.{j} – naïve" for j in range(1 + k % 5)),
                     audio_uri=f"demo://0/{k}", small_eval=k % 11 == 0, seed=7) for k in range(n)]


def test_plan_round_trips_in_the_order_written_and_by_row_range(tmp_path):
    items = _items(10_000)
    uri = str(tmp_path / "plan.parquet")
    assert write_plan(iter(items), uri, part=777) == len(items)
    assert list(iter_plan(uri)) == items  # order kept, every field equal (captions as tuples)
    assert list(iter_plan_keys(uri)) == [i.key for i in items]  # the key column alone, same order
    for start, stop in [(0, 1), (4090, 4100), (4096, 8192), (9_999, 10_000), (123, 9_877)]:
        assert read_plan(uri, start, stop) == items[start:stop]


def test_row_ranges_decode_only_what_they_need_and_refuse_rows_that_are_not_there(tmp_path):
    schema = pa.schema([("i", pa.int64())])
    uri = str(tmp_path / "t.parquet")
    parts = (pa.table({"i": list(range(a, min(a + 333, 2500)))}, schema=schema) for a in range(0, 2500, 333))
    assert write_table_parts(uri, schema, parts, row_group=1000) == 2500
    assert [t.num_rows for t in iter_row_groups(uri)] == [1000, 1000, 500]  # fixed groups, whatever the parts
    assert read_rows(uri, 999, 1001)["i"].to_pylist() == [999, 1000]
    with pytest.raises(IndexError):
        read_rows(uri, 2400, 2501)
    with pytest.raises(ValueError):
        read_rows(uri, 5, 5)


def test_plan_on_s3_is_read_by_range(s3):
    items = _items(3000)
    uri = f"s3://{s3.bucket}/ds/v1/plan.parquet"
    write_plan(items, uri)
    assert read_plan(uri, 2990, 3000) == items[2990:]
    assert sum(1 for _ in iter_plan(uri)) == 3000
