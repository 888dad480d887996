"""Records of the caption stage: what the build hands the LLM workers and what they leave behind.

The build and the LLM workers run in different environments (vLLM pins its own torch), so these
records, stored as JSON beside the requests, are the whole contract between them.
"""

from __future__ import annotations

from datetime import datetime

from pydantic import BaseModel, ConfigDict, Field

from schemas.captions import RephraseSettings


class StageSpec(BaseModel):
    """stage.json: how to rephrase ``requests.parquet`` and how it is cut into batches (row group b of
    requests.parquet, and of results.parquet, is batch b)."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    settings: RephraseSettings
    batch_size: int = Field(ge=1, description="Requests per batch: the unit of caching and resuming.")
    n_requests: int = Field(ge=0)

    @property
    def n_batches(self) -> int:
        return -(-self.n_requests // self.batch_size)


class EngineRecord(BaseModel):
    """engines/<engine_id>.json: one backend (for vLLM: its engines) started by a stage worker."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    engine_id: str
    backend: str
    model: str
    host: str
    pid: int
    flow_run_id: str | None = Field(description="The Prefect flow run that started it, if any.")
    worker: int = Field(ge=0)
    workers: int = Field(ge=1)
    started_at: datetime
    load_s: float = Field(ge=0, description="Seconds from construction to ready (weights, KV cache).")


class BatchRecord(BaseModel):
    """batches/<batch>-<engine_id>.json: one batch finished by one engine."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    batch: int = Field(ge=0)
    engine_id: str
    requests: int = Field(ge=0)
    generated: int = Field(ge=0, description="Results made by this engine now (not found in the cache).")
    seconds: float = Field(ge=0)


class StageWorkerReport(BaseModel):
    """What one stage worker did: the figures a rerun's resume is judged by."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    worker: int
    workers: int
    engine_id: str | None = Field(description="None when every batch was already finished.")
    batches: int = Field(description="Batches assigned to this worker.")
    batches_generated: int
    batches_skipped: int = Field(description="Already finished (every request cached): not generated again.")
    captions_generated: int
    generate_calls: int = Field(description="Backend generate() calls (each attempt round of a batch).")
