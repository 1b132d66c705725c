"""Sending the journal to the tracking store: in order, idempotently, surviving a server that goes away.

If the server is unreachable or answers 5xx, records stay in the spool and are replayed at the
next successful call, or by :func:`replay_spool`. Replayed records carry the timestamp of their
original call, so sending a record twice (a crash between the send and the journal cut) stores one
row: the SQL store ignores an identical (key, value, timestamp, step). Run creation is made
idempotent with the ``ctsl.run_key`` and ``ctsl.workdir_id`` tags; dataset inputs are deduplicated
by the store, model versions by :func:`~ctsl_hpc.track.registry.register_version`.
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
import urllib.parse
from pathlib import Path
from typing import Any

import requests
from mlflow import MlflowClient
from mlflow.entities import Dataset, DatasetInput, InputTag, Metric, Param, RunTag
from mlflow.exceptions import MlflowException

from ctsl_hpc.locks import LeaseLock, lease_lock
from ctsl_hpc.masking import resolve_env
from ctsl_hpc.track.datasets import CONTEXT_TAG
from ctsl_hpc.track.journal import Journal
from ctsl_hpc.track.registry import SWEEP_RUN_TAG, register_version
from ctsl_hpc.workdir import Workdir

_log = logging.getLogger(__name__)

# One try of at most 3 s per request: the spool is the retry (MLflow's defaults: 7 retries, 120 s each,
# which a hung server turns into minutes of stalled training per call).
HTTP_DEFAULTS = {
    "MLFLOW_HTTP_REQUEST_MAX_RETRIES": "0",
    "MLFLOW_HTTP_REQUEST_BACKOFF_FACTOR": "1",
    "MLFLOW_HTTP_REQUEST_BACKOFF_JITTER": "0",
    "MLFLOW_HTTP_REQUEST_TIMEOUT": "3",
}
RUN_KEY_TAG = "ctsl.run_key"
WORKDIR_TAG = "ctsl.workdir_id"
PARENT_KEY = "parent"  # the sweep's run
# MLflow 3's UI opens an experiment of this kind on its training runs (not the GenAI overview)
EXPERIMENT_TAGS = {"mlflow.experimentKind": "custom_model_development"}
_PARAMS_PER_BATCH = 100
_METRICS_PER_BATCH = 1000


def resolve_uri(workdir: str | Path, uri: str | None = None) -> str:
    """The tracking URI: ``uri`` if given, else ``$MLFLOW_TRACKING_URI``, else the work dir's SQLite.

    A login in an HTTP URI (``https://user:password@host``) moves to MLflow's ``MLFLOW_TRACKING_USERNAME``
    and ``MLFLOW_TRACKING_PASSWORD`` (unless they are set) and leaves the URI, which MLflow prints in its
    "View run at" lines and tags."""
    if uri:
        found = resolve_env(uri, "tracking.uri")  # ${env:NAME}: a password read here, never written down
    else:
        found = os.environ.get("MLFLOW_TRACKING_URI") or f"sqlite:///{Workdir(workdir).mlflow_db}"
    parts = urllib.parse.urlsplit(found)
    if parts.scheme not in ("http", "https") or "@" not in parts.netloc:
        return found
    login, host = parts.netloc.rsplit("@", 1)
    user, _, password = login.partition(":")
    os.environ.setdefault("MLFLOW_TRACKING_USERNAME", urllib.parse.unquote(user))
    if password:
        os.environ.setdefault("MLFLOW_TRACKING_PASSWORD", urllib.parse.unquote(password))
    return urllib.parse.urlunsplit(parts._replace(netloc=host))


class _Rejected(Exception):
    """A spooled record the tracking store will never accept."""


def _is_transient(exc: BaseException) -> bool:
    """True for failures that may heal: no connection, timeouts, 5xx, refused credentials (set them and
    ``sync``), a locked database."""
    if isinstance(exc, MlflowException):
        return exc.get_http_status_code() >= 500 or exc.get_http_status_code() in (401, 403)
    if isinstance(exc, (requests.RequestException, ConnectionError, TimeoutError)):
        return True
    return type(exc).__name__ == "OperationalError"  # sqlalchemy: database locked / unreachable


class _Replayer:
    """Sends journal records to the tracking store, creating runs (idempotently) as needed."""

    def __init__(self, state: Journal, uri: str) -> None:
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
            path = (self.state.root / rec["path"]).resolve()  # relative to the work directory (older spools: absolute)
            if not path.is_relative_to(self.state.root):
                raise _Rejected(f"artifact {rec['path']} lies outside the work directory {self.state.root}")
            if not path.exists():
                raise _Rejected(f"artifact {path} no longer exists")
            if path.is_dir():
                self.client.log_artifacts(run_id, str(path), rec.get("artifact_path"))
            else:
                self.client.log_artifact(run_id, str(path), rec.get("artifact_path"))
        elif op == "inputs":
            self.client.log_inputs(run_id, datasets=[_dataset_input(d) for d in rec["inputs"]])
        elif op == "register":
            record = dict(rec, tags={**rec["tags"], SWEEP_RUN_TAG: self._run_id(PARENT_KEY)})
            register_version(self.client, run_id, record)
        elif op == "finish":
            self.client.set_terminated(run_id, rec["status"], end_time=rec["ts"])
        else:
            raise _Rejected(f"unknown record op {op!r}")

    def _experiment_id(self, name: str, artifact_location: str | None) -> str:
        if name not in self._experiments:
            found = self.client.get_experiment_by_name(name)
            if found is None:
                try:
                    self._experiments[name] = self.client.create_experiment(name, artifact_location, EXPERIMENT_TAGS)
                except MlflowException as exc:
                    if exc.error_code != "RESOURCE_ALREADY_EXISTS":  # another process won the race
                        raise
                    self._experiments[name] = self.client.get_experiment_by_name(name).experiment_id
            else:
                self._experiments[name] = found.experiment_id
                for tag, value in EXPERIMENT_TAGS.items():
                    if tag not in found.tags:  # made before this tag existed: a value set since stays
                        self.client.set_experiment_tag(found.experiment_id, tag, value)
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


def _dataset_input(record: dict[str, Any]) -> DatasetInput:
    """A :mod:`ctsl_hpc.track.datasets` record as MLflow's dataset input."""
    dataset = Dataset(
        record["name"], record["digest"], record["source_type"], record["source"], profile=record.get("profile")
    )
    return DatasetInput(dataset, [InputTag(CONTEXT_TAG, record["context"])])


def replay_spool(workdir: str | Path, uri: str | None = None) -> int:
    """Send what ``<workdir>/tracking/spool.jsonl`` still holds; return the records left (0 = all sent).

    ``uri`` defaults as in :func:`resolve_uri`. Safe to call while jobs are logging: it takes the
    work directory's tracking lock.
    """
    _http_defaults()
    workdir = Path(workdir)
    state = Journal(workdir)
    uri = resolve_uri(workdir, uri)
    with state.lock, _schema_lock(uri):
        _Replayer(state, uri).flush()
        return sum(1 for _ in state.pending())


def _schema_lock(uri: str) -> LeaseLock | contextlib.nullcontext:
    """A lock beside a SQLite database file (a no-op for other stores)."""
    if uri.startswith("sqlite:///"):
        db = Path(uri[len("sqlite:///") :].split("?")[0])
        db.parent.mkdir(parents=True, exist_ok=True)
        return lease_lock(f"{db}.lock")
    return contextlib.nullcontext()


def _http_defaults() -> None:
    for name, value in HTTP_DEFAULTS.items():
        os.environ.setdefault(name, value)
