"""Data-parallel plumbing shared by the DDP and DeepSpeed engines, and the DDP engine itself.

Launch: one process per GPU (or CPU rank); ranks come from torch's ``env://`` variables
(:mod:`ctsl_hpc.train.ranks`). ``train.batch_size`` is the GLOBAL batch: every rank draws the same
global batch list and takes its share (``ShardedBatchSampler``), and the loss is computed on the
whole global batch (predictions, embeddings and labels are all-gathered, the local part keeping its
autograd graph), so CCC and the contrastive term are those of the configured batch and the
gradients equal one process's gradients up to floating-point summation order. Development CCC is
computed on every rank (identical weights and data: identical numbers), so no rank waits.

Checkpoints: every rank calls ``save`` into the shared temporary checkpoint directory; each rank
keeps its own RNG file.
"""

from __future__ import annotations

import socket
from pathlib import Path

import torch
import torch.distributed as dist
from torch import nn

from ctsl_hpc.train.engines.plain import Engine, OptimSettings
from ctsl_hpc.train.ranks import RankEnv, rank_env
from ctsl_hpc.train.safe_load import load_state

RNG_FILE = "rng-rank{rank:05d}.pt"


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
    their gradients on their own rank (see ``DistributedMixin.backward`` for the scaling).
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


class DistributedMixin:
    """Rank queries, collectives and per-rank RNG files shared by the DDP and DeepSpeed engines."""

    rank: int
    world_size: int
    device: torch.device

    def barrier(self) -> None:
        dist.barrier()

    def hosts(self) -> list[str]:
        hosts: list[str | None] = [None] * self.world_size
        dist.all_gather_object(hosts, socket.gethostname())
        return [str(h) for h in hosts]

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
        state = load_state(path)
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
