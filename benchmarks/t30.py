"""T30 accuracy of the RIR engine: measured T30 of the rendered W channel against the room's target.

Rooms come from the default room set (``room_specs/elsa.yaml``, T30 0.1445-2.6719 s). A pool is
sampled and ``--n`` train placements are picked stratified over log T30 (equal counts per bin
across the configured range, plus the pool's shortest and longest targets), so the whole range is
covered, not just its bulk. Each is rendered with the default engine (``RirSettings()``,
calibration on) and measured with ``tasks.room_acoustics.t30`` on W (Schroeder, -5..-35 dB).

Diagnostic, same run: a subset rendered without calibration (``RirSettings(calibrate=False)``:
the sampler's Millington-Sette absorption as is), to show what calibration buys.

Renders run in ``--processes`` single-threaded worker processes. Prints one JSON line.
Claims: median |relative error| <= 10 %, p95 <= 20 %.
"""

from __future__ import annotations

import argparse
import json
import math
import multiprocessing as mp
import os
import platform
import sys
import time
from pathlib import Path

import numpy as np
import pyroomacoustics as pra

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from room_specs import DEFAULT_CONFIG
from schemas.rooms import OCTAVE_BANDS_HZ, SURFACES, Placement, RirSettings, RoomSpec
from tasks import room_acoustics
from tasks.rir_engine import render_rir
from tasks.room_sampling import load_config, sample_room_set

TARGET_MEDIAN = 0.10
TARGET_P95 = 0.20
ONE_THREAD = {v: "1" for v in ("PRA_NUM_THREADS", "OMP_NUM_THREADS", "OPENBLAS_NUM_THREADS",
                               "MKL_NUM_THREADS")}


def log(msg: str) -> None:
    print(msg, file=sys.stderr, flush=True)


def select_jobs(pool: int, n: int, seed: int, bins: int) -> tuple[list[dict], tuple[float, float]]:
    """n train placements spread evenly over log target T30 across the configured range."""
    cfg = load_config(DEFAULT_CONFIG)
    rooms, placements, _ = sample_room_set(cfg, seed, pool)
    by_id = {r.room_id: r for r in rooms}
    train = [p for p in placements if p.split == "train"]
    if len(train) < n:
        raise SystemExit(f"pool of {pool} rooms has only {len(train)} train placements (< {n})")
    t30 = np.array([by_id[p.room_id].target_t30_s for p in train])
    lo, hi = cfg.t30_s
    edges = np.geomspace(lo, hi, bins + 1)
    which = np.clip(np.searchsorted(edges, t30, side="right") - 1, 0, bins - 1)
    rng = np.random.default_rng([seed, 30])
    chosen = {int(np.argmin(t30)), int(np.argmax(t30))}
    per_bin = [len(a) for a in np.array_split(np.arange(n - len(chosen)), bins)]
    for b, k in enumerate(per_bin):
        members = [i for i in np.flatnonzero(which == b) if i not in chosen]
        chosen.update(int(i) for i in rng.permutation(members)[:k])
    rest = [i for i in rng.permutation(len(train)) if int(i) not in chosen]
    for i in rest[: n - len(chosen)]:  # bins with too few rooms: fill from the rest
        chosen.add(int(i))
    jobs = [{"room": by_id[train[i].room_id].model_dump(mode="json"),
             "placement": train[i].model_dump(mode="json")} for i in sorted(chosen)]
    return jobs, (float(lo), float(hi))


def render_and_measure(task: tuple[dict, bool]) -> dict:
    """Worker: render one placement (calibrated or not) and measure T30 on W."""
    job, calibrate = task
    room = RoomSpec.model_validate(
        {k: v for k, v in job["room"].items() if k not in RoomSpec.model_computed_fields})
    p = Placement.model_validate(job["placement"])
    mid = [OCTAVE_BANDS_HZ.index(500.0), OCTAVE_BANDS_HZ.index(1000.0)]
    row = {"room_id": room.room_id, "dims_m": list(room.dims_m),
           "target_t30_s": room.target_t30_s, "calibrate": calibrate,
           "mid_alpha": {s: round(float(np.mean([room.surfaces[s].absorption[i] for i in mid])), 3)
                         for s in SURFACES}}
    t0 = time.process_time()
    try:
        out = render_rir(room, p.receiver_m, p.source_m, p.receiver_yaw_deg,
                         RirSettings(calibrate=calibrate))
        row.update(iterations=out.calibration_iterations, scale=out.absorption_scale)
        row["drr_db"] = room_acoustics.drr_db(out.rir[0], out.fs)
        row["t30_s"] = room_acoustics.t30(out.rir[0], out.fs)
        row["rel_err"] = row["t30_s"] / room.target_t30_s - 1.0
    except Exception as exc:  # reported in the JSON, not hidden
        row["error"] = f"{type(exc).__name__}: {exc}"
    row["cpu_s"] = time.process_time() - t0
    row["pra_num_threads"] = pra.constants.get("num_threads")
    return row


