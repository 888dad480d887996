"""Deterministic room sets: rooms and source/receiver placements from (config, seed).

Every room draws from its own random stream ``default_rng([seed, room_index])``, so a room set
can be sampled in parallel, extended, or partly re-sampled without changing the other rooms.
The set's content hash (config, seed and every row) is recorded in each placement and flows
into every downstream record.
"""

from __future__ import annotations

import hashlib
import io
import json
import math
from collections.abc import Sequence
from functools import cache
from pathlib import Path
from typing import BinaryIO

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pyroomacoustics as pra
import yaml
from pydantic import ValidationError
from scipy.optimize import brentq

from schemas.measured import MeasuredRoom
from schemas.room_set import RoomSetConfig, SourceDirectivityConfig, SplitPlacement
from schemas.rooms import OCTAVE_BANDS_HZ, SURFACES, Placement, Room, RoomSpec, Surface
from tasks.ambisonics import vector_to_angles, wrap_azimuth
from tasks.errors import InvalidRoomError, UnreachableT30Error
from tasks.measured_directivity import load_directivity
from tasks.rir_engine import SCALE_RANGE, air_absorption, predicted_t30, scaled_absorption

SPEED_OF_SOUND = pra.constants.get("c")
_MAX_TRIES = 200


def load_config(path: str | Path) -> RoomSetConfig:
    """Read and validate a room-set YAML file."""
    try:
        raw = yaml.safe_load(Path(path).read_text())
        return RoomSetConfig.model_validate(raw)
    except (OSError, yaml.YAMLError, ValidationError) as exc:
        raise InvalidRoomError(f"invalid room-set config {path}: {exc}") from exc


@cache
def material_absorption(name: str) -> tuple[float, ...]:
    """Octave-band absorption of a pyroomacoustics database material, on OCTAVE_BANDS_HZ."""
    for category in pra.materials_data["absorption"].values():
        if name in category:
            coeffs = category[name]["coeffs"]
            centres = pra.materials_data["center_freqs"][: len(coeffs)]
            return tuple(float(a) for a in np.interp(OCTAVE_BANDS_HZ, centres, coeffs))
    raise InvalidRoomError(f"unknown material {name!r} (not in pyroomacoustics' database)")


def _log_uniform(rng: np.random.Generator, lo: float, hi: float) -> float:
    return float(math.exp(rng.uniform(math.log(lo), math.log(hi))))


def sample_room(cfg: RoomSetConfig, seed: int, index: int) -> RoomSpec:
    """Draw room ``index``: shape, materials, then a target T30 this room can physically reach.

    The target is drawn inside both the configured T30 range and the range the room reaches
    with mean absorption inside ``cfg.mean_absorption``; absorption is then scaled so the
    Millington-Sette prediction hits it (the RIR engine refines this against measurement).
    """
    rng = np.random.default_rng([seed, index])
    area = _log_uniform(rng, *cfg.floor_area_m2)
    aspect = float(rng.uniform(*cfg.aspect_ratio))
    length = math.sqrt(area * aspect)
    dims = (round(length, 4), round(area / length, 4), round(float(rng.uniform(*cfg.height_m)), 4))
    choice = {
        "west": cfg.materials.walls, "east": cfg.materials.walls,
        "south": cfg.materials.walls, "north": cfg.materials.walls,
        "floor": cfg.materials.floor, "ceiling": cfg.materials.ceiling,
    }
    names = {s: str(rng.choice(choice[s])) for s in SURFACES}
    scattering = {s: float(rng.uniform(*cfg.scattering)) for s in SURFACES}
    base = {
        s: Surface(
            material=names[s],
            absorption=list(material_absorption(names[s])),
            scattering=[scattering[s]] * len(OCTAVE_BANDS_HZ),
        )
        for s in SURFACES
    }
    draft = RoomSpec(room_id="", dims_m=dims, surfaces=base, target_t30_s=1.0)
    air = air_absorption()
    base_alpha = np.array([base[s].absorption for s in SURFACES])

    def mean_alpha(scale: float, bound: float) -> float:
        return float(scaled_absorption(base_alpha, scale).mean()) - bound

    lo_scale, hi_scale = (brentq(mean_alpha, *SCALE_RANGE, args=(b,)) for b in cfg.mean_absorption)
    t_hi = predicted_t30(draft, lo_scale, air, SPEED_OF_SOUND)
    t_lo = predicted_t30(draft, hi_scale, air, SPEED_OF_SOUND)
    lo, hi = max(cfg.t30_s[0], t_lo), min(cfg.t30_s[1], t_hi)
    if lo > hi:
        raise InvalidRoomError(
            f"room {index}: no T30 in {cfg.t30_s} is reachable ({t_lo:.3f}..{t_hi:.3f} s)"
        )
    target = round(_log_uniform(rng, lo, hi), 5)
    scale = brentq(
        lambda s: predicted_t30(draft, s, air, SPEED_OF_SOUND) - target, lo_scale, hi_scale,
        xtol=1e-9,
    )
    fitted = scaled_absorption(base_alpha, scale).round(6)
    surfaces = {
        s: base[s].model_copy(update={"absorption": fitted[i].tolist()})
        for i, s in enumerate(SURFACES)
    }
    return RoomSpec(
        room_id=f"{cfg.name}-{seed}-{index:05d}", dims_m=dims, surfaces=surfaces,
        target_t30_s=target,
    )


