"""Scene labels: frame-wise trajectories at 100 ms frame centres, the DCASE/STARSS23 csv (written,
parsed with its rules, agreeing with the json), stable class indices with a catch-all."""

from __future__ import annotations

import numpy as np
import pytest

from schemas.rooms import SURFACES, Placement, RoomSpec, Surface
from schemas.scenes import LABEL_FRAME_S, FrameLabel, MotionConfig, SceneConfig, SceneSourceLabels
from schemas.sources import SourceClip
from tasks.dcase_csv import CLASSES, OTHER, DcaseCsvError, DcaseRow, dcase_csv, dcase_rows, read_dcase_csv
from tasks.errors import InvalidSceneError, SpatialAudioCapsError
from tasks.rephrase import sound_sources
from tasks.rir_engine import relative_direction
from tasks.scene_geometry import directions_at, draw_scene
from tasks.scene_labels import class_index, frame_labels, source_labels

CAPTIONS = (("A dog barks twice",), ("A car drives past on a wet road",), ("Rain falls steadily",))


def _scene(seed: int = 0):
    surface = Surface(material="test", absorption=[0.2] * 8, scattering=[0.1] * 8)
    room = RoomSpec(room_id="r0", dims_m=(10.0, 8.0, 3.5), surfaces=dict.fromkeys(SURFACES, surface),
                    target_t30_s=0.5)
    receiver, source = (5.0, 4.0, 1.5), (6.2, 4.9, 1.7)
    az, el, dist = relative_direction(receiver, -20.0, np.asarray(source))
    base = Placement(
        placement_id="r0-test-1", room_id="r0", split="test", receiver_m=receiver, receiver_yaw_deg=-20.0,
        source_m=source, azimuth_deg=float(np.degrees(az[0])), elevation_deg=float(np.degrees(el[0])),
        distance_m=float(dist[0]), room_set_hash="abc",
    )
    clips = [SourceClip(dataset="demo", clip_id=f"c{i}", captions=c, audio_uri=f"demo://0/{i}")
             for i, c in enumerate(CAPTIONS)]
    cfg = SceneConfig(sources={3: 1.0}, distance_m=(0.6, 2.5),
                      motion=MotionConfig(moving_share=0.7, linear_speed_mps=(0.2, 0.5)))
    return draw_scene(base, room, clips, cfg, seed)[0]


def _activity(scene) -> list[np.ndarray]:
    """Frames whose centre lies in the source's [onset, offset)."""
    centres = (np.arange(round(scene.duration_s / LABEL_FRAME_S)) + 0.5) * LABEL_FRAME_S
    return [(centres >= s.onset_s) & (centres < s.offset_s) for s in scene.sources]


def _labels(scene):
    return source_labels(scene, _activity(scene), [0.0, -3.5, 2.25], [[], ["approaching"], []])


def test_frame_labels_are_the_path_at_active_frame_centres():
    scene = _scene()
    for s, active in zip(scene.sources, _activity(scene), strict=True):
        labels = frame_labels(scene, s, active)
        assert [f.frame for f in labels] == list(np.flatnonzero(active))
        az, el, dist = directions_at(scene, s, (np.flatnonzero(active) + 0.5) * LABEL_FRAME_S)
        np.testing.assert_allclose([f.azimuth_deg for f in labels], az)
        np.testing.assert_allclose([f.elevation_deg for f in labels], el)
        np.testing.assert_allclose([f.distance_m for f in labels], dist)
    assert frame_labels(scene, scene.sources[0], np.zeros(100, bool)) == []
    assert len(frame_labels(scene, scene.sources[0], _activity(scene)[0])) == 100  # 10 s of 100 ms frames
    with pytest.raises(InvalidSceneError, match="one flag per frame"):
        frame_labels(scene, scene.sources[0], np.ones((2, 100), bool))


def test_source_labels_carry_each_sources_identity_timing_and_gain():
    scene = _scene()
    labels = _labels(scene)
    assert [s.index for s in labels] == [0, 1, 2]
    assert [CLASSES[s.class_index] for s in labels] == ["animal", "vehicle", "water"]
    assert [s.gain_db for s in labels] == [0.0, -3.5, 2.25]
    assert labels[1].motion_words == ["approaching"]
    for lab, src in zip(labels, scene.sources, strict=True):
        assert (lab.clip_id, tuple(lab.original_text), lab.onset_s, lab.offset_s, lab.motion, lab.speed,
                lab.level_db) == (src.clip_id, src.captions, src.onset_s, src.offset_s, src.motion, src.speed,
                                  src.level_db)
    with pytest.raises(InvalidSceneError, match="3 activities"):
        source_labels(scene, _activity(scene)[:2], [0.0, 0.0, 0.0], [[], [], []])


