"""How often does the mean of k sim-to-real branches meet issue 15's targets? One JSON line.

    .venv/bin/python benchmarks/sim2real_members.py --run DIR --run DIR [--run DIR ...]

Why: one branch's pooled S3A direction error moves by 2 deg with its training seed alone (RESULTS, issue
15, session 19), so a recipe is judged over seeds, and ``Sim2RealConfig.members`` (the mean of several
branches) over every combination of them. Training each combination would cost hours; this combines runs
already trained and scored one by one (``benchmarks/sim2real.py`` run directories, same --out, one seed
each) from their cases.jsonl (``training.sim2real.combine_runs``: the answer ``members`` would give).

For each k from 1 to the number of runs: how many k-combinations meet the direction target and all
three, and the median, best and worst pooled direction error over them. Skips without two runs that
hold a cases.jsonl.
"""

from __future__ import annotations

import argparse
import itertools
import json
import sys
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))


def combination_table(runs: dict[str, list]) -> dict[str, dict]:
    """Per k, the targets over every k-combination of the runs (k = 1: each run alone)."""
    from training.sim2real import check_targets, combine_runs, summarise, summarise_by_room

    table = {}
    names = sorted(runs)
    for k in range(1, len(names) + 1):
        pooled, direction, every = [], 0, 0
        for combo in itertools.combinations(names, k):
            cases = runs[combo[0]] if k == 1 else combine_runs([runs[n] for n in combo])
            summary = summarise(cases)
            met = check_targets(summarise_by_room(cases), summary)
            pooled.append(summary.doa_model_median_deg)
            direction += met.direction
            every += met.direction and met.t30 is not False and met.drr
        table[str(k)] = {"combinations": len(pooled), "direction_met": direction, "all_met": every,
                         "pooled_median_deg": round(float(np.median(pooled)), 2),
                         "pooled_best_deg": round(min(pooled), 2), "pooled_worst_deg": round(max(pooled), 2)}
    return table


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--run", action="append", default=[], help="a scored run directory (repeatable)")
    args = ap.parse_args()
    found = [Path(r) for r in args.run if (Path(r) / "cases.jsonl").exists()]
    if len(found) < 2:
        print(json.dumps({"benchmark": "sim2real_members",
                          "skipped": "fewer than two runs with a cases.jsonl"}))
        return
    from training.sim2real import CaseResult, summarise

    runs = {str(r): [CaseResult.model_validate_json(line)
                     for line in (r / "cases.jsonl").read_text().splitlines()] for r in found}
    classical = summarise(runs[str(found[0])]).doa_classical_median_deg
    print(json.dumps({"benchmark": "sim2real_members", "runs": sorted(runs),
                      "classical_pooled_deg": round(classical, 2),
                      "by_members": combination_table(runs)}))


if __name__ == "__main__":
    main()
