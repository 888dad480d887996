"""Records of the audio preparation stage: its config, its reject codes and what it did to a clip.

The stage itself lives in ``tasks/audio_prep.py``. These models are what crosses the stage
boundary: the config that fixes every threshold (so a rerun is reproducible and hashable), the
short reason codes that land in ``rejects.parquet``, and per-clip records that go into the
sample's ``.json`` provenance.
"""

from __future__ import annotations

import math
from enum import StrEnum
from typing import Any, Literal, Self

from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator


class RejectReason(StrEnum):
    """Why an input clip was refused. Short, stable codes: they are a rejects.parquet column."""

    EMPTY = "empty"
    """Zero bytes, or a valid header that declares (or a decode that yields) zero frames."""
    UNREADABLE = "unreadable"
    """A path that the OS cannot open or stat (missing file, permissions)."""
    UNDECODABLE = "undecodable"
    """libsndfile does not recognise the header: garbage, unsupported or mangled container."""
    TRUNCATED = "truncated"
    """The header is valid but the data is shorter than it declares (see ``decode``)."""
    NONFINITE = "nonfinite"
    """NaN or inf samples (float WAV/AIFF), or a render that produced them."""
    SILENT = "silent"
    """Peak below the absolute silence floor (e.g. all zeros)."""
    TOO_SHORT = "too_short"
    """Shorter than ``min_duration_s``, from the header or after trimming silence."""
    TOO_LONG = "too_long"
    """Longer than ``max_duration_s`` according to the header; never decoded."""
    TOO_MANY_CHANNELS = "too_many_channels"
    """More channels than ``max_channels`` (e.g. a 5.1 file is not a mono source)."""
    SAMPLE_RATE_TOO_LOW = "sample_rate_too_low"
    """Below ``min_sr``: upsampling it to 48 kHz would ship a band-limited clip as full-band."""
    SAMPLE_RATE_TOO_HIGH = "sample_rate_too_high"
    """Above ``max_sr``: almost always a mislabelled header; also bounds decode memory."""


FlacSubtype = Literal["PCM_16", "PCM_24"]
NoiseSpectrum = Literal["white", "pink"]


class SensorNoise(BaseModel):
    """Sensor noise added to every spatial format's rendered channels, before levelling and FLAC.

    Real B-format recordings carry capsule and preamp self-noise: independent on every channel and
    of equal power per channel. So is this noise, which is why it is relatively stronger on the
    dipoles than on W (a diffuse field's degree-1 SN3D channels carry 1/3 of W's power, and a plane
    wave spreads W's power over X, Y and Z), as in real recordings.

    SNR (dB) = 10 log10(mean power of the format's level channels over the whole sample / noise
    power of one channel), the level channels being the renderer's (W for ambiX and FOA, both ears
    for binaural): the channels whose RMS the sample is levelled by, so the SNR is that of the
    levelled audio too. Each spatial sample draws its SNR uniformly from ``snr_db`` (tasks.sensor_noise).

    The default range, 10 to 40 dB, runs from a quiet source a little above a portable recorder's
    noise floor (below 10 dB on W, the weakest dipoles of a plane wave are near 0 dB and the direction
    labels stop being audible) to a clean capture (above 40 dB the noise is more than 60 dB under the
    -23 dBFS level target: it would change little). White by default: self-noise is near white over
    the audio band; pink (1/f power, -3 dB per octave from 20 Hz up) is the rumble-heavier choice.
    """

    model_config = ConfigDict(frozen=True, extra="forbid")

    snr_db: tuple[float, float] = Field(
        (10.0, 40.0), description="(lo, hi): each spatial sample's SNR is drawn uniformly from it, dB; "
        "a single number (or 'lo,hi' text, as the CLI's --snr gives) is also accepted",
    )
    spectrum: NoiseSpectrum = Field("white", description="white, or pink (1/f power from 20 Hz up)")

    @field_validator("snr_db", mode="before")
    @classmethod
    def _range(cls, v: Any) -> Any:
        """'10,40' or '30' (the CLI's text) and a single number are ranges too."""
        if isinstance(v, str):
            v = [p.strip() for p in v.split(",")]
        if isinstance(v, int | float):
            v = [v]
        return (v[0], v[0]) if isinstance(v, list | tuple) and len(v) == 1 else v

    @model_validator(mode="after")
    def _ordered(self) -> Self:
        lo, hi = self.snr_db
        if not (math.isfinite(lo) and math.isfinite(hi)):
            raise ValueError(f"snr_db must be finite, got {self.snr_db}")
        if lo > hi:
            raise ValueError(f"snr_db range (lo, hi) has lo > hi: {self.snr_db}")
        return self


class TailTurn(BaseModel):
    """Each spatial sample's late field turned by its own uniformly random rotation (tasks.tail_turn).

    Why: a branch trained on the engine's rooms reads the direction of a reverberant tail as the
    source's. A real church's late energy flows in from above (S3A: +56 to +76 deg, the vaults), so its
    sources are heard 3-8 deg too high; cut those RIRs after 50 ms and the bias goes (RESULTS, issue 15,
    session 20). Turned tails keep every label (a rotation leaves W, hence T30, EDT, DRR and C50, alone),
    their strength and diffuseness, and make their direction independent of the source's. A training
    option, not realism: off (None) by default, and then absent from the dump. Measured (run 50, one
    seed): it does not stop the branch following a church's tail (benchmarks/sim2real_tail.py swing 16.0
    / 13.5 deg against 16.2 / 14.5 without), and the pooled S3A error moves 0.08 deg.
    """

    model_config = ConfigDict(frozen=True, extra="forbid")

    after_s: float = Field(0.05, gt=0.0, description="the tail starts this long after the direct sound's "
                           "onset (the first sample of W within 20 dB of its peak): what comes before, the "
                           "direct sound and the first reflections, stays as rendered")
    fade_s: float = Field(0.005, ge=0.0, description="raised-cosine crossfade from the field as rendered to "
                          "the turned one, so the dipoles do not step at the join")


