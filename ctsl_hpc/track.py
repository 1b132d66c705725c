"""MLflow tracking for sweeps: a run tree that survives restarts and a server that goes away.

One experiment per config name, one *parent* run per sweep (work directory) and one *child* run per
teacher, student variant or trial, each addressed by a stable key (``"teacher"``,
``"student/RM+TL"``, ``"trial/0003"``). Everything a restart needs lives in
``<workdir>/tracking/``:

- ``runs.json``: the key -> MLflow run id map (atomic writes). A restarted process reopens the same
  runs; it never creates new ones.
- ``spool.jsonl``: a write-ahead journal. Every record (run creation, params, tags, metrics,
  artifact paths, run end) is appended here first and then sent in order; what reached the tracking
  store is cut off. If the server is unreachable or answers 5xx, the records simply stay and are
  replayed at the next successful call, or by :func:`replay_spool`. Training never stops for
  tracking. Records the store refuses for good (4xx, a vanished artifact file) are moved to
  ``spool.rejected.jsonl`` with a warning.
- ``logged/<key>.jsonl``: the (metric name, step) pairs already recorded for a run.

**No-duplicate rule.** A metric value is recorded at most once per (run key, metric name, step): the
first value wins. A restarted job that logs an epoch it had already logged before the restart
(e.g. it resumed from an older checkpoint) is skipped for that (name, step). Replayed records carry
the timestamp of their original call, so sending a record twice (a crash between the send and the
journal cut) stores one row: the SQL store ignores an identical (key, value, timestamp, step).
Run creation is made idempotent with the ``ctsl.run_key`` and ``ctsl.workdir_id`` tags.

**HTTP behaviour.** Unless already set in the environment, the tracker sets
``MLFLOW_HTTP_REQUEST_MAX_RETRIES=1``, ``MLFLOW_HTTP_REQUEST_BACKOFF_FACTOR=1``,
``MLFLOW_HTTP_REQUEST_BACKOFF_JITTER=0`` and ``MLFLOW_HTTP_REQUEST_TIMEOUT=10`` so an unreachable
server is noticed in about a second instead of minutes (MLflow's defaults: 7 retries, 120 s).
After a failure the tracker waits ``retry_interval_s`` before trying the server again.

Example:
    >>> tracker = Tracker("runs/demo", None, "demo")            # doctest: +SKIP
    >>> tracker.parent(config=cfg.to_dict())                    # doctest: +SKIP
    >>> with tracker.child("teacher") as run:                   # doctest: +SKIP
    ...     run.log_metrics({"loss/ccc": 0.4}, step=1)
"""

from __future__ import annotations

import contextlib
import hashlib
import importlib.util
import json
import logging
import os
import socket
import subprocess
import sys
import tempfile
import time
import urllib.error
import urllib.request
import uuid
from collections.abc import Iterator, Mapping
from pathlib import Path
from typing import Any
from urllib.parse import quote

import requests
from filelock import FileLock
from mlflow import MlflowClient
from mlflow.entities import Metric, Param, RunTag
from mlflow.exceptions import MlflowException

import ctsl_hpc
from ctsl_hpc.config import flatten as flatten_values
from ctsl_hpc.processes import stop_process_group

_log = logging.getLogger(__name__)

HTTP_DEFAULTS = {
    "MLFLOW_HTTP_REQUEST_MAX_RETRIES": "1",
    "MLFLOW_HTTP_REQUEST_BACKOFF_FACTOR": "1",
    "MLFLOW_HTTP_REQUEST_BACKOFF_JITTER": "0",
    "MLFLOW_HTTP_REQUEST_TIMEOUT": "10",
}
PARENT_KEY = "parent"
RUN_KEY_TAG = "ctsl.run_key"
WORKDIR_TAG = "ctsl.workdir_id"
_PARAMS_PER_BATCH = 100
_METRICS_PER_BATCH = 1000
_PARAM_MAX_CHARS = 6000
_SLURM_TAGS = {
    "SLURM_JOB_ID": "slurm.job_id",
    "SLURM_ARRAY_JOB_ID": "slurm.array_job_id",
    "SLURM_ARRAY_TASK_ID": "slurm.array_task_id",
    "SLURM_CLUSTER_NAME": "slurm.cluster",
    "SLURM_JOB_NODELIST": "slurm.nodelist",
}