@pytest.mark.parametrize("seed", range(4))
def test_the_csv_round_trips_and_agrees_with_the_json(seed):
    scene = _scene(seed)
    labels = _labels(scene)
    data = dcase_csv(labels)
    assert data.endswith(b"\n") and data[:1].isdigit()  # no header
    rows = read_dcase_csv(data)
    assert rows == dcase_rows(labels)
    assert rows == sorted(rows, key=lambda r: (r.frame, r.track))
    by_key = {(s.index, f.frame): (s, f) for s in labels for f in s.frames}
    assert len(rows) == len(by_key)
    for row in rows:
        s, f = by_key[(row.track, row.frame)]
        assert row.class_index == s.class_index
        assert abs((row.azimuth_deg - f.azimuth_deg + 180.0) % 360.0 - 180.0) <= 0.5 + 1e-9
        assert abs(row.elevation_deg - f.elevation_deg) <= 0.5 + 1e-9
        assert abs(row.distance_cm - 100.0 * f.distance_m) <= 0.5 + 1e-9
        # 100 ms frames: the row's frame centre lies in the source's active interval
        assert s.onset_s <= (row.frame + 0.5) * LABEL_FRAME_S < s.offset_s


def _one(frames: list[FrameLabel], index: int = 0) -> SceneSourceLabels:
    return SceneSourceLabels(
        index=index, class_index=1, dataset="demo", clip_id="c", original_text=["a dog barks"], onset_s=0.0,
        offset_s=1.0, motion="static", speed=None, gain_db=0.0, level_db=0.0, frames=frames,
    )


def test_csv_integers_round_half_up_with_azimuth_in_minus_180_to_180():
    frames = [
        FrameLabel(frame=0, azimuth_deg=179.6, elevation_deg=89.5, distance_m=0.125),
        FrameLabel(frame=1, azimuth_deg=-179.6, elevation_deg=-0.5, distance_m=1.0),
        FrameLabel(frame=2, azimuth_deg=179.4, elevation_deg=0.5, distance_m=3.994),
        FrameLabel(frame=3, azimuth_deg=180.0, elevation_deg=-90.0, distance_m=2.0),
    ]
    late = _one([FrameLabel(frame=0, azimuth_deg=-30.2, elevation_deg=10.0, distance_m=2.0)], index=1)
    data = dcase_csv([late, _one(frames)])
    assert data.decode().splitlines() == [
        "0,1,0,-180,90,13", "0,1,1,-30,10,200", "1,1,0,-180,0,100", "2,1,0,179,1,399", "3,1,0,-180,-90,200",
    ]
    assert read_dcase_csv(data)[1] == DcaseRow(0, 1, 1, -30, 10, 200)
    assert read_dcase_csv(b"") == []


@pytest.mark.parametrize(
    ("data", "reason"),
    [
        (b"1,0,0,10,5\n", "5 columns"),
        (b"1,0,0,10,5,100,7\n", "7 columns"),
        (b"frame,class,track,azimuth,elevation,distance\n", "frame, class_index, track"),  # a header
        (b"1,0,0,10.5,5,100\n", "azimuth_deg not an integer"),
        (b"1,0,0, 10,5,100\n", "azimuth_deg not an integer"),
        (b"1,0,0,10,5,\n", "distance_cm not an integer"),
        (b"1,0,0,180,0,100\n", "azimuth outside"),
        (b"1,0,0,-181,0,100\n", "azimuth outside"),
        (b"1,0,0,0,91,100\n", "elevation outside"),
        (b"1,16,0,0,0,100\n", "class outside"),
        (b"-1,0,0,0,0,100\n", "frame < 0"),
        (b"1,0,-2,0,0,100\n", "track < 0"),
        (b"1,0,0,0,0,-5\n", "distance < 0"),
        (b"2,0,0,0,0,100\n1,0,0,0,0,100\n", "row 2: frame before"),
        (b"1,0,0,0,0,100\n1,0,0,5,0,100\n", "row 2: .*repeated"),
        (b"1,0,0,0,0,100\n\n", "row 2: 1 columns"),
        ("1,0,0,0,0,100\u00a0\n".encode(), "not ASCII"),
    ],
)
def test_bad_csv_rows_raise_the_typed_error(data, reason):
    with pytest.raises(DcaseCsvError, match=reason) as info:
        read_dcase_csv(data)
    assert isinstance(info.value, SpatialAudioCapsError)


def test_class_indices_are_stable_with_a_catch_all():
    # the index of a class never changes between dataset versions: the list is append-only
    assert CLASSES[:16] == (
        "person", "animal", "vehicle", "instrument", "signal", "machine", "tool", "object", "food",
        "water", "air", "weather", "fire", "plant", "blast", "other",
    )
    # every family of the lexicon has its class
    families = {p.split("/")[0] for p in sound_sources._SOURCES}
    assert families <= set(CLASSES)
    cases = {
        ("A dog barks",): "animal",
        ("Barking in the distance",): "animal",  # an event implies its source
        ("Someone types on a keyboard",): "object",  # a bare person is the agent
        ("People are talking",): "person",
        ("A man speaks while a dog barks", "A man talks"): "person",
        ("A car passes", "A truck drives by", "A dog barks"): "vehicle",
        ("Rain falls on a roof",): "water",
        ("A siren wails",): "signal",
    }
    for captions, family in cases.items():
        assert CLASSES[class_index(captions)] == family, captions
        assert class_index(tuple(reversed(captions))) == class_index(captions)
    assert class_index(("Xyzzy plugh",)) == OTHER == len(CLASSES) - 1
    assert class_index(()) == OTHER
    assert class_index(("Laughter and applause",)) == OTHER
