"""prompts.parquet in, captions.parquet out (columns: schemas.captions.PROMPT_COLUMNS, RESULT_SCHEMA).

The input may carry descriptors (five word columns) or the measured numbers (five float columns,
described here with a DescriptorConfig). Captions may be binary so that undecodable bytes reach
the screen and get a reject row rather than failing the read. Output files are written to a
temporary name and renamed, so a reader never sees half a file.
"""

from __future__ import annotations

import os
import tempfile
from collections.abc import Sequence
from pathlib import Path
from typing import BinaryIO

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
from pydantic import TypeAdapter, ValidationError

from schemas.captions import (
    ATTRIBUTE_COLUMNS,
    DESCRIPTOR_COLUMNS,
    PROMPT_COLUMNS,
    DescriptorConfig,
    Descriptors,
    RephraseRequest,
    RephraseResult,
    SourceWords,
)
from tasks.descriptors import DEFAULT_DESCRIPTOR_CONFIG, describe_arrays
from tasks.errors import SpatialAudioCapsError
from tasks.rephrase.cache import KEY_TYPE

_STRINGS = pa.list_(pa.string())
RESULT_SCHEMA = pa.schema([
    ("sample_id", pa.string()), ("status", pa.string()), ("caption", pa.string()),
    ("original_caption", pa.string()), ("prompt", pa.string()),
    *((c, pa.string()) for c in DESCRIPTOR_COLUMNS),
    ("backend", pa.string()), ("model", pa.string()), ("produced_by", pa.string()), ("attempts", pa.int32()),
    ("seed", pa.int64()), ("generated_tokens", pa.int64()), ("reject_reason", pa.string()),
    ("passed", pa.bool_()), ("flaws", _STRINGS), ("missing", _STRINGS), ("contradictions", _STRINGS),
    ("unsupported", _STRINGS), ("content_recall", pa.float64()), ("novel_words", _STRINGS),
    ("changed_sources", _STRINGS), ("invented_sources", _STRINGS), ("meaning_changes", _STRINGS),
    ("attempt_flaws", pa.list_(_STRINGS)), ("cached", pa.bool_()),
])
"""captions.parquet: one row per request, in input order."""


STAGE_REQUEST_SCHEMA = pa.schema([
    ("sample_id", pa.string()),
    ("caption", pa.string()), ("caption_bytes", pa.binary()),
    ("seed", pa.int64()),
    *((c, pa.string()) for c in DESCRIPTOR_COLUMNS),
    ("key", KEY_TYPE),
    ("scene", pa.string()),
])
"""The caption stage's requests.parquet: prompts.parquet's columns, plus ``caption_bytes`` (a caption
given as raw bytes, ``caption`` then null: the schema is fixed before the first batch is written,
and the cache key tells str from bytes), ``key``, the request's cache key, computed once by the
writer so that deciding which batches are finished never builds a request, and ``scene``, a scene
request's sources as JSON (null for ELSA requests)."""
_SCENE = TypeAdapter(list[SourceWords])


def requests_table(requests: Sequence[RephraseRequest], keys: Sequence[str]) -> pa.Table:
    """STAGE_REQUEST_SCHEMA's columns for ``requests`` and their cache keys (hex)."""
    text = [r.caption if isinstance(r.caption, str) else None for r in requests]
    raw = [r.caption if isinstance(r.caption, bytes) else None for r in requests]
    return pa.table({
        "sample_id": pa.array([r.sample_id for r in requests], pa.string()),
        "caption": pa.array(text, pa.string()),
        "caption_bytes": pa.array(raw, pa.binary()),
        "seed": pa.array([r.seed for r in requests], pa.int64()),
        **{c: pa.array([getattr(r.descriptors, c) for r in requests], pa.string())
           for c in DESCRIPTOR_COLUMNS},
        "key": pa.array([bytes.fromhex(k) for k in keys], KEY_TYPE),
        "scene": pa.array([None if r.scene is None else _SCENE.dump_json(r.scene).decode() for r in requests],
                          pa.string()),
    }, schema=STAGE_REQUEST_SCHEMA)


def requests_from_table(table: pa.Table) -> list[RephraseRequest]:
    """The requests of a STAGE_REQUEST_SCHEMA table (one batch of requests.parquet), in order."""
    cols = {c: table.column(c).to_pylist() for c in STAGE_REQUEST_SCHEMA.names if c != "key"}
    return [
        RephraseRequest(
            sample_id=cols["sample_id"][i],
            caption=cols["caption"][i] if cols["caption"][i] is not None else cols["caption_bytes"][i],
            seed=cols["seed"][i],
            descriptors=Descriptors(**{c: cols[c][i] for c in DESCRIPTOR_COLUMNS}),
            scene=None if cols["scene"][i] is None else _SCENE.validate_json(cols["scene"][i]),
        )
        for i in range(table.num_rows)
    ]


