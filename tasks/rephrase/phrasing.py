"""The deterministic rule-based rewrite: varied phrasings, no model. What the template backend
returns, and every LLM backend's fallback.

The original caption is kept word for word (joined into one clause), and each given descriptor is
stated once with a phrase from the validation lexicon, so a template caption passes validation by
construction; the seed only picks among phrasings. A scene's caption is one sentence of such
clauses, one per sound, each followed (or preceded) by its own place and motion and joined by
"while", "and" or "as", which is where validation cuts a scene caption into its sounds' clauses.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

from schemas.captions import Descriptors, SourceWords
from tasks.rephrase.postprocess import split_sentences

TEMPLATE_VERSION = "template/v1"
SCENE_TEMPLATE_VERSION = "scene-template/v1"
"""Changes whenever a scene's template caption could change: part of scene requests' cache keys."""

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
MOTION_PHRASES: dict[str, tuple[str, ...]] = {
    "moving from left to right": ("moving from left to right", "sweeping from left to right",
                                  "travelling from the left to the right"),
    "moving from right to left": ("moving from right to left", "sweeping from right to left",
                                  "travelling from the right to the left"),
    "passing behind": ("passing behind", "moving around behind", "crossing behind"),
    "approaching": ("approaching", "coming closer", "drawing nearer"),
    "receding": ("receding", "moving away", "drifting away"),
    "rising": ("rising", "moving upwards", "ascending"),
    "descending": ("descending", "moving downwards", "going down"),
}
"""Motion word -> phrasings; each must be recognised by lexicon.MOTION_PATTERNS for its word only."""
_ROOM_NOUNS = ("room", "space")
_SCENE_JOINS = ("while", "and", "as")
"""Words after a comma before each further sound's clause: where validation cuts a scene caption."""


def _decap(word: str) -> str:
    """Lower-case a capitalised ordinary word ("A", "Birds"); leave "I", acronyms and mixed case alone."""
    ordinary = word[:1].isupper() and (len(word) == 1 or word[1:].islower())
    if not ordinary or word == "I" or word.startswith("I'"):
        return word
    return word[0].lower() + word[1:]


def lower_first(text: str) -> str:
    head, _, rest = text.partition(" ")
    return _decap(head) + (" " + rest if rest else "")


def as_clause(caption: str) -> str:
    """Several sentences joined into one clause, so the caption stays one sentence."""
    parts = [s.rstrip(".!?").strip() for s in split_sentences(caption)]
    return ", ".join([parts[0], *(lower_first(p) for p in parts[1:])]) if parts else caption


def _join(pieces: list[str]) -> str:
    return pieces[0] if len(pieces) == 1 else ", ".join(pieces[:-1]) + " and " + pieces[-1]


def _picker(seed: int) -> Callable[[tuple[str, ...]], str]:
    """A chooser among phrasings: 6 bits of the spread seed per choice, ten choices (far cheaper than
    a Random)."""
    bits = (seed * 0x9E3779B97F4A7C15) & 0xFFFFFFFFFFFFFFFF  # spread the seed over 64 bits
    picks = iter(range(4, 64, 6))

    def pick(options: tuple[str, ...]) -> str:
        return options[(bits >> next(picks)) % len(options)]

    return pick


def _location(d: Descriptors, pick: Callable[[tuple[str, ...]], str]) -> str:
    loc_words = [w for w in (d.distance, d.elevation, d.direction) if w]
    return _join([pick(PHRASES[w]) for w in loc_words]) if loc_words else ""


def _room(d: Descriptors, pick: Callable[[tuple[str, ...]], str]) -> str:
    room_words = [pick(PHRASES[w]) for w in (d.size, d.reverb) if w]
    if not room_words:
        return ""
    adjectives = " ".join(room_words)
    noun = pick(_ROOM_NOUNS) if "spacious" not in adjectives else "room"
    return f"in {'an' if adjectives[0] in 'aeiou' else 'a'} {adjectives} {noun}"


def template_caption(
    caption: str, d: Descriptors, seed: int, scene: Sequence[SourceWords] | None = None
) -> str:
    """One spatial caption from a cleaned caption and its descriptors; the seed picks the phrasing.
    With ``scene`` (cleaned captions), the scene's caption, ``d`` being the room's words."""
    if scene is not None:
        return _scene_caption(scene, d, seed)
    pick = _picker(seed)
    clause = as_clause(caption)
    loc = _location(d, pick)
    room = _room(d, pick)
    shape = pick(("clause first", "room first", "location first"))
    if shape == "clause first" or not (loc or room):
        text = ", ".join(p for p in (clause, loc, room) if p)
    elif shape == "room first" or not loc:
        text = ", ".join(p for p in (room, lower_first(clause), loc) if p)
    else:
        text = ", ".join(p for p in (loc, room, lower_first(clause)) if p)
    return text[0].upper() + text[1:] + "."


def _scene_caption(scene: Sequence[SourceWords], room: Descriptors, seed: int) -> str:
    """One caption of a scene's sounds (cleaned captions), each bound to its own place and motion, in
    a room: "In a large echoing room, a dog barks, nearby and on the left, moving from left to right,
    while far behind, a car horn sounds." Sounds keep the scene's order; each source draws its
    phrasings from its own seed, so a sound's words don't depend on how many sounds precede it."""
    pick = _picker(seed)
    room_text = _room(room, pick)
    pieces: list[str] = []
    for k, source in enumerate(scene):
        pick_k = _picker((seed << 3) + k + 1)
        clause = as_clause(source.caption)
        loc = _location(source.descriptors, pick_k)
        motion = _join([pick_k(MOTION_PHRASES[w]) for w in source.motion]) if source.motion else ""
        if loc and pick_k(("after", "before")) == "before":
            piece = ", ".join(p for p in (loc, lower_first(clause), motion) if p)
        else:
            piece = ", ".join(p for p in (clause, loc, motion) if p)
        pieces.append(piece if k == 0 else f"{pick_k(_SCENE_JOINS)} {lower_first(piece)}")
    sounds = ", ".join(pieces)
    if room_text and pick(("room first", "room last")) == "room first":
        text = f"{room_text}, {lower_first(sounds)}"
    else:
        text = ", ".join(p for p in (sounds, room_text) if p)
    return text[0].upper() + text[1:] + "."
