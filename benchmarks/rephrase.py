"""Rephrasing throughput: captions per second for the template backend and for the transformers
backend on a tiny random LLaMA (CPU by default), each against a bare baseline in the same run.

template: ``TemplateBackend.rephrase`` (screen, prompt, seeds, template, post-processing and full
validation) over ``--n-template`` captions with random labels, against the bare rewrite alone
(``template_caption`` on the same cleaned captions): the ratio is what screening and validation
cost on top.

transformers: ``TransformersBackend.rephrase`` over ``--n-llm`` captions (max_retries 0, so one
generation each) against bare HF ``generate(do_sample=True)`` on the same prompts, batch size and
max_new_tokens: the ratio is what per-sample seeded sampling, post-processing and validation
cost. The model is built here (tests/fixtures_llm.build_tiny_llama: random weights, tokenizer
trained on a few captions; ``--hidden``/``--layers`` make it larger), so its output never passes
validation; a second run with the default retries reports the hallucination and fallback rates
such a model gets.

Captions come from ../shared/realdata/captions when present, else from a small built-in list.
Prints one JSON line.
"""

from __future__ import annotations

import argparse
import csv
import json
import os
import platform
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path[:0] = [str(ROOT), str(ROOT / "tests")]

from fixtures_llm import CORPUS, build_tiny_llama  # noqa: E402

from schemas.captions import RephraseRequest, RephraseSettings, TransformersOptions  # noqa: E402
from tasks.descriptors import describe_arrays  # noqa: E402
from tasks.prompting import build_prompt, screen_caption  # noqa: E402
from tasks.rephrase.base import make_backend  # noqa: E402
from tasks.rephrase.phrasing import template_caption  # noqa: E402
from tasks.rephrase.runner import summarize  # noqa: E402

CAPTIONS = ROOT.parent / "shared" / "realdata" / "captions" / "audiocaps" / "dataset" / "train.csv"


def captions(n: int) -> tuple[list[str], str]:
    if CAPTIONS.is_file():
        with CAPTIONS.open(newline="", encoding="utf-8") as fh:
            rows = [r["caption"] for r in csv.DictReader(fh)]
        return rows[:n], "audiocaps train"
    base = CORPUS[:16]
    return [base[i % len(base)] + f" {i}" for i in range(n)], "built-in"


def requests(texts: list[str], seed: int) -> list[RephraseRequest]:
    rng = np.random.default_rng(seed)
    n = len(texts)
    labels = describe_arrays(rng.uniform(-180, 180, n), rng.uniform(-50, 50, n), rng.uniform(0.5, 4, n),
                             rng.uniform(13.3, 277.4, n), rng.uniform(0.14, 2.7, n))
    return [RephraseRequest(sample_id=str(i), caption=t, descriptors=d, seed=i)
            for i, (t, d) in enumerate(zip(texts, labels, strict=True))]


def bench_template(n: int) -> dict:
    texts, source = captions(n)
    reqs = requests(texts, 0)
    backend = make_backend(RephraseSettings())
    t0 = time.process_time()
    results = backend.rephrase(reqs)
    pipeline_s = time.process_time() - t0
    cleaned = [(r.original_caption, r.descriptors) for r in results if r.status != "rejected"]
    t0 = time.process_time()
    for i, (c, d) in enumerate(cleaned):
        template_caption(c, d, i)
    bare_s = time.process_time() - t0
    report = summarize(results)
    return {
        "template_captions": n, "template_source": source,
        "template_captions_per_cpu_s": round(n / pipeline_s, 1),
        "template_bare_rewrite_per_cpu_s": round(len(cleaned) / bare_s, 1),
        "template_pipeline_cost_ratio": round((pipeline_s / n) / (bare_s / len(cleaned)), 2),
        "template_pass_rate": round(report.first_pass_rate, 4),
    }


