"""Room sources: the seam where a sample's room impulse response comes from.

A ``RirSource`` turns (room, placement, RIR settings) into an ambiX RIR of shape
((order + 1)^2, samples) at ``settings.fs`` and the ``RirRecord`` measured on it. The RIR bank
(tasks/rir_bank.py) renders, keys and packs chunks through whichever source is named, so a new
source (issue 14's measured SRIR banks, issue 13's RIRs along a trajectory) is one class plus an
entry in ``RIR_SOURCES``; the render, shard and caption stages only see ambiX RIRs and records.

A source's ``version`` enters the bank key: change what a source produces, bump its version, and
every chunk it made is rendered again instead of being reused.

Sources: ``ism``, the simulated shoebox (tasks/rir_engine.py: image sources with an SN3D diffuse
tail, absorption calibrated to the room's target T30); ``measured``, a recorded SRIR bank
(tasks/measured_bank.py: SOFA or WAVs with a positions table, converted to ambiX); and ``twin``,
that shoebox rendering a measured bank's geometry at its rooms' measured T30 (tasks/measured_twins.py).
"""

from __future__ import annotations

import logging
from typing import Protocol

import numpy as np

from schemas.build import BuildConfig
from schemas.measured import MeasuredRoom
from schemas.rooms import Placement, RirRecord, RirSettings, Room, RoomSpec
from tasks.errors import registered
from tasks.measured_bank import MEASURED_VERSION, MeasuredBankError, bank_room_set, load_bank, render_measured
from tasks.measured_directivity import resolve_directivity
from tasks.measured_twins import TWIN_VERSION, TwinError, twin_room_set
from tasks.rir_engine import (
    ENGINE_VERSION,
    Directivity,
    MeasuredSourceDirectivity,
    SourceDirectivity,
    measure,
    render_rir,
)
from tasks.room_sampling import load_config, sample_room_set

log = logging.getLogger(__name__)


def placement_directivity(p: Placement) -> Directivity | None:
    """The source a placement draws: omni (None), an analytic pattern, or the room set's SOFA file
    its ``sofa:`` label names (refused with DirectivityFileError when the file changed since)."""
    if p.source_pattern is None or p.source_axis_deg is None:
        return None
    if p.source_directivity_file is None:
        return SourceDirectivity(p.source_pattern, p.source_axis_deg)
    measured = resolve_directivity(p.source_pattern, p.source_directivity_file)
    return MeasuredSourceDirectivity(measured, p.source_axis_deg)


class RirSource(Protocol):
    """Where RIRs come from. ``render`` raises a SpatialAudioCapsError for a placement it cannot
    serve (the bank turns that into a BankReject, not a crash)."""

    method: str
    """``RirRecord.method`` of every record it makes."""
    version: str
    """Enters the RIR-bank key and ``RirRecord.engine_version``."""

    def render(
        self, room: Room, placement: Placement, settings: RirSettings
    ) -> tuple[np.ndarray, RirRecord]: ...

    def room_set(self, cfg: BuildConfig) -> tuple[list[Room], list[Placement], str]:
        """The build's rooms, placements (with their splits) and the set's content hash."""
        ...


class ShoeboxIsm:
    """The simulated shoebox: ambisonic ISM + diffuse tail, calibrated to the room's T30."""

    method = "ism"
    version = ENGINE_VERSION

    def room_set(self, cfg: BuildConfig) -> tuple[list[Room], list[Placement], str]:
        """The paper's parametric rooms (cfg.room_config), sampled with cfg.room_seed."""
        rooms, placements, digest = sample_room_set(load_config(cfg.room_config), cfg.room_seed, cfg.n_rooms)
        return list(rooms), placements, digest

    def render(
        self, room: RoomSpec, placement: Placement, settings: RirSettings
    ) -> tuple[np.ndarray, RirRecord]:
        p = placement
        rendered = render_rir(room, p.receiver_m, p.source_m, p.receiver_yaw_deg, settings,
                              early_window_s=p.early_window_s, calibrate_at=p.calibrate_at_m,
                              directivity=placement_directivity(p))
        record = measure(
            rendered, placement_id=p.placement_id, room_id=p.room_id, room_set_hash=p.room_set_hash,
            target_t30_s=room.target_t30_s, order=settings.order, early_window_s=p.early_window_s,
            decay_below_hz=settings.decay_below_hz,
        )
        return rendered.rir, record


class MeasuredSrir:
    """A measured SRIR bank (tasks/measured_bank.py): the placement's ``srir`` is read, converted
    to ambiX, truncated to the build's order and resampled to its rate; the room (a MeasuredRoom)
    says where the bank's files are (the recording is the room)."""

    method = "measured"
    version = MEASURED_VERSION

    def room_set(self, cfg: BuildConfig) -> tuple[list[Room], list[Placement], str]:
        """The bank's rooms and positions (one room each held out for val and test when the bank has
        three or more; cfg.room_seed picks them); refused when the bank's order is below the build's."""
        if cfg.bank is None:
            raise MeasuredBankError("room_source measured needs a bank (--bank PATH)")
        bank = load_bank(cfg.bank, cfg.bank_format)
        if bank.order < cfg.rir.order:
            raise MeasuredBankError(f"{cfg.bank}: the bank is order {bank.order}, the build asks for order "
                                    f"{cfg.rir.order} (rir.order)")
        rooms, placements, digest = bank_room_set(bank, cfg.room_seed)
        return list(rooms), placements, digest

    def render(
        self, room: Room, placement: Placement, settings: RirSettings
    ) -> tuple[np.ndarray, RirRecord]:
        if not isinstance(room, MeasuredRoom):
            raise MeasuredBankError(f"{placement.placement_id}: a measured RIR needs its bank's room")
        return render_measured(room, placement, settings)


class ShoeboxTwin(ShoeboxIsm):
    """Engine twins of a measured bank's rooms (tasks/measured_twins.py): the shoebox renders the
    bank's positions in a box of each room's size at its measured T30, with the measured build's
    splits, so real-vs-twin scores isolate what the simulator misses. The RIRs are the engine's
    (``method`` ism, IsmDetails); only the room set and the version are the twin's own."""

    version = TWIN_VERSION

    def room_set(self, cfg: BuildConfig) -> tuple[list[Room], list[Placement], str]:
        """Twins of the bank's rooms; rooms without a measured T30 are left out (logged)."""
        if cfg.bank is None:
            raise TwinError("room_source twin needs the measured bank it twins (--bank PATH)")
        twins = twin_room_set(load_bank(cfg.bank, cfg.bank_format), cfg.room_seed, cfg.rir)
        for room_id, reason in twins.skipped.items():
            log.warning("no twin of measured room %s: %s", room_id, reason)
        return list(twins.rooms), twins.placements, twins.digest

    def render(
        self, room: RoomSpec, placement: Placement, settings: RirSettings
    ) -> tuple[np.ndarray, RirRecord]:
        rir, record = super().render(room, placement, settings)
        return rir, record.model_copy(update={"engine_version": self.version})


DEFAULT_RIR_SOURCE = "ism"
RIR_SOURCES: dict[str, RirSource] = {"ism": ShoeboxIsm(), "measured": MeasuredSrir(), "twin": ShoeboxTwin()}


def rir_source(name: str) -> RirSource:
    """The registered source called ``name`` (UnknownComponentError lists the others)."""
    return registered(RIR_SOURCES, name, "room source")
