"""Shared fixtures: a real S3 HTTP server (moto_server) on 127.0.0.1, and small real FOA samples.

``s3_server`` starts ``moto_server`` as a subprocess once per session and stops it by PID; it can
be killed and restarted on the same port (the fault tests do). ``s3`` gives each test a fresh
bucket and the standard AWS environment (AWS_ENDPOINT_URL, fake keys) through monkeypatch.

``foa_clips`` renders a few FOA clips with the repo's own engine (room set → RIR → noise burst
prepared, convolved and FLAC-encoded), so label checks in the tests are physically meaningful.
"""

from __future__ import annotations

import io
import os
import shutil
import signal
import socket
import subprocess
import sys
import time
import urllib.request
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pytest
import soundfile as sf

from schemas.audio import AudioPrepConfig, PreparedClip, RenderedInfo
from schemas.rooms import RirRecord, RoomSpec
from schemas.shards import CaptionInfo, Descriptors, Provenance
from tasks.shard_writer import ShardSample, build_sample, labels_from_rir
from tasks.storage import clear_storage_cache

FAKE_KEY_ID = "AKIAFAKETESTKEY0SPAT"
FAKE_SECRET = "fakeSecret/Key+ForTests0123456789abcdEFGH"
REGION = "us-east-1"


# --------------------------------------------------------------------------------------------
# the S3 server


def _free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _moto_server_bin() -> str:
    here = Path(sys.executable).parent / "moto_server"
    found = str(here) if here.exists() else shutil.which("moto_server")
    if not found:
        pytest.skip("moto_server not installed (pip install 'moto[server]')")
    return found


