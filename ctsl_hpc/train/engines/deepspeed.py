"""DeepSpeed ZeRO 1/2/3 around the same torch Adam the plain engine uses.

bf16 on GPUs (``train.precision`` auto/bf16; fp32 master weights in the optimizer), fp32 on CPUs.
Gradient accumulation and clipping are DeepSpeed's, the per-epoch lr decay is ours. Resuming on
the same world size and ZeRO stage restores everything (optimizer moments included). Resuming on a
different world size (or between ZeRO-1 and ZeRO-2) also keeps the optimizer state: rank 0 converts
the checkpoint's ZeRO shards to DeepSpeed's universal checkpoint (``ds_to_universal``, once, into
``<checkpoint>/deepspeed_universal``, written under a temporary name and renamed when complete) and
every rank loads its new partition of the fp32 master weights, Adam's moments and step count from
it. Where that is impossible (ZeRO-0, a change into or out of ZeRO-3, a failed conversion, a
DeepSpeed without universal checkpoints) the consolidated fp32 weights (``zero_to_fp32``) are
loaded and Adam's moments restart, with a warning that says why. The learning rate, the schedule
and the RNG are ours and always restored; for evaluation, epoch model directories always hold full
fp32 weights.
"""

from __future__ import annotations

import copy
import json
import logging
import os
from pathlib import Path
from typing import Any

import torch
import torch.distributed as dist
from torch import nn

from ctsl_hpc.config import ConfigError, shipped_file
from ctsl_hpc.train.engines.ddp import DistributedMixin, init_process_group
from ctsl_hpc.train.engines.deepspeed_checkpoints import (
    DS_TAG,
    UNIVERSAL_TAG,
    check_shards,
    convert_to_universal,
    import_deepspeed,
    load_shard,
    universal_unsupported,
)
from ctsl_hpc.train.engines.plain import ENGINE_FILE, Engine, OptimSettings
from ctsl_hpc.train.safe_load import load_state

log = logging.getLogger(__name__)

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
        deepspeed = import_deepspeed()

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
        """All ranks: resume from ``save``'s files (same world size and stage: DeepSpeed's own load;
        else the universal conversion, or the fp32 weights where that is impossible)."""
        if (directory / ENGINE_FILE).is_file() and not (directory / DS_META_FILE).is_file():
            raise ValueError(f"{directory} was written by the plain/ddp engine, not by deepspeed")
        meta = load_state(directory / DS_META_FILE)
        check_shards(directory / DS_TAG)
        if meta["world_size"] == self.world_size and meta["stage"] == self.stage:
            path, _ = self.ds.load_checkpoint(str(directory), tag=DS_TAG, load_lr_scheduler_states=False)
            if path is None:
                raise RuntimeError(f"DeepSpeed could not load {directory / DS_TAG}")
        else:
            change = (
                f"{directory} was saved by {meta['world_size']} rank(s) with ZeRO-{meta['stage']}; "
                f"now {self.world_size} rank(s) with ZeRO-{self.stage}"
            )
            why = universal_unsupported(meta["stage"], self.stage) or self._convert(directory)
            if why is None:
                log.info("%s: loading the universal checkpoint (optimizer state kept)", change)
                self._load_universal(directory)
            else:
                log.warning("%s: loading the consolidated fp32 weights, Adam's moments restart (%s)", change, why)
                self._load_fp32(directory)
        self.scheduler.load_state_dict(meta["scheduler"])
        for group, lr in zip(self.optimizer.param_groups, meta["lr"]):
            group["lr"] = lr
        self._full_at = None
        self._load_rng(directory)

    def _convert(self, directory: Path) -> str | None:
        """Rank 0 converts (or reuses) the universal checkpoint, the others wait; every rank gets
        None, or why the conversion failed."""
        error = [None]
        if self.is_main:
            try:
                convert_to_universal(directory)
            except Exception as exc:  # any failure: fall back to the fp32 weights
                log.exception("converting %s to a universal checkpoint failed", directory / DS_TAG)
                error = [f"the universal conversion failed: {type(exc).__name__}: {exc}"]
        dist.broadcast_object_list(error, src=0)  # also the barrier the other ranks wait at
        return error[0]

    def _load_universal(self, directory: Path) -> None:
        folder = directory / UNIVERSAL_TAG
        check_shards(folder)
        # ``checkpoint.load_universal`` of the DeepSpeed config, switched on for this load only: in
        # deepspeed 0.19.8 the flag is read by nothing but load_checkpoint (runtime/engine.py,
        # DeepSpeedEngine.load_universal_checkpoint, read in _get_all_ckpt_names, load_checkpoint,
        # _load_checkpoint and _load_zero_checkpoint), and a resume is not known when the engine is built.
        config = self.ds._config
        before = config.load_universal_checkpoint
        config.load_universal_checkpoint = True
        try:
            path, _ = self.ds.load_checkpoint(str(directory), tag=UNIVERSAL_TAG, load_lr_scheduler_states=False)
        finally:
            config.load_universal_checkpoint = before
        if path is None:
            raise RuntimeError(f"DeepSpeed could not load the universal checkpoint {folder}")
        self._restore_untrained(directory)

    def _restore_untrained(self, directory: Path) -> None:
        """Universal loading restores what the optimizer holds; frozen parameters and buffers come
        from the saved module state (ZeRO-1/2: full tensors in the model-state file; ZeRO-3: the
        consolidated checkpoint)."""
        module = self.ds.module
        names = {n for n, p in module.named_parameters() if not p.requires_grad}
        names |= {n for n, _ in module.named_buffers()}
        if not names:
            return
        if self.stage < 3:
            saved = load_shard(directory / UNIVERSAL_TAG / "mp_rank_00_model_states.pt")["module"]
        else:
            from deepspeed.utils.zero_to_fp32 import get_fp32_state_dict_from_zero_checkpoint

            saved = get_fp32_state_dict_from_zero_checkpoint(str(directory), tag=DS_TAG)
        self._copy_weights(saved, only=names)

    def _load_fp32(self, directory: Path) -> None:
        from deepspeed.utils.zero_to_fp32 import get_fp32_state_dict_from_zero_checkpoint

        self._copy_weights(get_fp32_state_dict_from_zero_checkpoint(str(directory), tag=DS_TAG))

    def _copy_weights(self, state: dict[str, torch.Tensor], only: set[str] | None = None) -> None:
        """Set every parameter (fp32 masters included) from ``state``, and the buffers it holds;
        ``only``: just these names. Collective under ZeRO-3."""
        import deepspeed
        from deepspeed.utils import safe_set_full_fp32_param

        with torch.no_grad():
            for name, param in self.ds.module.named_parameters():
                if only is not None and name not in only:
                    continue
                value = state[name].to(self.device)
                with deepspeed.zero.GatheredParameters([param], modifier_rank=0, enabled=self.stage == 3):
                    param.data.copy_(value.to(param.dtype))
                if param.requires_grad:
                    safe_set_full_fp32_param(param, value)
            for name, buffer in self.ds.module.named_buffers():
                if name in state and (only is None or name in only):
                    buffer.copy_(state[name])

    def end_epoch(self) -> None:
        self.scheduler.step()
