"""The words validation knows: spatial synonyms per descriptor, content words, and an English test.

Pure data and small text functions, shared by the input screen (tasks.prompting), the template
backend (whose every phrase must be recognised here) and validation. Patterns are phrases, not
bare words, where a bare word is mostly non-spatial in audio captions ("picks up", "slows down",
"the man left", "back and forth").
"""

from __future__ import annotations

import re
import unicodedata
from functools import cache, lru_cache


def _words(text: str) -> frozenset[str]:
    return frozenset(text.split())


_DET = r"(?:the|its|their|his|her|your|my|our|one's)\s+(?:(?:far|upper|lower|extreme|front|back|rear)\s+)?"

SPATIAL_PATTERNS: dict[str, dict[str, tuple[str, ...]]] = {
    "distance": {
        "near": (r"near(?:by)?\b", r"close\s+(?:by|to|at\s+hand)\b", r"up\s+close\b",
                 r"close-up\b", r"close\s+range\b"),
        "far": (r"far\b", r"afar\b", r"distant(?:ly)?\b", r"in\s+the\s+distance\b",
                r"(?:at|from)\s+a\s+distance\b"),
    },
    "elevation": {
        "up": (r"above\b", r"overhead\b", r"up\s+high\b", r"high\s+(?:up|above)\b",
               r"upper\b", r"upwards?\b", r"elevated\b", r"(?:the|far|near)\s+up\b",
               r"up\s+(?:left|right)\b"),
        "down": (r"below\b", r"beneath\b", r"underneath\b", r"down\s+(?:low|below)\b",
                 r"low\s+down\b", r"downwards?\b", r"(?:the|far|near)\s+down\b",
                 r"down\s+(?:left|right)\b", r"lower\s+(?:left|right)\b"),
    },
    "direction": {  # left/right first: "the front left" is left, not front
        "left": (_DET + r"left\b", r"left(?:-hand|\s+hand|\s+side)\b", r"leftwards?\b"),
        "right": (_DET + r"right\b", r"right(?:-hand|\s+hand|\s+side)\b", r"rightwards?\b"),
        "front": (r"in\s+front\b", _DET + r"front\b", r"ahead\b", r"frontal\b"),
        "back": (r"behind\b", _DET + r"(?:back|rear)\b", r"from\s+(?:the\s+)?(?:back|rear)\b",
                 r"in\s+back\b"),
    },
    "size": {
        "small": (r"small(?:er|-sized)?\b", r"tiny\b", r"compact\b", r"cramped\b"),
        "large": (r"large(?:r|-sized)?\b", r"big(?:ger)?\b", r"spacious\b", r"huge\b", r"vast\b",
                  r"enormous\b", r"cavernous\b"),
    },
    "reverb": {
        "acoustically dampened": (r"damp(?:ened|ed)\b", r"deadened\b", r"anechoic\b",
                                  r"acoustically\s+(?:dead|dry|treated)\b", r"sound-?proofed\b",
                                  r"non-?reverberant\b", r"echo-?free\b"),
        "highly reverberant": (r"(?<!non-)(?<!non)reverberant\b", r"reverb(?:erating|eration|y)?\b",
                               r"echo(?:ing|ey|y|es|ed)?\b(?!-?free)", r"resonant\b"),
    },
}
"""slot -> descriptor word -> lower-case regex alternatives that state it, each anchored at a word start."""

_TRIGGERS: dict[str, frozenset[str]] = {
    "distance": _words("near nearby close afar far distant distantly distance"),
    "elevation": _words("above overhead high upper upward upwards elevated up below beneath underneath down "
                        "low lower downward downwards"),
    "direction": _words("front ahead frontal left leftward leftwards right rightward rightwards behind back "
                        "rear"),
    "size": _words("small smaller tiny compact cramped large larger big bigger spacious huge vast enormous "
                   "cavernous"),
    "reverb": _words("damped dampened deadened anechoic acoustically proofed soundproofed reverberant reverb "
                     "reverberating reverberation reverby echo echoing echoey echoy echoes echoed resonant"),
}
"""Words without which a slot's patterns cannot match: most captions skip most regexes."""


def _group(word: str) -> str:
    return re.sub(r"\W", "_", word)


_NOT_NEGATED = "".join(f"(?<!{n} )" for n in ("not", "no", "never", "without", "non")) + "(?<!non-)"
_SLOT_RE: dict[str, re.Pattern[str]] = {
    slot: re.compile(rf"\b{_NOT_NEGATED}(?:"
                     + "|".join(f"(?P<{_group(w)}>{'|'.join(p)})" for w, p in words.items()) + ")")
    for slot, words in SPATIAL_PATTERNS.items()
}
_GROUP_WORD = {_group(w): w for words in SPATIAL_PATTERNS.values() for w in words}
_TRIGGER_SLOTS: dict[str, tuple[str, ...]] = {
    w: tuple(slot for slot, ws in _TRIGGERS.items() if w in ws) for ws in _TRIGGERS.values() for w in ws
}
_TOKEN = re.compile(r"[a-z]+")
_BEFORE, _AFTER = 16, 10
"""Every pattern match lies within this many characters before and after one of its trigger words."""