def run_all(tasks: list[tuple[dict, bool]], processes: int) -> list[dict]:
    # Longest first: better load balance across the workers.
    tasks = sorted(tasks, key=lambda t: -t[0]["room"]["target_t30_s"])
    rows = []
    if processes <= 1:
        it = map(render_and_measure, tasks)
        for k, row in enumerate(it):
            rows.append(row)
            _progress(k, len(tasks), row)
        return rows
    with mp.get_context("spawn").Pool(processes) as pool:
        for k, row in enumerate(pool.imap_unordered(render_and_measure, tasks, chunksize=1)):
            rows.append(row)
            _progress(k, len(tasks), row)
    return rows


def _progress(k: int, n: int, row: dict) -> None:
    if "error" in row:
        log(f"[{k + 1}/{n}] {row['room_id']} cal={row['calibrate']} FAILED {row['error']}")
    elif (k + 1) % 20 == 0 or abs(row["rel_err"]) > 0.1:
        log(f"[{k + 1}/{n}] {row['room_id']} cal={row['calibrate']} "
            f"target={row['target_t30_s']:.3f} measured={row['t30_s']:.3f} "
            f"err={100 * row['rel_err']:+.1f}% it={row.get('iterations')}")


def error_stats(rows: list[dict]) -> dict:
    ok = [r for r in rows if "error" not in r]
    err = np.array([r["rel_err"] for r in ok])
    a = np.abs(err)
    if not ok:
        return {"n": 0, "n_failed": len(rows)}
    return {
        "n": len(ok),
        "n_failed": len(rows) - len(ok),
        "abs_rel_err_median": round(float(np.median(a)), 4),
        "abs_rel_err_p95": round(float(np.percentile(a, 95)), 4),
        "abs_rel_err_max": round(float(a.max()), 4),
        "rel_err_median_signed": round(float(np.median(err)), 4),
        "frac_within_10pct": round(float(np.mean(a <= 0.10)), 4),
        "frac_within_2pct": round(float(np.mean(a <= 0.02)), 4),
    }