class AudioPrepConfig(BaseModel):
    """Every threshold of decode → resample → trim → loop → convolve → level → FLAC.

    Frozen so that it can be hashed into the dataset version; the defaults follow the design
    (48 kHz, 16-bit FLAC, clips trimmed and looped to at least 4 s).
    """

    model_config = ConfigDict(frozen=True, extra="forbid")

    target_sr: int = Field(48000, gt=0, description="Sample rate of everything we write.")
    min_sr: int = Field(16000, gt=0, description="Reject sources below this rate.")
    max_sr: int = Field(384000, gt=0, description="Reject sources above this rate.")
    max_channels: int = Field(2, ge=1, description="Sources are mono or stereo; more is refused.")
    min_duration_s: float = Field(0.1, gt=0, description="Shortest usable clip (header and trim).")
    max_duration_s: float = Field(
        600.0, gt=0, description="Longest clip, checked from the header before any decoding."
    )
    silence_threshold_db: float = Field(
        -50.0, lt=0, description="Frame RMS below peak + this (dB) counts as silence when trimming."
    )
    silence_floor_dbfs: float = Field(
        -80.0, lt=0, description="A clip whose peak is below this (dBFS) is silent as a whole."
    )
    trim_frame_s: float = Field(0.01, gt=0, description="Frame length of the trim RMS detector.")
    min_loop_s: float = Field(4.0, ge=0, description="Loop clips to at least this length.")
    loop_crossfade_s: float = Field(
        0.01, ge=0, description="Equal-power crossfade at each loop join (avoids clicks)."
    )
    headroom_db: float = Field(
        -1.0, le=0, description="Peak ceiling (dBFS) over all output channels after levelling."
    )
    target_rms_dbfs: float = Field(
        -23.0, lt=0, description="RMS target of the rendered W channel (channel 0)."
    )
    flac_subtype: FlacSubtype = "PCM_16"
    flac_compression_level: float | None = Field(
        None, ge=0, le=1, description="libsndfile FLAC level 0..1; None keeps its default."
    )
    sensor_noise: SensorNoise | None = Field(
        None, exclude_if=lambda v: v is None,
        description="sensor noise on every spatial format before levelling (SensorNoise); None: noiseless, "
        "and then absent from the dump, so builds without it keep their versions and bytes",
    )
    tail_turn: TailTurn | None = Field(
        None, exclude_if=lambda v: v is None,
        description="turn each spatial sample's late field by a random rotation (TailTurn); None: as "
        "rendered, and then absent from the dump",
    )

    @model_validator(mode="after")
    def _consistent(self) -> Self:
        if self.min_sr > self.max_sr:
            raise ValueError("min_sr must not exceed max_sr")
        if self.min_duration_s >= self.max_duration_s:
            raise ValueError("min_duration_s must be below max_duration_s")
        if self.target_rms_dbfs >= self.headroom_db:
            raise ValueError("target_rms_dbfs must be below the peak ceiling headroom_db")
        return self


class SourceInfo(BaseModel):
    """What the source file's header said, read before decoding a single sample."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    format: str
    subtype: str
    sample_rate: int
    channels: int
    frames: int
    duration_s: float


class PreparedClip(BaseModel):
    """What prepare_clip did to one source: decode, mix to mono, resample, trim, loop."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    source: SourceInfo
    sample_rate: int = Field(description="Rate of the prepared clip (the target rate).")
    resampled: bool
    trim_start_samples: int = Field(ge=0, description="Leading silence removed, at sample_rate.")
    trim_end_samples: int = Field(ge=0, description="Trailing silence removed, at sample_rate.")
    trimmed_samples: int = Field(gt=0, description="Length of the sound after trimming.")
    loop_count: int = Field(ge=1, description="Copies of the trimmed clip; 1 means not looped.")
    crossfade_samples: int = Field(ge=0)
    num_samples: int = Field(gt=0, description="Length of the prepared (looped) clip.")
    duration_s: float
    peak_dbfs: float = Field(description="Peak of the prepared mono clip.")


class RenderedInfo(BaseModel):
    """What render_clip did: convolve with the RIR, one gain for all channels, FLAC encode."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    sample_rate: int
    channels: int
    num_samples: int
    duration_s: float
    rir_samples: int
    block_size: int
    fft_size: int
    gain_db: float = Field(description="The single gain applied to every channel.")
    peak_limited: bool = Field(description="True when the peak ceiling, not the RMS target, won.")
    peak_dbfs: float = Field(description="Peak over all channels after the gain.")
    rms_dbfs_w: float = Field(
        description="RMS of the renderer's level channels after the gain (W for ambiX, hence the name)."
    )
    flac_subtype: FlacSubtype
    flac_bytes: int
    sensor_snr_db: float | None = Field(
        None, exclude_if=lambda v: v is None,
        description="the sample's drawn sensor-noise SNR on the level channels (SensorNoise); absent: none",
    )
    sensor_noise_spectrum: NoiseSpectrum | None = Field(
        None, exclude_if=lambda v: v is None, description="white or pink, with sensor_snr_db",
    )
    tail_turn_quat: tuple[float, float, float, float] | None = Field(
        None, exclude_if=lambda v: v is None,
        description="the rotation its late field was turned by (AudioPrepConfig.tail_turn), as a unit "
        "quaternion (x, y, z, w), scipy's order; absent: not turned",
    )
