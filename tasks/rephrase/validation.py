"""Is a caption true to its labels and to the original? Checks that go beyond the paper.

Spatial words are counted against the original caption, so words the original already had
("a dog barks in the distance") neither satisfy nor contradict a descriptor: a given descriptor
must be stated more often than in the original, and another band of a labelled slot, or any band
of an unlabelled one, must not be. Meaning is kept when enough of the original's content words
survive (synonyms of one sound source count as the same word: "a canine" keeps "dog"), few new ones
appear, no sound source or event is changed or invented (``sound_sources``) and nothing is negated,
turned into its opposite or counted anew (``meaning``). A template caption keeps the original's words,
so none of these fires on it.

A scene caption names several sounds, and each sound's place and motion words must be in that
sound's clause. The caption is cut into clauses, one per sound: a sound is found by its caption
word for word (what the template and careful rephrasings keep), else by the run of its own content
words (those no other sound has); the cut between two sounds is the first ", while/and/as/..."
between them, else the last such word, else the last comma ("while moving" and "as it moves" go on
with the same sound). Each clause is checked like an ELSA
caption against its source's words and caption (motion words too, ``lexicon.MOTION_PATTERNS``); a
word that belongs to another sound is a swapped binding. The room's words, the content checks and
each sound's recall run over the whole caption. ``hard_negative`` swaps two sounds' clauses, so
that each sits with the other's words: a caption this validation rejects as a swapped binding.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Sequence
from itertools import combinations, pairwise

from schemas.captions import (
    MOTION_GROUPS,
    ROOM_SLOTS,
    SLOT_WORDS,
    SLOTS,
    SOURCE_SLOTS,
    Descriptors,
    OutputFlaw,
    SourceWords,
    ValidationConfig,
    ValidationFlags,
)
from tasks.rephrase.lexicon import (
    MOTION_PATTERNS,
    SCAFFOLD_WORDS,
    WORD_RE,
    content_stems,
    motion_counts,
    spatial_counts,
    stem,
)
from tasks.rephrase.meaning import meaning_changes
from tasks.rephrase.phrasing import as_clause, lower_first
from tasks.rephrase.postprocess import Cleaned, postprocess
from tasks.rephrase.sound_sources import canonical, source_changes

_SCAFFOLD_STEMS = frozenset(stem(w) for w in SCAFFOLD_WORDS)
_JOINS = r"(?:while|whilst|whereas|as|and|but|meanwhile)\b(?!\s+(?:it|its|it's|they|\w+ing)\b)"
"""Words that start the next sound's clause, unless the same sound goes on ("while moving", "as it
sweeps")."""
_COMMA_JOIN = re.compile(rf",\s*{_JOINS}", re.IGNORECASE)
_JOIN = re.compile(rf"[;:—–]|\b{_JOINS}", re.IGNORECASE)
Span = tuple[int, int]


def _slot_words(
    text: str, original: str, d: Descriptors, slots: Sequence[str]
) -> tuple[list[str], list[str], list[str]]:
    """Missing, contradicting and unsupported words of ``slots``: words the text adds to the original."""
    out_counts, orig_counts = spatial_counts(text), spatial_counts(original)
    missing: list[str] = []
    contradictions: list[str] = []
    unsupported: list[str] = []
    for slot in slots:
        label = getattr(d, slot)
        added = [w for w in SLOT_WORDS[slot] if out_counts[slot].get(w, 0) > orig_counts[slot].get(w, 0)]
        if label is None:
            unsupported += added
            continue
        if label not in added:
            missing.append(label)
        contradictions += [w for w in added if w != label]
    return missing, contradictions, unsupported


def _recall(text: str, original: str) -> float:
    """Share of the original's content words (a sound-source synonym counts as its class) in the text."""
    kept = frozenset(map(canonical, content_stems(original))) - _SCAFFOLD_STEMS
    out_classes = frozenset(map(canonical, content_stems(text)))
    return len(kept & out_classes) / len(kept) if kept else 1.0


