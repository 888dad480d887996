"""Records of the shard stage: the sample json inside a shard, manifest and reject rows, the card.

``SampleRecord`` is the ``.json`` member beside each ``.flac`` in a WebDataset shard. Its ``text``
field is the list of spatial captions, which is what the LAION-CLAP and open_clip audio loaders
read; everything else (original captions, every label, the descriptors, the caption validation
flags and the provenance) rides along so that a single shard is self-describing.

``ManifestRow`` is one row of ``manifest.parquet``: flat columns, so that pandas/pyarrow filters
work without unnesting. ``RejectRow`` is one row of ``rejects.parquet``. ``DatasetCard`` is
``card.json``. None of these models holds a credential or a signed URL (see tasks/storage.py).
"""

from __future__ import annotations

import re
from enum import StrEnum
from typing import Literal, Self

from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator

from schemas.audio import FlacSubtype, PreparedClip, RejectReason, RenderedInfo
from schemas.captions import Descriptors
from schemas.rooms import Split
from schemas.scenes import SceneSourceLabels, SceneStats

SCHEMA_VERSION = "shards/1"
SHARD_SAMPLE_RATE = 48000
# Key parts: webdataset splits a member name at its first dot, and "-" separates the key parts.
DATASET_RE = re.compile(r"^[a-z0-9_]{1,32}$")
CLIP_RE = re.compile(r"^[A-Za-z0-9_-]{1,64}$")

# The format of a non-spatial original (the dry clip); every other format is a spatial renderer's.
MONO_FORMAT = "mono"
AMBIX_FORMAT = "ambix"
"""The default format of a spatial sample's ``.flac`` member: ambiX ACN/SN3D at the RIR order
(tasks.renderers.Ambix)."""
FOA_FORMAT = "foa"
"""The other ``.flac`` format: the scene's first order only (tasks.renderers.FirstOrder)."""
TETRA_FORMAT = "tetra"
"""A ``.flac`` format too: first-order B-format as a real tetrahedral microphone delivers it, the
scene captured by four spaced directional capsules and A->B encoded (tasks.capture_chain)."""
FLAC_FORMATS = (AMBIX_FORMAT, FOA_FORMAT, TETRA_FORMAT)
FORMAT_RE = r"^[a-z][a-z0-9_]{0,31}$"

DESCRIPTOR_ATTRIBUTES: tuple[str, ...] = ("distance", "direction", "elevation", "reverb", "size")


class ShardRejectReason(StrEnum):
    """Why a sample did not make it into a shard. Audio decoding problems reuse RejectReason."""

    DUPLICATE_KEY = "duplicate_key"
    """A second sample with a key already taken; the first one seen is kept."""
    CORRUPT_MEMBER = "corrupt_member"
    """Tar bytes that do not parse as a member header (skipped up to the next valid header)."""
    MISSING_MEMBER = "missing_member"
    """A sample without both its .flac and its .json member."""
    UNEXPECTED_MEMBER = "unexpected_member"
    """A member whose extension is neither flac nor json."""
    INVALID_JSON = "invalid_json"
    """The .json member is not UTF-8 JSON."""
    INVALID_RECORD = "invalid_record"
    """The .json member does not validate as a SampleRecord."""
    KEY_MISMATCH = "key_mismatch"
    """The record's key differs from the member name's key."""
    AUDIO_MISMATCH = "audio_mismatch"
    """The FLAC disagrees with the record: sample rate, channels, length or sha256."""


REJECT_CODES: frozenset[str] = frozenset(r.value for r in RejectReason) | frozenset(
    r.value for r in ShardRejectReason
)


