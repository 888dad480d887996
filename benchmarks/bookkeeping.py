"""Bookkeeping at paper scale: finalize, the card, ``report`` and ``inspect`` on 890,000 manifest rows.

Issue 12's targets: finalize (manifest from receipts, sizes.json, rejects.parquet) at most 2 GiB peak
RSS and 60 CPU-s at 890k rows; ``spatial-audiocaps report`` on that manifest at most 1 GiB.

The dataset is synthetic but made of the project's own records: schema-valid manifest rows
(``tasks.commit.MANIFEST_SCHEMA``, checked with ``check_table``), 256 per shard as the build writes
them, each shard's receipt written by ``put_receipt`` (what ``commit_shard`` writes after a verified
upload), a tiny stand-in tar per shard whose size and sha256 the receipt records (the local check is
size and mtime against the receipt, so the tar's bytes do not matter), and reject parts by
``put_rejects`` (a source part and a few shard parts). Captions are short varied sentences.

Each measurement runs in a fresh subprocess (``--child``) that prints its own getrusage: peak RSS
(ru_maxrss, the whole process: imports, the plans the flow hands finalize, the call) and CPU-s of
the measured call (process_time around it). Measured:

- ``finalize``: ``finalize_dataset(storage, base, plans, meta)``; the plans are built in the child
  from the same key layout, as the flow passes them.
- ``card``: ``write_card`` (what the flow's finalize task runs after finalize).
- ``report`` and ``inspect``: the CLI commands in-process (``spatial_audiocaps.cli.main``;
  inspect with ``--no-doa``).

Baseline (same run, same generator, ``--baseline-samples`` rows, 100k by default): the code before
this change, loaded from git (``BASELINE_COMMIT``'s tasks/commit.py and tasks/dataset_card.py):
finalize over the list of ManifestRow objects the old flow process held (built in the child before
the call, as the shard tasks returned them), and ``write_card`` through the old read_manifest (one
pydantic object per row). The new path runs at that size too, so ratios compare equal sizes.

Prints one JSON line per measurement, then a summary line with the targets.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import resource
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
import types
from pathlib import Path

import numpy as np
import pyarrow as pa

REPO = Path(__file__).resolve().parents[1]
BASELINE_COMMIT = "a212321"  # the last commit before finalize and the readers streamed
SHARD_SIZE = 256
SPLITS = (("train", 0.8), ("val", 0.1), ("test", 0.1))
DS, VER = "spatial_audiocaps", "rsbench-cfgbench"
WORDS = ("a dog barks", "rain falls on a tin roof", "a man speaks loudly", "birds chirp", "a car passes by",
         "water runs from a tap", "a door slams", "people talk in a crowd")
PLACES = ("on the left", "on the right", "in front", "behind", "above", "far away", "close by")
ROOMS = ("in a small dampened room", "in a large reverberant hall", "in a medium room")
DESC = {"distance": ("near", "far", None), "direction": ("front", "left", "right", "back"),
        "elevation": ("up", "down", None), "reverb": ("acoustically dampened", "highly reverberant", None),
        "size": ("small", "large", None)}
FLAWS = ("not_english", "empty", "changed_source", "direction_missing")


def layout(n: int) -> list[tuple[str, int, int, int]]:
    """(split, shard index, first sample, samples) of every shard: splits by SPLITS, 256 a shard."""
    out, start = [], 0
    for i, (split, frac) in enumerate(SPLITS):
        count = n - start if i == len(SPLITS) - 1 else round(n * frac)
        for index, first in enumerate(range(start, start + count, SHARD_SIZE)):
            out.append((split, index, first, min(SHARD_SIZE, start + count - first)))
        start += count
    return out


def key_of(split: str, i: int) -> str:
    return f"{DS}-{split}-{i // 3:07d}-{i % 3}"


def shard_table(split: str, index: int, first: int, count: int, tar: bytes) -> pa.Table:
    """``count`` schema-valid manifest rows of one shard, columnwise (numpy + comprehensions)."""
    from tasks.commit import MANIFEST_SCHEMA

    rng = np.random.default_rng(first)
    i = np.arange(first, first + count)
    spatial = (i % 3) != 0
    name = f"{split}/{split}-{index:06d}.tar"

    def opt(values: np.ndarray) -> list[float | None]:
        return [float(v) if s else None for v, s in zip(values, spatial, strict=True)]

    def pick(options: tuple, k: int = 0) -> list:
        return [options[(j + k) % len(options)] if s else None for j, s in zip(i, spatial, strict=True)]

    caps = [[f"{WORDS[(j + c) % len(WORDS)]} {PLACES[(j * 7 + c) % len(PLACES)]} {ROOMS[(j + 2 * c) % 3]}"
             for c in range(3)] for j in i]
    flaws = [[FLAWS[j % 4]] * int(j % 5 == 0) for j in i]
    offsets = 512 + np.arange(count) * 4096
    cols = {
        "key": [key_of(split, j) for j in i], "dataset": [DS] * count, "split": [split] * count,
        "clip_id": [f"{j // 3:07d}" for j in i], "aug": (i % 3).tolist(), "shard": [name] * count,
        "shard_index": [index] * count, "shard_sha256": [hashlib.sha256(tar).hexdigest()] * count,
        "shard_size": [len(tar)] * count, "shard_checksum": [None] * count,
        "flac_offset": offsets.tolist(), "flac_size": [3000] * count,
        "json_offset": (offsets + 3584).tolist(), "json_size": [400] * count,
        "audio_sha256": [hashlib.sha256(str(j).encode()).hexdigest() for j in i],
        "sample_rate": [48000] * count, "channels": np.where(spatial, 4, 1).tolist(),
        "num_samples": [480000] * count, "duration_s": [10.0] * count, "spatial": spatial.tolist(),
        "formats": [["ambix"] if s else ["mono"] for s in spatial],
        "azimuth_deg": opt(rng.uniform(-180, 180, count)), "elevation_deg": opt(rng.uniform(-40, 40, count)),
        "distance_m": opt(rng.uniform(0.5, 5, count)), "t30_s": opt(rng.uniform(0.2, 2.5, count)),
        "target_t30_s": opt(rng.uniform(0.2, 2.5, count)), "drr_db": opt(rng.normal(0, 5, count)),
        "floor_area_m2": opt(rng.uniform(10, 300, count)), "volume_m3": opt(rng.uniform(30, 1500, count)),
        "direct_doa_error_deg": opt(rng.exponential(1.0, count)),
        "room_id": pick(tuple(f"room-{r:05d}" for r in range(8972))),
        "placement_id": [f"pl-{j:08d}" if s else None for j, s in zip(i, spatial, strict=True)],
        **{f"desc_{a}": pick(words, k) for k, (a, words) in enumerate(DESC.items())},
        "text": caps, "original_text": [[c.split(" on ")[0] for c in cs] for cs in caps],
        "n_captions": [3] * count, "n_validated": [3] * count,
        "n_fallback": (i % 7 == 0).astype(int).tolist(), "caption_attempts": (3 + (i % 5 == 0)).tolist(),
        "n_first_pass": (3 - (i % 5 == 0)).tolist(), "n_retried": (i % 5 == 0).astype(int).tolist(),
        "caption_retries": (i % 5 == 0).astype(int).tolist(),
        "caption_flaws": flaws, "source_dataset": ["audiocaps"] * count,
        "source_id": [f"yt{j // 3:09d}" for j in i], "room_set_hash": ["0123456789abcdef"] * count,
        "config_hash": ["fedcba9876543210"] * count, "pipeline_version": ["0.1.0"] * count,
        "seed": [0] * count, "rephraser_backend": ["template"] * count, "rephraser_model": [None] * count,
        "committed_at": ["2026-01-01T00:00:00Z"] * count,
    }
    return pa.table(cols, schema=MANIFEST_SCHEMA)


def generate(root: Path, n: int) -> str:
    """A synthetic dataset version of ``n`` samples under ``root``; returns its base URI."""
    from schemas.shards import ManifestRow, RejectRow
    from tasks.commit import check_table, dataset_uri, put_receipt, put_rejects, rejects_part
    from tasks.shard_writer import ShardPlan
    from tasks.storage import join_uri, open_storage

    base = dataset_uri(str(root), DS, VER)
    st = open_storage(base)
    for s, (split, index, first, count) in enumerate(layout(n)):
        tar = hashlib.sha256(f"{split}{index}".encode()).digest() * 32  # 1 KiB stand-in object
        plan = ShardPlan(split=split, index=index, sample_keys=())
        st.put_bytes(join_uri(base, plan.name), tar)
        rows = shard_table(split, index, first, count, tar)
        if s == 0:
            check_table(rows, ManifestRow, "synthetic rows")
        put_receipt(st, base, plan, rows)
        if s % 10 == 0:
            put_rejects(st, base, rejects_part(plan.name), [
                RejectRow(stage="render", reason="silent", detail="peak -120 dBFS",
                          key=key_of(split, first + k), source=f"yt{k:09d}", dataset=DS, split=split)
                for k in range(5)])
    put_rejects(st, base, "source", [RejectRow(stage="source", reason="unreadable", detail="no such file",
                                               source=f"clip-{k}.wav") for k in range(1000)])
    return base


def _plans(n: int) -> list:
    from tasks.shard_writer import ShardPlan

    return [ShardPlan(split=split, index=index, sample_keys=tuple(key_of(split, j) for j in range(f, f + c)))
            for split, index, f, c in layout(n)]


def _old(module: str) -> types.ModuleType:
    """``tasks/{module}.py`` as it was at BASELINE_COMMIT, under its own name (so the old card
    imports the old commit module)."""
    src = subprocess.run(["git", "show", f"{BASELINE_COMMIT}:tasks/{module}.py"], cwd=REPO, check=True,
                         capture_output=True, text=True).stdout
    mod = types.ModuleType(f"tasks.{module}")
    sys.modules[f"tasks.{module}"] = mod
    exec(compile(src, f"{BASELINE_COMMIT}:tasks/{module}.py", "exec"), mod.__dict__)
    return mod


def child(what: str, base: str, n: int) -> dict:
    """One measurement in this (fresh) process."""
    from tasks.storage import open_storage

    st = open_storage(base)
    meta = {"dataset": DS, "version": VER}
    cpu0 = time.process_time()
    t0 = time.perf_counter()
    if what == "finalize":
        from tasks.commit import finalize_dataset

        plans = _plans(n)
        cpu0, t0 = time.process_time(), time.perf_counter()
        out = finalize_dataset(st, base, plans, meta)
        assert out.samples == n, out
    elif what == "card":
        from tasks.dataset_card import write_card

        assert write_card(base, storage=st).totals.samples == n
    elif what in ("report", "inspect"):
        from spatial_audiocaps.cli import main

        args = ["report", base] if what == "report" else ["inspect", base, "--no-doa"]
        assert main(args) == 0
    elif what == "old_finalize":
        import pyarrow.parquet as pq

        from schemas.shards import ManifestRow, RejectRow
        from tasks.commit import receipt_uri

        old = _old("commit")
        rows = [ManifestRow.model_validate(r) for p in _plans(n)
                for r in pq.read_table(receipt_uri(base, p)).to_pylist()]
        rejects = [RejectRow.model_validate(r) for p in sorted(Path(base, "rejects").glob("*.parquet"))
                   for r in pq.read_table(p).to_pylist()]
        cpu0, t0 = time.process_time(), time.perf_counter()
        old.finalize_dataset(st, base, rows, rejects, meta)
    elif what == "old_card":
        _old("commit")
        assert _old("dataset_card").write_card(base, storage=st).totals.samples == n
    else:
        raise SystemExit(f"unknown child {what!r}")
    return {"what": what, "samples": n, "cpu_s": round(time.process_time() - cpu0, 2),
            "wall_s": round(time.perf_counter() - t0, 2),
            "peak_rss_mib": round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024, 1)}


def run_child(what: str, base: str, n: int) -> dict:
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    res = subprocess.run([sys.executable, __file__, "--child", what, base, str(n)], cwd=REPO, env=env,
                         capture_output=True, text=True, check=False)
    if res.returncode:
        raise SystemExit(f"{what} failed:\n{res.stderr[-4000:]}")
    return json.loads(res.stdout.strip().splitlines()[-1])


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--samples", type=int, default=890_000)
    ap.add_argument("--baseline-samples", type=int, default=100_000, help="0: no baseline")
    ap.add_argument("--repeats", type=int, default=1)
    ap.add_argument("--work", type=Path, default=None, help="parent directory of the datasets (default: tmp)")
    ap.add_argument("--child", nargs=3, metavar=("WHAT", "BASE", "N"), help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.child:
        what, base, n = args.child
        print(json.dumps(child(what, base, int(n))))
        return
    work = Path(tempfile.mkdtemp(prefix="bookkeeping-", dir=args.work))
    try:
        sizes = [("new", args.samples)]
        sizes += [("baseline", args.baseline_samples)] if args.baseline_samples else []
        results: dict[tuple[str, int], list[dict]] = {}
        for kind, n in sizes:
            t = time.perf_counter()
            base = generate(work / f"{kind}-{n}", n)
            print(json.dumps({"what": "generate", "samples": n, "shards": len(layout(n)),
                              "wall_s": round(time.perf_counter() - t, 1)}), flush=True)
            whats = ["finalize", "card", "report", "inspect"]
            if kind == "baseline":
                whats = ["old_finalize", "old_card", *whats]
            for _ in range(args.repeats):
                for what in whats:
                    r = run_child(what, base, n)
                    results.setdefault((what, n), []).append(r)
                    print(json.dumps(r), flush=True)
        med = {k: {m: statistics.median(r[m] for r in rs) for m in ("cpu_s", "peak_rss_mib")}
               for k, rs in results.items()}
        big = args.samples
        summary: dict = {
            "what": "summary", "samples": big, "repeats": args.repeats,
            "finalize_peak_rss_mib": med[("finalize", big)]["peak_rss_mib"], "finalize_rss_target_mib": 2048,
            "finalize_cpu_s": med[("finalize", big)]["cpu_s"], "finalize_cpu_target_s": 60,
            "report_peak_rss_mib": med[("report", big)]["peak_rss_mib"], "report_rss_target_mib": 1024,
            "card_peak_rss_mib": med[("card", big)]["peak_rss_mib"],
            "card_cpu_s": med[("card", big)]["cpu_s"],
            "inspect_peak_rss_mib": med[("inspect", big)]["peak_rss_mib"],
        }
        summary["targets_met"] = (summary["finalize_peak_rss_mib"] <= 2048 and summary["finalize_cpu_s"] <= 60
                                  and summary["report_peak_rss_mib"] <= 1024)
        if args.baseline_samples:
            small = args.baseline_samples
            for new, old in (("finalize", "old_finalize"), ("card", "old_card")):
                for m in ("cpu_s", "peak_rss_mib"):
                    summary[f"{new}_{m}_vs_old_at_{small}"] = round(
                        med[(new, small)][m] / max(med[(old, small)][m], 1e-9), 3)
        print(json.dumps(summary), flush=True)
    finally:
        shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()
