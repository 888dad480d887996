"""Sensor noise (schemas.audio.SensorNoise, tasks.sensor_noise): measured SNR, spectrum, independence
across channels, per-sample determinism, the render path's records, and a build with it on."""

from __future__ import annotations

import io
import json
import math
import tarfile
from pathlib import Path

import numpy as np
import pytest
import soundfile as sf
from pydantic import ValidationError
from scipy import signal

from schemas.audio import AudioPrepConfig, SensorNoise
from schemas.build import BuildConfig
from schemas.scenes import ScenePlan, ScenePoint, SceneSource
from tasks.ambisonics import real_sh_sn3d
from tasks.audio_prep import RirSpectrum, render_formats
from tasks.build_file import BuildFileError, load_build
from tasks.build_stages import build_in_process
from tasks.inspect_dataset import inspect_dataset
from tasks.renderers import renderer
from tasks.scene_render import render_scene
from tasks.sensor_noise import SampleNoise, add_sensor_noise, sample_noise
from tasks.shard_reader import read_shard

SR = 48000
CFG = AudioPrepConfig(sensor_noise=SensorNoise())
AZ, EL = 60.0, 20.0


def _plane_wave_rir(length: int = 2400) -> np.ndarray:
    """An anechoic order-1 ambiX RIR from (AZ, EL): one impulse at 1 ms with the SN3D gains."""
    h = np.zeros((4, length), dtype=np.float32)
    h[:, 48] = real_sh_sn3d(1, math.radians(AZ), math.radians(EL))
    return h


def _clip(seconds: float = 6.0, seed: int = 1) -> np.ndarray:
    """Broadband with a silent middle second: a clip whose mean power is not its loud parts'."""
    x = np.random.default_rng(seed).standard_normal(round(seconds * SR)) * 0.1
    x[2 * SR : 3 * SR] = 0.0
    return x.astype(np.float32)


def _decode(flac: bytes, gain_db: float) -> np.ndarray:
    """The FLAC's audio before the level gain, float64 (C, N)."""
    y, sr = sf.read(io.BytesIO(flac), dtype="float64", always_2d=True)
    assert sr == SR
    return y.T / 10 ** (gain_db / 20)


def _power(x: np.ndarray) -> np.ndarray:
    return np.mean(np.asarray(x, dtype=np.float64) ** 2, axis=-1)


def _snr_db(clean: np.ndarray, noisy: np.ndarray, fmt: str) -> float:
    """SNR as SensorNoise defines it: mean power of the format's level channels over the noise's."""
    level = list(renderer(fmt).level_channels)
    return 10 * math.log10(_power(clean[level]).mean() / _power(noisy[level] - clean[level]).mean())


def _slope_db_per_octave(x: np.ndarray) -> float:
    """Least-squares slope of the power spectral density, dB per octave, over 100 Hz - 10 kHz."""
    f, p = signal.welch(x, SR, nperseg=8192)
    band = (f >= 100) & (f <= 10_000)
    return float(np.polyfit(np.log2(f[band]), 10 * np.log10(p[band]), 1)[0])


@pytest.mark.parametrize("spectrum", ["white", "pink"])
@pytest.mark.parametrize("snr_db", [6.0, 25.0])
def test_added_noise_sits_at_the_snr_on_the_level_channels(spectrum, snr_db):
    scene = np.random.default_rng(2).standard_normal((4, 10 * SR)).astype(np.float32)
    scene[1:] *= 0.3  # the level channel (W) louder than the others, as in a plane wave or diffuse field
    noisy = add_sensor_noise(scene, snr_db, np.random.default_rng(3), spectrum, (0,), SR)
    noise = noisy.astype(np.float64) - scene
    measured = 10 * math.log10(_power(scene[0]) / _power(noise[0]))
    assert measured == pytest.approx(snr_db, abs=0.5)
    # equal power on every channel: relatively stronger where the signal is weaker
    np.testing.assert_allclose(_power(noise), _power(noise[0]), rtol=1e-3)
    # the mean over several level channels is what is levelled (both ears of binaural)
    both = add_sensor_noise(scene[:2], snr_db, np.random.default_rng(3), spectrum, (0, 1), SR)
    signal_power = _power(scene[:2]).mean()
    assert 10 * math.log10(signal_power / _power(both[1] - scene[1])) == pytest.approx(snr_db, abs=0.5)


def test_pink_falls_3_db_per_octave_and_white_is_flat():
    silent = np.zeros((1, 20 * SR), dtype=np.float32)
    level = np.ones((1, 20 * SR), dtype=np.float32)  # any signal power: only the noise is looked at
    white = add_sensor_noise(level, 0.0, np.random.default_rng(4), "white", (0,), SR)[0] - 1.0
    pink = add_sensor_noise(level, 0.0, np.random.default_rng(4), "pink", (0,), SR)[0] - 1.0
    assert _slope_db_per_octave(pink) == pytest.approx(-3.0, abs=0.3)
    assert _slope_db_per_octave(white) == pytest.approx(0.0, abs=0.3)
    # a silent render gets no noise: it stays silent (and is then rejected as silent)
    assert not add_sensor_noise(silent, 20.0, np.random.default_rng(4), "pink", (0,), SR).any()


