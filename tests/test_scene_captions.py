"""Scene captions: motion words true of the points, every sound bound to its own words by the
template, binding validation (a swapped binding fails), the swapped-binding hard negative, scene
requests through the one prompt/cache/stage path, and ELSA requests exactly as before scenes."""

from __future__ import annotations

import hashlib
import itertools
import re

import pytest
from pydantic import ValidationError

from schemas.captions import (
    MOTION_GROUPS,
    CaptionSettings,
    DescriptorConfig,
    Descriptors,
    EngineOptions,
    OutputFlaw,
    RephraseRequest,
    RephraseSettings,
    SourceWords,
    ValidationConfig,
)
from schemas.scenes import ScenePoint, SceneSource
from tasks.prompting import build_prompt
from tasks.rephrase.base import Generated, RephraseBackend, derive_seed, make_backend
from tasks.rephrase.cache import cache_key
from tasks.rephrase.lexicon import MOTION_PATTERNS, motion_counts, spatial_counts
from tasks.rephrase.phrasing import MOTION_PHRASES, PHRASES, as_clause, template_caption
from tasks.rephrase.postprocess import split_sentences
from tasks.rephrase.runner import run_rephrase
from tasks.rephrase.table_io import requests_from_table, requests_table
from tasks.rephrase.validation import hard_negative, validate_scene
from tasks.scene_captions import motion_words, source_words

CFG = ValidationConfig()
SETTINGS = RephraseSettings.of(CaptionSettings(), EngineOptions())
ROOM = Descriptors(size="large", reverb="highly reverberant")
SOURCES = [
    SourceWords(caption="A dog barks", descriptors=Descriptors(distance="near", direction="left"),
                motion=["moving from left to right", "approaching"]),
    SourceWords(caption="A car horn honks twice", descriptors=Descriptors(distance="far", direction="back")),
    SourceWords(caption="Rain falls on a tin roof", descriptors=Descriptors(elevation="up"),
                motion=["rising"]),
    SourceWords(caption="A man speaks. A woman laughs", descriptors=Descriptors(direction="right"),
                motion=["passing behind", "receding"]),
    SourceWords(caption="Birds chirp in the trees", descriptors=Descriptors(distance="near", elevation="down",
                                                                            direction="front")),
    SourceWords(caption="An engine hums", motion=["moving from right to left", "descending"]),
]


def points(*track: tuple[float, float, float]) -> list[ScenePoint]:
    """(azimuth, elevation, distance) per point, 0.1 s apart."""
    return [ScenePoint(placement_id=f"p{i}", time_s=0.1 * i, azimuth_deg=az, elevation_deg=el, distance_m=d)
            for i, (az, el, d) in enumerate(track)]


def sweep(az0: float, az1: float, n: int = 60, el: tuple[float, float] = (0.0, 0.0),
          dist: tuple[float, float] = (2.0, 2.0)) -> list[ScenePoint]:
    """A path sampled at n points, linear in unwrapped azimuth, elevation and distance."""
    track = []
    for i in range(n):
        t = i / (n - 1)
        az = az0 + t * (az1 - az0)
        az = -((-az + 180.0) % 360.0 - 180.0)  # wrap to (-180, 180]
        track.append((az, el[0] + t * (el[1] - el[0]), dist[0] + t * (dist[1] - dist[0])))
    return points(*track)


# ----------------------------------------------------------------------------- motion words

