"""Paper scale on this box: the build flow with 2 workers at three sizes spanning 30x, same run.

Each size (demo corpus, the default 8,972-room set, shard_size 256, template captions) runs in a
fresh child process with its own output and PREFECT_HOME; the parent polls the child's process
tree for peak RSS (benchmarks.measure.TreePeaks). What is reported per size:

- overhead CPU per sample: CPU of the flow call (the flow process, its Dask workers, the ephemeral
  Prefect server; benchmarks.measure) minus the render stage's CPU (ShardStats.render_cpu_s: decode,
  resample, convolve, encode) minus the RIR bank's rendering (BuildResult.rir_cpu_s, which scales
  with the room set, not the dataset), over samples; the bank is reported beside it;
- peak RSS of the flow process (the child: imports, server client, the flow) and of the largest
  other descendant that is not the Prefect server (a Dask worker);
- RIR-bank bytes read per shard against the bytes of the RIRs it uses (ShardStats).

Targets (issue 12): overhead per sample at the largest size <= 1.2x the middle size; flow RSS at
the largest <= 1.5x the smallest; worker peak RSS <= 1.5 GiB; bank bytes read per shard <= 2x
the RIR bytes it uses. Prints one JSON line per size, then the summary line. The paper-scale
projection takes the largest run's rates: rendering per audio second (the paper's samples are
longer than the demo's), the overhead per sample, and the bank per RIR over the whole room set.
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from benchmarks.measure import TreePeaks, live_descendants_cpu_s, rusage_cpu_s  # noqa: E402

PAPER = {"Spatial-AudioCaps": (98_459, 258.12), "all three (ELSA)": (890_038, 4738.55)}
"""Samples and hours of audio (ELSA, Table A.T.1 and the abstract)."""
GiB = 1 << 30
SERVER = ("uvicorn", "prefect.server", "prefect server")


def child(spec: dict) -> None:
    """One build in this process; prints its figures as a JSON line."""
    import pyarrow.parquet as pq
    from prefect.client.orchestration import get_client

    from flows.build import build_spatial_dataset
    from schemas.build import BuildConfig, RunOptions

    with get_client(sync_client=True) as client:  # the ephemeral server starts outside the timing
        client.hello()
    self0, reaped0 = rusage_cpu_s(resource.RUSAGE_SELF), rusage_cpu_s(resource.RUSAGE_CHILDREN)
    live0, _ = live_descendants_cpu_s()
    t = time.perf_counter()
    result = build_spatial_dataset(
        config=BuildConfig(source="demo", limit=spec["clips"], shard_size=spec["shard_size"],
                           shard_membership=spec["membership"]),
        run=RunOptions(n_workers=spec["workers"]), output=spec["out"],
    )
    wall = time.perf_counter() - t
    live1, _ = live_descendants_cpu_s()
    cpu = (rusage_cpu_s(resource.RUSAGE_SELF) - self0) + (rusage_cpu_s(resource.RUSAGE_CHILDREN) - reaped0) \
        + (live1 - live0)
    base = Path(result.uri)
    audio_s = pq.read_table(base / "manifest.parquet", columns=["duration_s"])["duration_s"]
    rirs = sum(len(json.loads(p.read_text())["records"]) for p in (base / "rirs").glob("*.records.json"))
    print(json.dumps({"samples": result.samples, "rejects": result.rejects, "wall_s": wall, "cpu_s": cpu,
                      "audio_s": float(sum(audio_s.to_pylist())), "rir_cpu_s": result.rir_cpu_s,
                      "rir_chunks": result.rir_chunks_rendered + result.rir_chunks_cached, "rirs": rirs,
                      "placements_in_room_set": pq.read_metadata(base / "placements.parquet").num_rows,
                      "shards": [s.model_dump() for s in result.shard_stats]}), flush=True)


def run_size(clips: int, workers: int, shard_size: int, membership: str, root: Path) -> dict[str, Any]:
    out = root / f"clips{clips}"
    env = {k: v for k, v in os.environ.items() if not k.startswith("PREFECT_")}
    env |= {"PREFECT_HOME": str(root / f"prefect{clips}"), "PREFECT_SERVER_ANALYTICS_ENABLED": "false",
            "PREFECT_SERVER_EPHEMERAL_STARTUP_TIMEOUT_SECONDS": "180", "OMP_NUM_THREADS": "1",
            "PREFECT_LOGGING_LEVEL": "WARNING"}
    spec = {"clips": clips, "workers": workers, "shard_size": shard_size, "membership": membership,
            "out": str(out)}
    proc = subprocess.Popen([sys.executable, __file__, "--child", json.dumps(spec)], env=env, cwd=REPO,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    with TreePeaks(proc.pid) as peaks:
        stdout, stderr = proc.communicate()
    if proc.returncode != 0:
        raise SystemExit(f"build of {clips} clips failed:\n{stderr[-4000:]}")
    run = json.loads(next(line for line in reversed(stdout.splitlines()) if line.startswith("{")))
    worker_rss, worker_cmd = peaks.largest_descendant(exclude=SERVER)
    shards = [s for s in run.pop("shards") if s["outcome"] != "skipped"]
    render = sum(s["render_cpu_s"] for s in shards)
    ratios = [s["bank_bytes_read"] / s["bank_bytes_used"] for s in shards if s["bank_bytes_used"]]
    overhead = run["cpu_s"] - render - run["rir_cpu_s"]
    return {
        "clips": clips, "samples": run["samples"], "rejects": run["rejects"], "shards": len(shards),
        "wall_s": round(run["wall_s"], 1), "cpu_s": round(run["cpu_s"], 1), "render_cpu_s": round(render, 1),
        "rir_bank_cpu_s": round(run["rir_cpu_s"], 1), "rir_chunks": run["rir_chunks"], "rirs": run["rirs"],
        "placements_in_room_set": run["placements_in_room_set"],
        "overhead_cpu_s": round(overhead, 1),
        "overhead_cpu_ms_per_sample": round(1000 * overhead / run["samples"], 2),
        "render_audio_s_per_cpu_s": round(run["audio_s"] / render, 1),
        "cpu_ms_per_sample_all": round(1000 * run["cpu_s"] / run["samples"], 1),
        "audio_s": round(run["audio_s"], 1),
        "flow_peak_rss_mib": round(peaks.root_peak() / 2**20, 1),
        "worker_peak_rss_mib": round(worker_rss / 2**20, 1),
        "worker_cmd": worker_cmd[:80],
        "bank_bytes_read_per_shard_median": int(statistics.median(s["bank_bytes_read"] for s in shards)),
        "bank_bytes_used_per_shard_median": int(statistics.median(s["bank_bytes_used"] for s in shards)),
        "bank_read_over_used_median": round(statistics.median(ratios), 3) if ratios else None,
        "bank_read_over_used_max": round(max(ratios), 3) if ratios else None,
        "bank_read_over_used_total": round(sum(s["bank_bytes_read"] for s in shards)
                                           / max(1, sum(s["bank_bytes_used"] for s in shards)), 3),
    }


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--clips", type=int, nargs=3, default=[200, 2000, 6000],
                    help="demo clips per size (samples = 3 x clips: 2 augmentations + the original)")
    ap.add_argument("--workers", type=int, default=2)
    ap.add_argument("--shard-size", type=int, default=256)
    ap.add_argument("--membership", choices=["mixed", "locality"], default="mixed")
    ap.add_argument("--child", default=None, help=argparse.SUPPRESS)
    a = ap.parse_args()
    if a.child:
        child(json.loads(a.child))
        return
    t0 = time.perf_counter()
    runs = []
    with tempfile.TemporaryDirectory(prefix="bench-scale-") as tmp:
        for clips in a.clips:
            runs.append(run_size(clips, a.workers, a.shard_size, a.membership, Path(tmp)))
            print(json.dumps({"benchmark": "scale", "size": runs[-1]}), flush=True)
    small, mid, large = runs
    render_rate = large["audio_s"] / large["render_cpu_s"]  # rendering scales with audio seconds
    overhead = large["overhead_cpu_s"] / large["samples"]  # the rest with samples
    bank = large["rir_bank_cpu_s"] / large["rirs"] * large["placements_in_room_set"]
    summary = {
        "benchmark": "scale", "workers": a.workers, "shard_size": a.shard_size, "membership": a.membership,
        "rooms": "default (8,972)",
        "samples": [r["samples"] for r in runs], "span": round(large["samples"] / small["samples"], 1),
        "overhead_per_sample_large_over_mid": round(large["overhead_cpu_ms_per_sample"]
                                                    / mid["overhead_cpu_ms_per_sample"], 3),
        "flow_rss_large_over_small": round(large["flow_peak_rss_mib"] / small["flow_peak_rss_mib"], 3),
        "worker_peak_rss_gib_max": round(max(r["worker_peak_rss_mib"] for r in runs) / 1024, 3),
        "bank_read_over_used_max": max(r["bank_read_over_used_max"] or 0 for r in runs),
        "targets": {"overhead_ratio": 1.2, "flow_rss_ratio": 1.5, "worker_rss_gib": 1.5,
                    "bank_read_ratio": 2.0},
        "paper_scale_core_hours": {name: round((h * 3600 / render_rate + n * overhead + bank) / 3600, 1)
                                   for name, (n, h) in PAPER.items()},
        "paper_scale_method": "largest run: the paper's audio hours / render rate (audio-s per render CPU-s) "
                              "+ samples x overhead CPU per sample (all processes) + RIR-bank CPU per RIR x "
                              "every placement of the room set; this box's cores",
        "total_wall_s": round(time.perf_counter() - t0, 1), "cpu_count": os.cpu_count(),
    }
    summary["pass"] = (summary["overhead_per_sample_large_over_mid"] <= 1.2
                       and summary["flow_rss_large_over_small"] <= 1.5
                       and summary["worker_peak_rss_gib_max"] <= 1.5
                       and summary["bank_read_over_used_max"] <= 2.0)
    print(json.dumps(summary), flush=True)


if __name__ == "__main__":
    main()
