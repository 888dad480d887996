"""``make demo``: sample a small room set, render FOA RIRs and spatialise the demo corpus.

Runs what exists of the pipeline end to end on the embedded defaults; the Prefect flow takes
this over once it lands.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import pyarrow as pa
import soundfile as sf

from room_specs import DEFAULT_CONFIG
from schemas.audio import AudioPrepConfig
from schemas.rooms import RirSettings
from tasks.audio_prep import RirSpectrum, prepare_clip, render_clip
from tasks.demo_corpus import demo_clips
from tasks.rir_engine import measure, render_rir
from tasks.room_sampling import (
    load_config,
    parquet_bytes,
    placements_table,
    rooms_table,
    sample_room_set,
)


def run(out: Path, n_rooms: int, n_clips: int, seed: int) -> dict:
    """Sample rooms, render one FOA RIR per placement, spatialise demo clips into FLACs."""
    cfg = load_config(DEFAULT_CONFIG)
    rooms, placements, digest = sample_room_set(cfg, seed, n_rooms)
    out.mkdir(parents=True, exist_ok=True)
    (out / "rooms.parquet").write_bytes(parquet_bytes(rooms_table(rooms, digest)))
    (out / "placements.parquet").write_bytes(parquet_bytes(placements_table(placements, digest)))
    by_id = {r.room_id: r for r in rooms}
    settings = RirSettings(seed=seed)
    (out / "rirs").mkdir(exist_ok=True)
    records, spectra = [], []
    for p in placements:
        room = by_id[p.room_id]
        rendered = render_rir(room, p.receiver_m, p.source_m, p.receiver_yaw_deg, settings)
        rec = measure(
            rendered, placement_id=p.placement_id, room_id=p.room_id, room_set_hash=digest,
            target_t30_s=room.target_t30_s, order=settings.order,
        )
        sf.write(out / "rirs" / f"{p.placement_id}.wav", rendered.rir.T, rendered.fs, subtype="FLOAT")
        records.append(rec.model_dump())
        spectra.append(RirSpectrum.from_rir(rendered.rir, rendered.fs))
    (out / "rirs.parquet").write_bytes(parquet_bytes(pa.Table.from_pylist(records)))

    audio_cfg = AudioPrepConfig()
    (out / "clips").mkdir(exist_ok=True)
    samples = []
    for i, clip in enumerate(demo_clips(n_clips, seed)):
        k = i % len(placements)
        mono, _ = prepare_clip(clip.audio, audio_cfg)
        flac, info = render_clip(mono, spectra[k], audio_cfg)
        name = f"{clip.clip_id}-{placements[k].placement_id}.flac"
        (out / "clips" / name).write_bytes(flac)
        samples.append({"file": name, "captions": list(clip.captions), **records[k],
                        "gain_db": info.gain_db, "duration_s": info.duration_s})
    (out / "samples.json").write_text(json.dumps(samples, indent=1))
    return {
        "out": str(out),
        "room_set_hash": digest,
        "rooms": len(rooms),
        "rirs": len(records),
        "clips": len(samples),
        "max_direct_doa_error_deg": max(r["direct_doa_error_deg"] for r in records),
        "t30_rel_error_max": max(abs(r["t30_s"] / r["target_t30_s"] - 1) for r in records),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--out", default="out")
    parser.add_argument("--rooms", type=int, default=4)
    parser.add_argument("--clips", type=int, default=8)
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()
    print(json.dumps(run(Path(args.out) / "demo", args.rooms, args.clips, args.seed), indent=2))


if __name__ == "__main__":
    main()