# --------------------------------------------------------------------------------------- helpers


def resolve_uri(workdir: str | Path, uri: str | None = None) -> str:
    """The tracking URI: ``uri`` if given, else ``$MLFLOW_TRACKING_URI``, else the work dir's SQLite."""
    if uri:
        return uri
    if os.environ.get("MLFLOW_TRACKING_URI"):
        return os.environ["MLFLOW_TRACKING_URI"]
    return f"sqlite:///{Path(workdir).resolve() / 'mlflow.db'}"


def flatten(values: Mapping[str, Any], prefix: str = "") -> dict[str, str]:
    """Nested mappings to dotted keys with string values, e.g. ``{"a": {"b": 1}} -> {"a.b": "1"}``."""
    return {name: str(value)[:_PARAM_MAX_CHARS] for name, value in flatten_values(values, prefix).items()}


def config_hash(config: Mapping[str, Any]) -> str:
    """The same 12-hex digest as ``ExperimentConfig.digest()`` for ``config = cfg.to_dict()``."""
    return hashlib.sha256(json.dumps(config, sort_keys=True).encode()).hexdigest()[:12]


def context_tags() -> dict[str, str]:
    """Tags describing where this process runs: package version, git commit, host, Slurm ids."""
    tags = {"ctsl.version": ctsl_hpc.__version__, "ctsl.host": socket.gethostname()}
    package_dir = Path(ctsl_hpc.__file__).resolve().parent
    try:
        commit = subprocess.run(
            ["git", "rev-parse", "HEAD"], cwd=package_dir, capture_output=True, text=True, timeout=5
        )
        if commit.returncode == 0:
            tags["mlflow.source.git.commit"] = commit.stdout.strip()
    except (OSError, subprocess.TimeoutExpired):
        pass
    for env, tag in _SLURM_TAGS.items():
        if os.environ.get(env):
            tags[tag] = os.environ[env]
    return tags


def _now_ms() -> int:
    return int(time.time() * 1000)


def _atomic_write_json(path: Path, data: Any) -> None:
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.")
    with os.fdopen(fd, "w") as handle:
        json.dump(data, handle, indent=1, sort_keys=True)
        handle.flush()
        os.fsync(handle.fileno())
    os.replace(tmp, path)


def _is_transient(exc: BaseException) -> bool:
    """True for failures that may heal: no connection, timeouts, 5xx, a locked database."""
    if isinstance(exc, MlflowException):
        return exc.get_http_status_code() >= 500
    if isinstance(exc, (requests.RequestException, ConnectionError, TimeoutError)):
        return True
    return type(exc).__name__ == "OperationalError"  # sqlalchemy: database locked / unreachable


class _Rejected(Exception):
    """A spooled record the tracking store will never accept."""


# ------------------------------------------------------------------------------- on-disk state


class _State:
    """The files under ``<workdir>/tracking``; callers hold :attr:`lock` around every method."""

    def __init__(self, workdir: Path) -> None:
        self.dir = workdir / "tracking"
        (self.dir / "logged").mkdir(parents=True, exist_ok=True)
        self.lock = FileLock(str(self.dir / "lock"))
        self.runs_file = self.dir / "runs.json"
        self.spool = self.dir / "spool.jsonl"
        self.offset_file = self.dir / "spool.offset"
        self.rejected = self.dir / "spool.rejected.jsonl"

    # runs.json
    def load_runs(self) -> dict[str, Any]:
        if not self.runs_file.exists():
            return {"workdir_id": uuid.uuid4().hex, "runs": {}}
        try:
            return json.loads(self.runs_file.read_text())
        except json.JSONDecodeError as exc:
            raise ValueError(f"{self.runs_file} is not valid JSON: {exc}") from exc

    def save_runs(self, runs: dict[str, Any]) -> None:
        _atomic_write_json(self.runs_file, runs)

    # the journal
    def append(self, record: dict[str, Any]) -> None:
        line = json.dumps(record) + "\n"
        with open(self.spool, "ab+") as handle:
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
        _atomic_write_json(self.offset_file, offset)

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
        with open(self._ledger(key), "a") as handle:
            handle.write("".join(json.dumps([name, step]) + "\n" for name, step in pairs))
            handle.flush()
            os.fsync(handle.fileno())


