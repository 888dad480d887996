"""The three seams take a second implementation with one class and one registry entry.

Each test defines its implementation here, registers it (monkeypatch, so the registry is restored)
and runs it through the production stage functions: the RIR bank (render_chunk, pack/unpack),
render_items, build_sample, the shard writer and the shard reader. Nothing else is edited, which is
the claim ARCHITECTURE.md makes about adding a room source, a renderer or a writer.
"""

from __future__ import annotations

import io
import json
import math
import zlib

import numpy as np
import pytest
import soundfile as sf
import webdataset as wds

from room_specs import DEFAULT_CONFIG
from schemas.audio import AudioPrepConfig
from schemas.rooms import Placement, RirRecord, RirSettings, RoomSpec
from schemas.shards import CaptionInfo, Provenance
from tasks import renderers, rir_sources, shard_writer
from tasks.ambisonics import angular_distance_deg, real_sh_sn3d
from tasks.doa import intensity_doa
from tasks.errors import UnknownComponentError
from tasks.plan import PlanConfig, build_plan
from tasks.render import render_items
from tasks.rir_bank import bank_key, pack_chunk, render_chunk, unpack_chunk
from tasks.room_acoustics import measure_response
from tasks.room_sampling import load_config, sample_room_set
from tasks.shard_reader import decode_audio, iter_tar_samples, sample_audio
from tasks.shard_writer import (
    SampleRejected,
    ShardSample,
    build_sample,
    labels_from_rir,
    tar_bytes_of,
    write_tar,
)
from tasks.sources import read_source

FAST = RirSettings(calibrate=False, max_ism_order=4)
PREP = AudioPrepConfig()


class FixedResponse:
    """A measured-like room source: a direct impulse from the placement's direction and a diffuse
    exponential tail with a fixed T60, as a bank of recorded SRIRs would give (no simulation)."""

    method = "fixed"
    version = "fixed-test/1"
    t60_s = 0.6

    def render(
        self, room: RoomSpec, placement: Placement, settings: RirSettings
    ) -> tuple[np.ndarray, RirRecord]:
        fs, p = settings.fs, placement
        n, direct = int(1.5 * self.t60_s * fs), int(0.004 * fs)
        rir = np.zeros((4, n))
        gains = real_sh_sn3d(1, np.radians(p.azimuth_deg), np.radians(p.elevation_deg))
        rir[:, direct] = gains / p.distance_m
        t = np.arange(n - direct - int(0.01 * fs)) / fs
        noise = np.random.default_rng(zlib.crc32(p.placement_id.encode())).standard_normal((4, t.size))
        noise[1:] *= math.sqrt(1 / 3)  # SN3D diffuse field: first order has a third of W's energy
        rir[:, n - t.size :] = 0.01 * noise * np.exp(-3 * math.log(10) * t / self.t60_s)
        m = measure_response(rir, fs, p.azimuth_deg, p.elevation_deg)
        record = RirRecord(
            placement_id=p.placement_id, room_id=p.room_id, room_set_hash=p.room_set_hash, method=self.method,
            fs=fs, order=1, n_samples=n, azimuth_deg=p.azimuth_deg, elevation_deg=p.elevation_deg,
            distance_m=p.distance_m, engine_version=self.version, **vars(m),
        )
        return rir.astype(np.float32), record


class CardioidPair:
    """A second output format: two virtual cardioids at +-45 deg decoded from the FOA scene
    (left first), levelled on both channels together."""

    name = "cardioid_pair"
    spatial = True
    level_channels = (0, 1)
    identity = None

    def render(self, scene: np.ndarray, fs: int) -> np.ndarray:
        w, y, x = scene[0], scene[1], scene[3]  # ACN: W, Y, Z, X
        c = math.cos(math.pi / 4)
        return 0.5 * np.stack([w + c * x + c * y, w + c * x - c * y])

    def ambisonic_order(self, channels: int) -> int | None:
        if channels != 2:
            raise renderers.LayoutError(f"a cardioid pair has 2 channels, got {channels}")
        return None


@pytest.fixture(scope="module")
def scene():
    rooms, placements, _ = sample_room_set(load_config(DEFAULT_CONFIG), seed=3, n_rooms=4)
    clips, _ = read_source("demo", None, limit=2)
    items = build_plan(clips, placements, PlanConfig(), seed=0)
    used = sorted({i.placement_id for i in items if i.placement_id})
    return {r.room_id: r for r in rooms}, [p for p in placements if p.placement_id in used], items


