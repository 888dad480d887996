"""The dataset card: its numbers recounted from the manifest, its plots, the report command."""

from __future__ import annotations

import argparse
import io
import json
import math

import matplotlib.image as mpimg
import numpy as np
import pandas as pd
import pytest
from conftest import PREP, FoaClip

from schemas.shards import CaptionInfo, DatasetCard, Provenance, RejectRow
from tasks import audio_prep as ap
from tasks.commit import commit_dataset
from tasks.dataset_card import LABELS, compute_card, render_readme, write_card
from tasks.shard_writer import build_sample
from tasks.storage import join_uri, open_storage

DS, VER = "spatial_audiocaps", "v1"


def mono_original(c: FoaClip, clip_id: str, split: str) -> object:
    """A non-spatial original: the prepared clip as 48 kHz mono FLAC with its original caption."""
    clip, _ = ap.prepare_clip(_burst_wav(), PREP)
    flac = ap.encode_flac(clip * 0.5, 48000)
    cap = CaptionInfo(
        original="a dog barks",
        spatial="a dog barks",
        backend="none",
        attempts=0,
        validated=True,
        fallback=False,
    )
    prov = Provenance(source_dataset="audiocaps", source_id=clip_id, pipeline_version="0.1.0", seed=0)
    return build_sample(
        flac, dataset="audiocaps", split=split, clip_id=clip_id, aug=0, captions=[cap], provenance=prov
    )


def _burst_wav() -> bytes:
    import soundfile as sf

    rng = np.random.default_rng(3)
    x = np.zeros(24000, dtype=np.float32)
    x[4800:19200] = rng.standard_normal(14400).astype(np.float32) * 0.2
    bio = io.BytesIO()
    sf.write(bio, x, 48000, format="WAV")
    return bio.getvalue()


@pytest.fixture(scope="module")
def carded(samples, foa_clips, tmp_path_factory) -> tuple[str, DatasetCard]:
    """A small local dataset (spatial + mono + rejects) and its card, built once per module."""
    tmp = tmp_path_factory.mktemp("card")
    items = [
        *samples,
        mono_original(foa_clips[0], "91000", "train"),
        mono_original(foa_clips[1], "91004", "val"),
        RejectRow(stage="render", reason="silent", detail="peak -120 dBFS", source="audiocaps/123"),
        RejectRow(stage="caption", reason="empty_caption", detail="caption is empty", source="audiocaps/9"),
    ]
    commit_dataset(items, root=str(tmp / "out"), dataset=DS, version=VER, max_samples=6, tmp_dir=tmp)
    uri = join_uri(str(tmp / "out"), DS, VER)
    return uri, write_card(uri)


@pytest.fixture
def dataset(carded) -> str:
    return carded[0]


def test_card_numbers_match_a_recount_from_the_manifest(carded):
    dataset, card = carded
    on_disk = DatasetCard.model_validate_json(
        open_storage(dataset).read_bytes(join_uri(dataset, "card.json"))
    )
    assert on_disk == card
    m = pd.read_parquet(join_uri(dataset, "manifest.parquet"))
    rej = pd.read_parquet(join_uri(dataset, "rejects.parquet"))
    assert card.totals.samples == len(m) == 22 and card.totals.mono_samples == 2
    for split, g in m.groupby("split"):
        s = card.splits[split]
        assert s.samples == len(g)
        assert s.hours == pytest.approx(g.duration_s.sum() / 3600, abs=1e-6)
        assert s.shards == g.shard.nunique()
        assert s.bytes == g.drop_duplicates("shard").shard_size.sum()
        assert s.rooms == g.room_id.dropna().nunique()
    sp = m[m.spatial]
    for group, splits in (("train_val", ["train", "val"]), ("test", ["test"])):
        g = sp[sp.split.isin(splits)]
        assert card.group_rooms[group] == g.room_id.nunique()
        for col, _, _ in LABELS:
            assert card.ranges[group][col].min == pytest.approx(g[col].min(), abs=1e-6)
            assert card.ranges[group][col].max == pytest.approx(g[col].max(), abs=1e-6)
    for attr, freq in card.descriptor_frequencies.items():
        recount = sp[f"desc_{attr}"].fillna("none").value_counts().to_dict()
        assert freq == recount
        assert sum(freq.values()) == len(sp)
    assert card.captions.captions == sp.n_captions.sum()
    assert card.captions.validated_rate == pytest.approx(sp.n_validated.sum() / sp.n_captions.sum(), abs=1e-6)
    assert card.captions.fallback_rate == pytest.approx(sp.n_fallback.sum() / sp.n_captions.sum(), abs=1e-6)
    assert 0 < card.captions.fallback_rate < 1
    assert card.label_qa.direct_doa_error_deg_max == pytest.approx(sp.direct_doa_error_deg.max(), abs=1e-6)
    assert card.rejects == rej.reason.value_counts().to_dict() == {"silent": 1, "empty_caption": 1}
    readme = open_storage(dataset).read_bytes(join_uri(dataset, "README.md")).decode()
    assert f"| all | {len(m)} |" in readme and "Table A.T.2" in readme
    t30 = card.ranges["train_val"]["t30_s"]
    assert f"[{t30.min * 1000:.1f}, {t30.max * 1000:.1f}] ms" in readme