@pytest.mark.parametrize("spectrum", ["white", "pink"])
def test_noise_is_uncorrelated_across_channels(spectrum):
    level = np.ones((4, 20 * SR), dtype=np.float32)
    noise = add_sensor_noise(level, 0.0, np.random.default_rng(5), spectrum, (0,), SR) - np.float32(1.0)
    r = np.corrcoef(noise)
    off = np.abs(r[~np.eye(4, dtype=bool)])
    # independent channels: |r| ~ 1/sqrt(effective samples); pink's low end leaves fewer of them
    assert off.max() < (0.01 if spectrum == "white" else 0.03), r


def test_same_seed_and_key_same_noise_other_key_or_format_other_noise():
    cfg = SensorNoise(snr_db=(10.0, 40.0), spectrum="pink")
    a, again = sample_noise(cfg, 0, "demo/train/c1/1"), sample_noise(cfg, 0, "demo/train/c1/1")
    assert a == again and a is not None
    assert np.array_equal(a.rng("ambix").standard_normal(64), again.rng("ambix").standard_normal(64))
    for other in (sample_noise(cfg, 0, "demo/train/c1/2"), sample_noise(cfg, 1, "demo/train/c1/1")):
        assert other is not None and other.snr_db != a.snr_db
        assert not np.array_equal(other.rng("ambix").standard_normal(64), a.rng("ambix").standard_normal(64))
    assert not np.array_equal(a.rng("mic").standard_normal(64), a.rng("ambix").standard_normal(64))
    assert sample_noise(None, 0, "k") is None
    snrs = [sample_noise(cfg, 0, f"k{i}").snr_db for i in range(400)]  # type: ignore[union-attr]
    assert 10.0 <= min(snrs) < 11.0 and 39.0 < max(snrs) <= 40.0  # uniform over the range
    assert np.mean(snrs) == pytest.approx(25.0, abs=1.5)


def test_each_rendered_format_carries_its_drawn_snr_after_levelling_and_flac():
    clip = _clip()
    spectrum = RirSpectrum.from_rir(_plane_wave_rir(), SR)
    noise = SampleNoise(snr_db=18.0, spectrum="white", seed=0, key="k")
    clean = render_formats(clip, spectrum, AudioPrepConfig(), ("ambix", "mic"))
    noisy = render_formats(clip, spectrum, CFG, ("ambix", "mic"), noise)
    for fmt in ("ambix", "mic"):
        (fc, ic), (fn, info) = clean[fmt], noisy[fmt]
        assert (info.sensor_snr_db, info.sensor_noise_spectrum) == (18.0, "white")
        assert ic.sensor_snr_db is None and "sensor_snr_db" not in ic.model_dump()
        y0, y1 = _decode(fc, ic.gain_db), _decode(fn, info.gain_db)
        assert _snr_db(y0, y1, fmt) == pytest.approx(18.0, abs=0.5), fmt
    # the plane wave from the left-front-up: its X, Y, Z carry less than W, the noise as much
    w_noise = _decode(noisy["ambix"][0], noisy["ambix"][1].gain_db) - _decode(clean["ambix"][0],
                                                                                clean["ambix"][1].gain_db)
    np.testing.assert_allclose(_power(w_noise), _power(w_noise[0]), rtol=0.05)


def test_a_scene_gets_the_noise_on_its_mix():
    h = _plane_wave_rir()
    point = ScenePoint(placement_id="p", time_s=0.0, azimuth_deg=AZ, elevation_deg=EL, distance_m=1.0)
    source = SceneSource(index=0, dataset="d", clip_id="c", audio_uri="mem://c", captions=("a sound",),
                         onset_s=0.0, offset_s=4.0, level_db=0.0, motion="static", start_m=(1.0, 0.0, 0.0),
                         end_m=(1.0, 0.0, 0.0), points=[point])
    plan = ScenePlan(room_id="r", base_placement_id="p", receiver_m=(0.0, 0.0, 0.0), receiver_yaw_deg=0.0,
                     duration_s=4.0, sources=[source], seed=0)
    clip = _clip(4.0)
    flac0, clean = render_scene(plan, [clip], {"p": h}, AudioPrepConfig())
    flac1, noisy = render_scene(plan, [clip], {"p": h}, CFG, "ambix", ("mic",),
                                SampleNoise(snr_db=30.0, spectrum="pink", seed=0, key="k"))
    assert noisy.rendered.sensor_snr_db == 30.0 and noisy.extra["mic"][1].sensor_snr_db == 30.0
    y0, y1 = _decode(flac0, clean.rendered.gain_db), _decode(flac1, noisy.rendered.gain_db)
    assert _snr_db(y0, y1, "ambix") == pytest.approx(30.0, abs=0.5)


