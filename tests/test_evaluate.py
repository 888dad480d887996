"""ELSA evaluation end to end: a tiny model trained here on rendered shards, evaluated through the CLI.

The shards come from a real demo build (tests/training_helpers: the pipeline's flow, measured labels),
the model is trained for a few steps by the real training loop (training.train.run), and the
report is produced by the same code users call. Also: the pieces on embeddings whose answers are
known, the real-recording loaders on real label files (and the TAU SSE 2019 sample when
../shared/realdata is present), and bad input (NaN, mismatched counts, empty test set).
"""

from __future__ import annotations

import argparse
import json
import math
import tarfile
from pathlib import Path

import numpy as np
import pytest
import soundfile as sf
from training_helpers import shards, tokenizer_dir

from training.metrics import CountMismatchError, EmptyEvaluationSetError, NonFiniteEmbeddingError

REALDATA = Path(__file__).resolve().parents[2] / "shared" / "realdata"
TAU_WAV = REALDATA / "foa" / "tau2019_sse" / "split1_ir0_ov1_1_first1s.wav"
TAU_CSV = REALDATA / "foa" / "tau2019_sse" / "split1_ir0_ov1_1.csv"
LABELS_ONLY = REALDATA / "foa" / "labels_only"


# --------------------------------------------------------------------------------------------
# a trained tiny model on rendered shards (built once for the module)


@pytest.fixture(scope="module")
def trained(tmp_path_factory: pytest.TempPathFactory) -> dict:
    import torch

    from training.config import DataConfig, FeatureConfig, ModelConfig, OptimConfig, ShardSource, TrainConfig
    from training.train import run

    root = tmp_path_factory.mktemp("eval")
    built = shards()
    tok = tokenizer_dir()
    cfg = TrainConfig(
        run_dir=str(root / "run"),
        data=DataConfig(
            sources=[ShardSource(root=str(built))],
            batch_size=8,
            num_workers=0,
            batches_per_epoch=4,
            shuffle_buffer=16,
        ),
        features=FeatureConfig(clip_s=1.0),
        model=ModelConfig.tiny(str(tok)),
        optim=OptimConfig(lr=1e-3, warmup_steps=2, max_steps=8),
        device="cpu",
        checkpoint_every=100,
        resume=False,
        torch_threads=1,  # a tiny model on 2 shared cores: one thread is the faster
    )
    threads = torch.get_num_threads()
    try:
        out = run(cfg)
    finally:
        torch.set_num_threads(threads)
    return {"root": root, "shards": str(built), "run": out["run_dir"], "cfg": cfg}


@pytest.fixture(scope="module")
def loaded(trained: dict) -> dict:
    from training.checkpoint import load_trained

    model, tok, cfg = load_trained(trained["run"])
    return {
        "model": model,
        "tokenizer": tok,
        "features": cfg.features,
        "max_text_len": cfg.model.max_text_len,
    }


def _finite_numbers(obj, path: str = "") -> list[str]:
    """Paths of every non-finite float in a nested JSON value."""
    bad = []
    if isinstance(obj, float) and not math.isfinite(obj):
        bad.append(path)
    elif isinstance(obj, dict):
        for k, v in obj.items():
            bad += _finite_numbers(v, f"{path}.{k}")
    elif isinstance(obj, list):
        for i, v in enumerate(obj):
            bad += _finite_numbers(v, f"{path}[{i}]")
    return bad


