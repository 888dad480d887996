"""The dataset card says which realism options shaped the audio (issue 15): a reader must know whether
the .flac carries a real microphone's aliasing and noise, and how the sources radiated."""

from __future__ import annotations

import json
from collections import Counter
from pathlib import Path

import pyarrow.parquet as pq
import pytest

from schemas.audio import AudioPrepConfig, SensorNoise, TailTurn
from schemas.build import BuildConfig
from schemas.rooms import RirSettings
from schemas.shards import DatasetCard
from tasks.build_stages import build_in_process
from tasks.shard_reader import read_shard

REPO = Path(__file__).resolve().parents[1]


@pytest.mark.slow
def test_the_card_names_capture_noise_directivity_and_scattering(tmp_path):
    cfg = BuildConfig(source="demo", limit=3, n_rooms=4, shard_size=16,
                      room_config=str(REPO / "room_specs" / "sim2real.yaml"),
                      rir=RirSettings(order=3, scattering=True, tail_flow=True), formats=("tetra",),
                      audio=AudioPrepConfig(sensor_noise=SensorNoise(snr_db=(15.0, 25.0), spectrum="pink"),
                                            tail_turn=TailTurn(after_s=0.04)))
    base = Path(build_in_process(cfg, str(tmp_path / "out")))
    card = DatasetCard.model_validate_json((base / "card.json").read_text())
    r = card.realism
    assert r is not None and r.flac_format == "tetra" and r.scattering and r.tail_flow
    assert r.sensor_snr_db == (15.0, 25.0) and r.sensor_noise_spectrum == "pink"
    drawn = Counter(pq.read_table(base / "placements.parquet").column("source_pattern").to_pylist())
    assert r.source_patterns == dict(drawn) and sum(drawn.values()) > 0
    readme = (base / "README.md").read_text()
    assert "## Capture chain and sources" in readme and "15-25 dB SNR, pink" in readme
    assert "- Diffuse field: flows into the absorbing surfaces" in readme
    assert r.tail_turn_after_s == 0.04 and "- Late field turned: from 40 ms after the direct sound" in readme
    spatial = [s.record for t in sorted(base.rglob("*.tar")) for s in read_shard(str(t)) if s.record.spatial]
    quats = {r.provenance.rendered.tail_turn_quat for r in spatial}  # each spatial sample records its turn
    assert spatial and None not in quats and len(quats) == len(spatial)


def test_an_elsa_card_has_no_realism_section(tmp_path):
    """Every option off (the ELSA default) leaves the card as it was: no ``realism`` key at all."""
    base = Path(build_in_process(BuildConfig(source="demo", limit=2, n_rooms=3, shard_size=16),
                                 str(tmp_path / "out")))
    assert "realism" not in json.loads((base / "card.json").read_text())
    assert "Capture chain" not in (base / "README.md").read_text()
