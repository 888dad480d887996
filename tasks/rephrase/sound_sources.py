"""Which sound sources and sound events a caption names, and which a rephrasing changed or invented.

The guard against content hallucinations (the paper's A.4: "the purr of a Carerra" became "a
purring cat named Carerra"). Every source word maps to a path in a small taxonomy, family first:
``("animal", "dog")``, ``("person", "woman")``, ``("vehicle", "aircraft", "helicopter")``.
Synonyms share a path (dog, canine, puppy); a hypernym is a prefix of its hyponyms' paths (animal,
insect). A rephrasing may name a source the original names or a more general one ("a canine" for
a dog, "a vehicle" for a car); a source neither there nor implied by an original sound event is
*changed* when the original has an unmatched source of the same family (dog -> cat, man -> woman,
guitar -> piano, insect -> bee) and *invented* otherwise ("... while birds chirp"). Sound events
(laughing, barking, ringing) work the same way, and an event also implies its usual sources and
vice versa ("barking" allows "a dog", "a dog" allows "barking"). "named X" / "called X" and new
proper names are invented beings too.

Why a hand-curated lexicon and not WordNet: WordNet on PyPI ships without its data (``nltk`` and
``wn`` download it at run time, from hosts other than PyPI, and the runtime must download
nothing), and its hypernym tree does not follow how sounds differ ("dog" and "cat" meet at
"carnivore", a "horn" is a wind instrument, "engine" sits under "motor"). A few hundred words
cover what audio captions name (AudioCaps and Clotho); words outside the lexicon are neutral here
and left to the recall/novelty checks. Matching is by ``lexicon.stem`` of each word (plus a few
two-word names), so it is a set lookup per word: cheap enough for every caption of a dataset.
"""

from __future__ import annotations

import re
from functools import lru_cache
from typing import NamedTuple

from tasks.rephrase.lexicon import WORD_RE, stem

Path = tuple[str, ...]