@pytest.mark.parametrize(("track", "words"), [
    (points((30.0, 0.0, 2.0)), []),
    (sweep(60.0, -60.0), ["moving from left to right"]),
    (sweep(-70.0, 50.0), ["moving from right to left"]),
    (sweep(120.0, 240.0), ["moving from left to right", "passing behind"]),  # through the back
    (sweep(-100.0, -260.0), ["moving from right to left", "passing behind"]),
    (sweep(10.0, 10.0, dist=(3.0, 1.0)), ["approaching"]),
    (sweep(10.0, 10.0, dist=(1.0, 3.5)), ["receding"]),
    (sweep(90.0, 90.0, el=(-5.0, 25.0)), ["rising"]),
    (sweep(-90.0, -90.0, el=(30.0, 0.0)), ["descending"]),
    (sweep(60.0, 110.0), []),  # an arc within the left side crosses nothing
    (sweep(10.0, -10.0), []),  # across the front, but never well inside either side
    (sweep(0.0, 0.0, dist=(2.0, 1.7)), []),  # 0.3 m closer: below the range threshold
    (sweep(0.0, 0.0, dist=(0.6, 1.0)), []),  # x1.67 but only 0.4 m
    (sweep(160.0, 170.0), []),  # behind, but crossing nothing
    (sweep(80.0, -100.0, el=(20.0, -5.0), dist=(3.0, 1.2)),
     ["moving from left to right", "approaching", "descending"]),
])
def test_motion_words_are_true_of_the_points(track, words):
    assert motion_words(track) == words


def test_motion_words_follow_the_descriptor_config():
    through_back = sweep(150.0, 200.0, n=5)  # 150, 162.5, 175, -172.5, -160: crosses ±180 ...
    assert "passing behind" in motion_words(through_back)
    # ... but never reaches the back band of a config whose back starts beyond 175°
    assert "passing behind" not in motion_words(through_back, DescriptorConfig(back_above_deg=179.0))


def test_source_words_describe_where_a_source_starts_and_how_it_moves():
    track = sweep(80.0, -100.0, dist=(0.8, 3.0))
    moving = SceneSource(index=1, dataset="demo", clip_id="c1", audio_uri="x", captions=("A car passes",),
                         onset_s=0.0, offset_s=track[-1].time_s, level_db=0.0, motion="linear", speed=1.0,
                         start_m=(0, 0, 0), end_m=(1, 1, 0), points=track)
    words = source_words(moving)
    assert words.caption == "A car passes"
    assert words.descriptors == Descriptors(distance="near", direction="left")  # its start: 80°, 0.8 m
    assert words.motion == ["moving from left to right", "receding"]
    static = moving.model_copy(update={"points": track[:1], "motion": "static"})
    assert source_words(static, "A car idles").motion == []
    assert source_words(static, "A car idles").caption == "A car idles"


# ----------------------------------------------------------------------------- schema

def test_scene_records_keep_room_words_and_source_words_apart():
    with pytest.raises(ValidationError, match="room words"):
        SourceWords(caption="A dog barks", descriptors=Descriptors(size="large"))
    with pytest.raises(ValidationError, match="one per group"):
        SourceWords(caption="A dog barks", motion=["approaching", "receding"])
    with pytest.raises(ValidationError, match="MOTION_GROUPS order"):
        SourceWords(caption="A dog barks", motion=["rising", "approaching"])
    with pytest.raises(ValidationError, match="source 0's caption"):
        RephraseRequest(sample_id="s", caption="A cat meows", scene=SOURCES[:2])
    with pytest.raises(ValidationError, match="belong to a source"):
        RephraseRequest(sample_id="s", caption="A dog barks", descriptors=Descriptors(direction="left"),
                        scene=SOURCES[:2])


# ----------------------------------------------------------------------------- phrases and prompt

@pytest.mark.parametrize("word", list(MOTION_PHRASES))
def test_every_motion_phrase_states_its_word_and_no_place(word):
    for phrase in MOTION_PHRASES[word]:
        counts, rest = motion_counts(f"A dog barks, {phrase}.")
        assert counts == {word: 1}, phrase
        assert all(not c for c in spatial_counts(rest).values()), phrase
    assert set(MOTION_PHRASES) == set(MOTION_PATTERNS) == {w for g in MOTION_GROUPS.values() for w in g}


