"""Tags that say where a run ran and what ran it: package version, code hash, git commit, host, source,
command, and what the job's launcher adds.

Torch- and MLflow-free: launchers import it to hand their tags (the command line, Slurm ids) to the
runs a job opens, through ``$CTSL_RUN_TAGS`` (inherited by submitted jobs and Ray workers).
"""

from __future__ import annotations

import contextlib
import json
import os
import shlex
import socket
import subprocess
import sys
from collections.abc import Iterator, Mapping, Sequence
from pathlib import Path

import ctsl_hpc
from ctsl_hpc.masking import mask_text
from ctsl_hpc.snapshot import package_hash

RUN_TAGS_ENV = "CTSL_RUN_TAGS"  # JSON tags a launcher exports for every run of its job (and its Ray workers)
SOURCE_NAME, SOURCE_TYPE = "mlflow.source.name", "mlflow.source.type"
COMMAND_TAG = "ctsl.command"
_TAG_MAX_CHARS = 5000
_MODULE_PREFIX = "python -m "


def context_tags() -> dict[str, str]:
    """Package version, the content hash of the code running (:mod:`ctsl_hpc.snapshot`), git commit, host,
    source name and type, command line, and the tags the job's launcher exported in ``$CTSL_RUN_TAGS``
    (those win)."""
    tags = {"ctsl.version": ctsl_hpc.__version__, "ctsl.code_hash": package_hash(), "ctsl.host": socket.gethostname(),
            SOURCE_TYPE: "LOCAL"}
    tags.update(command_tags(this_program(), sys.argv[1:]))
    package_dir = Path(ctsl_hpc.__file__).resolve().parent
    try:
        commit = subprocess.run(
            ["git", "rev-parse", "HEAD"], cwd=package_dir, capture_output=True, text=True, timeout=5
        )
        if commit.returncode == 0:
            tags["mlflow.source.git.commit"] = commit.stdout.strip()
    except (OSError, subprocess.TimeoutExpired):
        pass
    tags.update(json.loads(os.environ.get(RUN_TAGS_ENV) or "{}"))
    return tags


def this_program() -> str:
    """How this process was started: ``python -m <module>``, or the script's name (``ctsl``, ``pytest``)."""
    spec = getattr(sys.modules.get("__main__"), "__spec__", None)
    if spec is not None and spec.name:
        return f"{_MODULE_PREFIX}{spec.name.removesuffix('.__main__')}"
    return "python -c" if sys.argv[0] == "-c" else Path(sys.argv[0]).name or "python"


def command_tags(program: str, args: Sequence[str]) -> dict[str, str]:
    """The source name (the program, without ``python -m``, and its command) and the whole command line."""
    name = " ".join([program.removeprefix(_MODULE_PREFIX), *args[:1]])
    line = mask_text(" ".join([program, shlex.join(args)]).strip())  # a password typed in an override stays here
    return {SOURCE_NAME: name, COMMAND_TAG: line[:_TAG_MAX_CHARS]}


def add_run_tags(tags: Mapping[str, str]) -> None:
    """Add ``tags`` (over those already exported) to every run this process and its jobs open."""
    current = json.loads(os.environ.get(RUN_TAGS_ENV) or "{}")
    os.environ[RUN_TAGS_ENV] = json.dumps({**current, **tags})


@contextlib.contextmanager
def exported_run_tags(tags: Mapping[str, str]) -> Iterator[None]:
    """:func:`add_run_tags` for the duration of a command (jobs it submits inherit them), then restored."""
    before = os.environ.get(RUN_TAGS_ENV)
    add_run_tags(tags)
    try:
        yield
    finally:
        if before is None:
            os.environ.pop(RUN_TAGS_ENV, None)
        else:
            os.environ[RUN_TAGS_ENV] = before
