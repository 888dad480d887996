"""Credentials never reach a log or an error: message redaction and a filter on library loggers.

botocore and aiobotocore print auth headers at DEBUG; presigned URLs carry the access key id;
endpoint URLs may carry a password. ``redact`` scrubs all of those plus every credential value
registered with ``register_secrets`` (the S3 backend registers what the credential chain found).
"""

from __future__ import annotations

import logging
import re
import threading

_SECRET_PATTERNS = (
    re.compile(r"(?i)(X-Amz-Credential=)[^&\s'\"]+"),
    re.compile(r"(?i)(X-Amz-Signature=)[^&\s'\"]+"),
    re.compile(r"(?i)(X-Amz-Security-Token=)[^&\s'\"]+"),
    re.compile(r"(Credential=)[^,\s'\"]+"),
    re.compile(r"(Signature=)[0-9a-fA-F]{16,}"),
    re.compile(r"(?i)(['\"]?x-amz-security-token['\"]?\s*:\s*b?['\"])[^'\"]+"),
    re.compile(r"(?i)(aws_secret_access_key\s*[=:]\s*)\S+"),
    re.compile(r"(?i)(aws_session_token\s*[=:]\s*)\S+"),
    re.compile(r"(//[^/@\s:]+:)[^/@\s]+(@)"),  # userinfo in an endpoint URL
)
_known_secrets: set[str] = set()
_secrets_lock = threading.Lock()
_REDACTED = "***"


def register_secrets(*values: str | None) -> None:
    """Remember credential values so that ``redact`` scrubs them wherever they turn up."""
    with _secrets_lock:
        _known_secrets.update(v for v in values if v and len(v) >= 4)


def redact(text: str) -> str:
    """``text`` without credential values, signatures, tokens or URL passwords."""
    for pat in _SECRET_PATTERNS:
        text = pat.sub(lambda m: m.group(1) + _REDACTED + (m.group(2) if m.re.groups > 1 else ""), text)
    with _secrets_lock:
        secrets = sorted(_known_secrets, key=len, reverse=True)
    for s in secrets:
        if s in text:
            text = text.replace(s, _REDACTED)
    return text


class RedactingFilter(logging.Filter):
    """Rewrites a record's message through ``redact``; botocore's DEBUG logs print auth headers."""

    def filter(self, record: logging.LogRecord) -> bool:
        try:
            msg = record.getMessage()
        except Exception:  # a broken record is logging's problem, not ours
            return True
        clean = redact(msg)
        if clean != msg:
            record.msg, record.args = clean, None
        if record.exc_info and record.exc_info[1] is not None and not record.exc_text:
            record.exc_text = redact(logging.Formatter().formatException(record.exc_info))
        elif record.exc_text:
            record.exc_text = redact(record.exc_text)
        return True


_FILTER = RedactingFilter()
_REDACTED_LOGGERS = (
    "botocore", "boto3", "s3transfer", "urllib3",  # the boto3 write path
    "aiobotocore", "s3fs", "aiohttp", "fsspec",  # the fsspec read path
    "tasks", "spatial_audiocaps", "flows",
)


def install_log_redaction() -> None:
    """Attach the redacting filter to every logger (existing now) of AWS, HTTP and our packages.

    Logger filters only see records created on that very logger, so each child gets one; it is
    idempotent and called whenever an S3 client is made (the libraries' loggers exist by then).
    """
    names = [n for n in list(logging.root.manager.loggerDict) if n.split(".")[0] in _REDACTED_LOGGERS]
    for name in {*names, *_REDACTED_LOGGERS}:
        lg = logging.getLogger(name)
        if _FILTER not in lg.filters:
            lg.addFilter(_FILTER)
