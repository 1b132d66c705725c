"""Open a work directory: it keeps the configuration it was created with (``config.yaml``).

Re-running a command on the same work directory continues the same experiment. A configuration
that changes the experiment (data, model, training, evaluation) is refused, naming the keys that
differ; one that only changes where and how it runs (``workdir``, ``slurm``, ``tracking``) is
accepted and saved, so requeued and resumed jobs pick it up. Torch-free: submitting stays fast.
"""

from __future__ import annotations

import os
from pathlib import Path

import yaml

from ctsl_hpc.config import ExperimentConfig, config_from_dict, flatten

CONFIG_FILE = "config.yaml"
RUNTIME_KEYS = ("workdir", "slurm", "tracking")


class ConfigMismatch(ValueError):
    """The work directory was created for another experiment."""


def experiment_differences(old: ExperimentConfig, new: ExperimentConfig) -> list[str]:
    """Dotted keys whose values differ, ignoring the runtime sections."""
    a, b = flatten(old.to_dict()), flatten(new.to_dict())
    changed = (k for k in a.keys() | b.keys() if a.get(k) != b.get(k))
    return sorted(k for k in changed if k.split(".")[0] not in RUNTIME_KEYS)


def open_workdir(cfg: ExperimentConfig, root: str | Path | None = None) -> Path:
    """Create or reopen the work directory of ``cfg`` and (re)write its ``config.yaml``."""
    path = Path(root or cfg.workdir).resolve()
    path.mkdir(parents=True, exist_ok=True)
    saved = path / CONFIG_FILE
    if saved.is_file():
        diff = experiment_differences(config_from_dict(yaml.safe_load(saved.read_text())), cfg)
        if diff:
            raise ConfigMismatch(
                f"{path} was created with another configuration (differs at: {', '.join(diff[:8])}); "
                "use a new --workdir or the same settings"
            )
    tmp = saved.with_suffix(f".{os.getpid()}.tmp")  # every rank of a multi-task job opens the work directory
    tmp.write_text(yaml.safe_dump(cfg.to_dict(), sort_keys=False))
    tmp.replace(saved)
    return path