def worst(rows: list[dict], k: int) -> list[dict]:
    ok = sorted((r for r in rows if "error" not in r), key=lambda r: -abs(r["rel_err"]))
    return [{"room_id": r["room_id"], "dims_m": r["dims_m"], "target_t30_s": r["target_t30_s"],
             "t30_s": round(r["t30_s"], 4), "rel_err": round(r["rel_err"], 4),
             "iterations": r.get("iterations"), "scale": round(r.get("scale", float("nan")), 4),
             "drr_db": round(r["drr_db"], 1), "mid_alpha_by_surface": r["mid_alpha"]}
            for r in ok[:k]]


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--pool", type=int, default=1500, help="rooms sampled from the default set")
    ap.add_argument("--n", type=int, default=300, help="calibrated rooms (>= 200 for the claim)")
    ap.add_argument("--bins", type=int, default=30, help="log-T30 strata")
    ap.add_argument("--uncal-n", type=int, default=40, help="rooms rendered without calibration")
    ap.add_argument("--processes", type=int, default=2)
    ap.add_argument("--seed", type=int, default=0)
    a = ap.parse_args()
    os.environ.update(ONE_THREAD)  # inherited by the spawned workers before they import numpy

    t_wall = time.perf_counter()
    jobs, (lo, hi) = select_jobs(a.pool, a.n, a.seed, a.bins)
    by_t30 = sorted(jobs, key=lambda j: j["room"]["target_t30_s"])
    uncal = [by_t30[round(i)] for i in np.linspace(0, len(by_t30) - 1, min(a.uncal_n, len(jobs)))]
    log(f"{len(jobs)} calibrated + {len(uncal)} uncalibrated renders, {a.processes} processes")
    rows = run_all([(j, True) for j in jobs] + [(j, False) for j in uncal], a.processes)
    cal = [r for r in rows if r["calibrate"]]
    raw = [r for r in rows if not r["calibrate"]]
    ok = [r for r in cal if "error" not in r]
    targets = np.array([r["target_t30_s"] for r in cal])
    tol = RirSettings().calibration_rel_tol
    max_iter = RirSettings().calibration_max_iter
    # Error by T30 range (thirds of the log range).
    thirds = np.geomspace(lo, hi, 4)
    by_range = []
    for b in range(3):
        sel = [r for r in ok if thirds[b] <= r["target_t30_s"] <= thirds[b + 1]]
        a_err = np.abs([r["rel_err"] for r in sel])
        by_range.append({"t30_s": [round(thirds[b], 3), round(thirds[b + 1], 3)], "n": len(sel),
                         "abs_rel_err_median": round(float(np.median(a_err)), 4) if sel else None,
                         "abs_rel_err_p95": round(float(np.percentile(a_err, 95)), 4)
                         if sel else None,
                         "abs_rel_err_max": round(float(a_err.max()), 4) if sel else None,
                         "n_over_10pct": int(np.sum(a_err > 0.10)),
                         "n_over_tol": int(np.sum(a_err > tol))})
    stats = error_stats(cal)
    iters = np.array([r["iterations"] for r in ok])
    result = {
        "benchmark": "t30",
        "rooms_pool": a.pool,
        "seed": a.seed,
        "settings": "RirSettings() defaults (calibrate=True, tol 2 %, max 5 iterations)",
        "measure": "tasks.room_acoustics.t30 on W (Schroeder, -5..-35 dB)",
        "n_rooms": len(cal),
        **stats,
        "target_t30_s_range": [round(float(targets.min()), 4), round(float(targets.max()), 4)],
        "config_t30_s_range": [lo, hi],
        "measured_t30_s_range": [round(min(r["t30_s"] for r in ok), 4),
                                 round(max(r["t30_s"] for r in ok), 4)],
        "by_t30_range": by_range,
        "calibration_iterations_mean": round(float(iters.mean()), 2),
        "calibration_iterations_max": int(iters.max()),
        "n_not_converged": int(sum(1 for r in ok if abs(r["rel_err"]) > tol)),
        "n_at_max_iterations": int(np.sum(iters >= max_iter)),
        "calibration_tol": tol,
        "worst": worst(cal, 6),
        "failures": [{"room_id": r["room_id"], "target_t30_s": r["target_t30_s"],
                      "dims_m": r["dims_m"], "error": r["error"]} for r in cal if "error" in r],
        "cpu_s_total_calibrated": round(sum(r["cpu_s"] for r in cal), 1),
        "cpu_s_per_rir_mean": round(float(np.mean([r["cpu_s"] for r in cal])), 4),
        "uncalibrated": {**error_stats(raw),
                         "worst": worst(raw, 3),
                         "failures": [{"room_id": r["room_id"], "target_t30_s": r["target_t30_s"],
                                       "error": r["error"]} for r in raw if "error" in r],
                         "cpu_s_total": round(sum(r["cpu_s"] for r in raw), 1)},
        "cpu_s_total": round(sum(r["cpu_s"] for r in rows), 1),
        "processes": a.processes,
        "threads_per_process": int(rows[0]["pra_num_threads"]),
        "wall_s": round(time.perf_counter() - t_wall, 1),
        "target_median": TARGET_MEDIAN,
        "target_p95": TARGET_P95,
        "pass_median": stats.get("abs_rel_err_median", math.inf) <= TARGET_MEDIAN,
        "pass_p95": stats.get("abs_rel_err_p95", math.inf) <= TARGET_P95,
        "cpu_count": os.cpu_count(),
        "python": platform.python_version(),
        "numpy": np.__version__,
        "pyroomacoustics": pra.__version__,
    }
    print(json.dumps(result))


if __name__ == "__main__":
    main()
