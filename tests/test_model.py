"""The pruned wav2vec2 model: pruning, pooling, head shape, freezing, save/load."""

import pytest
import torch
from transformers import Wav2Vec2Model

from ctsl_hpc.config import load_config
from ctsl_hpc.model import (
    WEIGHTS_FILE,
    EmotionModel,
    build_model,
    load_model,
    pretrained_backbone,
    save_model,
    tiny_backbone_config,
)


@pytest.fixture
def model_cfg():
    return load_config(None, ["model.backbone=tiny", "model.tiny.num_layers=3", "model.num_layers=3"]).model


def batch(lengths, seed=0):
    g = torch.Generator().manual_seed(seed)
    wave = torch.randn(len(lengths), max(lengths), generator=g)
    mask = torch.arange(max(lengths))[None, :] < torch.tensor(lengths)[:, None]
    return wave * mask, mask


def test_outputs_three_attributes_and_a_pooled_embedding(model_cfg):
    model = build_model(model_cfg).eval()
    out = model(*batch([16000, 12000]))
    assert out.pred.shape == (2, 3)
    assert out.embedding.shape == (2, model_cfg.tiny.hidden_size)


def test_masked_pooling_ignores_padding_and_unmasked_does_not(model_cfg):
    torch.manual_seed(0)
    model = build_model(model_cfg).eval()
    wave, mask = batch([16000, 9000])
    with torch.no_grad():
        together = model.embed(wave, mask)[1]
        alone = model.embed(wave[1:, :9000], mask[1:, :9000])[0]
    assert torch.allclose(together, alone, atol=1e-4)
    model.cfg.pooling = "unmasked"
    with torch.no_grad():
        unmasked = model.embed(wave, mask)[1]
    assert not torch.allclose(unmasked, alone, atol=1e-3)


@pytest.mark.parametrize("depth", [0, 1, 2])
def test_head_depth_follows_the_config(model_cfg, depth):
    model_cfg.head_layers = depth
    head = build_model(model_cfg).head
    linears = [m for m in head if isinstance(m, torch.nn.Linear)]
    assert len(linears) == depth + 1 and linears[-1].out_features == 3
    if depth == 1:  # the release's head
        names = [type(m).__name__ for m in head]
        assert names == ["Dropout", "Linear", "LayerNorm", "ReLU", "Dropout", "Linear"]


def test_feature_encoder_frozen_only_when_configured(model_cfg):
    model_cfg.freeze_feature_encoder = True
    frozen = build_model(model_cfg)
    assert not any(p.requires_grad for p in frozen.backbone.feature_extractor.parameters())
    model_cfg.freeze_feature_encoder = False
    trained = build_model(model_cfg)
    assert all(p.requires_grad for p in trained.backbone.feature_extractor.parameters())


def test_pruning_a_local_checkpoint_keeps_its_bottom_layers(model_cfg, tmp_path):
    full_cfg = tiny_backbone_config(model_cfg)
    full_cfg.num_hidden_layers = 4
    full = Wav2Vec2Model(full_cfg)
    full.save_pretrained(tmp_path / "full")
    pruned = pretrained_backbone(str(tmp_path / "full"), num_layers=2)
    assert len(pruned.encoder.layers) == 2 and pruned.config.layerdrop == 0.0
    for kept, original in zip(pruned.encoder.layers, full.encoder.layers[:2]):
        for a, b in zip(kept.state_dict().values(), original.state_dict().values()):
            assert torch.equal(a, b)
    with pytest.raises(ValueError, match="only 4 layers"):
        pretrained_backbone(str(tmp_path / "full"), num_layers=6)


def test_save_and_load_round_trip_gives_identical_predictions(model_cfg, tmp_path):
    from ctsl_hpc.data.audio import WaveformStats

    model = build_model(model_cfg).eval()
    save_model(model, tmp_path / "m", WaveformStats(0.1, 2.0))
    loaded, stats, cfg = load_model(tmp_path / "m")
    wave, mask = batch([8000, 6000])
    with torch.no_grad():
        assert torch.equal(model(wave, mask).pred, loaded(wave, mask).pred)
    assert stats == WaveformStats(0.1, 2.0) and cfg == model_cfg and isinstance(loaded, EmotionModel)


def test_loading_a_non_model_directory_names_the_missing_file(tmp_path):
    with pytest.raises(FileNotFoundError, match=WEIGHTS_FILE):
        load_model(tmp_path)


def test_padded_batches_give_moderate_gradients_at_initialisation(model_cfg):
    """Padding must not reach the CNN's layer norms with zero variance (gradients ~1e10 without conv_bias)."""
    from ctsl_hpc.losses import ccc_loss

    torch.manual_seed(0)
    model = build_model(model_cfg)
    wave, mask = batch([16000, 6000, 3000, 11000])
    ccc_loss(model(wave, mask).pred, torch.rand(4, 3)).backward()
    largest = max(p.grad.norm().item() for p in model.parameters() if p.grad is not None)
    assert largest < 1e3
