"""The ELSA model (paper section 4.2, Fig. A.F.1) and the spatial-branch pretraining model.

Audio: HTSAT (transformers' ClapAudioModel, its 768-d pooled output before any projection) and
the spatial branch (192-d) are concatenated (960) and projected by a 2-layer MLP to 512. Text:
RoBERTa (ClapTextModel, pooled output) through a 2-layer MLP to 512. One learnable temperature.
Three 2-layer heads (about 33k parameters each) read the 512-d audio embedding: direction
(a 3-vector, compared by cosine), distance and floor area.

Loading from a HF CLAP checkpoint (laion/clap-htsat-unfused layout) keeps LAION-CLAP's
behaviour at step 0: the audio MLP's first layer gets the checkpoint's audio projection in its
768 semantic columns and zeros in the 192 spatial ones, so ELSA's initial audio embedding equals
LAION-CLAP's; gradients reach the zero columns from the first step and the spatial branch after.
"""

from __future__ import annotations

import json
import logging
import math
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as nnf
from torch import nn

from training.config import FeatureConfig, ModelConfig, SpatialBranchConfig
from training.spatial_branch import SpatialBranch, load_spatial_branch

log = logging.getLogger(__name__)


class Mlp(nn.Module):
    """Linear → ReLU → Linear (LAION-CLAP's projection layer shape)."""

    def __init__(self, d_in: int, d_hidden: int, d_out: int) -> None:
        super().__init__()
        self.linear1 = nn.Linear(d_in, d_hidden)
        self.linear2 = nn.Linear(d_hidden, d_out)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.linear2(nnf.relu(self.linear1(x)))


@dataclass
class ElsaOutput:
    """Normalised embeddings, the temperature (exp, clamped) and the head predictions."""

    audio_embeds: torch.Tensor
    text_embeds: torch.Tensor | None
    logit_scale: torch.Tensor
    direction: torch.Tensor
    distance: torch.Tensor
    area: torch.Tensor


class SpatialHeads(nn.Module):
    """Direction (3), distance (1), floor area (1) regressors over the audio embedding."""

    def __init__(self, d_in: int, hidden: int, extra: tuple[str, ...] = ()) -> None:
        super().__init__()
        self.direction = Mlp(d_in, hidden, 3)
        self.distance = Mlp(d_in, hidden, 1)
        self.area = Mlp(d_in, hidden, 1)
        self.extra = nn.ModuleDict({k: Mlp(d_in, hidden, 1) for k in extra})

    def forward(self, z: torch.Tensor) -> dict[str, torch.Tensor]:
        out = {"direction": self.direction(z), "distance": self.distance(z)[:, 0], "area": self.area(z)[:, 0]}
        out.update({k: m(z)[:, 0] for k, m in self.extra.items()})
        return out