class SpatialLabels(BaseModel):
    """Measured labels of one spatial sample (DESIGN.md conventions: +azimuth = left, metres, s)."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    azimuth_deg: float = Field(gt=-180.0, le=180.0)
    elevation_deg: float = Field(ge=-90.0, le=90.0)
    distance_m: float = Field(gt=0.0)
    t30_s: float | None = Field(description="full-band Schroeder T30 of the rendered W; None if anechoic")
    target_t30_s: float | None = None
    edt_s: float | None = None
    drr_db: float
    c50_db: float | None = None
    floor_area_m2: float | None = Field(
        None, gt=0.0, exclude_if=lambda v: v is None,
        description="None (absent) for a measured room whose bank gives no dimensions",
    )
    volume_m3: float | None = Field(None, gt=0.0, exclude_if=lambda v: v is None)
    room_dims_m: tuple[float, float, float] | None = Field(None, exclude_if=lambda v: v is None)
    direct_doa_error_deg: float = Field(
        ge=0.0, description="direct-path intensity DOA of the rendered RIR against the label"
    )
    room_id: str
    placement_id: str


class CaptionInfo(BaseModel):
    """One spatial caption, where it came from and whether it passed validation."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    original: str
    spatial: str = Field(min_length=1)
    backend: str = Field(description="rephraser backend: vllm, openai, transformers, template, none")
    model: str | None = None
    attempts: int = Field(ge=0, description="LLM calls made; 0 when nothing was rephrased")
    validated: bool = Field(description="every descriptor present, none contradicted, meaning kept")
    fallback: bool = Field(description="the LLM output failed k times and the template was used")
    failed_checks: list[str] = Field(default_factory=list)
    attempt_flaws: list[list[str]] = Field(
        default_factory=list,
        description="OutputFlaw names of each failed LLM attempt, in order (an accepted attempt has none)",
    )
    hard_negative: str | None = Field(
        None, exclude_if=lambda v: v is None,
        description="scene samples: the caption with two sources' places swapped (a contrastive hard "
        "negative that must not match the audio); absent from ELSA samples' json",
    )

    @property
    def first_pass(self) -> bool:
        """Accepted on the first attempt: the caption the backend wrote first is the one shipped."""
        return not self.fallback and self.attempts == 1

    @property
    def retries(self) -> int:
        """Generations after the first (new seeds after a failed validation)."""
        return max(self.attempts - 1, 0)


class AudioInfo(BaseModel):
    """The .flac member: 48 kHz FLAC in a renderer's format (ambiX (N+1)^2 channels today), or mono
    for a non-spatial original.

    ``format`` names the renderer (tasks/renderers.py RENDERERS). Records cannot import the
    registry, so the per-format channel layout is checked by ``tasks.renderers.check_layout`` where
    samples are built and read; here only what holds for every format is checked.
    """

    model_config = ConfigDict(frozen=True, extra="forbid")

    sample_rate: Literal[48000] = SHARD_SAMPLE_RATE
    channels: int = Field(ge=1)
    ambisonic_order: int | None = Field(ge=0, le=7, description="None unless the audio is ambisonic")
    format: str = Field(pattern=FORMAT_RE, description="the renderer that made it: ambix, mono, ...")
    num_samples: int = Field(gt=0)
    duration_s: float = Field(gt=0.0)
    flac_subtype: FlacSubtype = "PCM_16"
    sha256: str = Field(pattern=r"^[0-9a-f]{64}$", description="of the .flac member's bytes")
    n_bytes: int = Field(gt=0)
    renderer_id: str | None = Field(
        None, exclude_if=lambda v: v is None,
        description="what the audio depends on beyond the scene (Renderer.identity): the HRTF set and "
        "decoder of a binaural member, the array model of a mic member; absent for ambiX and mono",
    )

    @model_validator(mode="after")
    def _layout(self) -> Self:
        if self.format == MONO_FORMAT:
            if self.channels != 1 or self.ambisonic_order is not None:
                raise ValueError("a mono original has 1 channel and no ambisonic order")
        elif self.ambisonic_order is not None and self.channels != (self.ambisonic_order + 1) ** 2:
            raise ValueError(
                f"ambisonic order {self.ambisonic_order} needs (N+1)^2 channels, got {self.channels}"
            )
        return self


