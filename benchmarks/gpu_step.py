"""Training-step benchmark of the paper-sized model under DeepSpeed (issue 6, item 5).

The backbone is wav2vec2-large-robust's shape with its bottom 12 layers (typed in, random init:
no hub needed; 164.3 M backbone parameters), the head is 2 x 1024, the loss is the CCC
loss. Engine: ``ctsl_hpc``'s DeepSpeed engine (ZeRO-2 by default, bf16 on GPUs). Each step takes
a fresh batch of 32 random waveforms with MSP-Podcast-like lengths (uniform 2.75-11 s at 16 kHz,
padded to the longest, masked).

Reported: mean/median step time after warm-up, peak GPU memory (``torch.cuda.max_memory_allocated``
over the timed steps) and achieved TFLOP/s = FLOPs of the timed batches / their total time. FLOPs
are counted with ``torch.utils.flop_counter.FlopCounterMode`` on a separate forward + backward
pass of the same batches through the plain model (matmuls, convolutions and attention, forward and
backward; element-wise ops and the optimizer are not counted, as usual for MFU figures).

Run one process (``python benchmarks/gpu_step.py``) or several (``torchrun --nproc_per_node N``:
the batch is then global, each rank takes ``batch / N``). On a machine without a GPU it runs a tiny
model on short audio so the script itself can be smoke-tested (``--tiny`` forces that).
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import time
from pathlib import Path

import numpy as np
import torch
from torch.utils.flop_counter import FlopCounterMode
from transformers import Wav2Vec2Config

from ctsl_hpc.config import ModelConfig
from ctsl_hpc.losses import ccc_loss
from ctsl_hpc.model import model_from_backbone_config
from ctsl_hpc.train.engines import OptimSettings, make_engine

SAMPLE_RATE = 16000
# bf16 dense tensor-core peaks (TFLOP/s), for the model-FLOPs utilisation line
PEAK_BF16_TFLOPS = {"H100": 989.0, "H200": 989.0, "A100": 312.0}


def large_robust_config(num_layers: int = 12) -> Wav2Vec2Config:
    """facebook/wav2vec2-large-robust's architecture, typed in, bottom ``num_layers`` layers."""
    return Wav2Vec2Config(
        hidden_size=1024,
        num_hidden_layers=num_layers,
        num_attention_heads=16,
        intermediate_size=4096,
        hidden_act="gelu",
        conv_dim=[512] * 7,
        conv_stride=[5, 2, 2, 2, 2, 2, 2],
        conv_kernel=[10, 3, 3, 3, 3, 2, 2],
        conv_bias=True,
        feat_extract_norm="layer",
        do_stable_layer_norm=True,
        num_conv_pos_embeddings=128,
        num_conv_pos_embedding_groups=16,
        layerdrop=0.0,
        mask_time_prob=0.0,  # SpecAugment off: the fine-tuning recipe does not mask, and ranks must agree
    )


def tiny_config() -> Wav2Vec2Config:
    return Wav2Vec2Config(
        hidden_size=64,
        num_hidden_layers=2,
        num_attention_heads=4,
        intermediate_size=256,
        conv_dim=[64] * 5,
        conv_stride=[5, 4, 2, 2, 2],
        conv_kernel=[10, 3, 3, 3, 2],
        feat_extract_norm="layer",
        do_stable_layer_norm=True,
        num_conv_pos_embeddings=16,
        num_conv_pos_embedding_groups=4,
        layerdrop=0.0,
        mask_time_prob=0.0,
    )


def make_batch(rng: np.random.Generator, size: int, seconds: tuple[float, float], device: torch.device):
    """Random waves with uniform lengths in ``seconds``, padded; mask True on real samples."""
    lengths = rng.integers(int(seconds[0] * SAMPLE_RATE), int(seconds[1] * SAMPLE_RATE) + 1, size=size)
    wave = torch.from_numpy(rng.standard_normal((size, int(lengths.max())), dtype=np.float32))
    mask = torch.arange(wave.shape[1])[None, :] < torch.from_numpy(lengths)[:, None]
    wave = wave * mask
    labels = torch.from_numpy(rng.uniform(0, 1, size=(size, 3)).astype(np.float32))
    return wave.to(device), mask.to(device), labels.to(device)


