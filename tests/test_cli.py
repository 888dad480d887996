"""The ``spatial-audiocaps`` command as a user runs it: a real subprocess, JSON out, clean errors."""

from __future__ import annotations

import json
import subprocess
import sys

import numpy as np
import pyarrow.parquet as pq
import pytest
import soundfile as sf


def _run(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-m", "spatial_audiocaps.cli", *args],
        capture_output=True, text=True, timeout=300, check=False,
    )


def test_rir_writes_float32_ambix_and_reports_labels(tmp_path):
    out = tmp_path / "rir.wav"
    res = _run("rir", "--dims", "6", "5", "3", "--t30", "0.8", "--receiver", "3", "2.5", "1.5",
               "--source", "3", "4", "1.5", "--out", str(out))
    assert res.returncode == 0, res.stderr
    info = json.loads(res.stdout)
    assert info["azimuth_deg"] == pytest.approx(90.0)  # +y of a receiver facing +x is left
    assert info["elevation_deg"] == pytest.approx(0.0)
    assert info["distance_m"] == pytest.approx(1.5)
    assert info["t30_s"] == pytest.approx(0.8, rel=0.05)
    assert np.isfinite(info["drr_db"])
    data, fs = sf.read(out, dtype="float32")
    assert fs == 48000 and data.shape[1] == 4
    assert sf.info(out).subtype == "FLOAT"
    assert data.shape[0] >= 1.5 * 0.8 * fs


def test_doa_cli_reads_back_the_rendered_direction(tmp_path):
    out = tmp_path / "anechoic.wav"
    res = _run("rir", "--dims", "8", "8", "4", "--t30", "0.5", "--receiver", "4", "4", "1.5",
               "--source", "2.5", "2.5", "2.5", "--anechoic", "--order", "1", "--out", str(out))
    assert res.returncode == 0, res.stderr
    labels = json.loads(res.stdout)
    assert labels["t30_s"] is None
    doa = _run("doa", str(out), "--broadband")
    assert doa.returncode == 0, doa.stderr
    est = json.loads(doa.stdout)
    assert est["azimuth_deg"] == pytest.approx(labels["azimuth_deg"], abs=1.0)
    assert est["elevation_deg"] == pytest.approx(labels["elevation_deg"], abs=1.0)
    assert -180 < labels["azimuth_deg"] < -90  # behind and to the right


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["--dims", "-6", "5", "3", "--t30", "0.8"], "dimensions must be positive"),
        (["--dims", "6", "5", "3", "--t30", "0.8", "--source", "3", "7", "1.5"], "outside the room"),
        (["--dims", "30", "30", "10", "--t30", "0.05"], "unreachable"),
        (["--dims", "6", "5", "3", "--t30", "0.8", "--fs", "100"], "fs"),
    ],
)
def test_rir_bad_input_exits_2_with_a_named_error(tmp_path, args, message):
    base = {"--receiver": ["3", "2.5", "1.5"], "--source": ["3", "4", "1.5"]}
    for flag, value in base.items():
        if flag not in args:
            args = [*args, flag, *value]
    res = _run("rir", *args, "--out", str(tmp_path / "x.wav"))
    assert res.returncode == 2
    assert "Traceback" not in res.stderr
    assert res.stderr.startswith("error:") and message in res.stderr
    assert not (tmp_path / "x.wav").exists()


def test_rooms_sample_writes_rooms_and_placements(tmp_path):
    out = tmp_path / "set" / "rooms.parquet"
    res = _run("rooms", "sample", "--n", "12", "--seed", "7", "--out", str(out))
    assert res.returncode == 0, res.stderr
    info = json.loads(res.stdout)
    rooms = pq.read_table(out)
    placements = pq.read_table(tmp_path / "set" / "placements.parquet")
    assert rooms.num_rows == info["n_rooms"] == 12
    assert rooms.schema.metadata[b"room_set_hash"].decode() == info["room_set_hash"]
    assert set(placements.column("room_set_hash").to_pylist()) == {info["room_set_hash"]}
    again = tmp_path / "again" / "rooms.parquet"
    assert _run("rooms", "sample", "--n", "12", "--seed", "7", "--out", str(again)).returncode == 0
    assert again.read_bytes() == out.read_bytes()


def test_doa_cli_errors_are_clean(tmp_path):
    mono = tmp_path / "mono.wav"
    sf.write(mono, np.zeros(4800), 48000)
    res = _run("doa", str(mono))
    assert res.returncode == 2 and res.stderr.startswith("error:") and "Traceback" not in res.stderr
    res = _run("doa", str(tmp_path / "missing.wav"))
    assert res.returncode == 2 and "Traceback" not in res.stderr


def test_schema_export(tmp_path):
    res = _run("schemas", "--out", str(tmp_path))
    assert res.returncode == 0, res.stderr
    names = json.loads(res.stdout)["schemas"]
    assert {"RirRecord.schema.json", "RoomSpec.schema.json", "SampleRecord.schema.json",
            "ManifestRow.schema.json", "RephraseResult.schema.json"} <= set(names)
    record = json.loads((tmp_path / "SampleRecord.schema.json").read_text())
    assert record["properties"]["text"]["type"] == "array"
    schema = json.loads((tmp_path / "Placement.schema.json").read_text())
    assert {"azimuth_deg", "elevation_deg", "distance_m", "split"} <= set(schema["properties"])
