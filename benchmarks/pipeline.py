"""End-to-end build throughput: the build-spatial-dataset flow on the demo corpus, 1 and 2 Dask
workers, against the same stage functions called in a plain single-process loop.

Each configuration runs in its own fresh child process, output directory and PREFECT_HOME, so
every run pays (and reports separately) its own imports, ephemeral Prefect server start-up and Dask
LocalCluster; the room set is small (``--n-rooms 40`` gives 48 placements), so each RIR is reused by
~20 samples as at paper scale.

Source. ``--source demo-files`` (default) writes the demo corpus (``tasks.demo_corpus.demo_clips``,
the same clips and captions as ``source="demo"``) to WAV files and a CSV once, outside the timed
runs, and builds from the CSV: decoding real files, like the real corpora. ``--source demo`` uses
the ``demo://`` URIs literally, which synthesise each clip on read (cheap, but no real source does
that). The JSON reports the measured CPU cost of reading the last clip that way.

CPU seconds. Flow call: getrusage(RUSAGE_SELF) + getrusage(RUSAGE_CHILDREN) of the run process
(the Dask worker processes are its children and are reaped when the cluster closes) plus psutil
``cpu_times`` of its still-live descendants (the ephemeral Prefect server), differenced over the
call. Process: RUSAGE_CHILDREN of this parent differenced over the whole child (imports, server
start and stop, everything). Plain loop: RUSAGE_SELF of its process (no children).

Prints one JSON line. Target: flow (1 worker) wall / plain loop wall <= 1.3.
"""

from __future__ import annotations

import argparse
import csv
import json
import os
import platform
import resource
import shutil
import subprocess
import sys
import tempfile
import time
from collections import Counter
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from benchmarks.measure import live_descendants_cpu_s, rusage_cpu_s  # noqa: E402

# Before anything imports prefect (children inherit these; each gets its own PREFECT_HOME).
os.environ.setdefault("PREFECT_SERVER_ANALYTICS_ENABLED", "false")
os.environ.setdefault("PREFECT_SERVER_EPHEMERAL_STARTUP_TIMEOUT_SECONDS", "180")
ONE_THREAD = {v: "1" for v in ("OMP_NUM_THREADS", "OPENBLAS_NUM_THREADS", "MKL_NUM_THREADS")}

PAPER_SAMPLES = 890_038
PAPER_HOURS = 4_738.0
NODE_CORES = 64
TARGET_OVERHEAD = 1.3


def log(msg: str) -> None:
    print(msg, file=sys.stderr, flush=True)


# ------------------------------------------------------------------------------------------------
# What a build produced


def dataset_stats(base: Path) -> dict[str, Any]:
    import pyarrow.parquet as pq

    from tasks.rir_bank import unpack_chunk

    rows = pq.read_table(base / "manifest.parquet").to_pylist()
    chunks = sorted((base / "rirs").glob("chunk-*.npz"))
    rir_records = sum(len(unpack_chunk(c.read_bytes())[1]) for c in chunks)
    spatial = [r for r in rows if r["spatial"]]
    return {
        "samples": len(rows),
        "spatial_samples": len(spatial),
        "audio_s": sum(r["duration_s"] for r in rows),
        "spatial_audio_s": sum(r["duration_s"] for r in spatial),
        "shards": len({r["shard"] for r in rows}),
        "shards_by_split": dict(Counter(r["split"] for r in {r["shard"]: r for r in rows}.values())),
        "rirs": rir_records,
        "rirs_used": len({r["placement_id"] for r in spatial}),
        "rir_chunks": len(chunks),
        "bytes": sum(p.stat().st_size for p in base.rglob("*") if p.is_file()),
        "digest": sorted((r["key"], r["audio_sha256"]) for r in rows),
    }


# ------------------------------------------------------------------------------------------------
# Child: one run


def _config(spec: dict) -> Any:
    """The one BuildConfig both the flow runs and the plain loop build (template captions)."""
    from schemas.build import BuildConfig

    return BuildConfig(source=spec["source"], input=spec["input"], dataset=spec["dataset"],
                       n_rooms=spec["n_rooms"], shard_size=spec["shard_size"], limit=spec["clips"])