def test_place_phrases_are_not_motion():
    for word, phrases in PHRASES.items():
        for phrase in phrases:
            assert motion_counts(f"A dog barks, {phrase}, while a car honks.")[0] == {}, (word, phrase)
    assert motion_counts("A car is not approaching")[0] == {}


def test_the_scene_prompt_lists_every_sound_with_its_own_words():
    prompt = build_prompt("A dog barks", ROOM, SOURCES[:3])
    assert prompt.startswith(
        "The sounds of a large highly reverberant room: A dog barks is coming from the near left, moving "
        "from left to right and approaching; A car horn honks twice is coming from the far back; Rain "
        "falls on a tin roof is coming from the up, rising. ")
    assert "keeping each sound with its own location and motion" in prompt
    assert build_prompt("An engine hums", Descriptors(), SOURCES[5:]).startswith(
        "The sounds of a room: An engine hums, moving from right to left and descending. Rephrase")


# ----------------------------------------------------------------------------- template and validation

def _scenes() -> list[tuple[list[SourceWords], Descriptors]]:
    """1..4 sources (static, moving, with and without place words), with and without room words."""
    out = []
    for n in range(1, 5):
        for combo in itertools.islice(itertools.permutations(SOURCES, n), 0, None, 7):
            out += [(list(combo), ROOM), (list(combo), Descriptors())]
    return out


def _region(text: str, scene: list[SourceWords], k: int) -> str:
    """From the end of the sound before k to the start of the sound after k (template order)."""
    low = text.lower()
    starts, pos = [], 0
    for s in scene:
        pos = low.index(as_clause(s.caption).lower(), pos)
        starts.append(pos)
        pos += len(as_clause(s.caption))
    lo = starts[k - 1] + len(as_clause(scene[k - 1].caption)) if k else 0
    hi = starts[k + 1] if k + 1 < len(scene) else len(text)
    return low[lo:hi]


def test_template_scene_captions_bind_each_sound_to_its_own_words_and_pass():
    scenes = _scenes()
    assert {len(s) for s, _ in scenes} == {1, 2, 3, 4}
    for i, (scene, room) in enumerate(scenes):
        for seed in (i, i + 1000):
            text = template_caption(scene[0].caption, room, seed, scene)
            flags = validate_scene(text, scene, room, CFG)
            assert flags.passed, (text, flags)
            assert split_sentences(text) == [text]
            for k, s in enumerate(scene):
                region = _region(text, scene, k)
                for w in (*s.descriptors.given().values(), *s.motion):
                    assert any(p.lower() in region for p in {**PHRASES, **MOTION_PHRASES}[w]), (text, k, w)


def test_template_scene_captions_vary_with_the_seed():
    texts = {template_caption("A dog barks", ROOM, seed, SOURCES[:3]) for seed in range(30)}
    assert len(texts) >= 10


def test_a_faithful_rephrasing_passes_and_swapped_bindings_fail():
    scene = SOURCES[:2]
    room = Descriptors(size="large")
    good = ("In a large hall, a canine is barking close by on the left as it sweeps from left to right and "
            "comes closer, while far behind a car horn honks twice.")
    assert validate_scene(good, scene, room, CFG).passed
    goes_on = ("In a large hall, a dog barks nearby on the left while moving to the right and approaching, a "
               "car horn honks twice far behind.")  # "while moving" is still the dog
    assert validate_scene(goes_on, scene, room, CFG).passed
    swapped = ("In a large hall, a dog barks far behind, while a car horn honks twice close by on the left, "
               "moving from left to right and approaching.")
    flags = validate_scene(swapped, scene, room, CFG)
    assert not flags.passed and OutputFlaw.SWAPPED_BINDING in flags.flaws
    assert "source 0: back (source 1's)" in flags.swapped_bindings
    assert "source 1: approaching (source 0's)" in flags.swapped_bindings
    # only the motion moved to the other sound: still a swapped binding
    motion_only = ("In a large hall, a dog barks close by on the left, while a car horn honks twice far "
                   "behind, moving from left to right and approaching.")
    flags = validate_scene(motion_only, scene, room, CFG)
    assert OutputFlaw.SWAPPED_BINDING in flags.flaws and OutputFlaw.MISSING_DESCRIPTOR in flags.flaws
    # a wrong word that no source has is a contradiction, not a swap
    wrong = good.replace("on the left", "on the right")
    flags = validate_scene(wrong, scene, room, CFG)
    assert OutputFlaw.CONTRADICTION in flags.flaws and OutputFlaw.SWAPPED_BINDING not in flags.flaws


