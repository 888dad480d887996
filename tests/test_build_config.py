"""One build config: a YAML file plus --set overrides through the CLI and the real flow; execution
knobs stay out of the version (a rebuild with other knobs skips every shard); bad overrides are
typed errors; the shard jobs the flow maps are joined by a pure function."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import yaml
from pydantic import ValidationError

from schemas.build import UNVERSIONED, BuildConfig, RunOptions
from schemas.captions import (
    CaptionSettings,
    Descriptors,
    EngineOptions,
    RephraseRequest,
    RephraseSettings,
)
from schemas.rooms import RirSettings
from schemas.scenes import SceneConfig
from spatial_audiocaps.cli import main
from tasks.build_file import BuildFileError, load_build, parse_override
from tasks.commit import config_hash
from tasks.plan import PlanItem
from tasks.rephrase.cache import cache_key
from tasks.shard_jobs import request_ids, shard_inputs, shard_refs
from tasks.shard_writer import ShardPlan

REPO = Path(__file__).resolve().parents[1]
DEMO = REPO / "configs" / "build-demo.yaml"
OTHER_ENGINE = EngineOptions(openai={"base_url": "http://10.0.0.9:9000/v1", "concurrency": 64,
                                     "timeout_s": 9.0},
                             vllm={"tensor_parallel_size": 4, "data_parallel_size": 2, "kv_cache_gib": 3.0,
                                   "gpu_memory_utilization": 0.5, "max_num_seqs": 7},
                             transformers={"device": "cpu", "batch_size": 3})


def test_the_sample_config_is_a_valid_build():
    config, run = load_build(DEMO)
    assert (config.source, config.limit, run.n_workers) == ("demo", 32, 2)


def test_overrides_apply_in_order_over_the_file_and_reach_nested_fields():
    config, run = load_build(DEMO, [parse_override(s) for s in (
        "limit=5", "limit=6", "rephraser.temperature=0.25", "config.audio.min_loop_s=2",
        "augmentations={train: 3, val: 2, test: 2}", "rir.late_tail=false", "n_rooms=null",
        "run.caption_batch=8", "engine.vllm.tensor_parallel_size=2", "scheduler_address=tcp://h:8786",
    )])
    assert config.limit == 6 and config.rephraser.temperature == 0.25 and config.audio.min_loop_s == 2.0
    assert config.augmentations == {"train": 3, "val": 2, "test": 2} and config.rir.late_tail is False
    assert config.n_rooms is None and config.rephraser.validation.min_content_recall == 0.6  # file kept
    assert run.caption_batch == 8 and run.engine.vllm.tensor_parallel_size == 2
    assert run.scheduler_address == "tcp://h:8786" and run.engine.openai.concurrency == 16


def test_the_two_models_share_no_field_so_a_bare_key_has_one_owner():
    assert not set(BuildConfig.model_fields) & set(RunOptions.model_fields)


def test_execution_knobs_never_enter_the_version():
    base = BuildConfig(source="demo", limit=4)
    versioned = json.dumps(base.versioned())
    for knob in (*RunOptions.model_fields, *EngineOptions.model_fields, "base_url", "tensor_parallel_size"):
        assert f'"{knob}"' not in versioned, knob
    # Where the inputs live is not versioned either; every data field is.
    moved = base.model_copy(update={"input": "/elsewhere", "room_config": "/x.yaml"})
    assert config_hash(moved.versioned()) == config_hash(base.versioned())
    changes = {"source": "csv", "dataset": "x", "room_seed": 1, "n_rooms": 9, "augmentations": {"train": 3},
               "rephraser": CaptionSettings(temperature=0.1), "shard_size": 3, "shard_membership": "locality",
               "seed": 1, "limit": 5,
               "rir": base.rir.model_copy(update={"order": 2}),
               "audio": base.audio.model_copy(update={"min_loop_s": 1.0}),
               "scenes": SceneConfig(sources={1: 1.0, 2: 1.0}), "formats": ("ambix", "binaural"),
               "room_source": "measured", "bank_format": "fuma"}
    assert set(changes) | UNVERSIONED == set(BuildConfig.model_fields)
    hashes = {config_hash(base.model_copy(update={k: v}).versioned()) for k, v in changes.items()}
    assert len(hashes) == len(changes) and config_hash(base.versioned()) not in hashes


def test_formats_put_the_flac_format_first_and_ambix_alone_leaves_the_version():
    assert BuildConfig(formats="binaural,foa").formats == ("foa", "binaural")
    assert BuildConfig(formats="mic").formats == ("ambix", "mic")
    assert BuildConfig(formats=["ambix"]).versioned() == BuildConfig().versioned()
    assert "formats" in BuildConfig(formats="foa").versioned()
    with pytest.raises(ValidationError, match="repeat"):
        BuildConfig(formats="foa,binaural,binaural")
    with pytest.raises(ValidationError, match=r"one \.flac format"):
        BuildConfig(formats="foa,ambix")
    with pytest.raises(ValidationError, match="FLAC holds at most 8"):
        BuildConfig(formats="binaural", rir=RirSettings(order=3))
    assert BuildConfig(formats="foa,binaural", rir=RirSettings(order=3)).formats == ("foa", "binaural")


def test_the_caption_cache_key_ignores_the_engine():
    req = RephraseRequest(sample_id="a#0", caption="a dog barks", descriptors=Descriptors(direction="left"))
    captions = CaptionSettings(backend="vllm", model="m")
    one = cache_key(req, "m", RephraseSettings.of(captions, EngineOptions()))
    assert one == cache_key(req, "m", RephraseSettings.of(captions, OTHER_ENGINE))
    assert one != cache_key(req, "m", RephraseSettings.of(captions.model_copy(update={"max_tokens": 9}),
                                                            EngineOptions()))


@pytest.mark.parametrize(("override", "needle"), [
    ("rephraser.temprature=0.5", "'rephraser.temprature': CaptionSettings has no field 'temprature'"),
    ("shards=3", "unknown key 'shards': no build field 'shards'"),
    ("limit.max=3", "config.limit is a value, not a section"),
    ("shard_size=many", "config.shard_size: Input should be a valid integer"),
    ("run.n_workers=0", "run.n_workers: Input should be greater than or equal to 1"),
    ("source=youtube", "config.source: Input should be"),
    ("augmentations.holdout=1", "config.augmentations.holdout"),
    ("limit", "override 'limit' is not key=value"),
    ("limit=[1", "value is not YAML"),
])
def test_a_bad_override_is_a_typed_error_and_exit_2(override, needle, capsys, tmp_path):
    with pytest.raises(BuildFileError) as err:
        load_build(DEMO, [parse_override(override)])
    assert needle in str(err.value)
    assert main(["build", "--config", str(DEMO), "--set", override, "--out", str(tmp_path)]) == 2
    out = capsys.readouterr()
    assert out.err.startswith("error: ") and needle in out.err and "Traceback" not in out.err
    assert not list(tmp_path.iterdir())  # nothing built


def test_a_bad_build_file_is_a_typed_error(tmp_path):
    cases = {"extra.yaml": "config: {}\nrender: {}\n", "list.yaml": "- 1\n",
             "typo.yaml": "config:\n  rephraser:\n    temprature: 1\n", "bad.yaml": "config: [\n"}
    for name, text in cases.items():
        (tmp_path / name).write_text(text)
        with pytest.raises(BuildFileError):
            load_build(tmp_path / name)
    with pytest.raises(BuildFileError, match=r"rephraser\.temprature"):
        load_build(tmp_path / "typo.yaml")
    with pytest.raises(BuildFileError, match="cannot read"):
        load_build(tmp_path / "missing.yaml")


def _item(key: str, split: str, placement: str | None, n_captions: int = 2) -> PlanItem:
    return PlanItem(key=key, dataset="d", split=split, clip_id=key, aug=0 if placement is None else 1,
                    placement_id=placement, captions=tuple(f"c{n}" for n in range(n_captions)),
                    audio_uri=f"demo://0/{key}", small_eval=False, seed=1)


def test_shard_inputs_name_exactly_what_their_samples_need():
    placed = {"p0": "bank/chunk-a.npz", "p1": "bank/chunk-a.npz", "p2": "bank/chunk-b.npz"}
    spatial = [_item(f"k{n}", "train", f"p{n % 3}", n_captions=1 + n % 2) for n in range(6)]
    items = [*spatial, _item("orig", "train", None), _item("lost", "train", "no-rir")]
    got, requested = shard_inputs(items, placed, first_request=10)
    assert requested == spatial  # the original has no request, the failed RIR neither
    assert got.requests == (10, 10 + sum(len(i.captions) for i in spatial))
    assert [sid for i in requested for sid in request_ids(i)][:3] == ["k0#0", "k1#0", "k1#1"]
    assert got.chunk_uris == ["bank/chunk-a.npz", "bank/chunk-b.npz"]
    only_a, _ = shard_inputs(spatial[:2], placed, first_request=0)
    assert only_a.chunk_uris == ["bank/chunk-a.npz"]  # a shard reads only the chunks it uses


def test_shard_refs_are_back_to_back_row_ranges_of_the_plan():
    plans = [ShardPlan(split="train", index=0, sample_keys=("a", "b", "c")),
             ShardPlan(split="train", index=1, sample_keys=("d",)), ShardPlan(split="val", index=0,
                                                                              sample_keys=("e", "f"))]
    refs = shard_refs(plans)
    assert [(r.start, r.stop) for r in refs] == [(0, 3), (3, 4), (4, 6)]
    items = [_item(k, "train", None) for k in "abcdef"]
    assert [r.plan(i.key for i in items[r.start : r.stop]) for r in refs] == plans


# ------------------------------------------------------------------------------------------------
# the real flow, as users run it


@pytest.fixture(scope="module")
def flow_env(tmp_path_factory: pytest.TempPathFactory) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith(("PREFECT_", "AWS_"))}
    return env | {"PREFECT_HOME": str(tmp_path_factory.mktemp("prefect-home")),
                  "PREFECT_SERVER_ANALYTICS_ENABLED": "false",
                  "PREFECT_SERVER_EPHEMERAL_STARTUP_TIMEOUT_SECONDS": "180",
                  "PYTHONUNBUFFERED": "1", "OMP_NUM_THREADS": "1"}


def _build(env: dict[str, str], *args: str) -> dict:
    res = subprocess.run([sys.executable, "-m", "spatial_audiocaps.cli", "build", *args], env=env, cwd=REPO,
                         capture_output=True, text=True, timeout=900, check=False)
    assert res.returncode == 0, res.stderr[-4000:]
    return json.loads(next(ln for ln in reversed(res.stdout.splitlines()) if ln.startswith("{")))


@pytest.mark.slow
def test_yaml_build_with_overrides_then_other_run_options_reuse_the_version(tmp_path, flow_env):
    """The CLI on configs/build-demo.yaml with --set overrides, through the real flow; then the same
    config with every execution knob changed lands in the same version and uploads nothing."""
    out = tmp_path / "out"
    data = ["--config", str(DEMO), "--out", str(out), "--set", "limit=3", "--set", "n_rooms=8",
            "--set", "shard_size=2", "--set", "augmentations.train=3",
            "--set", "audio.min_loop_s=2.5", "--set", "rephraser.max_retries=1", "--limit", "4",
            "--set", "shard_membership=locality"]
    first = _build(flow_env, *data, "--set", "run.n_workers=1")
    version = out / "demo" / first["version"]
    assert Path(first["uri"]) == version
    built = json.loads((version / "build.json").read_text())
    assert built["limit"] == 3 and built["n_rooms"] == 8 and built["shard_size"] == 2  # --set after --limit
    assert built["augmentations"] == {"train": 3, "val": 2, "test": 2} and built["audio"]["min_loop_s"] == 2.5
    assert built["rephraser"]["max_retries"] == 1 and "engine" not in built and "caption_batch" not in built
    assert first["samples"] >= 3 * 3 and first["rejects"] == 0  # 3 clips, each 2-3 spatial + the original
    assert set(first["shards"]) == {"uploaded"} and first["rir_chunks_rendered"] >= 1
    n_shards = first["shards"]["uploaded"]
    tars = {p: p.stat().st_mtime_ns for p in version.rglob("*.tar")}
    assert len(tars) == n_shards

    knobs = ["--set", "run.rir_chunk=1", "--set", "run.caption_batch=1", "--workers", "2",
             "--set", "run.shard_window=1", "--set", "run.rir_cache_mib=1",
             "--set", "engine.openai.base_url=http://10.1.2.3:9999/v1",
             "--set", "engine.openai.concurrency=2",
             "--set", "engine.vllm.tensor_parallel_size=8", "--set", "engine.vllm.kv_cache_gib=1"]
    second = _build(flow_env, *data, *knobs)
    assert second["version"] == first["version"] and second["uri"] == first["uri"]
    assert second["shards"] == {"skipped": n_shards}  # every shard: a verified receipt, nothing uploaded
    assert second["samples"] == first["samples"] and second["rejects"] == first["rejects"]
    assert {p: p.stat().st_mtime_ns for p in version.rglob("*.tar")} == tars
    stage = yaml.safe_load((version / "captions" / "stage.json").read_text())
    assert stage["batch_size"] == 1 and stage["settings"]["openai"]["base_url"] == "http://10.1.2.3:9999/v1"

    # A fresh build with those knobs: the same shards, byte for byte (membership follows the plan,
    # not the RIR chunking, the window or the workers).
    fresh = _build(flow_env, *[a.replace(str(out), str(tmp_path / "fresh")) for a in data], *knobs)
    again = tmp_path / "fresh" / "demo" / fresh["version"]
    assert fresh["version"] == first["version"] and set(fresh["shards"]) == {"uploaded"}
    assert {p.relative_to(again): p.read_bytes() for p in again.rglob("*.tar")} == \
        {p.relative_to(version): p.read_bytes() for p in tars}
