"""Model: sizes from the paper, and the real-weights path through a HF-format CLAP checkpoint."""

from __future__ import annotations

import json

import pytest
import torch
import torch.nn.functional as nnf
from training_helpers import tiny_clap_dir, tiny_model_config, tokenizer_dir
from transformers import ClapModel

from training.config import TINY_SPATIAL, FeatureConfig, ModelConfig, SpatialBranchConfig
from training.model import ElsaModel, Mlp, SpatialHeads, build_elsa, count_parameters
from training.spatial_branch import AddCoords2D, SpatialBranch, save_spatial_branch


def test_spatial_branch_full_size_matches_the_paper() -> None:
    branch = SpatialBranch(SpatialBranchConfig())
    n = count_parameters(branch)
    assert abs(n - 486_000) <= 48_600, n  # paper: 485,828
    out = branch(torch.randn(2, 6, 101, 64))
    assert out.shape == (2, 192)


def test_heads_and_projection_sizes() -> None:
    heads = SpatialHeads(512, 64)
    for name in ("direction", "distance", "area"):
        n = count_parameters(getattr(heads, name))
        assert 30_000 <= n <= 36_000, (name, n)  # paper: ~33k each
    assert count_parameters(Mlp(768 + 192, 512, 512)) == 960 * 512 + 512 + 512 * 512 + 512


def test_addcoords() -> None:
    y = AddCoords2D()(torch.zeros(1, 3, 5, 4))
    assert y.shape == (1, 5, 5, 4)
    assert torch.equal(y[0, 3, :, 0], torch.linspace(-1, 1, 5)) and torch.equal(
        y[0, 4, 0], torch.linspace(-1, 1, 4)
    )


def test_random_init_forward_and_embeddings() -> None:
    model, tok = build_elsa(tiny_model_config())
    t = tok(["a dog barks on the left", "rain"], padding=True, return_tensors="pt")
    out = model(torch.randn(2, 1, 101, 64), torch.randn(2, 6, 101, 64), t["input_ids"], t["attention_mask"])
    assert out.audio_embeds.shape == out.text_embeds.shape == (2, 32)
    assert torch.allclose(out.audio_embeds.norm(dim=-1), torch.ones(2), atol=1e-5)
    assert out.direction.shape == (2, 3) and out.distance.shape == out.area.shape == (2,)
    assert float(out.logit_scale.detach()) == pytest.approx(1 / 0.07, rel=1e-5)
    model.eval()
    base = model.encode_audio(torch.randn(2, 1, 101, 64), torch.randn(2, 6, 101, 64), zero_spatial=True)
    assert base.shape == (2, 32)


def test_hf_clap_checkpoint_loads_through_the_user_path() -> None:
    """save_pretrained of a tiny random ClapModel → build_elsa(clap_dir=...) keeps every weight,
    and the initial ELSA embeddings equal LAION-CLAP's (the spatial columns start at zero)."""
    d = tiny_clap_dir()
    clap = ClapModel.from_pretrained(d).eval()
    cfg = ModelConfig(clap_dir=str(d), spatial=TINY_SPATIAL, embed_dim=32, head_hidden=16, max_text_len=32)
    model, tok = build_elsa(cfg, FeatureConfig())
    model.eval()
    ref = clap.state_dict()
    for k, v in model.audio_model.state_dict().items():
        assert torch.equal(v, ref[f"audio_model.{k}"]), k
    for k, v in model.text_model.state_dict().items():
        assert torch.equal(v, ref[f"text_model.{k}"]), k
    assert torch.equal(model.logit_scale, clap.logit_scale_a)
    mel = torch.randn(3, 1, 101, 64)
    iv = torch.randn(3, 6, 101, 64)
    with torch.no_grad():
        want_a = clap.get_audio_features(input_features=mel).pooler_output  # output object in transformers 5
        t = tok(["a dog barks", "a sweeping electronic chirp", "rain"], padding=True, return_tensors="pt")
        want_t = clap.get_text_features(
            input_ids=t["input_ids"], attention_mask=t["attention_mask"]
        ).pooler_output
    assert torch.allclose(model.encode_audio(mel, iv), nnf.normalize(want_a, dim=-1), atol=1e-5)
    assert torch.allclose(model.encode_text(t["input_ids"], t["attention_mask"]), want_t, atol=1e-5)
    # a preprocessor that disagrees with our front end is refused
    with pytest.raises(ValueError, match="disagrees"):
        build_elsa(cfg, FeatureConfig(fmin=0.0))


def test_spatial_checkpoint_loads(tmp_path) -> None:
    src = SpatialBranch(TINY_SPATIAL)
    path = tmp_path / "spatial_branch.pt"
    save_spatial_branch(src, str(path))
    model, _ = build_elsa(tiny_model_config(spatial_checkpoint=str(path)))
    assert isinstance(model, ElsaModel)
    for k, v in src.state_dict().items():
        assert torch.equal(model.spatial.state_dict()[k], v)
    with pytest.raises(ValueError, match="config"):
        build_elsa(tiny_model_config(spatial_checkpoint=str(path), spatial=SpatialBranchConfig()))
    blob = torch.load(path, weights_only=True)
    assert json.dumps(blob["config"])  # plain data, no pickled classes


def test_missing_tokenizer_is_a_clear_error() -> None:
    with pytest.raises(ValueError, match="tokenizer"):
        build_elsa(ModelConfig(spatial=TINY_SPATIAL))
    assert tokenizer_dir().exists()