def _samples(done, rooms) -> list[ShardSample]:
    out = []
    for d in done:
        it = d.item
        caps = [CaptionInfo(original=c, spatial=c, backend="none", attempts=0, validated=True, fallback=False)
                for c in it.captions]
        prov = Provenance(source_dataset="demo", source_id=it.clip_id, seed=it.seed, pipeline_version="test",
                          prepared=d.prepared, rendered=d.rendered)
        labels = labels_from_rir(d.rir, rooms[d.rir.room_id]) if d.rir else None
        out.append(build_sample(d.flac, dataset=it.dataset, split=it.split, clip_id=it.clip_id, aug=it.aug,
                                captions=caps, provenance=prov, labels=labels, descriptors=_words(labels),
                                audio_format=d.format, formats=d.extra,
                                scene_order=d.rir.order if d.rir else None))
    return out


def _words(labels):
    from schemas.captions import SpatialAttributes
    from tasks.descriptors import describe

    if labels is None:
        return None
    return describe(SpatialAttributes(azimuth_deg=labels.azimuth_deg, elevation_deg=labels.elevation_deg,
                                      distance_m=labels.distance_m, floor_area_m2=labels.floor_area_m2,
                                      t30_s=labels.t30_s))


def _read_back(samples: list[ShardSample]) -> list[ShardSample]:
    got = list(iter_tar_samples(io.BytesIO(tar_bytes_of(samples)), "test"))
    assert all(isinstance(g, ShardSample) for g in got), got
    return got  # type: ignore[return-value]


def test_a_room_source_is_one_class_and_a_registry_entry(scene, monkeypatch):
    rooms, placements, items = scene
    monkeypatch.setitem(rir_sources.RIR_SOURCES, "fixed", FixedResponse())
    assert bank_key(list(rooms.values()), placements, FAST, "fixed") != bank_key(
        list(rooms.values()), placements, FAST)
    rirs, records, rejects = unpack_chunk(pack_chunk(*render_chunk(rooms, placements, FAST, "fixed")))
    assert not rejects and len(records) == len(placements)
    for r in records:
        assert r.method == "fixed" and r.ism is None and r.engine_version == "fixed-test/1"
        assert r.t30_s == pytest.approx(FixedResponse.t60_s, rel=0.1)  # measured on the response
        assert r.direct_doa_error_deg < 2.0
    done, render_rejects = render_items(items, rirs, {r.placement_id: r for r in records}, PREP)
    assert not render_rejects
    back = _read_back(_samples(done, rooms))
    spatial = [s for s in back if s.record.spatial]
    assert spatial and all(s.record.labels.target_t30_s is None for s in spatial)  # no calibration target
    errors = []
    for s in spatial:  # the rendered audio points where the source's label says (first 50 ms)
        audio, fs = sf.read(io.BytesIO(s.flac), dtype="float32")
        est = intensity_doa(audio.T, fs, band_hz=None, end_s=0.05)
        lab = s.record.labels
        errors.append(angular_distance_deg(est.azimuth_deg, est.elevation_deg, lab.azimuth_deg,
                                           lab.elevation_deg))
    assert np.median(errors) < 10


def test_a_renderer_is_one_class_and_a_registry_entry(scene, monkeypatch):
    rooms, placements, items = scene
    monkeypatch.setitem(renderers.RENDERERS, "cardioid_pair", CardioidPair())
    rirs, records, _ = render_chunk(rooms, placements, FAST)
    done, rejects = render_items(items, rirs, {r.placement_id: r for r in records}, PREP, "cardioid_pair")
    assert not rejects
    back = _read_back(_samples(done, rooms))
    sides = []
    for s in back:
        audio_info = s.record.audio
        renderers.check_layout(audio_info)
        audio, _ = sf.read(io.BytesIO(s.flac), dtype="float64", always_2d=True)
        if not s.record.spatial:
            assert (audio_info.format, audio_info.channels) == ("mono", 1)
            continue
        layout = (audio_info.format, audio_info.channels, audio_info.ambisonic_order)
        assert layout == ("cardioid_pair", 2, None)
        rms = np.sqrt((audio**2).mean())  # the level reference is both channels together
        assert 20 * np.log10(rms) == pytest.approx(s.record.provenance.rendered.rms_dbfs_w, abs=0.05)
        az = s.record.labels.azimuth_deg
        if 30 < abs(az) < 150:  # clearly to one side: the near cardioid is louder
            left, right = np.sqrt((audio[:, 0] ** 2).mean()), np.sqrt((audio[:, 1] ** 2).mean())
            sides.append((az > 0) == (left > right))
    assert sides and all(sides)
    with pytest.raises(renderers.LayoutError):
        renderers.check_layout(back[0].record.audio.model_copy(update={"format": "ambix", "channels": 2}))
    with pytest.raises(UnknownComponentError, match="cardioid_pair"):
        renderers.renderer("cardioid_quad")
    # The reader checks layouts against the registry: without the entry, the samples are refused.
    monkeypatch.delitem(renderers.RENDERERS, "cardioid_pair")
    refused = list(iter_tar_samples(io.BytesIO(tar_bytes_of(back)), "test"))
    assert {r.reason for r in refused if not isinstance(r, ShardSample)} == {"invalid_record"}
    assert sum(isinstance(r, ShardSample) for r in refused) == sum(not s.record.spatial for s in back)


