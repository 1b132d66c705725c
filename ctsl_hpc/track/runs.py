"""The MLflow run tree of a sweep: a parent run per work directory, a child run per stage or trial.

One experiment per config name, one *parent* run per sweep (work directory) and one *child* run per
teacher, student variant or trial, each addressed by a stable key (``"teacher"``,
``"student/RM+TL"``, ``"trial/0003"``). Every call is journaled first (:mod:`ctsl_hpc.track.journal`)
and sent afterwards (:mod:`ctsl_hpc.track.replay`), so training never stops for tracking.

**No-duplicate rule.** A metric value is recorded at most once per (run key, metric name, step): the
first value wins. A restarted job that logs an epoch it had already logged before the restart
(e.g. it resumed from an older checkpoint) is skipped for that (name, step).

**A server that is down, slow or hung never stalls training for long.** Unless already set in the
environment, a request is tried once with a 3 s timeout (``MLFLOW_HTTP_REQUEST_MAX_RETRIES=0``,
``MLFLOW_HTTP_REQUEST_TIMEOUT=3``; MLflow's defaults are 7 retries of 120 s). After a failed send
the tracker only spools for ``retry_interval_s`` (30 s), then twice as long after each further
failure, up to 10 minutes: a hung server costs training at most 3 s per 30 s at first and then
3 s per 10 minutes; everything waits in the spool and is sent once the server answers again.

Example:
    >>> tracker = Tracker("runs/demo", None, "demo")            # doctest: +SKIP
    >>> tracker.parent(config=cfg)                              # doctest: +SKIP
    >>> with tracker.child("teacher") as run:                   # doctest: +SKIP
    ...     run.log_metrics({"loss/ccc": 0.4}, step=1)
"""

from __future__ import annotations

import importlib.util
import logging
import os
import time
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from ctsl_hpc.config import ExperimentConfig
from ctsl_hpc.config import flatten as flatten_values
from ctsl_hpc.masking import mask, mask_text
from ctsl_hpc.track.journal import Journal
from ctsl_hpc.track.registry import EPOCH_TAG
from ctsl_hpc.track.replay import PARENT_KEY, _http_defaults, _Replayer, _schema_lock, resolve_uri
from ctsl_hpc.track.tags import context_tags
from ctsl_hpc.workdir import Workdir

_log = logging.getLogger(__name__)

MAX_RETRY_INTERVAL_S = 600.0  # the longest pause between two tries of an unresponsive server
_PARAM_MAX_CHARS = 6000
NOTE_TAG = "mlflow.note.content"  # a run's description in the MLflow UI
_NOTE_MAX_CHARS, _CUT = 8000, "\n\n… (cut: the whole report is in the run's artifacts)\n"


def flatten(values: Mapping[str, Any], prefix: str = "") -> dict[str, str]:
    """Nested mappings to dotted keys with string values, e.g. ``{"a": {"b": 1}} -> {"a.b": "1"}``."""
    return {name: str(value)[:_PARAM_MAX_CHARS] for name, value in flatten_values(values, prefix).items()}


def _now_ms() -> int:
    return int(time.time() * 1000)


