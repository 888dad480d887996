"""The caption guard's confusion table on its labelled set, as one JSON line.

Runs the real validator (``judge``, default ValidationConfig) over benchmarks/data/guard_set.jsonl
and prints, for the content verdict (content flaws reject; what the labels judge) and the full
verdict (any flaw rejects), TP/FP/TN/FN, the two error rates and the recall per hallucination kind,
over all items and over the held-out split; plus the validator's cost per caption.
"""

from __future__ import annotations

import json
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path[:0] = [str(ROOT), str(ROOT / "tests")]

from guard_eval import confusion, judge_item, load_set  # noqa: E402


def main() -> None:
    items = load_set()
    t0 = time.perf_counter()
    flags = [judge_item(i) for i in items]
    per_caption_us = (time.perf_counter() - t0) / len(items) * 1e6
    out: dict = {"benchmark": "guard", "n": len(items), "judge_us_per_caption": round(per_caption_us, 1)}
    for split in ("all", "heldout"):
        keep = [k for k, i in enumerate(items) if split == "all" or i["split"] == split]
        for verdict in ("content", "full"):
            out[f"{split}_{verdict}"] = confusion([items[k] for k in keep], [flags[k] for k in keep], verdict)
    print(json.dumps(out))


if __name__ == "__main__":
    main()
