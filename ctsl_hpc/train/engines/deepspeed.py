"""DeepSpeed ZeRO 1/2/3 around the same torch Adam the plain engine uses.

bf16 on GPUs (``train.precision`` auto/bf16; fp32 master weights in the optimizer), fp32 on CPUs.
Gradient accumulation and clipping are DeepSpeed's, the per-epoch lr decay is ours. Resuming on
the same world size restores everything (optimizer moments included). Resuming on a different
world size loads the consolidated fp32 weights (``zero_to_fp32``), the learning rate and the
schedule, and restarts Adam's moments (logged as a warning); for evaluation, epoch model
directories always hold full fp32 weights.
"""

from __future__ import annotations

import copy
import json
import logging
import os
import pickle
from pathlib import Path
from typing import Any

import torch
import torch.distributed as dist
from torch import nn

from ctsl_hpc.config import ConfigError, shipped_file
from ctsl_hpc.train.checkpoint import load_state
from ctsl_hpc.train.engines.ddp import DistributedMixin, init_process_group
from ctsl_hpc.train.engines.plain import ENGINE_FILE, Engine, OptimSettings

log = logging.getLogger(__name__)

DS_TAG = "deepspeed"
DS_META_FILE = "engine_meta.pt"
# DeepSpeed config keys filled from the experiment settings; the JSON files must not set them.
FILLED_KEYS = (
    "train_batch_size",
    "train_micro_batch_size_per_gpu",
    "gradient_accumulation_steps",
    "gradient_clipping",
    "optimizer",
    "scheduler",
    "bf16",
    "fp16",
    "zero_allow_untested_optimizer",
)


def load_deepspeed_config(path: str | os.PathLike) -> dict[str, Any]:
    """The ZeRO part of a DeepSpeed config (a file, or a shipped one: ``zero2``, ``configs/deepspeed/zero3.json``), checked."""
    try:
        file = shipped_file(path, ".json", "deepspeed")
        config = json.loads(file.read_text())
    except ConfigError as exc:
        raise ConfigError(f"train.deepspeed_config: {exc}") from None
    except json.JSONDecodeError as exc:
        raise ValueError(f"train.deepspeed_config: {file} is not valid JSON: {exc}") from exc
    if not isinstance(config, dict):
        raise ValueError(f"train.deepspeed_config: {file} must hold a JSON object")
    clash = sorted(set(config) & set(FILLED_KEYS))
    if clash:
        raise ValueError(f"{file}: {', '.join(clash)} come from the experiment config; remove them from the JSON")
    stage = config.get("zero_optimization", {}).get("stage", 0)
    if stage not in (0, 1, 2, 3):
        raise ValueError(f"{file}: zero_optimization.stage must be 0, 1, 2 or 3, got {stage!r}")
    return config


def check_shards(folder: Path) -> None:
    """Refuse DeepSpeed checkpoint files that hold anything but tensors, plain data and DeepSpeed's own
    checkpoint classes, before DeepSpeed (which unpickles them without restriction) loads them."""
    from deepspeed.runtime.fp16.loss_scaler import LossScaler
    from deepspeed.runtime.zero.config import ZeroStageEnum
    from deepspeed.utils.tensor_fragment import fragment_address

    for shard in sorted(folder.glob("*.pt")):
        try:
            with torch.serialization.safe_globals([ZeroStageEnum, LossScaler, fragment_address]):
                torch.load(shard, map_location="cpu", weights_only=True)
        except pickle.UnpicklingError as exc:
            raise pickle.UnpicklingError(
                f"{shard} holds more than tensors and DeepSpeed's checkpoint data ({str(exc).splitlines()[0]}); "
                "refusing to load it: a work directory must come from someone you trust"
            ) from None


def fill_deepspeed_config(zero: dict[str, Any], settings: OptimSettings, world_size: int, bf16: bool) -> dict[str, Any]:
    """The full DeepSpeed config: ZeRO settings from the JSON, the rest from the experiment."""
    if settings.batch_size % world_size:
        raise ValueError(
            f"train.batch_size={settings.batch_size} is the global batch; it must be divisible by the world size {world_size}"
        )
    return {
        **zero,
        "train_micro_batch_size_per_gpu": settings.batch_size // world_size,
        "gradient_accumulation_steps": settings.grad_accum,
        "train_batch_size": settings.batch_size * settings.grad_accum,
        "gradient_clipping": settings.grad_clip,
        "bf16": {"enabled": bf16},
        "zero_allow_untested_optimizer": True,  # the engine's torch Adam: no JIT-compiled op needed
        "steps_per_print": zero.get("steps_per_print", 2**31 - 1),
    }


