"""One rank of a distributed training test (its ranks started by tests/train/launch_ranks.py).

``fit`` mode trains a tiny model on the test corpus with the given engine and writes, on rank 0,
``<out>``: the final fp32 weights, the epoch records, and (if stopped) the checkpoint path.
``load`` mode builds a differently initialised model, loads ``--checkpoint`` into the engine and
writes the weights the engine then holds.
"""

from __future__ import annotations

import argparse
import dataclasses
from pathlib import Path

import torch

from ctsl_hpc.config import load_config
from ctsl_hpc.data.batching import UtteranceSet
from ctsl_hpc.data.corpus import load_csv_manifest
from ctsl_hpc.data.noise import NoisePool
from ctsl_hpc.model import build_model
from ctsl_hpc.train.embed_cache import cached_teacher
from ctsl_hpc.train.engines import OptimSettings, make_engine
from ctsl_hpc.train.recipe import recipe
from ctsl_hpc.train.interface import TrainingInterrupted
from ctsl_hpc.train.trainer import TrainingData, build_trainer
from ctsl_hpc.variants import TEACHER
from ctsl_hpc.workdir import RunDir


def parse() -> argparse.Namespace:
    p = argparse.ArgumentParser()
    p.add_argument("--mode", choices=["fit", "load"], default="fit")
    p.add_argument("--overrides", nargs="*", default=[])
    p.add_argument("--variant", default=TEACHER)
    p.add_argument("--run-dir", type=Path, required=True)
    p.add_argument("--out", type=Path, required=True)
    p.add_argument("--stop-after", type=int, default=0, help="request a stop after this many optimiser steps")
    p.add_argument("--init-seed", type=int, default=0)
    p.add_argument("--checkpoint", type=Path)
    return p.parse_args()


def datasets(cfg):
    splits = load_csv_manifest(cfg.data.manifest)
    pool = NoisePool.from_directory(cfg.noise.train, 16000, 1.0, min_seconds=2.0)
    dev_pool = NoisePool.from_directory(cfg.noise.dev, 16000, 1.0, min_seconds=2.0)
    return (
        UtteranceSet(splits["train"], 16000, 2.0, preload=True, noise=pool, snr_db=0.0, seed=5),
        UtteranceSet(splits["dev"], 16000, 2.0, preload=True, noise=dev_pool, snr_db=0.0, seed=5),
    )


class StopAfter:
    def __init__(self, n: int):
        self.n, self.calls = n, 0

    def __call__(self) -> bool:
        self.calls += 1
        return 0 < self.n <= self.calls


def main() -> None:
    torch.set_num_threads(1)
    args = parse()
    cfg = load_config(None, args.overrides)
    torch.manual_seed(args.init_seed)
    model = build_model(cfg.model)
    if args.mode == "load":
        settings = OptimSettings(1e-3, 1.0, 1, 0.0, "auto", False, cfg.train.batch_size)
        engine = make_engine(cfg.train.engine, model, settings, cfg.train.deepspeed_config)
        engine.load(args.checkpoint)
        weights = {k: v.detach().cpu().clone() for k, v in engine.unwrapped().state_dict().items()}
        if engine.is_main:
            torch.save({"weights": weights}, args.out)
        return
    train_set, dev_set = datasets(cfg)
    rec = recipe(args.variant, cfg)
    table = None
    if rec.needs_teacher:
        table = torch.randn(len(train_set), cfg.model.tiny.hidden_size, generator=torch.Generator().manual_seed(7))
    embed = None if table is None else cached_teacher(table)
    stopped = None
    try:
        data = TrainingData(train_set, dev_set, teacher=embed)
        result = build_trainer(model, rec, data, cfg.train, RunDir(args.run_dir)).fit(StopAfter(args.stop_after))
        epochs = [dataclasses.asdict(r) for r in result.epochs]
    except TrainingInterrupted as exc:
        stopped, epochs = str(exc.checkpoint), []
    import torch.distributed as dist

    rank = dist.get_rank() if dist.is_initialized() else 0
    if rank == 0:
        weights = {k: v.detach().cpu().clone() for k, v in model.state_dict().items()}
        torch.save({"weights": weights, "epochs": epochs, "stopped": stopped}, args.out)


if __name__ == "__main__":
    main()
