"""Meaning flips a rephrasing can make while keeping every source: negation, opposites and counts.

"the glass breaks" -> "the glass does not break", "a car accelerates" -> "a car slows down", "the
wind dies down" -> "the wind picks up", "the customer" -> "two customers". Each check compares the
rephrasing with its original by ``lexicon.stem``, so words the original already has never count:
only what the rephrasing turned around or added.
"""

from __future__ import annotations

import re

from tasks.rephrase.lexicon import SPATIAL_WORDS, STOPWORDS, WORD_RE, stem

_NEGATIONS = frozenset({"no", "not", "never", "without", "nothing", "nobody", "none", "neither", "nor",
                        "don't", "doesn't", "didn't", "isn't", "aren't", "wasn't", "weren't", "cannot",
                        "can't", "won't"})
_NOT_CONTENT = STOPWORDS | SPATIAL_WORDS | _NEGATIONS
_CLAUSE = re.compile(r"[,.;:!?]")
_NEGATION_REACH = 3
"""A negation covers the next few words: "does not break", "no longer running"."""

_OPPOSITES: tuple[tuple[str, str], ...] = (
    ("start starts started starting begin begins beginning", "stop stops stopped stopping shut shuts ending"),
    ("open opens opened opening", "close closes closed closing shut shuts slam slams slammed"),
    ("accelerate accelerates accelerating accelerated",
     "decelerate decelerates slow slows slowing brake brakes braking"),
    ("approach approaches approaching arrive arrives arriving", "recede recedes receding depart departs"),
    ("increase increases increasing rise rises rising grow grows growing swell swells swelling pick picks",
     "decrease decreases decreasing diminish diminishes diminishing fade fades fading die dies dying"),
    ("slow slowly", "quick quickly fast rapid rapidly hurried speed speeding"),
    ("soft softly quiet quietly faint faintly gentle gently light lightly",
     "loud loudly heavy heavily strong strongly"),
    ("laugh laughs laughing", "cry cries crying"),
    ("walk walks walking", "run runs running"),
)
"""Pairs of word sets of opposite meaning; a rephrasing that says one side where the original says only
the other turned the meaning around."""

_COUNTS = frozenset(map(stem, ("two", "three", "four", "five", "six", "seven", "eight", "nine", "ten",
                               "dozen", "dozens", "hundreds", "twice")))
"""Number words: a rephrasing that adds one invents how many sources there are."""

_SIDES: dict[str, set[tuple[int, int]]] = {}
for _i, _pair in enumerate(_OPPOSITES):
    for _side, _words in enumerate(_pair):
        for _w in _words.split():
            _SIDES.setdefault(stem(_w), set()).add((_i, _side))


def _tokens(text: str) -> list[str]:
    return WORD_RE.findall(text.lower())


def _negated(text: str) -> set[str]:
    """Stems of the content words a negation covers, within its clause."""
    out: set[str] = set()
    for clause in _CLAUSE.split(text.lower()):
        tokens = WORD_RE.findall(clause)
        for i, t in enumerate(tokens):
            if t in _NEGATIONS:
                out.update(stem(w) for w in tokens[i + 1 : i + 1 + _NEGATION_REACH] if w not in _NOT_CONTENT)
    return out


def meaning_changes(text: str, original: str) -> list[str]:
    """What the rephrasing turned around: "not break", "accelerate->slowing", "+two"."""
    out_tokens, orig_tokens = _tokens(text), _tokens(original)
    out_stems = {stem(w) for w in out_tokens if w not in SPATIAL_WORDS}  # "close by" is not "closes"
    orig_stems = {stem(w) for w in orig_tokens if w not in SPATIAL_WORDS}
    asserted = orig_stems - _negated(original)
    changes = [f"not {s}" for s in sorted(_negated(text) & asserted)]
    orig_sides = {side for s in orig_stems for side in _SIDES.get(s, ())}
    for s in sorted(out_stems - orig_stems):
        if any((i, 1 - side) in orig_sides and (i, side) not in orig_sides for i, side in _SIDES.get(s, ())):
            changes.append(f"opposite {s}")
    changes += [f"+{s}" for s in sorted((out_stems & _COUNTS) - orig_stems)]
    return changes
