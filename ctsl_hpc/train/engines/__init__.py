"""Training engines behind one interface (:class:`Engine`): ``plain``, ``ddp``, ``deepspeed``."""

from __future__ import annotations

from torch import nn

from ctsl_hpc.train.engines.plain import ENGINE_FILE, Engine, OptimSettings

__all__ = ["ENGINE_FILE", "ENGINES", "Engine", "OptimSettings", "make_engine"]

ENGINES = ("plain", "ddp", "deepspeed")


def make_engine(kind: str, model: nn.Module, settings: OptimSettings, deepspeed_config: str | None = None) -> Engine:
    """Build the engine named by ``train.engine`` (the distributed ones join the process group)."""
    if kind == "plain":
        return Engine(model, settings)
    if kind == "ddp":
        from ctsl_hpc.train.engines.ddp import DDPEngine

        return DDPEngine(model, settings)
    if kind == "deepspeed":
        from ctsl_hpc.train.engines.deepspeed import DeepSpeedEngine

        if deepspeed_config is None:
            raise ValueError("train.deepspeed_config: a DeepSpeed JSON file is required for engine=deepspeed")
        return DeepSpeedEngine(model, settings, deepspeed_config)
    raise ValueError(f"train.engine: unknown engine {kind!r} (one of {list(ENGINES)})")
