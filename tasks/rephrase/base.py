"""The one rephrasing interface: a batch of requests in, a batch of validated results out, in order.

Backends implement only ``_generate`` (prompts and seeds to raw text). Everything that decides a
caption's fate is shared here, so every backend screens, prompts, seeds, retries and falls back
alike: screen -> prompt -> generate -> post-process -> validate; a failed caption is generated again
with a new seed up to ``max_retries`` times, then replaced by the template's.
"""

from __future__ import annotations

import hashlib
import importlib
import time
from abc import ABC, abstractmethod
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import ClassVar, Self

from schemas.captions import (
    SLOTS,
    Descriptors,
    OutputFlaw,
    RephraseRequest,
    RephraseResult,
    RephraseSettings,
    SourceWords,
)
from tasks.errors import SpatialAudioCapsError
from tasks.prompting import CaptionRejected, build_prompt, screen_caption
from tasks.rephrase.phrasing import TEMPLATE_VERSION, template_caption
from tasks.rephrase.validation import hard_negative, judge


class BackendUnavailable(SpatialAudioCapsError):
    """The backend cannot run here or stopped answering (no vllm, no GPU, server down): the batch
    is not finished, so nothing of it is cached and a rerun resumes from it."""


@dataclass(frozen=True)
class Generation:
    """One prompt to complete, with what the template needs to answer it without a model."""

    prompt: str
    caption: str
    descriptors: Descriptors
    seed: int
    scene: tuple[SourceWords, ...] | None = None
    """A scene request's sources (cleaned captions); ``descriptors`` are then the room's words."""


@dataclass(frozen=True)
class Generated:
    """Raw model text, or the backend's error for this one prompt."""

    text: str
    tokens: int = 0
    error: str | None = None


@dataclass
class BackendStats:
    """What a backend did; the benchmarks and the cache test read it."""

    generate_calls: int = 0
    prompts: int = 0
    generated_tokens: int = 0
    seconds: float = 0.0


def recorded_model(settings: RephraseSettings) -> str:
    """The model name in results, seeds and cache keys, known before a backend starts: the caption
    stage decides from it which batches are finished without loading an engine."""
    return TEMPLATE_VERSION if settings.backend == "template" else settings.model


def derive_seed(
    caption: str, d: Descriptors, model: str, base_seed: int, attempt: int,
    scene: Sequence[SourceWords] | None = None,
) -> int:
    """A stable per-sample seed: the same caption, labels, model and base seed give the same text
    whatever the batch, and each retry gets a new one. 31 bits fit every backend's seed type. A
    scene's sources enter it too (two scenes may share source 0); ELSA seeds are as before."""
    parts = [caption, *(getattr(d, s) or "" for s in SLOTS), model, str(base_seed), str(attempt)]
    key = "\x1f".join(parts + [s.model_dump_json() for s in scene or ()])
    return int.from_bytes(hashlib.sha256(key.encode("utf-8")).digest()[:4], "big") & 0x7FFFFFFF


@dataclass
class _Pending:
    """A screened request on its way through the attempts."""

    index: int
    request: RephraseRequest
    caption: str
    prompt: str
    scene: tuple[SourceWords, ...] | None = None
    failures: list[list[OutputFlaw]] = field(default_factory=list)
    tokens: int = 0


