"""The config files shipped inside the package (read through ``importlib.resources``), and telling
a config's name from a path.

``configs/`` in a checkout is a link to ``ctsl_hpc/configs``, so the same names work in a checkout,
from an installed wheel and from a job's frozen copy of the package.
"""

from __future__ import annotations

from importlib import resources
from pathlib import Path

from ctsl_hpc.config.schema import ConfigError

CONFIG_DIR = resources.files("ctsl_hpc") / "configs"  # shipped inside the package (its wheel included)
DEMO_CONFIG = CONFIG_DIR / "demo.yaml"
SWEEP_CONFIG = CONFIG_DIR / "sweep.yaml"  # what `sweep --tune` runs by default
ConfigFile = Path | resources.abc.Traversable


def shipped_file(name: str | Path, suffix: str = ".yaml", folder: str = "") -> ConfigFile:
    """A config file: ``name`` itself when that file exists, else one shipped with the package.

    An existing path (absolute, or relative to the current folder) always wins. Otherwise ``name``
    is looked up among the package's configs: a bare name (``paper``, ``zero2``) or a file name
    (``paper.yaml``), also in ``folder`` (``deepspeed``), and a repository path (``configs/paper.yaml``,
    ``configs/deepspeed/zero2.json``: what a checkout spells) without its ``configs/`` prefix.

    Example:
        >>> shipped_file("zero2", ".json", "deepspeed").name
        'zero2.json'
    """
    path = Path(name)
    if path.is_file():
        return path
    relative = path.relative_to("configs") if path.parts[:1] == ("configs",) else path
    if not relative.suffix:
        relative = relative.with_suffix(suffix)
    for candidate in (CONFIG_DIR.joinpath(*relative.parts), CONFIG_DIR.joinpath(folder, *relative.parts)):
        if candidate.is_file():
            return candidate
    shipped = sorted(p.name for p in CONFIG_DIR.joinpath(folder).iterdir() if p.name.endswith(suffix))
    raise ConfigError(f"config file {name} does not exist, nor is it one shipped with ctsl_hpc ({', '.join(shipped)})")