_SOURCES: dict[str, str] = {
    # people: gender and age are what a changed speaker changes
    "person": "person persons people someone somebody anyone human humans individual individuals voice "
              "voices crowd crowds audience spectators adult adults speaker",
    "person/man": "man men guy guys gentleman gentlemen male males father dad husband sir",
    "person/woman": "woman women lady ladies female females mother mom mum wife",
    "person/child": "child children kid kids youngster youngsters toddler toddlers",
    "person/child/boy": "boy boys son",
    "person/child/girl": "girl girls daughter",
    "person/child/baby": "baby babies infant infants newborn",
    # animals
    "animal": "animal animals creature creatures pet pets wildlife livestock",
    "animal/dog": "dog dogs puppy puppies pup pups canine canines hound hounds doggy",
    "animal/cat": "cat cats kitten kittens kitty feline felines",
    "animal/bird": "bird birds songbird songbirds fowl",
    "animal/bird/pigeon": "pigeon pigeons dove doves",
    "animal/bird/crow": "crow crows raven ravens",
    "animal/bird/duck": "duck ducks duckling ducklings",
    "animal/bird/goose": "goose geese",
    "animal/bird/chicken": "chicken chickens hen hens rooster roosters chick chicks cockerel",
    "animal/bird/owl": "owl owls",
    "animal/bird/gull": "gull gulls seagull seagulls",
    "animal/bird/parrot": "parrot parrots",
    "animal/bird/turkey": "turkey turkeys",
    "animal/insect": "insect insects bug bugs",
    "animal/insect/bee": "bee bees wasp wasps hornet hornets",
    "animal/insect/mosquito": "mosquito mosquitoes",
    "animal/insect/cricket": "cricket crickets grasshopper grasshoppers",
    "animal/insect/cicada": "cicada cicadas",
    "animal/frog": "frog frogs toad toads",
    "animal/cow": "cow cows cattle calf calves bull bulls",
    "animal/sheep": "sheep lamb lambs ewe",
    "animal/goat": "goat goats",
    "animal/pig": "pig pigs hog hogs piglet piglets swine",
    "animal/horse": "horse horses pony ponies foal",
    "animal/donkey": "donkey donkeys",
    "animal/lion": "lion lions",
    "animal/tiger": "tiger tigers",
    "animal/wolf": "wolf wolves coyote coyotes",
    "animal/monkey": "monkey monkeys ape apes",
    "animal/elephant": "elephant elephants",
    "animal/rodent": "rat rats mice hamster",
    "animal/snake": "snake snakes",
    # vehicles
    "vehicle": "vehicle vehicles traffic",
    "vehicle/car": "car cars automobile automobiles sedan taxi racecar",
    "vehicle/truck": "truck trucks lorry lorries",
    "vehicle/bus": "bus buses",
    "vehicle/motorcycle": "motorcycle motorcycles motorbike motorbikes moped scooter",
    "vehicle/bicycle": "bicycle bicycles",
    "vehicle/train": "train trains locomotive locomotives subway tram trams streetcar railway railroad",
    "vehicle/aircraft": "aircraft",
    "vehicle/aircraft/plane": "plane planes airplane airplanes aeroplane jet jets airliner",
    "vehicle/aircraft/helicopter": "helicopter helicopters",
    "vehicle/boat": "boat boats ship ships motorboat speedboat yacht ferry canoe kayak sailboat",
    "vehicle/tractor": "tractor tractors",
    "vehicle/ambulance": "ambulance",
    # music: a band and an orchestra are different ensembles, music in general is the family
    "instrument": "instrument instruments music musician musicians",
    "instrument/band": "band bands",
    "instrument/orchestra": "orchestra orchestras symphony",
    "instrument/guitar": "guitar guitars ukulele banjo",
    "instrument/piano": "piano pianos",
    "instrument/organ": "organ",
    "instrument/violin": "violin violins fiddle viola",
    "instrument/cello": "cello cellos",
    "instrument/harp": "harp",
    "instrument/flute": "flute flutes recorder",
    "instrument/clarinet": "clarinet oboe",
    "instrument/saxophone": "saxophone sax",
    "instrument/trumpet": "trumpet trumpets trombone tuba",
    "instrument/drum": "drum drums percussion snare cymbal cymbals tambourine",
    "instrument/xylophone": "xylophone marimba",
    "instrument/harmonica": "harmonica",
    "instrument/accordion": "accordion",
    "instrument/bagpipes": "bagpipe bagpipes",
    "instrument/synthesizer": "synthesizer synth",
    # signals: what warns or calls
    "signal/bell": "bell bells",
    "signal/siren": "siren sirens",
    "signal/alarm": "alarm alarms buzzer",
    "signal/horn": "horn horns",
    "signal/phone": "phone phones telephone telephones cellphone ringtone",
    # machines (engine and motor are any machine's) and hand tools
    "machine": "machine machines machinery engine engines motor motors appliance",
    "machine/drill": "drill drills",
    "machine/chainsaw": "chainsaw",
    "machine/mower": "lawnmower mower",
    "machine/vacuum": "vacuum",
    "machine/blender": "blender",
    "machine/refrigerator": "refrigerator fridge freezer",
    "machine/fan": "fan fans",
    "machine/printer": "printer",
    "machine/generator": "generator compressor",
    "machine/sprayer": "sprayer",
    "tool": "tool tools",
    "tool/hammer": "hammer hammers sledgehammer",
    "tool/saw": "saw saws",
    "tool/sander": "sander grinder",
    "tool/jackhammer": "jackhammer",
    # household things
    "object/paper": "paper papers page pages book books newspaper magazine",
    "object/cards": "card cards deck",
    "object/plastic": "plastic wrapper",
    "object/fabric": "fabric cloth clothes blanket bedsheet towel",
    "object/door": "door doors gate",
    "object/window": "window windows",
    "object/dishes": "dish dishes plate plates cutlery silverware utensil utensils fork forks knife knives "
                     "spoon spoons pot pots pan pans",
    "object/glass": "glass glasses bottle bottles jar jars",
    "object/coins": "coin coins",
    "object/keys": "key keys",
    "object/chair": "chair chairs",
    "object/toilet": "toilet",
    "object/faucet": "faucet sink",
    "object/clock": "clock clocks",
    "object/metronome": "metronome",
    "object/keyboard": "keyboard keyboards computer laptop",
    "object/typewriter": "typewriter",
    "object/kettle": "kettle",
    "object/stroller": "stroller",
    "object/carriage": "carriage cart wagon",
    "food": "food meat bacon egg eggs",
    # water, air, weather, fire, plants
    "water": "water liquid liquids fluid",
    "water/stream": "stream streams river rivers creek brook waterfall",
    "water/sea": "sea ocean waves surf",
    "water/rain": "rain raindrops rainfall drizzle downpour rainstorm",
    "water/hail": "hail",
    "water/drink": "beer coffee tea soda wine milk juice",
    "air/wind": "wind winds breeze gust gusts gale",
    "weather/thunder": "thunder thunderstorm lightning",
    "fire": "fire fires flame flames campfire bonfire fireplace",
    "plant": "leaves leaf leafy foliage tree trees branches grass bushes",
    "blast/gun": "gun guns gunfire gunshot gunshots rifle pistol weapon weapons",
    "blast/fireworks": "firework fireworks",
    "blast/explosion": "explosion explosions bomb",
}
"""Path ("family/class/...") -> the words that name it. Words with a common non-sound sense are left
out ("fly", "tap", "bat", "mouse", "bike", "light")."""