def _flags(
    text: str, original: str, cfg: ValidationConfig, recall: float,
    missing: list[str], contradictions: list[str], unsupported: list[str], swapped: list[str] | None = None,
) -> ValidationFlags:
    """The content checks (novelty, sources, meaning) and the verdict over every finding."""
    # a sound-source synonym counts as its class: "canine" keeps "dog", and is not new
    orig_classes = frozenset(map(canonical, content_stems(original)))
    novel = sorted({s for s in content_stems(text) if canonical(s) not in orig_classes} - _SCAFFOLD_STEMS)
    sources = source_changes(text, original) if cfg.check_sources else None
    flips = meaning_changes(text, original) if cfg.check_sources else []
    flaws = [
        flaw
        for flaw, failed in (
            (OutputFlaw.MISSING_DESCRIPTOR, bool(missing)),
            (OutputFlaw.CONTRADICTION, bool(contradictions)),
            (OutputFlaw.SWAPPED_BINDING, bool(swapped)),
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
        meaning_changes=flips, swapped_bindings=swapped,
    )


def validate(text: str, original: str, d: Descriptors, cfg: ValidationConfig) -> ValidationFlags:
    """Descriptor presence, contradictions, unsupported spatial words, recall and novelty of one caption."""
    missing, contradictions, unsupported = _slot_words(text, original, d, SLOTS)
    return _flags(text, original, cfg, _recall(text, original), missing, contradictions, unsupported)


def scene_original(scene: Sequence[SourceWords]) -> str:
    """Every sound's caption in one text: what a scene caption's content is checked against."""
    return "; ".join(as_clause(s.caption) for s in scene)


def _sound_spans(text: str, scene: Sequence[SourceWords]) -> list[Span | None]:
    """Where each sound is named: its caption word for word (each source its own occurrence), else the
    run of its own content words; None for a sound the text does not name."""
    low, taken = text.lower(), []
    for s in scene:
        clause = re.escape(as_clause(s.caption).lower())
        hit = next((m.span() for m in re.finditer(rf"(?<!\w){clause}(?!\w)", low)
                    if not any(a < m.end() and m.start() < b for a, b in taken)), None)
        if hit is None:
            break
        taken.append(hit)
    else:
        return taken
    classes = [frozenset(map(canonical, content_stems(motion_counts(s.caption)[1]))) - _SCAFFOLD_STEMS
               for s in scene]
    own = [c - frozenset().union(*(o for j, o in enumerate(classes) if j != k)) or c
           for k, c in enumerate(classes)]
    marks = []  # (start, end, source) of each word that names exactly one sound
    for m in WORD_RE.finditer(low):
        owners = [k for k, c in enumerate(own) if canonical(stem(m.group())) in c]
        if len(owners) == 1:
            marks.append((m.start(), m.end(), owners[0]))
    firsts = sorted({k: start for start, _, k in reversed(marks)}.items(), key=lambda kv: kv[1])
    spans: list[Span | None] = [None] * len(scene)
    for i, (k, start) in enumerate(firsts):
        stop = firsts[i + 1][1] if i + 1 < len(firsts) else len(text)
        spans[k] = (start, max(end for a, end, j in marks if j == k and a < stop))
    return spans


def _clauses(text: str, spans: list[Span | None]) -> list[Span | None]:
    """Each located sound's clause: the caption cut between consecutive sounds (module docstring)."""
    located = sorted((span, k) for k, span in enumerate(spans) if span is not None)
    cuts = [0]
    for (a, _), (b, _) in pairwise(located):
        lo, hi = a[1], b[0]
        if (m := _COMMA_JOIN.search(text, lo, hi)) is not None:
            cuts.append(m.start())
        elif joins := list(_JOIN.finditer(text, lo, hi)):
            cuts.append(joins[-1].start())
        else:
            comma = text.rfind(",", lo, hi)
            cuts.append(comma if comma >= 0 else max(lo, hi))
    cuts.append(len(text))
    out: list[Span | None] = [None] * len(spans)
    for i, (_, k) in enumerate(located):
        out[k] = (cuts[i], cuts[i + 1])
    return out


def _owner(scene: Sequence[SourceWords], k: int, has: Callable[[SourceWords], bool]) -> int | None:
    """Another source whose words include the word (``has(source)``), if any."""
    return next((j for j, o in enumerate(scene) if j != k and has(o)), None)


def _bindings(text: str, scene: Sequence[SourceWords]) -> tuple[list[str], list[str], list[str], list[str]]:
    """Missing, contradicting, unsupported and swapped words of every sound's clause (``source k: w``)."""
    missing: list[str] = []
    contradictions: list[str] = []
    unsupported: list[str] = []
    swapped: list[str] = []
    for k, (source, clause) in enumerate(zip(scene, _clauses(text, _sound_spans(text, scene)), strict=True)):
        if clause is None:
            missing += [f"source {k}: {w}" for w in (*source.descriptors.given().values(), *source.motion)]
            continue
        out_motion, out_rest = motion_counts(text[clause[0] : clause[1]])
        orig_motion, orig_rest = motion_counts(source.caption)
        out_counts, orig_counts = spatial_counts(out_rest), spatial_counts(orig_rest)
        for slot in SOURCE_SLOTS:
            label = getattr(source.descriptors, slot)
            added = [w for w in SLOT_WORDS[slot] if out_counts[slot].get(w, 0) > orig_counts[slot].get(w, 0)]
            if label is not None and label not in added:
                missing.append(f"source {k}: {label}")
            for w in added:
                if w == label:
                    continue
                j = _owner(scene, k, lambda o, slot=slot, w=w: getattr(o.descriptors, slot) == w)
                if j is not None:
                    swapped.append(f"source {k}: {w} (source {j}'s)")
                else:
                    (contradictions if label is not None else unsupported).append(f"source {k}: {w}")
        added_motion = [w for w in MOTION_PATTERNS if out_motion.get(w, 0) > orig_motion.get(w, 0)]
        missing += [f"source {k}: {w}" for w in source.motion if w not in added_motion]
        for w in added_motion:
            if w in source.motion:
                continue
            j = _owner(scene, k, lambda o, w=w: w in o.motion)
            group = next(words for words in MOTION_GROUPS.values() if w in words)
            if j is not None:
                swapped.append(f"source {k}: {w} (source {j}'s)")
            elif any(m in group for m in source.motion):
                contradictions.append(f"source {k}: {w}")
            else:
                unsupported.append(f"source {k}: {w}")
    return missing, contradictions, unsupported, swapped


def validate_scene(
    text: str, scene: Sequence[SourceWords], room: Descriptors, cfg: ValidationConfig
) -> ValidationFlags:
    """``validate`` for a scene caption: each sound's words in its own clause (a word of another sound
    there is a swapped binding), the room's words anywhere, and every sound's content kept."""
    missing, contradictions, unsupported, swapped = _bindings(text, scene)
    text_rest = motion_counts(text)[1]
    original_rest = motion_counts(scene_original(scene))[1]
    in_room = _slot_words(text_rest, original_rest, room, ROOM_SLOTS)
    recall = min(_recall(text_rest, motion_counts(s.caption)[1]) for s in scene)
    return _flags(text_rest, original_rest, cfg, recall, in_room[0] + missing, in_room[1] + contradictions,
                  in_room[2] + unsupported, swapped)


def hard_negative(caption: str, scene: Sequence[SourceWords]) -> str | None:
    """The caption with two sounds' places and motion swapped: the first pair of sources (in scene
    order) with different words whose clauses, exchanged, make validation find a swapped binding.
    None when no pair does (one source, or every source with the same words)."""
    spans = _sound_spans(caption, scene)
    for a, b in combinations(range(len(scene)), 2):
        first, second = spans[a], spans[b]
        words = [(s.descriptors, s.motion) for s in (scene[a], scene[b])]
        if first is None or second is None or words[0] == words[1]:
            continue
        first, second = sorted((first, second))
        one, two = caption[first[0] : first[1]], caption[second[0] : second[1]]
        if one.lower() == two.lower():
            continue

        def fit(clause: str, at: int) -> str:
            return clause[:1].upper() + clause[1:] if at == 0 else lower_first(clause)

        negative = (caption[: first[0]] + fit(two, first[0]) + caption[first[1] : second[0]]
                    + fit(one, second[0]) + caption[second[1] :])
        if _bindings(negative, scene)[3]:
            return negative
    return None


def judge(
    raw: str, prompt: str, original: str, d: Descriptors, cfg: ValidationConfig,
    scene: Sequence[SourceWords] | None = None,
) -> tuple[str, ValidationFlags]:
    """Post-process raw model text, then validate it: the caption and its flags. With ``scene``
    (cleaned captions), ``original`` is source 0's caption and ``d`` the room's words."""
    if scene is not None:
        original = scene_original(scene)
    cleaned: Cleaned = postprocess(raw, prompt, original, cfg, len(scene) if scene else 1)
    if cleaned.flaw is not None and not cleaned.text:
        return cleaned.text, ValidationFlags(passed=False, flaws=[cleaned.flaw], content_recall=0.0,
                                             swapped_bindings=None if scene is None else [])
    flags = validate_scene(cleaned.text, scene, d, cfg) if scene else validate(cleaned.text, original, d, cfg)
    if cleaned.flaw is not None:
        flags = flags.model_copy(update={"passed": False, "flaws": [cleaned.flaw, *flags.flaws]})
    return cleaned.text, flags
