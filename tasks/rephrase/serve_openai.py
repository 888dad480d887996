"""A small OpenAI-compatible server over a transformers model: /v1/completions, /v1/chat/completions,
/v1/models, /health.

Enough of the schema for the ``openai`` backend and its tests to run against a real HTTP server
where ``vllm serve`` is not available (CPU machines, CI). Like vLLM, chat completions need a chat
template and answer 400 without one. Generation is serialised: one model, one request at a time.

    python -m tasks.rephrase.serve_openai --model DIR [--host 127.0.0.1] [--port 0]

prints one JSON line ``{"url": "http://127.0.0.1:PORT/v1", ...}`` once it listens, and stops on
SIGTERM or SIGINT.
"""

from __future__ import annotations

import argparse
import json
import signal
import sys
import threading
import time
import uuid
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

from tasks.rephrase.hf_transformers import LoadedLM, generate_texts, load_lm


class _ApiError(Exception):
    def __init__(self, status: int, message: str) -> None:
        super().__init__(message)
        self.status = status


class OpenAIServer(ThreadingHTTPServer):
    """ThreadingHTTPServer holding the model, its served name and a generation lock."""

    daemon_threads = True

    def __init__(self, address: tuple[str, int], lm: LoadedLM, served_name: str) -> None:
        super().__init__(address, _Handler)
        self.lm = lm
        self.served_name = served_name
        self.lock = threading.Lock()

    def complete(self, body: dict[str, Any], chat: bool) -> dict[str, Any]:
        """One OpenAI response body for a request body."""
        if body.get("model") != self.served_name:
            raise _ApiError(404, f"The model `{body.get('model')}` does not exist.")
        if chat:
            if not self.lm.chat:
                raise _ApiError(400, "The model's tokenizer has no chat template: use /v1/completions.")
            messages = body.get("messages")
            if not isinstance(messages, list) or not messages or not isinstance(messages[-1], dict):
                raise _ApiError(400, "messages must be a non-empty list")
            prompts = [str(messages[-1].get("content", ""))]
        else:
            prompt = body.get("prompt")
            prompts = [prompt] if isinstance(prompt, str) else prompt
            if not isinstance(prompts, list) or not all(isinstance(p, str) for p in prompts):
                raise _ApiError(400, "prompt must be a string or a list of strings")
        try:
            temperature = float(body.get("temperature", 1.0))
            max_tokens = int(body.get("max_tokens") or 16)
            seed = int(body.get("seed") or 0)
        except (TypeError, ValueError) as exc:
            raise _ApiError(400, f"bad sampling parameter: {exc}") from exc
        if temperature < 0 or max_tokens < 1:
            raise _ApiError(400, "temperature must be >= 0 and max_tokens >= 1")
        with self.lock:
            outs = generate_texts(self.lm, prompts, [seed] * len(prompts), temperature, max_tokens,
                                  batch_size=len(prompts), chat=chat)
        tokens = sum(o.tokens for o in outs)
        head = {"id": f"cmpl-{uuid.uuid4().hex}", "created": int(time.time()), "model": self.served_name,
                "usage": {"prompt_tokens": 0, "completion_tokens": tokens, "total_tokens": tokens}}
        finish = ["length" if o.tokens >= max_tokens else "stop" for o in outs]
        if chat:
            return {**head, "object": "chat.completion", "choices": [
                {"index": 0, "message": {"role": "assistant", "content": outs[0].text},
                 "finish_reason": finish[0]}]}
        return {**head, "object": "text_completion", "choices": [
            {"index": i, "text": o.text, "logprobs": None, "finish_reason": f}
            for i, (o, f) in enumerate(zip(outs, finish, strict=True))]}


class _Handler(BaseHTTPRequestHandler):
    server: OpenAIServer
    protocol_version = "HTTP/1.1"

    def log_message(self, format: str, *args: Any) -> None:
        """Quiet: a test server must not flood the test's output."""

    def _send(self, status: int, payload: dict[str, Any]) -> None:
        data = json.dumps(payload).encode()
        self.send_response(status)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        self.wfile.write(data)

    def _error(self, status: int, message: str) -> None:
        self._send(status, {"error": {"message": message, "type": "BadRequestError", "code": status}})

    def do_GET(self) -> None:
        if self.path == "/health":
            self._send(200, {"status": "ok"})
        elif self.path == "/v1/models":
            self._send(200, {"object": "list", "data": [{"id": self.server.served_name, "object": "model"}]})
        else:
            self._error(404, f"no route {self.path}")

    def do_POST(self) -> None:
        routes = {"/v1/completions": False, "/v1/chat/completions": True}
        length = int(self.headers.get("Content-Length") or 0)
        raw = self.rfile.read(length)
        if self.path not in routes:
            self._error(404, f"no route {self.path}")
            return
        try:
            body = json.loads(raw)
            if not isinstance(body, dict):
                raise _ApiError(400, "body must be a JSON object")
            self._send(200, self.server.complete(body, chat=routes[self.path]))
        except json.JSONDecodeError as exc:
            self._error(400, f"invalid JSON: {exc}")
        except _ApiError as exc:
            self._error(exc.status, str(exc))


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", required=True, help="hub id or local directory")
    parser.add_argument("--served-model-name", default=None, help="default: --model as given")
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=8000, help="0 picks a free port")
    parser.add_argument("--device", default="auto")
    parser.add_argument("--dtype", default="auto", choices=["auto", "float32", "bfloat16", "float16"])
    args = parser.parse_args(argv)
    server = OpenAIServer((args.host, args.port), load_lm(args.model, args.device, args.dtype),
                          args.served_model_name or args.model)
    signal.signal(signal.SIGTERM, lambda *_: threading.Thread(target=server.shutdown).start())
    host, port = server.server_address[:2]
    print(json.dumps({"url": f"http://{host}:{port}/v1", "model": server.served_name,
                      "chat": server.lm.chat}), flush=True)
    try:
        server.serve_forever()
    except KeyboardInterrupt:
        pass
    finally:
        server.server_close()
    return 0


if __name__ == "__main__":
    sys.exit(main())