def test_plots_exist_and_are_not_trivial(carded):
    dataset, card = carded
    st = open_storage(dataset)
    assert len(card.plots) == len(LABELS) + 1
    readme = st.read_bytes(join_uri(dataset, "README.md")).decode()
    for rel in card.plots:
        png = st.read_bytes(join_uri(dataset, rel))
        assert png[:8] == b"\x89PNG\r\n\x1a\n" and len(png) > 5000, rel
        img = mpimg.imread(io.BytesIO(png), format="png")
        assert img.ndim == 3 and img.shape[0] > 200 and img.shape[1] > 300
        rgb = (img[..., :3] * 255).astype(np.uint32)
        colours = np.unique((rgb[..., 0] << 16) | (rgb[..., 1] << 8) | rgb[..., 2])
        assert colours.size > 20, rel  # bars, shading, text: far from a single colour
        assert f"]({rel})" in readme


def test_report_command_on_s3_rebuilds_the_card(s3, samples, tmp_path):
    from spatial_audiocaps.cli_shards import add_commands

    commit_dataset(samples, root=s3.root, dataset=DS, version=VER, tmp_dir=tmp_path)
    base = join_uri(s3.root, DS, VER)
    parser = argparse.ArgumentParser()
    add_commands(parser.add_subparsers(dest="command"))
    args = parser.parse_args(["report", base])
    out = args.func(args)
    json.dumps(out, allow_nan=False)
    assert out["samples"] == len(samples) and out["card"] == join_uri(base, "card.json")
    st = open_storage(s3.root)
    card = json.loads(st.read_bytes(join_uri(base, "card.json")))
    assert card["totals"]["samples"] == len(samples)
    assert all(st.exists(join_uri(base, p)) for p in card["plots"])


def test_card_of_an_empty_dataset_still_renders(tmp_path):
    rej = [RejectRow(stage="source", reason="unreadable", detail="no such file", source="x.wav")]
    commit_dataset(rej, root=str(tmp_path / "out"), dataset=DS, version=VER, tmp_dir=tmp_path)
    card = write_card(join_uri(str(tmp_path / "out"), DS, VER))
    assert card.totals.samples == 0 and card.rejects == {"unreadable": 1}
    assert card.captions.validated_rate is None and card.ranges["test"]["t30_s"].min is None
    assert "unreadable: 1" in render_readme(card)


def test_compute_card_is_pure(dataset):
    from tasks.commit import read_manifest, read_rejects

    st = open_storage(dataset)
    rows, rej = read_manifest(st, dataset), read_rejects(st, dataset)
    a = compute_card(rows, rej, dataset=DS, version=VER, generated_at="t")
    b = compute_card(list(reversed(rows)), rej, dataset=DS, version=VER, generated_at="t")
    assert a == b
    assert all(math.isfinite(v.hours) for v in a.splits.values())
