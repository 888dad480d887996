"""Training end to end: 2-rank torchrun on S3 shards with exact resume, the learning test, the CLI,
the PyTorchJob manifest, and a CUDA/bf16 run where a GPU exists."""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import pytest
import torch
import yaml
from training_helpers import LEARN, SMALL, TEST_FEATURES, pipeline_build, shards, tiny_model_config

from training.config import (
    DataConfig,
    EvalConfig,
    FeatureConfig,
    ModelConfig,
    OptimConfig,
    ShardSource,
    SpatialBranchConfig,
    TrainConfig,
)
from training.launch import launch, read_log


def _tiny_cfg(root: str, run_dir: Path, **kw: object) -> TrainConfig:
    base: dict = dict(
        run_dir=str(run_dir),
        task="elsa",
        features=TEST_FEATURES,
        model=tiny_model_config(),
        data=DataConfig(
            sources=[ShardSource(root=root)],
            batch_size=4,
            num_workers=1,
            shuffle_buffer=16,
            batches_per_epoch=8,
        ),
        optim=OptimConfig(lr=2e-3, warmup_steps=3, max_steps=20),
        checkpoint_every=10,
        log_every=1,
    )
    base.update(kw)
    return TrainConfig(**base)


def _steps(log: list[dict]) -> dict[int, dict]:
    return {r["step"]: r for r in log if "loss" in r}


@pytest.mark.slow
@pytest.mark.s3
def test_torchrun_two_ranks_on_s3_shards_and_exact_resume(s3, tmp_path: Path) -> None:
    # Shards from a real demo build (the Prefect flow) written to the local S3 server.
    root = pipeline_build(s3.root, SMALL)["uri"]
    assert root.startswith("s3://")
    cfg = _tiny_cfg(root, tmp_path / "a")
    a = launch(cfg, nproc=2, timeout_s=420, threads_per_proc=1)
    assert a["world_size"] == 2 and a["backend"] == "gloo" and a["step"] == 20
    log_a = _steps(read_log(cfg.run_dir))
    assert sorted(log_a) == list(range(1, 21))
    first = sum(log_a[s]["loss"] for s in range(1, 6)) / 5
    last = sum(log_a[s]["loss"] for s in range(16, 21)) / 5
    assert last < first, (first, last)
    ck = tmp_path / "a" / "checkpoints"
    assert (ck / "latest").read_text() == "step-00000020"
    assert {p.name for p in (ck / "step-00000010").iterdir()} >= {
        "state.pt",
        "meta.json",
        "rng-rank0.pt",
        "rng-rank1.pt",
    }

    # resume from step 10 in a fresh run directory: step 11 sees the same batch, same weights, same RNG
    cfg_b = cfg.model_copy(
        update={"run_dir": str(tmp_path / "b"), "resume_from": str(ck / "step-00000010"), "stop_at_step": 11}
    )
    b = launch(cfg_b, nproc=2, timeout_s=300, threads_per_proc=1)
    log_b = read_log(cfg_b.run_dir)
    assert log_b[0] == {**log_b[0], "event": "resume", "step": 10}
    steps_b = _steps(log_b)
    assert sorted(steps_b) == [11] and b["step"] == 11
    print("step 11 loss, continuous vs resumed:", log_a[11]["loss"], steps_b[11]["loss"])
    for k in ("loss", "clip", "direction", "distance", "area"):
        assert abs(steps_b[11][k] - log_a[11][k]) < 1e-6, (k, steps_b[11][k], log_a[11][k])

    # what evaluation loads
    from training.checkpoint import load_trained

    model, tok, got_cfg = load_trained(tmp_path / "a")
    assert got_cfg.task == "elsa" and tok is not None
    emb = model.encode_audio(torch.randn(2, 1, 101, 64), torch.randn(2, 6, 101, 64))
    assert emb.shape == (2, 32) and torch.allclose(emb.norm(dim=-1), torch.ones(2), atol=1e-5)


@pytest.mark.slow
def test_spatial_branch_learns_direction_from_rendered_audio(tmp_path: Path) -> None:
    """Full-size spatial branch + heads on the spatial samples of a demo build (314 train samples
    at 136 source positions): the held-out mean angular error (52 test samples at 23 positions in
    unseen rooms) falls far below chance (~90 degrees)."""
    from training.pretrain_spatial import run

    root = str(shards(LEARN))
    cfg = TrainConfig(
        run_dir=str(tmp_path / "spatial"),
        task="spatial",
        features=FeatureConfig(clip_s=1.5),
        model=ModelConfig(spatial=SpatialBranchConfig()),
        data=DataConfig(
            sources=[ShardSource(root=root, only="spatial")],
            batch_size=16,
            num_workers=1,
            shuffle_buffer=64,
            batches_per_epoch=15,
        ),
        optim=OptimConfig(lr=1e-3, weight_decay=0.01, warmup_steps=4, max_steps=40),
        eval=EvalConfig(root=root, split="test", every=8, batch_size=32, at_start=True),
        checkpoint_every=1000,
        log_every=10,
        torch_threads=2,
    )
    summary = run(cfg)
    curve = [
        (r["step"], round(r["eval"]["angular_error_deg"], 1)) for r in read_log(cfg.run_dir) if "eval" in r
    ]
    print("learning curve (step, held-out mean angular error deg):", curve, "elapsed_s", summary["elapsed_s"])
    (tmp_path / "curve.json").write_text(json.dumps(curve))
    assert curve[0][0] == 0 and curve[0][1] > 70  # chance before training
    assert summary["eval"]["angular_error_deg"] < 60, curve
    assert Path(summary["spatial_branch"]).exists()


