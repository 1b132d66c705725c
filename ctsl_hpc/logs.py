"""Logging for every entry point (the CLI, Slurm jobs, the Ray Tune allocation): one format, quiet libraries."""

from __future__ import annotations

import logging
import os
import sys
from typing import TextIO

FORMAT = "%(asctime)s %(levelname)s %(name)s: %(message)s"
QUIET_LIBRARIES = ("urllib3", "matplotlib", "filelock", "alembic", "mlflow")


def setup_logging(verbose: bool = False, stream: TextIO | None = None) -> None:
    """INFO (DEBUG when ``verbose``) to ``stream`` (default stderr); chatty libraries at WARNING."""
    logging.basicConfig(
        level=logging.DEBUG if verbose else logging.INFO, stream=stream or sys.stderr, format=FORMAT, datefmt="%H:%M:%S"
    )
    for name in QUIET_LIBRARIES:
        logging.getLogger(name).setLevel(logging.WARNING)


def quiet_progress() -> bool:
    """No progress bars in CI or when stderr is not a terminal (a scheduler's log file): log lines instead."""
    return bool(os.environ.get("CI")) or not sys.stderr.isatty()
