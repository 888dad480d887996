"""From raw model text to one clean caption sentence, or the reason there is none.

Models echo the prompt, wrap answers in quotes, prefix them ("Rephrased:", "Sure! Here is the
caption:") and keep talking after the first sentence; all of that is stripped here so validation
judges the caption alone.
"""

from __future__ import annotations

import re
from typing import NamedTuple

from schemas.captions import OutputFlaw, ValidationConfig
from tasks.prompting import INSTRUCTION, SCENE_INSTRUCTION, prompt_sentence
from tasks.rephrase.lexicon import is_english

_ABBREVIATIONS = frozenset(("mr", "mrs", "ms", "dr", "st", "jr", "sr", "vs", "etc", "e.g", "i.e", "approx"))
_BOUNDARY = re.compile(r"([.!?]+)[\"'”’)\]]*\s+(?=[\"'“‘(\[]?[A-Z0-9])")
_PREFACE = re.compile(r"^(?:sure|certainly|of course|okay|ok|absolutely)\b[!,.]*\s*", re.IGNORECASE)
_LABEL = re.compile(
    r"^(?:[-*•>#]+\s*)?(?:(?:here\s+is|here's)\b[^:\n]{0,60}|[\w' ]{0,40}?\b(?:caption|sentence|answer|"
    r"output|response|rephrasing|rephrased|rewrite|rewritten|version|assistant|result))\s*[:：]\s*",
    re.IGNORECASE,
)
_SPACE_BEFORE_PUNCT = re.compile(r"\s+([,.;:!?])")
_WRAP = "\"“”„«»*_`"
_PAIRED = (("'", "'"), ("‘", "’"), ("(", ")"))


class Cleaned(NamedTuple):
    text: str
    flaw: OutputFlaw | None


def split_sentences(text: str) -> list[str]:
    """Sentences, split before a capital after . ! or ?, except after common abbreviations."""
    out, start = [], 0
    for m in _BOUNDARY.finditer(text):
        before = text[start : m.start()].split()
        if m.group(1) == "." and before and before[-1].lower().strip("(\"'") in _ABBREVIATIONS:
            continue
        out.append(text[start : m.end()].strip())
        start = m.end()
    out.append(text[start:].strip())
    return [s for s in out if s]


def _unwrap(text: str) -> str:
    text = text.strip().strip(_WRAP).strip()
    for left, right in _PAIRED:
        if len(text) > 1 and text.startswith(left) and text.endswith(right):
            text = text[1:-1].strip()
    return text


def postprocess(raw: str, prompt: str, original: str, cfg: ValidationConfig, sources: int = 1) -> Cleaned:
    """The first sentence of what the model meant as its answer, and the first flaw that rules it out.

    ``original`` is every sound's caption; each of the ``sources`` sounds may add ``max_extra_chars``
    (its place and motion words)."""
    text = raw.replace("\r", "\n")
    had_text = any(c.isalpha() for c in text)
    for echo in (prompt, INSTRUCTION, SCENE_INSTRUCTION, prompt_sentence(prompt)):
        text = text.replace(echo, "\n")
    lines = [ln.strip() for ln in text.split("\n") if any(c.isalpha() for c in ln)]
    if not lines:
        return Cleaned("", OutputFlaw.ECHO if had_text else OutputFlaw.EMPTY)
    text = lines[0]
    for _ in range(3):
        stripped = _PREFACE.sub("", text)
        stripped = _unwrap(_LABEL.sub("", stripped) if ":" in stripped else stripped)
        if stripped == text:
            break
        text = stripped
    sentences = split_sentences(text)
    text = _unwrap(sentences[0]) if sentences else ""
    text = _SPACE_BEFORE_PUNCT.sub(r"\1", " ".join(text.split()))
    if not any(c.isalpha() for c in text):
        return Cleaned("", OutputFlaw.EMPTY)
    text = text[0].upper() + text[1:]
    if text[-1] not in ".!?":
        text = text.rstrip(",;:") + "."
    if len(text) > len(original) + cfg.max_extra_chars * sources:
        return Cleaned(text, OutputFlaw.TOO_LONG)
    if not is_english(text):
        return Cleaned(text, OutputFlaw.NOT_ENGLISH)
    return Cleaned(text, None)
