"""The worker of test_universal_checkpoint.py, run on each rank (tests/train/launch_ranks.py).

It builds a differently initialised DeepSpeed engine, ``load``s a checkpoint saved on another world
size and reports the fp32 weights, Adam's moments and the step it holds, then the weights after one
more optimiser step on a fixed random batch.
"""

from __future__ import annotations

import argparse
from pathlib import Path

import torch


def train_step(engine, seed: int) -> None:
    """One optimiser step on a global batch drawn from ``seed`` (the same on every world size):
    each rank forwards its share, the loss is the mean squared error on the gathered global batch."""
    g = torch.Generator().manual_seed(seed)
    batch = engine.settings.batch_size
    wave = torch.randn(batch, 8000, generator=g)
    lengths = torch.randint(4000, 8001, (batch,), generator=g)
    mask = torch.arange(8000)[None, :] < lengths[:, None]
    share = slice(engine.rank * batch // engine.world_size, (engine.rank + 1) * batch // engine.world_size)
    pred = engine.gather(engine.forward(wave[share], mask[share]).pred)
    target = torch.randn(pred.shape, generator=g)
    engine.backward(((pred - target) ** 2).mean())
    assert engine.step()


def worker() -> None:
    import torch.distributed as dist

    from ctsl_hpc.config import load_config
    from ctsl_hpc.model import build_model
    from ctsl_hpc.train.engines import OptimSettings, make_engine
    from ctsl_hpc.train.engines.deepspeed_checkpoints import import_deepspeed

    safe_get_full_optimizer_state = import_deepspeed().utils.safe_get_full_optimizer_state  # as the package imports it

    p = argparse.ArgumentParser()
    p.add_argument("--run-dir", type=Path)
    p.add_argument("--out", type=Path, required=True)
    p.add_argument("--checkpoint", type=Path, required=True)
    p.add_argument("--batch-seed", type=int, required=True)
    p.add_argument("--moments", action="store_true", help="report Adam's moments (unset after a same-size load)")
    p.add_argument("--freeze-backbone", action="store_true", help="train the head only (the RH student)")
    p.add_argument("--overrides", nargs="*", default=[])
    args = p.parse_args()
    torch.set_num_threads(1)
    cfg = load_config(None, args.overrides)
    torch.manual_seed(12345)  # unlike the saved model: the load must overwrite every tensor
    model = build_model(cfg.model)
    if args.freeze_backbone:
        model.backbone.requires_grad_(False)
    t = cfg.train
    settings = OptimSettings(t.lr, t.lr_decay, 1, t.grad_clip, "fp32", False, t.batch_size)
    engine = make_engine("deepspeed", model, settings, t.deepspeed_config)
    engine.load(args.checkpoint)
    moments = {
        name: {key: safe_get_full_optimizer_state(param, key).detach().cpu().clone() for key in ("exp_avg", "exp_avg_sq")}
        for name, param in engine.ds.module.named_parameters()
        if param.requires_grad and args.moments
    }  # fmt: skip
    steps = {int(state["step"]) for state in engine.optimizer.state.values()}
    out = {
        "loaded": {k: v.cpu() for k, v in engine.full_state_dict().items()},
        "moments": moments,
        "steps": steps,
        "global_steps": engine.ds.global_steps,
        "lr": engine.lr,
    }
    train_step(engine, args.batch_seed)
    out["stepped"] = {k: v.cpu() for k, v in engine.full_state_dict().items()}
    if engine.is_main:
        torch.save(out, args.out)
    dist.barrier()


if __name__ == "__main__":
    worker()
