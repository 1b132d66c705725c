"""The Model Registry: a registered model per experiment and variant, a version per selected checkpoint.

A version's files are the package's own model directory (what :func:`ctsl_hpc.model.save_model`
writes), uploaded as an artifact of the variant's run. Versions are created by replaying
``register`` records, journaled like every other tracking record: a version is known by its run and
epoch, so a replay after a crash, or the evaluation run again, registers nothing twice. The alias
``best`` follows the version with the highest development CCC. :func:`fetch_model` downloads
``models:/NAME@ALIAS`` (or ``models:/NAME/VERSION``) into a local folder for ``predict``.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from mlflow import MlflowClient
from mlflow.exceptions import MlflowException

MODELS_SCHEME = "models:/"
BEST_ALIAS = "best"
EPOCH_TAG, SCORE_TAG, SWEEP_TAG, SWEEP_RUN_TAG = "epoch", "dev_ccc_mean", "sweep", "sweep_run_id"


def model_name(experiment: str, variant: str) -> str:
    """The registered model of a variant: ``<experiment>-<variant>``."""
    return f"{experiment}-{variant}"


def register_version(client: MlflowClient, run_id: str, record: dict[str, Any]) -> None:
    """Register ``record``'s model directory (an artifact of ``run_id``) unless this run's epoch is
    already a version, then point ``best`` at the best-scoring version."""
    name = record["model"]
    try:
        client.create_registered_model(name, description=record.get("description"))
    except MlflowException as exc:
        if exc.error_code != "RESOURCE_ALREADY_EXISTS":
            raise
    tags = record["tags"]
    versions = _versions(client, name)
    if not any(v.run_id == run_id and v.tags.get(EPOCH_TAG) == tags[EPOCH_TAG] for v in versions):
        source = f"runs:/{run_id}/{record['artifact_path']}"
        client.create_model_version(name, source, run_id, tags=tags, await_creation_for=0)
        versions = _versions(client, name)
    scored = [(float(v.tags[SCORE_TAG]), int(v.version)) for v in versions if SCORE_TAG in v.tags]
    if scored:
        best = str(max(scored)[1])
        if client.get_registered_model(name).aliases.get(BEST_ALIAS) != best:
            client.set_registered_model_alias(name, BEST_ALIAS, best)


def _versions(client: MlflowClient, name: str) -> list[Any]:
    return client.search_model_versions(f"name = '{name}'")


def fetch_model(uri: str, dest: str | Path, tracking_uri: str | None = None) -> Path:
    """Download the model directory a ``models:/NAME@ALIAS`` or ``models:/NAME/VERSION`` URI names
    (on the registry of ``tracking_uri``, default ``$MLFLOW_TRACKING_URI``) into ``dest``."""
    if not uri.startswith(MODELS_SCHEME) or not ("@" in uri or "/" in uri[len(MODELS_SCHEME) :]):
        raise ValueError(f"{uri!r} is not a models:/NAME@ALIAS or models:/NAME/VERSION URI")
    from mlflow.artifacts import download_artifacts

    client = MlflowClient(tracking_uri, registry_uri=tracking_uri)
    reference = uri[len(MODELS_SCHEME) :]
    if "@" in reference:
        name, alias = reference.rsplit("@", 1)
        version = client.get_model_version_by_alias(name, alias).version
    else:
        name, version = reference.rsplit("/", 1)
    source = client.get_model_version_download_uri(name, version)
    Path(dest).mkdir(parents=True, exist_ok=True)
    return Path(download_artifacts(artifact_uri=source, dst_path=str(dest), tracking_uri=tracking_uri))
