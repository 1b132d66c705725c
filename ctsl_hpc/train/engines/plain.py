"""The engine interface, implemented for one process (the ``plain`` engine).

An engine owns the model's placement, the optimiser, the learning-rate schedule, mixed precision,
gradient accumulation and its own checkpoint files; the training loop never knows which engine
it drives. ``ddp`` and ``deepspeed`` (sibling modules) spread the work across ranks.
"""

from __future__ import annotations

import contextlib
import os
import socket
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import torch
from torch import nn

from ctsl_hpc.train.safe_load import load_state

ENGINE_FILE = "engine.pt"
FUSED_ADAM_DEVICES = ("cuda", "cpu")


@dataclass(frozen=True)
class OptimSettings:
    lr: float
    lr_decay: float  # multiplicative decay applied once per epoch (1.0: constant)
    grad_accum: int
    grad_clip: float  # 0 disables clipping
    precision: str  # "auto" | "fp32" | "bf16"
    fused: bool
    batch_size: int  # the global batch (all ranks together); DeepSpeed's batch sizes come from it


def resolve_device() -> torch.device:
    """The GPU of this rank (LOCAL_RANK) when CUDA is available, else the CPU."""
    if torch.cuda.is_available():
        return torch.device("cuda", int(os.environ.get("LOCAL_RANK", 0)))
    return torch.device("cpu")


def autocast_dtype(precision: str, device: torch.device) -> torch.dtype | None:
    """bf16 autocast on GPUs (``auto`` or ``bf16``), full fp32 on the CPU."""
    if device.type == "cuda" and precision in ("auto", "bf16"):
        return torch.bfloat16
    return None


def make_optimizer(params: list[nn.Parameter], settings: OptimSettings, device: torch.device) -> torch.optim.Optimizer:
    """Adam (the paper's optimiser); torch's fused kernel on the devices that have one (CUDA, CPU)."""
    fused = settings.fused and device.type in FUSED_ADAM_DEVICES
    return torch.optim.Adam(params, lr=settings.lr, fused=fused or None)


class Engine:
    """The interface of every engine, implemented here for a single process."""

    rank = 0
    world_size = 1

    def __init__(self, model: nn.Module, settings: OptimSettings):
        self.settings = settings
        self.device = resolve_device()
        self.module = model.to(self.device)
        trainable = [p for p in model.parameters() if p.requires_grad]
        self.optimizer = make_optimizer(trainable, settings, self.device)
        self.scheduler = torch.optim.lr_scheduler.ExponentialLR(self.optimizer, gamma=settings.lr_decay)
        self._amp = autocast_dtype(settings.precision, self.device)
        self._micro_step = 0

    @property
    def is_main(self) -> bool:
        return self.rank == 0

    def barrier(self) -> None:
        """Wait for every rank (no-op in one process)."""

    def hosts(self) -> list[str]:
        """The host each rank runs on, in rank order."""
        return [socket.gethostname()]

    def all_reduce_flag(self, flag: bool) -> bool:
        """True on every rank if any rank said True (used to stop all ranks together)."""
        return flag

    @contextlib.contextmanager
    def autocast(self) -> Iterator[None]:
        if self._amp is None:
            yield
        else:
            with torch.autocast(self.device.type, dtype=self._amp):
                yield

    def forward(self, *args, **kwargs):
        return self.module(*args, **kwargs)

    def gather(self, tensor: torch.Tensor) -> torch.Tensor:
        """The rows of ``tensor`` from every rank (the loss is computed on the global batch)."""
        return tensor

    def backward(self, loss: torch.Tensor) -> None:
        """Accumulate gradients of ``loss`` (scaled by the accumulation count)."""
        (loss / self.settings.grad_accum).backward()
        self._micro_step += 1

    @property
    def at_step_boundary(self) -> bool:
        """True when the accumulated micro-batches make one optimiser step."""
        return self._micro_step % self.settings.grad_accum == 0

    def step(self) -> bool:
        """Apply the optimiser if a full accumulation window is done; return whether it stepped."""
        if not self.at_step_boundary:
            return False
        if self.settings.grad_clip > 0:
            torch.nn.utils.clip_grad_norm_(self.module.parameters(), self.settings.grad_clip)
        self.optimizer.step()
        self.optimizer.zero_grad(set_to_none=True)
        return True

    def end_epoch(self) -> None:
        self.scheduler.step()

    @property
    def lr(self) -> float:
        return self.optimizer.param_groups[0]["lr"]

    def unwrapped(self) -> nn.Module:
        """The plain model (for saving weights and evaluation)."""
        return self.module

    def save(self, directory: Path) -> None:
        torch.save(
            {
                "model": self.module.state_dict(),
                "optimizer": self.optimizer.state_dict(),
                "scheduler": self.scheduler.state_dict(),
                "micro_step": self._micro_step,
            },
            directory / ENGINE_FILE,
        )

    def load(self, directory: Path) -> None:
        state = load_state(directory / ENGINE_FILE, map_location=self.device)
        self.module.load_state_dict(state["model"])
        self.optimizer.load_state_dict(state["optimizer"])
        self.scheduler.load_state_dict(state["scheduler"])
        self._micro_step = state["micro_step"]
