"""The paper's prompt (section 3.2, fixed in DESIGN.md), and the screen every caption passes first.

A slot without a word is removed with its spacing and, when no location word is left, with its
"the ... of"; the article before the room agrees with the next word. The screen turns bad input
(empty, too long, not UTF-8, not English, addressed to the model, no content) into a typed
rejection with a stable reason code instead of a prompt.

A scene's prompt extends the paper's the same way: each sound "is coming from the <distance>
<elevation> <direction>" of its own, then its motion words, all in one room; the instruction asks
for one sentence that keeps each sound with its own place and motion.
"""

from __future__ import annotations

import re
import unicodedata
from collections.abc import Sequence

from schemas.captions import (
    ROOM_SLOTS,
    SLOTS,
    SOURCE_SLOTS,
    CaptionRejectReason,
    Descriptors,
    SourceWords,
    ValidationConfig,
)
from tasks.errors import SpatialAudioCapsError
from tasks.rephrase.lexicon import content_stems, is_english

PROMPT_TEMPLATE = (
    "The sound: <original caption> is coming from the <distance> <elevation> <direction> of a <size> "
    "<reverb> room. Rephrase as a short English sentence describing the sound and all the details of "
    "its source."
)
"""Verbatim from the paper and DESIGN.md; ``build_prompt`` fills it."""
INSTRUCTION = PROMPT_TEMPLATE[PROMPT_TEMPLATE.index("Rephrase") :]
_HEAD, _TAIL = PROMPT_TEMPLATE.split("<original caption>")
PROMPT_VERSION = "elsa-3.2/v1"
"""Changes whenever build_prompt's output could change: part of every cache key."""
SCENE_PROMPT_TEMPLATE = (
    "The sounds of a <size> <reverb> room: <sounds>. Rephrase as one short English sentence describing "
    "every sound and all the details of its source, keeping each sound with its own location and motion."
)
"""The paper's prompt for several sounds: <sounds> lists each as "<original caption> is coming from the
<distance> <elevation> <direction>, <motion words joined by 'and'>", joined by "; "."""
SCENE_INSTRUCTION = SCENE_PROMPT_TEMPLATE[SCENE_PROMPT_TEMPLATE.index("Rephrase") :]
SCENE_PROMPT_VERSION = "scene/v1"
"""Changes whenever a scene prompt could change: part of scene requests' cache keys (ELSA keys keep
PROMPT_VERSION alone, so they did not change when scenes came)."""

_CONTROL = re.compile(r"[\x00-\x1f\x7f-\x9f\u2028\u2029]")
_TRAILING = re.compile(r"[\s.!?;:,]+$")
_QUOTES = "\"'“”‘’`"
_INSTRUCTION_RE = re.compile(  # matched against lower-cased text
    r"\b(?:(?:ignore|disregard|forget|override|bypass)\b[^.!?\n]{0,40}?"
    r"\b(?:instructions?|prompts?|rules|directions|guidelines|messages?|context)\b"
    r"|(?:system|assistant|user)\s*(?:prompt|message)?\s*:"
    r"|you\s+(?:are|must|should|will)\s+now\b"
    r"|(?:respond|reply)\s+(?:only\s+)?(?:with|in)\b"
    r"|new\s+instructions?\b"
    r"|instead\s+(?:write|say|output|print|respond)\b"
    r"|do\s+not\s+(?:rephrase|follow)\b)"
    r"|<\|[^|>]{1,40}\|>|\[/?inst\]|<</?sys>>|</?s>"
)


class CaptionRejected(SpatialAudioCapsError):
    """An input caption that gets no prompt; ``reason`` is a CaptionRejectReason code."""

    def __init__(self, reason: CaptionRejectReason, detail: str) -> None:
        super().__init__(f"caption rejected ({reason}): {detail}")
        self.reason = reason
        self.detail = detail


def clean_caption(text: str) -> str:
    """One line, single spaces, no wrapping quotes, no trailing punctuation: ready for a slot."""
    text = _CONTROL.sub(" ", unicodedata.normalize("NFC", text))
    text = " ".join(text.split())
    if len(text) > 1 and text[0] in _QUOTES and text[-1] in _QUOTES:
        text = text[1:-1].strip()
    return _TRAILING.sub("", text)


def decode_caption(raw: str | bytes) -> str:
    """The caption as text; bytes must be UTF-8 and text must not carry decode damage."""
    if isinstance(raw, bytes):
        try:
            return raw.decode("utf-8")
        except UnicodeDecodeError as exc:
            raise CaptionRejected(CaptionRejectReason.NOT_UTF8, f"invalid byte at {exc.start}") from exc
    try:
        raw.encode("utf-8")
    except UnicodeEncodeError as exc:
        raise CaptionRejected(CaptionRejectReason.NOT_UTF8, "lone surrogate (undecodable bytes)") from exc
    if "\ufffd" in raw:
        raise CaptionRejected(CaptionRejectReason.NOT_UTF8, "U+FFFD replacement character")
    return raw


def screen_caption(raw: str | bytes, cfg: ValidationConfig) -> str:
    """The cleaned caption, or CaptionRejected with the first reason that applies."""
    text = clean_caption(decode_caption(raw))
    if not any(c.isalpha() for c in text):
        raise CaptionRejected(CaptionRejectReason.EMPTY, "no letters")
    if len(text) > cfg.max_caption_chars:
        raise CaptionRejected(
            CaptionRejectReason.TOO_LONG, f"{len(text)} characters > {cfg.max_caption_chars}"
        )
    if m := _INSTRUCTION_RE.search(text.lower()):
        raise CaptionRejected(CaptionRejectReason.INSTRUCTION, f"addresses the model: {m.group(0)!r}")
    if not is_english(text):
        raise CaptionRejected(CaptionRejectReason.NOT_ENGLISH, "not English")
    if not content_stems(text):
        raise CaptionRejected(CaptionRejectReason.NO_CONTENT, "no content word")
    return text


def _fill(template: str, d: Descriptors, slots: Sequence[str]) -> str:
    for slot in slots:
        template = template.replace(f"<{slot}>", getattr(d, slot) or "")
    template = re.sub(r" {2,}", " ", template).replace(" the of ", " ")
    return re.sub(r"\b(from|of) a (?=[aeiou])", r"\1 an ", template)


def _sound(source: SourceWords) -> str:
    """One sound of a scene prompt: no place word drops "is coming from the", no motion its comma."""
    place = " ".join(w for w in (getattr(source.descriptors, slot) for slot in SOURCE_SLOTS) if w)
    motion = " and ".join(source.motion)
    return (source.caption + (f" is coming from the {place}" if place else "")
            + (f", {motion}" if motion else ""))


def build_prompt(caption: str, d: Descriptors, scene: Sequence[SourceWords] | None = None) -> str:
    """PROMPT_TEMPLATE filled for one cleaned caption: empty slots leave no doubled space, no
    dangling "the ... of", and the room's article agrees ("an acoustically dampened room").

    With ``scene`` (sources with cleaned captions), SCENE_PROMPT_TEMPLATE: every sound with its own
    words, ``d`` the room's."""
    if scene is not None:
        head, tail = SCENE_PROMPT_TEMPLATE.split("<sounds>")
        return _fill(head, d, ROOM_SLOTS) + "; ".join(map(_sound, scene)) + tail
    return f"{_HEAD}{caption}{_fill(_TAIL, d, SLOTS)}"


def prompt_sentence(prompt: str) -> str:
    """The prompt's first sentence (the filled template), which an echoing model repeats."""
    return prompt.removesuffix(" " + INSTRUCTION).removesuffix(" " + SCENE_INSTRUCTION)
