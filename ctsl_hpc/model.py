"""The emotion model: a pruned wav2vec2 encoder, mean pooling and a regression head.

``EmotionModel(wave, mask)`` returns the pooled embedding h (the encoder's last hidden state, after
its final layer norm, averaged over time) and the prediction g(h) of arousal, dominance and valence
on the [0, 1] scale. The backbone is ``facebook/wav2vec2-large-robust`` (or any local Hugging Face
checkpoint directory, or the name of a backbone shipped in :mod:`ctsl_hpc.backbones`) with only
its bottom ``num_layers`` transformer layers kept, or a tiny randomly initialised wav2vec2 built
from ``model.tiny`` for the demo and the tests.
"""

from __future__ import annotations

import json
import os
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import asdict, dataclass
from importlib import resources
from pathlib import Path

import torch
from torch import nn
from transformers import Wav2Vec2Config, Wav2Vec2Model

from ctsl_hpc.config import ModelConfig, build_section
from ctsl_hpc.data.audio import WaveformStats
from ctsl_hpc.workdir import atomic_write_text

WEIGHTS_FILE = "model.pt"
BACKBONE_CONFIG_FILE = "backbone_config.json"
MODEL_CONFIG_FILE = "model_config.json"
STATS_FILE = "waveform_stats.json"


@dataclass
class ModelOutput:
    pred: torch.Tensor  # [B, 3] arousal, dominance, valence on the [0, 1] scale
    embedding: torch.Tensor  # [B, D] pooled encoder output


def tiny_backbone_config(cfg: ModelConfig) -> Wav2Vec2Config:
    """A small wav2vec2 shaped like large-robust (stable layer norm, layer-normed CNN)."""
    tiny = cfg.tiny
    return Wav2Vec2Config(
        hidden_size=tiny.hidden_size,
        num_hidden_layers=tiny.num_layers,
        num_attention_heads=tiny.heads,
        intermediate_size=tiny.intermediate_size,
        conv_dim=[tiny.conv_dim] * len(tiny.conv_stride),
        conv_stride=list(tiny.conv_stride),
        conv_kernel=list(tiny.conv_kernel),
        num_conv_pos_embeddings=16,
        num_conv_pos_embedding_groups=4,
        conv_bias=True,  # as large-robust; without it padded frames reach the CNN's layer norms with
        # zero variance and their gradients explode (~1e10 at the first layer)
        feat_extract_norm="layer",
        do_stable_layer_norm=True,
        layerdrop=0.0,
        hidden_dropout=0.0,
        attention_dropout=0.0,
        activation_dropout=0.0,
        feat_proj_dropout=0.0,
        apply_spec_augment=False,
        mask_time_prob=0.0,
    )


@contextmanager
def backbone_source(name: str) -> Iterator[str]:
    """The folder of a backbone shipped in the package (``ctsl_hpc/backbones/<name>``, read through
    :mod:`importlib.resources`) while the context is open; any other value unchanged (a hub id or a
    local checkpoint directory)."""
    shipped = resources.files("ctsl_hpc.backbones") / name
    if "/" in name or not shipped.is_dir():
        yield name
        return
    with resources.as_file(shipped) as folder:
        yield str(folder)


def pretrained_backbone(name_or_dir: str, num_layers: int) -> Wav2Vec2Model:
    """Load a wav2vec2 checkpoint keeping its bottom ``num_layers`` transformer layers.

    ``name_or_dir`` is a hub id such as ``facebook/wav2vec2-large-robust`` (needs the hub or a warm
    Hugging Face cache) or a local directory with ``config.json`` and the weights.
    """
    config = Wav2Vec2Config.from_pretrained(name_or_dir)
    if num_layers > config.num_hidden_layers:
        raise ValueError(
            f"model.num_layers={num_layers} but {name_or_dir} has only {config.num_hidden_layers} layers"
        )
    config.num_hidden_layers = num_layers
    config.layerdrop = 0.0  # every rank must run the same layers (DDP/DeepSpeed collectives)
    return Wav2Vec2Model.from_pretrained(name_or_dir, config=config)


class RegressionHead(nn.Sequential):
    """``head_layers`` x [Dropout, Linear, LayerNorm, ReLU], then Dropout and Linear(hidden, 3)."""

    def __init__(self, in_dim: int, hidden: int, layers: int, dropout: float, outputs: int = 3):
        blocks: list[nn.Module] = []
        width = in_dim
        for _ in range(layers):
            blocks += [nn.Dropout(dropout), nn.Linear(width, hidden), nn.LayerNorm(hidden), nn.ReLU()]
            width = hidden
        blocks += [nn.Dropout(dropout), nn.Linear(width, outputs)]
        super().__init__(*blocks)


