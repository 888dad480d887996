"""Content-addressed cache of rephrased captions: the same request never reaches the LLM twice.

A key is the sha256 of everything that decides a result: the caption, its descriptors, the model,
the base seed, the prompt and template versions, and the sampling and validation settings. Each
finished batch is one JSON-lines object, written atomically (storage.put_bytes), so a crash leaves
either the whole batch or none of it, and a rerun reuses every finished batch.
"""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

from pydantic import ValidationError

from schemas.captions import CaptionSettings, RephraseRequest, RephraseResult
from tasks.errors import SpatialAudioCapsError
from tasks.prompting import PROMPT_VERSION
from tasks.rephrase.phrasing import TEMPLATE_VERSION
from tasks.storage import StorageError, join_uri, open_storage


def cache_key(req: RephraseRequest, model: str, settings: CaptionSettings) -> str:
    """sha256 hex of (caption, descriptors, model, seed, prompt version, sampling, validation); never
    of the engine options (endpoint, parallelism, memory), which change no caption."""
    caption = req.caption if isinstance(req.caption, str) else "bytes:" + req.caption.hex()
    payload = {
        "caption": caption, "descriptors": req.descriptors.model_dump(), "model": model, "seed": req.seed,
        "prompt_version": PROMPT_VERSION, "template_version": TEMPLATE_VERSION,
        "temperature": settings.temperature, "max_tokens": settings.max_tokens,
        "max_retries": settings.max_retries, "validation": settings.validation.model_dump(),
    }
    blob = json.dumps(payload, sort_keys=True, ensure_ascii=False, separators=(",", ":"))
    return hashlib.sha256(blob.encode("utf-8", "surrogatepass")).hexdigest()


class RephraseCache:
    """A folder of ``<batch hash>.jsonl`` objects on any storage (local or s3://), indexed in
    memory when opened: the caption stage keeps it on the build's own storage, so an LLM worker on
    another machine resumes from what any earlier worker finished."""

    def __init__(self, directory: str | Path) -> None:
        self.directory = str(directory)
        self._storage = open_storage(self.directory)
        self._index: dict[str, RephraseResult] = {}
        for obj in self._storage.list(self.directory):
            if not obj.uri.endswith(".jsonl"):
                continue
            try:
                for line in self._storage.read_bytes(obj.uri).decode("utf-8").splitlines():
                    row = json.loads(line)
                    self._index[row["key"]] = RephraseResult.model_validate(row["result"])
            except (OSError, ValueError, KeyError, ValidationError, StorageError) as exc:
                raise SpatialAudioCapsError(f"corrupt rephrase cache file {obj.uri}: {exc}") from exc

    def get(self, key: str) -> RephraseResult | None:
        return self._index.get(key)

    def __contains__(self, key: str) -> bool:
        return key in self._index

    def put_batch(self, items: list[tuple[str, RephraseResult]]) -> str | None:
        """Write one finished batch atomically; returns its URI (None for an empty batch)."""
        if not items:
            return None
        name = hashlib.sha256("".join(k for k, _ in items).encode()).hexdigest()[:32] + ".jsonl"
        lines = "".join(
            json.dumps({"key": k, "result": r.model_dump(mode="json")}, ensure_ascii=False) + "\n"
            for k, r in items
        )
        uri = join_uri(self.directory, name)
        self._storage.put_bytes(uri, lines.encode("utf-8"), content_type="application/x-ndjson")
        self._index.update(items)
        return uri