def _split_rooms(cfg: RoomSetConfig, n: int, seed: int) -> dict[str, np.ndarray]:
    """Room indices per split: nested subsets (paper) or disjoint sets (room_disjoint)."""
    order = np.random.default_rng([seed, 1 << 30]).permutation(n)
    held = [s for s in ("val", "test") if s in cfg.splits]
    counts = {s: max(1, round(cfg.splits[s].room_fraction * n)) for s in held}
    out: dict[str, np.ndarray] = {}
    start = 0
    for s in held:
        out[s] = np.sort(order[start : start + counts[s]])
        start += counts[s]
    if cfg.split_policy == "room_disjoint":
        out["train"] = np.sort(order[start:])
        if out["train"].size == 0:
            raise InvalidRoomError("room_disjoint split leaves no training rooms")
    else:
        out["train"] = np.arange(n)
    return out


def _sample_placement(
    cfg: RoomSetConfig,
    split_cfg: SplitPlacement,
    room: RoomSpec,
    rng: np.random.Generator,
    avoid: list[np.ndarray],
) -> tuple[np.ndarray, float, np.ndarray, tuple[float, float, float]]:
    """Receiver, yaw, source and its (azimuth, elevation, distance) label, inside the room.

    Labels are the drawn values themselves, so they lie exactly inside the configured ranges.
    Distances beyond a few metres (e.g. [0.5, 10]) work where the room holds them: a source drawn
    outside is redrawn, so a room shorter than the longest distance gets only the ones that fit
    (long ones rarer than uniform). A room that cannot hold even the shortest is refused at once.
    """
    dims = np.asarray(room.dims_m)
    wc, sc = cfg.wall_clearance_m, cfg.source_clearance_m
    if np.any(dims <= 2 * wc):
        raise InvalidRoomError(f"room {room.room_id} is too small for {wc} m wall clearance")
    longest = float(np.linalg.norm(np.maximum(dims - wc - sc, 0.0)))  # receiver and source corners
    if split_cfg.distance_m[0] > longest:
        raise InvalidRoomError(
            f"room {room.room_id} {tuple(float(d) for d in dims)} m is too small for source distances "
            f"{split_cfg.distance_m} m: with the wall clearances no source is more than {longest:.2f} m "
            "from the receiver"
        )
    for _ in range(_MAX_TRIES):
        z_hi = min(cfg.receiver_height_m[1], dims[2] - wc)
        z_lo = min(cfg.receiver_height_m[0], z_hi)
        receiver = np.array(
            [rng.uniform(wc, dims[0] - wc), rng.uniform(wc, dims[1] - wc), rng.uniform(z_lo, z_hi)]
        )
        yaw = float(rng.uniform(-180.0, 180.0))
        for _ in range(_MAX_TRIES):
            az_deg = float(rng.uniform(*split_cfg.azimuth_deg))
            az_deg = 180.0 if az_deg <= -180.0 else az_deg
            el_deg = float(rng.uniform(*split_cfg.elevation_deg))
            dist = float(rng.uniform(*split_cfg.distance_m))
            az, el = math.radians(az_deg + yaw), math.radians(el_deg)
            source = receiver + dist * np.array(
                [math.cos(az) * math.cos(el), math.sin(az) * math.cos(el), math.sin(el)]
            )
            inside = np.all(source >= sc) and np.all(source <= dims - sc)
            far = all(np.linalg.norm(source - a) >= cfg.min_test_separation_m for a in avoid)
            if inside and far:
                return receiver, yaw, source, (az_deg, el_deg, dist)
    raise InvalidRoomError(
        f"could not place a source in room {room.room_id} {tuple(float(d) for d in dims)} m within the "
        f"ranges (distance {split_cfg.distance_m} m, elevation {split_cfg.elevation_deg} deg)"
    )


