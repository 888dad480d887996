"""Is a caption true to its labels and to the original? Checks that go beyond the paper.

Spatial words are counted against the original caption, so words the original already had
("a dog barks in the distance") neither satisfy nor contradict a descriptor: a given descriptor
must be stated more often than in the original, and another band of a labelled slot, or any band
of an unlabelled one, must not be. Meaning is kept when enough of the original's content words
survive and few new ones appear.
"""

from __future__ import annotations

from schemas.captions import (
    SLOT_WORDS,
    SLOTS,
    Descriptors,
    OutputFlaw,
    ValidationConfig,
    ValidationFlags,
)
from tasks.rephrase.lexicon import SCAFFOLD_WORDS, content_stems, spatial_counts, stem
from tasks.rephrase.postprocess import Cleaned, postprocess

_SCAFFOLD_STEMS = frozenset(stem(w) for w in SCAFFOLD_WORDS)


def validate(text: str, original: str, d: Descriptors, cfg: ValidationConfig) -> ValidationFlags:
    """Descriptor presence, contradictions, unsupported spatial words, recall and novelty of one caption."""
    out_counts, orig_counts = spatial_counts(text), spatial_counts(original)
    missing: list[str] = []
    contradictions: list[str] = []
    unsupported: list[str] = []
    for slot in SLOTS:
        label = getattr(d, slot)
        added = [w for w in SLOT_WORDS[slot] if out_counts[slot].get(w, 0) > orig_counts[slot].get(w, 0)]
        if label is None:
            unsupported += added
            continue
        if label not in added:
            missing.append(label)
        contradictions += [w for w in added if w != label]
    orig_stems, out_stems = content_stems(original), content_stems(text)
    recall = len(orig_stems & out_stems) / len(orig_stems) if orig_stems else 1.0
    novel = sorted(out_stems - orig_stems - _SCAFFOLD_STEMS)
    flaws = [
        flaw
        for flaw, failed in (
            (OutputFlaw.MISSING_DESCRIPTOR, bool(missing)),
            (OutputFlaw.CONTRADICTION, bool(contradictions)),
            (OutputFlaw.UNSUPPORTED, bool(unsupported) and cfg.fail_on_unsupported),
            (OutputFlaw.LOW_RECALL, recall < cfg.min_content_recall),
            (OutputFlaw.NOVEL_CONTENT, len(novel) > cfg.max_novel_words),
        )
        if failed
    ]
    return ValidationFlags(
        passed=not flaws, flaws=flaws, missing=missing, contradictions=contradictions,
        unsupported=unsupported, content_recall=round(recall, 4), novel_words=novel,
    )


def judge(
    raw: str, prompt: str, original: str, d: Descriptors, cfg: ValidationConfig
) -> tuple[str, ValidationFlags]:
    """Post-process raw model text, then validate it: the caption and its flags."""
    cleaned: Cleaned = postprocess(raw, prompt, original, cfg)
    if cleaned.flaw is not None and not cleaned.text:
        return cleaned.text, ValidationFlags(passed=False, flaws=[cleaned.flaw], content_recall=0.0)
    flags = validate(cleaned.text, original, d, cfg)
    if cleaned.flaw is not None:
        flags = flags.model_copy(update={"passed": False, "flaws": [cleaned.flaw, *flags.flaws]})
    return cleaned.text, flags
