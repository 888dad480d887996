"""The deployments as a user runs them: `prefect server start`, a CPU and a GPU (LLM) process pool,
`prefect deploy` from prefect.yaml, a worker per pool (the LLM one in .venv-llm), and
`prefect deployment run build-spatial-dataset/build-spatial-audiocaps` writing to the local S3
server with vLLM captions; the shards read back through webdataset."""

from __future__ import annotations

import io
import json
import os
import re
import signal
import socket
import subprocess
import sys
import time
import urllib.request
from contextlib import ExitStack
from pathlib import Path

import pytest
import soundfile as sf
import webdataset as wds
import yaml
from fixtures_llm import tiny_vllm_llm  # noqa: F401 - a fixture

from schemas.build import BuildConfig
from tasks.caption_stage import batch_records, engine_records, finished_batches, read_stage
from tasks.storage import open_storage, webdataset_url

pytestmark = [pytest.mark.slow, pytest.mark.prefect_server]
REPO = Path(__file__).resolve().parents[1]
PREFECT = str(Path(sys.executable).with_name("prefect"))
LLM_PREFECT = REPO / ".venv-llm" / "bin" / "prefect"
BUILD = "build-spatial-dataset/build-spatial-audiocaps"
# A 1 GiB KV cache: vLLM's default share of RAM fails on a shared CPU box.
TINY_VLLM_OPTIONS = {"kv_cache_gib": 1}
UUID_RE = r"[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}"


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _wait_healthy(url: str, proc: subprocess.Popen, timeout: float = 180) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        assert proc.poll() is None, "prefect server exited"
        try:
            with urllib.request.urlopen(f"{url}/health", timeout=2) as r:
                if r.status == 200:
                    return
        except OSError:
            time.sleep(0.5)
    raise AssertionError("prefect server did not become healthy")


def _stop(proc: subprocess.Popen, sig: int) -> None:
    if proc.poll() is None:
        os.killpg(proc.pid, sig)
        try:
            proc.wait(timeout=30)
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait(timeout=10)


def _stage_of(root: str) -> str | None:
    """The caption stage's URI under ``root`` once the build has written it."""
    objects = [o.uri for o in open_storage(root).list(f"{root}/audiocaps/")]
    stages = [u for u in objects if u.endswith("/captions/stage.json")]
    return stages[0].removesuffix("/stage.json") if stages else None