class EmotionModel(nn.Module):
    """Pruned wav2vec2 + mean pooling + regression head."""

    def __init__(self, backbone: Wav2Vec2Model, cfg: ModelConfig):
        super().__init__()
        self.cfg = cfg
        self.backbone = backbone
        if cfg.freeze_feature_encoder:
            backbone.freeze_feature_encoder()
        if cfg.gradient_checkpointing:  # recompute CNN and transformer activations in backward (long audio)
            backbone.activation_checkpointing_enable()
        self.head = RegressionHead(backbone.config.hidden_size, cfg.head_hidden, cfg.head_layers, cfg.dropout)

    @property
    def embedding_dim(self) -> int:
        return self.backbone.config.hidden_size

    def embed(self, wave: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        """Pooled embedding [B, D] of waveforms [B, T] with validity mask [B, T] (True = sample)."""
        attention = mask.long()
        hidden = self.backbone(wave, attention_mask=attention).last_hidden_state
        if self.cfg.pooling == "unmasked":
            return hidden.mean(dim=1)
        frames = self.backbone._get_feature_vector_attention_mask(hidden.shape[1], attention)
        weights = frames.to(hidden.dtype).unsqueeze(-1)
        return (hidden * weights).sum(dim=1) / weights.sum(dim=1).clamp_min(1.0)

    def forward(self, wave: torch.Tensor, mask: torch.Tensor) -> ModelOutput:
        embedding = self.embed(wave, mask)
        return ModelOutput(pred=self.head(embedding), embedding=embedding)


def build_model(cfg: ModelConfig) -> EmotionModel:
    """The model named by ``cfg``: ``backbone: tiny`` builds a random tiny wav2vec2 locally; a shipped
    name (``tiny-ssl``), a hub id or a directory loads pre-trained weights."""
    if cfg.backbone == "tiny":
        backbone_cfg = tiny_backbone_config(cfg)
        backbone_cfg.num_hidden_layers = min(cfg.num_layers, backbone_cfg.num_hidden_layers)
        backbone = Wav2Vec2Model(backbone_cfg)
    else:
        with backbone_source(cfg.backbone) as source:
            backbone = pretrained_backbone(source, cfg.num_layers)
    return EmotionModel(backbone, cfg)


def model_from_backbone_config(backbone_cfg: Wav2Vec2Config, cfg: ModelConfig) -> EmotionModel:
    """A randomly initialised model with the given backbone shape (e.g. large-robust typed in)."""
    backbone_cfg.layerdrop = 0.0
    return EmotionModel(Wav2Vec2Model(backbone_cfg), cfg)


def save_model(model: EmotionModel, directory: str | os.PathLike, stats: WaveformStats | None) -> Path:
    """Write a self-contained model directory that :func:`load_model` reads without the hub."""
    out = Path(directory)
    out.mkdir(parents=True, exist_ok=True)
    model.backbone.config.to_json_file(out / BACKBONE_CONFIG_FILE)
    (out / MODEL_CONFIG_FILE).write_text(json.dumps(asdict(model.cfg), indent=2))
    if stats is not None:
        atomic_write_text(out / STATS_FILE, stats.to_json())
    tmp = out / (WEIGHTS_FILE + ".tmp")
    torch.save(model.state_dict(), tmp)
    tmp.replace(out / WEIGHTS_FILE)
    return out


def load_model(directory: str | os.PathLike) -> tuple[EmotionModel, WaveformStats | None, ModelConfig]:
    """Load a directory written by :func:`save_model`: (model in eval mode, waveform stats, config)."""
    path = Path(directory)
    for name in (WEIGHTS_FILE, BACKBONE_CONFIG_FILE, MODEL_CONFIG_FILE):
        if not (path / name).is_file():
            raise FileNotFoundError(f"{path} is not a ctsl_hpc model directory: {name} is missing")
    cfg = build_section(ModelConfig, json.loads((path / MODEL_CONFIG_FILE).read_text()), "model")
    backbone_cfg = Wav2Vec2Config.from_json_file(path / BACKBONE_CONFIG_FILE)
    model = model_from_backbone_config(backbone_cfg, cfg)
    model.load_state_dict(torch.load(path / WEIGHTS_FILE, map_location="cpu", weights_only=True))
    stats = WaveformStats.load(path / STATS_FILE) if (path / STATS_FILE).is_file() else None
    return model.eval(), stats, cfg