def test_cli_evaluate_writes_the_report(trained: dict, tmp_path: Path):
    from spatial_audiocaps.cli_eval import add_commands

    parser = argparse.ArgumentParser()
    add_commands(parser.add_subparsers(dest="cmd"))
    argv = [
        "evaluate",
        trained["run"],
        trained["shards"],
        "--out",
        str(tmp_path / "report"),
        "--device",
        "cpu",
        "--probe-steps",
        "300",
    ]
    if TAU_WAV.exists():
        argv += ["--real", "tut2018", str(TAU_WAV), str(TAU_CSV)]
    args = parser.parse_args(argv)
    result = args.func(args)
    json.dumps(result, allow_nan=False)  # what cli.py prints

    out = tmp_path / "report"
    rep = json.loads((out / "report.json").read_text())
    md = (out / "report.md").read_text()
    assert (out / "samples.parquet").exists()
    for png in ("projection.png", "doa_boxplots.png"):
        assert (out / "plots" / png).stat().st_size > 5000
        assert f"plots/{png}" in md
    assert rep["step"] == 8 and set(rep["rows"]) == {"elsa", "semantic_only"}
    assert _finite_numbers(rep) == []
    assert rep["counts"]["test_spatial"] > 0 and rep["counts"]["test_nonspatial"] > 0

    for row in rep["rows"].values():
        sets = {r["set"]: r for r in row["retrieval"]}
        assert {"demo/spatial", "demo/spatial_small", "demo/nonspatial"} <= set(sets)
        for r in sets.values():
            assert len(r["metrics"]) == 8
            assert all(isinstance(v, float) and 0.0 <= v <= 1.0 for v in r["metrics"].values())
        zs = row["zero_shot"]
        assert set(zs) == {"distance", "direction", "elevation", "size", "reverb"}
        assert zs["direction"]["classes"] == ["front", "left", "right", "back"]
        assert zs["direction"]["prompts"][1] == "A sound coming from the left"
        assert zs["direction"]["n"] > 0 and 0.0 <= zs["direction"]["accuracy"] <= 1.0  # recorded
        for z in zs.values():  # None only where no test sample has a word for the attribute
            assert (z["accuracy"] is None) == (z["n"] == 0)
        doa = row["doa"]
        assert 0.0 <= doa["mae_deg"] <= 180.0 and doa["n_test"] == rep["counts"]["test_spatial"]
        assert set(doa["breakdown"]) == {
            "azimuth_deg",
            "elevation_deg",
            "distance_m",
            "floor_area_m2",
            "t30_s",
        }
        assert sum(b["n"] for b in doa["breakdown"]["azimuth_deg"]) == doa["n_test"]
        swap = row["direction_swap"]
        assert [r["direction"] for r in swap["rows"]] == ["left", "front", "right", "back"]
        assert 0.0 <= swap["classifier_accuracy"] <= 1.0
        if TAU_WAV.exists():
            real = row["real"]["tut2018-split1_ir0_ov1_1_first1s"]
            assert real["n_test"] == 1 and "cough" in real["by_class"]
    # the baseline is a different model: the probe sees other embeddings
    assert rep["rows"]["elsa"]["doa"]["mae_deg"] != rep["rows"]["semantic_only"]["doa"]["mae_deg"]
    # the headline the CLI returns is the report's
    assert (
        result["headline"]["elsa"]["zero_shot_direction_accuracy"]
        == rep["headline"]["elsa"]["zero_shot_direction_accuracy"]
    )
    assert result["report_json"].endswith("report.json")


def test_evaluation_is_deterministic(trained: dict, loaded: dict):
    from training.evaluate import EvaluationConfig, evaluate

    cfg = EvaluationConfig(
        checkpoint=trained["run"], shards=trained["shards"], device="cpu", probes=False, baseline=False
    )
    a = evaluate(cfg, **loaded)
    b = evaluate(cfg, **loaded)
    ra = {r.set: r.metrics for r in a.rows["elsa"].retrieval}
    assert ra == {r.set: r.metrics for r in b.rows["elsa"].retrieval}
    assert a.rows["elsa"].zero_shot["direction"] == b.rows["elsa"].zero_shot["direction"]
    assert a.rows["elsa"].doa is None and a.projection is None


# --------------------------------------------------------------------------------------------
# bad input


def test_nan_embeddings_are_a_clear_error(trained: dict, loaded: dict, monkeypatch: pytest.MonkeyPatch):
    import torch

    from training.evaluate import EvaluationConfig, evaluate

    model = loaded["model"]
    real = model.encode_audio

    def nan_audio(mel, iv, zero_spatial=False):
        out = real(mel, iv, zero_spatial)
        out[0, 0] = torch.nan
        return out

    monkeypatch.setattr(model, "encode_audio", nan_audio)
    cfg = EvaluationConfig(
        checkpoint=trained["run"], shards=trained["shards"], device="cpu", probes=False, baseline=False
    )
    with pytest.raises(NonFiniteEmbeddingError, match="NaN"):
        evaluate(cfg, **loaded)


