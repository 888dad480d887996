"""Plan bookkeeping at paper scale: the duplicate-id error path, plan and shard-plan time, and how
many RIR-bank chunks a shard needs under the locality order versus the old hash order.

Synthetic, schema-shaped inputs (nothing rendered): clips made with ``SourceClip.model_construct``
(no source split, so every clip's split is drawn from the shares as for the demo corpus), and the
default room set's placement structure without its acoustics: 8,972 rooms, one train placement
in every room, one val and one test placement in two disjoint 10 % subsets (split_policy
``paper``), ids ``{room_id}-{split}-0`` as tasks.room_sampling writes them.

Reported per size (clips; 3 samples each with the default PlanConfig):
- ``duplicate_s``: build_plan on the clips plus two repeated ids, until it raises (median of
  ``--repeats``); the issue's figure before the fix was ~96 s at 98k and ~2.2 h at 890k;
- ``plan_s``: build_plan on the clips (one run), ``shard_plans_s`` (locality membership) and
  ``hash_plans_s`` (plan_shards in sha256 order, the old membership), all CPU seconds;
- per shard (``--shard-size``), with the bank cut in chunks of ``--chunk`` placements: distinct
  placements, distinct chunks (mean, p95) under the locality order with the bank in
  ``bank_order`` (split, then id), the locality order with the bank in plain sorted-id order (the
  flow's chunking before bank_order), and the hash order; ``whole_chunk_read_ratio``: RIRs in the
  chunks a shard touches over the RIRs it uses (what whole-chunk reads would cost; BankCache reads
  members, so its ratio is about 1 plus the zip directories); ``shards_per_clip``;
- ``bank_cache`` (smallest size only): the first ``--cache-shards`` train shards run through
  ``BankCache`` (``--cache-mib``) as ``--workers`` worker processes would take them (round robin),
  over real chunk files of the RIRs they touch, written with pack_chunk under a temporary
  directory: RIR lengths 1.5 x T30 at 48 kHz, 4 channels, T30 log-uniform in the room set's range
  (about 1 MiB a RIR, as in the real bank), one real record cloned per placement. Reported: storage
  bytes read over RIR bytes used, per shard (mean, max) and overall.
Ratios: duplicate and plan time at the largest size over the smallest, against the size ratio
(linear bookkeeping keeps them close). Prints one JSON line.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import resource
import statistics
import sys
import tempfile
import time
from collections import defaultdict
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from room_specs import DEFAULT_CONFIG
from schemas.rooms import Placement, RirSettings
from schemas.sources import SourceClip
from tasks.errors import SpatialAudioCapsError
from tasks.plan import PlanConfig, PlanItem, bank_order, build_plan, shard_plans
from tasks.rir_bank import BankCache, pack_chunk, render_chunk
from tasks.room_sampling import load_config, sample_room_set
from tasks.shard_writer import ShardPlan, plan_shards

N_ROOMS = 8972
HELD_FRACTION = 0.1
T30_RANGE_S = (0.1445, 2.6719)  # room_specs/elsa.yaml


def synthetic_clips(n: int) -> list[SourceClip]:
    return [SourceClip.model_construct(dataset="bench", clip_id=f"clip{k:07d}", captions=("a dog barks",),
                                       audio_uri=f"/audio/{k}.flac", source_split=None) for k in range(n)]


def synthetic_placements(n_rooms: int, seed: int = 0) -> list[Placement]:
    """The default room set's ids and splits (paper policy): train everywhere, val/test in two
    disjoint 10 % subsets."""
    order = np.random.default_rng(seed).permutation(n_rooms)
    held = round(HELD_FRACTION * n_rooms)
    rooms = {"train": range(n_rooms), "val": order[:held].tolist(), "test": order[held:2 * held].tolist()}
    return [Placement.model_construct(placement_id=f"elsa-0-{r:05d}-{split}-0", room_id=f"elsa-0-{r:05d}",
                                      split=split)
            for split, ids in rooms.items() for r in ids]


def cpu(fn):
    """fn() and the CPU seconds it took."""
    t = time.process_time()
    out = fn()
    return out, time.process_time() - t


def duplicate_s(clips: list[SourceClip], placements: list[Placement]) -> float:
    t = time.process_time()
    try:
        build_plan([*clips, clips[len(clips) // 3], clips[-1]], placements, PlanConfig(), seed=0)
    except SpatialAudioCapsError:
        return time.process_time() - t
    raise AssertionError("the duplicates were not reported")


def shard_stats(plans: list[ShardPlan], items: list[PlanItem], chunk_of: dict[str, int], chunk: int) -> dict:
    placement = {i.key: i.placement_id for i in items}
    used, chunks = [], []
    for p in plans:
        pids = {placement[k] for k in p.sample_keys if placement[k]}
        used.append(len(pids))
        chunks.append(len({chunk_of[pid] for pid in pids}))
    clip_of = {i.key: (i.dataset, i.split, i.clip_id) for i in items}
    shards_of: dict[tuple[str, str, str], set[int]] = defaultdict(set)
    for n, p in enumerate(plans):
        for k in p.sample_keys:
            shards_of[clip_of[k]].add(n)
    return {
        "shards": len(plans),
        "placements_per_shard_mean": round(statistics.fmean(used), 1),
        "chunks_per_shard_mean": round(statistics.fmean(chunks), 2),
        "chunks_per_shard_p95": float(np.percentile(chunks, 95)),
        "whole_chunk_read_ratio": round(chunk * sum(chunks) / max(1, sum(used)), 2),
        "shards_per_clip": round(statistics.fmean(len(s) for s in shards_of.values()), 3),
    }


def cache_reads(items: list[PlanItem], plans: list[ShardPlan], args: argparse.Namespace) -> dict:
    """Shard tasks' RIR reads through BankCache over real chunk files (see the module docstring)."""
    shards = [p for p in plans if p.split == "train"][: args.cache_shards]
    placement = {i.key: i.placement_id for i in items}
    order = bank_order(items)
    chunk_of = {pid: n // args.chunk for n, pid in enumerate(order)}
    rooms, placements, _ = sample_room_set(load_config(DEFAULT_CONFIG), seed=0, n_rooms=1)
    _, records, _ = render_chunk({r.room_id: r for r in rooms}, placements[:1],
                                 RirSettings(calibrate=False, max_ism_order=2))
    rng = np.random.default_rng(0)
    lo, hi = np.log(T30_RANGE_S)
    wanted = [sorted({placement[k] for k in p.sample_keys if placement[k]}) for p in shards]
    with tempfile.TemporaryDirectory() as tmp:
        uri = {}
        for c in sorted({chunk_of[pid] for pids in wanted for pid in pids}):
            pids = order[c * args.chunk : (c + 1) * args.chunk]
            rirs = {pid: rng.standard_normal((4, int(1.5 * np.exp(rng.uniform(lo, hi)) * 48000)), np.float32)
                    for pid in pids}
            uri[c] = f"{tmp}/chunk-{c:05d}.npz"
            Path(uri[c]).write_bytes(pack_chunk(rirs, [records[0].model_copy(update={"placement_id": pid})
                                                       for pid in pids], []))
        caches = [BankCache(args.cache_mib << 20) for _ in range(args.workers)]
        ratios = []
        for n, pids in enumerate(wanted):
            cache = caches[n % args.workers]
            read, used = cache.bytes_read, cache.bytes_used
            cache.get(sorted({uri[chunk_of[pid]] for pid in pids}), pids)
            ratios.append((cache.bytes_read - read) / (cache.bytes_used - used))
        bank_mib = sum(Path(u).stat().st_size for u in uri.values()) / 2**20
    read = sum(c.bytes_read for c in caches)
    return {
        "shards": len(shards), "workers": args.workers, "cache_mib": args.cache_mib,
        "chunk_files": len(uri), "chunk_files_mib": round(bank_mib, 1),
        "read_over_used_mean": round(statistics.fmean(ratios), 3),
        "read_over_used_max": round(max(ratios), 3),
        "read_over_used_total": round(read / sum(c.bytes_used for c in caches), 3),
        "read_mib_per_shard": round(read / len(shards) / 2**20, 2),
    }


def measure(n: int, placements: list[Placement], args: argparse.Namespace, cache: bool) -> dict:
    clips = synthetic_clips(n)
    dup = statistics.median(duplicate_s(clips, placements) for _ in range(args.repeats))
    items, plan_s = cpu(lambda: build_plan(clips, placements, PlanConfig(), seed=0))
    local, local_s = cpu(lambda: shard_plans(items, args.shard_size))
    hashed, hash_s = cpu(lambda: plan_shards(((i.key, i.split, 0) for i in items),
                                             max_samples=args.shard_size))
    bank = {pid: n // args.chunk for n, pid in enumerate(bank_order(items))}
    flat = {pid: n // args.chunk for n, pid in enumerate(sorted(bank))}
    return {
        "clips": n, "samples": len(items), "placements_used": len(bank),
        "duplicate_s": round(dup, 3), "plan_s": round(plan_s, 2),
        "shard_plans_s": round(local_s, 2), "hash_plans_s": round(hash_s, 2),
        "locality": shard_stats(local, items, bank, args.chunk),
        "locality_flat_bank": shard_stats(local, items, flat, args.chunk),
        "hash": shard_stats(hashed, items, bank, args.chunk),
        **({"bank_cache": cache_reads(items, local, args)} if cache else {}),
        "peak_rss_mib": round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024, 1),
    }


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--sizes", default="100000,890000", help="clips per run, comma-separated, ascending")
    ap.add_argument("--repeats", type=int, default=3, help="runs of the duplicate check per size")
    ap.add_argument("--shard-size", type=int, default=256, help="BuildConfig.shard_size")
    ap.add_argument("--chunk", type=int, default=16, help="RunOptions.rir_chunk")
    ap.add_argument("--cache-shards", type=int, default=24, help="train shards run through BankCache")
    ap.add_argument("--cache-mib", type=int, default=512, help="each worker's BankCache bound")
    ap.add_argument("--workers", type=int, default=2, help="worker processes the shards alternate over")
    args = ap.parse_args()
    sizes = [int(s) for s in args.sizes.split(",")]
    placements = synthetic_placements(N_ROOMS)
    runs = [measure(n, placements, args, cache=k == 0) for k, n in enumerate(sizes)]
    first, last = runs[0], runs[-1]
    print(json.dumps({
        "benchmark": "plan_scale", "rooms": N_ROOMS, "placements": len(placements),
        "shard_size": args.shard_size, "rir_chunk": args.chunk, "repeats": args.repeats, "runs": runs,
        "size_ratio": round(last["clips"] / first["clips"], 2),
        "duplicate_time_ratio": round(last["duplicate_s"] / first["duplicate_s"], 2),
        "plan_time_ratio": round(last["plan_s"] / first["plan_s"], 2),
        "duplicate_target_s": 5.0, "pass_duplicate": last["duplicate_s"] <= 5.0,
        "cpu_count": os.cpu_count(), "python": platform.python_version(),
    }))


if __name__ == "__main__":
    main()