class ElsaModel(nn.Module):
    """Semantic + spatial audio encoder, text encoder, temperature, spatial heads."""

    def __init__(
        self, cfg: ModelConfig, audio_model: nn.Module, text_model: nn.Module, spatial: SpatialBranch
    ) -> None:
        super().__init__()
        self.cfg = cfg
        self.audio_model = audio_model
        self.text_model = text_model
        self.spatial = spatial
        self.semantic_dim = int(audio_model.audio_encoder.num_features)
        self.text_dim = int(text_model.config.hidden_size)
        e = cfg.embed_dim
        self.audio_projection = Mlp(self.semantic_dim + spatial.out_dim, e, e)
        self.text_projection = Mlp(self.text_dim, e, e)
        self.logit_scale = nn.Parameter(torch.tensor(math.log(cfg.logit_scale_init)))
        self.heads = SpatialHeads(e, cfg.head_hidden)
        if cfg.freeze_semantic:
            self.audio_model.requires_grad_(False)
        if cfg.freeze_text:
            self.text_model.requires_grad_(False)

    def audio_features(self, mel: torch.Tensor, iv: torch.Tensor, zero_spatial: bool = False) -> torch.Tensor:
        """Un-normalised 512-d audio embedding of mel (B,1,T,64) and IVs (B,6,T,64).

        ``zero_spatial`` zeroes the spatial branch's output: the semantic-only baseline of the
        evaluation (issue 7), with everything else unchanged.
        """
        sem = self.audio_model(input_features=mel).pooler_output
        spa = self.spatial(iv, mel)
        if zero_spatial:
            spa = torch.zeros_like(spa)
        return self.audio_projection(torch.cat([sem, spa.to(sem.dtype)], dim=-1))

    def text_features(self, input_ids: torch.Tensor, attention_mask: torch.Tensor) -> torch.Tensor:
        """Un-normalised 512-d text embedding (RoBERTa pooled output → MLP)."""
        pooled = self.text_model(input_ids=input_ids, attention_mask=attention_mask).pooler_output
        return self.text_projection(pooled)

    @torch.no_grad()
    def encode_audio(self, mel: torch.Tensor, iv: torch.Tensor, zero_spatial: bool = False) -> torch.Tensor:
        """Unit-norm audio embeddings for retrieval and zero-shot classification."""
        return nnf.normalize(self.audio_features(mel, iv, zero_spatial).float(), dim=-1)

    @torch.no_grad()
    def encode_text(self, input_ids: torch.Tensor, attention_mask: torch.Tensor) -> torch.Tensor:
        """Unit-norm text embeddings."""
        return nnf.normalize(self.text_features(input_ids, attention_mask).float(), dim=-1)

    @torch.no_grad()
    def predict_spatial(self, mel: torch.Tensor, iv: torch.Tensor) -> dict[str, torch.Tensor]:
        """Head outputs: direction as a unit vector, distance in m, area in the loss's scaled units."""
        out = self.heads(self.audio_features(mel, iv).float())
        out["direction"] = nnf.normalize(out["direction"], dim=-1)
        return out

    def forward(
        self,
        mel: torch.Tensor,
        iv: torch.Tensor,
        input_ids: torch.Tensor | None = None,
        attention_mask: torch.Tensor | None = None,
    ) -> ElsaOutput:
        a = self.audio_features(mel, iv)
        heads = self.heads(a)
        t = None
        if input_ids is not None:
            t = nnf.normalize(self.text_features(input_ids, attention_mask), dim=-1)
        return ElsaOutput(
            audio_embeds=nnf.normalize(a, dim=-1),
            text_embeds=t,
            logit_scale=self.logit_scale.exp().clamp(max=100.0),
            direction=heads["direction"],
            distance=heads["distance"],
            area=heads["area"],
        )


def intensity_prior(iv: torch.Tensor, mel: torch.Tensor) -> torch.Tensor:
    """(B, 6, T, M) IVs and (B, 1, T, M) log-mel dB of W → (B, 3) unit direction of the active IVs
    summed over every (frame, band) with W's power as the weight; (0, 0, 0) where nothing is heard.

    With energy-scaled IVs (``FeatureConfig.iv_scale = "energy"``) this is the summed active
    intensity, the classical estimator in mel bands; with unit IVs it weighs a diffuse bin as much as
    a direct one of the same power. Padding (zero IVs) adds nothing."""
    power = torch.pow(10.0, mel.float() / 10.0)
    total = (iv[:, :3].float() * power).sum(dim=(2, 3))
    return nnf.normalize(total, dim=-1)


class SpatialPretrainModel(nn.Module):
    """The spatial branch alone with regression heads: direction, distance, area, T30, DRR (A.8).

    With ``direction_prior`` the direction head answers a correction to the clip's intensity
    direction (``intensity_prior``) instead of a direction from nothing. Why: a direct sound's
    intensity points at the source to a fraction of a degree, and the branch's regression from pooled
    CNN features was measured to stop at about 5 deg there (run 30's simulated samples with DRR above
    6 dB: 4.9 deg against the intensity's 2.4), while it beats the intensity in reverberant ones;
    learning the correction was meant to keep both. With unit IVs it did not (run 33,
    benchmarks/RESULTS.md, issue 15, session 17: 10.0 deg pooled on S3A, as without it), nor with
    energy IVs, where the prior is the intensity itself (run 45, session 19: 9.06 deg against 8.73
    without it, and 8.88 against the intensity's 7.65 on its own training samples). Off: ELSA's
    head."""

    def __init__(self, cfg: SpatialBranchConfig, head_hidden: int = 64,
                 direction_prior: bool = False) -> None:
        super().__init__()
        self.spatial = SpatialBranch(cfg)
        self.heads = SpatialHeads(cfg.out_dim, head_hidden, extra=("t30", "drr"))
        self.direction_prior = direction_prior

    @classmethod
    def from_config(cls, cfg: ModelConfig) -> SpatialPretrainModel:
        return cls(cfg.spatial, cfg.head_hidden, cfg.direction_prior)

    def forward(self, iv: torch.Tensor, mel: torch.Tensor | None = None) -> dict[str, torch.Tensor]:
        out = self.heads(self.spatial(iv, mel))
        if self.direction_prior:
            if mel is None:
                raise ValueError("direction_prior weighs the IVs by W's power: pass the log-mel")
            out["direction"] = out["direction"] + intensity_prior(iv, mel)
        return out