def test_empty_test_set_is_a_clear_error(trained: dict, loaded: dict, tmp_path: Path):
    from training.evaluate import EvaluationConfig, evaluate

    cfg = EvaluationConfig(
        checkpoint=trained["run"], shards=trained["shards"], test_split="holdout", device="cpu"
    )
    with pytest.raises(EmptyEvaluationSetError, match=r"'holdout'.*no shards"):
        evaluate(cfg, **loaded)
    (tmp_path / "test").mkdir()
    with tarfile.open(tmp_path / "test" / "test-000000.tar", "w"):
        pass  # a shard with no sample in it
    cfg = EvaluationConfig(checkpoint=trained["run"], shards=str(tmp_path), device="cpu")
    with pytest.raises(EmptyEvaluationSetError, match="no readable sample"):
        evaluate(cfg, **loaded)


def test_mismatched_counts_are_a_clear_error():
    from training.direction_swap import direction_swap
    from training.doa_probe import train_doa_probe
    from training.zero_shot import zero_shot_attribute

    e = np.eye(4, dtype=np.float32)
    with pytest.raises(CountMismatchError, match="3 labels for 4"):
        zero_shot_attribute(
            "distance", e, np.array(["near", "far", None], dtype=object), ["near", "far"], e[:2]
        )
    with pytest.raises(CountMismatchError, match="2 classes but 3"):
        zero_shot_attribute("distance", e, np.array(["near"] * 4, dtype=object), ["near", "far"], e[:3])
    with pytest.raises(CountMismatchError, match="targets"):
        train_doa_probe(e, np.zeros(3), np.zeros(3))
    protos = {d: e[i] for i, d in enumerate(("left", "front", "right", "back"))}
    words = np.array(["left", "front", "right", "back"], dtype=object)
    with pytest.raises(CountMismatchError, match="relevant has 2 rows and test_words 4 for 4"):
        direction_swap(e, words, e, words, protos, e, np.zeros((2, 1), np.int64))
    with pytest.raises(EmptyEvaluationSetError, match="no test sample with a direction word"):
        direction_swap(e, words, e, np.array([None] * 4, dtype=object), protos, e, np.zeros((4, 1), np.int64))


# --------------------------------------------------------------------------------------------
# the pieces on embeddings with known answers


def _toy(n_per: int = 6, seed: int = 0) -> dict:
    """8-d embeddings: dims 0-3 one-hot direction, dims 4-7 one-hot sound; captions = the sound."""
    rng = np.random.default_rng(seed)
    dirs = ("left", "front", "right", "back")
    d = np.repeat(np.arange(4), n_per)
    s = rng.integers(0, 4, d.size)
    x = np.zeros((d.size, 8), np.float32)
    x[np.arange(d.size), d] = 1.0
    x[np.arange(d.size), 4 + s] = 1.0
    x += 0.05 * rng.standard_normal(x.shape).astype(np.float32)
    x /= np.linalg.norm(x, axis=1, keepdims=True)
    return {
        "emb": x,
        "words": np.array([dirs[i] for i in d], dtype=object),
        "sound": s,
        "protos": {w: np.eye(8, dtype=np.float32)[i] for i, w in enumerate(dirs)},
        "captions": np.eye(8, dtype=np.float32)[4:],
    }


def test_shared_captions_are_counted():
    from training.evaluate import shared_captions

    assert shared_captions([["a dog", "a cat"], ["a dog"], ["a car"], ["a car", "rain"]]) == 2
    assert shared_captions([["a dog", "a dog"], ["rain"]]) == 0  # twice within one clip is not shared


