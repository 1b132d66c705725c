"""The tracking server beyond this machine: refused without a login unless told, HTTPS with a certificate the
clients are told to trust."""

from __future__ import annotations

import os
import socket
import subprocess
import sys
from pathlib import Path

import pytest

from ctsl_hpc.processes import free_port, stop_process_group
from tests.helpers import REPO, cli


def _address_of_this_host() -> str:
    """An address of this machine that is not loopback (the one its name resolves to, else any interface)."""
    for address in {info[4][0] for info in socket.getaddrinfo(socket.gethostname(), None, socket.AF_INET)}:
        if not address.startswith("127."):
            return address
    return "0.0.0.0"


@pytest.mark.parametrize("command", ["cli", "script"])
def test_a_server_open_to_the_network_without_a_login_is_refused(tmp_path: Path, command: str):
    host, port = _address_of_this_host(), free_port()
    args = ["--backend-store-uri", f"sqlite:///{tmp_path / 'm.db'}", "--host", host, "--port", str(port)]
    if command == "cli":
        out = cli("mlflow-server", *args, "--artifacts-destination", tmp_path / "a", timeout=60)
    else:
        env = {**os.environ, "PATH": f"{Path(sys.executable).parent}:{os.environ['PATH']}", "CTSL_MLFLOW_DIR": str(tmp_path)}
        out = subprocess.run(["bash", REPO / "launch" / "mlflow-server.sh", *args], capture_output=True, text=True,
                             env=env, timeout=60)
    assert out.returncode == 2 and f"--host {host} is reachable from other machines" in out.stderr, out.stderr
    assert "--no-auth" in out.stderr and "Traceback" not in out.stderr
    assert not (tmp_path / "m.db").exists()  # refused before it started
    with socket.socket() as probe:
        assert probe.connect_ex(("127.0.0.1", port)) != 0


def _self_signed(folder: Path) -> tuple[Path, Path]:
    """A certificate for 127.0.0.1 and localhost, the way the README makes one."""
    cert, key = folder / "cert.pem", folder / "key.pem"
    subprocess.run(["openssl", "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-days", "1", "-subj", "/CN=localhost",
                    "-addext", "subjectAltName=IP:127.0.0.1,DNS:localhost", "-keyout", key, "-out", cert],
                   check=True, capture_output=True, timeout=60)
    return cert, key


def test_a_tls_server_with_a_self_signed_certificate_takes_a_tiny_sweeps_runs(tmp_path: Path, tiny_overrides):
    from mlflow import MlflowClient

    cert, key = _self_signed(tmp_path)
    port = free_port()
    env = {**os.environ, "MLFLOW_TRACKING_SERVER_CERT_PATH": str(cert), "HF_HUB_OFFLINE": "1"}
    server = subprocess.Popen(
        [sys.executable, "-m", "ctsl_hpc.launch", "mlflow-server", "--backend-store-uri", f"sqlite:///{tmp_path / 'm.db'}",
         "--artifacts-destination", tmp_path / "artifacts", "--port", str(port), "--tls-cert", cert, "--tls-key", key],
        stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, env=env, start_new_session=True)
    try:
        url = f"https://127.0.0.1:{port}"
        assert server.stdout.readline().startswith(f"MLflow tracking server: {url}")  # healthy over HTTPS
        overrides = [*tiny_overrides(tmp_path / "w"), "student.variants=[RH]", "train.epochs=1", "student.epochs=1",
                     f"tracking.uri={url}", "tracking.experiment=tls"]
        out = subprocess.run([sys.executable, "-m", "ctsl_hpc.launch", "sweep", *overrides], capture_output=True,
                             text=True, env=env, cwd=REPO, timeout=600)
        assert out.returncode == 0, out.stderr[-3000:]
        os.environ["MLFLOW_TRACKING_SERVER_CERT_PATH"] = str(cert)
        try:
            client = MlflowClient(url)
            runs = client.search_runs([client.get_experiment_by_name("tls").experiment_id])
        finally:
            del os.environ["MLFLOW_TRACKING_SERVER_CERT_PATH"]
        assert {r.data.tags.get("mlflow.runName") for r in runs} >= {"teacher", "student/RH"}
        assert not list((tmp_path / "w" / "tracking").glob("spool*.jsonl")) or all(
            p.stat().st_size == 0 for p in (tmp_path / "w" / "tracking").glob("spool*.jsonl"))  # nothing left behind
    finally:
        stop_process_group(server, 20)
    with socket.socket() as probe:  # the command took its server down with it
        assert probe.connect_ex(("127.0.0.1", port)) != 0