def sample_source_axis(
    cfg: SourceDirectivityConfig, receiver: np.ndarray, source: np.ndarray, rng: np.random.Generator,
    measured: Sequence[str] = (),
) -> tuple[str, tuple[float, float]]:
    """A directional source's pattern and world-frame main axis (azimuth, elevation) in degrees.

    The pattern is drawn among ``cfg.patterns`` and ``measured`` (the labels of cfg.sofa_files,
    tasks/measured_directivity.py), so a config without files draws exactly as before.

    The axis points at the receiver give or take ``facing_spread_deg`` in azimuth and
    ``elevation_jitter_deg`` in elevation (uniform): a loudspeaker or a talker is aimed at the
    listener roughly, not exactly, and turns more freely sideways than up or down.
    """
    pattern = str(rng.choice([*cfg.patterns, *measured]))
    az, el = (float(a) for a in vector_to_angles(np.asarray(receiver) - np.asarray(source)))
    az = float(wrap_azimuth(az + rng.uniform(-cfg.facing_spread_deg, cfg.facing_spread_deg)))
    el = float(np.clip(el + rng.uniform(-cfg.elevation_jitter_deg, cfg.elevation_jitter_deg), -90.0, 90.0))
    return pattern, (az, el)


def sample_room_set(
    cfg: RoomSetConfig, seed: int, n_rooms: int | None = None
) -> tuple[list[RoomSpec], list[Placement], str]:
    """Rooms, placements and the set's content hash, deterministic in (cfg, seed, n_rooms)."""
    n = cfg.n_rooms if n_rooms is None else n_rooms
    if n < 1:
        raise InvalidRoomError(f"number of rooms must be positive, got {n}")
    rooms = [sample_room(cfg, seed, i) for i in range(n)]
    split_rooms = _split_rooms(cfg, n, seed)
    sofa_files = cfg.source_directivity.sofa_files if cfg.source_directivity is not None else []
    measured = {load_directivity(f).label: f for f in sofa_files}  # bad files fail here, named
    rows: list[dict] = []
    train_sources: dict[int, list[np.ndarray]] = {}
    for split in ("train", "val", "test"):
        if split not in cfg.splits:
            continue
        split_cfg = cfg.splits[split]
        for i in split_rooms[split]:
            room = rooms[int(i)]
            stream = [seed, int(i), ("train", "val", "test").index(split) + 1]
            rng = np.random.default_rng(stream)
            # Its own stream: the same room set with and without directivity has the same positions.
            axis_rng = np.random.default_rng([*stream, 1 << 20])
            for j in range(split_cfg.placements_per_room):
                avoid = [] if split == "train" else train_sources.get(int(i), [])
                receiver, yaw, source, (az, el, dist) = _sample_placement(
                    cfg, split_cfg, room, rng, avoid
                )
                if split == "train":
                    train_sources.setdefault(int(i), []).append(source)
                row = {
                    "placement_id": f"{room.room_id}-{split}-{j}",
                    "room_id": room.room_id,
                    "split": split,
                    "receiver_m": tuple(float(v) for v in receiver),
                    "receiver_yaw_deg": yaw,
                    "source_m": tuple(float(v) for v in source),
                    "azimuth_deg": az,
                    "elevation_deg": el,
                    "distance_m": dist,
                }
                if cfg.source_directivity is not None:  # omni rows (ELSA) keep their keys and hash
                    pattern, axis = sample_source_axis(cfg.source_directivity, receiver, source, axis_rng,
                                                       list(measured))
                    row |= {"source_pattern": pattern, "source_axis_deg": axis}
                    if pattern in measured:
                        row["source_directivity_file"] = measured[pattern]
                rows.append(row)
    digest = content_hash(cfg, seed, rooms, rows)
    placements = [Placement(**r, room_set_hash=digest) for r in rows]
    return rooms, placements, digest