def bench_transformers(n: int, max_tokens: int, batch: int, device: str, hidden: int, layers: int) -> dict:
    import torch

    texts, _ = captions(n)
    reqs = requests(texts, 1)
    with tempfile.TemporaryDirectory() as tmp:
        heads, kv_heads = (4, 2) if hidden < 128 else (hidden // 64, hidden // 64)  # head size 8 or 64
        model_dir = build_tiny_llama(Path(tmp) / "m", hidden=hidden, layers=layers, heads=heads,
                                     kv_heads=kv_heads)
        opts = TransformersOptions(device=device, batch_size=batch)
        settings = RephraseSettings(backend="transformers", model=str(model_dir), max_tokens=max_tokens,
                                    max_retries=0, transformers=opts)
        backend = make_backend(settings)
        backend.rephrase(reqs[:batch])  # warm-up (allocator, kernels)
        sync = torch.cuda.synchronize if backend.lm.device.type == "cuda" else (lambda: None)
        sync()
        t0 = time.perf_counter()
        results = backend.rephrase(reqs)
        sync()
        pipeline_s = time.perf_counter() - t0
        tokens = sum(r.generated_tokens for r in results)

        lm, tok = backend.lm, backend.lm.tokenizer
        prompts = [build_prompt(screen_caption(r.caption, settings.validation), r.descriptors) for r in reqs]
        torch.manual_seed(0)
        sync()
        t0 = time.perf_counter()
        bare_tokens = 0
        for start in range(0, n, batch):
            enc = tok(prompts[start : start + batch], return_tensors="pt", padding=True).to(lm.device)
            with torch.inference_mode():
                out = lm.model.generate(**enc, max_new_tokens=max_tokens, do_sample=True, temperature=0.9,
                                        top_k=0, pad_token_id=tok.pad_token_id)
            bare_tokens += int((out[:, enc["input_ids"].shape[1] :] != tok.pad_token_id).sum())
        sync()
        bare_s = time.perf_counter() - t0

        retry = make_backend(settings.model_copy(update={"max_retries": 2}))
        rates = summarize(retry.rephrase(reqs))
        params = sum(p.numel() for p in lm.model.parameters())
    return {
        "llm_device": str(lm.device), "llm_params": params, "llm_hidden": hidden, "llm_layers": layers,
        "llm_captions": n, "llm_max_tokens": max_tokens, "llm_batch": batch,
        "transformers_captions_per_s": round(n / pipeline_s, 2),
        "transformers_generated_tokens_per_s": round(tokens / pipeline_s, 1),
        "bare_generate_captions_per_s": round(n / bare_s, 2),
        "bare_generate_tokens_per_s": round(bare_tokens / bare_s, 1),
        "transformers_vs_bare_time_ratio": round(pipeline_s / bare_s, 2),
        "tiny_model_hallucination_rate": round(rates.hallucination_rate, 4),
        "tiny_model_fallback_rate": round(rates.fallback_rate, 4),
        "tiny_model_flaws": rates.flaw_counts,
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--n-template", type=int, default=20000)
    parser.add_argument("--n-llm", type=int, default=64)
    parser.add_argument("--max-tokens", type=int, default=32)
    parser.add_argument("--batch", type=int, default=16)
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--hidden", type=int, default=32)
    parser.add_argument("--layers", type=int, default=2)
    parser.add_argument("--skip-template", action="store_true")
    args = parser.parse_args()
    result: dict = {"benchmark": "rephrase"}
    if not args.skip_template:
        result |= bench_template(args.n_template)
    result |= bench_transformers(args.n_llm, args.max_tokens, args.batch, args.device, args.hidden,
                                 args.layers)
    import torch
    import transformers

    result |= {"cpu_count": len(os.sched_getaffinity(0)), "python": platform.python_version(),
               "torch": torch.__version__, "transformers": transformers.__version__}
    print(json.dumps(result))


if __name__ == "__main__":
    main()