# ------------------------------------------------------------------------------------ replay


class _Replayer:
    """Sends journal records to the tracking store, creating runs (idempotently) as needed."""

    def __init__(self, state: _State, uri: str) -> None:
        self.state = state
        self.uri = uri
        self.client = MlflowClient(uri)
        self._experiments: dict[str, str] = {}

    def flush(self) -> bool:
        """Send every pending record in order. True when the journal is empty afterwards."""
        for offset, line in self.state.pending():
            try:
                self._apply(json.loads(line))
            except (_Rejected, json.JSONDecodeError, KeyError) as exc:
                self.state.reject(line, str(exc))
            except Exception as exc:
                if not _is_transient(exc):
                    self.state.reject(line, f"{type(exc).__name__}: {exc}")
                else:
                    _log.warning("tracking store %s unavailable, spooling: %s", self.uri, exc)
                    return False
            self.state.set_offset(offset)
        self.state.compact()
        return True

    def _run_id(self, key: str) -> str:
        run_id = self.state.load_runs()["runs"].get(key)
        if run_id is None:
            raise _Rejected(f"no run was ever created for key {key!r}")
        return run_id

    def _apply(self, rec: dict[str, Any]) -> None:
        op = rec["op"]
        if op == "create":
            self._create(rec)
            return
        run_id = self._run_id(rec["key"])
        if op == "reopen":
            self.client.update_run(run_id, status="RUNNING")
        elif op == "params":
            params = [Param(k, v) for k, v in rec["params"].items()]
            for i in range(0, len(params), _PARAMS_PER_BATCH):
                self.client.log_batch(run_id, params=params[i : i + _PARAMS_PER_BATCH], synchronous=True)
        elif op == "tags":
            tags = [RunTag(k, v) for k, v in rec["tags"].items()]
            self.client.log_batch(run_id, tags=tags, synchronous=True)
        elif op == "metrics":
            metrics = [Metric(name, value, ts, step) for name, value, ts, step in rec["metrics"]]
            for i in range(0, len(metrics), _METRICS_PER_BATCH):
                self.client.log_batch(run_id, metrics=metrics[i : i + _METRICS_PER_BATCH], synchronous=True)
        elif op == "artifact":
            path = Path(rec["path"])
            if not path.exists():
                raise _Rejected(f"artifact {path} no longer exists")
            if path.is_dir():
                self.client.log_artifacts(run_id, str(path), rec.get("artifact_path"))
            else:
                self.client.log_artifact(run_id, str(path), rec.get("artifact_path"))
        elif op == "finish":
            self.client.set_terminated(run_id, rec["status"], end_time=rec["ts"])
        else:
            raise _Rejected(f"unknown record op {op!r}")

    def _experiment_id(self, name: str, artifact_location: str | None) -> str:
        if name not in self._experiments:
            found = self.client.get_experiment_by_name(name)
            if found is None:
                try:
                    self._experiments[name] = self.client.create_experiment(name, artifact_location)
                except MlflowException as exc:
                    if exc.error_code != "RESOURCE_ALREADY_EXISTS":  # another process won the race
                        raise
                    self._experiments[name] = self.client.get_experiment_by_name(name).experiment_id
            else:
                self._experiments[name] = found.experiment_id
        return self._experiments[name]

    def _create(self, rec: dict[str, Any]) -> None:
        key = rec["key"]
        runs = self.state.load_runs()
        if key in runs["runs"]:
            return
        experiment_id = self._experiment_id(rec["experiment"], rec.get("artifact_location"))
        workdir_id = runs["workdir_id"]
        found = self.client.search_runs(
            [experiment_id],
            filter_string=(
                f"tags.`{RUN_KEY_TAG}` = '{key.replace(chr(39), '')}' "
                f"and tags.`{WORKDIR_TAG}` = '{workdir_id}'"
            ),
            max_results=1,
        )
        if found:
            run_id = found[0].info.run_id
        else:
            tags = dict(rec["tags"], **{RUN_KEY_TAG: key, WORKDIR_TAG: workdir_id})
            if rec.get("parent"):
                tags["mlflow.parentRunId"] = self._run_id(rec["parent"])
            run = self.client.create_run(experiment_id, start_time=rec["ts"], tags=tags, run_name=rec["name"])
            run_id = run.info.run_id
        runs["runs"][key] = run_id
        self.state.save_runs(runs)