def open_tracker(workdir: str | Path, cfg: ExperimentConfig, system_metrics: bool | None = None) -> Tracker | None:
    """The work directory's run tree on ``cfg.tracking``'s store, or None when tracking is off."""
    if not cfg.tracking.enabled:
        return None
    return Tracker(workdir, cfg.tracking.uri, cfg.tracking.experiment or cfg.name, system_metrics=system_metrics)


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
        self._state = Journal(self.workdir)
        self._failed_at: float | None = None
        self._failures = 0
        self._artifact_location = None
        if self.uri.startswith("sqlite:") or "://" not in self.uri:
            self._artifact_location = Workdir(self.workdir).mlartifacts.as_uri()
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
        config: ExperimentConfig | None = None,
        name: str | None = None,
    ) -> Run:
        """Open the sweep's parent run; ``config`` is logged as flattened params and its digest as a tag."""
        all_tags = dict(context_tags())
        if config is not None:
            all_tags["ctsl.config_hash"] = config.digest()
        all_tags.update(tags or {})
        run = self._open(PARENT_KEY, None, name or f"sweep {self.workdir.name}", all_tags)
        if config is not None:
            run.log_params(config.to_dict())
        return run

    def child(
        self, key: str, tags: Mapping[str, str] | None = None, name: str | None = None, retag: bool = True
    ) -> Run:
        """Open the child run ``key`` (``"teacher"``, ``"student/RM+TL"``, ``"trial/0003"``).

        A run that exists is reopened; ``retag=False`` keeps its tags (where it ran, its code) as they
        are, for a job that only adds results to it (the evaluation)."""
        if not key or key == PARENT_KEY:
            raise ValueError(f"child run key {key!r} is empty or reserved")
        if not self._known(PARENT_KEY):
            raise RuntimeError(f"open the parent run before child {key!r} (Tracker.parent())")
        all_tags = dict(context_tags(), **(tags or {}))
        return self._open(key, PARENT_KEY, name or key, all_tags, retag)

    def run(self, key: str) -> Run:
        """A handle on the existing run ``key`` that leaves its status alone (e.g. to rewrite its description)."""
        if not self._known(key):
            raise KeyError(f"no run {key!r} in {self.workdir}")
        return Run(self, key)

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
            pause = min(self.retry_interval_s * 2 ** (self._failures - 1), MAX_RETRY_INTERVAL_S)
            if time.monotonic() - self._failed_at < pause:
                return False
        with self._state.lock:
            ok = self._replayer.flush()
        self._failed_at = None if ok else time.monotonic()
        self._failures = 0 if ok else self._failures + 1
        return ok

    # -- internals used by Run
    def _known(self, key: str) -> bool:
        with self._state.lock:
            if key in self._state.load_runs()["runs"]:
                return True
            return any(
                rec.get("op") == "create" and rec.get("key") == key for rec in self._state.pending_records()
            )

    def _open(self, key: str, parent: str | None, name: str, tags: dict[str, str], retag: bool = True) -> Run:
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
        if existing and retag:
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
        """Log params; nested mappings are flattened to dotted keys, secrets masked (:mod:`ctsl_hpc.masking`)."""
        if params:
            self._send({"op": "params", "key": self.key, "params": flatten(mask(dict(params)))})

    def set_tags(self, tags: Mapping[str, Any]) -> None:
        """Set (or overwrite) run tags, secrets masked (a command line, a description)."""
        if tags:
            self._send({"op": "tags", "key": self.key, "tags": {k: mask_text(str(v)) for k, v in tags.items()}})

    def set_description(self, markdown: str) -> None:
        """The run page's description (``mlflow.note.content``, rendered as markdown; cut to the
        store's 8000 characters of a tag)."""
        if len(markdown) > _NOTE_MAX_CHARS:
            markdown = markdown[: _NOTE_MAX_CHARS - len(_CUT)] + _CUT
        self.set_tags({NOTE_TAG: markdown})

    def log_inputs(self, datasets: Sequence[Mapping[str, Any]]) -> None:
        """Record what the run saw: :mod:`ctsl_hpc.track.datasets` records (the store keeps each once)."""
        if datasets:
            self._send({"op": "inputs", "key": self.key, "inputs": [dict(d) for d in datasets]})

    def register_model(self, name: str, artifact_path: str, tags: Mapping[str, Any], description: str = "") -> None:
        """A version of registered model ``name`` from this run's artifact ``artifact_path`` (a model
        directory logged before), tagged with ``tags`` (``epoch`` and ``dev_ccc_mean`` required);
        registered once per run and epoch (:mod:`ctsl_hpc.track.registry`)."""
        tags = {k: str(v) for k, v in tags.items()}
        if EPOCH_TAG not in tags:
            raise ValueError(f"model version tags need {EPOCH_TAG!r}: {tags}")
        self._send({
            "op": "register", "key": self.key, "model": name, "artifact_path": artifact_path, "tags": tags,
            "description": description,
        })  # fmt: skip

    def log_artifact(self, path: str | Path, artifact_path: str | None = None) -> None:
        """Upload a file (or directory) of the work directory under ``artifact_path``; it must still
        exist at replay. The journal names it relative to the work directory, which may move."""
        path = Path(path).resolve()
        if not path.exists():
            raise FileNotFoundError(f"artifact {path} does not exist")
        root = self.tracker.workdir
        if not path.is_relative_to(root):
            raise ValueError(f"artifact {path} lies outside the work directory {root}: only its files are uploaded")
        record = {"op": "artifact", "key": self.key, "path": path.relative_to(root).as_posix(), "artifact_path": artifact_path}
        self._send(record)

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