_TWO_WORDS: dict[str, str] = {
    "police car": "vehicle/car", "fire truck": "vehicle/truck", "fire engine": "vehicle/truck",
    "dirt bike": "vehicle/motorcycle", "sewing machine": "machine/sewing",
    "vending machine": "machine/vending",
    "washing machine": "machine/washer", "lawn mower": "machine/mower", "leaf blower": "machine/blower",
    "vacuum cleaner": "machine/vacuum", "smoke alarm": "signal/alarm", "fire alarm": "signal/alarm",
    "alarm clock": "signal/alarm", "gun fire": "blast/gun", "guns fire": "blast/gun",
    "air conditioner": "machine/fan",
    "hair dryer": "machine/fan", "french horn": "instrument/trumpet", "wind chime": "instrument/chimes",
    "wind chimes": "instrument/chimes", "church bell": "signal/bell/church",
    "church bells": "signal/bell/church",
    "bass guitar": "instrument/guitar", "grand piano": "instrument/piano", "ring out": "", "rings out": "",
}
"""Two-word names whose words alone would name something else ("fire", "wind"); "" for idioms that
name nothing ("gunshots ring out")."""

_EVENTS: dict[str, tuple[str, str]] = {
    "sound/speech": ("speak speaks speaking speech talk talks talking chat chats chatting chatter converse "
                     "conversing conversation say says narrate announce announcement whisper whispers murmur "
                     "mumble babble", "person"),
    "sound/laughter": ("laugh laughs laughing laughter giggle giggles chuckle chuckles", ""),
    "sound/cry": ("cry cries crying sob sobs weep weeps", ""),
    "sound/shout": ("shout shouts yell yells scream screams holler hollers shriek exclaim", ""),
    "sound/cheer": ("cheer cheers cheering applause applaud clap claps clapping", ""),
    "sound/boo": ("boo boos booing jeer jeering", ""),
    "sound/sing": ("sing sings singing song songs lullaby", "animal/bird"),
    "sound/whistle": ("whistle whistles whistling", ""),
    "sound/cough": ("cough coughs coughing sneeze sneezes sneezing", ""),
    "sound/snore": ("snore snores snoring", ""),
    "sound/footsteps": ("footstep footsteps walk walks walking stomp stomps", ""),
    "sound/bark": ("bark barks barking woof yap yaps yelp yelps", "animal/dog"),
    "sound/growl": ("growl growls growling", "animal/dog animal/cat animal/wolf animal/lion animal/tiger"),
    "sound/meow": ("meow meows meowing mew", "animal/cat"),
    "sound/purr": ("purr purrs purring", "animal/cat machine vehicle"),
    "sound/hiss-cat": ("hiss hisses hissing", "animal/cat animal/snake"),
    "sound/chirp": ("chirp chirps chirping tweet tweets tweeting warble", "animal/bird animal/insect"),
    "sound/caw": ("caw caws cawing", "animal/bird/crow"),
    "sound/coo": ("coo coos cooing", "animal/bird/pigeon"),
    "sound/quack": ("quack quacks quacking", "animal/bird/duck"),
    "sound/cluck": ("cluck clucks clucking", "animal/bird/chicken"),
    "sound/squawk": ("squawk squawks squawking", "animal/bird"),
    "sound/hoot": ("hoot hoots hooting", "animal/bird/owl"),
    "sound/oink": ("oink oinks oinking", "animal/pig"),
    "sound/moo": ("moo moos mooing", "animal/cow"),
    "sound/bleat": ("bleat bleats bleating baa", "animal/sheep animal/goat"),
    "sound/neigh": ("neigh neighs neighing whinny whinnies gallop galloping", "animal/horse"),
    "sound/croak": ("croak croaks croaking ribbit", "animal/frog"),
    "sound/music": ("melody melodies tune tunes jingle", "instrument signal"),
    "sound/ring": ("ring rings ringing chime chimes chiming ding", "signal object/clock"),
    "sound/tick": ("tick ticks ticking ticktock", "object/clock object/metronome"),
    "sound/knock": ("knock knocks knocking", "object/door"),
    "sound/typing": ("type types typing", "object/keyboard object/typewriter"),
    "sound/sizzle": ("sizzle sizzles sizzling fry fries frying", "food"),
    "sound/water": ("splash splashes splashing drip drips dripping pour pours pouring trickle trickles "
                    "trickling gurgle gurgles gurgling flush flushes flushing",
                    "water object/toilet object/faucet"),
}
"""Event path -> (the words that name it, the source paths it implies and that imply it)."""

_FAMILIES_WITHOUT_PEOPLE = frozenset({"animal", "water", "air", "weather", "fire", "plant"})
"""A bare "someone" is an agent implied by most sounds (typing, a door, a guitar) but not by these."""

