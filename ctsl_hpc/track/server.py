"""An MLflow tracking server for a cluster: one worker, job execution off, in its own process group."""

from __future__ import annotations

import os
import secrets
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
from pathlib import Path

from ctsl_hpc.atomic_io import atomic_write_text
from ctsl_hpc.processes import stop_process_group


def serve(
    backend_store_uri: str,
    artifact_root: str | Path,
    host: str = "127.0.0.1",
    port: int = 5000,
    *,
    allowed_hosts: list[str] | None = None,
    log_file: str | Path | None = None,
    auth_config: str | Path | None = None,
) -> subprocess.Popen:
    """Start ``mlflow server`` (one worker, job execution off) in its own process group.

    ``backend_store_uri``: a database URI (``sqlite:////local/disk/mlflow.db``, ``postgresql://``,
    ``mysql://``); ``artifact_root``: a folder on shared storage (or any artifact URI), served through
    the server. ``host``: 127.0.0.1 unless told otherwise; when it is not loopback, this node's names
    are allowed as Host headers besides MLflow's defaults (localhost and private IPs), so jobs on other
    nodes can use ``http://<node>:<port>``. ``auth_config``: an MLflow ``basic_auth.ini`` (users
    database, admin user and password): the server then runs MLflow's basic-auth app, every request
    needs a user (``MLFLOW_TRACKING_USERNAME``/``MLFLOW_TRACKING_PASSWORD`` in the clients'
    environment), and its CSRF secret is ``$MLFLOW_FLASK_SERVER_SECRET_KEY`` or one kept next to the
    ini file. Stop it with :func:`stop_server`.
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
    if auth_config is not None:
        cmd += ["--app-name", "basic-auth"]
        env.update(MLFLOW_AUTH_CONFIG_PATH=str(Path(auth_config).resolve()),
                   MLFLOW_FLASK_SERVER_SECRET_KEY=os.environ.get("MLFLOW_FLASK_SERVER_SECRET_KEY") or _secret(auth_config))
    out = open(log_file, "ab") if log_file else subprocess.DEVNULL
    try:
        return subprocess.Popen(cmd, env=env, stdout=out, stderr=subprocess.STDOUT, start_new_session=True)
    finally:
        if log_file:
            out.close()


def _secret(auth_config: str | Path) -> str:
    """The server's CSRF secret, made once and kept (owner-only) beside the auth config: restarts keep it."""
    path = Path(auth_config).resolve().with_name("flask_secret_key")
    if not path.is_file():
        mask = os.umask(0o077)
        try:
            atomic_write_text(path, secrets.token_hex(32))
        finally:
            os.umask(mask)
    return path.read_text().strip()


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


def run_server(
    backend_store_uri: str, artifact_root: str | Path, host: str = "127.0.0.1", port: int = 5000,
    auth_config: str | Path | None = None,
) -> int:
    """Start :func:`serve`, print its URL once healthy, and block until it exits (Ctrl-C stops it)."""
    proc = serve(backend_store_uri, artifact_root, host, port, auth_config=auth_config)
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


# MLflow 3.17's UI opens an experiment on the view its sidebar switch (GenAI / Model training) names,
# from this URL parameter or the browser's last choice; the experiment tag mlflow.experimentKind is
# not read for it. Links to an experiment's runs carry the parameter.
TRAINING_VIEW = "workflowType=machine_learning"


def training_runs_url(tracking_uri: str, experiment: str) -> str | None:
    """The experiment's training-runs page on an HTTP tracking server; None for another store, an
    unknown experiment or an unreachable server."""
    if not tracking_uri.startswith(("http://", "https://")):
        return None
    from mlflow import MlflowClient
    from mlflow.exceptions import MlflowException

    try:
        found = MlflowClient(tracking_uri).get_experiment_by_name(experiment)
    except (MlflowException, OSError):
        return None
    if found is None:
        return None
    return f"{tracking_uri.rstrip('/')}/#/experiments/{found.experiment_id}/runs?{TRAINING_VIEW}"