@pytest.mark.skipif(not LLM_PREFECT.exists(), reason="needs .venv-llm (make llm-env; make test builds it)")
def test_two_pools_build_with_vllm_captions_resumes_after_the_llm_worker_is_killed(
    tmp_path, s3, tiny_vllm_llm  # noqa: F811 - the fixture
):
    """The paper's setup as a user deploys it: a CPU pool (worker in .venv) renders, a GPU pool
    (worker in .venv-llm) rephrases with vLLM. The LLM worker is SIGKILLed mid-stage; a rerun
    with a new LLM worker finishes the stage without generating the finished batches again."""
    port = _free_port()
    api = f"http://127.0.0.1:{port}/api"
    env = {k: v for k, v in os.environ.items() if not k.startswith("PREFECT_")}
    env |= {"PREFECT_HOME": str(tmp_path / "prefect-home"), "PREFECT_API_URL": api,
            "PREFECT_SERVER_ANALYTICS_ENABLED": "false", "SPATIAL_AUDIOCAPS_HOME": str(REPO),
            "PYTHONUNBUFFERED": "1", "OMP_NUM_THREADS": "1", "COLUMNS": "300"}
    llm_env = env | {"PATH": f"{LLM_PREFECT.parent}:{env.get('PATH', '')}"}
    logs = ExitStack()

    def spawn(cmd: list[str], log: str, cwd: Path, environ: dict[str, str] = env) -> subprocess.Popen:
        out = logs.enter_context((tmp_path / log).open("wb"))
        return subprocess.Popen(cmd, env=environ, cwd=cwd, start_new_session=True, stdout=out,
                                stderr=subprocess.STDOUT)

    def prefect(*args: str, timeout: float = 300) -> str:
        res = subprocess.run([PREFECT, "--no-prompt", *args], env=env, cwd=REPO, capture_output=True,
                             text=True, timeout=timeout, check=False)
        assert res.returncode == 0, res.stdout[-3000:] + res.stderr[-3000:]
        return res.stdout

    server = spawn([PREFECT, "server", "start", "--host", "127.0.0.1", "--port", str(port)], "server.log",
                   tmp_path)
    workers: list[subprocess.Popen] = []
    # The deployment's own config/run (vLLM on the GPU pool), with a small demo build on top: a
    # --param replaces the whole dict, so the overrides go into prefect.yaml's.
    deployed = next(d for d in yaml.safe_load((REPO / "prefect.yaml").read_text())["deployments"]
                    if d["name"] == BUILD.split("/")[1])["parameters"]
    config = deployed["config"] | {"source": "demo", "input": None, "limit": 4, "n_rooms": 30,
                                   "shard_size": 8}
    config["rephraser"] = deployed["config"]["rephraser"] | {"model": str(tiny_vllm_llm), "max_tokens": 24}
    run = deployed["run"] | {"n_workers": 1, "caption_batch": 1, "engine": {"vllm": TINY_VLLM_OPTIONS}}
    assert config["rephraser"]["backend"] == "vllm" and run["rephrase_deployment"]
    params = {"config": config, "run": run, "output": s3.root}
    args = [f"--param={k}={json.dumps(v)}" for k, v in params.items()]
    try:
        _wait_healthy(api, server)
        prefect("work-pool", "create", "local-process", "--type", "process")
        prefect("work-pool", "create", "llm-process", "--type", "process")
        prefect("deploy", "--all")
        listed = prefect("deployment", "ls")
        for name in ("build-spatial-audiocaps", "build-spatial-clotho", "build-spatial-freesound",
                     "rephrase-captions-gpu", "regenerate-room-set", "train-elsa", "evaluate-elsa",
                     "evaluate-sim2real"):
            assert name in listed, listed
        workers.append(spawn([PREFECT, "worker", "start", "--pool", "local-process"], "cpu-worker.log", REPO))
        llm_worker = spawn([str(LLM_PREFECT), "worker", "start", "--pool", "llm-process"], "llm-worker-1.log",
                           REPO, llm_env)
        workers.append(llm_worker)

        # run 1: kill the LLM worker (and its flow run and engine) once a batch is finished
        first = re.search(UUID_RE, prefect("deployment", "run", BUILD, *args)).group(0)
        deadline = time.monotonic() + 600
        while (stage := _stage_of(s3.root)) is None or not batch_records(stage):
            assert time.monotonic() < deadline, "no caption batch finished in 600 s"
            assert llm_worker.poll() is None, (tmp_path / "llm-worker-1.log").read_text()[-3000:]
            time.sleep(0.2)
        os.killpg(llm_worker.pid, signal.SIGKILL)
        llm_worker.wait(timeout=30)
        done_at_kill = finished_batches(stage)  # results in the cache: never to be generated again
        n_batches = read_stage(stage).n_batches
        assert 1 <= len(done_at_kill) < n_batches - 3, "the stage was not killed mid-way"
        prefect("flow-run", "cancel", first)

        # run 2: a new LLM worker; the build completes
        workers.append(spawn([str(LLM_PREFECT), "worker", "start", "--pool", "llm-process"],
                             "llm-worker-2.log", REPO, llm_env))
        prefect("deployment", "run", BUILD, *args, "--watch", "--watch-timeout", "900", timeout=1000)
    finally:
        for w in workers:
            _stop(w, signal.SIGINT)  # a worker stops on SIGINT
        _stop(server, signal.SIGTERM)
        logs.close()
    assert server.returncode is not None

    storage = open_storage(s3.root)
    objects = [o.uri for o in storage.list(f"{s3.root}/audiocaps/")]
    # The run's own records: one engine per LLM worker run, each serving all of its batches, and no
    # batch finished by the killed worker was generated again.
    engines = engine_records(stage)
    assert len(engines) == 2 and len({e.flow_run_id for e in engines}) == 2
    assert all(e.backend == "vllm" and e.model == str(tiny_vllm_llm) for e in engines)
    by_engine: dict[str, set[int]] = {e.engine_id: set() for e in engines}
    for rec in batch_records(stage):
        by_engine[rec.engine_id].add(rec.batch)
    killed, resumed = (by_engine[e.engine_id] for e in engines)
    # The rerun's engine generated exactly the batches unfinished at the kill (a batch killed between
    # its results and its record is finished, without a record of the killed engine).
    assert killed <= done_at_kill and resumed == set(range(n_batches)) - done_at_kill
    assert len(resumed) >= 3

    tars = sorted(u for u in objects if u.endswith(".tar"))
    assert tars and any(u.endswith("/manifest.parquet") for u in objects)
    seen = 0
    for sample in wds.WebDataset([webdataset_url(u) for u in tars], shardshuffle=False):
        meta = json.loads(sample["json"])
        audio, sr = sf.read(io.BytesIO(sample["flac"]))
        assert sr == 48000 and meta["text"] and audio.shape[0] >= 4 * sr
        if meta["spatial"]:
            assert {c["backend"] for c in meta["captions"]} == {"vllm"}, meta["captions"]
            assert {c["model"] for c in meta["captions"]} == {str(tiny_vllm_llm)}
        seen += 1
    assert seen == 4 * 3  # 4 clips: 2 spatial augmentations + the mono original each


def test_prefect_yaml_entrypoints_exist():
    spec = yaml.safe_load((REPO / "prefect.yaml").read_text())
    names = {d["name"] for d in spec["deployments"]}
    assert {"build-spatial-audiocaps", "build-spatial-clotho", "build-spatial-freesound",
            "regenerate-room-set", "train-elsa", "evaluate-elsa"} <= names
    for d in spec["deployments"]:
        path, func = d["entrypoint"].split(":")
        assert (REPO / path).exists(), path
        assert f"def {func}(" in (REPO / path).read_text()
    cron = next(d for d in spec["deployments"] if d["name"] == "regenerate-room-set")["schedules"]
    assert cron and cron[0]["cron"]


def test_build_deployments_parameters_are_build_configs():
    """Each build deployment's config survives Prefect's JSON parameters as a BuildConfig; the scene
    deployment's is a scene build (not normalised away to ELSA's default)."""
    spec = yaml.safe_load((REPO / "prefect.yaml").read_text())
    builds = {d["name"]: d for d in spec["deployments"]
              if d["entrypoint"] == "flows/build.py:build_spatial_dataset"}
    configs = {n: BuildConfig.model_validate(json.loads(json.dumps(d["parameters"]["config"])))
               for n, d in builds.items()}
    assert configs["build-spatial-audiocaps"].scenes is None
    scenes = configs["build-spatial-audiocaps-scenes"].scenes
    assert scenes is not None and max(scenes.sources) == 4 and scenes.motion.moving_share > 0