def spatial_counts(text: str) -> dict[str, dict[str, int]]:
    """How often each descriptor word is stated, per slot; negated mentions ("not far") don't count.

    Each slot's regex runs only over windows around that slot's trigger words (most of a caption
    has none): the same matches as a full scan, at a fraction of the cost on a dataset's worth.
    """
    text = " ".join(text.lower().split())  # single spaces: the negation look-behinds are fixed-width
    counts: dict[str, dict[str, int]] = {slot: {} for slot in SPATIAL_PATTERNS}
    if _TRIGGER_SLOTS.keys().isdisjoint(_TOKEN.findall(text)):
        return counts
    windows: dict[str, list[list[int]]] = {}
    for tok in _TOKEN.finditer(text):
        for slot in _TRIGGER_SLOTS.get(tok.group(), ()):
            lo, hi = max(0, tok.start() - _BEFORE), tok.end() + _AFTER
            spans = windows.setdefault(slot, [])
            if spans and lo <= spans[-1][1]:
                spans[-1][1] = hi
            else:
                spans.append([lo, hi])
    for slot, spans in windows.items():
        rx, per = _SLOT_RE[slot], counts[slot]
        for lo, hi in spans:
            for m in rx.finditer(text, lo, hi):
                word = _GROUP_WORD[m.lastgroup or ""]
                per[word] = per.get(word, 0) + 1
    return counts


_MOVES = r"(?:mov(?:es|ing|e)|travel(?:s|l?ing)|sweep(?:s|ing)?|pan(?:s|ning)?|go(?:es|ing)|head(?:s|ing)|" \
          r"drift(?:s|ing)?|shift(?:s|ing)?|glid(?:es|ing))"
_SIDE_TO = r"\s+(?:to(?:wards?)?|over\s+to|across\s+to|into)\s+(?:the\s+)?"
MOTION_PATTERNS: dict[str, tuple[str, ...]] = {
    "moving from left to right": (rf"(?:{_MOVES}\s+)?(?:from\s+)?(?:the\s+)?left{_SIDE_TO}right\b",
                                  rf"{_MOVES}\s+(?:over\s+|across\s+)?(?:to(?:wards?)?\s+)?(?:the\s+)?right(?:wards?)?\b"),
    "moving from right to left": (rf"(?:{_MOVES}\s+)?(?:from\s+)?(?:the\s+)?right{_SIDE_TO}left\b",
                                  rf"{_MOVES}\s+(?:over\s+|across\s+)?(?:to(?:wards?)?\s+)?(?:the\s+)?left(?:wards?)?\b"),
    "passing behind": (rf"(?:pass(?:es|ing)?|cross(?:es|ing)?|circl(?:es|ing)|swing(?:s|ing)|{_MOVES})\s+"
                       r"(?:a?round\s+|across\s+)?(?:behind|the\s+(?:back|rear))\b",),
    "approaching": (r"approach(?:es|ing)?\b", rf"(?:{_MOVES}|com(?:es|ing)|get(?:s|ting)|draw(?:s|ing))\s+"
                    r"(?:ever\s+)?(?:closer|nearer)\b"),
    "receding": (r"reced(?:es|ing)\b", rf"(?:{_MOVES}|get(?:s|ting))\s+(?:further\s+|farther\s+)?away\b"),
    "rising": (r"ris(?:es|ing)\b", r"ascend(?:s|ing)?\b", rf"{_MOVES}\s+up(?:wards?)?\b"),
    "descending": (r"descend(?:s|ing)?\b", rf"{_MOVES}\s+down(?:wards?)?\b"),
}
"""Motion word (schemas.captions.MotionWord) -> regex alternatives that state it, matched before the
spatial patterns: inside "moving from the left to the right" or "passing behind", "left", "right" and
"behind" say how the source moves, not where it is."""
_MOTION_RE = re.compile(
    rf"\b{_NOT_NEGATED}(?:" + "|".join(f"(?P<{_group(w)}>{'|'.join(p)})" for w, p in MOTION_PATTERNS.items())
    + ")", re.IGNORECASE,
)
_MOTION_GROUP_WORD = {_group(w): w for w in MOTION_PATTERNS}


def motion_counts(text: str) -> tuple[dict[str, int], str]:
    """How often each motion word is stated (negated mentions don't count), and the text with those
    phrases blanked out, case kept, so that spatial and content checks read only what is left."""
    text = " ".join(text.split())
    counts: dict[str, int] = {}
    kept: list[str] = []
    end = 0
    for m in _MOTION_RE.finditer(text):
        word = _MOTION_GROUP_WORD[m.lastgroup or ""]
        counts[word] = counts.get(word, 0) + 1
        kept.append(text[end : m.start()])
        end = m.end()
    return counts, " ".join([*kept, text[end:]]) if kept else text


