"""Locks that hold on shared storage and across hosts: the work directory's, and the short ones around
the job registry, the tracking journal and its replay.

Every lock is :class:`filelock.SoftFileLease` (filelock is already a dependency; its lease locks
are kept by the project that writes ``FileLock`` and run on NFS, where ``flock``/``fcntl`` locks are
not reliable). The holder writes a marker file with its host, pid and process start, and a
heartbeat thread touches it every third of the lease; a contender takes the lock over only once it
has watched the marker stay unchanged for a whole lease (``LEASE_S``), or at once when the holder
is a dead process of its own host. The lease is timed by observation: a contender compares the
marker's modification time (set by the file server at each heartbeat) with the one it saw before,
on its own monotonic clock, and never compares one host's clock with another's, so clock skew does
not matter at all. A takeover exchanges the marker atomically: of many contenders for a stale lock
exactly one wins. Release checks the marker is still its own before removing it. flufl.lock, the
long-standing alternative, expires a lock by comparing the file's mtime with the local clock, which
is what skew breaks.
"""

from __future__ import annotations

import logging
import os
import socket
import time
from pathlib import Path
from typing import Any

from filelock import SoftFileLease, Timeout

from ctsl_hpc.atomic_io import RecordError, atomic_write_json, read_json
from ctsl_hpc.processes import pid_alive

log = logging.getLogger(__name__)

LEASE_S = 20.0  # a lock whose heartbeat stopped this long ago may be taken over


class LeaseLock(SoftFileLease):
    """:class:`filelock.SoftFileLease` whose write errors (a full disk, a read-only one) name the lock file."""

    def acquire(self, *args: Any, **kwargs: Any) -> Any:
        try:
            return super().acquire(*args, **kwargs)
        except OSError as exc:
            if exc.filename or isinstance(exc, Timeout):
                raise
            raise OSError(exc.errno, exc.strerror, self.lock_file) from None


def lease_lock(path: str | os.PathLike[str], timeout: float = -1, lease_s: float = LEASE_S) -> LeaseLock:
    """A lease lock on ``path`` (reentrant within a thread); ``timeout`` < 0 waits as long as it takes."""
    return LeaseLock(str(path), lease_duration=lease_s, timeout=timeout)


class WorkdirLocked(RuntimeError):
    """Another process drives this work directory; the message names it."""


class WorkdirLock:
    """The exclusive lock of a work directory, held by the process that drives it.

    Beside the lease's marker, ``<lock>.holder`` names the holder for people: host, pid, command and
    start time. A live holder is refused: at once when it runs on this host, else after the contender
    watched its heartbeat for a lease. A holder whose lease ran out is taken over, with a warning that
    names it.
    """

    def __init__(self, path: Path, command: str, lease_s: float = LEASE_S):
        self.path, self.command, self.lease_s = Path(path), command, lease_s
        self.holder_file = self.path.with_name(self.path.name + ".holder")
        self._lease = lease_lock(self.path, timeout=lease_s * 1.25, lease_s=lease_s)
        self.took_over: dict | None = None  # the previous holder, when its lease had run out

    def holder(self) -> dict | None:
        """Who holds (or last held) the lock, as it wrote itself down."""
        if not self.holder_file.is_file():
            return None
        try:
            return read_json(self.holder_file, "delete it")
        except RecordError:
            return None

    def __enter__(self) -> WorkdirLock:
        before = self.holder() if self.path.exists() else None
        if before and before.get("host") == socket.gethostname() and pid_alive(int(before.get("pid", -1))):
            raise WorkdirLocked(self._in_use(before))
        try:
            self._lease.acquire()
        except Timeout:
            raise WorkdirLocked(self._in_use(self.holder() or {})) from None
        if before:
            log.warning("took over the lock of %s: its lease ran out (no heartbeat for %g s)", self._who(before),
                        self.lease_s)
        self.took_over = before
        atomic_write_json(self.holder_file, {"host": socket.gethostname(), "pid": os.getpid(), "command": self.command,
                                             "started": time.strftime("%Y-%m-%d %H:%M:%S")})
        return self

    @staticmethod
    def _who(holder: dict) -> str:
        if not holder:
            return "another process"
        return f"`{holder.get('command')}` (pid {holder.get('pid')} on {holder.get('host')}, since {holder.get('started')})"

    def _in_use(self, holder: dict) -> str:
        return (f"{self.path.parent} is in use by {self._who(holder)}: wait for it or stop it (its lock, {self.path}, "
                f"frees itself {self.lease_s:g} s after a holder on another host stops)")

    def __exit__(self, *_: object) -> None:
        mine = self.holder()
        if mine and mine.get("pid") == os.getpid() and mine.get("host") == socket.gethostname():
            self.holder_file.unlink(missing_ok=True)
        self._lease.release()
