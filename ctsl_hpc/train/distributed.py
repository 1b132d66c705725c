"""Data-parallel engines (torch DDP, DeepSpeed ZeRO 1/2/3) and the rank plumbing they share.

Launch: one process per GPU (or CPU rank), started by ``torchrun`` or by Slurm tasks. Ranks come
from ``RANK``/``WORLD_SIZE``/``LOCAL_RANK``/``MASTER_ADDR``/``MASTER_PORT``; in a Slurm task
without them they are derived from ``SLURM_PROCID``/``SLURM_NTASKS``/... through submitit's
``TorchDistributedEnvironment`` (never the deepspeed launcher). A single process with none of them
is a world of one.

Batches: ``train.batch_size`` is the GLOBAL batch. Every rank draws the same global batch list
(length buckets, seed, epoch) and takes the items ``rank::world_size`` of each batch, so each rank
gets ``batch_size / world_size`` items (it must divide) and the ranks together see exactly the
batch a single process would. The loss is computed on the whole global batch (predictions,
embeddings and labels are all-gathered, the local part keeping its autograd graph), so CCC and the
contrastive term are those of the configured batch and the gradients equal one process's gradients
up to floating-point summation order. Development CCC is computed on every rank (identical
weights, identical data: identical numbers), so no rank waits on another.

Checkpoints: every rank calls ``save`` into the shared temporary checkpoint directory (DeepSpeed
writes its ZeRO shards collectively). Resuming on the same world size restores everything
(optimizer moments included). Resuming on a different world size loads the consolidated fp32
weights (``zero_to_fp32``), the learning rate and the schedule, and restarts Adam's moments
(logged as a warning); for evaluation, epoch model directories always hold full fp32 weights.
"""

from __future__ import annotations

import copy
import json
import logging
import os
import socket
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
import torch.distributed as dist
from torch import nn

from ctsl_hpc.train.engine import ENGINE_FILE, Engine, OptimSettings

log = logging.getLogger(__name__)

DS_TAG = "deepspeed"
DS_META_FILE = "engine_meta.pt"
RNG_FILE = "rng-rank{rank:05d}.pt"
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


@dataclass(frozen=True)
class RankEnv:
    rank: int
    world_size: int
    local_rank: int


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def rank_env() -> RankEnv:
    """This process's rank, exporting the torch ``env://`` variables when they are missing.

    Order: torchrun-style variables (also what submitit's ``TorchDistributedEnvironment().export()``
    sets); else a Slurm task (``srun``/sbatch tasks: rank, task count and first node parsed by
    submitit's Slurm environment; port from ``MASTER_PORT`` or the job id; ``CUDA_VISIBLE_DEVICES``
    untouched so that ``set_device(local_rank)`` stays valid); else a world of one on 127.0.0.1.
    """
    if "RANK" not in os.environ and "SLURM_PROCID" in os.environ and "SLURM_NTASKS" in os.environ:
        from submitit.slurm.slurm import SlurmJobEnvironment

        job = SlurmJobEnvironment()
        os.environ.update(RANK=str(job.global_rank), WORLD_SIZE=str(job.num_tasks), LOCAL_RANK=str(job.local_rank))
        os.environ.setdefault("MASTER_ADDR", job.hostnames[0])
        os.environ.setdefault("MASTER_PORT", str(20000 + int(os.environ.get("SLURM_JOB_ID", "0")) % 40000))
    if "RANK" not in os.environ:
        os.environ.update(RANK="0", WORLD_SIZE="1", LOCAL_RANK="0")
        os.environ.setdefault("MASTER_ADDR", "127.0.0.1")
        os.environ.setdefault("MASTER_PORT", str(_free_port()))
    missing = [k for k in ("WORLD_SIZE", "MASTER_ADDR", "MASTER_PORT") if k not in os.environ]
    if missing:
        raise RuntimeError(f"RANK is set but {', '.join(missing)} is not: launch with torchrun or Slurm tasks")
    rank, world = int(os.environ["RANK"]), int(os.environ["WORLD_SIZE"])
    local = int(os.environ.get("LOCAL_RANK", rank))
    os.environ.setdefault("LOCAL_RANK", str(local))
    return RankEnv(rank, world, local)


def init_process_group() -> RankEnv:
    """Join the process group (nccl on GPUs, gloo on CPUs) once per process."""
    env = rank_env()
    if torch.cuda.is_available():
        torch.cuda.set_device(env.local_rank)
    if not dist.is_initialized():
        dist.init_process_group("nccl" if torch.cuda.is_available() else "gloo", init_method="env://")
    if dist.get_world_size() != env.world_size:
        raise RuntimeError(f"process group has {dist.get_world_size()} ranks, WORLD_SIZE says {env.world_size}")
    return env


def gather_batch(tensor: torch.Tensor) -> torch.Tensor:
    """Concatenate every rank's ``tensor`` along dim 0 (ranks may hold different row counts).

    Only this rank's rows keep their autograd graph; the other rows are constants here and get
    their gradients on their own rank. See :meth:`DistributedMixin.backward` for the scaling.
    """
    world = dist.get_world_size()
    sizes = torch.zeros(world, dtype=torch.int64, device=tensor.device)
    sizes[dist.get_rank()] = tensor.shape[0]
    dist.all_reduce(sizes)
    longest = int(sizes.max())
    padded = tensor.detach().new_zeros((longest, *tensor.shape[1:]))
    padded[: tensor.shape[0]] = tensor.detach()
    parts = [torch.empty_like(padded) for _ in range(world)]
    dist.all_gather(parts, padded.contiguous())
    parts[dist.get_rank()] = tensor
    return torch.cat([p[: int(n)] for p, n in zip(parts, sizes.tolist())])