class MotoServer:
    """moto_server on 127.0.0.1:port as a child process; start/kill/stop by PID, restartable.

    ``str(server)`` and ``server.endpoint`` are the endpoint URL.
    """

    def __init__(self, log_dir: Path) -> None:
        self.port = _free_port()
        self.endpoint = f"http://127.0.0.1:{self.port}"
        self.log_dir = log_dir
        self.proc: subprocess.Popen[bytes] | None = None
        self.starts = 0

    def start(self, timeout_s: float = 30.0) -> None:
        if self.running():
            return
        self.starts += 1
        log = open(self.log_dir / f"moto-{self.starts}.log", "wb")  # noqa: SIM115 (child owns it)
        env = {k: v for k, v in os.environ.items() if not k.startswith("AWS_")}
        self.proc = subprocess.Popen(
            [_moto_server_bin(), "-H", "127.0.0.1", "-p", str(self.port)],
            stdout=log,
            stderr=subprocess.STDOUT,
            env=env,
            start_new_session=True,
        )
        log.close()
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError(f"moto_server exited with {self.proc.returncode}; see {self.log_dir}")
            try:
                with urllib.request.urlopen(f"{self.endpoint}/moto-api/", timeout=1):
                    return
            except OSError:
                time.sleep(0.1)
        self.stop()
        raise RuntimeError(f"moto_server did not answer on {self.endpoint} within {timeout_s} s")

    def __str__(self) -> str:
        return self.endpoint

    def running(self) -> bool:
        return self.proc is not None and self.proc.poll() is None

    def kill(self) -> None:
        """SIGKILL, as a crash would: no clean shutdown, in-flight requests cut."""
        if self.proc is not None and self.proc.poll() is None:
            os.kill(self.proc.pid, signal.SIGKILL)
            self.proc.wait(timeout=10)

    def stop(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            os.kill(self.proc.pid, signal.SIGTERM)
            try:
                self.proc.wait(timeout=5)
            except subprocess.TimeoutExpired:
                os.kill(self.proc.pid, signal.SIGKILL)
                self.proc.wait(timeout=5)
        self.proc = None


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    """Every test that uses the local S3 server carries the ``s3`` marker (``-m "not s3"`` skips them)."""
    for item in items:
        if {"s3", "s3_server"} & set(getattr(item, "fixturenames", ())):
            item.add_marker(pytest.mark.s3)


@pytest.fixture(scope="session")
def s3_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[MotoServer]:
    server = MotoServer(tmp_path_factory.mktemp("moto"))
    server.start()
    try:
        yield server
    finally:
        server.stop()


@dataclass
class S3Env:
    server: MotoServer
    endpoint: str
    bucket: str

    @property
    def root(self) -> str:
        return f"s3://{self.bucket}/datasets"

    def client(self):
        import boto3

        return boto3.client(
            "s3",
            endpoint_url=self.endpoint,
            region_name=REGION,
            aws_access_key_id=FAKE_KEY_ID,
            aws_secret_access_key=FAKE_SECRET,
        )

    def make_bucket(self) -> None:
        self.client().create_bucket(Bucket=self.bucket)


def set_aws_env(monkeypatch: pytest.MonkeyPatch, endpoint: str, tmp: Path) -> None:
    """The standard AWS environment pointing at the local server, isolated from ~/.aws."""
    for k in list(os.environ):
        if k.startswith("AWS_"):
            monkeypatch.delenv(k, raising=False)
    monkeypatch.setenv("AWS_ENDPOINT_URL", endpoint)
    monkeypatch.setenv("AWS_ACCESS_KEY_ID", FAKE_KEY_ID)
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", FAKE_SECRET)
    monkeypatch.setenv("AWS_DEFAULT_REGION", REGION)
    monkeypatch.setenv("AWS_CONFIG_FILE", str(tmp / "no-aws-config"))
    monkeypatch.setenv("AWS_SHARED_CREDENTIALS_FILE", str(tmp / "no-aws-credentials"))
    monkeypatch.setenv("AWS_EC2_METADATA_DISABLED", "true")


@pytest.fixture
def s3(s3_server: MotoServer, monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> Iterator[S3Env]:
    """A fresh bucket on the local server and the AWS environment pointing at it."""
    s3_server.start()  # restarts it if an earlier test killed it
    set_aws_env(monkeypatch, s3_server.endpoint, tmp_path)
    clear_storage_cache()
    env = S3Env(server=s3_server, endpoint=s3_server.endpoint, bucket=f"test-{uuid.uuid4().hex[:12]}")
    env.make_bucket()
    yield env
    clear_storage_cache()


# --------------------------------------------------------------------------------------------
# real FOA samples


@dataclass(frozen=True)
class FoaClip:
    flac: bytes
    rir: RirRecord
    room: RoomSpec
    prepared: PreparedClip
    rendered: RenderedInfo
    room_set_hash: str


PREP = AudioPrepConfig(min_loop_s=1.0)
SOUNDS = ("a dog barks", "rain falls on a tin roof", "a man speaks", "an engine idles")


def _noise_burst(seed: int) -> bytes:
    """0.3 s of band-limited noise with silence around it, as 44.1 kHz WAV bytes (gets resampled)."""
    rng = np.random.default_rng(seed)
    sr = 44100
    x = np.zeros(int(0.5 * sr), dtype=np.float32)
    burst = rng.standard_normal(int(0.3 * sr)).astype(np.float32) * 0.3
    x[int(0.1 * sr) : int(0.1 * sr) + burst.size] = burst
    bio = io.BytesIO()
    sf.write(bio, x, sr, format="WAV", subtype="PCM_16")
    return bio.getvalue()


@pytest.fixture(scope="session")
def foa_clips() -> list[FoaClip]:
    """8 FOA clips rendered by the repo's engine in rooms of the ELSA room set (~3 s on 2 cores)."""
    from room_specs import DEFAULT_CONFIG
    from schemas.rooms import RirSettings
    from tasks import audio_prep as ap
    from tasks.rir_bank import render_chunk
    from tasks.room_sampling import load_config, sample_room_set

    cfg = load_config(DEFAULT_CONFIG)
    rooms, placements, digest = sample_room_set(cfg, 0, 6)
    by_id = {r.room_id: r for r in rooms}
    rirs, records, rejects = render_chunk(by_id, placements[:8], RirSettings(max_ism_order=10))
    assert not rejects, rejects
    out = []
    for i, rec in enumerate(records):
        clip, prepared = ap.prepare_clip(_noise_burst(i), PREP)
        flac, info = ap.render_clip(clip, ap.RirSpectrum.from_rir(rirs[rec.placement_id]), PREP)
        out.append(FoaClip(flac, rec, by_id[rec.room_id], prepared, info, digest))
    return out


def describe(c: FoaClip) -> Descriptors:
    """Table A.T.3 of DESIGN.md (test-only; the captions stage owns the real mapping)."""
    lab = c.rir
    az = lab.azimuth_deg
    direction = (
        "front"
        if -35 <= az <= 35
        else "left"
        if 55 <= az <= 125
        else "right"
        if -125 <= az <= -55
        else "back"
        if abs(az) > 145
        else None
    )
    return Descriptors(
        distance="near" if lab.distance_m < 1 else "far" if lab.distance_m > 2 else None,
        direction=direction,  # type: ignore[arg-type]
        elevation="up" if lab.elevation_deg > 40 else "down" if lab.elevation_deg < -40 else None,
        reverb=(
            "acoustically dampened"
            if (lab.t30_s or 0) < 0.2
            else "highly reverberant"
            if (lab.t30_s or 0) > 1.0
            else None
        ),
        size="small" if c.room.floor_area_m2 < 50 else "large" if c.room.floor_area_m2 > 100 else None,
    )


def make_sample(
    c: FoaClip,
    *,
    dataset: str = "spatial_audiocaps",
    split: str | None = None,
    clip_id: str = "clip",
    aug: int = 1,
    n: int = 0,
) -> ShardSample:
    """A spatial sample of clip ``c`` with one or two captions; flags vary with ``n``."""
    d = describe(c)
    sound = SOUNDS[n % len(SOUNDS)]
    words = " ".join(w for w in (d.distance, d.direction) if w)
    spatial = f"{sound.capitalize()} {'from the ' + words if words else 'somewhere'} in a room."
    caps = [
        CaptionInfo(
            original=sound,
            spatial=spatial,
            backend="template",
            model=None,
            attempts=1 + n % 3,
            validated=n % 4 != 3,
            fallback=n % 4 == 3,
            failed_checks=["direction_missing"] if n % 4 == 3 else [],
        )
    ]
    if n % 2:
        caps.append(
            CaptionInfo(
                original=sound + " loudly",
                spatial=spatial.replace(".", ", loudly."),
                backend="template",
                attempts=1,
                validated=True,
                fallback=False,
            )
        )
    from tasks.rir_engine import ENGINE_VERSION

    prov = Provenance(
        source_dataset="audiocaps",
        source_id=f"{clip_id}.wav",
        room_set_hash=c.room_set_hash,
        config_hash="c0ffee",
        pipeline_version="0.1.0",
        engine_version=ENGINE_VERSION,
        seed=0,
        rephraser_backend="template",
        rephraser_model=None,
        prepared=c.prepared,
        rendered=c.rendered,
    )
    return build_sample(
        c.flac,
        dataset=dataset,
        split=split or "train",
        clip_id=clip_id,
        aug=aug,
        captions=caps,
        provenance=prov,
        labels=labels_from_rir(c.rir, c.room),
        descriptors=d,
    )


@pytest.fixture(scope="session")
def samples(foa_clips: list[FoaClip]) -> list[ShardSample]:
    """20 samples of 8 clips: 3 augmentations each in train (12), 2 in val (4) and test (4)."""
    out = []
    n = 0
    for ci in range(8):
        split = "train" if ci < 4 else "val" if ci < 6 else "test"
        for aug in range(1, 4 if split == "train" else 3):
            c = foa_clips[(ci + aug) % len(foa_clips)]
            out.append(make_sample(c, split=split, clip_id=f"{91000 + ci}", aug=aug, n=n))
            n += 1
    return out