@pytest.mark.slow
def test_cli_train_runs_torchrun(tmp_path: Path) -> None:
    from spatial_audiocaps.cli_train import add_commands
    from training.config import TINY_SPATIAL, dump_train_config

    cfg = _tiny_cfg(
        str(shards()),
        tmp_path / "run",
        task="spatial",
        model=ModelConfig(spatial=TINY_SPATIAL),
        optim=OptimConfig(lr=1e-3, warmup_steps=0, max_steps=3),
        checkpoint_every=3,
    )
    path = dump_train_config(cfg, tmp_path / "cfg.yaml")
    parser = argparse.ArgumentParser()
    add_commands(parser.add_subparsers(dest="command"))
    args = parser.parse_args(["train", "--config", str(path), "--nproc", "1", "--max-steps", "2"])
    out = args.func(args)
    json.dumps(out)  # what the CLI prints
    assert out["step"] == 2 and out["task"] == "spatial" and Path(out["spatial_branch"]).exists()


def test_pytorchjob_manifest(tmp_path: Path) -> None:
    from spatial_audiocaps.cli_train import add_commands

    cfg = _tiny_cfg("s3://bucket/datasets/spatial_audiocaps/v1", Path("/runs/elsa-1"))
    from training.config import dump_train_config

    path = dump_train_config(cfg, tmp_path / "cfg.yaml")
    parser = argparse.ArgumentParser()
    add_commands(parser.add_subparsers(dest="command"))
    out = tmp_path / "job.yaml"
    args = parser.parse_args(
        [
            "train-manifest",
            "--config",
            str(path),
            "--name",
            "elsa-1",
            "--image",
            "registry.example/elsa-trainer:0.1",
            "--nnodes",
            "3",
            "--nproc-per-node",
            "8",
            "--endpoint-url",
            "https://s3.example",
            "--out",
            str(out),
        ]
    )
    assert args.func(args)["kind"] == "PyTorchJob"
    cm, job = list(yaml.safe_load_all(out.read_text()))
    assert (
        cm["kind"] == "ConfigMap" and job["kind"] == "PyTorchJob" and job["apiVersion"] == "kubeflow.org/v1"
    )
    assert TrainConfig.model_validate(yaml.safe_load(cm["data"]["train.yaml"])) == cfg
    reps = job["spec"]["pytorchReplicaSpecs"]
    assert reps["Master"]["replicas"] == 1 and reps["Worker"]["replicas"] == 2
    assert job["spec"]["nprocPerNode"] == "8"
    c = reps["Worker"]["template"]["spec"]["containers"][0]
    assert c["name"] == "pytorch" and c["command"][:3] == ["torchrun", "-m", "training.train"]
    assert c["resources"]["limits"]["nvidia.com/gpu"] == 8
    assert {"name": "AWS_ENDPOINT_URL", "value": "https://s3.example"} in c["env"]
    assert c["envFrom"] == [{"secretRef": {"name": "elsa-s3"}}]
    assert "SECRET" not in out.read_text().upper().replace("SECRETREF", "")
    from training.k8s import PyTorchJobSpec, render_manifests

    with pytest.raises(ValueError, match="shared volume"):
        render_manifests(PyTorchJobSpec(name="x", image="i"), cfg.model_copy(update={"run_dir": "/tmp/x"}))


@pytest.mark.gpu
def test_cuda_bf16_run_with_device_features(tmp_path: Path) -> None:
    if not torch.cuda.is_available():
        pytest.skip("CUDA not available")
    from training.train import run

    cfg = _tiny_cfg(
        str(shards()),
        tmp_path / "gpu",
        device="cuda",
        precision="bf16",
        features_on="device",
        optim=OptimConfig(lr=1e-3, warmup_steps=1, max_steps=6),
        checkpoint_every=6,
    )
    s = run(cfg)
    assert s["bf16"] and s["device"].startswith("cuda") and s["step"] == 6
    log = _steps(read_log(cfg.run_dir))
    assert all(r["loss"] is not None for r in log.values())


def test_resume_with_another_data_layout_starts_a_fresh_epoch(tmp_path: Path) -> None:
    from training.config import TINY_SPATIAL
    from training.train import run

    cfg = _tiny_cfg(
        str(shards()),
        tmp_path / "r",
        task="spatial",
        model=ModelConfig(spatial=TINY_SPATIAL),
        optim=OptimConfig(lr=1e-3, warmup_steps=0, max_steps=4),
        checkpoint_every=2,
    )
    cfg = cfg.model_copy(update={"data": cfg.data.model_copy(update={"num_workers": 0})})
    assert run(cfg.model_copy(update={"stop_at_step": 2}))["step"] == 2
    wider = cfg.model_copy(update={"data": cfg.data.model_copy(update={"batch_size": 6})})
    assert run(wider)["step"] == 4  # resumes from the run dir's latest checkpoint
    events = [r.get("event") for r in read_log(cfg.run_dir)]
    assert events.count("resume") == 1 and "data_layout_changed" in events
