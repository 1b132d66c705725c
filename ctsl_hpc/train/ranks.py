"""Which rank this process is: torch's ``env://`` variables behind a small interface.

The core reads ``RANK``, ``WORLD_SIZE``, ``LOCAL_RANK``, ``MASTER_ADDR`` and ``MASTER_PORT`` and
nothing else: ``torchrun`` sets them, and a scheduler's launcher (the Slurm backend,
:mod:`ctsl_hpc.launch.slurm_env`) exports them from its own variables before training starts. A
process with none of them is a world of one. Modelled on Lightning's ``ClusterEnvironment``: a
scheduler adds a subclass that knows its variables and :meth:`~ClusterEnvironment.export` s them.
Torch-free: launchers read and export ranks before any training code is imported.
"""

from __future__ import annotations

import abc
import os
from dataclasses import dataclass

from ctsl_hpc.processes import free_port


@dataclass(frozen=True)
class RankEnv:
    rank: int
    world_size: int
    local_rank: int


class ClusterEnvironment(abc.ABC):
    """Where this process sits among the ranks of a job, and how they meet."""

    @abc.abstractmethod
    def world_size(self) -> int: ...

    @abc.abstractmethod
    def global_rank(self) -> int: ...

    @abc.abstractmethod
    def local_rank(self) -> int: ...

    @abc.abstractmethod
    def main_address(self) -> str: ...

    @abc.abstractmethod
    def main_port(self) -> int: ...

    def export(self) -> None:
        """Set the ``env://`` variables that torch (and DeepSpeed) read to join the process group."""
        os.environ.update(
            RANK=str(self.global_rank()), WORLD_SIZE=str(self.world_size()), LOCAL_RANK=str(self.local_rank()),
            MASTER_ADDR=self.main_address(), MASTER_PORT=str(self.main_port()),
        )


class TorchEnvironment(ClusterEnvironment):
    """The ``env://`` variables as ``torchrun`` (or a scheduler's export) set them."""

    @staticmethod
    def detect() -> bool:
        return "RANK" in os.environ

    def world_size(self) -> int:
        return int(os.environ["WORLD_SIZE"])

    def global_rank(self) -> int:
        return int(os.environ["RANK"])

    def local_rank(self) -> int:
        return int(os.environ.get("LOCAL_RANK", self.global_rank()))

    def main_address(self) -> str:
        return os.environ["MASTER_ADDR"]

    def main_port(self) -> int:
        return int(os.environ["MASTER_PORT"])


class SingleProcess(ClusterEnvironment):
    """A world of one on this host (a free port, in case a process group is made anyway)."""

    def __init__(self) -> None:
        self._address = os.environ.get("MASTER_ADDR", "127.0.0.1")
        self._port = int(os.environ.get("MASTER_PORT") or free_port())

    def world_size(self) -> int:
        return 1

    def global_rank(self) -> int:
        return 0

    def local_rank(self) -> int:
        return 0

    def main_address(self) -> str:
        return self._address

    def main_port(self) -> int:
        return self._port


def rank_env() -> RankEnv:
    """This process's rank from the ``env://`` variables (a world of one when they are unset, exported)."""
    if not TorchEnvironment.detect():
        SingleProcess().export()
    missing = [k for k in ("WORLD_SIZE", "MASTER_ADDR", "MASTER_PORT") if k not in os.environ]
    if missing:
        raise RuntimeError(f"RANK is set but {', '.join(missing)} is not: launch with torchrun or a scheduler's tasks")
    env = TorchEnvironment()
    os.environ.setdefault("LOCAL_RANK", str(env.local_rank()))
    return RankEnv(env.global_rank(), env.world_size(), env.local_rank())
