"""S3 over the standard AWS environment: s3fs reads, boto3 verified writes.

Both clients are botocore underneath (s3fs through aiobotocore) and are configured the same way:
AWS_ENDPOINT_URL and the credential chain (env, profile, SSO, instance role) are resolved by
botocore itself in both, the region from ``StorageConfig.region`` or AWS_REGION /
AWS_DEFAULT_REGION, and retries, timeouts and the connection pool from
``StorageConfig.botocore_options``. Credentials are never parameters, fields or log text here.

Why writes stay on boto3: s3fs's writer sends each part's bytes only (``S3File._upload_chunk``
calls ``upload_part`` without a caller-computed checksum), so it cannot send the SHA-256 per-part
checksums hashed while a shard was written. boto3 does: single PUTs and multipart parts carry
our ``ChecksumSHA256`` values and the server rejects a part whose bytes differ; the object also
carries its full sha256 as metadata. ``info`` is a boto3 HEAD with ``ChecksumMode=ENABLED``
(the server's stored checksum), which is what ``verify`` compares. Reads, ranged reads and
listings are s3fs (``S3FileSystem``, no instance or listing cache, so a listing always reflects
what boto3 just wrote).
"""

from __future__ import annotations

import base64
import hashlib
import logging
import os
from typing import Any

from tasks.storage.base import ObjectInfo, Storage, Upload
from tasks.storage.config import StorageConfig
from tasks.storage.digests import Digest, part_size_for
from tasks.storage.errors import StorageError
from tasks.storage.redaction import install_log_redaction, redact, register_secrets
from tasks.storage.uris import join_uri, safe_uri, split_s3

log = logging.getLogger(__name__)

_OK_ERRORS = ("404", "NoSuchKey", "NotFound")


def _s3fs_filesystem(config: StorageConfig) -> Any:
    """An S3FileSystem on the same endpoint, credentials and botocore settings as the boto3 client."""
    import s3fs

    client_kwargs = {"region_name": config.region} if config.region else {}
    return s3fs.S3FileSystem(
        skip_instance_cache=True,  # open_storage caches backends; its cache is cleared on env changes
        use_listings_cache=False,
        config_kwargs=config.botocore_options(),
        client_kwargs=client_kwargs,
    )


