"""Transfer and retry settings shared by both S3 clients (boto3 for writes, s3fs for reads)."""

from __future__ import annotations

from typing import Literal

from pydantic import BaseModel, ConfigDict, Field

MiB = 1 << 20
READ_CHUNK = 8 * MiB
S3_MIN_PART = 5 * MiB
S3_MAX_PARTS = 10_000


class StorageConfig(BaseModel):
    """Transfer and retry settings. Deliberately holds no credential: those come from the chain."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    region: str | None = Field(None, description="else AWS_REGION / AWS_DEFAULT_REGION / profile")
    max_attempts: int = Field(5, ge=1, le=20, description="botocore total attempts per request")
    retry_mode: Literal["standard", "adaptive", "legacy"] = "standard"
    connect_timeout_s: float = Field(10.0, gt=0)
    read_timeout_s: float = Field(60.0, gt=0)
    multipart_threshold: int = Field(64 * MiB, ge=S3_MIN_PART)
    multipart_chunksize: int = Field(16 * MiB, ge=S3_MIN_PART)
    max_concurrency: int = Field(8, ge=1, le=64)

    def botocore_options(self) -> dict[str, object]:
        """The botocore client config both S3 clients are built with (one source of truth)."""
        return {
            "retries": {"total_max_attempts": self.max_attempts, "mode": self.retry_mode},
            "connect_timeout": self.connect_timeout_s,
            "read_timeout": self.read_timeout_s,
            "max_pool_connections": max(10, self.max_concurrency + 2),
            "signature_version": "s3v4",
        }
