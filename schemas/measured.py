"""Measured SRIR banks: the records a bank of recorded ambisonic room impulse responses yields.

A bank (a SOFA file, or folders of WAVs with a ``labels_derived.csv``) is read once by
tasks/measured_bank.py into a ``MeasuredBank``; each of its positions becomes a Placement whose
``srir`` (a ``MeasuredRef``) names the data by content hash, so the RIR-bank key changes when the
data does. The RIR rendered from it carries ``MeasuredDetails``, so a sample's provenance and its
licence reach the card.
"""

from __future__ import annotations

from pathlib import Path
from typing import Literal

from pydantic import BaseModel, ConfigDict, Field

ChannelFormat = Literal["ambix", "fuma", "n3d"]
"""ambix: ACN/SN3D; fuma: W, X, Y, Z with W at -3 dB (first order only); n3d: ACN/N3D."""

FormatSource = Literal["argument", "manifest", "sofa_attribute", "metadata_text", "data"]
"""How a bank's channel format was decided, in the order they are tried."""


class BankManifest(BaseModel):
    """The optional ``bank.json`` / ``bank.yaml`` at a bank's root: what the files cannot say."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    name: str | None = None
    source: str | None = Field(None, description="where the data come from (citation, URL, DOI)")
    licence: str | None = None
    channel_format: ChannelFormat | None = None
    fs: int | None = Field(None, gt=0, description="every file's sample rate must equal this")
    dims_m: dict[str, tuple[float, float, float]] = Field(
        default_factory=dict, description="room folder name (or SOFA stem) -> room dimensions"
    )


class Licence(BaseModel):
    """A bank's licence and where it was found, so the card can name both."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    text: str = Field(description="the licence as found, or 'unknown'")
    source: str = Field(description="'manifest', 'sofa GLOBAL_License', 'file <relpath>' or 'none found'")


class MeasuredRoom(BaseModel):
    """One measured room: its positions are all in one split (whole rooms are held out)."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    room_id: str
    name: str
    fs: int = Field(gt=0, description="native sample rate of its files")
    n_positions: int = Field(ge=1)
    dims_m: tuple[float, float, float] | None = Field(None, description="only when a manifest gives it")
    bank_id: str | None = Field(None, description="set in a room set (bank_room_set): the bank it came from")
    split: Literal["train", "val", "test"] | None = Field(
        None, description="in a room set: the split the whole room is held out in; None when the bank has "
        "too few rooms and the room's positions are spread over the splits",
    )
    root: str | None = Field(
        None, exclude=True,
        description="the folder the bank's file names are relative to, where this process finds them; not "
        "dumped (never in a hash, rooms.parquet or a record), so a bank moved elsewhere is the same data",
    )
    source: str | None = Field(None, description="the bank's provenance (MeasuredBank.source), for the card")
    licence: Licence | None = Field(None, description="the bank's licence and where it was found (card)")

    @property
    def floor_area_m2(self) -> float | None:
        """As RoomSpec's, or None: a measured room's size is known only from its manifest."""
        return self.dims_m[0] * self.dims_m[1] if self.dims_m else None

    @property
    def volume_m3(self) -> float | None:
        return self.dims_m[0] * self.dims_m[1] * self.dims_m[2] if self.dims_m else None


class MeasuredPosition(BaseModel):
    """One measured SRIR with its label in the project's convention (receiver at the origin,
    looking along +x; +azimuth = left)."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    room_id: str
    file: str = Field(description="the WAV or SOFA file, relative to the bank's folder (MeasuredBank.root)")
    index: int | None = Field(None, description="measurement index M in a SOFA file; None for a WAV")
    azimuth_deg: float = Field(gt=-180.0, le=180.0)
    elevation_deg: float = Field(ge=-90.0, le=90.0)
    distance_m: float = Field(gt=0.0)
    sha256: str = Field(description="of the WAV file's bytes, or of the SOFA measurement's IR samples")


class MeasuredBank(BaseModel):
    """A measured SRIR bank as read: rooms, positions, channel format, provenance and licence."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    bank_id: str = Field(description="content hash of every file the bank was read from")
    path: str = Field(description="the SOFA file or folder as given")
    kind: Literal["sofa", "wav"]
    source: str = Field(description="what the data are (manifest, SOFA attributes or README text)")
    licence: Licence
    channel_format: ChannelFormat
    format_source: FormatSource
    format_evidence: str = Field(description="the text, attribute or ratio the format was decided on")
    order: int = Field(ge=0)
    rooms: list[MeasuredRoom]
    positions: list[MeasuredPosition]

    @property
    def root(self) -> str:
        """The folder positions' file names are relative to: the one holding ``path``."""
        return str(Path(self.path).resolve().parent)


class MeasuredRef(BaseModel):
    """A placement's measured SRIR: enough to read, convert and check it given the bank's folder
    (MeasuredRoom.root). It enters the room-set hash and the RIR-bank key, so it holds what the
    data are (a relative name and its hash), not where this machine keeps them or their licence."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    bank_id: str
    file: str = Field(description="path relative to the bank's folder (MeasuredRoom.root)")
    index: int | None = None
    channel_format: ChannelFormat
    order: int = Field(ge=0)
    native_fs: int = Field(gt=0)
    sha256: str


class MeasuredDetails(BaseModel):
    """How the measured source (``method="measured"``) made a RIR: what only that method has."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    bank_id: str
    file: str
    index: int | None = None
    channel_format: ChannelFormat = Field(description="the bank's format, converted to ambiX")
    native_fs: int
    licence: str
    predelay_removed_s: float = Field(
        ge=0.0, description="measurement latency cut so the direct sound arrives at distance / c"
    )
