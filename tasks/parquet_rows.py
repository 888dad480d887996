"""Parquet tables on any storage, written in row groups and read by row range.

The build keeps its per-sample tables (the plan, the caption requests and results) on storage
instead of in the flow process, and a task gets a row range, not a list of records. Writing goes
through a local temporary file and one verified upload, so a table far larger than memory is
written batch by batch; reading a range opens the object seekably (a range read on s3://) and
decodes only the row groups that overlap it.
"""

from __future__ import annotations

import tempfile
from collections.abc import Iterable, Iterator
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq

from tasks.storage import digest_file, open_storage, part_size_for

ROW_GROUP = 4096
"""Rows per row group unless a caller chooses: a range read decodes at most two partial groups."""


def write_table_parts(
    uri: str, schema: pa.Schema, parts: Iterable[pa.Table | pa.RecordBatch], *, row_group: int = ROW_GROUP
) -> int:
    """Write ``parts`` (in order) as one parquet object at ``uri``; returns the row count.

    Rows are regrouped into row groups of exactly ``row_group`` rows (the last may be shorter),
    so a reader can map a row index to its group without the footer's help, and the caption stage
    can make one row group one batch.
    """
    storage = open_storage(uri)
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "table.parquet"
        n = 0
        with pq.ParquetWriter(path, schema) as writer:
            pending: list[pa.RecordBatch] = []
            held = 0
            for part in parts:
                batches = part.to_batches() if isinstance(part, pa.Table) else [part]
                for batch in batches:
                    pending.append(batch)
                    held += batch.num_rows
                    while held >= row_group:
                        table = pa.Table.from_batches(pending, schema=schema)
                        writer.write_table(table.slice(0, row_group), row_group_size=row_group)
                        rest = table.slice(row_group)
                        pending, held = rest.to_batches(), rest.num_rows
                        n += row_group
            if held:
                writer.write_table(pa.Table.from_batches(pending, schema=schema), row_group_size=row_group)
                n += held
        digest = digest_file(path, part_size_for(path.stat().st_size, storage.config))
        storage.upload_file(path, uri, sha256=digest.hexdigest(), digest=digest)
    return n


def read_rows(uri: str, start: int, stop: int, columns: list[str] | None = None) -> pa.Table:
    """Rows ``[start, stop)`` of the parquet object at ``uri``, decoding only the overlapping groups."""
    if stop <= start:
        raise ValueError(f"empty row range [{start}, {stop}) of {uri}")
    storage = open_storage(uri)
    with storage.open_read(uri, random_access=True) as fh:
        pf = pq.ParquetFile(fh)
        groups, first, offset = [], None, 0
        for g in range(pf.metadata.num_row_groups):
            rows = pf.metadata.row_group(g).num_rows
            if offset + rows > start and offset < stop:
                groups.append(g)
                first = offset if first is None else first
            offset += rows
        if first is None or stop > offset:
            raise IndexError(f"rows [{start}, {stop}) are not all in {uri} ({offset} rows)")
        table = pf.read_row_groups(groups, columns=columns)
    return table.slice(start - first, stop - start)


def iter_row_groups(uri: str, columns: list[str] | None = None) -> Iterator[pa.Table]:
    """Every row group of the object in order: a whole table in bounded memory."""
    storage = open_storage(uri)
    with storage.open_read(uri) as fh:
        pf = pq.ParquetFile(fh)
        for g in range(pf.metadata.num_row_groups):
            yield pf.read_row_group(g, columns=columns)
