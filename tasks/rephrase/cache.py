"""Content-addressed cache of rephrased captions: the same request never reaches the LLM twice.

A key is the sha256 of everything that decides a result: the caption, its descriptors, the model,
the base seed, the prompt and template versions, and the sampling and validation settings. Each
finished batch is one JSON-lines file, written to a temporary name and renamed into place, so a
crash leaves either the whole batch or none of it, and a rerun reuses every finished batch.
"""

from __future__ import annotations

import hashlib
import json
import os
import tempfile
from pathlib import Path

from pydantic import ValidationError

from schemas.captions import RephraseRequest, RephraseResult, RephraseSettings
from tasks.errors import SpatialAudioCapsError
from tasks.prompting import PROMPT_VERSION
from tasks.rephrase.phrasing import TEMPLATE_VERSION


def cache_key(req: RephraseRequest, model: str, settings: RephraseSettings) -> str:
    """sha256 hex of (caption, descriptors, model, seed, prompt version, sampling, validation)."""
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
    """A directory of ``<batch hash>.jsonl`` files, indexed in memory when opened."""

    def __init__(self, directory: str | Path) -> None:
        self.directory = Path(directory)
        self.directory.mkdir(parents=True, exist_ok=True)
        self._index: dict[str, RephraseResult] = {}
        for path in sorted(self.directory.glob("*.jsonl")):
            try:
                for line in path.read_text(encoding="utf-8").splitlines():
                    row = json.loads(line)
                    self._index[row["key"]] = RephraseResult.model_validate(row["result"])
            except (OSError, ValueError, KeyError, ValidationError) as exc:
                raise SpatialAudioCapsError(f"corrupt rephrase cache file {path}: {exc}") from exc

    def get(self, key: str) -> RephraseResult | None:
        return self._index.get(key)

    def put_batch(self, items: list[tuple[str, RephraseResult]]) -> Path | None:
        """Write one finished batch atomically; returns its file (None for an empty batch)."""
        if not items:
            return None
        name = hashlib.sha256("".join(k for k, _ in items).encode()).hexdigest()[:32] + ".jsonl"
        lines = "".join(
            json.dumps({"key": k, "result": r.model_dump(mode="json")}, ensure_ascii=False) + "\n"
            for k, r in items
        )
        fd, tmp = tempfile.mkstemp(dir=self.directory, prefix=".tmp-", suffix=".part")
        try:
            with os.fdopen(fd, "w", encoding="utf-8") as fh:
                fh.write(lines)
                fh.flush()
                os.fsync(fh.fileno())
            os.replace(tmp, self.directory / name)
        except BaseException:
            Path(tmp).unlink(missing_ok=True)
            raise
        self._index.update(items)
        return self.directory / name
