"""Self-supervised pre-training of a small wav2vec2 with wav2vec 2.0's contrastive and diversity losses.

:func:`pretrain` trains transformers' ``Wav2Vec2ForPreTraining`` on unlabelled speech crops, each
mixed with a noise segment at a random SNR with probability ``noise_prob``, normalised with the
corpus's waveform statistics. The added noise is this package's choice for a tiny model that sees
little speech: wav2vec2-large-robust itself was pre-trained on speech of many domains (read, telephone,
conversational, noisy recordings among them), not with noise mixed in. Every draw (items,
crops, noise, masks, negatives) comes from ``(seed, step)``. :func:`export_backbone` writes the
encoder alone (``config.json`` + ``model.safetensors``): a folder ``model.backbone`` can name.
"""

from __future__ import annotations

import copy
import json
import logging
import platform
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
import transformers
from transformers import Wav2Vec2Config, Wav2Vec2ForPreTraining, Wav2Vec2Model
from transformers.models.wav2vec2.modeling_wav2vec2 import _compute_mask_indices, _sample_negative_indices

from ctsl_hpc.config import ModelConfig, load_config
from ctsl_hpc.data.audio import WaveformStats, compute_stats, read_audio
from ctsl_hpc.data.noise import NoisePool, mix
from ctsl_hpc.data.pretrain_corpus import build_pretrain_corpus
from ctsl_hpc.data.synthetic import build_demo_corpus
from ctsl_hpc.model import tiny_backbone_config

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class PretrainSettings:
    """The optimisation and the self-supervised task (wav2vec 2.0's, scaled to a tiny model and short runs)."""

    steps: int = 1200
    batch_size: int = 8
    lr: float = 1e-3
    warmup_fraction: float = 0.05
    crop_seconds: float = 2.0
    noise_prob: float = 0.7
    snr_db: tuple[float, float] = (0.0, 20.0)
    mask_prob: float = 0.65
    mask_length: int = 10
    num_negatives: int = 50
    codevectors_per_group: int = 64
    held_out_fraction: float = 0.03
    seed: int = 0
    log_every: int = 100


@dataclass
class PretrainResult:
    """Running means of the losses per logging window, the held-out loss before and after, the time taken."""

    history: list[dict[str, float]] = field(default_factory=list)
    held_out: dict[str, float] = field(default_factory=dict)
    seconds: float = 0.0


def ssl_config(model_cfg: ModelConfig, settings: PretrainSettings) -> Wav2Vec2Config:
    """The tiny backbone's shape (``model.tiny``) with the quantizer and the masking of pre-training."""
    config = tiny_backbone_config(model_cfg)
    config.apply_spec_augment = True
    config.mask_time_prob = settings.mask_prob
    config.mask_time_length = settings.mask_length
    config.num_codevector_groups = 2
    config.num_codevectors_per_group = settings.codevectors_per_group
    config.codevector_dim = config.proj_codevector_dim = config.hidden_size
    config.num_negatives = settings.num_negatives
    config.contrastive_logits_temperature = 0.1
    config.diversity_loss_weight = 0.1
    config.feat_quantizer_dropout = 0.0
    return config


def _seed_of(*entropy: int) -> int:
    return int(np.random.SeedSequence(list(entropy)).generate_state(1)[0])


class CropSampler:
    """Batches of random crops of the given waves, some mixed with noise, normalised with ``stats``."""

    def __init__(self, waves: list[np.ndarray], pool: NoisePool, stats: WaveformStats, settings: PretrainSettings):
        self.waves, self.pool, self.stats, self.settings = waves, pool, stats, settings
        self.crop = int(settings.crop_seconds * pool.sample_rate)

    def batch(self, rng: np.random.Generator, items: np.ndarray) -> tuple[torch.Tensor, torch.Tensor]:
        """(wave [B, T], mask [B, T]) for ``items``: crops, noise and SNRs drawn from ``rng``."""
        out = []
        for item in items:
            wave = self.waves[int(item)]
            start = int(rng.integers(0, max(1, wave.size - self.crop + 1)))
            crop = wave[start : start + self.crop]
            if rng.random() < self.settings.noise_prob:
                crop = mix(crop, self.pool.segment(rng, crop.size), float(rng.uniform(*self.settings.snr_db)))
            out.append(self.stats.normalise(crop))
        longest = max(c.size for c in out)
        wave = torch.zeros(len(out), longest)
        mask = torch.zeros(len(out), longest, dtype=torch.long)
        for row, crop in enumerate(out):
            wave[row, : crop.size] = torch.from_numpy(np.asarray(crop, dtype=np.float32))
            mask[row, : crop.size] = 1
        return wave, mask


