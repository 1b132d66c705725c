"""The emotion model: a pruned wav2vec2 encoder, mean pooling and a regression head.

``EmotionModel(wave, mask)`` returns the pooled embedding h (the encoder's last hidden state, after
its final layer norm, averaged over time) and the prediction g(h) of arousal, dominance and valence
on the [0, 1] scale. The backbone is ``facebook/wav2vec2-large-robust`` (or any local Hugging Face
checkpoint directory, or the name of a backbone shipped in :mod:`ctsl_hpc.backbones`) with only
its bottom ``num_layers`` transformer layers kept, or a tiny randomly initialised wav2vec2 built
from ``model.tiny`` for the demo and the tests. :func:`large_robust_config` is the one definition
of large-robust's architecture in the package; :func:`write_standin_backbone` writes a randomly
initialised checkpoint of it, a local stand-in for the hub download.
"""

from __future__ import annotations

import errno
import json
import os
import shutil
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import asdict, dataclass
from importlib import resources
from pathlib import Path

import safetensors.torch
import torch
from torch import nn
from transformers import Wav2Vec2Config, Wav2Vec2ForPreTraining, Wav2Vec2Model

from ctsl_hpc.atomic_io import atomic_write_bytes, atomic_write_text
from ctsl_hpc.backbones import backbone_problem, is_shipped_backbone
from ctsl_hpc.config import ConfigError, ModelConfig, build_section
from ctsl_hpc.data.audio import WaveformStats

WEIGHTS_FILE = "model.safetensors"
LEGACY_WEIGHTS_FILE = "model.pt"  # a torch pickle, written before the safetensors format: read, never written
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
        layerdrop=cfg.layerdrop,
        hidden_dropout=0.0,
        attention_dropout=0.0,
        activation_dropout=0.0,
        feat_proj_dropout=0.0,
        apply_spec_augment=False,
        mask_time_prob=0.0,
    )


def large_robust_config(num_layers: int = 24) -> Wav2Vec2Config:
    """``facebook/wav2vec2-large-robust``'s published architecture with ``num_layers`` transformer layers.

    24 layers of width 1024 (16 heads, feed-forward 4096, pre-norm: ``do_stable_layer_norm``), a
    layer-normed feature encoder of 7 convolutions with bias (512 channels; kernels 10,3,3,3,3,2,2;
    strides 5,2,2,2,2,2,2: one frame per 20 ms), a 128-wide convolutional position embedding in 16
    groups, and the pre-training heads' sizes (768-d code vectors, 2 x 320 entries). Dropouts,
    LayerDrop and SpecAugment are those of the hub's ``config.json``; a real download brings its own.
    """
    return Wav2Vec2Config(
        architectures=["Wav2Vec2ForPreTraining"],
        hidden_size=1024,
        num_hidden_layers=num_layers,
        num_attention_heads=16,
        intermediate_size=4096,
        hidden_act="gelu",
        do_stable_layer_norm=True,
        feat_extract_norm="layer",
        feat_extract_activation="gelu",
        conv_dim=[512] * 7,
        conv_kernel=[10, 3, 3, 3, 3, 2, 2],
        conv_stride=[5, 2, 2, 2, 2, 2, 2],
        conv_bias=True,
        num_conv_pos_embeddings=128,
        num_conv_pos_embedding_groups=16,
        codevector_dim=768,
        proj_codevector_dim=768,
        num_codevector_groups=2,
        num_codevectors_per_group=320,
        hidden_dropout=0.1,
        attention_dropout=0.1,
        activation_dropout=0.0,
        feat_proj_dropout=0.1,
        layerdrop=0.1,
        apply_spec_augment=True,
        mask_time_prob=0.05,
        mask_time_length=10,
        layer_norm_eps=1e-5,
    )


def write_standin_backbone(directory: str | os.PathLike, seed: int = 0) -> Path:
    """Write a randomly initialised ``facebook/wav2vec2-large-robust`` (24 layers) to ``directory``.

    The checkpoint is what the hub serves, in architecture and format (``save_pretrained`` of a
    ``Wav2Vec2ForPreTraining``: ``config.json`` and ``model.safetensors``, about 1.3 GB), with random
    weights, so ``model.backbone=<directory>`` runs the real loading and pruning code without the hub.
    The folder appears whole (written next to it, then renamed).
    """
    out = Path(directory)
    if (out / "config.json").is_file():
        raise FileExistsError(errno.EEXIST, "it already holds a checkpoint: give a new folder", str(out))
    staging = out.with_name(f".{out.name}.partial")
    shutil.rmtree(staging, ignore_errors=True)
    torch.manual_seed(seed)
    Wav2Vec2ForPreTraining(large_robust_config()).save_pretrained(staging)
    if out.is_dir():
        out.rmdir()  # an empty folder made for it
    staging.rename(out)
    return out