class DeepSpeedEngine(DistributedMixin, Engine):
    """DeepSpeed ZeRO (stage from the JSON) around the same torch Adam the plain engine uses.

    bf16 on GPUs (``train.precision`` auto/bf16; fp32 master weights in the optimizer), fp32 on
    CPUs. Gradient accumulation and clipping are DeepSpeed's, the per-epoch lr decay is ours.
    """

    def __init__(self, model: nn.Module, settings: OptimSettings, deepspeed_config: str | os.PathLike):
        import deepspeed

        env = init_process_group()
        self.rank, self.world_size = env.rank, env.world_size
        zero = load_deepspeed_config(deepspeed_config)
        self.stage = int(zero.get("zero_optimization", {}).get("stage", 0))
        super().__init__(model, settings)  # model on this rank's device, torch Adam, lr schedule
        for tensor in [*self.module.parameters(), *self.module.buffers()]:
            dist.broadcast(tensor.data, src=0)  # every rank starts from rank 0's weights
        self.bf16 = self._amp is torch.bfloat16
        self.config = fill_deepspeed_config(zero, settings, self.world_size, self.bf16)
        self._plain = copy.deepcopy(self.module) if self._needs_consolidation() else None
        self.ds, _, _, _ = deepspeed.initialize(model=self.module, optimizer=self.optimizer, config=self.config)
        self.module = self.ds
        self._full_at: int | None = None

    def _needs_consolidation(self) -> bool:
        """Module weights differ from the fp32 masters (bf16) or are sharded (ZeRO-3)."""
        return self.bf16 or self.stage == 3

    def forward(self, *args, **kwargs):
        return self.ds(*args, **kwargs)

    def backward(self, loss: torch.Tensor) -> None:
        self.ds.backward(loss * self.loss_scale())  # DeepSpeed divides by the accumulation steps

    @property
    def at_step_boundary(self) -> bool:
        return self.ds.is_gradient_accumulation_boundary()

    def step(self) -> bool:
        boundary = self.ds.is_gradient_accumulation_boundary()
        self.ds.step()  # counts the micro-step; applies the optimizer at a boundary
        return boundary

    def unwrapped(self) -> nn.Module:
        """The full model with the current fp32 weights.

        ZeRO-1/2 in fp32: the module itself. bf16 or ZeRO-3: a plain copy filled from the fp32
        master weights; assembling them is collective (all ranks call this after a step), the copy
        is then reused until the next optimizer step, so rank 0 alone may call it again.
        """
        if self._plain is None:
            return self.ds.module
        if self._full_at != self.ds.global_steps:
            self._plain.load_state_dict(self.full_state_dict())
            self._full_at = self.ds.global_steps
        return self._plain

    def full_state_dict(self) -> dict[str, torch.Tensor]:
        """fp32 weights of every parameter and buffer (collective under bf16 or ZeRO-3)."""
        import deepspeed
        from deepspeed.utils import safe_get_full_fp32_param

        state = {}
        for name, param in self.ds.module.named_parameters():
            full = safe_get_full_fp32_param(param) if param.requires_grad else None
            if full is None:  # frozen: not in the optimizer
                with deepspeed.zero.GatheredParameters([param], enabled=self.stage == 3):
                    full = param.detach().clone()
            state[name] = full.float()
        for name, buffer in self.ds.module.named_buffers():
            state[name] = buffer.detach().clone()
        return state

    def save(self, directory: Path) -> None:
        """All ranks: DeepSpeed's checkpoint (ZeRO shards per rank) plus our schedule and RNG."""
        self.ds.save_checkpoint(str(directory), tag=DS_TAG, save_latest=False)
        if self.is_main:
            meta = {
                "world_size": self.world_size,
                "stage": self.stage,
                "scheduler": self.scheduler.state_dict(),
                "lr": [g["lr"] for g in self.optimizer.param_groups],
            }
            torch.save(meta, directory / DS_META_FILE)
        self._save_rng(directory)

    def load(self, directory: Path) -> None:
        """All ranks: resume from ``save``'s files (same world size: everything; else fp32 weights)."""
        if (directory / ENGINE_FILE).is_file() and not (directory / DS_META_FILE).is_file():
            raise ValueError(f"{directory} was written by the plain/ddp engine, not by deepspeed")
        meta = load_state(directory / DS_META_FILE)
        check_shards(directory / DS_TAG)
        if meta["world_size"] == self.world_size and meta["stage"] == self.stage:
            path, _ = self.ds.load_checkpoint(str(directory), tag=DS_TAG, load_lr_scheduler_states=False)
            if path is None:
                raise RuntimeError(f"DeepSpeed could not load {directory / DS_TAG}")
        else:
            log.warning(
                "%s was saved by %d rank(s) with ZeRO-%d; now %d rank(s) with ZeRO-%d: loading the consolidated "
                "fp32 weights, Adam's moments restart",
                directory, meta["world_size"], meta["stage"], self.world_size, self.stage,
            )
            self._load_fp32(directory)
        self.scheduler.load_state_dict(meta["scheduler"])
        for group, lr in zip(self.optimizer.param_groups, meta["lr"]):
            group["lr"] = lr
        self._full_at = None
        self._load_rng(directory)

    def _load_fp32(self, directory: Path) -> None:
        import deepspeed
        from deepspeed.utils import safe_set_full_fp32_param
        from deepspeed.utils.zero_to_fp32 import get_fp32_state_dict_from_zero_checkpoint

        state = get_fp32_state_dict_from_zero_checkpoint(str(directory), tag=DS_TAG)
        with torch.no_grad():
            for name, param in self.ds.module.named_parameters():
                value = state[name].to(self.device)
                with deepspeed.zero.GatheredParameters([param], modifier_rank=0, enabled=self.stage == 3):
                    param.data.copy_(value.to(param.dtype))
                if param.requires_grad:
                    safe_set_full_fp32_param(param, value)
            for name, buffer in self.ds.module.named_buffers():
                if name in state:
                    buffer.copy_(state[name])

    def end_epoch(self) -> None:
        self.scheduler.step()