def test_a_dropped_sound_fails_recall():
    text = "In a large room, a dog barks close by on the left, moving from left to right and approaching."
    flags = validate_scene(text, SOURCES[:2], Descriptors(size="large"), CFG)
    assert OutputFlaw.LOW_RECALL in flags.flaws and "source 1: back" in flags.missing


def test_hard_negatives_swap_two_sounds_and_fail_validation():
    for i, (scene, room) in enumerate(_scenes()):
        text = template_caption(scene[0].caption, room, i, scene)
        negative = hard_negative(text, scene)
        if len(scene) == 1:
            assert negative is None
            continue
        assert negative is not None and negative != text
        assert sorted(re.findall(r"\w+", negative.lower())) == sorted(re.findall(r"\w+", text.lower()))
        flags = validate_scene(negative, scene, room, CFG)
        assert OutputFlaw.SWAPPED_BINDING in flags.flaws, (negative, flags)
        assert not set(flags.flaws) & {OutputFlaw.LOW_RECALL, OutputFlaw.NOVEL_CONTENT}
    same_words = [SOURCES[0], SOURCES[0].model_copy(update={"caption": "A cat meows"})]
    assert hard_negative(template_caption("A dog barks", ROOM, 0, same_words), same_words) is None


# ----------------------------------------------------------------------------- backends, cache, stage

def _request(n: int, sample_id: str = "s", seed: int = 0) -> RephraseRequest:
    return RephraseRequest(sample_id=sample_id, caption=SOURCES[0].caption, descriptors=ROOM, seed=seed,
                           scene=SOURCES[:n])


def test_the_template_backend_phrases_scene_requests_with_hard_negatives():
    backend = make_backend(SETTINGS)
    requests = [_request(n, f"s{n}", n) for n in range(1, 5)]
    for n, res in enumerate(run_rephrase(requests, backend), start=1):
        assert res.status == "ok" and res.validation.passed and res.validation.swapped_bindings == []
        assert res.prompt == build_prompt(SOURCES[0].caption, ROOM, SOURCES[:n])
        assert (res.hard_negative is None) == (n == 1)
        if res.hard_negative:
            flags = validate_scene(res.hard_negative, SOURCES[:n], ROOM, CFG)
            assert OutputFlaw.SWAPPED_BINDING in flags.flaws


class _Scripted(RephraseBackend):
    """Answers every prompt with the next scripted text, and records the jobs."""

    name = "scripted"

    def __init__(self, texts: list[str]) -> None:
        super().__init__(SETTINGS.model_copy(update={"backend": "openai", "model": "m"}))
        self.texts, self.jobs = iter(texts), []

    def _generate(self, jobs):
        self.jobs += jobs
        return [Generated(next(self.texts)) for _ in jobs]


