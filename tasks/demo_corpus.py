"""The built-in demo corpus: varied synthetic clips with honest captions, made in-process.

It is the embedded default source, so the whole pipeline runs with no downloads. Each caption
only states what the synthesis really produced (pitch movement, texture, rhythm), and clips come
at several sample rates, lengths and with silent padding, so that resampling, trimming and looping
are exercised the way real corpora exercise them.
"""

from __future__ import annotations

import io
from collections.abc import Callable
from dataclasses import dataclass

import numpy as np
import soundfile as sf

SAMPLE_RATES = (44100, 48000, 32000, 22050)


@dataclass(frozen=True)
class DemoClip:
    """One clip: encoded WAV bytes and its captions (several, like Clotho)."""

    clip_id: str
    audio: bytes
    captions: tuple[str, ...]


def _tone(rng: np.random.Generator, t: np.ndarray) -> tuple[np.ndarray, list[str]]:
    f = float(rng.choice([220.0, 440.0, 880.0, 1760.0]))
    pitch = "low" if f < 300 else "high" if f > 1000 else "mid"
    return np.sin(2 * np.pi * f * t), [
        f"a steady {pitch}-pitched electronic tone",
        f"a constant {pitch} beep that does not change",
        "a single pure tone held for a while",
    ]


def _sweep(rng: np.random.Generator, t: np.ndarray) -> tuple[np.ndarray, list[str]]:
    up = bool(rng.integers(2))
    f0, f1 = (200.0, 4000.0) if up else (4000.0, 200.0)
    k = np.log(f1 / f0) / t[-1]
    phase = 2 * np.pi * f0 * (np.exp(k * t) - 1) / k
    word = "rising" if up else "falling"
    return np.sin(phase), [
        f"a {word} whistle-like tone sweep",
        f"an electronic tone whose pitch keeps {word}",
        f"a synthetic sweep {word} in pitch",
    ]


def _noise(rng: np.random.Generator, t: np.ndarray) -> tuple[np.ndarray, list[str]]:
    return rng.standard_normal(t.size) * 0.4, [
        "a steady hiss of white noise",
        "constant static noise like an untuned radio",
        "broadband hissing noise",
    ]


def _clicks(rng: np.random.Generator, t: np.ndarray) -> tuple[np.ndarray, list[str]]:
    fs = 1.0 / (t[1] - t[0])
    rate = float(rng.choice([2.0, 4.0, 8.0]))
    x = np.zeros(t.size)
    x[(np.arange(0, t[-1], 1 / rate) * fs).astype(int)] = 1.0
    burst = np.exp(-np.arange(int(0.004 * fs)) / (0.0008 * fs)) * rng.standard_normal(int(0.004 * fs))
    speed = "slow" if rate < 3 else "fast" if rate > 6 else "regular"
    return np.convolve(x, burst)[: t.size], [
        f"a {speed} series of sharp clicks",
        f"sharp ticking at a {speed} steady pace",
        "repeated short clicks like a clock ticking",
    ]


def _hum(rng: np.random.Generator, t: np.ndarray) -> tuple[np.ndarray, list[str]]:
    f = float(rng.choice([50.0, 60.0]))
    x = sum(np.sin(2 * np.pi * f * h * t) / h for h in range(1, 6))
    return x, [
        "a low electrical hum",
        "a deep steady buzzing hum like a transformer",
        "low-pitched humming that stays constant",
    ]


def _bell(rng: np.random.Generator, t: np.ndarray) -> tuple[np.ndarray, list[str]]:
    f = float(rng.choice([523.0, 784.0, 1046.0]))
    env = np.exp(-t / 0.6)
    x = env * (np.sin(2 * np.pi * f * t) + 0.5 * np.sin(2 * np.pi * 2.76 * f * t))
    return x, [
        "a bell-like tone rings once and fades away",
        "a single chime that slowly dies out",
        "a metallic ringing sound decaying",
    ]


def _siren(rng: np.random.Generator, t: np.ndarray) -> tuple[np.ndarray, list[str]]:
    f_lo, f_hi = 600.0, 900.0
    period = float(rng.choice([0.5, 1.0]))
    f = np.where((t // period) % 2 == 0, f_lo, f_hi)
    return np.sin(2 * np.pi * np.cumsum(f) * (t[1] - t[0])), [
        "a siren alternating between two tones",
        "a two-tone warning signal going back and forth",
        "an alarm switching between a high and a low pitch",
    ]


def _thuds(rng: np.random.Generator, t: np.ndarray) -> tuple[np.ndarray, list[str]]:
    fs = 1.0 / (t[1] - t[0])
    x = np.zeros(t.size)
    step = float(rng.uniform(0.45, 0.7))
    n = int(0.08 * fs)
    thud = np.sin(2 * np.pi * 80 * np.arange(n) / fs) * np.exp(-np.arange(n) / (0.02 * fs))
    for start in np.arange(0.1, t[-1] - 0.1, step):
        i = int(start * fs)
        x[i : i + n] += thud[: t.size - i]
    return x, [
        "dull thuds at a regular walking pace",
        "low thumping sounds repeating steadily",
        "muffled knocks one after another",
    ]


GENERATORS: tuple[Callable[[np.random.Generator, np.ndarray], tuple[np.ndarray, list[str]]], ...] = (
    _tone, _sweep, _noise, _clicks, _hum, _bell, _siren, _thuds,
)


def demo_clip(index: int, seed: int = 0) -> DemoClip:
    """Clip ``index`` of the corpus: its own random stream, generator, sample rate and length."""
    rng = np.random.default_rng([seed, index])
    gen = GENERATORS[index % len(GENERATORS)]
    fs = int(SAMPLE_RATES[index % len(SAMPLE_RATES)])
    duration = float(rng.uniform(1.5, 7.0))
    t = np.arange(int(duration * fs)) / fs
    x, captions = gen(rng, t)
    x = 0.5 * x / max(float(np.abs(x).max()), 1e-9)
    pad = np.zeros(int(rng.uniform(0.0, 0.4) * fs))  # silence for the trimmer to remove
    buf = io.BytesIO()
    sf.write(buf, np.concatenate([pad, x, pad]).astype(np.float32), fs, format="WAV", subtype="PCM_16")
    return DemoClip(f"demo{index:04d}-{gen.__name__.strip('_')}", buf.getvalue(), tuple(captions))


def demo_clips(n: int = 32, seed: int = 0) -> list[DemoClip]:
    """The first ``n`` clips, cycling through the generators."""
    return [demo_clip(i, seed) for i in range(n)]
