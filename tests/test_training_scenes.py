"""Training and evaluation on scene samples: the loader's target mask, the masked losses, and the
frame-wise localisation of the evaluation.

The scene samples are rendered here with the project's engine (tasks.rir_engine RIRs of one shoebox,
tasks.audio_prep convolution and FLAC): one static source at +60 deg for the whole clip, and two
sources, +60 deg then -60 deg, overlapping for 200 ms. Their json ``sources`` carry the true frame
labels; beside them an ELSA sample (no ``sources``), a scene whose one source moves, and a mono
original, all in one tar written by tasks.shard_writer.write_tar.
"""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np
import pytest
import torch
from training_helpers import TEST_FEATURES

from schemas.captions import Descriptors
from schemas.rooms import SURFACES, RirSettings, RoomSpec, Surface
from schemas.scenes import LABEL_FRAME_S, FrameLabel, SceneSourceLabels
from schemas.shards import CaptionInfo, Provenance, SampleRecord, SpatialLabels
from tasks import audio_prep as ap
from tasks.rir_engine import render_rir
from tasks.shard_writer import ShardSample, build_sample, write_tar
from training.config import LossConfig
from training.data import decode_audio, eval_loader, has_source_target
from training.losses import spatial_terms
from training.scene_eval import SceneFrameConfig, intensity_errors, model_windows, solo_frames

FS = 48000
DURATION_S = 3.0
N_FRAMES = round(DURATION_S / LABEL_FRAME_S)
RECEIVER = (3.0, 2.5, 1.5)
DISTANCE_M = 1.5
ROOM = RoomSpec(
    room_id="scene_room",
    dims_m=(6.0, 5.0, 3.0),
    surfaces=dict.fromkeys(SURFACES, Surface(material="x", absorption=[0.5] * 8, scattering=[0.1] * 8)),
    target_t30_s=0.3,
)
# (azimuth, first frame, last frame): A sounds for 0-1.6 s, B for 1.4-3.0 s; frames 14 and 15 hold both.
A, B = (60.0, 0, 15), (-60.0, 14, N_FRAMES - 1)


def _rir(az_deg: float) -> ap.RirSpectrum:
    a = math.radians(az_deg)
    src = (RECEIVER[0] + DISTANCE_M * math.cos(a), RECEIVER[1] + DISTANCE_M * math.sin(a), RECEIVER[2])
    settings = RirSettings(calibrate=False, late_tail=False, max_ism_order=6)
    return ap.RirSpectrum.from_rir(render_rir(ROOM, RECEIVER, src, settings=settings).rir)


def _render(parts: list[tuple[float, int, int]], seed: int) -> np.ndarray:
    """FOA mix of white-noise sources, each sounding on its frames [first, last]."""
    n = round(DURATION_S * FS)
    rng = np.random.default_rng(seed)
    mix = np.zeros((4, n), np.float32)
    for az, first, last in parts:
        x = np.zeros(n, np.float32)
        a, b = round(first * LABEL_FRAME_S * FS), round((last + 1) * LABEL_FRAME_S * FS)
        x[a:b] = rng.standard_normal(b - a).astype(np.float32)
        mix += ap.convolve(x, _rir(az))[:, :n]
    return 0.5 * mix / np.abs(mix).max()


def _source(i: int, part: tuple[float, int, int], motion: str = "static") -> SceneSourceLabels:
    az, first, last = part
    return SceneSourceLabels(
        index=i,
        class_index=i,
        dataset="demo",
        clip_id=f"src{i}",
        original_text=[f"sound {i}"],
        onset_s=first * LABEL_FRAME_S,
        offset_s=(last + 1) * LABEL_FRAME_S,
        motion=motion,  # type: ignore[arg-type]
        speed=None if motion == "static" else 0.5,
        gain_db=0.0,
        level_db=0.0,
        frames=[
            FrameLabel(frame=f, azimuth_deg=az, elevation_deg=0.0, distance_m=DISTANCE_M)
            for f in range(first, last + 1)
        ],
    )


def _sample(
    clip_id: str, audio: np.ndarray, sources: list[SceneSourceLabels] | None, spatial: bool = True
) -> ShardSample:
    caption = f"a {clip_id} sound from the left" if spatial else f"a {clip_id} sound"
    labels = SpatialLabels(
        azimuth_deg=A[0], elevation_deg=0.0, distance_m=DISTANCE_M, t30_s=0.3, drr_db=3.0,
        floor_area_m2=ROOM.floor_area_m2, volume_m3=ROOM.volume_m3, room_dims_m=ROOM.dims_m,
        direct_doa_error_deg=0.5, room_id=ROOM.room_id, placement_id=f"p-{clip_id}",
    )
    s = build_sample(
        ap.encode_flac(audio, FS),
        dataset="scenes",
        split="test",
        clip_id=clip_id,
        aug=1 if spatial else 0,
        captions=[CaptionInfo(original=f"a {clip_id} sound", spatial=caption, backend="template",
                              attempts=1, validated=True, fallback=False)],
        provenance=Provenance(source_dataset="demo", source_id=clip_id, pipeline_version="test", seed=0),
        labels=labels if spatial else None,
        descriptors=Descriptors(direction="left") if spatial else None,
    )
    if sources is None:
        return s
    record = SampleRecord.model_validate(
        {**s.record.model_dump(), "sources": [x.model_dump() for x in sources]}
    )
    return ShardSample(key=s.key, flac=s.flac, record=record)


