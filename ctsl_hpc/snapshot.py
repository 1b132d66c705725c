"""The package's own code as data: its content hash, and a frozen copy a long-lived sweep runs.

A sweep lives for days: jobs start, and restart after every preemption, long after ``sweep``
returned. :func:`snapshot` copies the package once per content hash into the work directory;
every job of the sweep puts that copy first on ``PYTHONPATH``, so a requeued student runs the
code its teacher ran even after the package on the login node was edited. The hash also tags
every MLflow run with the code that produced it.

Example:
    >>> len(package_hash())
    12
"""

from __future__ import annotations

import functools
import hashlib
import shutil
import tempfile
from pathlib import Path

import ctsl_hpc

PACKAGE = Path(ctsl_hpc.__file__).resolve().parent
_IGNORED = ("__pycache__", ".pyc")


def package_files(root: Path = PACKAGE) -> list[Path]:
    """The package's files (code, configs, weights), sorted, without byte-code caches."""
    return sorted(p for p in root.rglob("*") if p.is_file() and not any(part in str(p) for part in _IGNORED))


@functools.cache
def package_hash(root: Path = PACKAGE) -> str:
    """A 12-hex content hash of the package: its files' relative paths and bytes."""
    digest = hashlib.sha256()
    for path in package_files(root):
        digest.update(path.relative_to(root).as_posix().encode() + b"\0" + path.read_bytes() + b"\0")
    return digest.hexdigest()[:12]


def snapshot(folder: Path, root: Path = PACKAGE) -> Path:
    """``folder/<hash>``, holding a copy of the package (``.../ctsl_hpc``); made once per hash, atomically."""
    target = Path(folder) / package_hash(root)
    if not (target / root.name).is_dir():
        target.parent.mkdir(parents=True, exist_ok=True)
        staging = Path(tempfile.mkdtemp(dir=target.parent, prefix=f".{target.name}."))
        shutil.copytree(root, staging / root.name, ignore=shutil.ignore_patterns(*_IGNORED))
        try:
            staging.rename(target)
        except OSError:  # another sweep command made the same snapshot meanwhile
            shutil.rmtree(staging)
    return target


def running_from(folder: Path) -> str | None:
    """The snapshot (its hash) under ``folder`` that this process imports ``ctsl_hpc`` from, if any."""
    try:
        return PACKAGE.relative_to(Path(folder).resolve()).parts[0]
    except ValueError:
        return None
