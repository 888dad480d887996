"""Many requests through one backend: fixed-size batches, the cache around each, and the report.

Identical requests (same cache key) are generated once per run and looked up in the cache once
per batch; cached ones never reach the backend; each finished batch is written to the cache
before the next starts, so a crash loses at most the batch in flight.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Callable

from schemas.captions import HALLUCINATION_FLAWS, BatchReport, RephraseRequest, RephraseResult
from tasks.rephrase.base import RephraseBackend
from tasks.rephrase.cache import RephraseCache, cache_key


def run_rephrase(
    requests: list[RephraseRequest],
    backend: RephraseBackend,
    cache: RephraseCache | None = None,
    batch_size: int = 256,
    on_batch: Callable[[int, int], None] | None = None,
) -> list[RephraseResult]:
    """Results for ``requests``, in order; ``on_batch(done, total)`` after each batch."""
    results: list[RephraseResult] = []
    for start in range(0, len(requests), batch_size):
        batch = requests[start : start + batch_size]
        keys = [cache_key(r, backend.model, backend.settings) for r in batch]
        hits: dict[str, RephraseResult | None] = {}  # one cache lookup per distinct key
        todo: dict[str, RephraseRequest] = {}
        for key, req in zip(keys, batch, strict=True):
            if key not in hits:
                hits[key] = cache.get(key) if cache is not None else None
            if hits[key] is None and key not in todo:
                todo[key] = req
        fresh = dict(zip(todo, backend.rephrase(list(todo.values())), strict=True)) if todo else {}
        if cache is not None:
            cache.put_batch(list(fresh.items()))
        for key, req in zip(keys, batch, strict=True):
            res = fresh.get(key)
            if res is None:
                hit = hits[key]
                assert hit is not None, "a request not generated in this batch is in the cache"
                res = hit.model_copy(update={"cached": True})
            if res.sample_id != req.sample_id:
                res = res.model_copy(update={"sample_id": req.sample_id})
            results.append(res)
        if on_batch is not None:
            on_batch(len(results), len(requests))
    return results

def summarize(results: list[RephraseResult]) -> BatchReport:
    """Hallucination, fallback, reject and first-pass rates of a set of captions."""
    status = Counter(r.status for r in results)
    attempts = sum(r.attempts for r in results)
    flaws = Counter(f.value for r in results for attempt in r.attempt_flaws for f in attempt)
    hallucinated = sum(1 for r in results for a in r.attempt_flaws if HALLUCINATION_FLAWS.intersection(a))
    first_pass = sum(1 for r in results if r.status == "ok" and r.attempts == 1)
    accepted = len(results) - status["rejected"]
    return BatchReport(
        n=len(results), ok=status["ok"], fallback=status["fallback"], rejected=status["rejected"],
        cached=sum(r.cached for r in results), attempts=attempts, hallucinated_attempts=hallucinated,
        first_pass=first_pass, generated_tokens=sum(r.generated_tokens for r in results),
        hallucination_rate=hallucinated / attempts if attempts else 0.0,
        fallback_rate=status["fallback"] / accepted if accepted else 0.0,
        reject_rate=status["rejected"] / len(results) if results else 0.0,
        first_pass_rate=first_pass / accepted if accepted else 0.0,
        reject_reasons=dict(Counter(r.reject_reason.value for r in results if r.reject_reason is not None)),
        flaw_counts=dict(flaws),
    )