def prune_config(config: Wav2Vec2Config, num_layers: int, layerdrop: float = 0.0) -> Wav2Vec2Config:
    """``config`` with its bottom ``num_layers`` transformer layers and ``model.layerdrop`` (0 by default: every
    rank of a DDP/DeepSpeed job must run the same layers)."""
    if num_layers > config.num_hidden_layers:
        raise ValueError(f"model.num_layers={num_layers} but the backbone has only {config.num_hidden_layers} layers")
    config.num_hidden_layers = num_layers
    config.layerdrop = layerdrop
    return config
@contextmanager
def backbone_source(name: str) -> Iterator[str]:
    """The folder of a backbone shipped in the package (``ctsl_hpc/backbones/<name>``, read through
    :mod:`importlib.resources`) while the context is open; any other value unchanged (a hub id or a
    local checkpoint directory)."""
    if not is_shipped_backbone(name):
        yield name
        return
    with resources.as_file(resources.files("ctsl_hpc.backbones") / name) as folder:
        yield str(folder)


def pretrained_backbone(name_or_dir: str, num_layers: int, layerdrop: float = 0.0) -> Wav2Vec2Model:
    """Load a wav2vec2 checkpoint keeping its bottom ``num_layers`` transformer layers.

    ``name_or_dir`` is a hub id such as ``facebook/wav2vec2-large-robust`` (needs the hub or a warm
    Hugging Face cache) or a local directory with ``config.json`` and the weights.
    """
    try:
        config = prune_config(Wav2Vec2Config.from_pretrained(name_or_dir), num_layers, layerdrop)
    except ValueError as exc:
        raise ValueError(f"{name_or_dir}: {exc}") from None
    return Wav2Vec2Model.from_pretrained(name_or_dir, config=config)


def check_backbone(name: str) -> None:
    """Fail early, naming ``model.backbone``, when the backbone cannot be loaded here (:func:`backbone_problem`)."""
    problem = backbone_problem(name)
    if problem:
        raise ConfigError(f"model.backbone: {problem}")


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
            backbone = pretrained_backbone(source, cfg.num_layers, cfg.layerdrop)
    return EmotionModel(backbone, cfg)


def model_from_backbone_config(backbone_cfg: Wav2Vec2Config, cfg: ModelConfig) -> EmotionModel:
    """A randomly initialised model with the given backbone shape (e.g. ``large_robust_config(12)``)."""
    return EmotionModel(Wav2Vec2Model(prune_config(backbone_cfg, backbone_cfg.num_hidden_layers)), cfg)


def save_model(model: EmotionModel, directory: str | os.PathLike, stats: WaveformStats | None) -> Path:
    """Write a self-contained model directory that :func:`load_model` reads without the hub."""
    out = Path(directory)
    out.mkdir(parents=True, exist_ok=True)
    atomic_write_text(out / BACKBONE_CONFIG_FILE, model.backbone.config.to_json_string())
    atomic_write_text(out / MODEL_CONFIG_FILE, json.dumps(asdict(model.cfg), indent=2))
    if stats is not None:
        atomic_write_text(out / STATS_FILE, stats.to_json())
    weights = {name: tensor.contiguous() for name, tensor in model.state_dict().items()}
    atomic_write_bytes(out / WEIGHTS_FILE, safetensors.torch.save(weights))
    return out


def weights_file(directory: str | os.PathLike) -> Path:
    """The weights of a model directory (safetensors, or a legacy torch file)."""
    path = Path(directory)
    legacy = path / LEGACY_WEIGHTS_FILE
    return legacy if legacy.is_file() and not (path / WEIGHTS_FILE).is_file() else path / WEIGHTS_FILE


def load_weights(directory: str | os.PathLike) -> dict[str, torch.Tensor]:
    """The state dict saved in a model directory; legacy torch files are read tensors-only (``weights_only``)."""
    file = weights_file(directory)
    if file.suffix == ".safetensors":
        return safetensors.torch.load(file.read_bytes())
    return torch.load(file, map_location="cpu", weights_only=True)


def load_model(directory: str | os.PathLike) -> tuple[EmotionModel, WaveformStats | None, ModelConfig]:
    """Load a directory written by :func:`save_model`: (model in eval mode, waveform stats, config)."""
    path = Path(directory)
    for file in (weights_file(path), path / BACKBONE_CONFIG_FILE, path / MODEL_CONFIG_FILE):
        if not file.is_file():
            raise FileNotFoundError(f"{path} is not a ctsl_hpc model directory: {file.name} is missing")
    cfg = build_section(ModelConfig, json.loads((path / MODEL_CONFIG_FILE).read_text()), "model")
    backbone_cfg = Wav2Vec2Config.from_json_file(path / BACKBONE_CONFIG_FILE)
    with torch.device("meta"):  # every tensor comes from the file: no random initialisation to pay for
        model = model_from_backbone_config(backbone_cfg, cfg)
    model.load_state_dict(load_weights(path), assign=True)
    stats = WaveformStats.load(path / STATS_FILE) if (path / STATS_FILE).is_file() else None
    return model.eval(), stats, cfg