class S3Storage(Storage):
    """boto3 writes and HEADs, s3fs reads; one client of each per instance (both thread-safe)."""

    def __init__(self, config: StorageConfig | None = None) -> None:
        import aiohttp
        import boto3
        import botocore.config
        import botocore.exceptions
        from boto3.exceptions import Boto3Error
        from boto3.s3.transfer import TransferConfig

        self.config = cfg = config or StorageConfig()
        self._errors: tuple[type[BaseException], ...] = (
            botocore.exceptions.BotoCoreError,
            botocore.exceptions.ClientError,
            Boto3Error,
        )
        self.read_errors = (OSError, aiohttp.ClientError, *self._errors)
        self._client_error = botocore.exceptions.ClientError
        install_log_redaction()
        session = boto3.session.Session(region_name=cfg.region)
        creds = session.get_credentials()
        if creds is not None:
            frozen = creds.get_frozen_credentials()
            register_secrets(frozen.access_key, frozen.secret_key, frozen.token)
        self.client = session.client("s3", config=botocore.config.Config(**cfg.botocore_options()))
        self.fs = _s3fs_filesystem(cfg)
        install_log_redaction()
        self.transfer = TransferConfig(
            multipart_threshold=cfg.multipart_threshold,
            multipart_chunksize=cfg.multipart_chunksize,
            max_concurrency=cfg.max_concurrency,
            use_threads=True,
        )

    def fs_path(self, uri: str) -> str:
        bucket, key = split_s3(uri)
        return f"{bucket}/{key}"

    def _fail(self, what: str, uri: str, e: BaseException) -> StorageError:
        msg = f"{what} {safe_uri(uri)} failed: {redact(str(e))}"
        log.warning("%s", msg)
        return StorageError(msg)

    def info(self, uri: str) -> ObjectInfo | None:
        bucket, key = split_s3(uri)
        try:
            h = self.client.head_object(Bucket=bucket, Key=key, ChecksumMode="ENABLED")
        except self._client_error as e:
            if str(e.response.get("Error", {}).get("Code")) in _OK_ERRORS:
                return None
            raise self._fail("HEAD", uri, e) from None
        except self._errors as e:
            raise self._fail("HEAD", uri, e) from None
        return ObjectInfo(
            uri=uri,
            size=int(h["ContentLength"]),
            sha256=(h.get("Metadata") or {}).get("sha256"),
            checksum_sha256=h.get("ChecksumSHA256"),
            checksum_type=h.get("ChecksumType"),
            etag=h.get("ETag"),
        )

    def put_bytes(self, uri: str, data: bytes, *, content_type: str = "application/octet-stream") -> None:
        bucket, key = split_s3(uri)
        try:
            self.client.put_object(
                Bucket=bucket,
                Key=key,
                Body=data,
                ContentType=content_type,
                ChecksumAlgorithm="SHA256",
                Metadata={"sha256": hashlib.sha256(data).hexdigest()},
            )
        except self._errors as e:
            raise self._fail("PUT", uri, e) from None

    def _upload(self, job: Upload) -> None:
        path, uri, progress, digest = job.path, job.uri, job.progress, job.digest
        bucket, key = split_s3(uri)
        install_log_redaction()
        size = os.path.getsize(path)
        part = part_size_for(size, self.config)
        meta = {"sha256": job.sha256}
        try:
            if digest is not None and digest.size == size and (part is None or digest.part_size == part):
                if part is None:
                    with open(path, "rb") as body:
                        self.client.put_object(
                            Bucket=bucket,
                            Key=key,
                            Body=body,
                            ChecksumSHA256=digest.checksum(None),
                            Metadata=meta,
                            ContentType="application/x-tar",
                        )
                    if progress:
                        progress(size)
                else:
                    self._multipart(job, part, digest.part_digests(), meta)
                return
            self.client.upload_file(  # boto3's transfer manager computes the checksums itself
                os.fspath(path),
                bucket,
                key,
                ExtraArgs={
                    "ChecksumAlgorithm": "SHA256",
                    "Metadata": meta,
                    "ContentType": "application/x-tar",
                },
                Config=self.transfer,
                Callback=progress,
            )
        except self._errors as e:
            raise self._fail("upload to", uri, e) from None

    def _multipart(self, job: Upload, part: int, digests: list[bytes], meta: dict[str, str]) -> None:
        """Multipart upload with our per-part SHA256 checksums; aborted on any failure."""
        from concurrent.futures import ThreadPoolExecutor

        path, progress = job.path, job.progress
        bucket, key = split_s3(job.uri)
        size = os.path.getsize(path)

        n = len(digests)
        if n != -(-size // part):
            raise StorageError(f"{n} part digests for {-(-size // part)} parts")
        b64 = [base64.b64encode(d).decode() for d in digests]
        mpu = self.client.create_multipart_upload(
            Bucket=bucket, Key=key, ChecksumAlgorithm="SHA256", Metadata=meta, ContentType="application/x-tar"
        )
        upload_id = mpu["UploadId"]

        def send(i: int) -> dict[str, Any]:
            with open(path, "rb") as fh:
                fh.seek(i * part)
                body = fh.read(min(part, size - i * part))
            r = self.client.upload_part(
                Bucket=bucket, Key=key, UploadId=upload_id, PartNumber=i + 1, Body=body, ChecksumSHA256=b64[i]
            )
            if progress:
                progress(len(body))
            return {"PartNumber": i + 1, "ETag": r["ETag"], "ChecksumSHA256": b64[i]}

        try:
            with ThreadPoolExecutor(max_workers=min(self.config.max_concurrency, n)) as pool:
                done = list(pool.map(send, range(n)))
            self.client.complete_multipart_upload(
                Bucket=bucket, Key=key, UploadId=upload_id, MultipartUpload={"Parts": done}
            )
        except BaseException:
            try:
                self.client.abort_multipart_upload(Bucket=bucket, Key=key, UploadId=upload_id)
            except self._errors:
                log.warning(
                    "could not abort multipart upload of %s (a lifecycle rule cleans it up)",
                    safe_uri(f"s3://{bucket}/{key}"),
                )
            raise

    def list(self, prefix: str) -> list[ObjectInfo]:
        """Every object whose key starts with ``prefix``'s key (S3's own prefix semantics)."""
        bucket, key = split_s3(prefix)
        folder, _, stem = key.rpartition("/")
        try:
            found = self.fs.find(join_uri(bucket, folder), prefix=stem, detail=True)
        except self.read_errors as e:  # a missing bucket too, as boto3's LIST did
            raise self._fail("LIST", prefix, e) from None
        out = [
            ObjectInfo(uri=f"s3://{path}", size=int(meta["size"]), etag=meta.get("ETag"))
            for path, meta in found.items()
            if meta.get("type") == "file" and path.startswith(f"{bucket}/{key}")
        ]
        return sorted(out, key=lambda o: o.uri)

    def delete(self, uri: str) -> None:
        bucket, key = split_s3(uri)
        try:
            self.client.delete_object(Bucket=bucket, Key=key)
        except self._errors as e:
            raise self._fail("DELETE", uri, e) from None

    def expected_checksum(self, digest: Digest) -> str | None:
        ps = part_size_for(digest.size, self.config)
        if ps is not None and ps != digest.part_size:
            return None  # > 160 GB objects: verify falls back to re-reading
        return digest.checksum(ps)

    def presign(self, uri: str, expires_s: int = 3600) -> str:
        """A presigned GET URL (e.g. for curl). It carries the access key id: never log or store it."""
        bucket, key = split_s3(uri)
        return self.client.generate_presigned_url(
            "get_object", Params={"Bucket": bucket, "Key": key}, ExpiresIn=expires_s
        )
