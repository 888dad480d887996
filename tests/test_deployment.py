"""The deployment as a user runs it: `prefect server start`, a process work pool, `prefect deploy`
from prefect.yaml, a worker, and `prefect deployment run build-spatial-dataset/build-spatial-audiocaps`
writing to the local S3 server; the shards read back through webdataset."""

from __future__ import annotations

import io
import json
import os
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

from tasks.storage import open_storage, webdataset_url

pytestmark = [pytest.mark.slow, pytest.mark.prefect_server]
REPO = Path(__file__).resolve().parents[1]
PREFECT = str(Path(sys.executable).with_name("prefect"))


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


def test_deployment_run_on_a_real_server_writes_readable_shards(tmp_path, s3):
    port = _free_port()
    api = f"http://127.0.0.1:{port}/api"
    env = {k: v for k, v in os.environ.items() if not k.startswith("PREFECT_")}
    env |= {"PREFECT_HOME": str(tmp_path / "prefect-home"), "PREFECT_API_URL": api,
            "PREFECT_SERVER_ANALYTICS_ENABLED": "false", "SPATIAL_AUDIOCAPS_HOME": str(REPO),
            "PYTHONUNBUFFERED": "1", "OMP_NUM_THREADS": "1", "COLUMNS": "300"}
    logs = ExitStack()

    def spawn(cmd: list[str], log: str, cwd: Path) -> subprocess.Popen:
        out = logs.enter_context((tmp_path / log).open("wb"))
        return subprocess.Popen(cmd, env=env, cwd=cwd, start_new_session=True, stdout=out,
                                stderr=subprocess.STDOUT)

    server = spawn([PREFECT, "server", "start", "--host", "127.0.0.1", "--port", str(port)], "server.log",
                   tmp_path)
    worker = None
    try:
        _wait_healthy(api, server)

        def prefect(*args: str, timeout: float = 300) -> str:
            res = subprocess.run([PREFECT, "--no-prompt", *args], env=env, cwd=REPO, capture_output=True,
                                 text=True, timeout=timeout, check=False)
            assert res.returncode == 0, res.stdout[-3000:] + res.stderr[-3000:]
            return res.stdout

        prefect("work-pool", "create", "local-process", "--type", "process")
        prefect("deploy", "--all")
        listed = prefect("deployment", "ls")
        for name in ("build-spatial-audiocaps", "build-spatial-clotho", "build-spatial-freesound",
                     "regenerate-room-set", "train-elsa", "evaluate-elsa"):
            assert name in listed, listed
        worker = spawn([PREFECT, "worker", "start", "--pool", "local-process"], "worker.log", REPO)
        params = {"source": "demo", "input": None, "output": s3.root, "limit": 4, "n_rooms": 30,
                  "shard_size": 8}
        args = [f"--param={k}={json.dumps(v)}" for k, v in params.items()]
        prefect("deployment", "run", "build-spatial-dataset/build-spatial-audiocaps", *args, "--watch",
                "--watch-timeout", "600", timeout=700)
    finally:
        if worker is not None:
            _stop(worker, signal.SIGINT)  # a worker stops on SIGINT
        _stop(server, signal.SIGTERM)
        logs.close()
    assert worker is not None and worker.returncode is not None
    assert server.returncode is not None

    storage = open_storage(s3.root)
    objects = [o.uri for o in storage.list(f"{s3.root}/audiocaps/")]
    tars = sorted(u for u in objects if u.endswith(".tar"))
    assert tars and any(u.endswith("/manifest.parquet") for u in objects)
    assert any(u.endswith("/README.md") for u in objects)
    seen = 0
    for sample in wds.WebDataset([webdataset_url(u) for u in tars], shardshuffle=False):
        meta = json.loads(sample["json"])
        audio, sr = sf.read(io.BytesIO(sample["flac"]))
        assert sr == 48000 and meta["text"] and audio.shape[0] >= 4 * sr
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