class Provenance(BaseModel):
    """Everything needed to say where a sample came from and to regenerate it."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    source_dataset: str
    source_id: str = Field(description="the clip id in the source dataset, unsanitised")
    room_set_hash: str | None = None
    config_hash: str | None = None
    pipeline_version: str
    engine_version: str | None = None
    seed: int
    rephraser_backend: str | None = None
    rephraser_model: str | None = None
    prepared: PreparedClip | None = None
    rendered: RenderedInfo | None = None


class FormatMember(BaseModel):
    """A further output format of a spatial sample (a build's ``formats`` beyond ambiX): its own
    ``{key}.{format}.flac`` member, rendered from the same scene as ``.flac`` with its own gain."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    audio: AudioInfo
    rendered: RenderedInfo
    scene_order: int = Field(
        ge=0, description="ambisonic order of the scene it was rendered from (the RIR's): a binaural or "
        "mic member from an order-1 scene has shortened ITDs / capsule delays above ~0.6 kHz; order 3 is "
        "accurate",
    )


def member_ext(fmt: str) -> str:
    """The tar member extension of a further format's audio: ``binaural.flac``, ``mic.flac``."""
    return f"{fmt}.flac"


def make_key(dataset: str, split: str, clip_id: str, aug: int) -> str:
    """``{dataset}-{split}-{clip}-{aug}``: the WebDataset ``__key__`` of a sample."""
    return f"{dataset}-{split}-{clip_id}-{aug}"


class SampleRecord(BaseModel):
    """The .json member of a shard sample (``text`` first: it is what CLAP loaders read)."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    text: list[str] = Field(min_length=1, description="spatial captions (originals for mono samples)")
    original_text: list[str] = Field(min_length=1)
    schema_version: Literal["shards/1"] = SCHEMA_VERSION
    key: str
    dataset: str
    split: Split
    clip_id: str
    aug: int = Field(ge=0)
    spatial: bool
    captions: list[CaptionInfo]
    labels: SpatialLabels | None
    descriptors: Descriptors | None
    audio: AudioInfo
    provenance: Provenance
    formats: dict[str, FormatMember] | None = Field(
        None, exclude_if=lambda v: v is None,
        description="further formats of the same spatial sample, by renderer name: each is the member "
        "``{key}.{format}.flac`` (binaural: 2 channels, left first; mic: 4 capsules); ``audio`` stays the "
        "``.flac`` (ambix or foa). Absent when the build asked for the .flac alone",
    )
    sources: list[SceneSourceLabels] | None = Field(
        None, exclude_if=lambda v: v is None,
        description="scene samples: every source's clip, interval, gain and 100 ms trajectory (the .csv "
        "member holds the same in DCASE form); ``labels`` then describes the room and source 0's first "
        "point. Absent from ELSA samples, whose json is unchanged",
    )

    @model_validator(mode="after")
    def _formats(self) -> Self:
        for name, member in (self.formats or {}).items():
            if member.audio.format != name or name == self.audio.format:
                raise ValueError(
                    f"formats[{name!r}] holds {member.audio.format} audio beside {self.audio.format}"
                )
            if not self.spatial:
                raise ValueError("only a spatial sample has further formats")
            if member.audio.num_samples != self.audio.num_samples:
                raise ValueError(f"formats[{name!r}] has {member.audio.num_samples} samples, .flac "
                                 f"{self.audio.num_samples}: one scene, one length")
        return self

    @field_validator("dataset")
    @classmethod
    def _dataset(cls, v: str) -> str:
        if not DATASET_RE.match(v):
            raise ValueError(f"dataset must match {DATASET_RE.pattern} (no '-' or '.'), got {v!r}")
        return v

    @field_validator("clip_id")
    @classmethod
    def _clip(cls, v: str) -> str:
        if not CLIP_RE.match(v):
            raise ValueError(
                f"clip_id must match {CLIP_RE.pattern}; use shard_writer.safe_clip_id, got {v!r}"
            )
        return v

    @model_validator(mode="after")
    def _consistent(self) -> Self:
        want = make_key(self.dataset, self.split, self.clip_id, self.aug)
        if self.key != want:
            raise ValueError(f"key {self.key!r} must be {want!r}")
        if self.captions and [c.spatial for c in self.captions] != self.text:
            raise ValueError("text must list captions[*].spatial in order")
        if self.spatial:
            if self.labels is None or self.descriptors is None or self.audio.format == MONO_FORMAT:
                raise ValueError("a spatial sample needs labels, descriptors and a spatial audio format")
        elif self.audio.format != MONO_FORMAT:
            raise ValueError("a non-spatial sample is a mono original")
        return self


class ManifestRow(BaseModel):
    """One row of manifest.parquet: a sample in a verified shard (flat, query-friendly)."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    key: str
    dataset: str
    split: str
    clip_id: str
    aug: int
    shard: str = Field(description="shard path relative to the dataset version root")
    shard_index: int
    shard_sha256: str
    shard_size: int
    shard_checksum: str | None = Field(description="the object store's SHA256 checksum (base64)")
    flac_offset: int = Field(description="byte offset of the .flac data in the tar (range reads)")
    flac_size: int
    json_offset: int
    json_size: int
    audio_sha256: str
    sample_rate: int
    channels: int
    num_samples: int
    duration_s: float
    spatial: bool
    formats: list[str] = Field(description="the audio members' formats: .flac's first (ambix or mono), then "
                               "each further {format}.flac (binaural, mic)")
    azimuth_deg: float | None
    elevation_deg: float | None
    distance_m: float | None
    t30_s: float | None
    target_t30_s: float | None
    drr_db: float | None
    floor_area_m2: float | None
    volume_m3: float | None
    direct_doa_error_deg: float | None
    room_id: str | None
    placement_id: str | None
    desc_distance: str | None
    desc_direction: str | None
    desc_elevation: str | None
    desc_reverb: str | None
    desc_size: str | None
    text: list[str]
    original_text: list[str]
    n_captions: int
    n_validated: int
    n_fallback: int
    caption_attempts: int
    n_first_pass: int = Field(description="captions accepted on their first attempt")
    n_retried: int = Field(description="captions that needed at least one retry")
    caption_retries: int = Field(description="retries over the sample's captions")
    caption_flaws: list[str] = Field(
        description="every flaw of every failed attempt of the sample's captions, one entry per occurrence"
    )
    source_dataset: str
    source_id: str
    room_set_hash: str | None
    config_hash: str | None
    pipeline_version: str
    seed: int
    rephraser_backend: str | None
    rephraser_model: str | None
    committed_at: str = Field(description="UTC ISO time the shard was verified; the only timestamp")


class RejectRow(BaseModel):
    """One row of rejects.parquet: an input that did not make it, and why."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    stage: str = Field(description="the stage that refused it: shard, render, caption, source ...")
    reason: str
    detail: str
    key: str | None = None
    source: str | None = Field(default=None, description="input file / tar member / source id")
    dataset: str | None = None
    split: str | None = None

    @field_validator("reason")
    @classmethod
    def _known(cls, v: str) -> str:
        if not re.match(r"^[a-z0-9_]{1,48}$", v):
            raise ValueError(f"reject reason must be a short snake_case code, got {v!r}")
        return v


class SplitStats(BaseModel):
    """Counts of one split (or all): the paper's Table A.T.1 columns."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    samples: int
    spatial_samples: int
    mono_samples: int
    hours: float
    clips: int
    rooms: int
    shards: int
    bytes: int


class LabelRange(BaseModel):
    """min/max of a label (None when no sample has it): the paper's Table A.T.2 cells."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    min: float | None
    max: float | None
    count: int


class BackendCaptionStats(BaseModel):
    """Caption quality of one rephraser backend and model: how often the LLM got it right at once,
    how many retries it cost, how often the template had to stand in, and why attempts failed."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    backend: str
    model: str | None
    captions: int
    first_pass: int = Field(description="captions accepted on their first attempt")
    first_pass_rate: float | None
    retries: int = Field(description="generations after the first, over all captions")
    mean_retries: float | None = Field(description="retries per caption")
    retried: int = Field(description="captions that needed at least one retry")
    retried_rate: float | None
    fallback: int = Field(description="captions where the template was used after k failed attempts")
    fallback_rate: float | None
    flaw_counts: dict[str, int] = Field(
        description="OutputFlaw -> occurrences over every failed attempt (not only the shipped caption's)"
    )


class CaptionStats(BaseModel):
    """Caption validation and fallback rates over every spatial caption, and per backend."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    captions: int
    validated: int
    fallback: int
    validated_rate: float | None
    fallback_rate: float | None
    mean_attempts: float | None
    backends: list[BackendCaptionStats] = Field(description="one entry per (backend, model), sorted")


class LabelQA(BaseModel):
    """How far the labels are from what the rendered RIRs measure."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    direct_doa_error_deg_median: float | None
    direct_doa_error_deg_p95: float | None
    direct_doa_error_deg_max: float | None
    direct_doa_error_over_5deg: int
    t30_rel_error_median: float | None = Field(description="|measured/target - 1| of the room T30")
    t30_rel_error_max: float | None


class BinauralCueStats(BaseModel):
    """The card's binaural section: interaural cues measured on the rendered ``binaural`` members of
    single-source samples, against their azimuth labels (a check that left is left in the ears too)."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    samples: int = Field(ge=0, description="single-source binaural samples measured (first in shard order)")
    renderer_ids: list[str] = Field(description="the HRTF sets and decoders of those samples")
    scene_orders: list[int] = Field(description="ambisonic orders of the scenes they were decoded from")
    lateral_samples: int = Field(ge=0, description="samples with 30 < |azimuth| < 150 deg")
    ild_side_agreement: float | None = Field(
        description="share of lateral samples whose 1-4 kHz ILD is louder at the ear of the labelled side"
    )
    itd_side_agreement: float | None = Field(
        description="share of lateral samples whose ITD leads at the ear of the labelled side"
    )


class BankCredit(BaseModel):
    """A measured SRIR bank a dataset version's rooms come from: what the card must name (where the
    recordings are from and under which licence), read from rooms.parquet."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    bank_id: str
    source: str
    licence: str
    licence_source: str = Field(description="where the licence was found (manifest, SOFA attribute, a file)")
    rooms: list[str]
    rooms_held_out_whole: bool = Field(
        description="every room's positions are in one split; False when the bank had too few rooms and "
        "positions of one room are spread over train, val and test"
    )