def replay_spool(workdir: str | Path, uri: str | None = None) -> int:
    """Send what ``<workdir>/tracking/spool.jsonl`` still holds; return the records left (0 = all sent).

    ``uri`` defaults as in :func:`resolve_uri`. Safe to call while jobs are logging: it takes the
    work directory's tracking lock.
    """
    _http_defaults()
    workdir = Path(workdir)
    state = _State(workdir)
    uri = resolve_uri(workdir, uri)
    with state.lock, _schema_lock(uri):
        _Replayer(state, uri).flush()
        return sum(1 for _ in state.pending())


def _schema_lock(uri: str) -> FileLock | contextlib.nullcontext:
    """A lock beside a SQLite database file (a no-op for other stores)."""
    if uri.startswith("sqlite:///"):
        db = Path(uri[len("sqlite:///") :].split("?")[0])
        db.parent.mkdir(parents=True, exist_ok=True)
        return FileLock(f"{db}.lock")
    return contextlib.nullcontext()


def _http_defaults() -> None:
    for name, value in HTTP_DEFAULTS.items():
        os.environ.setdefault(name, value)


# ---------------------------------------------------------------------------------- the tracker


class Tracker:
    """Opens (or reopens) a sweep's run tree in ``workdir`` on the tracking store at ``uri``.

    Args:
        workdir: the sweep's work directory (``tracking/`` is created inside).
        uri: tracking URI; ``None`` -> ``$MLFLOW_TRACKING_URI`` or ``sqlite:///<workdir>/mlflow.db``.
        experiment: the MLflow experiment name (one per config name).
        system_metrics: log CPU/GPU/memory as ``system/*`` metrics in child runs; ``None`` -> on when
            psutil is installed unless ``MLFLOW_ENABLE_SYSTEM_METRICS_LOGGING=false``.
        retry_interval_s: after a failed call, how long to only spool before trying the server again.
    """

    def __init__(
        self,
        workdir: str | Path,
        uri: str | None = None,
        experiment: str = "ctsl",
        *,
        system_metrics: bool | None = None,
        retry_interval_s: float = 30.0,
    ) -> None:
        _http_defaults()
        self.workdir = Path(workdir).resolve()
        self.workdir.mkdir(parents=True, exist_ok=True)
        self.uri = resolve_uri(self.workdir, uri)
        self.experiment = experiment
        self.retry_interval_s = retry_interval_s
        if system_metrics is None:
            disabled = os.environ.get("MLFLOW_ENABLE_SYSTEM_METRICS_LOGGING", "").lower() in ("false", "0")
            system_metrics = not disabled
        self.system_metrics = system_metrics and importlib.util.find_spec("psutil") is not None
        self._state = _State(self.workdir)
        self._failed_at: float | None = None
        self._artifact_location = None
        if self.uri.startswith("sqlite:") or "://" not in self.uri:
            self._artifact_location = (self.workdir / "mlartifacts").as_uri()
        with self._state.lock:
            runs = self._state.load_runs()
            if not self._state.runs_file.exists():
                self._state.save_runs(runs)
            # MlflowClient opens the store at once; for SQLite that creates/migrates the schema,
            # which races between processes: hence under a lock next to the database file.
            with _schema_lock(self.uri):
                self._replayer = _Replayer(self._state, self.uri)
        self.flush()

    # -- the run tree
    def parent(
        self,
        tags: Mapping[str, str] | None = None,
        config: Mapping[str, Any] | None = None,
        name: str | None = None,
    ) -> Run:
        """Open the sweep's parent run; ``config`` (nested) is logged flattened and hashed."""
        all_tags = dict(context_tags())
        if config is not None:
            all_tags["ctsl.config_hash"] = config_hash(config)
        all_tags.update(tags or {})
        run = self._open(PARENT_KEY, None, name or f"sweep {self.workdir.name}", all_tags)
        if config is not None:
            run.log_params(config)
        return run

    def child(self, key: str, tags: Mapping[str, str] | None = None, name: str | None = None) -> Run:
        """Open the child run ``key`` (``"teacher"``, ``"student/RM+TL"``, ``"trial/0003"``)."""
        if not key or key == PARENT_KEY:
            raise ValueError(f"child run key {key!r} is empty or reserved")
        if not self._known(PARENT_KEY):
            raise RuntimeError(f"open the parent run before child {key!r} (Tracker.parent())")
        all_tags = dict(context_tags(), **(tags or {}))
        return self._open(key, PARENT_KEY, name or key, all_tags)

    def run_ids(self) -> dict[str, str]:
        """Key -> run id of every run created so far (runs still spooled are absent)."""
        with self._state.lock:
            return dict(self._state.load_runs()["runs"])

    def pending(self) -> int:
        """How many records wait in the spool."""
        with self._state.lock:
            return sum(1 for _ in self._state.pending())

    def flush(self, force: bool = False) -> bool:
        """Send the spool now (unless the server failed less than ``retry_interval_s`` ago and not
        ``force``). True when nothing is left."""
        if not force and self._failed_at is not None:
            if time.monotonic() - self._failed_at < self.retry_interval_s:
                return False
        with self._state.lock:
            ok = self._replayer.flush()
        self._failed_at = None if ok else time.monotonic()
        return ok

    # -- internals used by Run
    def _known(self, key: str) -> bool:
        with self._state.lock:
            if key in self._state.load_runs()["runs"]:
                return True
            return any(
                rec.get("op") == "create" and rec.get("key") == key for rec in self._state.pending_records()
            )

    def _open(self, key: str, parent: str | None, name: str, tags: dict[str, str]) -> Run:
        existing = self._known(key)
        record = (
            {"op": "reopen", "key": key}
            if existing
            else {
                "op": "create",
                "key": key,
                "parent": parent,
                "name": name,
                "experiment": self.experiment,
                "artifact_location": self._artifact_location,
                "tags": tags,
                "ts": _now_ms(),
            }
        )
        self._record(record)
        run = Run(self, key)
        if existing:
            run.set_tags(tags)
        return run

    def _record(self, record: dict[str, Any]) -> None:
        with self._state.lock:
            self._state.append(record)
        self.flush()


