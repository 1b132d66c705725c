"""An MLflow tracking server for a cluster: one worker, job execution off, in its own process group.

Beyond this machine it wants its clients to log in (MLflow's basic-auth app) and serves TLS when
given a certificate and key (``--uvicorn-opts "--ssl-certfile ... --ssl-keyfile ..."``); clients,
and the health checks here, trust that certificate through ``MLFLOW_TRACKING_SERVER_CERT_PATH``.
"""

from __future__ import annotations

import ipaddress
import os
import secrets
import signal
import socket
import ssl
import subprocess
import sys
import time
import urllib.error
import urllib.request
from pathlib import Path

from ctsl_hpc.atomic_io import atomic_write_text, owner_only
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
    tls: tuple[str | Path, str | Path] | None = None,
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
    ini file. ``tls``: (certificate, key) PEM files: the server speaks HTTPS. Stop it with :func:`stop_server`.
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
    if allowed_hosts is None and not is_loopback(host):
        from mlflow.server.security_utils import get_default_allowed_hosts

        names = {socket.gethostname(), socket.getfqdn()}
        allowed_hosts = get_default_allowed_hosts() + sorted(f"{n}{p}" for n in names for p in ("", ":*"))
    if allowed_hosts:
        cmd += ["--allowed-hosts", ",".join(allowed_hosts)]
    if tls is not None:
        cert, key = (Path(p).resolve() for p in tls)
        cmd += ["--uvicorn-opts", f"--ssl-certfile {cert} --ssl-keyfile {key}"]
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
        with owner_only():
            atomic_write_text(path, secrets.token_hex(32))
    return path.read_text().strip()


def is_loopback(host: str) -> bool:
    """Whether ``host`` is this machine alone (127.0.0.1, ::1, localhost)."""
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def server_url(host: str, port: int, tls: bool = False) -> str:
    """The URL clients use for a server bound to ``host`` (``0.0.0.0`` -> this node's name)."""
    name = socket.gethostname() if host in ("0.0.0.0", "::") else host
    return f"{'https' if tls else 'http'}://{name}:{port}"


def wait_until_healthy(url: str, timeout_s: float = 60.0, proc: subprocess.Popen | None = None) -> None:
    """Poll ``<url>/health`` until it answers OK; raise if ``proc`` exits or ``timeout_s`` passes. An HTTPS
    server's certificate is checked against ``$MLFLOW_TRACKING_SERVER_CERT_PATH`` when set (as MLflow's
    clients do), else the system's trust store."""
    deadline = time.monotonic() + timeout_s
    context = ssl.create_default_context(cafile=os.environ.get("MLFLOW_TRACKING_SERVER_CERT_PATH") or None)
    while True:
        if proc is not None and proc.poll() is not None:
            raise RuntimeError(f"mlflow server exited with code {proc.returncode} before {url} answered")
        try:
            with urllib.request.urlopen(f"{url}/health", timeout=2, context=context) as response:
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


class ServerRefused(ValueError):
    """The server would be open to the network without a login; the message says how to start it."""


def run_server(
    backend_store_uri: str, artifact_root: str | Path, host: str = "127.0.0.1", port: int = 5000,
    auth_config: str | Path | None = None, no_auth: bool = False, tls: tuple[str | Path, str | Path] | None = None,
) -> int:
    """Start :func:`serve`, print its URL once healthy, and block until it exits (Ctrl-C stops it).

    Beyond loopback it refuses to start without ``auth_config`` unless ``no_auth`` says the network is
    trusted; with basic-auth but no ``tls`` it warns that passwords would cross the network in clear."""
    if not is_loopback(host) and auth_config is None and not no_auth:
        raise ServerRefused(f"mlflow-server: --host {host} is reachable from other machines, and without "
                            "--auth-config anyone there could read and change every run: give --auth-config "
                            "basic_auth.ini (and --tls-cert/--tls-key), or --no-auth where the network is yours alone")
    if not is_loopback(host) and auth_config is not None and tls is None:
        print(f"warning: --host {host} with basic-auth but no --tls-cert/--tls-key: passwords cross the network in "
              "clear text", file=sys.stderr)
    def stop_on_term(*_: object) -> None:  # scancel, kill: stop the server too (it runs in its own process group)
        raise KeyboardInterrupt

    signal.signal(signal.SIGTERM, stop_on_term)
    proc = serve(backend_store_uri, artifact_root, host, port, auth_config=auth_config, tls=tls)
    url = server_url(host, port, tls is not None)
    try:
        local = f"{url.split(':')[0]}://127.0.0.1:{port}" if host in ("0.0.0.0", "::") else url
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
