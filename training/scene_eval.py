"""Frame-wise localisation on scene test sets: where exactly one source sounds, is the estimate on it?

A scene sample's ``labels`` describe the room and source 0's first point, so one direction per
clip says nothing about a mixture or a moving source. Its ``sources`` carry every source's
100 ms trajectory (schemas.scenes.LABEL_FRAME_S, frame i covering [i, i + 1) x 100 ms), and on the
frames where exactly one source is active the sound has one direction: that source's label. Two
estimators are scored there, per frame, as great-circle errors in degrees:

- ``intensity``: the classical active-intensity DOA of the frame's FOA audio (tasks.doa,
  band-limited), no learning at all. It bounds what the audio itself says on 100 ms, reverberation
  and the previous source's tail included.
- ``model``: the trained model's direction head (ElsaModel.predict_spatial) on a window around the
  frame, cut to the run of frames where that source sounds alone and repeat-padded to the model's
  clip length as any short clip is. One forward per window, so only every ``model_every``-th solo
  frame of a sample is scored (a 10 s scene then costs a dozen forwards, not a hundred).

Frames where another source is active, or no source, are left out; a frame whose audio has no
directional energy (the intensity estimator cannot answer) is counted as unestimated, not as an
error.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np
from pydantic import BaseModel, ConfigDict, Field

from schemas.scenes import LABEL_FRAME_S, SceneSourceLabels
from tasks.doa import DoaError, intensity_doa
from training.doa_probe import angular_errors_deg, directions_from_angles

ESTIMATORS = ("intensity", "model")


class SceneFrameConfig(BaseModel):
    """How the frame-wise localisation of scene samples is scored."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    threshold_deg: float = Field(
        20.0, gt=0.0, description="the share of frames within this error is reported"
    )
    model: bool = Field(True, description="also score the model's direction head on windows around frames")
    model_window_s: float = Field(
        1.0, gt=0.0, description="the model's window, centred on the frame, cut to the source's solo run"
    )
    model_every: int = Field(5, ge=1, description="the model scores every n-th solo frame of a sample")


@dataclass(frozen=True)
class SoloFrame:
    """A label frame where exactly one source is active: its label and its solo run."""

    frame: int
    source: int
    azimuth_deg: float
    elevation_deg: float
    run: tuple[int, int]
    """First and last frame of the consecutive frames, around this one, where this source is alone."""


def solo_frames(sources: list[SceneSourceLabels]) -> list[SoloFrame]:
    """The frames where exactly one source is active, in frame order, with their solo runs."""
    active: dict[int, list[tuple[int, float, float]]] = {}
    for s in sources:
        for f in s.frames:
            active.setdefault(f.frame, []).append((s.index, f.azimuth_deg, f.elevation_deg))
    solo = {f: a[0] for f, a in active.items() if len(a) == 1}
    out: list[SoloFrame] = []
    for f in sorted(solo):
        src, az, el = solo[f]
        lo = f
        while solo.get(lo - 1, (None,))[0] == src:
            lo -= 1
        hi = f
        while solo.get(hi + 1, (None,))[0] == src:
            hi += 1
        out.append(SoloFrame(f, src, az, el, (lo, hi)))
    return out


def _truth(frames: list[SoloFrame]) -> np.ndarray:
    return directions_from_angles([f.azimuth_deg for f in frames], [f.elevation_deg for f in frames])


def intensity_errors(foa: np.ndarray, fs: int, frames: list[SoloFrame]) -> np.ndarray:
    """Per solo frame, the error (deg) of the intensity DOA of that frame's audio against its label;
    NaN where the frame lies past the audio or holds no directional energy."""
    n = foa.shape[1]
    est = np.full((len(frames), 3), np.nan)
    for i, fr in enumerate(frames):
        a, b = round(fr.frame * LABEL_FRAME_S * fs), round((fr.frame + 1) * LABEL_FRAME_S * fs)
        if a >= n:
            continue
        try:
            d = intensity_doa(foa, fs, start_s=a / fs, end_s=min(b, n) / fs)
        except DoaError:
            continue
        est[i] = directions_from_angles([d.azimuth_deg], [d.elevation_deg])[0]
    return angular_errors_deg(est, _truth(frames))