TWO = [_source(0, A), _source(1, B)]


@pytest.fixture(scope="module")
def scene_root(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A shard root whose test and train splits hold the five samples of the module docstring."""
    one = _render([(A[0], 0, N_FRAMES - 1)], seed=1)
    samples = [
        _sample("two", _render([A, B], seed=2), TWO),
        _sample("one", one, [_source(0, (A[0], 0, N_FRAMES - 1))]),
        _sample("moving", one, [_source(0, (A[0], 0, N_FRAMES - 1), motion="linear")]),
        _sample("elsa", one, None),
        _sample("mono", one[:1], None, spatial=False),
    ]
    root = tmp_path_factory.mktemp("scenes")
    for split in ("test", "train"):
        (root / split).mkdir()
        with open(root / split / f"{split}-000000.tar", "wb") as fh:
            write_tar(samples, fh)
    return root


def _batch(root: Path) -> dict:
    (b,) = list(eval_loader(str(root), "test", TEST_FEATURES, batch_size=8))
    return b


def _row(b: dict, clip: str) -> int:
    return b["keys"].index(f"scenes-test-{clip}-{0 if clip == 'mono' else 1}")


def test_loader_yields_scene_samples_with_their_target_mask(scene_root: Path):
    b = _batch(scene_root)
    assert len(b["keys"]) == 5
    want = {"two": False, "one": True, "moving": False, "elsa": True, "mono": False}
    for clip, target in want.items():
        i = _row(b, clip)
        assert bool(b["source_target"][i]) is target, clip
        assert bool(b["spatial"][i]) is (clip != "mono"), clip
        # direction, distance and DRR are targets only under the mask; room targets on every spatial sample
        assert bool(torch.isfinite(b["direction"][i]).all()) is target, clip
        assert bool(torch.isfinite(b["distance_m"][i])) is target, clip
        assert bool(torch.isfinite(b["drr_db"][i])) is target, clip
        assert bool(torch.isfinite(b["floor_area_m2"][i])) is (clip != "mono"), clip
    i = _row(b, "one")
    assert torch.allclose(b["direction"][i], torch.tensor([0.5, math.sqrt(3) / 2, 0.0]), atol=1e-6)


def test_masked_loss_ignores_targets_of_multi_source_samples(scene_root: Path):
    b = _batch(scene_root)
    g = torch.Generator().manual_seed(0)
    n = len(b["keys"])
    pred = {"direction": torch.randn(n, 3, generator=g), "distance": torch.rand(n, generator=g) * 3,
            "area": torch.rand(n, generator=g), "t30": torch.rand(n, generator=g),
            "drr": torch.rand(n, generator=g)}
    cfg = LossConfig()
    base = spatial_terms(pred, b, cfg)
    i = _row(b, "two")
    wrong = dict(b)
    wrong["direction"] = b["direction"].clone()
    wrong["direction"][i] = torch.tensor([-1.0, 0.0, 0.0])  # a finite, wrong direction target
    wrong["distance_m"] = b["distance_m"].clone()
    wrong["distance_m"][i] = 99.0
    wrong["drr_db"] = b["drr_db"].clone()
    wrong["drr_db"][i] = -40.0  # source 0's first point's DRR is not the mixture's
    for k, v in spatial_terms(pred, wrong, cfg).items():
        assert torch.equal(v, base[k]), k
    # the mean runs over the target rows only: the same as a batch of just those rows
    rows = b["source_target"].nonzero()[:, 0]
    sub = {k: v[rows] for k, v in b.items() if isinstance(v, torch.Tensor)}
    sub_terms = spatial_terms({k: v[rows] for k, v in pred.items()}, sub, cfg)
    for k in ("direction", "distance", "drr"):
        assert float(base[k]) == pytest.approx(float(sub_terms[k]), rel=1e-6)
    # room targets still count the multi-source sample
    room = dict(b)
    room["floor_area_m2"] = b["floor_area_m2"].clone()
    room["floor_area_m2"][i] = 500.0
    assert float(spatial_terms(pred, room, cfg)["area"]) != pytest.approx(float(base["area"]))
    # a batch built without the mask (ELSA) uses its spatial samples, as before
    elsa = {k: v for k, v in sub.items() if k != "source_target"}
    for k, v in spatial_terms({k: v[rows] for k, v in pred.items()}, elsa, cfg).items():
        assert torch.equal(v, sub_terms[k]), k


def test_has_source_target_is_one_static_source():
    one = _sample("x", np.zeros((4, 4800), np.float32) + 1e-3, None).record
    assert has_source_target(one)
    scene = {**one.model_dump(), "sources": [TWO[0].model_dump()]}
    assert has_source_target(SampleRecord.model_validate(scene))
    scene["sources"] = [s.model_dump() for s in TWO]
    assert not has_source_target(SampleRecord.model_validate(scene))


def test_solo_frames_and_model_windows():
    frames = solo_frames(TWO)
    assert [f.frame for f in frames] == [*range(14), *range(16, N_FRAMES)]  # 14 and 15 hold both
    by = {f.frame: f for f in frames}
    assert by[5].source == 0 and by[5].run == (0, 13) and by[5].azimuth_deg == 60.0
    assert by[20].source == 1 and by[20].run == (16, N_FRAMES - 1)
    cfg = SceneFrameConfig(model_window_s=1.0, model_every=1)
    wins = {frames[i].frame: (a, b) for i, a, b in model_windows(round(DURATION_S * FS), FS, frames, cfg)}
    assert len(wins) == len(frames)
    assert wins[13] == (round(0.85 * FS), round(1.4 * FS))  # cut to A's solo run: B starts at 1.4 s
    assert wins[16] == (round(1.6 * FS), round(2.15 * FS))
    assert all(b - a <= FS for a, b in wins.values())


def test_intensity_frame_errors_follow_the_labels(scene_root: Path):
    from tasks.shard_reader import read_shard

    (two,) = [s for s in read_shard(str(scene_root / "test" / "test-000000.tar")) if s.key.endswith("two-1")]
    foa = decode_audio(two.flac, two.record, FS)
    errors = intensity_errors(foa, FS, solo_frames(two.record.sources))
    assert errors.size == 28 and np.isfinite(errors).all()
    assert np.median(errors) < 10.0
    swapped = [_source(0, (B[0], A[1], A[2])), _source(1, (A[0], B[1], B[2]))]
    bad = intensity_errors(foa, FS, solo_frames(swapped))
    assert np.median(bad) > 90.0  # the two places are 120 deg apart


def test_evaluation_reports_frame_wise_localisation(scene_root: Path, tmp_path: Path):
    import json

    from training_helpers import tiny_model_config

    from training.evaluate import EvaluationConfig, evaluate
    from training.model import build_elsa
    from training.report import write_report

    torch.manual_seed(0)
    model, tok = build_elsa(tiny_model_config())
    cfg = EvaluationConfig(
        checkpoint="untrained", shards=str(scene_root), probes=True, baseline=False, device="cpu",
        scenes=SceneFrameConfig(model_every=7),
    )
    rep = evaluate(cfg, model=model, tokenizer=tok, features=TEST_FEATURES, max_text_len=32)
    sl = rep.scene_localisation
    assert sl is not None and sl.scene_samples == 3 and sl.solo_frames == 28 + 2 * N_FRAMES
    intensity, head = sl.estimators["intensity"], sl.estimators["model"]
    assert intensity.n_frames == 28 + 2 * N_FRAMES and intensity.n_samples == 3
    assert intensity.median_deg < 10.0 and intensity.within_share > 0.9
    assert head.n_frames == math.ceil(28 / 7) + 2 * math.ceil(N_FRAMES / 7)  # every 7th solo frame
    assert 0.0 <= head.within_share <= 1.0
    # label-based pieces (zero-shot, probe, swap, projection) take the samples with one direction
    # only: one, elsa; in both splits
    assert sorted(rep.samples["clip_id"]) == ["elsa", "one"]
    assert rep.counts["train_spatial"] == 2 and rep.counts["test_spatial"] == 4
    assert rep.rows["elsa"].doa is not None and rep.rows["elsa"].doa.n_test == 2
    assert rep.projection is not None and len(rep.projection.x) == 2 * 2
    assert any("frame-wise localisation" in n and "source 0's first point" in n for n in rep.notes)
    files = write_report(rep, tmp_path / "report")
    body = json.loads(Path(files.report_json).read_text())
    assert body["scene_localisation"]["estimators"]["intensity"]["n_frames"] == intensity.n_frames
    assert body["headline"]["scene_frames"]["intensity_median_deg"] == pytest.approx(intensity.median_deg)
    assert "within_20deg" in " ".join(body["headline"]["scene_frames"])
    assert "Frame-wise localisation on scenes" in Path(files.report_md).read_text()


def test_held_out_training_metrics_count_samples_with_one_direction(scene_root: Path, tmp_path: Path):
    from training.config import TINY_SPATIAL, DataConfig, EvalConfig, ShardSource, TrainConfig
    from training.distributed import DistInfo
    from training.model import SpatialPretrainModel
    from training.train import evaluate

    torch.manual_seed(0)
    cfg = TrainConfig(
        run_dir=str(tmp_path / "run"), task="spatial", features=TEST_FEATURES,
        data=DataConfig(sources=[ShardSource(root=str(scene_root))], num_workers=0),
        eval=EvalConfig(root=str(scene_root), split="test", batch_size=8),
    )
    info = DistInfo(rank=0, local_rank=0, world_size=1, device=torch.device("cpu"), backend=None)
    out = evaluate(SpatialPretrainModel(TINY_SPATIAL, head_hidden=16), cfg, info, None)
    assert out["n_spatial"] == 2  # one, elsa: the scenes with two sources or a moving one have no direction
    assert math.isfinite(out["angular_error_deg"]) and math.isfinite(out["distance_mae_m"])