class RephraseBackend(ABC):
    """Base of every backend: ``rephrase(batch) -> results``; subclasses implement ``_generate``."""

    name: ClassVar[str]

    def __init__(self, settings: RephraseSettings) -> None:
        self.settings = settings
        self.stats = BackendStats()

    @property
    def model(self) -> str:
        """The model name recorded in results, seeds and cache keys."""
        return recorded_model(self.settings)

    @abstractmethod
    def _generate(self, jobs: list[Generation]) -> list[Generated]:
        """One Generated per job, in order, sampled with each job's seed."""

    def close(self) -> None:  # noqa: B027 - most backends hold nothing to release
        """Release engines, processes and connections."""

    def __enter__(self) -> Self:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def generate(self, jobs: list[Generation]) -> list[Generated]:
        """``_generate`` with bookkeeping and a length check."""
        if not jobs:
            return []
        t0 = time.perf_counter()
        out = self._generate(jobs)
        if len(out) != len(jobs):
            raise BackendUnavailable(f"{self.name} returned {len(out)} outputs for {len(jobs)} prompts")
        self.stats.generate_calls += 1
        self.stats.prompts += len(jobs)
        self.stats.generated_tokens += sum(g.tokens for g in out)
        self.stats.seconds += time.perf_counter() - t0
        return out

    def _result(self, p: _Pending, caption: str, **fields: object) -> RephraseResult:
        raw = p.request.caption  # screened, so bytes here are valid UTF-8
        return RephraseResult(
            sample_id=p.request.sample_id, original_caption=raw if isinstance(raw, str) else raw.decode(),
            descriptors=p.request.descriptors, prompt=p.prompt, backend=self.name, model=self.model,
            attempt_flaws=p.failures, caption=caption,
            hard_negative=hard_negative(caption, p.scene) if p.scene else None, **fields,
        )

    def rephrase(self, batch: list[RephraseRequest]) -> list[RephraseResult]:
        """Rephrase a batch; bad captions become rejected results, never exceptions."""
        settings, cfg = self.settings, self.settings.validation
        results: list[RephraseResult | None] = [None] * len(batch)
        pending: list[_Pending] = []
        for i, req in enumerate(batch):
            try:
                caption = screen_caption(req.caption, cfg)
                scene = None if req.scene is None else tuple(
                    s.model_copy(update={"caption": screen_caption(s.caption, cfg)}) for s in req.scene)
            except CaptionRejected as exc:
                results[i] = _rejected(req, self.name, self.model, exc)
                continue
            pending.append(_Pending(i, req, caption, build_prompt(caption, req.descriptors, scene), scene))
        for attempt in range(settings.max_retries + 1):
            if not pending:
                break
            jobs = [
                Generation(p.prompt, p.caption, p.request.descriptors,
                           derive_seed(p.caption, p.request.descriptors, self.model, p.request.seed, attempt,
                                       p.scene), p.scene)
                for p in pending
            ]
            still: list[_Pending] = []
            for p, job, gen in zip(pending, jobs, self.generate(jobs), strict=True):
                p.tokens += gen.tokens
                if gen.error is not None:
                    p.failures.append([OutputFlaw.BACKEND_ERROR])
                    still.append(p)
                    continue
                text, flags = judge(gen.text, p.prompt, p.caption, p.request.descriptors, cfg, p.scene)
                if flags.passed:
                    results[p.index] = self._result(
                        p, status="ok", caption=text, produced_by=self.name, attempts=attempt + 1,
                        seed=job.seed, generated_tokens=p.tokens, validation=flags,
                    )
                else:
                    p.failures.append(flags.flaws)
                    still.append(p)
            pending = still
        for p in pending:
            results[p.index] = self._fallback(p)
        return [r for r in results if r is not None]

    def _fallback(self, p: _Pending) -> RephraseResult:
        seed = derive_seed(p.caption, p.request.descriptors, TEMPLATE_VERSION, p.request.seed, 0, p.scene)
        raw = template_caption(p.caption, p.request.descriptors, seed, p.scene)
        cfg = self.settings.validation
        text, flags = judge(raw, p.prompt, p.caption, p.request.descriptors, cfg, p.scene)
        return self._result(
            p, status="fallback", caption=text, produced_by="template", attempts=len(p.failures),
            seed=seed, generated_tokens=p.tokens, validation=flags,
        )


def _rejected(req: RephraseRequest, backend: str, model: str, exc: CaptionRejected) -> RephraseResult:
    raw = req.caption if isinstance(req.caption, bytes) else req.caption.encode("utf-8", "backslashreplace")
    original = raw.decode("utf-8", "backslashreplace")
    return RephraseResult(
        sample_id=req.sample_id, status="rejected", caption=None, original_caption=original,
        descriptors=req.descriptors, prompt=None, backend=backend, model=model, produced_by=backend,
        attempts=0, seed=None, reject_reason=exc.reason,
    )


_BACKENDS: dict[str, tuple[str, str]] = {
    "template": ("tasks.rephrase.template", "TemplateBackend"),
    "transformers": ("tasks.rephrase.hf_transformers", "TransformersBackend"),
    "openai": ("tasks.rephrase.openai_compat", "OpenAIBackend"),
    "vllm": ("tasks.rephrase.vllm_offline", "VllmBackend"),
}


def make_backend(settings: RephraseSettings) -> RephraseBackend:
    """The backend ``settings.backend`` names, importing only its own module (and its heavy deps)."""
    module, cls = _BACKENDS[settings.backend]
    return getattr(importlib.import_module(module), cls)(settings)