def child_flow(spec: dict) -> dict:
    t = time.perf_counter()
    from prefect.client.orchestration import get_client

    from flows.build import build_spatial_dataset
    from schemas.build import RunOptions

    import_s = time.perf_counter() - t
    t = time.perf_counter()
    with get_client(sync_client=True) as client:  # start the ephemeral server outside the timing
        client.hello()
    server_s = time.perf_counter() - t

    self0, reaped0 = rusage_cpu_s(resource.RUSAGE_SELF), rusage_cpu_s(resource.RUSAGE_CHILDREN)
    live0, _ = live_descendants_cpu_s()
    t = time.perf_counter()
    result = build_spatial_dataset(config=_config(spec), run=RunOptions(n_workers=spec["workers"]),
                                   output=spec["out"])
    wall = time.perf_counter() - t
    live1, live = live_descendants_cpu_s()
    split = {"main_process": rusage_cpu_s(resource.RUSAGE_SELF) - self0,
             "reaped_children": rusage_cpu_s(resource.RUSAGE_CHILDREN) - reaped0,
             "live_descendants": live1 - live0}
    return {"import_s": import_s, "server_start_s": server_s, "wall_s": wall, "cpu_s": sum(split.values()),
            "cpu_split": split, "live_after": live, "uri": result.uri, "version": result.version,
            "rejects": result.rejects, "shard_outcomes": result.shards,
            "rir_chunks_rendered": result.rir_chunks_rendered}


def plain_build(cfg: Any, output: str) -> str:
    """The flow's stages as a plain loop in this process (tasks.build_stages.build_in_process):
    the same functions on the same inputs, no Prefect, Dask or retries."""
    from tasks.build_stages import build_in_process

    return build_in_process(cfg, output)


def child_plain(spec: dict) -> dict:
    t = time.perf_counter()
    import flows.build  # noqa: F401  (same imports as the flow run, outside the timing)

    import_s = time.perf_counter() - t
    cfg = _config(spec)
    cpu0 = rusage_cpu_s(resource.RUSAGE_SELF) + rusage_cpu_s(resource.RUSAGE_CHILDREN)
    t = time.perf_counter()
    base = plain_build(cfg, spec["out"])
    wall = time.perf_counter() - t
    cpu = rusage_cpu_s(resource.RUSAGE_SELF) + rusage_cpu_s(resource.RUSAGE_CHILDREN) - cpu0
    return {"import_s": import_s, "server_start_s": 0.0, "wall_s": wall, "cpu_s": cpu, "uri": base,
            "version": Path(base).name}


def child_main(spec: dict) -> None:
    out = child_flow(spec) if spec["mode"] == "flow" else child_plain(spec)
    out |= dataset_stats(Path(out["uri"]))
    print(json.dumps(out), flush=True)


# ------------------------------------------------------------------------------------------------
# Parent


def materialize_demo(n: int, seed: int, root: Path) -> tuple[Path, float, float]:
    """The demo corpus as WAV files + CSV; returns (csv, CPU s of generation, CPU s of writing)."""
    from tasks.demo_corpus import demo_clips

    t = time.process_time()
    clips = demo_clips(n, seed)
    gen_cpu = time.process_time() - t
    t = time.process_time()
    (root / "clips").mkdir(parents=True)
    with open(root / "demo.csv", "w", newline="", encoding="utf-8") as f:
        w = csv.writer(f)
        w.writerow(["path", "caption_1", "caption_2", "caption_3"])
        for c in clips:
            (root / "clips" / f"{c.clip_id}.wav").write_bytes(c.audio)
            w.writerow([f"clips/{c.clip_id}.wav", *c.captions])
    return root / "demo.csv", gen_cpu, time.process_time() - t


def demo_uri_cost(n: int, seed: int) -> float:
    """CPU s of one read_audio('demo://seed/{n-1}'), i.e. what the last clip of a demo build costs."""
    from tasks.sources import read_audio

    t = time.process_time()
    read_audio(f"demo://{seed}/{n - 1}")
    return time.process_time() - t


