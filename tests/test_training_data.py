"""The shard loader: batches, mono originals, mixing ratio, exact resume, rank splits, S3, bad samples."""

from __future__ import annotations

import json
import math
from pathlib import Path

import pytest
import torch
from training_helpers import SMALL, TEST_FEATURES, pipeline_build, shards, tokenizer_dir

from schemas.shards import RejectRow
from training.config import DataConfig, ShardSource
from training.data import (
    DataError,
    SampleMode,
    ShardStream,
    eval_loader,
    iterate_from,
    list_shards,
    make_loader,
)


def _cfg(root: str, **kw: object) -> DataConfig:
    base: dict = dict(
        sources=[ShardSource(root=root)], batch_size=4, num_workers=0, shuffle_buffer=8, batches_per_epoch=4
    )
    base.update(kw)
    return DataConfig(**base)


def test_batches_labels_and_mono_originals() -> None:
    from training.model import load_tokenizer

    tok = load_tokenizer(tokenizer_dir())
    batches = list(make_loader(_cfg(str(shards())), TEST_FEATURES, seed=0, tokenizer=tok))
    assert len(batches) == 4
    b = batches[0]
    assert b["mel"].shape == (4, 1, 101, 64) and b["iv"].shape == (4, 6, 101, 64)
    assert b["input_ids"].shape[0] == 4 and b["attention_mask"].shape == b["input_ids"].shape
    allb = {k: torch.cat([x[k] for x in batches]) for k in ("spatial", "direction", "distance_m", "iv")}
    sp = allb["spatial"]
    assert sp.any() and (~sp).any()  # the small set holds mono originals too
    assert torch.isnan(allb["direction"][~sp]).all() and torch.isnan(allb["distance_m"][~sp]).all()
    assert torch.allclose(allb["direction"][sp].norm(dim=-1), torch.ones(int(sp.sum())), atol=1e-5)
    # active IV of a copied mono clip points along (1,1,1) everywhere (unit length where the band
    # has energy above iv_eps; the demo's tones leave many mel bands below it)
    x, y, z = allb["iv"][~sp][:, :3].unbind(1)
    assert torch.allclose(x, y, atol=1e-6) and torch.allclose(y, z, atol=1e-6) and (x >= 0).all()
    unit = (x - 3**-0.5).abs() < 1e-5
    assert (x <= 3**-0.5 + 1e-5).all() and unit.float().mean() > 0.3
    texts = [t for x in batches for t in x["texts"]]
    assert all(isinstance(t, str) and t for t in texts)


def test_spatial_fraction_sets_the_mix() -> None:
    cfg = _cfg(str(shards()), spatial_fraction=0.25, batches_per_epoch=30, shuffle_buffer=4)
    flags = torch.cat(
        [b["spatial"] for b in make_loader(cfg, TEST_FEATURES, seed=1, mode=SampleMode(features=False))]
    )
    assert flags.numel() == 120
    assert abs(float(flags.float().mean()) - 0.25) < 0.12


def test_resume_skips_exactly_with_workers() -> None:
    cfg = _cfg(str(shards()), num_workers=2, batches_per_epoch=6)
    full = list(make_loader(cfg, TEST_FEATURES, seed=5, epoch=3))
    resumed = list(iterate_from(make_loader(cfg, TEST_FEATURES, seed=5, epoch=3, skip_batches=4), 4))
    assert [i for i, _ in resumed] == [4, 5]
    for (_, a), b in zip(resumed, full[4:], strict=True):
        assert a["keys"] == b["keys"] and a["texts"] == b["texts"]
        assert torch.equal(a["mel"], b["mel"]) and torch.equal(a["iv"], b["iv"])
    other = list(make_loader(cfg, TEST_FEATURES, seed=5, epoch=4))
    assert [b["keys"] for b in other] != [b["keys"] for b in full]  # a new epoch reshuffles


def test_finite_pass_splits_by_rank_and_covers_everything() -> None:
    root = str(shards())
    seen = [
        [
            k
            for b in eval_loader(root, "train", TEST_FEATURES, batch_size=5, rank=r, world=2, num_workers=r)
            for k in b["keys"]
        ]
        for r in range(2)
    ]
    assert seen[0] and seen[1] and not set(seen[0]) & set(seen[1])
    sizes = json.loads((Path(root) / "train" / "sizes.json").read_text())  # what the build committed
    assert len(seen[0]) + len(seen[1]) == len(set(seen[0]) | set(seen[1])) == sum(sizes.values())


