"""The deterministic rule-based rewrite: varied phrasings, no model. What the template backend
returns, and every LLM backend's fallback.

The original caption is kept word for word (joined into one clause), and each given descriptor is
stated once with a phrase from the validation lexicon, so a template caption passes validation by
construction; the seed only picks among phrasings.
"""

from __future__ import annotations

from schemas.captions import Descriptors
from tasks.rephrase.postprocess import split_sentences

TEMPLATE_VERSION = "template/v1"

PHRASES: dict[str, tuple[str, ...]] = {
    "near": ("nearby", "close by", "up close"),
    "far": ("far away", "in the distance", "from afar"),
    "up": ("above", "overhead", "from above"),
    "down": ("below", "from below", "down low"),
    "front": ("in front", "straight ahead", "from the front"),
    "left": ("on the left", "to the left", "from the left"),
    "right": ("on the right", "to the right", "from the right"),
    "back": ("behind", "from behind", "at the back"),
    "small": ("small", "compact"),
    "large": ("large", "spacious", "big"),
    "acoustically dampened": ("acoustically dampened", "sound-dampened", "acoustically dead"),
    "highly reverberant": ("highly reverberant", "echoing", "reverberant"),
}
"""Descriptor word -> phrasings; each must be recognised by lexicon.SPATIAL_PATTERNS for its word only."""
_ROOM_NOUNS = ("room", "space")


def _decap(word: str) -> str:
    """Lower-case a capitalised ordinary word ("A", "Birds"); leave "I", acronyms and mixed case alone."""
    ordinary = word[:1].isupper() and (len(word) == 1 or word[1:].islower())
    if not ordinary or word == "I" or word.startswith("I'"):
        return word
    return word[0].lower() + word[1:]


def _lower_first(text: str) -> str:
    head, _, rest = text.partition(" ")
    return _decap(head) + (" " + rest if rest else "")


def as_clause(caption: str) -> str:
    """Several sentences joined into one clause, so the caption stays one sentence."""
    parts = [s.rstrip(".!?").strip() for s in split_sentences(caption)]
    return ", ".join([parts[0], *(_lower_first(p) for p in parts[1:])]) if parts else caption


def _join(pieces: list[str]) -> str:
    return pieces[0] if len(pieces) == 1 else ", ".join(pieces[:-1]) + " and " + pieces[-1]


def template_caption(caption: str, d: Descriptors, seed: int) -> str:
    """One spatial caption from a cleaned caption and its descriptors; the seed picks the phrasing."""
    bits = (seed * 0x9E3779B97F4A7C15) & 0xFFFFFFFFFFFFFFFF  # spread the seed over 64 bits
    picks = iter(range(4, 64, 6))

    def pick(options: tuple[str, ...]) -> str:  # 6 bits per choice: far cheaper than a Random
        return options[(bits >> next(picks)) % len(options)]

    clause = as_clause(caption)
    loc_words = [w for w in (d.distance, d.elevation, d.direction) if w]
    loc = _join([pick(PHRASES[w]) for w in loc_words]) if loc_words else ""
    room_words = [pick(PHRASES[w]) for w in (d.size, d.reverb) if w]
    room = ""
    if room_words:
        adjectives = " ".join(room_words)
        noun = pick(_ROOM_NOUNS) if "spacious" not in adjectives else "room"
        room = f"in {'an' if adjectives[0] in 'aeiou' else 'a'} {adjectives} {noun}"
    shape = pick(("clause first", "room first", "location first"))
    if shape == "clause first" or not (loc or room):
        text = ", ".join(p for p in (clause, loc, room) if p)
    elif shape == "room first" or not loc:
        text = ", ".join(p for p in (room, _lower_first(clause), loc) if p)
    else:
        text = ", ".join(p for p in (loc, room, _lower_first(clause)) if p)
    return text[0].upper() + text[1:] + "."
