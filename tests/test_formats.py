"""One build, several outputs: FOA, binaural and tetrahedral-mic members of the same ISM scenes.

The build renders the scene at order 3 (what binaural and mic need to be accurate) and writes FOA
as the ``.flac`` (its first order, exactly the first four ACN/SN3D channels) beside a binaural and
a mic member; every member is checked against the sample's labels on the audio itself.
"""

from __future__ import annotations

import numpy as np
import pytest

from schemas.build import BuildConfig
from schemas.rooms import RirSettings
from tasks.ambisonics import real_sh_sn3d
from tasks.binaural import interaural_cues
from tasks.build_stages import build_in_process
from tasks.errors import LayoutError, UnknownComponentError
from tasks.inspect_dataset import doa_check
from tasks.mic_array import CAPSULES
from tasks.renderers import check_formats, renderer
from tasks.shard_reader import decode_audio, read_shard, sample_audio

SR = 48000


def test_foa_is_the_first_order_of_any_scene():
    scene = np.random.default_rng(0).standard_normal((16, 480)).astype(np.float32)
    foa = renderer("foa")
    assert np.array_equal(foa.render(scene, SR), scene[:4]) and foa.ambisonic_order(4) == 1
    for bad in (scene[:1], scene[:5]):
        with pytest.raises(LayoutError):
            foa.render(bad, SR)
    with pytest.raises(LayoutError):
        foa.ambisonic_order(16)
    with pytest.raises(UnknownComponentError, match="spatial"):
        check_formats(["foa", "mono"])


@pytest.fixture(scope="module")
def built(tmp_path_factory):
    cfg = BuildConfig(source="demo", limit=6, n_rooms=4, shard_size=16, formats="foa,binaural,mic",
                      rir=RirSettings(order=3, max_ism_order=6))
    base = build_in_process(cfg, str(tmp_path_factory.mktemp("out")))
    from pathlib import Path

    samples = [s for tar in sorted(Path(base).rglob("*.tar")) for s in read_shard(str(tar))]
    return [s for s in samples if s.record.spatial]


def test_every_member_agrees_with_the_label(built):
    assert built
    mic_az = np.radians([c[1] for c in CAPSULES])
    mic_el = np.radians([c[2] for c in CAPSULES])
    lateral = shadowed = 0
    for s in built:
        rec, lab = s.record, s.record.labels
        assert (rec.audio.format, rec.audio.channels, rec.audio.ambisonic_order) == ("foa", 4, 1)
        assert set(rec.formats) == {"binaural", "mic"}
        decode_audio(s.flac, rec)
        check = doa_check(rec.key, s.flac, lab.azimuth_deg, lab.elevation_deg)  # what inspect runs
        assert not check.flagged, check
        ears = decode_audio(sample_audio(s, "binaural"), rec, fmt="binaural")
        ild, _ = interaural_cues(ears, SR)  # a clip's ITD is ambiguous for tonal sounds (a hum): not checked
        if 45.0 < abs(lab.azimuth_deg) < 135.0 and abs(lab.elevation_deg) < 45.0:
            assert np.sign(ild) == np.sign(lab.azimuth_deg), (rec.key, ild)
            lateral += 1
        mic = decode_audio(sample_audio(s, "mic"), rec, fmt="mic")
        # Above 2 kHz the capsule facing the source is louder than the one facing away (the rigid
        # sphere's shadow); clips without energy there (a hum) cannot show it.
        facing = real_sh_sn3d(1, np.radians(lab.azimuth_deg), np.radians(lab.elevation_deg))[[3, 1, 2]]
        caps = np.stack([np.cos(mic_el) * np.cos(mic_az), np.cos(mic_el) * np.sin(mic_az), np.sin(mic_el)])
        order = np.argsort(facing @ caps)
        spectrum = np.abs(np.fft.rfft(mic.astype(np.float64), axis=1)) ** 2
        high = spectrum[:, np.fft.rfftfreq(mic.shape[1], 1 / SR) > 2000].sum(axis=1)
        if high.sum() > 0.05 * spectrum.sum():
            assert high[order[-1]] > high[order[0]], rec.key
            shadowed += 1
    assert lateral and shadowed
