"""JSON Schema export of every record that crosses a stage or lands in storage."""

from __future__ import annotations

import json
from pathlib import Path

from pydantic import BaseModel

from schemas.audio import AudioPrepConfig, PreparedClip, RenderedInfo, SourceInfo
from schemas.captions import DescriptorConfig, RephraseRequest, RephraseResult, RephraseSettings
from schemas.doa import DoaEstimate
from schemas.room_set import RoomSetConfig
from schemas.rooms import Placement, RirRecord, RirSettings, RoomSpec
from schemas.scenes import SceneConfig, ScenePlan, SceneSourceLabels
from schemas.shards import DatasetCard, ManifestRow, RejectRow, SampleRecord
from schemas.sources import SourceClip, SourceReject

MODELS: tuple[type[BaseModel], ...] = (
    RoomSetConfig, RoomSpec, Placement, RirSettings, RirRecord, DoaEstimate,
    AudioPrepConfig, SourceInfo, PreparedClip, RenderedInfo, SourceClip, SourceReject,
    DescriptorConfig, RephraseSettings, RephraseRequest, RephraseResult, SceneConfig, ScenePlan,
    SceneSourceLabels,
    SampleRecord, ManifestRow, RejectRow, DatasetCard,
)


def write_json_schemas(out_dir: Path) -> list[Path]:
    """Write one ``<Model>.schema.json`` per model; returns the paths written."""
    out_dir.mkdir(parents=True, exist_ok=True)
    written = []
    for model in MODELS:
        path = out_dir / f"{model.__name__}.schema.json"
        path.write_text(json.dumps(model.model_json_schema(mode="serialization"), indent=2) + "\n")
        written.append(path)
    return written
