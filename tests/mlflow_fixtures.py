"""A real ``mlflow server`` for tests: 127.0.0.1 (or another address of this host), a free port, one
worker, SQLite + artifacts in tmp.

Import the fixture from ``tests/conftest.py``: ``from tests.mlflow_fixtures import mlflow_server``.
"""

from __future__ import annotations

import json
import urllib.parse
import urllib.request
from dataclasses import dataclass, field
from pathlib import Path
from subprocess import Popen
from typing import Any

import pytest

from ctsl_hpc.processes import free_port
from ctsl_hpc.track.server import serve, stop_server, wait_until_healthy


@dataclass
class MlflowServer:
    """A running server that tests may stop and start again on the same port and backend."""

    root: Path
    port: int = field(default_factory=free_port)
    proc: Popen | None = None
    auth_config: Path | None = None  # MLflow's basic_auth.ini: the server then wants a user
    host: str = "127.0.0.1"  # e.g. the dev cluster's bridge, for jobs on its nodes

    @property
    def url(self) -> str:
        return f"http://{self.host}:{self.port}"

    @property
    def backend_uri(self) -> str:
        return f"sqlite:///{self.root / 'mlflow.db'}"

    def start(self) -> None:
        self.root.mkdir(parents=True, exist_ok=True)
        self.proc = serve(
            self.backend_uri, self.root / "artifacts", self.host, self.port, log_file=self.root / "server.log",
            auth_config=self.auth_config,
        )
        try:
            wait_until_healthy(self.url, timeout_s=60, proc=self.proc)
        except (RuntimeError, TimeoutError) as exc:
            log = (self.root / "server.log").read_text(errors="replace")[-3000:]
            raise RuntimeError(f"{exc}\n--- server.log ---\n{log}") from exc

    def stop(self) -> None:
        if self.proc is not None:
            stop_server(self.proc)
            self.proc = None

    def api(self, endpoint: str, **params: Any) -> dict[str, Any]:
        """GET ``/api/2.0/mlflow/<endpoint>`` with query ``params``; the decoded JSON."""
        query = urllib.parse.urlencode(params, doseq=True)
        with urllib.request.urlopen(f"{self.url}/api/2.0/mlflow/{endpoint}?{query}", timeout=10) as resp:
            return json.loads(resp.read())

    def post(self, endpoint: str, body: dict[str, Any]) -> dict[str, Any]:
        """POST JSON ``body`` to ``/api/2.0/mlflow/<endpoint>``; the decoded JSON."""
        request = urllib.request.Request(
            f"{self.url}/api/2.0/mlflow/{endpoint}",
            data=json.dumps(body).encode(),
            headers={"Content-Type": "application/json"},
        )
        with urllib.request.urlopen(request, timeout=10) as resp:
            return json.loads(resp.read())


@pytest.fixture(scope="session")
def mlflow_server(tmp_path_factory: pytest.TempPathFactory):
    """A session-wide real MLflow tracking server; stopped (SIGTERM to its group) at the end."""
    server = MlflowServer(tmp_path_factory.mktemp("mlflow-server"))
    server.start()
    try:
        yield server
    finally:
        server.stop()