class Run:
    """A handle on one run of the tree; implements the core's ``MetricsSink`` protocol.

    Every call journals first and sends afterwards, so none of them raises for tracking-store
    trouble. Usable as a context manager: FINISHED on normal exit, FAILED on an exception, KILLED on
    KeyboardInterrupt/SystemExit.
    """

    def __init__(self, tracker: Tracker, key: str) -> None:
        self.tracker = tracker
        self.key = key
        with tracker._state.lock:
            self._seen = tracker._state.logged_steps(key)
        self._monitor: Any = None
        self._finished = False
        self._start_monitor()

    @property
    def run_id(self) -> str | None:
        """The MLflow run id, or None while its creation waits in the spool."""
        return self.tracker.run_ids().get(self.key)

    def log_metrics(self, metrics: Mapping[str, float], step: int) -> None:
        """Log ``metrics`` at ``step`` (the epoch); a (name, step) logged before is skipped."""
        step = int(step)
        values = []
        for name, value in metrics.items():
            try:
                values.append((name, float(value)))
            except (TypeError, ValueError) as exc:
                raise TypeError(f"metric {name!r} of run {self.key!r}: {value!r} is not a number") from exc
        ts = _now_ms()
        state = self.tracker._state
        with state.lock:
            fresh = [(name, value) for name, value in values if (name, step) not in self._seen]
            if not fresh:
                return
            state.append({"op": "metrics", "key": self.key, "metrics": [[n, v, ts, step] for n, v in fresh]})
            pairs = [(name, step) for name, _ in fresh]
            state.add_logged(self.key, pairs)
            self._seen.update(pairs)
        self._after_send(self.tracker.flush())

    def log_params(self, params: Mapping[str, Any]) -> None:
        """Log params; nested mappings are flattened to dotted keys."""
        if params:
            self._send({"op": "params", "key": self.key, "params": flatten(params)})

    def set_tags(self, tags: Mapping[str, Any]) -> None:
        """Set (or overwrite) run tags."""
        if tags:
            self._send({"op": "tags", "key": self.key, "tags": {k: str(v) for k, v in tags.items()}})

    def log_artifact(self, path: str | Path, artifact_path: str | None = None) -> None:
        """Upload a file (or directory) under ``artifact_path``; it must still exist at replay."""
        path = Path(path).resolve()
        if not path.exists():
            raise FileNotFoundError(f"artifact {path} does not exist")
        self._send({"op": "artifact", "key": self.key, "path": str(path), "artifact_path": artifact_path})

    def log_artifacts(self, directory: str | Path, artifact_path: str | None = None) -> None:
        """Upload the contents of ``directory`` under ``artifact_path``."""
        if not Path(directory).is_dir():
            raise NotADirectoryError(f"artifact directory {directory} does not exist")
        self.log_artifact(directory, artifact_path)

    def finish(self, status: str = "FINISHED") -> None:
        """End the run with ``status`` (FINISHED, FAILED or KILLED)."""
        if status not in ("FINISHED", "FAILED", "KILLED"):
            raise ValueError(f"run status {status!r} is not FINISHED, FAILED or KILLED")
        self._finished = True
        if self._monitor is not None:
            self._monitor.finish()
            self._monitor = None
        self._send({"op": "finish", "key": self.key, "status": status, "ts": _now_ms()})

    def __enter__(self) -> Run:
        return self

    def __exit__(self, exc_type: type[BaseException] | None, *_: Any) -> None:
        if exc_type is None:
            self.finish("FINISHED")
        elif issubclass(exc_type, (KeyboardInterrupt, SystemExit)):
            self.finish("KILLED")
        else:
            self.finish("FAILED")

    def _send(self, record: dict[str, Any]) -> None:
        with self.tracker._state.lock:
            self.tracker._state.append(record)
        self._after_send(self.tracker.flush())

    def _after_send(self, flushed: bool) -> None:
        if flushed and self._monitor is None:
            self._start_monitor()

    def _start_monitor(self) -> None:
        if not self.tracker.system_metrics or self.key == PARENT_KEY or self._monitor or self._finished:
            return
        run_id = self.run_id
        if run_id is None:
            return
        from mlflow.system_metrics.system_metrics_monitor import SystemMetricsMonitor

        try:
            self._monitor = SystemMetricsMonitor(run_id, resume_logging=True, tracking_uri=self.tracker.uri)
            self._monitor.start()
        except Exception as exc:  # system metrics are best effort
            _log.warning("system metrics for run %s not started: %s", self.key, exc)
            self._monitor = None


