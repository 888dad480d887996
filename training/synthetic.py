"""Physically rendered FOA shards for tests and benchmarks, in the shard format the loader reads.

Sounds are synthetic (noise bursts, chirps, harmonic tones, click trains, filtered noise) and
each is rendered through an ambisonic RIR from the repo's engine (tasks.rir_engine), so the
direction, distance, T30 and DRR labels are true of the audio: a model that learns from these
shards learns acoustics, not a shortcut. Labels are measured on the rendered RIR, as in the real
pipeline. This stands in for the demo build until that exists; the loader reads either.

Records are the real ones (schemas.shards.SampleRecord, written by tasks.shard_writer):
``{root}/{split}/{split}-{shard:06d}.tar``, key ``{dataset}-{split}-{clip}-{aug}``, a 16-bit
48 kHz FLAC (4-channel ambiX with aug >= 1, or the mono original with aug 0) and its JSON.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
from pydantic import BaseModel, ConfigDict, Field
from scipy import signal

SR = 48000
SOUND_KINDS: tuple[str, ...] = ("noise_bursts", "chirp", "harmonic_tone", "clicks", "rumble")
_CAPTIONS = {
    "noise_bursts": "short bursts of hissing noise",
    "chirp": "a sweeping electronic chirp",
    "harmonic_tone": "a steady buzzing hum",
    "clicks": "a fast train of sharp clicks",
    "rumble": "a low rumbling noise",
}


class SyntheticSpec(BaseModel):
    """What to build: how many rooms (one placement per room and split), sounds, lengths."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    n_rooms: int = Field(24, ge=1)
    seed: int = 0
    sounds_per_placement: int = Field(2, ge=1, le=64)
    holdout_placements_per_room: int = Field(1, ge=1, description="val/test placements per held-out room")
    holdout_sounds_per_placement: int | None = Field(
        None, ge=1, le=64, description="default: sounds_per_placement"
    )
    sound_s: float = Field(2.0, gt=0.0)
    samples_per_shard: int = Field(16, ge=1)
    nonspatial_originals: bool = Field(True, description="also write each sound as a mono original")
    dataset: str = "synthetic"
    max_ism_order: int = Field(6, ge=0)
    splits: tuple[str, ...] = ("train", "val", "test")


