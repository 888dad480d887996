"""Retrieval-metric cost at evaluation scale: 10k audio × 50k caption embeddings (512-d) on CPU.

Claim: ``training.metrics.retrieval_metrics`` computes the LAION-CLAP metrics of both directions
with the similarity matrix in row blocks of at most ``--block-mb`` (default 256 MiB), so peak
memory stays bounded, at a wall time close to a single dense matmul's. Baseline, same run and
same inputs: one dense ``audio @ text.T`` (10k × 50k float32 = 1.9 GiB) from which both
directions are ranked with the same tie rule. Both must give identical metrics.

Inputs: random unit vectors; each clip has 5 captions that are noisy copies of its audio
embedding (noise ``--noise``), so the ranks are spread as in a real evaluation. Peak memory is
tracemalloc's peak of numpy allocations during each phase (inputs excluded), plus the process
``ru_maxrss`` after each phase. Prints one JSON line.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import resource
import sys
import time
import tracemalloc
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from training.metrics import RetrievalRanks, caption_table, metrics_from_ranks, retrieval_metrics


def log(msg: str) -> None:
    print(msg, file=sys.stderr, flush=True)


def inputs(n_audio: int, per_clip: int, dim: int, noise: float, seed: int) -> tuple[np.ndarray, ...]:
    rng = np.random.default_rng(seed)
    a = rng.standard_normal((n_audio, dim), dtype=np.float32)
    a /= np.linalg.norm(a, axis=1, keepdims=True)
    idx = np.repeat(np.arange(n_audio), per_clip)
    rng.shuffle(idx)
    t = a[idx] + np.float32(noise / np.sqrt(dim)) * rng.standard_normal((idx.size, dim), dtype=np.float32)
    t /= np.linalg.norm(t, axis=1, keepdims=True)
    assert a.dtype == t.dtype == np.float32
    return a, t, idx


def dense_metrics(a: np.ndarray, t: np.ndarray, idx: np.ndarray) -> dict[str, float]:
    """The baseline: one dense similarity matrix, both directions ranked from it."""
    s = a @ t.T  # (n_audio, n_text)
    cols = np.arange(t.shape[0])
    g = s[idx, cols][None, :]
    t2a = (s > g).sum(axis=0) + (s == g).sum(axis=0) - 1
    table = caption_table(idx, a.shape[0])
    valid = table >= 0
    gs = np.where(valid, s[np.arange(a.shape[0])[:, None], np.maximum(table, 0)], np.nan)
    k = table.shape[1]
    greater = np.stack([(s > gs[:, j : j + 1]).sum(axis=1) for j in range(k)], axis=1)
    equal = np.stack([(s == gs[:, j : j + 1]).sum(axis=1) for j in range(k)], axis=1)
    same = (gs[:, :, None] == gs[:, None, :]) & valid[:, None, :]
    before = (np.tril(np.ones((k, k), bool), -1)[None] & same).sum(axis=2)
    pos = np.where(valid, greater + equal - same.sum(axis=2) + before, np.iinfo(np.int64).max)
    pos.sort(axis=1)
    pos = np.where(pos == np.iinfo(np.int64).max, -1, pos)
    return metrics_from_ranks(RetrievalRanks(t2a=t2a, a2t=pos, n_gt=np.bincount(idx, minlength=a.shape[0])))


def measure(fn, *args) -> tuple[dict[str, float], float, float, float]:
    tracemalloc.start()
    tracemalloc.reset_peak()
    t0, c0 = time.perf_counter(), time.process_time()
    out = fn(*args)
    wall, cpu = time.perf_counter() - t0, time.process_time() - c0
    _, peak = tracemalloc.get_traced_memory()
    tracemalloc.stop()
    return out, wall, cpu, peak / 2**20


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__)
    p.add_argument("--n-audio", type=int, default=10_000)
    p.add_argument("--per-clip", type=int, default=5)
    p.add_argument("--dim", type=int, default=512)
    p.add_argument("--noise", type=float, default=6.0)
    p.add_argument("--block-mb", type=float, default=256.0)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--skip-dense", action="store_true", help="omit the dense baseline (it needs ~6 GiB)")
    a = p.parse_args()
    t_all = time.perf_counter()
    audio, text, idx = inputs(a.n_audio, a.per_clip, a.dim, a.noise, a.seed)
    input_mib = (audio.nbytes + text.nbytes + idx.nbytes) / 2**20
    log(f"inputs: {audio.shape} audio, {text.shape} text, {input_mib:.0f} MiB")
    blocked, b_wall, b_cpu, b_peak = measure(
        lambda: retrieval_metrics(audio, text, idx, max_block_mb=a.block_mb)
    )
    b_rss = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    log(f"blocked: {b_wall:.1f} s wall, peak {b_peak:.0f} MiB")
    rec: dict = {
        "benchmark": "eval",
        "n_audio": a.n_audio,
        "n_text": int(idx.size),
        "dim": a.dim,
        "captions_per_clip": a.per_clip,
        "block_mb": a.block_mb,
        "inputs_mib": round(input_mib, 1),
        "blocked_wall_s": round(b_wall, 2),
        "blocked_cpu_s": round(b_cpu, 2),
        "blocked_peak_mib": round(b_peak, 1),
        "blocked_rss_after_mib": round(b_rss, 1),
        "metrics": {k: round(v, 5) for k, v in blocked.items()},
    }
    if not a.skip_dense:
        dense, d_wall, d_cpu, d_peak = measure(dense_metrics, audio, text, idx)
        d_rss = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
        log(f"dense: {d_wall:.1f} s wall, peak {d_peak:.0f} MiB")
        rec.update(
            {
                "dense_wall_s": round(d_wall, 2),
                "dense_cpu_s": round(d_cpu, 2),
                "dense_peak_mib": round(d_peak, 1),
                "dense_rss_after_mib": round(d_rss, 1),
                "wall_ratio_blocked_over_dense": round(b_wall / d_wall, 3),
                "cpu_ratio_blocked_over_dense": round(b_cpu / d_cpu, 3),
                "peak_ratio_dense_over_blocked": round(d_peak / max(b_peak, 1e-9), 1),
                "metrics_identical": dense == blocked,
            }
        )
    rec.update(
        {
            "peak_how": "tracemalloc peak of allocations during the phase (inputs excluded)",
            "total_wall_s": round(time.perf_counter() - t_all, 1),
            "cpu_count": os.cpu_count(),
            "python": platform.python_version(),
            "numpy": np.__version__,
        }
    )
    print(json.dumps(rec))
    return 0


if __name__ == "__main__":
    sys.exit(main())