def run_child(spec: dict, root: Path) -> dict:
    home = root / f"prefect-home-{spec['name']}"
    home.mkdir()
    env = {k: v for k, v in os.environ.items() if not k.startswith(("PREFECT_API_URL", "AWS_"))}
    env |= ONE_THREAD | {"PREFECT_HOME": str(home), "PYTHONUNBUFFERED": "1"}
    load = os.getloadavg()[0]
    cpu0 = rusage_cpu_s(resource.RUSAGE_CHILDREN)
    t = time.perf_counter()
    res = subprocess.run([sys.executable, __file__, "--child", json.dumps(spec)], env=env, cwd=REPO,
                         capture_output=True, text=True, check=False)
    wall = time.perf_counter() - t
    cpu = rusage_cpu_s(resource.RUSAGE_CHILDREN) - cpu0
    if res.returncode != 0:
        raise SystemExit(f"{spec['name']} failed ({res.returncode}):\n{res.stderr[-4000:]}")
    out = json.loads(next(ln for ln in reversed(res.stdout.splitlines()) if ln.startswith("{")))
    out |= {"process_wall_s": wall, "process_cpu_s": cpu, "load_avg_1m_at_start": load}
    log(f"{spec['name']}: {out['samples']} samples, flow/loop {out['wall_s']:.1f} s wall, "
        f"{out['cpu_s']:.1f} CPU s; process {wall:.1f} s, {cpu:.1f} CPU s")
    return out