def count_flops(model: torch.nn.Module, batches, device: torch.device) -> list[int]:
    """Forward + backward FLOPs of each batch (FlopCounterMode), gradients discarded afterwards."""
    amp = torch.bfloat16 if device.type == "cuda" else None
    flops = []
    for wave, mask, labels in batches:
        with FlopCounterMode(display=False) as counter:
            with torch.autocast(device.type, dtype=amp, enabled=amp is not None):
                out = model(wave, mask)
            ccc_loss(out.pred.float(), labels).backward()
        flops.append(counter.get_total_flops())
        model.zero_grad(set_to_none=True)
    return flops


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--batch", type=int, default=32, help="global batch (utterances per optimizer step)")
    p.add_argument("--steps", type=int, default=10, help="timed steps")
    p.add_argument("--warmup", type=int, default=3)
    p.add_argument("--layers", type=int, default=12)
    p.add_argument("--deepspeed-config", default="configs/deepspeed/zero2.json")
    p.add_argument("--seconds", type=float, nargs=2, default=(2.75, 11.0), metavar=("MIN", "MAX"))
    p.add_argument("--tiny", action="store_true", help="tiny model and short audio (default without a GPU)")
    p.add_argument("--out", type=Path, help="also write the result as JSON here")
    args = p.parse_args()

    tiny = args.tiny or not torch.cuda.is_available()
    if tiny and not args.tiny:
        print("no GPU: running the tiny smoke-test version")
    if tiny:
        torch.set_num_threads(max(1, min(2, os.cpu_count() or 1)))
        args.batch, args.steps, args.warmup, args.seconds = min(args.batch, 4), min(args.steps, 2), 1, (1.0, 2.0)
    backbone = tiny_config() if tiny else large_robust_config(args.layers)
    torch.manual_seed(0)
    model = model_from_backbone_config(backbone, ModelConfig(backbone="typed-in", num_layers=backbone.num_hidden_layers))
    backbone_params = sum(p.numel() for p in model.backbone.parameters())
    total = sum(p.numel() for p in model.parameters())

    settings = OptimSettings(1e-5, 1.0, 1, 0.0, "auto", True, args.batch)
    engine = make_engine("deepspeed", model, settings, args.deepspeed_config)
    device = engine.device
    per_rank = args.batch // engine.world_size
    rng = np.random.default_rng(1000 + engine.rank)
    batches = [make_batch(rng, per_rank, args.seconds, device) for _ in range(args.warmup + args.steps)]

    times = []
    for i, (wave, mask, labels) in enumerate(batches):
        if i == args.warmup and device.type == "cuda":
            torch.cuda.synchronize()
            torch.cuda.reset_peak_memory_stats()
        start = time.perf_counter()
        engine.module.train()
        with engine.autocast():
            out = engine.forward(wave, mask)
        engine.backward(ccc_loss(engine.gather(out.pred.float()), engine.gather(labels)))
        engine.step()
        if device.type == "cuda":
            torch.cuda.synchronize()
        if i >= args.warmup:
            times.append(time.perf_counter() - start)
    peak = torch.cuda.max_memory_allocated() if device.type == "cuda" else None

    # FLOPs on the same timed batches, through the plain (fp32-master) model: all ranks take part
    flops = count_flops(engine.unwrapped(), batches[args.warmup :], device)
    tflops = sum(flops) / sum(times) / 1e12  # this rank's work over this rank's time
    name = torch.cuda.get_device_name() if device.type == "cuda" else "cpu"
    peak_tflops = next((v for k, v in PEAK_BF16_TFLOPS.items() if k in name), None)
    result = {
        "device": name,
        "world_size": engine.world_size,
        "zero_stage": engine.stage,
        "bf16": engine.bf16,
        "model": "tiny" if tiny else f"wav2vec2-large-robust shape, {args.layers} layers, head 2x1024",
        "params_total": total,
        "params_backbone": backbone_params,
        "global_batch": args.batch,
        "seconds_range": list(args.seconds),
        "mean_padded_seconds": float(np.mean([b[0].shape[1] for b in batches[args.warmup :]]) / SAMPLE_RATE),
        "step_s_mean": statistics.mean(times),
        "step_s_median": statistics.median(times),
        "peak_memory_gib": None if peak is None else peak / 2**30,
        "flops_per_step_per_rank": statistics.mean(flops),
        "achieved_tflops_per_rank": tflops,
        "mfu": None if peak_tflops is None else tflops / peak_tflops,
    }
    if engine.is_main:
        print(json.dumps(result, indent=1))
        if args.out:
            args.out.write_text(json.dumps(result, indent=1) + "\n")


if __name__ == "__main__":
    main()
