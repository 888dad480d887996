"""Is a caption true to its labels and to the original? Checks that go beyond the paper.

Spatial words are counted against the original caption, so words the original already had
("a dog barks in the distance") neither satisfy nor contradict a descriptor: a given descriptor
must be stated more often than in the original, and another band of a labelled slot, or any band
of an unlabelled one, must not be. Meaning is kept when enough of the original's content words
survive (synonyms of one sound source count as the same word: "a canine" keeps "dog"), few new ones
appear, no sound source or event is changed or invented (``sound_sources``) and nothing is negated,
turned into its opposite or counted anew (``meaning``). A template caption keeps the original's words,
so none of these fires on it.
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
from tasks.rephrase.meaning import meaning_changes
from tasks.rephrase.postprocess import Cleaned, postprocess
from tasks.rephrase.sound_sources import canonical, source_changes

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
    # a sound-source synonym counts as its class: "canine" keeps "dog", and is not new
    out_stems = content_stems(text)
    orig_classes = frozenset(map(canonical, content_stems(original)))
    out_classes = frozenset(map(canonical, out_stems))
    kept = orig_classes - _SCAFFOLD_STEMS
    recall = len(kept & out_classes) / len(kept) if kept else 1.0
    novel = sorted({s for s in out_stems if canonical(s) not in orig_classes} - _SCAFFOLD_STEMS)
    sources = source_changes(text, original) if cfg.check_sources else None
    flips = meaning_changes(text, original) if cfg.check_sources else []
    flaws = [
        flaw
        for flaw, failed in (
            (OutputFlaw.MISSING_DESCRIPTOR, bool(missing)),
            (OutputFlaw.CONTRADICTION, bool(contradictions)),
            (OutputFlaw.UNSUPPORTED, bool(unsupported) and cfg.fail_on_unsupported),
            (OutputFlaw.LOW_RECALL, recall < cfg.min_content_recall),
            (OutputFlaw.NOVEL_CONTENT, len(novel) > cfg.max_novel_words),
            (OutputFlaw.CHANGED_SOURCE, bool(sources and sources.changed)),
            (OutputFlaw.INVENTED_SOURCE, bool(sources and sources.invented)),
            (OutputFlaw.MEANING_CHANGE, bool(flips)),
        )
        if failed
    ]
    return ValidationFlags(
        passed=not flaws, flaws=flaws, missing=missing, contradictions=contradictions,
        unsupported=unsupported, content_recall=round(recall, 4), novel_words=novel,
        changed_sources=sources.changed if sources else [],
        invented_sources=sources.invented if sources else [],
        meaning_changes=flips,
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