def summarize(run: dict) -> dict:
    s = {
        "wall_s": round(run["wall_s"], 2),
        "cpu_s": round(run["cpu_s"], 2),
        "samples_per_s": round(run["samples"] / run["wall_s"], 3),
        "audio_s_per_cpu_s": round(run["audio_s"] / run["cpu_s"], 2),
        "audio_s_per_wall_s": round(run["audio_s"] / run["wall_s"], 2),
        "process_wall_s": round(run["process_wall_s"], 2),
        "process_cpu_s": round(run["process_cpu_s"], 2),
        "process_samples_per_s": round(run["samples"] / run["process_wall_s"], 3),
        "process_audio_s_per_cpu_s": round(run["audio_s"] / run["process_cpu_s"], 2),
        "import_s": round(run["import_s"], 2),
        "server_start_s": round(run["server_start_s"], 2),
        "load_avg_1m_at_start": round(run["load_avg_1m_at_start"], 2),
    }
    if "cpu_split" in run:
        s["cpu_split_s"] = {k: round(v, 2) for k, v in run["cpu_split"].items()}
    if "live_after" in run:
        s["live_descendants_after_flow"] = run["live_after"]
    return s


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--clips", type=int, default=500, help="demo clips (samples = 3 x clips)")
    ap.add_argument("--n-rooms", type=int, default=40, help="rooms in the room set (40 -> 48 placements)")
    ap.add_argument("--source", choices=["demo-files", "demo"], default="demo-files")
    ap.add_argument("--workers", type=int, nargs="+", default=[1, 2], help="Dask worker counts")
    ap.add_argument("--no-plain", action="store_true", help="skip the plain-loop run")
    ap.add_argument("--shard-size", type=int, default=256)
    ap.add_argument("--keep", default=None, help="keep outputs under this directory")
    ap.add_argument("--child", default=None, help=argparse.SUPPRESS)
    a = ap.parse_args()
    if a.child:
        child_main(json.loads(a.child))
        return

    t_all = time.perf_counter()
    root = Path(a.keep) if a.keep else Path(tempfile.mkdtemp(prefix="bench-pipeline-"))
    root.mkdir(parents=True, exist_ok=True)
    seed = 0
    gen_cpu = write_cpu = None
    if a.source == "demo-files":
        csv_path, gen_cpu, write_cpu = materialize_demo(a.clips, seed, root / "corpus")
        base_spec = {"source": "csv", "input": str(csv_path)}
    else:
        base_spec = {"source": "demo", "input": None}
    base_spec |= {"dataset": "demo", "n_rooms": a.n_rooms, "clips": a.clips, "shard_size": a.shard_size}
    last_clip_cpu = demo_uri_cost(a.clips, seed)

    # Interleaved so that drifting background load hits both sides of each comparison.
    order = [("flow", a.workers[0])] + ([] if a.no_plain else [("plain", 1)]) + \
            [("flow", w) for w in a.workers[1:]]
    runs: dict[str, dict] = {}
    try:
        for mode, w in order:
            name = f"flow_{w}w" if mode == "flow" else "plain_loop"
            spec = base_spec | {"mode": mode, "workers": w, "name": name, "out": str(root / name)}
            runs[name] = run_child(spec, root)
    finally:
        if not a.keep:
            shutil.rmtree(root, ignore_errors=True)

    first = runs[f"flow_{a.workers[0]}w"]
    result: dict[str, Any] = {
        "benchmark": "pipeline",
        "source": a.source,
        "clips": a.clips,
        "n_rooms": a.n_rooms,
        "shard_size": a.shard_size,
        "augmentations": {"train": 2, "val": 2, "test": 2},
        "rephraser": "template",
        "dask_worker_malloc_trim_threshold": "unset (flows.build.task_runner)",
        "samples": first["samples"],
        "spatial_samples": first["spatial_samples"],
        "audio_s": round(first["audio_s"], 1),
        "audio_h": round(first["audio_s"] / 3600, 3),
        "spatial_audio_h": round(first["spatial_audio_s"] / 3600, 3),
        "mean_sample_s": round(first["audio_s"] / first["samples"], 2),
        "shards": first["shards"],
        "shards_by_split": first["shards_by_split"],
        "rirs": first["rirs"],
        "rirs_used": first["rirs_used"],
        "rir_chunks": first["rir_chunks"],
        "dataset_bytes": first["bytes"],
        "rejects": first["rejects"],
        "outputs_identical_across_runs": len({json.dumps(r["digest"]) for r in runs.values()}) == 1,
        "versions": sorted({r["version"] for r in runs.values()}),
        "cpu_accounting": "flow call: getrusage(SELF)+getrusage(CHILDREN) of the run process (Dask "
                          "workers, reaped at cluster close) + psutil cpu_times of live descendants "
                          "(ephemeral Prefect server), differenced; process: parent's "
                          "RUSAGE_CHILDREN over the whole child; plain loop: RUSAGE_SELF",
        "runs": {k: summarize(v) for k, v in runs.items()},
    }
    if len(a.workers) >= 2:
        w1, w2 = a.workers[0], a.workers[1]
        r1, r2 = runs[f"flow_{w1}w"], runs[f"flow_{w2}w"]
        result["scaling_efficiency"] = round((r2["samples"] / r2["wall_s"]) / (r1["samples"] / r1["wall_s"])
                                             / (w2 / w1), 3)
        result["scaling_efficiency_process"] = round(
            (r2["samples"] / r2["process_wall_s"]) / (r1["samples"] / r1["process_wall_s"]) / (w2 / w1), 3)
    if "plain_loop" in runs:
        p = runs["plain_loop"]
        result["prefect_overhead_ratio"] = round(first["wall_s"] / p["wall_s"], 3)
        result["prefect_overhead_ratio_with_server_start"] = round(
            (first["wall_s"] + first["server_start_s"]) / p["wall_s"], 3)
        result["prefect_overhead_ratio_process"] = round(first["process_wall_s"] / p["process_wall_s"], 3)
        result["prefect_overhead_cpu_ratio"] = round(first["cpu_s"] / p["cpu_s"], 3)
        result["target_overhead_ratio"] = TARGET_OVERHEAD
        result["pass_overhead"] = result["prefect_overhead_ratio"] <= TARGET_OVERHEAD
    # Paper scale, from the measured audio seconds per CPU second of each flow run.
    proj = {}
    for k, r in runs.items():
        if not k.startswith("flow"):
            continue
        rate = r["audio_s"] / r["cpu_s"]
        core_h = PAPER_HOURS / rate
        proj[k] = {"audio_s_per_cpu_s": round(rate, 2), "core_hours": round(core_h, 1),
                   f"wall_h_{NODE_CORES}_cores_ideal": round(core_h / NODE_CORES, 2),
                   "core_hours_by_samples": round(PAPER_SAMPLES / (r["samples"] / r["cpu_s"]) / 3600, 1)}
    result["paper_scale"] = {"samples": PAPER_SAMPLES, "hours": PAPER_HOURS, "node_cores": NODE_CORES,
                             "mean_sample_s": round(PAPER_HOURS * 3600 / PAPER_SAMPLES, 2), **proj}
    result["demo_uri"] = {"read_audio_last_clip_cpu_s": round(last_clip_cpu, 3)}
    if gen_cpu is not None:
        result["demo_files"] = {"generate_cpu_s": round(gen_cpu, 2), "write_cpu_s": round(write_cpu, 2),
                                "excluded_from_runs": True}
    result |= {
        "total_wall_s": round(time.perf_counter() - t_all, 1),
        "cpu_count": os.cpu_count(),
        "python": platform.python_version(),
    }
    import importlib.metadata as md

    result |= {p: md.version(p) for p in ("prefect", "prefect-dask", "distributed", "numpy")}
    print(json.dumps(result))


if __name__ == "__main__":
    main()