class RealismStats(BaseModel):
    """What the simulated capture and sources were, beyond ELSA's ideal encoder and omni sources: a
    reader of the card must know whether the audio carries a real microphone's aliasing and noise."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    flac_format: str = Field(description="the .flac member's format: ambix/foa (ideal SN3D) or tetra")
    sensor_snr_db: tuple[float, float] | None = Field(description="SNR range drawn per sample; None: none")
    sensor_noise_spectrum: str | None
    scattering: bool = Field(description="surface scattering turned into an earlier diffuse onset")
    tail_flow: bool = Field(False, description="the diffuse field flows into the absorbing surfaces "
                            "(False: isotropic, and in cards written before the option)")
    tail_turn_after_s: float | None = Field(
        None, description="each sample's late field, from this long after the direct sound, turned by its "
        "own random rotation (AudioPrepConfig.tail_turn); None: not turned, also in cards written before it")
    source_patterns: dict[str, int] | None = Field(
        description="placements per source pattern (None: every source omnidirectional)")


class DatasetCard(BaseModel):
    """card.json: what a user needs to trust a dataset version at a glance."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    schema_version: Literal["shards/1"] = SCHEMA_VERSION
    dataset: str
    version: str
    generated_at: str
    pipeline_versions: list[str]
    room_set_hashes: list[str]
    source_datasets: list[str]
    totals: SplitStats
    splits: dict[str, SplitStats]
    ranges: dict[str, dict[str, LabelRange]] = Field(
        description="per split group (train_val, test, and each split): label -> range"
    )
    group_rooms: dict[str, int] = Field(description="distinct rooms with spatial samples per split group")
    descriptor_frequencies: dict[str, dict[str, int]] = Field(description="attribute -> word -> count")
    captions: CaptionStats
    label_qa: LabelQA
    rejects: dict[str, int]
    plots: list[str]
    scenes: SceneStats | None = Field(
        None, exclude_if=lambda v: v is None,
        description="scene builds: sources per scene, share moving, speeds, overlap (absent for ELSA builds)",
    )
    measured_banks: list[BankCredit] | None = Field(
        None, exclude_if=lambda v: v is None,
        description="builds on measured SRIR banks: each bank's provenance and licence (absent otherwise)",
    )
    binaural: BinauralCueStats | None = Field(
        None, exclude_if=lambda v: v is None,
        description="builds with binaural members: measured ILD/ITD against azimuth (absent otherwise)",
    )
    realism: RealismStats | None = Field(
        None, exclude_if=lambda v: v is None,
        description="builds with realism options on (capture chain, sensor noise, directional sources, "
        "scattering): which, and how often each pattern was drawn (absent for ELSA builds)",
    )