_NAMED = re.compile(r"\b(?:named|called|nicknamed|dubbed)\s+([A-Z][\w'-]*)")
_CAPITALISED = re.compile(r"(?<=[\w,] )[A-Z][a-z]+\b")
"""A capitalised word inside a sentence (after a word or a comma): a name."""


def _split(path: str) -> Path:
    return tuple(path.split("/"))


_LEXICON: dict[str, Path] = {}
_IMPLIES: dict[Path, tuple[Path, ...]] = {}
for _path, _words in _SOURCES.items():
    _LEXICON.update((stem(w), _split(_path)) for w in _words.split())
for _path, (_words, _implied) in _EVENTS.items():
    _LEXICON.update((stem(w), _split(_path)) for w in _words.split())
    _IMPLIES[_split(_path)] = tuple(_split(p) for p in _implied.split())
_BIGRAMS: dict[str, Path] = {
    " ".join(stem(w) for w in k.split()): _split(p) if p else () for k, p in _TWO_WORDS.items()
}
_FIRST_OF_BIGRAM = frozenset(k.split()[0] for k in _BIGRAMS)


class SourceChanges(NamedTuple):
    """What a rephrasing did to the original's sources: "dog->cat" pairs, and invented names."""

    changed: list[str]
    invented: list[str]


def canonical(word_stem: str) -> str:
    """One token per lexicon class, so that synonyms (dog, canine) count as the same content word."""
    path = _LEXICON.get(word_stem)
    return "/".join(path) if path else word_stem


def implied_sources(event: Path) -> tuple[Path, ...]:
    """The source paths a sound event implies (barking: a dog); () for a source or an event without."""
    return _IMPLIES.get(event, ())


@lru_cache(maxsize=1 << 16)
def mentions(text: str) -> frozenset[Path]:
    """Paths of the sources and sound events a caption names. Cached: every attempt at a caption
    asks for its original's mentions."""
    stems = [stem(w) for w in WORD_RE.findall(text.lower())]
    found: set[Path] = set()
    i = 0
    while i < len(stems):
        s = stems[i]
        pair = _BIGRAMS.get(f"{s} {stems[i + 1]}") if s in _FIRST_OF_BIGRAM and i + 1 < len(stems) else None
        if pair is not None:
            found.update((pair,) if pair else ())
            i += 2
            continue
        if p := _LEXICON.get(s):
            found.add(p)
        i += 1
    return frozenset(found)


def _is_prefix(general: Path, specific: Path) -> bool:
    return specific[: len(general)] == general


def _unattributed(event: Path, orig: frozenset[Path]) -> tuple[Path, ...]:
    """The sources an original's event implies, unless the original names its source already ("sheep
    bleat" is not a goat's bleat; "bleating" alone may be either) or the event's sources are of several
    families (a purr may be a cat's or an engine's: A.4's "purr of a Carerra" is no cat)."""
    implied = _IMPLIES.get(event, ())
    named = any(_is_prefix(q, o) or _is_prefix(o, q) for q in implied for o in orig if o[0] != "sound")
    return () if named or len({q[0] for q in implied}) > 1 else implied


def _supported(p: Path, orig: frozenset[Path]) -> bool:
    """The original names p or something more specific, or names an event or source that implies p."""
    if any(_is_prefix(p, o) for o in orig):
        return True
    if p[0] == "sound":
        return any(_is_prefix(q, o) for q in _IMPLIES.get(p, ()) for o in orig)
    if any(_is_prefix(p, q) for o in orig for q in _unattributed(o, orig)):
        return True
    families = {o[0] for o in orig if o[0] != "sound"}
    return p == ("person",) and not (families and families <= _FAMILIES_WITHOUT_PEOPLE)


def _names(text: str, original: str) -> list[str]:
    """"named X" personifications and capitalised names that the original does not have."""
    named = _NAMED.findall(text)
    out = [f"named {n}" for n in named] if len(named) > len(_NAMED.findall(original)) else []
    orig_words = set(WORD_RE.findall(original.lower()))
    return out + [w for w in _CAPITALISED.findall(text) if w.lower() not in orig_words and w not in named]


def source_changes(text: str, original: str) -> SourceChanges:
    """Sources and events of the rephrasing that the original neither names nor implies: changed when
    the original has an unmatched one of the same family, invented otherwise."""
    orig, out = mentions(original), mentions(text)
    unsupported = sorted(p for p in out if not _supported(p, orig))
    changed: list[str] = []
    invented: list[str] = []
    for p in unsupported:
        # the original's sources of that family that the rephrasing names by no equal or wider word
        lost = sorted(o for o in orig if o[0] == p[0] and not any(_is_prefix(q, o) for q in out))
        if lost:
            changed.append(f"{'/'.join(lost[0])}->{'/'.join(p)}")
        else:
            invented.append("/".join(p))
    return SourceChanges(changed, invented + _names(text, original))