def test_model_backends_get_the_scene_prompt_and_fall_back_to_the_scene_template():
    req = _request(2)
    swapped = ("A dog barks far behind, while a car horn honks twice close by on the left, moving from left "
               "to right and approaching, in a large echoing room.")
    backend = _Scripted([build_prompt(req.caption, ROOM, req.scene), swapped, swapped])
    [res] = backend.rephrase([req])
    assert [j.prompt for j in backend.jobs] == [build_prompt(req.caption, ROOM, req.scene)] * 3
    assert [j.scene for j in backend.jobs] == [tuple(req.scene)] * 3
    assert res.attempt_flaws[0] == [OutputFlaw.ECHO]
    assert OutputFlaw.SWAPPED_BINDING in res.attempt_flaws[1]
    assert res.status == "fallback" and res.validation.passed and res.hard_negative
    # the scene's other sources decide the seed: same source 0, other partner, other seed
    other = SOURCES[0:1] + SOURCES[2:3]
    assert (derive_seed("A dog barks", ROOM, "m", 0, 0, req.scene)
            != derive_seed("A dog barks", ROOM, "m", 0, 0, other))


def test_scene_requests_round_trip_through_the_stage_table_and_key_apart():
    elsa = RephraseRequest(sample_id="e", caption="A dog barks", descriptors=ROOM)
    requests = [elsa, _request(3)]
    keys = [cache_key(r, "template/v1", SETTINGS) for r in requests]
    assert requests_from_table(requests_table(requests, keys)) == requests
    assert len(set(keys)) == 2
    assert cache_key(_request(3, seed=0), "template/v1", SETTINGS) != cache_key(
        RephraseRequest(sample_id="s", caption=SOURCES[0].caption, descriptors=ROOM,
                        scene=[SOURCES[0], SOURCES[2], SOURCES[1]]), "template/v1", SETTINGS)


# ----------------------------------------------------------------------------- ELSA unchanged

def test_elsa_requests_key_prompt_and_caption_exactly_as_before_scenes():
    """Values computed with the code of commit 1932856, before scene captions existed."""
    reqs = [
        RephraseRequest(sample_id="s1", caption="A dog barks while birds chirp.", seed=7,
                        descriptors=Descriptors(distance="near", direction="left", size="large",
                                                reverb="highly reverberant")),
        RephraseRequest(sample_id="s2", caption=b"Rain falls on a tin roof",
                        descriptors=Descriptors(elevation="up", reverb="acoustically dampened")),
    ]
    backend = make_backend(SETTINGS)
    assert [cache_key(r, backend.model, SETTINGS) for r in reqs] == [
        "701b7b6613a310a7e428584aa55d4c34805ea471b453c55693f6c002ffa4bced",
        "ed8cb80a604d183a085684f407075e993f5308a7fed7dcf191ac5440d962a289",
    ]
    assert reqs[0].model_dump_json() == (
        '{"sample_id":"s1","caption":"A dog barks while birds chirp.","descriptors":{"distance":"near",'
        '"elevation":null,"direction":"left","size":"large","reverb":"highly reverberant"},"seed":7}')
    results = backend.rephrase(reqs)
    assert [r.prompt for r in results] == [
        "The sound: A dog barks while birds chirp is coming from the near left of a large highly reverberant "
        "room. Rephrase as a short English sentence describing the sound and all the details of its source.",
        "The sound: Rain falls on a tin roof is coming from the up of an acoustically dampened room. "
        "Rephrase as a short English sentence describing the sound and all the details of its source.",
    ]
    assert [r.caption for r in results] == [
        "Up close and from the left, in a big highly reverberant room, a dog barks while birds chirp.",
        "In an acoustically dead room, rain falls on a tin roof, above.",
    ]
    assert [r.seed for r in results] == [1134095866, 162580451]
    assert [hashlib.sha256(r.model_dump_json().encode()).hexdigest() for r in results] == [
        "f654feefd517accb2014000dfa35b10dba2ac01fd93d6c04294d22a21564c008",
        "5f23e5aca111edb2613d52c70115c5e7005456d890a30767cb00b5d97fc892a9",
    ]
    assert template_caption("A man speaks", Descriptors(direction="back", distance="far", elevation="down",
                                                        size="small"), 12345) == \
        "A man speaks, from afar, from below and from behind, in a compact room."
