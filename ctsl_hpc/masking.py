"""Secrets never leave the machine they were typed on: masked wherever a config or a command is shown.

A value is secret when its key's name says so (it holds password, passwd, token, secret, key or
credential), and the user-info part of any URI (``https://user:pass@host``) is secret wherever it
stands. :func:`mask` hides them in a config's values (MLflow params, the logged ``config.yaml``),
:func:`mask_text` in free text (setup lines, commands, run descriptions, printed scripts). The work
directory's own ``config.yaml`` keeps them, readable by its owner alone, for resume.

A config may name an environment variable instead of a value, ``${env:NAME}``: the form itself is
what is saved and shown, and the value is read where it is used, in the job (:func:`resolve_env`,
or the shell of the job script for ``slurm.env``, setup lines and container mounts).

Example:
    >>> mask({"tracking": {"uri": "https://me:hunter2@mlflow.example.org"}, "env": {"HF_TOKEN": "abc"}})
    {'tracking': {'uri': 'https://***@mlflow.example.org'}, 'env': {'HF_TOKEN': '***'}}
    >>> mask_text("export WANDB_API_KEY=abc123 && echo done")
    'export WANDB_API_KEY=*** && echo done'
"""

from __future__ import annotations

import os
import re
from typing import Any

MASK = "***"
SECRET_NAME = re.compile(r"password|passwd|token|secret|key|credential", re.IGNORECASE)
_USERINFO = re.compile(r"(?P<scheme>[A-Za-z][A-Za-z0-9+.-]*://)(?P<userinfo>[^/@\s'\"]+)@")
_ASSIGNMENT = re.compile(r"(?P<name>\b[A-Za-z_][A-Za-z0-9_.-]*)(?P<sep>=|:\s*)(?P<value>'[^']*'|\"[^\"]*\"|[^\s,;{}\[\]'\"]+)")
ENV_REFERENCE = re.compile(r"\$\{env:(?P<name>[A-Za-z_][A-Za-z0-9_]*)\}")


def is_secret_name(name: str) -> bool:
    """Whether a key or variable name says its value is secret (``NCCL_IB_HCA`` no, ``HF_TOKEN`` yes)."""
    return bool(SECRET_NAME.search(name))


def mask_text(text: str) -> str:
    """``text`` with every URI's user-info and every ``NAME=value`` (or ``NAME: value``) of a secret name
    masked; ``${env:NAME}`` references stay as they are (they hold no secret)."""

    def assignment(match: re.Match) -> str:
        if not is_secret_name(match["name"]) or ENV_REFERENCE.fullmatch(match["value"].strip("'\"")):
            return match[0]
        return f"{match['name']}{match['sep']}{MASK}"

    text = _USERINFO.sub(lambda m: f"{m['scheme']}{MASK}@", text)
    return _ASSIGNMENT.sub(assignment, text)


def mask(values: Any, name: str = "") -> Any:
    """A copy of nested ``values`` (mappings, lists, strings) with what :func:`mask_text` masks, and every
    non-empty value of a secret key name, replaced by ``***``."""
    if isinstance(values, dict):
        return {k: mask(v, str(k)) for k, v in values.items()}
    if isinstance(values, (list, tuple)):
        return type(values)(mask(v, name) for v in values)
    if isinstance(values, str):
        if values and is_secret_name(name) and not ENV_REFERENCE.fullmatch(values):
            return MASK
        return mask_text(values)
    return values


def resolve_env(text: str, key: str) -> str:
    """``text`` with each ``${env:NAME}`` replaced by the variable's value here (in the job); a variable that
    is not set is an error naming ``key``."""

    def value(match: re.Match) -> str:
        found = os.environ.get(match["name"])
        if found is None:
            raise KeyError(f"{key}: ${{env:{match['name']}}} names a variable this process does not have")
        return found

    return ENV_REFERENCE.sub(value, text)


def shell_form(text: str) -> str:
    """``text`` for a job script: each ``${env:NAME}`` as the shell's ``${NAME}``, expanded when the job runs."""
    return ENV_REFERENCE.sub(lambda m: "${" + m["name"] + "}", text)
