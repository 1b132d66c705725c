"""Fixtures of the search's tests: a tiny search's settings and the environment its driver runs in."""

from __future__ import annotations

import os
from dataclasses import dataclass, field

import pytest


@dataclass(frozen=True)
class TinySearch:
    """A search of ``num_samples`` trials of at most ``max_t`` epochs over four noise budgets, one final student."""

    num_samples: int = 6
    max_t: int = 3
    env: dict[str, str] = field(default_factory=lambda: dict(
        os.environ, HF_HUB_OFFLINE="1", RAY_USAGE_STATS_ENABLED="0", MLFLOW_ENABLE_SYSTEM_METRICS_LOGGING="false",
        RAY_DEDUP_LOGS="0",
        # Tune saves its experiment state at most every 10 s by default; a tiny search's trials, run one after
        # another in one reused worker, take about a second an epoch: the tests interrupt it on what that state says
        TUNE_GLOBAL_CHECKPOINT_S="1",
    ))  # fmt: skip

    def overrides(self, seed: int) -> list[str]:
        return [
            f"tune.num_samples={self.num_samples}",
            f"tune.max_t={self.max_t}",
            "tune.grace_period=1",
            "tune.reduction_factor=2",
            "tune.brackets=1",  # more brackets draw each trial's from numpy's global generator
            "tune.noise_minutes=[0.1,0.25,0.5,1.0]",
            "tune.final_variants=[RM+TL+CL]",
            "tune.cpus_per_trial=1",
            "tune.max_concurrent=1",  # one trial at a time and a seeded search: the same search gives the same trials
            f"tune.seed={seed}",
            f"seed={seed}",
        ]


@pytest.fixture(scope="session")
def tiny_search() -> TinySearch:
    return TinySearch()