def test_zero_shot_on_known_embeddings():
    from training.zero_shot import zero_shot_attribute

    t = _toy()
    classes = ["front", "left", "right", "back"]
    prompts = np.stack([t["protos"][c] for c in classes])
    z = zero_shot_attribute("direction", t["emb"], t["words"], classes, prompts)
    assert z.accuracy == 1.0 and z.query_top1 == 1.0 and z.n == 24 and z.chance == 0.25
    assert z.confusion == [[6, 0, 0, 0], [0, 6, 0, 0], [0, 0, 6, 0], [0, 0, 0, 6]]
    words = t["words"].copy()
    words[:6] = None  # no word: left out, as in the captions
    z = zero_shot_attribute("direction", t["emb"], words, classes, prompts)
    assert z.n == 18 and z.n_per_class["left"] == 0 and z.recall_per_class["left"] is None


def test_direction_swap_on_known_embeddings():
    from training.direction_swap import direction_swap
    from training.doa_probe import ProbeConfig

    tr, te = _toy(seed=1), _toy(seed=2)
    res = direction_swap(
        tr["emb"],
        tr["words"],
        te["emb"],
        te["words"],
        te["protos"],
        te["captions"],
        te["sound"][:, None],
        ProbeConfig(steps=400, lr=1e-2),
    )
    assert res.classifier_accuracy == 1.0 and res.classifier_params == 8 * 64 + 64 + 64 * 4 + 4
    assert res.swap_accuracy == 1.0  # swapping the direction prototype moves the class ...
    assert res.swap_delta_r_at_10 == 0.0  # ... and leaves the sound where it was
    assert all(r.n == 6 and r.excluded == 0 and r.r_at_10 == 1.0 for r in res.rows)


def test_doa_probe_learns_directions_from_embeddings_that_hold_them():
    from training.doa_probe import (
        ProbeConfig,
        angular_errors_deg,
        directions_from_angles,
        summarise,
        train_doa_probe,
    )

    rng = np.random.default_rng(0)
    az, el = rng.uniform(-180, 180, 400), rng.uniform(-40, 40, 400)
    v = directions_from_angles(az, el)
    emb = np.concatenate([v, rng.standard_normal((400, 13)).astype(np.float32) * 0.1], axis=1)
    probe = train_doa_probe(emb[:300], az[:300], el[:300], ProbeConfig(steps=600, lr=1e-2))
    assert probe.n_params == 16 * 64 + 64 + 64 * 3 + 3
    err = angular_errors_deg(probe(emb[300:]), v[300:])
    res = summarise(err, 300, probe.n_params, dims={"azimuth_deg": az[300:]}, n_bins=10)
    assert res.mae_deg < 20.0  # chance is about 90
    assert len(res.breakdown["azimuth_deg"]) == 10 and sum(b.n for b in res.breakdown["azimuth_deg"]) == 100


# --------------------------------------------------------------------------------------------
# real-recording loaders


@pytest.mark.realdata
@pytest.mark.skipif(not LABELS_ONLY.exists(), reason="../shared/realdata is absent")
def test_real_label_files_parse():
    from training.real_recordings import isolate, read_starss_csv, read_tut_csv

    ov1 = read_tut_csv(LABELS_ONLY / "tau2019_split1_ir1_ov1_21.csv")
    assert len(ov1) == 27 and ov1[0].label == "doorslam"
    assert (ov1[0].azimuth_deg, ov1[0].elevation_deg, ov1[0].distance_m) == (-130.0, 40.0, 1.0)
    assert len(isolate(ov1)) == len(ov1)  # one source at a time: nothing to cut
    ov2 = read_tut_csv(LABELS_ONLY / "tau2019_split1_ir0_ov2_11.csv")
    assert len(ov2) == 54
    iso = isolate(ov2)
    assert len(iso) > 0 and sum(e.end_s - e.start_s for e in iso) < sum(e.end_s - e.start_s for e in ov2)
    for a in iso:  # a kept piece overlaps only the event it was cut from
        assert len([o for o in ov2 if o.start_s < a.end_s and o.end_s > a.start_s]) == 1
    starss = read_starss_csv(LABELS_ONLY / "starss2022_fold3_room21_mix001_soundata_excerpt.csv")
    first = starss[0]
    assert first.label == "male speech" and first.source == 1 and first.distance_m is None
    assert first.azimuth_deg == pytest.approx(-98.0) and first.elevation_deg == pytest.approx(-16.0)
    assert first.end_s - first.start_s <= 1.0 + 1e-9  # tracks cut into ≤ 1 s chunks
    assert (
        len(read_starss_csv(LABELS_ONLY / "tau_nigens2020_fold1_room1_mix001_ov1_soundata_fixture.csv")) > 0
    )