def test_a_registered_renderer_is_also_a_further_format_beside_ambix(scene, monkeypatch, tmp_path):
    """A build's ``formats``: the same scene in ambiX (.flac) and in the new format, its own member,
    with no writer or reader change."""
    rooms, placements, items = scene
    monkeypatch.setitem(renderers.RENDERERS, "cardioid_pair", CardioidPair())
    rirs, records, _ = render_chunk(rooms, placements, FAST)
    done, rejects = render_items(items, rirs, {r.placement_id: r for r in records}, PREP, "ambix",
                                 ("cardioid_pair",))
    assert not rejects
    samples = _samples(done, rooms)
    raw = tar_bytes_of(samples)
    (tmp_path / "shard.tar").write_bytes(raw)
    for r in wds.WebDataset(str(tmp_path / "shard.tar"), shardshuffle=False):
        spatial = json.loads(r["json"])["spatial"]
        want = {"flac", "json", "cardioid_pair.flac"} if spatial else {"flac", "json"}
        assert {k for k in r if not k.startswith("__")} == want
    back = _read_back(samples)
    checked = 0
    for s in back:
        if not s.record.spatial:
            assert s.record.formats is None and s.extra == {}
            continue
        member = s.record.formats["cardioid_pair"]
        assert (member.audio.format, member.audio.channels) == ("cardioid_pair", 2)
        pair = decode_audio(sample_audio(s, "cardioid_pair"), s.record, fmt="cardioid_pair").astype(float)
        foa = decode_audio(s.flac, s.record).astype(np.float64)
        # Same scene: the pair decoded from the ambiX member, at the pair's own gain, is the pair member
        # (to 16-bit rounding); each format has its own gain on its own level channels.
        gain = 10 ** ((member.rendered.gain_db - s.record.provenance.rendered.gain_db) / 20)
        want = CardioidPair().render(foa, 48000) * gain
        assert np.abs(pair - want).max() < 2e-4 * (1 + gain)
        checked += 1
    assert checked
    spatial = next(s for s in back if s.record.spatial)
    with pytest.raises(SampleRejected, match="no binaural audio"):
        sample_audio(spatial, "binaural")
    broken = ShardSample(spatial.key, spatial.flac, spatial.record, {"cardioid_pair": spatial.flac})
    missing = ShardSample(spatial.key, spatial.flac, spatial.record, {})
    for bad, reason in ((broken, "audio_mismatch"), (missing, "missing_member")):
        assert [r.reason for r in iter_tar_samples(io.BytesIO(tar_bytes_of([bad])), "t")] == [reason]


def test_a_writer_is_one_class_and_a_registry_entry(scene, monkeypatch, tmp_path):
    rooms, placements, items = scene
    rirs, records, _ = render_chunk(rooms, placements, FAST)
    done, _ = render_items(items, rirs, {r.placement_id: r for r in records}, PREP)
    samples = _samples(done, rooms)
    default = shard_writer.WRITERS[shard_writer.DEFAULT_WRITER]
    with_txt = shard_writer.WebDatasetTar(
        "webdataset_txt", {**default.members, "txt": lambda s: "\n".join(s.record.text).encode()}
    )
    monkeypatch.setitem(shard_writer.WRITERS, "webdataset_txt", with_txt)
    buf = io.BytesIO()
    offsets = write_tar(samples, buf, writer="webdataset_txt")
    raw = buf.getvalue()
    # webdataset itself reads the shard: every sample has the declared members, nothing else.
    (tmp_path / "shard.tar").write_bytes(raw)
    read = list(wds.WebDataset(str(tmp_path / "shard.tar"), shardshuffle=False))
    assert [r["__key__"] for r in read] == [s.key for s in samples]
    for r, s, off in zip(read, samples, offsets, strict=True):
        assert {k for k in r if not k.startswith("__")} == {"flac", "json", "txt"}
        assert r["flac"] == s.flac and r["json"] == s.json_bytes
        assert r["txt"].decode() == "\n".join(s.record.text)
        for ext, (start, size) in off.spans.items():
            assert raw[start : start + size] == r[ext]  # the spans are where the bytes are
    # The default writer's shard is unchanged by the registration.
    assert tar_bytes_of(samples) == _default_bytes(samples)
    with pytest.raises(UnknownComponentError, match="webdataset_txt"):
        write_tar(samples, io.BytesIO(), writer="parquet")


def _default_bytes(samples: list[ShardSample]) -> bytes:
    bio = io.BytesIO()
    shard_writer.WRITERS[shard_writer.DEFAULT_WRITER].write(samples, bio)
    return bio.getvalue()