def model_windows(
    n_samples: int, fs: int, frames: list[SoloFrame], cfg: SceneFrameConfig
) -> list[tuple[int, int, int]]:
    """(index into ``frames``, first sample, end sample) of every ``model_every``-th solo frame's
    window: ``model_window_s`` centred on the frame, cut to its solo run and to the audio."""
    out = []
    half = 0.5 * cfg.model_window_s
    for i in range(0, len(frames), cfg.model_every):
        fr = frames[i]
        centre = (fr.frame + 0.5) * LABEL_FRAME_S
        lo = max(centre - half, fr.run[0] * LABEL_FRAME_S)
        hi = min(centre + half, (fr.run[1] + 1) * LABEL_FRAME_S)
        a, b = round(lo * fs), min(round(hi * fs), n_samples)
        if b > a:
            out.append((i, a, b))
    return out


def model_errors(
    model: Any, feat: Any, foa: np.ndarray, frames: list[SoloFrame], cfg: SceneFrameConfig, device: Any
) -> np.ndarray:
    """The model's direction head on each window of ``model_windows`` against its frame's label (deg)."""
    import torch

    from training.features import clip_features

    wins = model_windows(foa.shape[1], feat.sample_rate, frames, cfg)
    if not wins:
        return np.zeros(0)
    fs = [clip_features(foa[:, a:b], feat, offset=0) for _, a, b in wins]
    mel = torch.stack([f.mel for f in fs]).to(device)
    iv = torch.stack([f.iv for f in fs]).to(device)
    pred = model.predict_spatial(mel, iv)["direction"].float().cpu().numpy()
    return angular_errors_deg(pred, _truth([frames[i] for i, _, _ in wins]))


class FrameErrors(BaseModel):
    """One estimator's frame errors over the scene samples of a split."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    n_samples: int = Field(description="scene samples with at least one scored frame")
    n_frames: int = Field(description="solo frames scored")
    n_unestimated: int = Field(0, description="solo frames without directional energy (not in the figures)")
    median_deg: float | None
    mean_deg: float | None
    within_share: float | None = Field(description="share of scored frames within threshold_deg")


class SceneLocalisation(BaseModel):
    """Frame-wise localisation on the scene samples of a test split (see the module docstring)."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    frame_s: float = LABEL_FRAME_S
    scene_samples: int
    solo_frames: int = Field(description="frames with exactly one active source, over every scene sample")
    config: SceneFrameConfig
    estimators: dict[str, FrameErrors]


def summarise_frames(errors: list[np.ndarray], threshold_deg: float) -> FrameErrors:
    """Median, mean and share within the threshold of per-sample error arrays (NaN: unestimated)."""
    e = np.concatenate(errors) if errors else np.zeros(0)
    ok = e[np.isfinite(e)]
    return FrameErrors(
        n_samples=sum(bool(np.isfinite(x).any()) for x in errors),
        n_frames=int(ok.size),
        n_unestimated=int(e.size - ok.size),
        median_deg=float(np.median(ok)) if ok.size else None,
        mean_deg=float(np.mean(ok)) if ok.size else None,
        within_share=float(np.mean(ok <= threshold_deg)) if ok.size else None,
    )


class SceneFrameCollector:
    """Scores scene samples one at a time while a split is read (training.evaluate.read_split's
    ``on_scene``), keeping only the errors, never the audio."""

    def __init__(
        self, cfg: SceneFrameConfig, *, model: Any = None, feat: Any = None, device: Any = None
    ) -> None:
        self.cfg, self.model, self.feat, self.device = cfg, model, feat, device
        self.errors: dict[str, list[np.ndarray]] = {k: [] for k in ESTIMATORS}
        self.samples = self.frames = 0

    @property
    def scores_model(self) -> bool:
        return self.cfg.model and self.model is not None

    def add(self, sources: list[SceneSourceLabels], foa: np.ndarray, fs: int) -> None:
        """Score one scene sample: its labelled sources and its decoded (4, N) FOA audio at ``fs``."""
        frames = solo_frames(sources)
        self.samples += 1
        self.frames += len(frames)
        if not frames:
            return
        self.errors["intensity"].append(intensity_errors(foa, fs, frames))
        if self.scores_model:
            errors = model_errors(self.model, self.feat, foa, frames, self.cfg, self.device)
            self.errors["model"].append(errors)

    def result(self) -> SceneLocalisation | None:
        """The summary, or None when no scene sample was seen."""
        if not self.samples:
            return None
        names = ESTIMATORS if self.scores_model else ESTIMATORS[:1]
        return SceneLocalisation(
            scene_samples=self.samples,
            solo_frames=self.frames,
            config=self.cfg,
            estimators={k: summarise_frames(self.errors[k], self.cfg.threshold_deg) for k in names},
        )
