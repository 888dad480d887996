"""Render throughput: audio seconds produced per CPU second, full chain vs the bare kernel.

Full chain (what a render worker does per sample): decode a 44.1 kHz 10 s WAV from memory →
mono → resample to 48 kHz → trim → loop → convolve with a cached 4-channel RIR spectrum →
level → 16-bit FLAC bytes (tasks.audio_prep.prepare_clip + render_clip).

Bare kernel, same run, same clips and RIRs: scipy.signal.oaconvolve of the already prepared
48 kHz clip with the RIR + soundfile FLAC write. The RIR spectra are computed once per RIR
outside the timed loop (the design reuses each RIR for ~100 clips); their one-off cost is
reported separately.

Prints one JSON line. Claims: >= 100x realtime per core; full chain within 1.5x of the kernel.
"""

from __future__ import annotations

import io
import json
import os
import platform
import statistics
import sys
import time
from pathlib import Path

import numpy as np
import scipy
import soundfile as sf
from scipy import signal

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from schemas.audio import AudioPrepConfig
from tasks import audio_prep as ap

SR_IN, SR_OUT = 44100, 48000
N_CLIPS = 4
CLIP_S = 10.0
T30S = (0.5, 2.0)
REPEATS = 5


def synthetic_clip(seed: int) -> bytes:
    """10 s at 44.1 kHz: coloured noise events under an envelope, with silent head and tail."""
    rng = np.random.default_rng(seed)
    n = int(CLIP_S * SR_IN)
    x = signal.lfilter([1.0], [1.0, -0.9], rng.standard_normal(n))
    env = np.repeat(rng.uniform(0.05, 1.0, 100), n // 100 + 1)[:n]
    x *= env
    lead, tail = int(rng.uniform(0.1, 0.6) * SR_IN), int(rng.uniform(0.1, 0.6) * SR_IN)
    x[:lead] = 0.0
    x[n - tail :] = 0.0
    x *= 0.5 / np.max(np.abs(x))
    bio = io.BytesIO()
    sf.write(bio, x.astype(np.float32), SR_IN, format="WAV", subtype="PCM_16")
    return bio.getvalue()


def synthetic_rir(t30: float, seed: int) -> np.ndarray:
    """4-channel exponentially decaying noise, 1.5 x T30 long, with a direct-path spike."""
    rng = np.random.default_rng(seed)
    n = int(1.5 * t30 * SR_OUT)
    env = 10.0 ** (-3.0 * np.arange(n) / (t30 * SR_OUT))
    h = rng.standard_normal((4, n)) * env * 0.05
    h[:, 200] += [1.0, 0.5, 0.2, 0.7]
    return h.astype(np.float32)


def main() -> None:
    cfg = AudioPrepConfig()
    clips = [synthetic_clip(i) for i in range(N_CLIPS)]
    rirs = [synthetic_rir(t30, i) for i, t30 in enumerate(T30S)]

    t0 = time.process_time()
    specs = [ap.RirSpectrum.from_rir(h, SR_OUT) for h in rirs]
    spectrum_cpu_s = (time.process_time() - t0) / len(rirs)

    # Inputs of the bare kernel: the prepared 48 kHz clips, pre-scaled so the output fits.
    prepared = [ap.prepare_clip(c, cfg)[0] for c in clips]
    bare_inputs = []
    out_seconds = 0.0
    for x in prepared:
        for h in rirs:
            y = signal.oaconvolve(x[None, :], h, axes=-1)
            bare_inputs.append((x * np.float32(0.89 / np.max(np.abs(y))), h))
            out_seconds += y.shape[1] / SR_OUT

    def full() -> None:
        for c in clips:
            for s in specs:
                clip, _ = ap.prepare_clip(c, cfg)
                ap.render_clip(clip, s, cfg)

    def bare() -> None:
        for x, h in bare_inputs:
            y = signal.oaconvolve(x[None, :], h, axes=-1)
            bio = io.BytesIO()
            sf.write(bio, y.T, SR_OUT, format="FLAC", subtype="PCM_16")

    full()  # warm-up (imports, FFT plans)
    bare()
    t_full, t_bare = [], []
    for _ in range(REPEATS):
        for fn, acc in ((full, t_full), (bare, t_bare)):
            t = time.process_time()
            fn()
            acc.append(time.process_time() - t)
    med_full, med_bare = statistics.median(t_full), statistics.median(t_bare)
    result = {
        "benchmark": "render",
        "clips": N_CLIPS,
        "clip_s": CLIP_S,
        "source_sr": SR_IN,
        "rir_t30_s": list(T30S),
        "rir_channels": 4,
        "renders_per_repeat": N_CLIPS * len(T30S),
        "repeats": REPEATS,
        "audio_s_per_repeat": round(out_seconds, 3),
        "full_chain_x_realtime_per_core": round(out_seconds / med_full, 1),
        "bare_kernel_x_realtime_per_core": round(out_seconds / med_bare, 1),
        "full_over_bare_cpu_ratio": round(med_full / med_bare, 3),
        "full_cpu_s_median": round(med_full, 4),
        "bare_cpu_s_median": round(med_bare, 4),
        "rir_spectrum_cpu_s_each": round(spectrum_cpu_s, 4),
        "target_x_realtime": 100,
        "target_ratio_max": 1.5,
        "cpu_count": os.cpu_count(),
        "machine": platform.machine(),
        "python": platform.python_version(),
        "numpy": np.__version__,
        "scipy": scipy.__version__,
        "libsndfile": sf.__libsndfile_version__,
    }
    print(json.dumps(result))


if __name__ == "__main__":
    main()
