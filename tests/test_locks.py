"""The work directory's lock across hosts: a holder on another host (a process in a UTS namespace of its
own, so its host name differs) whose lease ran out is taken over, a live one is refused, and many
takers of a stale lock give exactly one holder."""

from __future__ import annotations

import logging
import multiprocessing
import os
import shutil
import signal
import subprocess
import sys
from pathlib import Path

import pytest
from filelock import Timeout

from ctsl_hpc.locks import WorkdirLock, WorkdirLocked, lease_lock

LEASE_S = 0.5  # short leases keep the tests quick; every peer of a lock uses the same

_HOLDER = """
import sys, time
from ctsl_hpc.locks import WorkdirLock
with WorkdirLock(sys.argv[1], "sweep on login2", lease_s=float(sys.argv[2])):
    print("held", flush=True)
    time.sleep(600)
"""

needs_unshare = pytest.mark.skipif(os.geteuid() != 0 or shutil.which("unshare") is None,
                                   reason="a second host name needs root's unshare --uts")


def _hold_on_another_host(lock: Path) -> subprocess.Popen:
    """A process whose host name is login2 holding ``lock``: its heartbeat runs until it is killed."""
    holder = subprocess.Popen(
        ["unshare", "--uts", "sh", "-c", 'hostname login2 && exec "$0" -c "$1" "$2" "$3"', sys.executable, _HOLDER,
         str(lock), str(LEASE_S)], stdout=subprocess.PIPE, text=True, cwd=Path(__file__).resolve().parents[1])
    assert holder.stdout.readline() == "held\n"
    return holder


@needs_unshare
def test_a_lock_from_another_host_is_taken_over_once_its_lease_ran_out(tmp_path, caplog):
    lock = tmp_path / "LOCK"
    holder = _hold_on_another_host(lock)
    holder.send_signal(signal.SIGKILL)  # the login node went away: no heartbeat, no release
    holder.wait()
    with caplog.at_level(logging.WARNING, logger="ctsl_hpc.locks"), WorkdirLock(lock, "sweep", lease_s=LEASE_S) as mine:
        assert mine.took_over["host"] == "login2" and mine.holder()["pid"] == os.getpid()
    assert f"pid {holder.pid} on login2" in caplog.text and "lease ran out" in caplog.text
    assert not lock.exists() and not mine.holder_file.exists()


@needs_unshare
def test_a_live_lock_from_another_host_is_refused_and_left_alone(tmp_path):
    lock = tmp_path / "LOCK"
    holder = _hold_on_another_host(lock)
    try:
        marker = lock.read_text()
        refusal = rf"sweep on login2` \(pid {holder.pid} on login2"
        with pytest.raises(WorkdirLocked, match=refusal) as refused, WorkdirLock(lock, "sweep", lease_s=LEASE_S):
            pass
        assert str(lock) in str(refused.value)
        assert lock.read_text().splitlines()[:4] == marker.splitlines()[:4]  # still the holder's
        assert holder.poll() is None
    finally:
        holder.kill()
        holder.wait()


def test_release_removes_only_ones_own_lock(tmp_path):
    lock = tmp_path / "LOCK"
    first = WorkdirLock(lock, "sweep", lease_s=LEASE_S)
    first.__enter__()
    theirs = {"host": "login2", "pid": 1, "command": "sweep", "started": "then"}
    first.holder_file.write_text(str(theirs).replace("'", '"'))  # someone took it over meanwhile
    first.__exit__(None, None, None)
    assert first.holder_file.exists() and first.holder()["host"] == "login2"


def _take(lock: str, rounds: int, start, end, wins) -> None:
    """One taker: each round, one try at a stale lock, holding what it won until every taker has tried."""
    for round_ in range(rounds):
        start.wait()
        lease = lease_lock(lock, timeout=0, lease_s=60)
        try:
            lease.acquire()
        except Timeout:
            won = False
        else:
            won = True
            wins.put(round_)
        end.wait()  # every taker has tried
        if won:
            lease.release()
        end.wait()  # the lock is free again


def test_eight_takers_of_a_stale_lock_leave_exactly_one_holder_fifty_times(tmp_path):
    lock = tmp_path / "LOCK"
    dead = subprocess.Popen([sys.executable, "-c", "import sys, time\nfrom filelock import SoftFileLease\n"
                             "lease = SoftFileLease(sys.argv[1], lease_duration=60)\nlease.acquire()\nprint('held', flush=True)\n"
                             "time.sleep(600)", str(lock)], stdout=subprocess.PIPE, text=True)
    assert dead.stdout.readline() == "held\n"
    dead.kill()  # a dead holder of this host: its marker may be taken over at once
    dead.wait()
    stale = lock.read_bytes()
    takers, rounds = 8, 50
    context = multiprocessing.get_context("spawn")
    start, end, wins = context.Barrier(takers + 1), context.Barrier(takers + 1), context.Queue()
    processes = [context.Process(target=_take, args=(str(lock), rounds, start, end, wins)) for _ in range(takers)]
    for process in processes:
        process.start()
    for _ in range(rounds):
        lock.write_bytes(stale)
        for barrier in (start, end, end):
            barrier.wait(timeout=120)
    won = [wins.get(timeout=10) for _ in range(rounds)]
    for process in processes:
        process.join(timeout=60)
        assert process.exitcode == 0
    assert wins.empty() and sorted(won) == list(range(rounds))  # one winner a round
