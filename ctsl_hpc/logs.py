"""Logging for every entry point (the CLI, Slurm jobs, the Ray Tune allocation): one format, quiet libraries."""

from __future__ import annotations

import logging
import os
import sys
from typing import TextIO

from ctsl_hpc.masking import mask_text

FORMAT = "%(asctime)s %(levelname)s %(name)s: %(message)s"
QUIET_LIBRARIES = ("urllib3", "matplotlib", "filelock", "alembic", "mlflow")


class MaskSecrets(logging.Filter):
    """Every record's message with its secrets masked (:func:`ctsl_hpc.masking.mask_text`): a URI's password or
    a token in a command never reaches a log."""

    def filter(self, record: logging.LogRecord) -> bool:
        masked = mask_text(record.getMessage())
        if masked != record.getMessage():
            record.msg, record.args = masked, ()
        return True


def setup_logging(verbose: bool = False, stream: TextIO | None = None) -> None:
    """INFO (DEBUG when ``verbose``) to ``stream`` (default stderr), secrets masked; chatty libraries at WARNING."""
    logging.basicConfig(
        level=logging.DEBUG if verbose else logging.INFO, stream=stream or sys.stderr, format=FORMAT, datefmt="%H:%M:%S"
    )
    for handler in logging.getLogger().handlers:
        if not any(isinstance(f, MaskSecrets) for f in handler.filters):
            handler.addFilter(MaskSecrets())
    for name in QUIET_LIBRARIES:
        logging.getLogger(name).setLevel(logging.WARNING)


def quiet_progress() -> bool:
    """No progress bars in CI or when stderr is not a terminal (a scheduler's log file): log lines instead."""
    return bool(os.environ.get("CI")) or not sys.stderr.isatty()
