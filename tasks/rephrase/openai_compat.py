"""OpenAI-compatible backend: any server speaking /v1/completions and /v1/chat/completions
(``vllm serve``, the test server of ``serve_openai``), over httpx.

Bounded concurrency (a thread pool of ``concurrency`` workers sharing one connection pool), and
retries with exponential backoff for 429, 5xx and transport errors. When retries run out the
server is down for this batch: BackendUnavailable, so nothing of the batch is cached and a rerun
resumes there. Any other 4xx concerns one prompt and becomes that prompt's error.

api="auto" asks for chat completions (the server applies the model's chat template) and switches
to plain completions for good once the server says the model has no chat template.
"""

from __future__ import annotations

import os
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from typing import Any

import httpx

from schemas.captions import RephraseSettings
from tasks.rephrase.base import BackendUnavailable, Generated, Generation, RephraseBackend

_RETRY_STATUS = frozenset({408, 409, 429, 500, 502, 503, 504})


class _PromptError(Exception):
    """A non-retryable answer about one request (4xx)."""

    def __init__(self, status: int, message: str) -> None:
        super().__init__(f"HTTP {status}: {message}")
        self.status = status


def _error_message(resp: httpx.Response) -> str:
    try:
        body = resp.json()
    except ValueError:
        return resp.text[:300]
    err = body.get("error") if isinstance(body, dict) else None
    if isinstance(err, dict):
        return str(err.get("message", err))[:300]
    return str(err or body)[:300]


class OpenAIBackend(RephraseBackend):
    """Completions from an OpenAI-compatible server; the seed travels in the request."""

    name = "openai"

    def __init__(self, settings: RephraseSettings) -> None:
        super().__init__(settings)
        opts = settings.openai
        headers = {}
        if key := os.environ.get(opts.api_key_env):
            headers["Authorization"] = f"Bearer {key}"
        self._client = httpx.Client(
            base_url=opts.base_url.rstrip("/") + "/", headers=headers, timeout=opts.timeout_s,
            limits=httpx.Limits(max_connections=opts.concurrency, max_keepalive_connections=opts.concurrency),
        )
        self._pool = ThreadPoolExecutor(max_workers=opts.concurrency, thread_name_prefix="openai")
        self._api = opts.api
        self._api_lock = threading.Lock()
        self.http_retries = 0

    def close(self) -> None:
        self._pool.shutdown(wait=True)
        self._client.close()

    def _post(self, path: str, body: dict[str, Any]) -> dict[str, Any]:
        """POST with retries; returns the JSON body or raises _PromptError / BackendUnavailable."""
        opts = self.settings.openai
        for attempt in range(opts.max_http_retries + 1):
            delay = min(opts.max_backoff_s, opts.backoff_s * 2**attempt)
            try:
                resp = self._client.post(path, json=body)
            except httpx.TransportError as exc:
                failure = f"{type(exc).__name__}: {exc}"
            else:
                if resp.status_code == 200:
                    return resp.json()
                failure = f"HTTP {resp.status_code}: {_error_message(resp)}"
                if resp.status_code not in _RETRY_STATUS:
                    raise _PromptError(resp.status_code, _error_message(resp))
                retry_after = resp.headers.get("retry-after", "")
                if retry_after.replace(".", "", 1).isdigit():
                    delay = min(opts.max_backoff_s, float(retry_after))
            if attempt < opts.max_http_retries:
                with self._api_lock:
                    self.http_retries += 1
                time.sleep(delay)
        raise BackendUnavailable(
            f"{opts.base_url}{path}: no answer after {opts.max_http_retries + 1} tries ({failure})"
        )

    def _body(self, job: Generation) -> dict[str, Any]:
        return {"model": self.settings.model, "temperature": self.settings.temperature,
                "max_tokens": self.settings.max_tokens, "seed": job.seed, "n": 1}

    def _one(self, job: Generation) -> Generated:
        if self._api in ("auto", "chat"):
            try:
                data = self._post("chat/completions",
                                  {**self._body(job), "messages": [{"role": "user", "content": job.prompt}]})
                self._api = "chat"
                return Generated(data["choices"][0]["message"]["content"] or "",
                                 tokens=int(data.get("usage", {}).get("completion_tokens", 0)))
            except _PromptError as exc:
                if self._api == "chat" or exc.status not in (400, 404, 422) or "chat" not in str(exc).lower():
                    return Generated("", error=str(exc))
                with self._api_lock:
                    self._api = "completions"
        try:
            data = self._post("completions", {**self._body(job), "prompt": job.prompt})
        except _PromptError as exc:
            return Generated("", error=str(exc))
        return Generated(data["choices"][0]["text"] or "",
                         tokens=int(data.get("usage", {}).get("completion_tokens", 0)))

    @property
    def api(self) -> str:
        """The API in use: "chat" or "completions" ("auto" until the first answer decides)."""
        return self._api

    def _generate(self, jobs: list[Generation]) -> list[Generated]:
        return list(self._pool.map(self._one, jobs))