def _ssl_step(model: Wav2Vec2ForPreTraining, wave: torch.Tensor, mask: torch.Tensor, seed: int) -> dict[str, torch.Tensor]:
    """The losses of one batch, per masked frame; masks and negatives drawn from numpy's generator seeded with ``seed``."""
    frames = int(model._get_feat_extract_output_lengths(wave.shape[1]))
    frame_mask = model._get_feature_vector_attention_mask(frames, mask)
    np.random.seed(seed)  # transformers' helpers draw from numpy's global generator
    masked = _compute_mask_indices((wave.shape[0], frames), model.config.mask_time_prob,
                                   model.config.mask_time_length, attention_mask=frame_mask, min_masks=2)  # fmt: skip
    negatives = _sample_negative_indices((wave.shape[0], frames), model.config.num_negatives, masked)
    masked_t = torch.from_numpy(masked)
    out = model(wave, attention_mask=mask, mask_time_indices=masked_t,
                sampled_negative_indices=torch.from_numpy(negatives).long())  # fmt: skip
    count = masked_t.sum()
    return {"loss": out.loss / count, "contrastive": out.contrastive_loss / count,
            "diversity": out.diversity_loss / count, "perplexity": out.codevector_perplexity}  # fmt: skip


@torch.no_grad()
def held_out_loss(model: Wav2Vec2ForPreTraining, sampler: CropSampler, items: np.ndarray, seed: int) -> float:
    """Contrastive loss per masked frame on fixed crops, noise, masks and negatives of ``items`` (eval mode)."""
    was_training = model.training
    model.eval()
    losses = []
    for start in range(0, len(items), sampler.settings.batch_size):
        chunk = items[start : start + sampler.settings.batch_size]
        wave, mask = sampler.batch(np.random.default_rng([seed, 99, start]), chunk)
        losses.append(float(_ssl_step(model, wave, mask, _seed_of(seed, 99, start))["contrastive"]))
    model.train(was_training)
    return float(np.mean(losses))


def pretrain(
    waves: list[np.ndarray], pool: NoisePool, model_cfg: ModelConfig, settings: PretrainSettings
) -> tuple[Wav2Vec2ForPreTraining, PretrainResult]:
    """Pre-train a tiny wav2vec2 (shaped by ``model_cfg.tiny``) on ``waves`` (16 kHz mono) mixed with ``pool``."""
    if len(waves) < 2:
        raise ValueError(f"pre-training needs at least 2 utterances, got {len(waves)}")
    started = time.time()
    torch.manual_seed(settings.seed)
    model = Wav2Vec2ForPreTraining(ssl_config(model_cfg, settings)).train()
    order = np.random.default_rng([settings.seed, 1]).permutation(len(waves))
    n_held = max(1, round(settings.held_out_fraction * len(waves)))
    held, train = np.sort(order[:n_held]), np.sort(order[n_held:])
    sampler = CropSampler(waves, pool, compute_stats(waves[i] for i in train), settings)
    optimizer = torch.optim.AdamW(model.parameters(), lr=settings.lr, betas=(0.9, 0.98), eps=1e-6, weight_decay=0.01)
    warmup = max(1, int(settings.warmup_fraction * settings.steps))
    schedule = torch.optim.lr_scheduler.LambdaLR(
        optimizer, lambda s: min((s + 1) / warmup, max(0.0, (settings.steps - s) / max(1, settings.steps - warmup)))
    )
    decay = 0.25 ** (1.0 / max(1, int(0.8 * settings.steps)))  # Gumbel temperature 2 -> 0.5 over 80 % of the run
    result = PretrainResult(held_out={"before": held_out_loss(model, sampler, held, settings.seed)})
    window: dict[str, list[float]] = {}
    for step in range(settings.steps):
        model.set_gumbel_temperature(max(2.0 * decay**step, 0.5))
        rng = np.random.default_rng([settings.seed, 2, step])
        wave, mask = sampler.batch(rng, rng.choice(train, size=min(settings.batch_size, len(train)), replace=False))
        terms = _ssl_step(model, wave, mask, _seed_of(settings.seed, 3, step))
        optimizer.zero_grad(set_to_none=True)
        terms["loss"].backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 5.0)
        optimizer.step()
        schedule.step()
        for key, value in terms.items():
            window.setdefault(key, []).append(float(value.detach()))
        if (step + 1) % settings.log_every == 0 or step + 1 == settings.steps:
            means = {k: float(np.mean(v)) for k, v in window.items()}
            result.history.append({"step": step + 1, **means})
            log.info("pre-training step %d/%d: %s", step + 1, settings.steps, {k: round(v, 3) for k, v in means.items()})
            window = {}
    result.held_out["after"] = held_out_loss(model, sampler, held, settings.seed)
    result.seconds = time.time() - started
    return model, result