def content_hash(cfg: RoomSetConfig, seed: int, rooms: list[RoomSpec], rows: list[dict]) -> str:
    """sha256 over canonical JSON of the config, seed, rooms and placements.

    Hashing content rather than parquet bytes keeps the hash stable across pyarrow versions.
    """
    payload = {
        "config": cfg.model_dump(mode="json"),
        "seed": seed,
        "rooms": [r.model_dump(mode="json") for r in rooms],
        "placements": rows,
    }
    blob = json.dumps(payload, sort_keys=True, separators=(",", ":")).encode()
    return hashlib.sha256(blob).hexdigest()[:16]


def rooms_table(rooms: Sequence[Room], digest: str) -> pa.Table:
    """Rooms as an Arrow table (nested surfaces), with the set hash in the schema metadata."""
    table = pa.Table.from_pylist([r.model_dump() for r in rooms])
    return table.replace_schema_metadata({"room_set_hash": digest})


def placements_table(placements: list[Placement], digest: str) -> pa.Table:
    """Placements as a table; a field left out of every dump (``early_window_s`` of room-set
    placements) has no column, one set on some rows is null on the others."""
    rows = [p.model_dump() for p in placements]
    present = {k for r in rows for k in r}
    columns = [k for k in Placement.model_fields if k in present]
    table = pa.Table.from_pylist([{k: r.get(k) for k in columns} for r in rows])
    return table.replace_schema_metadata({"room_set_hash": digest})


def parquet_bytes(table: pa.Table) -> bytes:
    """Deterministic parquet bytes (no timestamps in pyarrow's output)."""
    buf = io.BytesIO()
    pq.write_table(table, buf, compression="zstd")
    return buf.getvalue()


def read_rooms(path: str | Path | BinaryIO) -> list[Room]:
    """Rooms back from a rooms.parquet (a path or an open object), validated: shoeboxes (they have
    surfaces) or the rooms of a measured bank."""
    rows = pq.read_table(path).to_pylist()
    return [
        RoomSpec.model_validate({k: v for k, v in r.items() if k not in RoomSpec.model_computed_fields})
        if "surfaces" in r else MeasuredRoom.model_validate(r)
        for r in rows
    ]


def read_placements(path: str | Path | BinaryIO) -> list[Placement]:
    return [Placement.model_validate(r) for r in pq.read_table(path).to_pylist()]


def parametric_room(
    dims: tuple[float, float, float], target_t30_s: float, room_id: str = "parametric"
) -> RoomSpec:
    """A room with frequency-flat absorption on every surface, fitted to a target T30.

    Used when a user gives only dimensions and a T30 (the ``rir`` CLI); the RIR engine then
    calibrates against the measured T30.
    """
    if any(not math.isfinite(d) or d <= 0 for d in dims):
        raise InvalidRoomError(f"room dimensions must be positive, got {tuple(dims)}")
    if not math.isfinite(target_t30_s) or target_t30_s <= 0:
        raise InvalidRoomError(f"target T30 must be positive, got {target_t30_s}")

    def spec(alpha: float) -> RoomSpec:
        flat = [alpha] * len(OCTAVE_BANDS_HZ)
        surface = Surface(material="parametric", absorption=flat, scattering=[0.1] * len(flat))
        return RoomSpec(
            room_id=room_id, dims_m=tuple(dims), surfaces=dict.fromkeys(SURFACES, surface),
            target_t30_s=target_t30_s,
        )

    air = air_absorption()
    lo, hi = 1e-3, 0.99
    t_max, t_min = (predicted_t30(spec(a), 1.0, air, SPEED_OF_SOUND) for a in (lo, hi))
    if not t_min <= target_t30_s <= t_max:
        raise UnreachableT30Error(
            f"T30 {target_t30_s} s is unreachable in a {dims} m room: absorption 0.001..0.99 "
            f"gives {t_min:.3f}..{t_max:.3f} s"
        )
    alpha = brentq(
        lambda a: predicted_t30(spec(a), 1.0, air, SPEED_OF_SOUND) - target_t30_s, lo, hi, xtol=1e-9
    )
    return spec(round(alpha, 6))
