"""The caption guard on its labelled set (benchmarks/data/guard_set.jsonl): verdicts and the confusion table.

Shared by tests/test_guard.py (the thresholds) and benchmarks/guard.py (the table as one JSON line).
Each rephrasing goes through the real ``judge`` (post-processing, then validation with the default
ValidationConfig) against its original caption and the descriptors it was given. "Positive" means
hallucinated: TP is a hallucination rejected, FP a faithful rephrasing rejected.

Two verdicts are counted. *content*: rejected for a flaw about the sound content (CONTENT_FLAWS:
recall, novelty, changed or invented sources, meaning flips); this is what the set's labels judge.
*full*: rejected for any flaw, spatial ones included, as the rephrasing stage does; a faithful item
whose spatial words are wrong (A.3's third example omits the given "front") counts as FP here.
"""

from __future__ import annotations

import json
from collections import Counter
from pathlib import Path

from schemas.captions import CONTENT_FLAWS, Descriptors, ValidationConfig, ValidationFlags
from tasks.prompting import build_prompt, clean_caption
from tasks.rephrase.validation import judge

DEFAULT = ValidationConfig()
GUARD_SET = Path(__file__).resolve().parents[1] / "benchmarks" / "data" / "guard_set.jsonl"


def load_set(path: Path = GUARD_SET) -> list[dict]:
    """The labelled rephrasings, one dict per line (see benchmarks/data/README.md)."""
    return [json.loads(line) for line in path.read_text(encoding="utf-8").splitlines() if line.strip()]


def judge_item(item: dict, cfg: ValidationConfig = DEFAULT) -> ValidationFlags:
    """The real validator's flags for one labelled rephrasing."""
    original = clean_caption(item["original"])
    d = Descriptors(**item["descriptors"])
    return judge(item["rephrasing"], build_prompt(original, d), original, d, cfg)[1]


def rejected(flags: ValidationFlags, verdict: str) -> bool:
    """Rejected under the "content" or the "full" verdict."""
    return bool(CONTENT_FLAWS.intersection(flags.flaws)) if verdict == "content" else not flags.passed


def confusion(items: list[dict], flags: list[ValidationFlags], verdict: str) -> dict:
    """TP/FP/TN/FN, the two error rates, and the recall of each hallucination kind."""
    c: Counter[str] = Counter()
    kinds: dict[str, Counter[str]] = {}
    for item, f in zip(items, flags, strict=True):
        hallucinated, caught = item["label"] == "hallucinated", rejected(f, verdict)
        c[("T" if hallucinated == caught else "F") + ("P" if caught else "N")] += 1
        if hallucinated:
            kinds.setdefault(item["kind"], Counter())["caught" if caught else "missed"] += 1
    faithful, hallucinated = c["TN"] + c["FP"], c["TP"] + c["FN"]
    return {
        "n": len(items), "TP": c["TP"], "FP": c["FP"], "TN": c["TN"], "FN": c["FN"],
        "faithful_rejected_rate": round(c["FP"] / faithful, 4) if faithful else None,
        "hallucinated_accepted_rate": round(c["FN"] / hallucinated, 4) if hallucinated else None,
        "recall_per_kind": {k: round(v["caught"] / v.total(), 3) for k, v in sorted(kinds.items())},
    }
