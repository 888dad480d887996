"""Render the samples of one shard: decode each clip once, convolve with its placements' RIRs.

Work per shard is grouped so that a clip used by several augmentations is decoded and prepared
once, and a RIR used by several clips has its spectrum computed once. Spatial samples go through
one renderer (tasks/renderers.py, ambiX by default), non-spatial originals through ``mono``. With
``audio.tail_turn`` each spatial sample's late field is turned by its own rotation (tasks.tail_turn). A
scene sample (several sources, some moving) is rendered by tasks.scene_render from the prepared
clips of all its sources and the RIRs of all its trajectory points.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field

import numpy as np

from schemas.audio import AudioPrepConfig, PreparedClip, RenderedInfo
from schemas.rooms import RirRecord
from schemas.shards import MONO_FORMAT
from tasks.audio_prep import Encoded, RirSpectrum, encode_flac, normalise_level, prepare_clip, render_formats
from tasks.errors import AudioRejected
from tasks.plan import PlanItem, locality_order
from tasks.renderers import DEFAULT_RENDERER, renderer
from tasks.scene_render import SceneRendered, render_scene
from tasks.sensor_noise import sample_noise
from tasks.sources import ClipAudio
from tasks.tail_turn import SplitSpectrum, draw_turn


@dataclass(frozen=True)
class RenderedSample:
    """One finished sample's audio and what made it."""

    item: PlanItem
    flac: bytes
    format: str  # the renderer that made ``flac``: AudioInfo.format
    prepared: PreparedClip
    rendered: RenderedInfo | None  # None for the non-spatial original
    rir: RirRecord | None  # a scene's: source 0's first point (the sample's ``labels``)
    gain_db: float
    scene: SceneRendered | None = None  # per-source gains and frame activity of a scene sample
    extra: Encoded = field(default_factory=dict)  # further formats of a spatial sample, by format


@dataclass(frozen=True)
class RenderReject:
    key: str
    dataset: str
    clip_id: str
    reason: str
    detail: str


def render_items(
    items: list[PlanItem],
    rirs: dict[str, np.ndarray],
    records: dict[str, RirRecord],
    cfg: AudioPrepConfig,
    fmt: str = DEFAULT_RENDERER,
    extra_formats: Sequence[str] = (),
) -> tuple[list[RenderedSample], list[RenderReject]]:
    """Render ``items``, spatial ones with the ``fmt`` renderer (and each of ``extra_formats``
    from the same scene, into ``RenderedSample.extra``), returned in locality order
    (tasks.plan.locality_order); a bad clip or a missing RIR rejects its samples, nothing else.
    One ClipAudio reads the shard's clips, so each source tar is opened once per shard."""
    with ClipAudio() as audio:
        return _render_items(items, rirs, records, cfg, (fmt, *extra_formats), audio.read)


def _render_items(
    items: list[PlanItem],
    rirs: dict[str, np.ndarray],
    records: dict[str, RirRecord],
    cfg: AudioPrepConfig,
    formats: tuple[str, ...],
    read_audio: Callable[[str], bytes],
) -> tuple[list[RenderedSample], list[RenderReject]]:
    fmt, extra_formats = formats[0], formats[1:]
    mono_out = renderer(MONO_FORMAT)
    prepared: dict[str, tuple[np.ndarray, PreparedClip] | AudioRejected] = {}
    spectra: dict[str, RirSpectrum | SplitSpectrum] = {}
    done: list[RenderedSample] = []
    rejects: list[RenderReject] = []
    # Worked in locality order (placement, then clip), each prepared clip and RIR spectrum is
    # dropped after its last use in the shard: a shard holds a few of each at a time, not all.
    clip_uses = Counter(uri for i in items for uri in _clip_uris(i))
    rir_uses = Counter(i.placement_id for i in items if i.scene is None and i.placement_id in rirs)

    def clip(uri: str) -> tuple[np.ndarray, PreparedClip] | AudioRejected:
        if uri not in prepared:
            try:
                prepared[uri] = prepare_clip(read_audio(uri), cfg)
            except AudioRejected as exc:
                prepared[uri] = exc
        clip_uses[uri] -= 1
        return prepared[uri] if clip_uses[uri] else prepared.pop(uri)

    for item in locality_order(items):
        clips = [clip(uri) for uri in _clip_uris(item)]
        bad = next(((n, c) for n, c in enumerate(clips) if isinstance(c, AudioRejected)), None)
        if bad is not None:
            n, exc = bad
            detail = exc.detail if n == 0 else f"scene source {n} ({_clip_uris(item)[n]}): {exc.detail}"
            rejects.append(RenderReject(item.key, item.dataset, item.clip_id, exc.reason, detail))
            continue
        mono, clip_info = clips[0]  # type: ignore[misc]
        noise = sample_noise(cfg.sensor_noise, item.seed, item.key)  # spatial formats only use it
        if item.scene is not None:
            try:
                flac, scene_info = render_scene(item.scene, [c[0] for c in clips], rirs, cfg,  # type: ignore[index]
                                                fmt, extra_formats, noise)
            except AudioRejected as exc:
                rejects.append(RenderReject(item.key, item.dataset, item.clip_id, exc.reason, exc.detail))
                continue
            first = records[item.scene.sources[0].points[0].placement_id]
            done.append(RenderedSample(item, flac, fmt, clip_info, scene_info.rendered, first,
                                       scene_info.rendered.gain_db, scene_info, scene_info.extra))
            continue
        if item.placement_id is None:
            dry = mono_out.render(mono[None, :], cfg.target_sr)
            y, gain_db = normalise_level(dry, cfg, mono_out.level_channels)
            flac = encode_flac(
                y, cfg.target_sr, cfg.flac_subtype, compression_level=cfg.flac_compression_level
            )
            done.append(RenderedSample(item, flac, MONO_FORMAT, clip_info, None, None, gain_db))
            continue
        if item.placement_id not in rirs:
            rejects.append(RenderReject(item.key, item.dataset, item.clip_id, "rir_failed",
                                        f"no RIR for placement {item.placement_id}"))
            continue
        pid = item.placement_id
        if pid not in spectra:
            spectra[pid] = (RirSpectrum.from_rir(rirs[pid], cfg.target_sr) if cfg.tail_turn is None
                            else SplitSpectrum.from_rir(rirs[pid], cfg.target_sr, cfg.tail_turn))
        rir_uses[pid] -= 1
        spectrum = spectra[pid] if rir_uses[pid] else spectra.pop(pid)
        turn = draw_turn(cfg.tail_turn, item.seed, item.key)
        if isinstance(spectrum, SplitSpectrum):
            spectrum = spectrum.turned(turn)  # type: ignore[arg-type]
        try:
            encoded = render_formats(mono, spectrum, cfg, formats, noise)
        except AudioRejected as exc:
            rejects.append(RenderReject(item.key, item.dataset, item.clip_id, exc.reason, exc.detail))
            continue
        if turn is not None:
            encoded = {f: (b, i.model_copy(update={"tail_turn_quat": turn})) for f, (b, i) in encoded.items()}
        flac, info = encoded.pop(fmt)
        done.append(RenderedSample(item, flac, fmt, clip_info, info, records[item.placement_id], info.gain_db,
                                   extra=encoded))
    return done, rejects


def _clip_uris(item: PlanItem) -> list[str]:
    """The clips a sample is made of: its own, then its scene's further sources'."""
    if item.scene is None:
        return [item.audio_uri]
    return [item.audio_uri, *(s.audio_uri for s in item.scene.sources[1:])]