def test_missing_shards_are_a_clear_error(tmp_path: Path) -> None:
    with pytest.raises(DataError, match="no shards"):
        list_shards(str(tmp_path), "train")


def test_a_filter_matching_nothing_fails_instead_of_spinning(tmp_path: Path) -> None:
    import webdataset as wds

    src = list_shards(str(shards()), "train")[0]
    spatial = [s for s in wds.WebDataset(src, shardshuffle=False) if not s["__key__"].endswith("-0")]
    (tmp_path / "train").mkdir()
    with open(tmp_path / "train" / "train-000000.tar", "wb") as f, wds.TarWriter(f) as w:
        for s in spatial:
            w.write({"__key__": s["__key__"], "flac": s["flac"], "json": s["json"]})
    # no mono originals there: a resampled non-spatial stream could never be served
    cfg = _cfg(str(tmp_path), sources=[ShardSource(root=str(tmp_path), only="nonspatial")])
    with pytest.raises(DataError, match="in a row"):
        next(iter(ShardStream(cfg, TEST_FEATURES, seed=0)))


def test_bad_samples_are_skipped_or_replaced(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    import webdataset as wds

    from tasks.shard_writer import audio_info

    src = list_shards(str(shards()), "train")[0]
    good = list(wds.WebDataset(src, shardshuffle=False))
    # A FLAC cut short whose record says so (size, sha256): it passes the reader, fails to decode.
    cut = good[1]["flac"][: len(good[1]["flac"]) // 2]
    rec = json.loads(good[1]["json"])
    rec["audio"] |= {"sha256": audio_info(cut).sha256, "n_bytes": len(cut)}
    no_caption = json.loads(good[2]["json"]) | {"text": []}
    d = tmp_path / "train"
    d.mkdir()
    with open(d / "train-000000.tar", "wb") as f, wds.TarWriter(f) as w:
        w.write({"__key__": "bad-json", "flac": good[0]["flac"], "json": b"{not json"})
        w.write({"__key__": good[1]["__key__"], "flac": cut, "json": json.dumps(rec).encode()})
        w.write({"__key__": good[2]["__key__"], "flac": good[2]["flac"],
                 "json": json.dumps(no_caption).encode()})
        w.write({"__key__": "other-key", "flac": good[3]["flac"], "json": good[3]["json"]})
        for s in good[3:8]:
            w.write({"__key__": s["__key__"], "flac": s["flac"], "json": s["json"]})
    ds = ShardStream(
        _cfg(str(tmp_path), resampled=False, shuffle_buffer=0), TEST_FEATURES, seed=0, drop_last=False
    )
    batches = list(ds)
    keys = [k for b in batches for k in b["keys"]]
    # the reader's reasons, logged: the loader and inspect share them
    for reason in ("invalid_json", "invalid_record", "key_mismatch"):
        assert reason in caplog.text
    assert "bad-json" not in keys and good[2]["__key__"] not in keys and "other-key" not in keys
    assert good[1]["__key__"] not in keys and len(keys) == 6  # replaced by a good sample of its batch
    assert "could not be decoded" in caplog.text and "truncated" in caplog.text
    assert all(math.isfinite(float(b["mel"].abs().max())) for b in batches)


@pytest.mark.s3
def test_reads_shards_from_s3(s3) -> None:
    local = shards()
    root = pipeline_build(s3.root, SMALL)["uri"]  # the same build, written to the S3 server
    assert root.startswith("s3://")
    assert [u.rsplit("/", 1)[1] for u in list_shards(root, "train")] == [
        u.rsplit("/", 1)[1] for u in list_shards(str(local), "train")
    ]
    from_s3 = [k for b in eval_loader(root, "test", TEST_FEATURES, batch_size=4) for k in b["keys"]]
    from_disk = [k for b in eval_loader(str(local), "test", TEST_FEATURES, batch_size=4) for k in b["keys"]]
    assert from_s3 == from_disk and from_s3
    b = next(iter(make_loader(_cfg(root, num_workers=1), TEST_FEATURES, seed=0)))
    assert b["iv"].shape == (4, 6, 101, 64)


def test_decode_rejects_features_at_another_rate() -> None:
    from tasks.shard_reader import read_shard
    from training.data import decode_audio

    first = list_shards(str(shards()), "train")[0]
    sample = next(s for s in read_shard(first) if not isinstance(s, RejectRow))
    assert decode_audio(sample.flac, sample.record, 48000).shape[0] == 4  # mono is copied to 4 channels
    with pytest.raises(DataError, match="44100"):
        decode_audio(sample.flac, sample.record, 44100)