def synthetic_sound(kind: str, seed: int, duration_s: float, sr: int = SR) -> np.ndarray:
    """A mono test sound, peak 0.5, deterministic in (kind, seed)."""
    rng = np.random.default_rng([seed, SOUND_KINDS.index(kind)])
    n = round(duration_s * sr)
    t = np.arange(n) / sr
    if kind == "noise_bursts":
        env = np.repeat(rng.uniform(0, 1, int(duration_s * 8) + 1) > 0.4, sr // 8 + 1)[:n].astype(float)
        x = rng.standard_normal(n) * signal.lfilter([1.0], [1.0, -0.5], env * 0.9 + 0.1)
    elif kind == "chirp":
        f0, f1 = rng.uniform(150, 600), rng.uniform(3000, 9000)
        x = signal.chirp(t, f0, duration_s, f1, method="logarithmic") + 0.05 * rng.standard_normal(n)
    elif kind == "harmonic_tone":
        f0 = rng.uniform(90, 500)
        x = sum(np.sin(2 * np.pi * f0 * k * t + rng.uniform(0, 6.3)) / k for k in range(1, 12))
        x = x + 0.02 * rng.standard_normal(n)
    elif kind == "clicks":
        x = 0.02 * rng.standard_normal(n)
        period = int(sr / rng.uniform(4, 20))
        x[::period] += 1.0
        x = signal.lfilter([1.0, -0.9], [1.0], x)
    elif kind == "rumble":
        sos = signal.butter(4, rng.uniform(200, 600), fs=sr, output="sos")
        x = signal.sosfilt(sos, rng.standard_normal(n)) + 0.05 * rng.standard_normal(n)
    else:
        raise ValueError(f"unknown sound kind {kind!r}")
    x = np.asarray(x, dtype=np.float64)
    return (0.5 * x / max(np.max(np.abs(x)), 1e-9)).astype(np.float32)


def descriptors(az: float, el: float, dist: float, area: float, t30: float | None) -> dict[str, str | None]:
    """DESIGN.md Table A.T.3 in this repo's convention (+azimuth = left); between bands: None."""
    t30 = t30 or 0.0
    return {
        "distance": "near" if dist < 1.0 else "far" if dist > 2.0 else None,
        "direction": (
            "front"
            if abs(az) <= 35
            else "left"
            if 55 <= az <= 125
            else "right"
            if -125 <= az <= -55
            else "back"
            if abs(az) > 145
            else None
        ),
        "elevation": "up" if el > 40 else "down" if el < -40 else None,
        "reverb": "acoustically dampened" if t30 < 0.2 else "highly reverberant" if t30 > 1.0 else None,
        "size": "small" if area < 50 else "large" if area > 100 else None,
    }


def template_caption(sound: str, d: dict[str, str | None]) -> str:
    """The paper's prompt, filled in without an LLM: the template backend's kind of caption."""
    where = " ".join(
        w
        for w in (d["distance"], {"up": "upper", "down": "lower"}.get(d["elevation"] or ""), d["direction"])
        if w
    )
    room = " ".join(w for w in (d["size"], d["reverb"]) if w)
    return (
        f"{sound.capitalize()} coming from the {where or 'somewhere'} of a {room + ' ' if room else ''}room."
    )


def render_samples(spec: SyntheticSpec) -> dict[str, list[Any]]:
    """Render every sample of every split as tasks.shard_writer ShardSamples (the real record)."""
    from room_specs import DEFAULT_CONFIG
    from schemas.audio import AudioPrepConfig
    from schemas.rooms import RirSettings
    from schemas.shards import CaptionInfo, Descriptors, Provenance
    from tasks.audio_prep import RirSpectrum, convolve, encode_flac, normalise_level
    from tasks.rir_bank import render_chunk
    from tasks.rir_engine import ENGINE_VERSION
    from tasks.room_sampling import load_config, sample_room_set
    from tasks.shard_writer import build_sample, labels_from_rir

    room_cfg = load_config(DEFAULT_CONFIG)
    splits = {
        k: (
            v
            if k == "train"
            else v.model_copy(update={"placements_per_room": spec.holdout_placements_per_room})
        )
        for k, v in room_cfg.splits.items()
    }
    room_cfg = room_cfg.model_copy(update={"splits": splits})
    rooms, placements, digest = sample_room_set(room_cfg, spec.seed, spec.n_rooms)
    by_id = {r.room_id: r for r in rooms}
    settings = RirSettings(calibrate=False, max_ism_order=spec.max_ism_order, seed=spec.seed)
    prep = AudioPrepConfig()
    out: dict[str, list[Any]] = {s: [] for s in spec.splits}
    rirs, records, _ = render_chunk(by_id, [p for p in placements if p.split in out], settings)
    measured = {r.placement_id: r for r in records}
    for pi, p in enumerate(placements):
        if p.placement_id not in measured:
            continue
        room = by_id[p.room_id]
        rec = measured[p.placement_id]
        rir = RirSpectrum.from_rir(rirs[p.placement_id], SR)
        words = descriptors(rec.azimuth_deg, rec.elevation_deg, rec.distance_m, room.floor_area_m2, rec.t30_s)
        n_sounds = (
            spec.sounds_per_placement
            if p.split == "train"
            else (spec.holdout_sounds_per_placement or spec.sounds_per_placement)
        )
        for a in range(n_sounds):
            clip = pi * 64 + a
            kind = SOUND_KINDS[(spec.seed + clip) % len(SOUND_KINDS)]
            x = synthetic_sound(kind, spec.seed * 100003 + clip, spec.sound_s)
            y, _ = normalise_level(convolve(x, rir)[:, : x.shape[0]], prep)
            original = _CAPTIONS[kind]
            prov = Provenance(
                source_dataset=spec.dataset,
                source_id=f"{kind}-{clip}",
                room_set_hash=digest,
                pipeline_version="synthetic/1",
                engine_version=ENGINE_VERSION,
                seed=spec.seed,
            )
            caps = [
                CaptionInfo(
                    original=original,
                    spatial=template_caption(original, words),
                    backend="template",
                    attempts=0,
                    validated=True,
                    fallback=False,
                )
            ]
            out[p.split].append(
                build_sample(
                    encode_flac(y, SR, "PCM_16"),
                    dataset=spec.dataset,
                    split=p.split,
                    clip_id=f"{clip:06d}",
                    aug=1,
                    captions=caps,
                    provenance=prov,
                    labels=labels_from_rir(rec, room),
                    descriptors=Descriptors(**words),
                )
            )
            if spec.nonspatial_originals and a == 0:
                mono = [
                    CaptionInfo(
                        original=original,
                        spatial=original,
                        backend="none",
                        attempts=0,
                        validated=True,
                        fallback=False,
                    )
                ]
                out[p.split].append(
                    build_sample(
                        encode_flac(x, SR, "PCM_16"),
                        dataset=spec.dataset,
                        split=p.split,
                        clip_id=f"{clip:06d}",
                        aug=0,
                        captions=mono,
                        provenance=prov,
                    )
                )
    return out


def write_shards(samples: list[Any], root: str | Path, split: str, per_shard: int) -> list[Path]:
    """Write ShardSamples as ``{root}/{split}/{split}-{shard:06d}.tar`` (tasks.shard_writer.write_tar)."""
    from tasks.shard_writer import write_tar

    d = Path(root) / split
    d.mkdir(parents=True, exist_ok=True)
    paths = []
    for i in range(0, len(samples), per_shard):
        path = d / f"{split}-{i // per_shard:06d}.tar"
        with open(path, "wb") as f:
            write_tar(samples[i : i + per_shard], f)
        paths.append(path)
    return paths


def build_synthetic_shards(root: str | Path, spec: SyntheticSpec | None = None) -> dict[str, Any]:
    """Render and write every split under ``root``; returns counts per split (JSON-serialisable)."""
    spec = spec or SyntheticSpec()
    rendered = render_samples(spec)
    summary: dict[str, Any] = {"root": str(root), "splits": {}}
    for split, samples in rendered.items():
        shards = write_shards(samples, root, split, spec.samples_per_shard) if samples else []
        summary["splits"][split] = {"samples": len(samples), "shards": len(shards)}
    return summary


def upload_tree(local_root: str | Path, uri: str) -> int:
    """Copy every file under ``local_root`` to ``uri`` (local or s3://) through tasks.storage."""
    from tasks.storage import join_uri, open_storage

    st = open_storage(uri)
    n = 0
    for p in sorted(Path(local_root).rglob("*")):
        if p.is_file():
            st.put_bytes(join_uri(uri, p.relative_to(local_root).as_posix()), p.read_bytes())
            n += 1
    return n


def train_tiny_tokenizer(out_dir: str | Path, texts: list[str] | None = None, vocab_size: int = 400) -> Path:
    """A small byte-level BPE tokenizer (RoBERTa's kind and special tokens), saved for from_pretrained.

    Tests and benchmarks use it where the real roberta-base tokenizer cannot be downloaded.
    """
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, processors, trainers
    from transformers import PreTrainedTokenizerFast

    texts = texts or [
        template_caption(c, descriptors(az, el, d, a, t))
        for c in _CAPTIONS.values()
        for az, el, d, a, t in (
            (90, 0, 0.5, 30, 0.1),
            (-90, 50, 3, 150, 1.5),
            (0, -50, 1.5, 70, 0.5),
            (180, 0, 3, 20, 2.0),
        )
    ]
    tok = Tokenizer(models.BPE(unk_token=None))
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    special = ["<s>", "<pad>", "</s>", "<unk>", "<mask>"]
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size,
        special_tokens=special,
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    tok.train_from_iterator(texts * 4, trainer)
    tok.post_processor = processors.RobertaProcessing(
        ("</s>", tok.token_to_id("</s>")), ("<s>", tok.token_to_id("<s>"))
    )
    fast = PreTrainedTokenizerFast(
        tokenizer_object=tok,
        bos_token="<s>",
        eos_token="</s>",
        unk_token="<unk>",
        pad_token="<pad>",
        mask_token="<mask>",
        model_max_length=512,
    )
    out = Path(out_dir)
    fast.save_pretrained(str(out))
    return out