# ---------------------------------------------------------------------------------- the server


def serve(
    backend_store_uri: str,
    artifact_root: str | Path,
    host: str = "127.0.0.1",
    port: int = 5000,
    *,
    allowed_hosts: list[str] | None = None,
    log_file: str | Path | None = None,
) -> subprocess.Popen:
    """Start ``mlflow server`` (one worker, job execution off) in its own process group.

    ``backend_store_uri``: a database URI (``sqlite:////local/disk/mlflow.db``, ``postgresql://``,
    ``mysql://``); ``artifact_root``: a folder on shared storage (or any artifact URI), served through
    the server. When ``host`` is not loopback, this node's names are allowed as Host headers besides
    MLflow's defaults (localhost and private IPs), so jobs on other nodes can use
    ``http://<node>:<port>``. Stop it with :func:`stop_server`.
    """
    if "://" not in str(artifact_root):
        Path(artifact_root).mkdir(parents=True, exist_ok=True)
        artifact_root = Path(artifact_root).resolve()
    cmd = [
        sys.executable, "-m", "mlflow", "server",
        "--backend-store-uri", backend_store_uri,
        "--artifacts-destination", str(artifact_root),
        "--host", host, "--port", str(port), "--workers", "1",
    ]  # fmt: skip
    if allowed_hosts is None and host not in ("127.0.0.1", "localhost", "::1"):
        from mlflow.server.security_utils import get_default_allowed_hosts

        names = {socket.gethostname(), socket.getfqdn()}
        allowed_hosts = get_default_allowed_hosts() + sorted(f"{n}{p}" for n in names for p in ("", ":*"))
    if allowed_hosts:
        cmd += ["--allowed-hosts", ",".join(allowed_hosts)]
    env = dict(os.environ, MLFLOW_SERVER_ENABLE_JOB_EXECUTION="false")
    out = open(log_file, "ab") if log_file else subprocess.DEVNULL
    try:
        return subprocess.Popen(cmd, env=env, stdout=out, stderr=subprocess.STDOUT, start_new_session=True)
    finally:
        if log_file:
            out.close()


