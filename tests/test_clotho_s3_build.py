"""A Clotho build whose caption CSV and audio live on the local S3 server (moto_server).

The real flow as users run it (``spatial-audiocaps build --source clotho --input s3://...``: an
ephemeral Prefect and a Dask LocalCluster in a subprocess) with credentials only from the
standard AWS environment. The inputs are small Clotho-format files written here, so the test
never skips for want of ../shared/realdata.
"""

from __future__ import annotations

import io
import json
import os
import subprocess
import sys
import tarfile
from pathlib import Path

import numpy as np
import pyarrow.parquet as pq
import pytest
import soundfile as sf
from conftest import FAKE_KEY_ID, FAKE_SECRET

from tasks.storage import join_uri, open_storage

pytestmark = pytest.mark.slow
REPO = Path(__file__).resolve().parents[1]
CLIPS = {"dog_barking_park": "a dog barks", "rain_on_roof": "rain falls on a roof",
         "door_slam": "a door slams"}


def _clip(seed: int) -> bytes:
    """1 s of a decaying noise burst at 44.1 kHz (Clotho's rate), as WAV bytes."""
    rng = np.random.default_rng(seed)
    sr = 44100
    x = rng.standard_normal(sr) * np.exp(-np.arange(sr) / (0.3 * sr)) * 0.3
    bio = io.BytesIO()
    sf.write(bio, x.astype(np.float32), sr, format="WAV", subtype="PCM_16")
    return bio.getvalue()


def test_clotho_build_reads_its_csv_and_audio_from_s3(s3, tmp_path):
    src = join_uri(s3.root, "inputs", "clotho")
    storage = open_storage(src)
    header = "file_name," + ",".join(f"caption_{i}" for i in range(1, 6))
    rows = [f"{name}.wav," + ",".join(f"{text} ({i})" for i in range(1, 6)) for name, text in CLIPS.items()]
    rows.append("not_uploaded.wav,a,b,c,d,e")
    storage.put_bytes(join_uri(src, "captions.csv"), ("\n".join([header, *rows]) + "\n").encode())
    for seed, name in enumerate(CLIPS):
        storage.put_bytes(join_uri(src, "audio", f"{name}.wav"), _clip(seed))

    env = {k: v for k, v in os.environ.items() if not k.startswith("PREFECT_")}  # AWS_* from the s3 fixture
    env |= {"PREFECT_HOME": str(tmp_path / "prefect-home"), "PREFECT_SERVER_ANALYTICS_ENABLED": "false",
            "PREFECT_SERVER_EPHEMERAL_STARTUP_TIMEOUT_SECONDS": "180", "PYTHONUNBUFFERED": "1",
            "OMP_NUM_THREADS": "1"}
    cmd = [sys.executable, "-m", "spatial_audiocaps.cli", "build", "--source", "clotho",
           "--input", join_uri(src, "captions.csv"), "--out", str(tmp_path / "out"),
           "--n-rooms", "40", "--workers", "2"]
    res = subprocess.run(cmd, env=env, cwd=REPO, capture_output=True, text=True, timeout=900, check=False)
    assert res.returncode == 0, res.stderr[-4000:]
    assert FAKE_KEY_ID not in res.stdout + res.stderr and FAKE_SECRET not in res.stdout + res.stderr
    result = json.loads(next(ln for ln in reversed(res.stdout.splitlines()) if ln.startswith("{")))

    version = Path(result["uri"])
    manifest = pq.read_table(version / "manifest.parquet").to_pylist()
    assert {r["source_id"] for r in manifest} == set(CLIPS)
    assert all(r["n_captions"] == 5 for r in manifest)
    rejects = pq.read_table(version / "rejects.parquet").to_pylist()
    assert [(r["source"], r["reason"]) for r in rejects if r["stage"] == "source"] == [
        ("not_uploaded.wav", "audio_missing")]
    with tarfile.open(next(version.rglob("*.tar"))) as tf:
        flac = next(m for m in tf.getmembers() if m.name.endswith(".flac"))
        info = sf.info(io.BytesIO(tf.extractfile(flac).read()))
    assert info.samplerate == 48000 and info.channels in (1, 4)
