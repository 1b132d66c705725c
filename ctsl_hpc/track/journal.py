"""The tracking journal of a work directory: run ids, the write-ahead spool and the metric ledger.

Everything a restart needs lives in ``<workdir>/tracking/``:

- ``runs.json``: the key -> MLflow run id map (atomic writes). A restarted process reopens the same
  runs; it never creates new ones.
- ``spool.jsonl``: a write-ahead journal. Every record (run creation, params, tags, metrics,
  artifact paths, run end) is appended here first and then sent in order; what reached the
  tracking store is cut off (``spool.offset``). Records the store refuses for good are moved to
  ``spool.rejected.jsonl``.
- ``logged/<key>.jsonl``: the (metric name, step) pairs already recorded for a run.
"""

from __future__ import annotations

import json
import logging
import os
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any
from urllib.parse import quote

from ctsl_hpc.atomic_io import atomic_write_json, owner_only, read_json, writing
from ctsl_hpc.locks import lease_lock
from ctsl_hpc.workdir import Workdir

_log = logging.getLogger(__name__)


class Journal:
    """The files under ``<workdir>/tracking``; callers hold :attr:`lock` around every method."""

    def __init__(self, workdir: Path) -> None:
        self.root = Workdir(workdir).root
        self.dir = Workdir(workdir).tracking
        with owner_only():  # the spool holds everything sent to the tracking server: its owner's alone
            (self.dir / "logged").mkdir(parents=True, exist_ok=True)
        self.lock = lease_lock(self.dir / "lock")  # right on shared storage and across hosts (ctsl_hpc.locks)
        self.runs_file = self.dir / "runs.json"
        self.spool = self.dir / "spool.jsonl"
        self.offset_file = self.dir / "spool.offset"
        self.rejected = self.dir / "spool.rejected.jsonl"

    # runs.json
    def load_runs(self) -> dict[str, Any]:
        if not self.runs_file.exists():
            return {"workdir_id": uuid.uuid4().hex, "runs": {}}
        return read_json(self.runs_file, "it maps this work directory's runs to MLflow run ids; restore it, or move "
                         "the tracking folder aside to log into new runs")

    def save_runs(self, runs: dict[str, Any]) -> None:
        atomic_write_json(self.runs_file, runs)

    # the journal
    def append(self, record: dict[str, Any]) -> None:
        line = json.dumps(record) + "\n"
        with writing(self.spool), open(self.spool, "ab+") as handle:
            handle.seek(0, os.SEEK_END)
            if handle.tell() > 0:
                handle.seek(-1, os.SEEK_END)
                if handle.read(1) != b"\n":  # a torn line from a crash: close it off
                    line = "\n" + line
            handle.write(line.encode())
            handle.flush()
            os.fsync(handle.fileno())

    def offset(self) -> int:
        try:
            return int(self.offset_file.read_text())
        except (FileNotFoundError, ValueError):
            return 0

    def set_offset(self, offset: int) -> None:
        atomic_write_json(self.offset_file, offset)

    def pending_records(self) -> Iterator[dict[str, Any]]:
        """The pending records that parse (a torn line is skipped here; replay rejects it)."""
        for _, line in self.pending():
            try:
                yield json.loads(line)
            except json.JSONDecodeError:
                continue

    def pending(self) -> Iterator[tuple[int, bytes]]:
        """Pending journal lines with the offset just past each."""
        if not self.spool.exists():
            return
        with open(self.spool, "rb") as handle:
            handle.seek(self.offset())
            while line := handle.readline():
                if not line.endswith(b"\n"):
                    return  # being written, or torn: left for later
                yield handle.tell(), line

    def compact(self) -> None:
        """Empty the journal once everything in it reached the store."""
        if self.spool.exists() and self.offset() >= self.spool.stat().st_size:
            self.set_offset(0)  # first: a crash in between replays (idempotently), never skips
            with open(self.spool, "wb"):
                pass

    def reject(self, line: bytes, reason: str) -> None:
        _log.warning("tracking: dropping a spooled record the store refuses (%s): %s", reason, line[:300])
        with open(self.rejected, "ab") as handle:
            handle.write(line.rstrip(b"\n") + b"\n")

    # the (metric, step) ledger
    def _ledger(self, key: str) -> Path:
        return self.dir / "logged" / f"{quote(key, safe='')}.jsonl"

    def logged_steps(self, key: str) -> set[tuple[str, int]]:
        seen: set[tuple[str, int]] = set()
        path = self._ledger(key)
        if path.exists():
            for line in path.read_text().splitlines():
                try:
                    name, step = json.loads(line)
                    seen.add((name, int(step)))
                except (ValueError, TypeError):
                    continue  # a torn last line
        for record in self.pending_records():  # journaled before a crash could reach the ledger
            if record.get("op") == "metrics" and record.get("key") == key:
                seen.update((name, int(step)) for name, _, _, step in record["metrics"])
        return seen

    def add_logged(self, key: str, pairs: list[tuple[str, int]]) -> None:
        with writing(self._ledger(key)), open(self._ledger(key), "a") as handle:
            handle.write("".join(json.dumps([name, step]) + "\n" for name, step in pairs))
            handle.flush()
            os.fsync(handle.fileno())