# --------------------------------------------------------------------------------------------
# building and loading


def check_feature_extractor(clap_dir: str | Path, feat: FeatureConfig) -> None:
    """Refuse a checkpoint whose preprocessor_config.json disagrees with our front end."""
    p = Path(clap_dir) / "preprocessor_config.json"
    if not p.exists():
        return
    pc = json.loads(p.read_text())
    want = {
        "sampling_rate": feat.sample_rate,
        "feature_size": feat.n_mels,
        "hop_length": feat.hop_length,
        "fft_window_size": feat.n_fft,
        "frequency_min": feat.fmin,
        "frequency_max": feat.fmax,
    }
    bad = {k: (pc[k], v) for k, v in want.items() if k in pc and float(pc[k]) != float(v)}
    if bad:
        raise ValueError(f"{p} disagrees with the feature config (checkpoint, ours): {bad}")


def load_tokenizer(path: str | Path) -> Any:
    """A tokenizer directory (the CLAP checkpoint's own, or any saved with save_pretrained)."""
    from transformers import AutoTokenizer

    return AutoTokenizer.from_pretrained(str(path))


def build_elsa(cfg: ModelConfig, feat: FeatureConfig | None = None) -> tuple[ElsaModel, Any]:
    """The model and its tokenizer, from a HF CLAP checkpoint directory or at random (``cfg``)."""
    from transformers import ClapAudioConfig, ClapAudioModel, ClapModel, ClapTextConfig, ClapTextModel

    spatial = (
        load_spatial_branch(cfg.spatial_checkpoint, expect=cfg.spatial)
        if cfg.spatial_checkpoint
        else SpatialBranch(cfg.spatial)
    )
    tok_dir = cfg.tokenizer_dir or cfg.clap_dir
    if tok_dir is None:
        raise ValueError("a tokenizer is needed: set model.clap_dir or model.tokenizer_dir")
    tokenizer = load_tokenizer(tok_dir)
    if cfg.clap_dir is None:
        audio = ClapAudioModel(ClapAudioConfig(**cfg.audio_config))
        text = ClapTextModel(ClapTextConfig(**{"vocab_size": len(tokenizer), **cfg.text_config}))
        return ElsaModel(cfg, audio, text, spatial), tokenizer
    if feat is not None:
        check_feature_extractor(cfg.clap_dir, feat)
    clap = ClapModel.from_pretrained(cfg.clap_dir)
    if clap.config.audio_config.enable_fusion:
        raise ValueError(f"{cfg.clap_dir} is a fusion checkpoint; ELSA uses the unfused HTSAT (rand_trunc)")
    model = ElsaModel(cfg, clap.audio_model, clap.text_model, spatial)
    _warm_start(model, clap)
    return model, tokenizer


@torch.no_grad()
def _warm_start(model: ElsaModel, clap: nn.Module) -> None:
    """Copy LAION-CLAP's projections and temperature where the shapes allow (see module doc)."""
    ap, tp = clap.audio_projection, clap.text_projection
    e, s = model.cfg.embed_dim, model.semantic_dim
    if ap.linear1.out_features == e and ap.linear1.in_features == s:
        model.audio_projection.linear1.weight.zero_()
        model.audio_projection.linear1.weight[:, :s].copy_(ap.linear1.weight)
        model.audio_projection.linear1.bias.copy_(ap.linear1.bias)
        model.audio_projection.linear2.load_state_dict(ap.linear2.state_dict())
        model.text_projection.load_state_dict(tp.state_dict())
        model.logit_scale.copy_(clap.logit_scale_a)
    else:
        log.warning(
            "checkpoint projections are %d-d, the model's %d-d: projections start at random",
            ap.linear1.out_features,
            e,
        )


def to_device(model: nn.Module, device: torch.device | str) -> nn.Module:
    """Move a model to ``device``; on CUDA its 4-D weights go channels-last to match the spatial
    branch's NHWC inputs (measured on an H100, batch 64 of 10 s, bf16: the branch's forward+backward
    54 → 29 ms, the whole ELSA step 402 → 470 samples/s)."""
    model.to(device)
    if torch.device(device).type == "cuda":
        model.to(memory_format=torch.channels_last)
    return model


def count_parameters(module: nn.Module, trainable_only: bool = True) -> int:
    return sum(p.numel() for p in module.parameters() if p.requires_grad or not trainable_only)
