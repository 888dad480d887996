"""RIR engine speed: CPU seconds per calibrated FOA RIR at 48 kHz, against pyroomacoustics' own
spherical-harmonic microphone path.

Rooms come from the default room set (``room_specs/elsa.yaml``): a pool of rooms is sampled and
``--n`` train placements are picked stratified by target T30 (quantile bins) and, inside each T30
bin, by floor area, so the set spans the distribution. Each is rendered with the full default
path (``render_rir(..., RirSettings())``: ISM order 18 + diffuse tail + T30 calibration), one at
a time in a fresh worker process with one thread (PRA_NUM_THREADS=OMP_NUM_THREADS=1), so CPU
seconds are per core and the worker's ``ru_maxrss`` is the engine's peak RSS (imports included).
A tracemalloc pass over the longest rooms (untimed) reports Python/numpy heap peaks as well.

Baseline, same run: for the ``--baseline-n`` smallest of those rooms, pyroomacoustics' built-in
path — a ShoeBox with the calibrated absorption (``absorption_scale``), ``max_order`` equal to the
engine's ``ism_max_order``, air absorption, 48 kHz, four co-located microphones with
``RealSphericalHarmonicsDirectivity`` for ACN 0..3, then ``room.compute_rir()`` — each in its own
process under a wall-clock timeout and an address-space cap. Its image-source part is compared
with ours (correlation per channel, before the crossover to the diffuse tail).

Prints one JSON line. Claims: baseline/ours >= 20x, mean <= 1.5 s and p95 <= 5 s per RIR per
core, peak RSS <= 2 GiB.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import platform
import resource
import subprocess
import sys
import tempfile
import time
import tracemalloc
from pathlib import Path

import numpy as np
import pyroomacoustics as pra
from scipy.signal import butter, sosfiltfilt

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from room_specs import DEFAULT_CONFIG
from schemas.rooms import OCTAVE_BANDS_HZ, SURFACES, Placement, RirSettings, RoomSpec
from tasks import rir_engine, room_acoustics
from tasks.rir_engine import render_rir, tail_start_s
from tasks.room_sampling import load_config, sample_room_set

ROOT = Path(__file__).resolve().parents[1]
# Workers run single-threaded: "seconds per RIR per core" (pyroomacoustics reads this at import).
ONE_THREAD = {v: "1" for v in ("PRA_NUM_THREADS", "OMP_NUM_THREADS", "OPENBLAS_NUM_THREADS",
                               "MKL_NUM_THREADS")}

TARGET_RATIO = 20.0
TARGET_MEAN_S = 1.5
TARGET_P95_S = 5.0
TARGET_RSS_MIB = 2048.0
ACN_MN = [(0, 0), (-1, 1), (0, 1), (1, 1)]  # (m, n) for ACN 0..3: W, Y, Z, X
HP_CHECK_HZ = 100.0  # shape check also after a zero-phase high-pass of both RIRs
LAST_WINDOW_S = 0.020  # residual ours - baseline over the last 20 ms before the crossover


def log(msg: str) -> None:
    print(msg, file=sys.stderr, flush=True)


def rss_mib() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024.0  # Linux: KiB


def pct(x: list[float] | np.ndarray, q: float) -> float:
    return float(np.percentile(np.asarray(x, dtype=float), q))


# --------------------------------------------------------------------------------------------
# Selection
# --------------------------------------------------------------------------------------------


def select_jobs(pool: int, n: int, seed: int, t30_bins: int) -> list[dict]:
    """n train placements, stratified by target-T30 quantile bin, then by floor area in the bin."""
    rooms, placements, _ = sample_room_set(load_config(DEFAULT_CONFIG), seed, pool)
    by_id = {r.room_id: r for r in rooms}
    train = [p for p in placements if p.split == "train"]
    if len(train) < n:
        raise SystemExit(f"pool of {pool} rooms has only {len(train)} train placements (< {n})")
    rng = np.random.default_rng([seed, 7])
    order = sorted(range(len(train)), key=lambda i: by_id[train[i].room_id].target_t30_s)
    t30_groups = np.array_split(np.asarray(order), t30_bins)
    counts = [len(a) for a in np.array_split(np.arange(n), t30_bins)]
    chosen: list[int] = []
    for group, k in zip(t30_groups, counts, strict=True):
        g = sorted(group.tolist(), key=lambda i: by_id[train[i].room_id].floor_area_m2)
        for sub in np.array_split(np.asarray(g), k):
            chosen.append(int(rng.choice(sub)))
    jobs = []
    for i in chosen:
        p = train[i]
        jobs.append({"room": by_id[p.room_id].model_dump(mode="json"),
                     "placement": p.model_dump(mode="json")})
    return jobs


def _room(job: dict) -> RoomSpec:
    d = {k: v for k, v in job["room"].items() if k not in RoomSpec.model_computed_fields}
    return RoomSpec.model_validate(d)


def _placement(job: dict) -> Placement:
    return Placement.model_validate(job["placement"])


# --------------------------------------------------------------------------------------------
# Worker: our engine
# --------------------------------------------------------------------------------------------


def worker_ours(jobs_path: str, tracemalloc_n: int) -> None:
    jobs = json.loads(Path(jobs_path).read_text())
    settings = RirSettings()
    rss_imports = rss_mib()
    # Warm-up (first-call caches: air absorption table, FFT plans), untimed.
    w0 = jobs[0]
    p0 = _placement(w0)
    render_rir(_room(w0), p0.receiver_m, p0.source_m, p0.receiver_yaw_deg, settings)
    results = []
    for k, job in enumerate(jobs):
        room, p = _room(job), _placement(job)
        t_cpu, t_wall = time.process_time(), time.perf_counter()
        try:
            out = render_rir(room, p.receiver_m, p.source_m, p.receiver_yaw_deg, settings)
        except Exception as exc:  # reported, not hidden
            results.append({"room_id": room.room_id, "error": f"{type(exc).__name__}: {exc}"})
            log(f"[ours {k + 1}/{len(jobs)}] {room.room_id} FAILED {exc}")
            continue
        cpu, wall = time.process_time() - t_cpu, time.perf_counter() - t_wall
        try:
            measured = room_acoustics.t30(out.rir[0], out.fs)
        except Exception:
            measured = float("nan")
        results.append({
            "room_id": room.room_id, "dims_m": list(room.dims_m),
            "floor_area_m2": room.floor_area_m2, "volume_m3": room.volume_m3,
            "target_t30_s": room.target_t30_s, "t30_s": measured,
            "cpu_s": cpu, "wall_s": wall, "iterations": out.calibration_iterations,
            "scale": out.absorption_scale, "ism_max_order": out.ism_max_order,
            "n_samples": int(out.rir.shape[1]), "channels": int(out.rir.shape[0]),
        })
        log(f"[ours {k + 1}/{len(jobs)}] {room.room_id} dims={room.dims_m} "
            f"T30={room.target_t30_s:.3f} cpu={cpu:.3f}s it={out.calibration_iterations}")
    peak_rss = rss_mib()
    # Heap peak (tracemalloc: Python + numpy allocations) on the longest-T30 rooms, untimed.
    ok = [r for r in results if "error" not in r]
    longest = sorted(range(len(ok)), key=lambda i: -ok[i]["target_t30_s"])[:tracemalloc_n]
    heap = []
    for i in longest:
        job = next(j for j in jobs if j["room"]["room_id"] == ok[i]["room_id"])
        room, p = _room(job), _placement(job)
        tracemalloc.start()
        render_rir(room, p.receiver_m, p.source_m, p.receiver_yaw_deg, settings)
        heap.append(tracemalloc.get_traced_memory()[1] / 2**20)
        tracemalloc.stop()
    print(json.dumps({"results": results, "rss_after_imports_mib": rss_imports,
                      "peak_rss_mib": peak_rss, "tracemalloc_peaks_mib": heap,
                      "pra_num_threads": pra.constants.get("num_threads")}))


# --------------------------------------------------------------------------------------------
# Worker: pyroomacoustics' built-in spherical-harmonic microphones
# --------------------------------------------------------------------------------------------


def engine_absorption(room: RoomSpec, scale: float) -> np.ndarray:
    """(6 surfaces, n_bands) absorption the engine uses at ``absorption_scale`` = scale."""
    if hasattr(rir_engine, "_absorption"):
        return np.asarray(rir_engine._absorption(room, scale))
    base = np.array([room.surfaces[s].absorption for s in SURFACES])
    return np.clip(base * scale, rir_engine.MIN_ABSORPTION, rir_engine.MAX_ABSORPTION)


def baseline_room(room: RoomSpec, scale: float, max_order: int, fs: int) -> pra.ShoeBox:
    # Exactly the absorption the engine rendered with at this calibration scale.
    alpha = engine_absorption(room, scale)
    materials = {
        name: pra.Material(
            energy_absorption={"coeffs": list(alpha[i]), "center_freqs": list(OCTAVE_BANDS_HZ)},
            scattering={"coeffs": room.surfaces[name].scattering,
                        "center_freqs": list(OCTAVE_BANDS_HZ)},
        )
        for i, name in enumerate(SURFACES)
    }
    return pra.ShoeBox(list(room.dims_m), fs=fs, materials=materials, max_order=max_order,
                       air_absorption=True)


def worker_baseline(job_path: str, mem_gb: float) -> None:
    cap = int(mem_gb * 2**30)
    resource.setrlimit(resource.RLIMIT_AS, (cap, cap))
    from pyroomacoustics.directivities import RealSphericalHarmonicsDirectivity

    job = json.loads(Path(job_path).read_text())
    room, p = _room(job), _placement(job)
    fs = RirSettings().fs
    rss0 = rss_mib()
    t_cpu, t_wall = time.process_time(), time.perf_counter()
    sb = baseline_room(room, job["scale"], job["ism_max_order"], fs)
    sb.add_source(list(p.source_m))
    for m, n in ACN_MN:
        sb.add_microphone(list(p.receiver_m), directivity=RealSphericalHarmonicsDirectivity(m, n))
    sb.compute_rir()
    cpu, wall = time.process_time() - t_cpu, time.perf_counter() - t_wall
    peak = rss_mib()
    length = min(len(sb.rir[c][0]) for c in range(4))
    base = np.stack([np.asarray(sb.rir[c][0][:length], dtype=np.float64) for c in range(4)])
    # Our engine's crossover to the diffuse tail (the same function it uses).
    src = sb.sources[0]
    vis = sb.visibility[0][0, :].astype(bool)
    dist = np.linalg.norm(src.images[:, vis] - np.asarray(p.receiver_m)[:, None], axis=0)
    orders = src.orders[vis]
    settings = RirSettings()
    t_cross = tail_start_s(dist / sb.c, orders, room.volume_m3, settings)
    n_images = int(vis.sum())
    del sb
    # World frame -> receiver frame (yaw about z): X, Y rotate; W, Z unchanged.
    c, s = math.cos(math.radians(p.receiver_yaw_deg)), math.sin(math.radians(p.receiver_yaw_deg))
    wy, wx = base[1].copy(), base[3].copy()
    base[3], base[1] = c * wx + s * wy, -s * wx + c * wy
    ours = render_rir(room, p.receiver_m, p.source_m, p.receiver_yaw_deg, settings).rir
    n = min(int((t_cross - settings.crossfade_s) * fs), ours.shape[1], base.shape[1])
    # Orthonormal (N3D / sqrt(4 pi)) -> SN3D: W x sqrt(4 pi), degree 1 x sqrt(4 pi / 3).
    to_sn3d = np.array([math.sqrt(4 * math.pi)] + [math.sqrt(4 * math.pi / 3)] * 3)
    hp = butter(4, HP_CHECK_HZ, "highpass", fs=fs, output="sos")
    n_last = min(n, round(LAST_WINDOW_S * fs))
    corr, corr_hp, gain, resid_db = [], [], [], []
    for ch in range(4):
        a, b = base[ch, :n] * to_sn3d[ch], ours[ch, :n].astype(np.float64)
        corr.append(float(np.corrcoef(a, b)[0, 1]))
        corr_hp.append(float(np.corrcoef(sosfiltfilt(hp, a), sosfiltfilt(hp, b))[0, 1]))
        gain.append(float(np.dot(a, b) / np.dot(b, b)))
        r, ref = b[n - n_last :] - a[n - n_last :], a[n - n_last :]
        resid_db.append(float(10 * np.log10(np.sum(r**2) / max(np.sum(ref**2), 1e-30))))
    print(json.dumps({"room_id": room.room_id, "cpu_s": cpu, "wall_s": wall,
                      "peak_rss_mib": peak, "rss_before_mib": rss0, "n_images": n_images,
                      "ism_window_s": n / fs, "corr": corr, "corr_hp": corr_hp,
                      "gain_baseline_over_ours": gain, "resid_last_db": resid_db}))


# --------------------------------------------------------------------------------------------
# Parent
# --------------------------------------------------------------------------------------------


def run_worker(args: list[str], timeout: float | None) -> tuple[str, dict | None, str]:
    """('ok'|'timeout'|'failed', result, detail)."""
    cmd = [sys.executable, str(Path(__file__).resolve()), *args]
    try:
        proc = subprocess.run(cmd, capture_output=True, text=True, timeout=timeout, cwd=ROOT,
                              env={**os.environ, **ONE_THREAD})
    except subprocess.TimeoutExpired:
        return "timeout", None, f"killed after {timeout} s"
    if proc.returncode != 0:
        tail = proc.stderr.strip().splitlines()[-1:] or [f"rc={proc.returncode}"]
        return "failed", None, tail[0]
    sys.stderr.write(proc.stderr)
    return "ok", json.loads(proc.stdout.strip().splitlines()[-1]), ""


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--pool", type=int, default=400, help="rooms sampled from the default set")
    ap.add_argument("--n", type=int, default=50, help="placements rendered (>= 50 for the claim)")
    ap.add_argument("--t30-bins", type=int, default=10, help="T30 quantile strata")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--baseline-n", type=int, default=12, help="smallest rooms for the baseline")
    ap.add_argument("--baseline-timeout", type=float, default=120.0, help="seconds per room")
    ap.add_argument("--baseline-mem-gb", type=float, default=6.0, help="RLIMIT_AS per room")
    ap.add_argument("--baseline-budget", type=float, default=300.0,
                    help="stop starting baseline rooms after this many wall seconds")
    ap.add_argument("--tracemalloc-n", type=int, default=5)
    ap.add_argument("--_worker", choices=["ours", "baseline"], help=argparse.SUPPRESS)
    ap.add_argument("--_job", help=argparse.SUPPRESS)
    a = ap.parse_args()
    if a._worker == "ours":
        worker_ours(a._job, a.tracemalloc_n)
        return
    if a._worker == "baseline":
        worker_baseline(a._job, a.baseline_mem_gb)
        return

    t_start = time.perf_counter()
    jobs = select_jobs(a.pool, a.n, a.seed, a.t30_bins)
    log(f"selected {len(jobs)} placements from a pool of {a.pool} rooms (seed {a.seed})")
    with tempfile.TemporaryDirectory() as tmp:
        jobs_path = Path(tmp) / "jobs.json"
        jobs_path.write_text(json.dumps(jobs))
        status, ours, detail = run_worker(
            ["--_worker", "ours", "--_job", str(jobs_path), "--tracemalloc-n",
             str(a.tracemalloc_n)], None)
        if status != "ok" or ours is None:
            raise SystemExit(f"engine worker {status}: {detail}")
        ok = [r for r in ours["results"] if "error" not in r]
        errors = [r for r in ours["results"] if "error" in r]
        cpu = np.array([r["cpu_s"] for r in ok])
        wall = np.array([r["wall_s"] for r in ok])

        # Baseline on the smallest rooms (volume), one process each.
        by_id = {j["room"]["room_id"]: j for j in jobs}
        smallest = sorted(ok, key=lambda r: r["volume_m3"])[: a.baseline_n]
        base_rows = []
        t_base = time.perf_counter()
        for k, r in enumerate(smallest):
            if time.perf_counter() - t_base > a.baseline_budget:
                base_rows.append({"room_id": r["room_id"], "status": "skipped (budget)"})
                continue
            job = dict(by_id[r["room_id"]], scale=r["scale"], ism_max_order=r["ism_max_order"])
            jp = Path(tmp) / f"base{k}.json"
            jp.write_text(json.dumps(job))
            st, res, det = run_worker(
                ["--_worker", "baseline", "--_job", str(jp), "--baseline-mem-gb",
                 str(a.baseline_mem_gb)], a.baseline_timeout)
            row = {"room_id": r["room_id"], "status": st, "detail": det, "ours_cpu_s": r["cpu_s"]}
            if res:
                row.update(res)
                row["ratio"] = res["cpu_s"] / r["cpu_s"]
            base_rows.append(row)
            log(f"[baseline {k + 1}/{len(smallest)}] {r['room_id']} dims={r['dims_m']} "
                f"{st} {det} cpu={row.get('cpu_s', float('nan')):.2f}s "
                f"ratio={row.get('ratio', float('nan')):.1f} "
                f"corrW={(row.get('corr') or [float('nan')])[0]:.5f} "
                f"corrW_hp={(row.get('corr_hp') or [float('nan')])[0]:.5f} "
                f"residW_last20ms={(row.get('resid_last_db') or [float('nan')])[0]:.1f} dB")

    done = [b for b in base_rows if b["status"] == "ok"]
    ratios = [b["ratio"] for b in done]
    corr = np.array([b["corr"] for b in done]) if done else np.zeros((0, 4))
    gains = np.array([b["gain_baseline_over_ours"] for b in done]) if done else np.zeros((0, 4))
    corr_hp = np.array([b["corr_hp"] for b in done]) if done else np.zeros((0, 4))
    resid = np.array([b["resid_last_db"] for b in done]) if done else np.zeros((0, 4))
    peak_rss = ours["peak_rss_mib"]
    result = {
        "benchmark": "rir",
        "rooms_pool": a.pool,
        "seed": a.seed,
        "n_rirs": len(ok),
        "n_failed": len(errors),
        "failures": errors,
        "fs": 48000,
        "ambisonic_order": 1,
        "channels": 4,
        "settings": "RirSettings() defaults (ISM order 18, tail, calibration, air absorption)",
        "threads": ours["pra_num_threads"],
        "target_t30_s_range": [min(r["target_t30_s"] for r in ok),
                               max(r["target_t30_s"] for r in ok)],
        "floor_area_m2_range": [round(min(r["floor_area_m2"] for r in ok), 2),
                                round(max(r["floor_area_m2"] for r in ok), 2)],
        "volume_m3_range": [round(min(r["volume_m3"] for r in ok), 2),
                            round(max(r["volume_m3"] for r in ok), 2)],
        "cpu_s_mean": round(float(cpu.mean()), 4),
        "cpu_s_median": round(float(np.median(cpu)), 4),
        "cpu_s_p95": round(pct(cpu, 95), 4),
        "cpu_s_max": round(float(cpu.max()), 4),
        "wall_s_mean": round(float(wall.mean()), 4),
        "wall_s_median": round(float(np.median(wall)), 4),
        "wall_s_p95": round(pct(wall, 95), 4),
        "wall_s_max": round(float(wall.max()), 4),
        "slowest_room": max(ok, key=lambda r: r["cpu_s"])["room_id"],
        "calibration_iterations_mean": round(float(np.mean([r["iterations"] for r in ok])), 2),
        "calibration_iterations_max": int(max(r["iterations"] for r in ok)),
        "ism_max_order": sorted({r["ism_max_order"] for r in ok}),
        "peak_rss_mib": round(peak_rss, 1),
        "peak_rss_how": "ru_maxrss of the single-threaded worker process that rendered all RIRs "
                        "(imports included)",
        "rss_after_imports_mib": round(ours["rss_after_imports_mib"], 1),
        "tracemalloc_peak_mib_max": round(max(ours["tracemalloc_peaks_mib"], default=0.0), 1),
        "tracemalloc_rooms": len(ours["tracemalloc_peaks_mib"]),
        "baseline": "pyroomacoustics ShoeBox + 4 RealSphericalHarmonicsDirectivity mics, "
                    "compute_rir(), same absorption and max_order, air absorption",
        "baseline_rooms_attempted": len([b for b in base_rows if b["status"] != "skipped (budget)"]),
        "baseline_rooms_finished": len(done),
        "baseline_rooms_timeout": len([b for b in base_rows if b["status"] == "timeout"]),
        "baseline_rooms_failed": len([b for b in base_rows if b["status"] == "failed"]),
        "baseline_rooms_skipped": len([b for b in base_rows if b["status"].startswith("skipped")]),
        "baseline_timeout_s": a.baseline_timeout,
        "baseline_mem_cap_gib": a.baseline_mem_gb,
        "baseline_volume_m3_range": [round(min(r["volume_m3"] for r in smallest), 2),
                                     round(max(r["volume_m3"] for r in smallest), 2)],
        "baseline_cpu_s_median": round(float(np.median([b["cpu_s"] for b in done])), 3)
        if done else None,
        "baseline_peak_rss_mib_median": round(float(np.median([b["peak_rss_mib"] for b in done])), 1)
        if done else None,
        "ours_cpu_s_median_same_rooms": round(float(np.median([b["ours_cpu_s"] for b in done])), 4)
        if done else None,
        "speed_ratio_median": round(float(np.median(ratios)), 1) if done else None,
        "speed_ratio_min": round(float(np.min(ratios)), 1) if done else None,
        "ism_corr_W_median": round(float(np.median(corr[:, 0])), 6) if done else None,
        "ism_corr_W_min": round(float(np.min(corr[:, 0])), 6) if done else None,
        "ism_corr_W_min_room": done[int(np.argmin(corr[:, 0]))]["room_id"] if done else None,
        "ism_corr_YZX_min": round(float(np.min(corr[:, 1:])), 6) if done else None,
        "ism_corr_hp100_W_min": round(float(np.min(corr_hp[:, 0])), 6) if done else None,
        "ism_corr_hp100_YZX_min": round(float(np.min(corr_hp[:, 1:])), 6) if done else None,
        "ism_resid_last20ms_db_W_median": round(float(np.median(resid[:, 0])), 1)
        if done else None,
        "ism_resid_last20ms_db_W_max": round(float(np.max(resid[:, 0])), 1) if done else None,
        "gain_baseline_sn3d_over_ours_median_WYZX": [round(float(g), 4)
                                                     for g in np.median(gains, 0)]
        if done else None,
        "target_ratio": TARGET_RATIO,
        "target_mean_s": TARGET_MEAN_S,
        "target_p95_s": TARGET_P95_S,
        "target_peak_rss_mib": TARGET_RSS_MIB,
        "pass_ratio": bool(done) and float(np.median(ratios)) >= TARGET_RATIO,
        "pass_mean": float(cpu.mean()) <= TARGET_MEAN_S,
        "pass_p95": pct(cpu, 95) <= TARGET_P95_S,
        "pass_rss": peak_rss <= TARGET_RSS_MIB,
        "total_wall_s": round(time.perf_counter() - t_start, 1),
        "cpu_count": os.cpu_count(),
        "python": platform.python_version(),
        "numpy": np.__version__,
        "pyroomacoustics": pra.__version__,
    }
    print(json.dumps(result))


if __name__ == "__main__":
    main()