def test_starss23_distance_and_bad_files(tmp_path: Path):
    from training.real_recordings import RealDataError, read_starss_csv, read_tut_csv

    p = tmp_path / "fold4_room23_mix001.csv"
    p.write_text(
        "10,1,1,-50,30,180\n11,1,1,-50,30,180\n11,1,2,10,-20,243\n12,1,2,10,-20,243\n13,8,0,-40,0,300\n"
    )
    ev = read_starss_csv(p)
    assert [(e.label, e.start_s, e.end_s, e.distance_m) for e in ev] == [
        ("male speech", 1.0, 1.2, 1.8),
        ("male speech", 1.1, 1.3, 2.43),
        ("music", 1.3, 1.4, 3.0),
    ]
    bad = tmp_path / "bad.csv"
    bad.write_text("sound_event_recording,start_time,end_time,azi,ele,dist\nx,0,1,0,0,1\n")
    with pytest.raises(RealDataError, match="expected header"):
        read_tut_csv(bad)
    bad.write_text("1,2,3\n")
    with pytest.raises(RealDataError, match="5 or 6 columns"):
        read_starss_csv(bad)


def test_real_segments_resampled_and_pointing_the_right_way(tmp_path: Path):
    """A 24 kHz SN3D plane wave from the left (STARSS's rate) comes out at 48 kHz, still from the left."""
    from tasks.ambisonics import real_sh_sn3d
    from tasks.doa import intensity_doa
    from training.real_recordings import load_real_set

    sr = 24000
    x = np.random.default_rng(0).standard_normal(sr * 2) * 0.1
    g = real_sh_sn3d(1, np.radians([90.0]), np.radians([20.0]))[:, 0]
    sf.write(tmp_path / "rec.wav", (g[:, None] * x[None]).T, sr, subtype="FLOAT")
    (tmp_path / "rec.csv").write_text("".join(f"{f},3,0,90,20,150\n" for f in range(5, 15)))
    segs = load_real_set("starss23", tmp_path / "rec.wav", tmp_path / "rec.csv")
    assert [(s.label, s.start_s, s.end_s, s.distance_m) for s in segs] == [("telephone", 0.5, 1.5, 1.5)]
    assert segs[0].foa.shape == (4, 48000)
    est = intensity_doa(segs[0].foa.astype(np.float64), 48000)
    assert est.azimuth_deg == pytest.approx(90.0, abs=2.0) and est.elevation_deg == pytest.approx(
        20.0, abs=2.0
    )


@pytest.mark.realdata
@pytest.mark.skipif(not TAU_WAV.exists(), reason="../shared/realdata is absent")
def test_tau2019_sample_smoke():
    """The real TAU SSE 2019 clip: one isolated event in its first second, and its audio agrees."""
    from tasks.doa import intensity_doa
    from training.real_recordings import load_real_set

    segs = load_real_set("tut2018", TAU_WAV, TAU_CSV)
    assert len(segs) == 1
    s = segs[0]
    assert (s.label, s.azimuth_deg, s.elevation_deg) == ("cough", -10.0, -10.0)
    assert s.start_s == pytest.approx(0.36645229108) and s.end_s == pytest.approx(
        1.0
    )  # cut at the file's end
    est = intensity_doa(s.foa.astype(np.float64), 48000)
    assert est.azimuth_deg == pytest.approx(-10.0, abs=10.0) and est.elevation_deg == pytest.approx(
        -10.0, abs=12.0
    )
