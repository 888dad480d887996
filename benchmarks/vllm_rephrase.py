"""vLLM rephrasing throughput on GPUs: captions/s and generated tokens/s per GPU, through the whole
backend (screen, prompt, per-sample seeds, generation, post-processing, validation, fallback).

    python benchmarks/vllm_rephrase.py --model /models/llama-13b [--n 4000] [--tp 1] [--dp N]

Without ``--model`` it builds the tiny random LLaMA of the tests (head size 64) and measures that.
The claim for a 13B LLaMA on one H100/H200 is >= 100 captions/s. Baseline in the same run: bare
``LLM.generate`` over the same prompts with one shared SamplingParams (no per-sample seeds, no
validation), so the ratio is the backend's own cost. Where vllm or a CUDA device is missing it
prints one JSON line saying so and exits 0.
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path[:0] = [str(ROOT), str(ROOT / "tests")]

from schemas.captions import RephraseRequest, RephraseSettings, VllmOptions  # noqa: E402
from tasks.descriptors import describe_arrays  # noqa: E402
from tasks.prompting import build_prompt, screen_caption  # noqa: E402
from tasks.rephrase.runner import summarize  # noqa: E402
from tasks.rephrase.vllm_offline import unavailable_reason  # noqa: E402

TARGET_CAPTIONS_PER_S_13B = 100.0


def bench_requests(n: int) -> list[RephraseRequest]:
    import numpy as np
    from fixtures_llm import CORPUS

    base = [c for c in CORPUS[:16] if not c.startswith(("The sound:", "Rephrase", "near far"))]
    rng = np.random.default_rng(0)
    labels = describe_arrays(rng.uniform(-180, 180, n), rng.uniform(-50, 50, n), rng.uniform(0.5, 4, n),
                             rng.uniform(13.3, 277.4, n), rng.uniform(0.14, 2.7, n))
    return [RephraseRequest(sample_id=str(i), caption=f"{base[i % len(base)]} {i}", descriptors=d, seed=i)
            for i, d in enumerate(labels)]


def run(args: argparse.Namespace, model: str) -> dict:
    import torch

    from tasks.rephrase.vllm_offline import VllmBackend

    opts = VllmOptions(tensor_parallel_size=args.tp, data_parallel_size=args.dp,
                       gpu_memory_utilization=args.gpu_memory_utilization, max_model_len=args.max_model_len)
    settings = RephraseSettings(backend="vllm", model=model, max_tokens=args.max_tokens,
                                max_retries=args.max_retries, vllm=opts)
    reqs = bench_requests(args.n)
    gpus = torch.cuda.device_count()
    t0 = time.perf_counter()
    with VllmBackend(settings) as backend:
        startup_s = time.perf_counter() - t0
        backend.rephrase(reqs[: min(64, args.n)])  # warm-up: CUDA graphs, allocator
        t0 = time.perf_counter()
        results = backend.rephrase(reqs)
        wall_s = time.perf_counter() - t0
        tokens = backend.stats.generated_tokens
        engines = backend.data_parallel_size
        bare = None
        if backend.local_llm is not None:
            from vllm import SamplingParams

            cfg = settings.validation
            prompts = [build_prompt(screen_caption(r.caption, cfg), r.descriptors) for r in reqs]
            params = SamplingParams(temperature=settings.temperature, max_tokens=settings.max_tokens)
            t0 = time.perf_counter()
            outs = backend.local_llm.generate(prompts, params, use_tqdm=False)
            bare_s = time.perf_counter() - t0
            bare_tokens = sum(len(o.outputs[0].token_ids) for o in outs)
            bare = {"bare_generate_captions_per_s": round(len(prompts) / bare_s, 1),
                    "bare_generate_tokens_per_s": round(bare_tokens / bare_s, 1),
                    "backend_vs_bare_time_ratio_per_generation": round(
                        (wall_s / max(1, backend.stats.prompts)) / (bare_s / len(prompts)), 3)}
    report = summarize(results)
    used = engines * args.tp
    return {
        "model": model, "gpus_visible": gpus, "gpus_used": used, "engines": engines,
        "tensor_parallel": args.tp, "gpu_name": torch.cuda.get_device_name(0), "captions": args.n,
        "max_tokens": args.max_tokens, "max_retries": args.max_retries, "startup_s": round(startup_s, 1),
        "wall_s": round(wall_s, 2), "captions_per_s": round(args.n / wall_s, 1),
        "captions_per_s_per_gpu": round(args.n / wall_s / used, 1),
        "generated_tokens": tokens, "generated_tokens_per_s_per_gpu": round(tokens / wall_s / used, 1),
        "generations": backend.stats.prompts, "fallback_rate": round(report.fallback_rate, 4),
        "hallucination_rate": round(report.hallucination_rate, 4), **(bare or {}),
        "target_captions_per_s_13b_one_gpu": TARGET_CAPTIONS_PER_S_13B,
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default=None, help="local model directory (default: build the tiny one)")
    parser.add_argument("--n", type=int, default=2000)
    parser.add_argument("--max-tokens", type=int, default=1024)
    parser.add_argument("--max-retries", type=int, default=2)
    parser.add_argument("--tp", type=int, default=1)
    parser.add_argument("--dp", type=int, default=None)
    parser.add_argument("--gpu-memory-utilization", type=float, default=0.9)
    parser.add_argument("--max-model-len", type=int, default=2048)
    args = parser.parse_args()
    result: dict = {"benchmark": "vllm_rephrase"}
    if reason := unavailable_reason():
        print(json.dumps(result | {"skipped": reason}))
        return
    if args.model:
        result |= run(args, args.model)
    else:
        from fixtures_llm import build_tiny_llama

        with tempfile.TemporaryDirectory() as tmp:
            model = build_tiny_llama(Path(tmp) / "tiny", hidden=128, heads=2, kv_heads=2)
            result |= run(args, str(model)) | {"model": "tiny random LLaMA (hidden 128, 2 layers)"}
    print(json.dumps(result))


if __name__ == "__main__":
    main()