def read_requests(
    path: str | Path | BinaryIO, cfg: DescriptorConfig = DEFAULT_DESCRIPTOR_CONFIG, default_seed: int = 0
) -> list[RephraseRequest]:
    """Requests from prompts.parquet (``default_seed`` where it has no seed column); a file that
    breaks the column contract is a typed error."""
    try:
        table = pq.read_table(path)
    except (OSError, pa.ArrowException) as exc:
        raise SpatialAudioCapsError(f"cannot read {path}: {exc}") from exc
    cols = set(table.column_names)
    if missing := {"sample_id", "caption"} - cols:
        raise SpatialAudioCapsError(
            f"{path}: missing columns {sorted(missing)}; expected {sorted(PROMPT_COLUMNS)}"
        )
    ids = [str(v) for v in table.column("sample_id").to_pylist()]
    if len(set(ids)) != len(ids):
        raise SpatialAudioCapsError(f"{path}: sample_id is not unique")
    captions = [c if c is not None else "" for c in table.column("caption").to_pylist()]
    seeds = table.column("seed").to_pylist() if "seed" in cols else [default_seed] * len(ids)
    if set(DESCRIPTOR_COLUMNS) <= cols:
        rows = zip(*(table.column(c).to_pylist() for c in DESCRIPTOR_COLUMNS), strict=True)
        try:
            descriptors = [Descriptors(**dict(zip(DESCRIPTOR_COLUMNS, row, strict=True))) for row in rows]
        except ValidationError as exc:
            raise SpatialAudioCapsError(f"{path}: bad descriptor value: {exc}") from exc
    elif set(ATTRIBUTE_COLUMNS) <= cols:
        arrays = [table.column(c).to_numpy(zero_copy_only=False).astype(np.float64)
                  for c in ATTRIBUTE_COLUMNS]
        descriptors = describe_arrays(*arrays, cfg=cfg)
    else:
        raise SpatialAudioCapsError(
            f"{path}: needs the descriptor columns {list(DESCRIPTOR_COLUMNS)} "
            f"or the attribute columns {list(ATTRIBUTE_COLUMNS)}"
        )
    try:
        return [
            RephraseRequest(sample_id=i, caption=c, descriptors=d, seed=default_seed if s is None else int(s))
            for i, c, d, s in zip(ids, captions, descriptors, seeds, strict=True)
        ]
    except ValidationError as exc:
        raise SpatialAudioCapsError(f"{path}: bad row: {exc}") from exc


def results_table(results: list[RephraseResult]) -> pa.Table:
    """Flatten results into RESULT_SCHEMA's columns."""
    def row(r: RephraseResult) -> dict:
        v = r.validation
        return {
            "sample_id": r.sample_id, "status": r.status, "caption": r.caption,
            "original_caption": r.original_caption, "prompt": r.prompt,
            **{c: getattr(r.descriptors, c) for c in DESCRIPTOR_COLUMNS},
            "backend": r.backend, "model": r.model, "produced_by": r.produced_by, "attempts": r.attempts,
            "seed": r.seed, "generated_tokens": r.generated_tokens,
            "reject_reason": r.reject_reason.value if r.reject_reason else None,
            "passed": v.passed if v else None, "flaws": [f.value for f in v.flaws] if v else None,
            "missing": v.missing if v else None, "contradictions": v.contradictions if v else None,
            "unsupported": v.unsupported if v else None, "content_recall": v.content_recall if v else None,
            "novel_words": v.novel_words if v else None,
            "changed_sources": v.changed_sources if v else None,
            "invented_sources": v.invented_sources if v else None,
            "meaning_changes": v.meaning_changes if v else None,
            "attempt_flaws": [[f.value for f in a] for a in r.attempt_flaws], "cached": r.cached,
        }

    return pa.Table.from_pylist([row(r) for r in results], schema=RESULT_SCHEMA)


def write_results(results: list[RephraseResult], path: str | Path) -> Path:
    """captions.parquet, written atomically."""
    out = Path(path)
    out.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=out.parent, prefix=f".{out.name}.", suffix=".part")
    os.close(fd)
    try:
        pq.write_table(results_table(results), tmp)
        os.replace(tmp, out)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    return out
