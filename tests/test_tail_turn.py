"""audio.tail_turn: a sample's late field turned by its own rotation, everything before it and W kept."""

from __future__ import annotations

import io

import numpy as np
import pytest
import soundfile as sf
from scipy.spatial.transform import Rotation

from room_specs import DEFAULT_CONFIG
from schemas.audio import AudioPrepConfig, TailTurn
from schemas.build import BuildConfig
from schemas.rooms import RirSettings
from tasks.ambisonics import angular_distance_deg, real_sh_sn3d, sh_rotation, unit_vector, vector_to_angles
from tasks.audio_prep import convolve
from tasks.plan import PlanConfig, build_plan
from tasks.render import render_items
from tasks.rir_bank import render_chunk
from tasks.room_sampling import load_config, sample_room_set
from tasks.sources import read_source
from tasks.tail_turn import SplitSpectrum, draw_turn, tail_window

FS = 48000


def _sh(order: int, v: np.ndarray) -> np.ndarray:
    return real_sh_sn3d(order, np.arctan2(v[1], v[0]), np.arcsin(np.clip(v[2], -1, 1)))


@pytest.mark.parametrize("order", [1, 2, 3])
def test_sh_rotation_turns_every_plane_wave_and_composes(order):
    r1, r2 = Rotation.random(2, random_state=order).as_matrix()
    rng = np.random.default_rng(order)
    v = rng.standard_normal((3, 40))
    v /= np.linalg.norm(v, axis=0)
    d1 = sh_rotation(order, r1)
    assert np.abs(d1 @ _sh(order, v) - _sh(order, r1 @ v)).max() < 1e-9
    assert np.abs(sh_rotation(order, r1 @ r2) - d1 @ sh_rotation(order, r2)).max() < 1e-9
    assert d1[0, 0] == 1.0 and not d1[0, 1:].any() and not d1[1:, 0].any()  # W alone, untouched
    # a rotation mixes only within a degree
    for n in range(order + 1):
        rows = slice(n * n, (n + 1) ** 2)
        outside = np.delete(d1[rows], np.s_[n * n:(n + 1) ** 2], axis=1)
        assert not outside.any()


def test_sh_rotation_refuses_a_mirror_or_a_non_rotation():
    with pytest.raises(ValueError, match="proper rotation"):
        sh_rotation(1, np.diag([1.0, 1.0, -1.0]))
    with pytest.raises(ValueError, match="proper rotation"):
        sh_rotation(1, 2.0 * np.eye(3))


def test_turns_are_stable_per_sample_and_uniform_over_rotations():
    cfg = TailTurn()
    assert draw_turn(None, 0, "a") is None
    assert draw_turn(cfg, 0, "a") == draw_turn(cfg, 0, "a") != draw_turn(cfg, 0, "b")
    assert draw_turn(cfg, 0, "b") != draw_turn(cfg, 1, "b")
    quats = np.array([draw_turn(cfg, 0, f"k{i}") for i in range(4000)])
    assert np.allclose(np.linalg.norm(quats, axis=1), 1.0)
    # A uniform rotation carries any fixed direction to a uniform one (z uniform on [-1, 1], Archimedes),
    # so a turned tail from straight above arrives from above as often as from below.
    up = Rotation.from_quat(quats).apply([0.0, 0.0, 1.0])
    assert np.abs(up.mean(axis=0)).max() < 0.05
    counts, _ = np.histogram(up[:, 2], bins=8, range=(-1, 1))
    assert counts.min() > 0.8 * 500 and counts.max() < 1.2 * 500


def test_the_window_starts_after_the_direct_sound_and_fades_in():
    w = np.zeros(FS)
    w[1000] = 0.05  # below -20 dB of the peak: not the onset
    w[2000] = 1.0
    w[4000] = 0.5
    win = tail_window(w, FS, TailTurn(after_s=0.05, fade_s=0.005))
    start = 2000 + round(0.05 * FS)
    assert not win[:start].any()
    assert np.all(np.diff(win) >= 0) and win[start + round(0.005 * FS)] == 1.0
    assert 0.0 < win[start + 100] < 1.0
    with pytest.raises(ValueError, match="silent"):
        tail_window(np.zeros(100), FS, TailTurn())