def export_backbone(model: Wav2Vec2ForPreTraining, out_dir: str | Path, provenance: dict[str, Any]) -> Path:
    """Write the encoder without the pre-training heads or masking: ``config.json``, ``model.safetensors``,
    ``PROVENANCE.json``."""
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    config = copy.deepcopy(model.config)
    config.apply_spec_augment, config.mask_time_prob = False, 0.0
    backbone = Wav2Vec2Model(config)
    missing, unexpected = backbone.load_state_dict(model.wav2vec2.state_dict(), strict=False)
    if missing or set(unexpected) - {"masked_spec_embed"}:
        raise RuntimeError(f"backbone export: missing {missing}, unexpected {unexpected}")
    backbone.save_pretrained(out)
    (out / "PROVENANCE.json").write_text(json.dumps(provenance, indent=1) + "\n")
    return out


def settings_dict(settings: PretrainSettings) -> dict[str, Any]:
    """The settings as plain JSON values."""
    return {k: list(v) if isinstance(v, tuple) else v for k, v in asdict(settings).items()}


def pretrain_demo_backbone(
    out_dir: str | Path, workdir: str | Path, settings: PretrainSettings, tts_utterances: int = 600,
    noise_minutes: float = 10.0, command: str = "",
) -> Path:
    """The ``pretrain`` command: build the demo corpus (to learn which recordings its noise uses), the
    pre-training corpus without them, pre-train the demo's tiny wav2vec2 and export its encoder to ``out_dir``."""
    workdir = Path(workdir)
    cfg = load_config(None, [])  # the demo: its corpus and its backbone's shape
    demo = build_demo_corpus(workdir / "demo-corpus", cfg.synthetic)
    corpus = build_pretrain_corpus(workdir / "corpus", [demo.noise_train, demo.noise_dev, demo.noise_test],
                                   tts_utterances, noise_minutes, settings.seed)  # fmt: skip
    sample_rate = cfg.data.sample_rate
    waves = [read_audio(path, sample_rate) for path in corpus.speech]
    pool = NoisePool.from_directory(corpus.noise, sample_rate)
    model, result = pretrain(waves, pool, cfg.model, settings)
    provenance = {
        "command": command,
        "settings": settings_dict(settings),
        "corpus": {**corpus.summary, "tts_utterances": tts_utterances},
        "history": result.history,
        "held_out_contrastive_loss": result.held_out,
        "seconds": round(result.seconds, 1),
        "machine": {
            "python": platform.python_version(),
            "torch": torch.__version__,
            "transformers": transformers.__version__,
            "threads": torch.get_num_threads(),
        },
    }
    return export_backbone(model, out_dir, provenance)
