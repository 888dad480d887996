"""vLLM offline backend: ``LLM.generate`` (or ``LLM.chat``) over every GPU, for the full datasets.

Runs in its own environment (``make llm-env``: vLLM pins its own torch and transformers), so this
module imports vllm only inside the engine, and ``unavailable_reason`` says why it cannot run
before anything heavy is loaded. Data parallel: one engine per group of ``tensor_parallel_size``
GPUs; with one group the engine lives in this process, with several each lives in its own spawned
process pinned to its GPUs by CUDA_VISIBLE_DEVICES, and a batch is split into contiguous shards.
Prefix caching is on; each prompt carries its own seed in its SamplingParams.
"""

from __future__ import annotations

import importlib.util
import multiprocessing as mp
import os
from multiprocessing.connection import Connection
from typing import Any

from schemas.captions import RephraseSettings
from tasks.rephrase.base import BackendUnavailable, Generated, Generation, RephraseBackend


def unavailable_reason() -> str | None:
    """Why vLLM cannot run here (not installed, no CUDA device), or None."""
    if importlib.util.find_spec("vllm") is None:
        return "vllm is not installed (it lives in its own environment: make llm-env)"
    if importlib.util.find_spec("torch") is None:
        return "torch is not installed"
    import torch

    if not torch.cuda.is_available():
        return "no CUDA device"
    return None


def _gpu_count() -> int:
    import torch

    return torch.cuda.device_count()


class _Engine:
    """One vllm.LLM and whether its tokenizer has a chat template."""

    def __init__(self, engine_kwargs: dict[str, Any]) -> None:
        from vllm import LLM

        self.llm = LLM(**engine_kwargs)
        self.chat = bool(getattr(self.llm.get_tokenizer(), "chat_template", None))

    def run(
        self, prompts: list[str], seeds: list[int], temperature: float, max_tokens: int
    ) -> list[tuple[str, int]]:
        from vllm import SamplingParams

        params = [SamplingParams(temperature=temperature, max_tokens=max_tokens, seed=s, n=1) for s in seeds]
        if self.chat:
            outs = self.llm.chat([[{"role": "user", "content": p}] for p in prompts], params, use_tqdm=False)
        else:
            outs = self.llm.generate(prompts, params, use_tqdm=False)
        return [(o.outputs[0].text, len(o.outputs[0].token_ids)) for o in outs]


def _worker(conn: Connection, gpus: str, engine_kwargs: dict[str, Any]) -> None:
    """Process body of one data-parallel engine: build, say ready, then answer shards until None."""
    os.environ["CUDA_VISIBLE_DEVICES"] = gpus
    try:
        engine = _Engine(engine_kwargs)
    except Exception as exc:  # report any start failure to the parent
        conn.send(("error", f"{type(exc).__name__}: {exc}"))
        return
    conn.send(("ready", engine.chat))
    while (job := conn.recv()) is not None:
        try:
            conn.send(("ok", engine.run(*job)))
        except Exception as exc:  # the parent raises BackendUnavailable
            conn.send(("error", f"{type(exc).__name__}: {exc}"))


class _RemoteEngine:
    """An _Engine in a spawned process pinned to ``gpus``."""

    def __init__(self, gpus: str, engine_kwargs: dict[str, Any]) -> None:
        ctx = mp.get_context("spawn")
        self.conn, child = ctx.Pipe()
        # not a daemon: vLLM starts processes of its own, which daemons may not
        self.proc = ctx.Process(target=_worker, args=(child, gpus, engine_kwargs), daemon=False)
        self.proc.start()
        self.gpus = gpus

    def ready(self) -> None:
        kind, value = self.conn.recv()
        if kind != "ready":
            raise BackendUnavailable(f"vLLM engine on GPUs {self.gpus} failed to start: {value}")

    def submit(self, job: tuple) -> None:
        self.conn.send(job)

    def result(self) -> list[tuple[str, int]]:
        kind, value = self.conn.recv()
        if kind != "ok":
            raise BackendUnavailable(f"vLLM engine on GPUs {self.gpus}: {value}")
        return value

    def close(self) -> None:
        if self.proc.is_alive():
            self.conn.send(None)
            self.proc.join(timeout=60)
        if self.proc.is_alive():
            self.proc.terminate()


class VllmBackend(RephraseBackend):
    """Offline vLLM engines, data parallel over GPU groups, optionally tensor parallel inside each."""

    name = "vllm"

    def __init__(self, settings: RephraseSettings) -> None:
        super().__init__(settings)
        if reason := unavailable_reason():
            raise BackendUnavailable(f"vllm backend: {reason}")
        opts = settings.vllm
        tp, gpus = opts.tensor_parallel_size, _gpu_count()
        dp = opts.data_parallel_size or max(1, gpus // tp)
        if dp * tp > gpus:
            raise BackendUnavailable(f"vllm backend: {dp} engines x {tp} GPUs need {dp * tp}, {gpus} visible")
        kwargs: dict[str, Any] = {
            "model": settings.model, "tensor_parallel_size": tp, "seed": 0, "dtype": opts.dtype,
            "enable_prefix_caching": opts.enable_prefix_caching,
            "gpu_memory_utilization": opts.gpu_memory_utilization,
        }
        optional = {"max_model_len": opts.max_model_len, "max_num_seqs": opts.max_num_seqs}
        kwargs |= {k: v for k, v in optional.items() if v is not None}
        self.data_parallel_size = dp
        self._local: _Engine | None = None
        self._remote: list[_RemoteEngine] = []
        if dp == 1:
            self._local = _Engine(kwargs)
            return
        visible = os.environ.get("CUDA_VISIBLE_DEVICES", ",".join(str(i) for i in range(gpus))).split(",")
        self._remote = [_RemoteEngine(",".join(visible[r * tp : (r + 1) * tp]), kwargs) for r in range(dp)]
        try:
            for engine in self._remote:
                engine.ready()
        except BackendUnavailable:
            self.close()
            raise

    @property
    def local_llm(self) -> Any:
        """The in-process ``vllm.LLM`` when there is one engine (baselines, inspection), else None."""
        return self._local.llm if self._local is not None else None

    def close(self) -> None:
        for engine in self._remote:
            engine.close()
        self._remote = []

    def _generate(self, jobs: list[Generation]) -> list[Generated]:
        prompts, seeds = [j.prompt for j in jobs], [j.seed for j in jobs]
        t, m = self.settings.temperature, self.settings.max_tokens
        if self._local is not None:
            outs = self._local.run(prompts, seeds, t, m)
        else:
            size = -(-len(jobs) // len(self._remote))
            shards = [(r * size, min(len(jobs), (r + 1) * size)) for r in range(len(self._remote))]
            busy = [(e, a, b) for e, (a, b) in zip(self._remote, shards, strict=True) if a < b]
            for engine, a, b in busy:
                engine.submit((prompts[a:b], seeds[a:b], t, m))
            outs = [o for engine, _, _ in busy for o in engine.result()]
        return [Generated(text, tokens=n) for text, n in outs]