class ShardedBatchSampler:
    """Each rank's share of every global batch: items ``rank::world_size`` (balanced lengths).

    ``sampler`` makes the global batch list (built with one replica). A global batch with fewer
    items than ranks (at most the epoch's last) is dropped on every rank alike. ``set_epoch(epoch,
    start_batch)`` counts global batches, the same number on every rank.
    """

    def __init__(self, sampler: Any, rank: int, world_size: int):
        if sampler.num_replicas != 1:
            raise ValueError("ShardedBatchSampler needs a sampler of the global batches (num_replicas=1)")
        if sampler.batch_size % world_size:
            raise ValueError(
                f"train.batch_size={sampler.batch_size} is the global batch; it must be divisible by "
                f"the world size {world_size}"
            )
        self.sampler, self.rank, self.world_size = sampler, rank, world_size
        self.batch_size = sampler.batch_size // world_size
        self.start_batch = 0

    def set_epoch(self, epoch: int, start_batch: int = 0) -> None:
        self.sampler.set_epoch(epoch)
        self.start_batch = int(start_batch)

    def batches(self) -> list[list[int]]:
        full = [b for b in self.sampler.batches() if len(b) >= self.world_size]
        return [b[self.rank :: self.world_size] for b in full]

    def __iter__(self) -> Iterator[list[int]]:
        yield from self.batches()[self.start_batch :]

    def __len__(self) -> int:
        return len(self.batches())


class DistributedMixin:
    """Rank queries, collectives and per-rank RNG files shared by the DDP and DeepSpeed engines."""

    rank: int
    world_size: int
    device: torch.device

    def barrier(self) -> None:
        dist.barrier()

    def all_reduce_flag(self, flag: bool) -> bool:
        value = torch.tensor([int(flag)], device=self.device)
        dist.all_reduce(value, op=dist.ReduceOp.MAX)
        return bool(value.item())

    def gather(self, tensor: torch.Tensor) -> torch.Tensor:
        """The global batch's rows of ``tensor`` (see :func:`gather_batch`)."""
        return gather_batch(tensor)

    def loss_scale(self) -> float:
        """Each rank backpropagates the same global loss through its own rows only, and the
        gradient all-reduce averages over ranks: scaling by the world size makes the sum exact."""
        return float(self.world_size)

    def _save_rng(self, directory: Path) -> None:
        state = {"torch": torch.get_rng_state()}
        if torch.cuda.is_available():
            state["cuda"] = torch.cuda.get_rng_state()
        torch.save(state, directory / RNG_FILE.format(rank=self.rank))

    def _load_rng(self, directory: Path) -> None:
        path = directory / RNG_FILE.format(rank=self.rank)
        if not path.is_file():  # saved by a different world size: keep the trainer's RNG state
            return
        state = torch.load(path, weights_only=False)
        torch.set_rng_state(state["torch"])
        if "cuda" in state and torch.cuda.is_available():
            torch.cuda.set_rng_state(state["cuda"])


class DDPEngine(DistributedMixin, Engine):
    """torch DistributedDataParallel: replicated weights and optimizer, all-reduced gradients."""

    def __init__(self, model: nn.Module, settings: OptimSettings):
        env = init_process_group()
        self.rank, self.world_size = env.rank, env.world_size
        super().__init__(model, settings)
        device_ids = [self.device.index] if self.device.type == "cuda" else None
        self.ddp = nn.parallel.DistributedDataParallel(self.module, device_ids=device_ids)

    def forward(self, *args, **kwargs):
        # gradients are all-reduced only in the backward that closes an accumulation window
        self.ddp.require_backward_grad_sync = (self._micro_step + 1) % self.settings.grad_accum == 0
        return self.ddp(*args, **kwargs)

    def backward(self, loss: torch.Tensor) -> None:
        super().backward(loss * self.loss_scale())

    def save(self, directory: Path) -> None:
        if self.is_main:  # replicated state: rank 0's copy is everyone's
            super().save(directory)
        self._save_rng(directory)

    def load(self, directory: Path) -> None:
        super().load(directory)
        self._load_rng(directory)


def load_deepspeed_config(path: str | os.PathLike) -> dict[str, Any]:
    """The ZeRO part of a DeepSpeed config (``configs/deepspeed/*.json``), checked."""
    file = Path(path)
    if not file.is_absolute() and not file.is_file():
        file = Path(__file__).resolve().parents[2] / file  # relative to the repository
    try:
        config = json.loads(file.read_text())
    except FileNotFoundError as exc:
        raise FileNotFoundError(f"train.deepspeed_config: {path} does not exist") from exc
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
        meta = torch.load(directory / DS_META_FILE, weights_only=False)
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


def make_distributed_engine(
    kind: str, model: nn.Module, settings: OptimSettings, deepspeed_config: str | os.PathLike | None
) -> Engine:
    """``ddp`` or ``deepspeed`` (``deepspeed_config``: a ``configs/deepspeed/*.json`` file)."""
    if kind == "ddp":
        return DDPEngine(model, settings)
    if kind == "deepspeed":
        if deepspeed_config is None:
            raise ValueError("train.deepspeed_config: a DeepSpeed JSON file is required for engine=deepspeed")
        return DeepSpeedEngine(model, settings, deepspeed_config)
    raise ValueError(f"train.engine: {kind!r} is not a distributed engine (ddp, deepspeed)")

