"""A build's parameters, split by what they change.

``BuildConfig`` holds everything that changes the data; its hash, with the room set's, names the
dataset version. ``RunOptions`` holds how and where a build runs (task sizes, workers, the caption
stage's placement, the rephraser's endpoint and engine), which changes no byte of the dataset, so
tuning it reuses a version and every shard already in it. One model of each, used unchanged by the
flow's parameters, the CLI's ``--config``/``--set`` and prefect.yaml's deployments.
"""

from __future__ import annotations

from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator

from room_specs import DEFAULT_CONFIG
from schemas.audio import AudioPrepConfig
from schemas.captions import CaptionSettings, EngineOptions
from schemas.rooms import RirSettings, Split
from schemas.scenes import SceneConfig
from schemas.shards import AMBIX_FORMAT, FLAC_FORMATS
from schemas.sources import SourceName

BANK_SOURCES = ("measured", "twin")
"""Room sources that read a measured bank: its recordings, or (twin) its geometry and T30 for shoeboxes."""

UNVERSIONED = frozenset({"input", "room_config", "bank"})
"""BuildConfig fields that name where the data comes from, not what it is: the room set's content is
in its own hash, and a clone elsewhere or a copy of the corpus must get the same version."""


class BuildConfig(BaseModel):
    """Everything that changes a build's data; its hash (with the room-set hash) names the version."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    source: SourceName = "demo"
    input: str | None = Field(None, description="the source's CSV, directory or tars (not versioned)")
    dataset: str | None = Field(None, description="dataset name in keys and paths; default: the source")
    room_config: str = Field(str(DEFAULT_CONFIG), description="room-set YAML (its rooms are versioned)")
    room_source: str = Field(
        "ism", pattern=r"^[a-z][a-z0-9_]*$", exclude_if=lambda v: v == "ism",
        description="where the rooms and RIRs come from (tasks/rir_sources.py RIR_SOURCES): ism, the paper's "
        "simulated shoeboxes (room_config); measured, a recorded SRIR bank (bank), whose rooms are held "
        "out whole per split (room_seed picks which); twin, shoebox twins of a bank's rooms (same positions, "
        "the measured T30): the simulator's gap to the real rooms",
    )
    bank: str | None = Field(
        None, description="the measured bank: a SOFA file (SingleRoomSRIR/GeneralFIR), a folder of ambiX/FuMa"
        " WAVs with labels_derived.csv, or a folder of such room folders (not versioned: its files' content "
        "is, through the room-set hash)",
    )
    bank_format: Literal["ambix", "fuma", "n3d"] | None = Field(
        None, exclude_if=lambda v: v is None,
        description="the bank's channel format; default: its manifest, SOFA attribute, README text or data",
    )
    room_seed: int = 0
    n_rooms: int | None = Field(None, description="rooms to sample (default: the config's count)")
    augmentations: dict[Split, int] = Field(default_factory=lambda: {"train": 2, "val": 2, "test": 2})
    rephraser: CaptionSettings = CaptionSettings()
    rir: RirSettings = RirSettings()
    audio: AudioPrepConfig = AudioPrepConfig()
    shard_size: int = Field(256, ge=1)
    shard_membership: Literal["mixed", "locality"] = Field(
        "mixed", description="mixed: a split's samples spread over shards by sha256(key), so a shard holds "
        "many rooms, directions and clips (what contrastive training needs from a small shuffle buffer); "
        "locality: runs in RIR-bank order (placement, then clip), so a shard task touches 1-2 bank chunks "
        "and decodes a clip once for two of its samples, but at paper scale a shard then holds ~2 "
        "placements. Either way a shard task reads only the RIRs it uses (byte ranges of the chunks)",
    )
    scenes: SceneConfig | None = Field(
        None, exclude_if=lambda v: v is None,
        description="the scene distribution (sources per scene, motion, overlap, levels, background; "
        "room_specs/scenes_demo.yaml); None: ELSA's one static source per sample, and then the field is "
        "absent from the versioned dump, so ELSA builds keep their versions and bytes",
    )
    formats: tuple[str, ...] = Field(
        (AMBIX_FORMAT,), exclude_if=lambda v: v == (AMBIX_FORMAT,),
        description="output formats of every spatial sample, rendered from the same scene. First the "
        "``.flac`` member (what LAION-CLAP loaders read): ``ambix`` (the scene at the RIR order) or ``foa`` "
        "(its first order: with rir.order 3, FOA beside accurate binaural/mic) or ``tetra`` (first-order "
        "B-format as a tetrahedral Soundfield-like microphone delivers it, spatial aliasing included: "
        "tasks/capture_chain.py; use rir.order 3); then any further "
        "registered renderer, each its own member: ``binaural`` (2 channels, left first, "
        "``{key}.binaural.flac``), ``mic`` (DCASE's 4-capsule tetrahedral array, ``{key}.mic.flac``). "
        "Left out of the versioned dump when ambiX alone",
    )
    seed: int = 0
    limit: int | None = Field(None, ge=1, description="at most this many source clips")

    @field_validator("scenes")
    @classmethod
    def _elsa_is_none(cls, v: SceneConfig | None) -> SceneConfig | None:
        """A scene config that draws ELSA's scenes (one static source, no background) is the ELSA
        default itself: same version, same shards (its duration is then unused, as in ELSA)."""
        return None if v is not None and v.is_elsa else v

    @model_validator(mode="after")
    def _bank_iff_measured(self) -> BuildConfig:
        if (self.room_source in BANK_SOURCES) != (self.bank is not None):
            raise ValueError(f"room sources {list(BANK_SOURCES)} need a bank, and a bank needs one of them")
        if self.bank_format is not None and self.bank is None:
            raise ValueError("bank_format is the format of a bank: give the bank")
        if self.scenes is not None and self.audio.tail_turn is not None:
            raise ValueError("audio.tail_turn turns the one RIR of a single-source sample; a scene mixes "
                             "many (moving sources): build scenes without it")
        if self.formats[0] == AMBIX_FORMAT and self.rir.order > 1:
            raise ValueError(f"an ambix .flac of order {self.rir.order} has {(self.rir.order + 1) ** 2} "
                             "channels and FLAC holds at most 8: write foa as the .flac (formats foa,...)")
        return self

    @field_validator("formats", mode="before")
    @classmethod
    def _flac_first(cls, v: Any) -> Any:
        """A comma-separated string is a list; the ``.flac`` format (ambix, foa or tetra; ambix when
        none is named) comes first, each format once."""
        if isinstance(v, str):
            v = [f.strip() for f in v.split(",") if f.strip()]
        names = list(v)
        if len(set(names)) != len(names):
            raise ValueError(f"formats repeat a format: {names}")
        flac = [f for f in names if f in FLAC_FORMATS]
        if len(flac) > 1:
            raise ValueError(f"one .flac format (ambix, foa or tetra), got {flac}")
        return (*(flac or [AMBIX_FORMAT]), *(f for f in names if f not in FLAC_FORMATS))

    def versioned(self) -> dict[str, Any]:
        """The fields that change the data (everything but UNVERSIONED), as hashed and as build.json."""
        return self.model_dump(mode="json", exclude=set(UNVERSIONED))


class RunOptions(BaseModel):
    """How and where a build runs: none of it enters the version, so changing it rebuilds nothing."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    rir_chunk: int = Field(16, ge=1, description="placements per RIR-bank task")
    rir_cache_mib: int = Field(
        128, ge=1, description="MiB of RIR-bank chunks a worker process keeps between its shard tasks (LRU): "
        "neighbouring shards share chunks; RIRs are ~1 MiB and a shard uses 10-170 of them",
    )
    shard_window: int | None = Field(
        None, ge=1, description="shard tasks in flight at once (default: 2 per worker); the rest wait "
        "in the flow as small references, so a 3,500-shard build never submits 3,500 tasks at once",
    )
    caption_batch: int = Field(512, ge=1, description="captions per caption-stage batch (the resume unit)")
    n_workers: int = Field(2, ge=1, description="Dask LocalCluster worker processes")
    scheduler_address: str | None = Field(None, description="an existing Dask scheduler instead")
    progress: bool = Field(False, description="progress bars on stderr")
    rephrase_deployment: str | None = Field(
        None, description="flow/deployment of rephrase-captions that runs the caption stage on the GPU pool; "
        "None: the stage runs on the build's own workers with the named backend",
    )
    rephrase_workers: int = Field(1, ge=1, description="caption-stage workers, each with one backend/engine")
    rephrase_timeout_s: float = Field(48 * 3600, gt=0, description="longest wait for the GPU pool's runs")
    engine: EngineOptions = Field(
        EngineOptions(), description="the rephraser's endpoint and engine (OpenAI server, vLLM parallelism "
        "and memory, transformers device)",
    )


class ShardStats(BaseModel):
    """One shard task's outcome and costs: what a scale benchmark needs, O(shards) in the flow."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    shard: str
    outcome: str = Field(description="uploaded, adopted, empty, or skipped (verified receipt)")
    samples: int
    rejects: int
    render_cpu_s: float = Field(description="CPU seconds of decoding, convolving and encoding its samples")
    bank_bytes_read: int = Field(description="RIR-bank bytes this task fetched from storage (cache misses)")
    bank_bytes_used: int = Field(description="bytes of the RIRs its samples use")


class BuildResult(BaseModel):
    """What a build made, and how much of it was already there (cached chunks, skipped shards)."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    uri: str
    dataset: str
    version: str
    samples: int
    rejects: int
    shards: dict[str, int] = Field(description="shard count per outcome: uploaded, skipped, adopted, empty")
    rir_chunks_cached: int
    rir_chunks_rendered: int
    rir_cpu_s: float = Field(description="CPU seconds of rendering the RIR-bank chunks that were not cached")
    card: str
    shard_stats: list[ShardStats] = Field(description="what each shard task did and read, in shard order")

