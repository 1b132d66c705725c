"""The local stand-in for ``facebook/wav2vec2-large-robust`` and the real loading and pruning code on it.

The stand-in is written once per session by ``python -m ctsl_hpc.launch standin-backbone`` (the
``standin_backbone`` fixture). Its size is checked against two independent references: the
published size of wav2vec 2.0 LARGE (317 M parameters, Baevski et al. 2020) and a count made here
by hand from the architecture.
"""

from __future__ import annotations

import json
import math

import pytest
import torch
from safetensors import safe_open

from ctsl_hpc.config import load_config
from ctsl_hpc.data.audio import WaveformStats
from ctsl_hpc.launch.__main__ import main
from ctsl_hpc.model import build_model, load_model, save_model

pytestmark = pytest.mark.paper_scale

PUBLISHED_PARAMETERS = 317e6


def parameters_by_hand(layers: int, pretraining_heads: bool) -> int:
    """wav2vec2-large-robust's parameters, counted from its architecture (weights + biases + norms)."""
    conv = (1 * 512 * 10 + 512 + 2 * 512) + 4 * (512 * 512 * 3 + 512 + 2 * 512) + 2 * (512 * 512 * 2 + 512 + 2 * 512)
    projection = 2 * 512 + 512 * 1024 + 1024
    position = 1024 * (1024 // 16) * 128 + 128 + 1024  # grouped conv (weight norm: v and g) + bias
    attention = 4 * (1024 * 1024 + 1024)
    feed_forward = 1024 * 4096 + 4096 + 4096 * 1024 + 1024
    layer = attention + feed_forward + 2 * (2 * 1024)
    total = conv + projection + position + 1024 + layers * layer + 2 * 1024  # + masked_spec_embed, final norm
    if pretraining_heads:  # quantizer (2 x 320 code vectors of 384), project_q, project_hid (768-d)
        total += (512 * 640 + 640) + 640 * 384 + (768 * 768 + 768) + (1024 * 768 + 768)
    return total


def test_the_standin_has_large_robusts_architecture_and_published_size(standin_backbone):
    config = json.loads((standin_backbone / "config.json").read_text())
    assert config["architectures"] == ["Wav2Vec2ForPreTraining"]
    assert (config["num_hidden_layers"], config["hidden_size"], config["num_attention_heads"],
            config["intermediate_size"]) == (24, 1024, 16, 4096)
    assert config["do_stable_layer_norm"] and config["feat_extract_norm"] == "layer" and config["conv_bias"]
    assert (config["conv_kernel"], config["conv_stride"]) == ([10, 3, 3, 3, 3, 2, 2], [5, 2, 2, 2, 2, 2, 2])
    with safe_open(standin_backbone / "model.safetensors", "pt") as weights:
        count = sum(math.prod(weights.get_slice(name).get_shape()) for name in weights.keys())
        assert all(name.startswith(("wav2vec2.", "quantizer.", "project_")) for name in weights.keys())
    assert count == parameters_by_hand(24, pretraining_heads=True)
    assert abs(count - PUBLISHED_PARAMETERS) / PUBLISHED_PARAMETERS < 0.01


def test_the_pruned_backbone_keeps_the_bottom_12_layers_with_the_encoder_frozen(standin_backbone):
    cfg = load_config("paper", [f"model.backbone={standin_backbone}"]).model
    model = build_model(cfg)
    backbone = model.backbone
    assert len(backbone.encoder.layers) == 12 and backbone.config.hidden_size == model.embedding_dim == 1024
    count = sum(p.numel() for p in backbone.parameters())
    assert count == parameters_by_hand(12, pretraining_heads=False) and round(count / 1e6, 1) == 164.3
    assert not any(p.requires_grad for p in backbone.feature_extractor.parameters())
    assert all(p.requires_grad for p in backbone.encoder.parameters()) and backbone.config.layerdrop == 0.0
    with safe_open(standin_backbone / "model.safetensors", "pt") as weights:  # the checkpoint's own layer 11
        for name, value in backbone.encoder.layers[11].state_dict().items():
            assert torch.equal(value, weights.get_tensor(f"wav2vec2.encoder.layers.11.{name}")), name


def test_a_saved_full_size_teacher_reloads_to_identical_outputs(standin_backbone, tmp_path):
    torch.manual_seed(0)
    model = build_model(load_config("paper", [f"model.backbone={standin_backbone}"]).model).eval()
    save_model(model, tmp_path / "teacher", WaveformStats(0.001, 0.07))
    loaded, stats, cfg = load_model(tmp_path / "teacher")
    wave = torch.randn(2, 12000)
    mask = torch.arange(12000)[None, :] < torch.tensor([[12000], [8000]])
    with torch.no_grad():
        before, after = model(wave * mask, mask), loaded(wave * mask, mask)
    assert torch.equal(before.pred, after.pred) and torch.equal(before.embedding, after.embedding)
    assert cfg == model.cfg and stats == WaveformStats(0.001, 0.07)
    assert not any(p.requires_grad for p in loaded.backbone.feature_extractor.parameters())


def test_the_command_refuses_a_folder_that_holds_a_checkpoint(standin_backbone, capsys):
    assert main(["standin-backbone", str(standin_backbone)]) == 3
    assert "already holds a checkpoint" in capsys.readouterr().err