def server_url(host: str, port: int) -> str:
    """The URL clients use for a server bound to ``host`` (``0.0.0.0`` -> this node's name)."""
    name = socket.gethostname() if host in ("0.0.0.0", "::") else host
    return f"http://{name}:{port}"


def wait_until_healthy(url: str, timeout_s: float = 60.0, proc: subprocess.Popen | None = None) -> None:
    """Poll ``<url>/health`` until it answers OK; raise if ``proc`` exits or ``timeout_s`` passes."""
    deadline = time.monotonic() + timeout_s
    while True:
        if proc is not None and proc.poll() is not None:
            raise RuntimeError(f"mlflow server exited with code {proc.returncode} before {url} answered")
        try:
            with urllib.request.urlopen(f"{url}/health", timeout=2) as response:
                if response.status == 200:
                    return
        except (urllib.error.URLError, OSError):
            pass
        if time.monotonic() > deadline:
            raise TimeoutError(f"mlflow server at {url} not healthy after {timeout_s:.0f} s")
        time.sleep(0.2)  # polling interval, not synchronisation


def stop_server(proc: subprocess.Popen, timeout_s: float = 20.0) -> None:
    """Stop a server started by :func:`serve` (its whole process group)."""
    stop_process_group(proc, timeout_s)


def free_port(host: str = "127.0.0.1") -> int:
    """A TCP port nobody listens on right now."""
    with socket.socket() as sock:
        sock.bind((host, 0))
        return sock.getsockname()[1]


def run_server(
    backend_store_uri: str, artifact_root: str | Path, host: str = "0.0.0.0", port: int = 5000
) -> int:
    """Start :func:`serve`, print its URL once healthy, and block until it exits (Ctrl-C stops it)."""
    proc = serve(backend_store_uri, artifact_root, host, port)
    url = server_url(host, port)
    try:
        local = f"http://127.0.0.1:{port}" if host in ("0.0.0.0", "::") else url
        wait_until_healthy(local, proc=proc)
        print(f"MLflow tracking server: {url}  (export MLFLOW_TRACKING_URI={url})", flush=True)
        return proc.wait()
    except KeyboardInterrupt:
        return 0
    finally:
        stop_server(proc)