def test_off_by_default_and_out_of_every_dump():
    assert BuildConfig().audio.sensor_noise is None
    assert "sensor_noise" not in BuildConfig().versioned()["audio"]
    on = BuildConfig(audio=CFG)
    assert on.versioned()["audio"]["sensor_noise"] == {"snr_db": [10.0, 40.0], "spectrum": "white"}
    assert on.versioned() != BuildConfig().versioned()  # a noisy build is another version


def test_invalid_ranges_are_validation_errors():
    with pytest.raises(ValidationError, match="lo > hi"):
        SensorNoise(snr_db=(40.0, 10.0))
    with pytest.raises(ValidationError, match="finite"):
        SensorNoise(snr_db=(10.0, math.inf))
    with pytest.raises(ValidationError):
        SensorNoise(spectrum="brown")  # type: ignore[arg-type]
    assert SensorNoise(snr_db="30").snr_db == (30.0, 30.0)  # type: ignore[arg-type]
    cfg, _ = load_build(None, [("audio.sensor_noise.snr_db", "15,35")])  # the CLI's --snr 15,35
    assert cfg.audio.sensor_noise == SensorNoise(snr_db=(15.0, 35.0))
    with pytest.raises(BuildFileError, match="lo > hi"):
        load_build(None, [("audio.sensor_noise.snr_db", "35,15")])


def _members(base: Path) -> dict[str, bytes]:
    out = {}
    for tar in sorted(base.rglob("*.tar")):
        with tarfile.open(tar) as tf:
            for m in tf.getmembers():
                out[m.name] = tf.extractfile(m).read()  # type: ignore[union-attr]
    return out


def test_a_build_with_sensor_noise_records_and_carries_it(tmp_path):
    small = {"source": "demo", "limit": 3, "n_rooms": 4, "shard_size": 16, "formats": "ambix,mic"}
    clean = Path(build_in_process(BuildConfig(**small), str(tmp_path / "clean")))
    noisy_cfg = BuildConfig(**small, audio=AudioPrepConfig(sensor_noise=SensorNoise(snr_db=(12.0, 30.0))))
    noisy = Path(build_in_process(noisy_cfg, str(tmp_path / "noisy")))
    a, b = _members(clean), _members(noisy)
    assert a.keys() == b.keys()
    spatial = 0
    for name in (n for n in b if n.endswith(".json")):
        rec0, rec1 = json.loads(a[name]), json.loads(b[name])
        stem = name.removesuffix(".json")
        if not rec1["spatial"]:  # the mono original: untouched
            assert "sensor_snr_db" not in json.dumps(rec1) and a[stem + ".flac"] == b[stem + ".flac"]
            continue
        spatial += 1
        snr = rec1["provenance"]["rendered"]["sensor_snr_db"]
        assert 12.0 <= snr <= 30.0 and rec1["provenance"]["rendered"]["sensor_noise_spectrum"] == "white"
        assert rec1["formats"]["mic"]["rendered"]["sensor_snr_db"] == snr
        assert "sensor_snr_db" not in json.dumps(rec0)
        pairs = (("ambix", ".flac", rec0["provenance"]["rendered"], rec1["provenance"]["rendered"]),
                 ("mic", ".mic.flac", rec0["formats"]["mic"]["rendered"], rec1["formats"]["mic"]["rendered"]))
        for fmt, member, r0, r1 in pairs:
            y0, y1 = _decode(a[stem + member], r0["gain_db"]), _decode(b[stem + member], r1["gain_db"])
            assert _snr_db(y0, y1, fmt) == pytest.approx(snr, abs=0.5), (name, member)
    assert spatial
    read = [s.record for t in sorted(noisy.rglob("*.tar")) for s in read_shard(str(t))]  # reader accepts them
    assert sum(r.spatial for r in read) == spatial


@pytest.mark.slow
def test_inspect_passes_a_build_at_10_db_snr(tmp_path):
    """The demo's hums and tones at 10 dB SNR: with the plain onset threshold 2 of these 16 samples
    were flagged (the direct window landed on noise before the sound arrived); inspect now reads each
    sample's recorded SNR and finds every direct sound."""
    cfg = BuildConfig(source="demo", limit=8, n_rooms=6, shard_size=16,
                      audio=AudioPrepConfig(sensor_noise=SensorNoise(snr_db=(10.0, 10.0))))
    base = build_in_process(cfg, str(tmp_path / "out"))
    check = inspect_dataset(base, doa_samples=None)["doa_check"]
    assert check["checked"] == 16 and check["flagged"] == 0, check["mismatches"]