def test_the_turned_rir_keeps_the_direct_sound_and_w_and_turns_the_tail():
    """A direct plane wave (30, 10 deg) at 10 ms and a reflection from (-100, 60 deg) at 210 ms: the
    first stays exactly where it was, the second arrives from the drawn rotation of its direction, and
    W (hence every label measured on it) is the same to float precision."""
    rir = np.zeros((16, FS // 2))
    direct, late = unit_vector(30.0, 10.0), unit_vector(-100.0, 60.0)
    rir[:, 480] = _sh(3, direct)
    rir[:, 480 + FS // 5] = 0.5 * _sh(3, late)
    rir[0, 480 + FS // 5 + 7] = 0.25  # a diffuse-like bin with energy in W only
    quat = draw_turn(TailTurn(), 0, "sample")
    y = convolve(np.array([1.0]), SplitSpectrum.from_rir(rir, FS, TailTurn()).turned(quat))
    assert np.abs(y[:, :480 + FS // 5 - 2500] - rir[:, :480 + FS // 5 - 2500]).max() < 1e-6
    assert np.abs(y[0, : rir.shape[1]] - rir[0]).max() < 1e-6
    turned = Rotation.from_quat(quat).apply(late)
    assert np.abs(y[:, 480 + FS // 5] - 0.5 * _sh(3, turned)).max() < 1e-6
    got = np.array([y[3, 480 + FS // 5], y[1, 480 + FS // 5], y[2, 480 + FS // 5]])
    assert angular_distance_deg(*vector_to_angles(got), *vector_to_angles(late)) > 1.0


def test_a_build_with_scenes_refuses_tail_turn():
    cfg = {"dataset": "x", "source": "demo", "audio": {"tail_turn": {}},
           "scenes": {"sources": {2: 1.0}}}
    with pytest.raises(ValueError, match="tail_turn"):
        BuildConfig.model_validate(cfg)
    assert "tail_turn" not in AudioPrepConfig().model_dump()  # off: absent, so ELSA builds keep their version


def test_rendered_samples_record_their_turn_and_keep_w_and_the_direct_sound():
    rooms, placements, _ = sample_room_set(load_config(DEFAULT_CONFIG), seed=1, n_rooms=4)
    clips, _ = read_source("demo", None, limit=2)
    items = build_plan(clips, placements, PlanConfig(), seed=0)
    used = {i.placement_id for i in items if i.placement_id}
    rirs, records, _ = render_chunk({r.room_id: r for r in rooms},
                                    [p for p in placements if p.placement_id in used],
                                    RirSettings(calibrate=False, max_ism_order=6))
    recs = {r.placement_id: r for r in records}
    cfg = AudioPrepConfig(tail_turn=TailTurn())
    plain, _ = render_items(items, rirs, recs, AudioPrepConfig())
    turned, rejects = render_items(items, rirs, recs, cfg)
    assert not rejects and len(turned) == len(plain)
    changed = []
    for a, b in zip(plain, turned, strict=True):
        assert a.item.key == b.item.key
        if a.item.placement_id is None:
            assert b.flac == a.flac and b.rendered is None
            continue
        assert a.rendered.tail_turn_quat is None
        assert b.rendered.tail_turn_quat == draw_turn(cfg.tail_turn, b.item.seed, b.item.key)
        ya, _ = sf.read(io.BytesIO(a.flac), dtype="float64")
        yb, _ = sf.read(io.BytesIO(b.flac), dtype="float64")
        ya, yb = ya / 10 ** (a.gain_db / 20), yb / 10 ** (b.gain_db / 20)  # as rendered, before levelling
        tol = 2e-3 * np.abs(ya[:, 0]).max()  # 16-bit FLAC apart
        assert np.abs(ya[:, 0] - yb[:, 0]).max() < tol  # W: every label's channel, as rendered
        # the audio's first 30 ms has heard only the RIR's first 30 ms, which the turn keeps
        assert np.abs(ya[: round(0.03 * FS)] - yb[: round(0.03 * FS)]).max() < tol
        changed.append(np.sum((ya[:, 1:] - yb[:, 1:]) ** 2) / np.sum(ya[:, 1:] ** 2))
    assert len(changed) >= 4 and min(changed) > 1e-3  # and the dipoles are not what they were
