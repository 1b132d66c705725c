"""Fixtures of the tracking tests (the real MLflow server itself, ``mlflow_server``, is session-wide:
tests/mlflow_fixtures.py)."""

from __future__ import annotations

import uuid

import pytest


@pytest.fixture
def experiment(request: pytest.FixtureRequest) -> str:
    """A fresh MLflow experiment name for this test (tests share the session's server)."""
    return f"{request.module.__name__.rsplit('.', 1)[-1].removeprefix('test_')}-{uuid.uuid4().hex[:8]}"
