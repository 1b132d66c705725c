"""Scheduler backends behind one interface (:class:`~ctsl_hpc.launch.backends.base.Backend`).

Importing this package registers the built-in backends, ``local`` and ``slurm``.
"""

from ctsl_hpc.launch.backends import local, slurm
from ctsl_hpc.launch.backends.base import Backend, backend_class, backend_names, make_backend, register

__all__ = ["Backend", "backend_class", "backend_names", "local", "make_backend", "register", "slurm"]
