"""Full-size and tiny ELSA built at random without any checkpoint or tokenizer (benchmarks).

Full size is the paper's: HTSAT-base (ClapAudioConfig defaults, 768-d), RoBERTa-base
(ClapTextConfig defaults), the 486k spatial branch, 512-d embeddings.
"""

from __future__ import annotations

from training.config import (
    TINY_AUDIO_CONFIG,
    TINY_SPATIAL,
    TINY_TEXT_CONFIG,
    ModelConfig,
    SpatialBranchConfig,
)
from training.model import ElsaModel
from training.spatial_branch import SpatialBranch


def random_elsa(size: str) -> tuple[ElsaModel, int]:
    """(model, vocab size) for size 'full' or 'tiny'."""
    from transformers import ClapAudioConfig, ClapAudioModel, ClapModel, ClapTextConfig, ClapTextModel

    if size == "full":
        cfg = ModelConfig(spatial=SpatialBranchConfig())
        audio, text = ClapAudioModel(ClapAudioConfig()), ClapTextModel(ClapTextConfig())
    elif size == "tiny":
        cfg = ModelConfig(
            audio_config=TINY_AUDIO_CONFIG,
            text_config=TINY_TEXT_CONFIG,
            spatial=TINY_SPATIAL,
            embed_dim=32,
            head_hidden=16,
        )
        audio, text = (
            ClapAudioModel(ClapAudioConfig(**TINY_AUDIO_CONFIG)),
            ClapTextModel(ClapTextConfig(vocab_size=400, **TINY_TEXT_CONFIG)),
        )
    else:
        raise ValueError(f"size must be 'full' or 'tiny', got {size!r}")
    del ClapModel
    return ElsaModel(cfg, audio, text, SpatialBranch(cfg.spatial)), int(text.config.vocab_size)


def random_clap(size: str):
    """LAION-CLAP (ClapModel) of the same size: the baseline ELSA's overhead is measured against."""
    from transformers import ClapConfig, ClapModel

    if size == "full":
        return ClapModel(ClapConfig())
    return ClapModel(
        ClapConfig(
            text_config={**TINY_TEXT_CONFIG, "vocab_size": 400},
            audio_config=TINY_AUDIO_CONFIG,
            projection_dim=32,
        )
    )
