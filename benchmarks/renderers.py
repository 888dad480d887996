"""Output-format cost: CPU seconds per audio-second of a sample in ambiX alone, and with binaural
and tetrahedral-mic members beside it, all in the same run (issue 14).

One 10 s prepared clip (benchmarks/scene_render.py's) is convolved with an RIR of the project's
engine in the same 10 x 8 x 3.5 m room, at ambisonic order 1 (the FOA default) and 3 (what an
accurate binaural or mic render needs: see tasks/binaural.py and tasks/mic_array.py). Per order:

- ``foa``: ``render_formats(..., ("foa",))``, the existing sample (convolution, level, FLAC);
- ``+binaural``, ``+mic``, ``+both``: the same call with further formats (the scene is convolved
  once; each format is rendered, levelled and encoded on its own);
- ``binaural_only`` / ``mic_only``: the renderer's ``render(scene, fs)`` alone on the convolved
  scene (filters designed before timing: a worker designs them once per (order, fs)).

The RIR spectrum is computed once, as a shard does for the ~100 clips sharing a placement. Medians
of REPEATS interleaved runs (process CPU time); ratios are to ``foa`` of the same order.
"""

from __future__ import annotations

import json
import os
import platform
import sys
from pathlib import Path

import numpy as np
import scipy

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from benchmarks.measure import interleaved_medians
from benchmarks.scene_render import DURATION, ROOM, SR, clip
from schemas.audio import AudioPrepConfig
from schemas.rooms import RirSettings
from tasks.audio_prep import RirSpectrum, convolve, render_formats
from tasks.renderers import renderer
from tasks.rir_engine import render_rir

REPEATS = 7
RECEIVER, SOURCE = (4.0, 3.5, 1.5), (6.5, 5.0, 1.8)


def cases_for(order: int, mono: np.ndarray, cfg: AudioPrepConfig) -> dict[str, tuple]:
    rir = render_rir(ROOM, RECEIVER, SOURCE, 0.0, RirSettings(order=order)).rir
    spectrum = RirSpectrum.from_rir(rir, SR)
    scene = convolve(mono, spectrum)
    audio_s = scene.shape[1] / SR
    binaural, mic = renderer("binaural"), renderer("mic")
    return {
        "foa": (lambda: render_formats(mono, spectrum, cfg, ("foa",)), audio_s),
        "+binaural": (lambda: render_formats(mono, spectrum, cfg, ("foa", "binaural")), audio_s),
        "+mic": (lambda: render_formats(mono, spectrum, cfg, ("foa", "mic")), audio_s),
        "+both": (lambda: render_formats(mono, spectrum, cfg, ("foa", "binaural", "mic")), audio_s),
        "binaural_only": (lambda: binaural.render(scene, SR), audio_s),
        "mic_only": (lambda: mic.render(scene, SR), audio_s),
    }


def main() -> None:
    cfg = AudioPrepConfig()
    mono = clip(0)
    cases = {f"o{order}/{name}": case for order in (1, 3)
             for name, case in cases_for(order, mono, cfg).items()}
    medians = interleaved_medians({name: fn for name, (fn, _) in cases.items()}, REPEATS)
    per_s = {name: medians[name] / audio_s for name, (_, audio_s) in cases.items()}
    ratio = {name: round(v / per_s[name.split("/")[0] + "/foa"], 3) for name, v in per_s.items()}
    print(json.dumps({
        "benchmark": "renderers",
        "duration_s": DURATION,
        "repeats": REPEATS,
        "cpu_s_per_audio_s": {name: round(v, 5) for name, v in per_s.items()},
        "ratio_to_foa_same_order": ratio,
        "cpu_count": os.cpu_count(),
        "machine": platform.machine(),
        "python": platform.python_version(),
        "numpy": np.__version__,
        "scipy": scipy.__version__,
    }))


if __name__ == "__main__":
    main()