WORD_RE = re.compile(r"[^\W\d_]+(?:'[^\W\d_]+)?")

STOPWORDS = _words("""
a about above across after again against all almost along also although am among an and another any
anyone anything are around as at away be became because been before being below beside besides
between both but by can could did do does doing done down during each either else even ever every
few for from further had has have having he her here hers herself him himself his how however i if
in into is it its itself just least less many may me might more most much must my myself near
neither never no nor not now of off often on once one only onto or other others our ours out over
own per perhaps quite rather really same several she should since so some something sometimes still
such than that the their theirs them themselves then there these they this those though through
throughout thus to together too toward towards under until up upon us very via was we well were
what when whenever where whereas whether which while who whom whose why will with within without
would yet you your yours 's s t
""")
"""English function words: never content words."""

SCAFFOLD_WORDS = _words("""
sound sounds sounding heard hear hears hearing audible coming comes come emanating emanates emanate
originating originates originate located positioned position placed source direction side corner
end area part space room rooms hall chamber listener place somewhere region spot can also while
seems appears clearly distinctly faintly softly make makes making made occur occurs occurring occurred
produce produces producing produced background foreground
""")
"""Words around the content that do not change it: neither novel in a rephrasing nor content it must
keep ("a clinking sound occurs", "in the background": the descriptors now say where it is)."""


SPATIAL_WORDS = _words("""
near nearby close afar far distant distantly distance away above overhead high upper upward upwards
elevated below beneath underneath low lower downward downwards front ahead frontal left leftward
leftwards right rightward rightwards behind back rear small smaller tiny compact cramped large larger
big bigger spacious huge vast enormous cavernous dampened damped deadened anechoic acoustically
soundproofed reverberant reverb reverberation reverberating reverby echo echoes echoed echoing echoey
echoy resonant highly sized straight dead
""")
"""Words of the spatial lexicon: stated by descriptors, so neither content to recall nor novel."""
_NOT_CONTENT = STOPWORDS | SPATIAL_WORDS


@cache
def stem(word: str) -> str:
    """A crude suffix stripper: enough to match barks/barking/barked and blows/blowing."""
    w = word.lower().removesuffix("'s")
    for suffix, repl, min_len in (("ies", "y", 5), ("ing", "", 5), ("ed", "", 5), ("ly", "", 6),
                                  ("es", "", 5), ("s", "", 4)):
        if w.endswith(suffix) and len(w) >= min_len and not (suffix == "s" and w.endswith("ss")):
            if suffix == "es" and not w[:-2].endswith(("s", "x", "z", "ch", "sh")):
                w = w[:-1]
            else:
                w = w[: len(w) - len(suffix)] + repl
            break
    if len(w) > 3 and w[-1] == w[-2] and w[-1] not in "lsz" and w[-1] not in "aeiou":
        w = w[:-1]
    if len(w) > 4 and w.endswith("e"):
        w = w[:-1]
    return w


@lru_cache(maxsize=1 << 16)
def content_stems(text: str) -> frozenset[str]:
    """Stems of the words that carry meaning: not function words, not spatial words. Cached: the
    screen and every validation attempt ask for the same original caption."""
    return frozenset(stem(w) for w in WORD_RE.findall(text.lower()) if w not in _NOT_CONTENT and len(w) > 1)


_FOREIGN = _words("""
el la los las del de y un una unos unas por para mientras está están sobre pero muy cuando donde también hay
le les des du et est une dans avec sur pendant qui que il elle sont pas aux cette très où
der das und ist ein eine einem einen einer mit auf während nicht sich zu von vom zum bei ich wird
gli della delle nel nella sono mentre che è uno
os não são enquanto uma com
het een en niet zijn worden
""")
"""Function words of other Latin-script languages that are not English words."""

_ENGLISH = _words("""
the a an and or is are was were of in on at with while as by to from then followed into onto over
under it its this that there some someone something being be been has have his her their he she
they people man woman men women sound sounds noise loud water dog bird birds car engine wind music
speaking talking background playing running blowing chirping barking
""")


def is_english(text: str) -> bool:
    """English, judged by script and function words: cheap enough for every caption of a dataset.

    Not English when a letter is of another script, when over 30 % of the letters carry diacritics,
    or when function words of French/Spanish/German/Italian/Portuguese/Dutch outnumber English ones.
    """
    if not text.isascii():
        letters = [c for c in text if c.isalpha()]
        foreign_letters = [c for c in letters if ord(c) > 127]
        if len(foreign_letters) > 0.3 * len(letters):
            return False
        if not all(unicodedata.name(c, "").startswith("LATIN") for c in foreign_letters):
            return False
    tokens = WORD_RE.findall(text.lower())
    if not tokens:
        return False
    foreign = sum(map(_FOREIGN.__contains__, tokens))
    english = sum(map(_ENGLISH.__contains__, tokens))
    return not (foreign and foreign > english)
