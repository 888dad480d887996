"""The caption commands of ``spatial-audiocaps``: ``describe`` and ``rephrase``.

``add_commands`` registers them on the main parser's subparsers; each handler returns a
JSON-serialisable dict that the main CLI prints as one line. Units: degrees, metres, m², seconds.
"""

from __future__ import annotations

import argparse
from pathlib import Path
from typing import Any, get_args

from schemas.captions import (
    BackendName,
    DescriptorConfig,
    OpenAIOptions,
    RephraseRequest,
    RephraseSettings,
    SpatialAttributes,
    TransformersOptions,
    VllmOptions,
)

_BACKENDS = get_args(BackendName)


def _descriptor_config(args: argparse.Namespace) -> DescriptorConfig:
    from tasks.descriptors import DEFAULT_DESCRIPTOR_CONFIG, load_descriptor_config

    if args.descriptor_config:
        return load_descriptor_config(args.descriptor_config)
    return DEFAULT_DESCRIPTOR_CONFIG


def _settings(args: argparse.Namespace, backend: str) -> RephraseSettings:
    """RephraseSettings from the shared options; pydantic rejects bad values (exit 2)."""
    defaults = RephraseSettings()
    return RephraseSettings(
        backend=backend,
        model=args.model or defaults.model,
        temperature=args.temperature, max_tokens=args.max_tokens, max_retries=args.max_retries,
        openai=OpenAIOptions(base_url=args.base_url, api=args.api, concurrency=args.concurrency),
        vllm=VllmOptions(tensor_parallel_size=args.tensor_parallel_size,
                         data_parallel_size=args.data_parallel_size,
                         gpu_memory_utilization=args.gpu_memory_utilization),
        transformers=TransformersOptions(device=args.device, dtype=args.dtype,
                                         batch_size=args.gen_batch_size),
    )


def _cmd_describe(args: argparse.Namespace) -> dict[str, Any]:
    from tasks.descriptors import describe
    from tasks.prompting import build_prompt, screen_caption

    attrs = SpatialAttributes(azimuth_deg=args.azimuth, elevation_deg=args.elevation,
                              distance_m=args.distance, floor_area_m2=args.area, t30_s=args.t30)
    descriptors = describe(attrs, _descriptor_config(args))
    settings = _settings(args, args.backend or "template")
    caption = screen_caption(args.caption, settings.validation)
    out: dict[str, Any] = {
        "attributes": attrs.model_dump(),
        "descriptors": descriptors.model_dump(),
        "prompt": build_prompt(caption, descriptors),
    }
    if args.backend:
        from tasks.rephrase.base import make_backend

        request = RephraseRequest(sample_id="cli", caption=args.caption, descriptors=descriptors,
                                  seed=args.seed)
        with make_backend(settings) as backend:
            result = backend.rephrase([request])[0]
        out["rephrased"] = result.model_dump(
            mode="json", include={"status", "caption", "backend", "model", "produced_by", "attempts", "seed",
                                  "validation", "attempt_flaws"},
        )
    return out


def _cmd_rephrase(args: argparse.Namespace) -> dict[str, Any]:
    from tasks.errors import SpatialAudioCapsError
    from tasks.rephrase.base import make_backend
    from tasks.rephrase.cache import RephraseCache
    from tasks.rephrase.runner import run_rephrase, summarize
    from tasks.rephrase.table_io import read_requests, write_results

    if args.batch_size < 1:
        raise SpatialAudioCapsError(f"--batch-size must be at least 1, got {args.batch_size}")
    requests = read_requests(args.inp, _descriptor_config(args), default_seed=args.seed)
    settings = _settings(args, args.backend)
    out = Path(args.out)
    cache_dir = None if args.no_cache else Path(args.cache) if args.cache else out.parent / ".rephrase-cache"
    cache = RephraseCache(cache_dir) if cache_dir else None
    with make_backend(settings) as backend:
        results = run_rephrase(requests, backend, cache, batch_size=args.batch_size)
        stats = backend.stats
    write_results(results, out)
    return {
        "out": str(out),
        "backend": settings.backend,
        "model": results[0].model if results else None,
        "cache": str(cache_dir) if cache_dir else None,
        "backend_generate_calls": stats.generate_calls,
        "backend_seconds": round(stats.seconds, 3),
        "generated_tokens": stats.generated_tokens,
        "report": summarize(results).model_dump(),
    }


def _backend_options(p: argparse.ArgumentParser) -> None:
    s = RephraseSettings()
    p.add_argument("--model", default=None, help=f"hub id or local path (default {s.model})")
    p.add_argument("--seed", type=int, default=0, help="base seed (rephrase: rows without a seed column)")
    p.add_argument("--temperature", type=float, default=s.temperature)
    p.add_argument("--max-tokens", type=int, default=s.max_tokens)
    p.add_argument("--max-retries", type=int, default=s.max_retries,
                   help="new-seed retries before the template")
    p.add_argument("--descriptor-config", default=None, help="YAML of DescriptorConfig thresholds")
    p.add_argument("--base-url", default=s.openai.base_url, help="openai: server URL up to /v1")
    p.add_argument("--api", default=s.openai.api, choices=["auto", "chat", "completions"], help="openai")
    p.add_argument("--concurrency", type=int, default=s.openai.concurrency, help="openai: requests in flight")
    p.add_argument("--tensor-parallel-size", type=int, default=s.vllm.tensor_parallel_size, help="vllm")
    p.add_argument("--data-parallel-size", type=int, default=None, help="vllm: engines (default: all GPUs)")
    p.add_argument("--gpu-memory-utilization", type=float, default=s.vllm.gpu_memory_utilization, help="vllm")
    p.add_argument("--device", default=s.transformers.device, help="transformers: auto, cpu, cuda")
    p.add_argument("--dtype", default=s.transformers.dtype,
                   choices=["auto", "float32", "bfloat16", "float16"], help="transformers")
    p.add_argument("--gen-batch-size", type=int, default=s.transformers.batch_size,
                   help="transformers: prompts per generate call")


def add_commands(sub: argparse._SubParsersAction) -> None:
    """Register ``describe`` and ``rephrase`` on the main parser's subparsers."""
    describe = sub.add_parser("describe", help="descriptors and prompt of one caption (optionally rephrased)")
    describe.add_argument("--azimuth", type=float, required=True, help="degrees, 0 = front, +90 = left")
    describe.add_argument("--elevation", type=float, required=True, help="degrees, +90 = up")
    describe.add_argument("--distance", type=float, required=True, help="metres")
    describe.add_argument("--area", type=float, required=True, help="floor area, m²")
    describe.add_argument("--t30", type=float, required=True, help="full-band T30, seconds")
    describe.add_argument("--caption", required=True)
    describe.add_argument("--backend", choices=_BACKENDS, default=None,
                          help="also rephrase with this backend")
    _backend_options(describe)
    describe.set_defaults(func=_cmd_describe)

    rephrase = sub.add_parser("rephrase", help="rephrase prompts.parquet into captions.parquet")
    rephrase.add_argument("--in", dest="inp", required=True, help="prompts.parquet")
    rephrase.add_argument("--out", required=True, help="captions.parquet")
    rephrase.add_argument("--backend", choices=_BACKENDS, default="template")
    rephrase.add_argument("--batch-size", type=int, default=256, help="requests per cached batch")
    rephrase.add_argument("--cache", default=None,
                          help="cache directory (default: .rephrase-cache beside --out)")
    rephrase.add_argument("--no-cache", action="store_true")
    _backend_options(rephrase)
    rephrase.set_defaults(func=_cmd_rephrase)
