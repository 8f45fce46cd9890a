"""MLflow at the edge: which store (a SQLite file, a PostgreSQL database or a tracking server), checked and
configured, its experiments, and the package versions every run records."""

from __future__ import annotations

import os
import ssl
import urllib.request
from importlib import metadata
from pathlib import Path

import mlflow
from mlflow import MlflowClient
from mlflow.exceptions import MlflowException

from training.infra import private
from training.infra.locks import storage_lock
from training.infra.places import MLRUNS
from training.infra.sqlite_wal import use_wal
from training.infra.storage_urls import redact, sqlite_path
from training.tracking.store_seed import seed_sqlite_store

# MLflow 3's servers start job runners (six processes) for GenAI features this project does not use.
NO_JOB_RUNNERS = {"MLFLOW_SERVER_ENABLE_JOB_EXECUTION": "false"}
VERSIONED_PACKAGES = ("torch", "mlflow", "optuna", "scikit-learn", "torchserve", "torch-model-archiver", "numpy")


class TrackingError(RuntimeError):
    """An MLflow tracking URI that cannot be used."""


def default_tracking_uri() -> str:
    return os.environ.get("MLFLOW_TRACKING_URI") or f"sqlite:///{MLRUNS / 'mlflow.db'}"


def artifact_root(tracking_uri: str | None = None) -> Path:
    """Artifacts live beside a SQLite tracking database (mlruns/artifacts by default); a PostgreSQL tracking
    database used directly keeps them in mlruns/artifacts of this checkout (a tracking server proxies them)."""
    uri = tracking_uri or default_tracking_uri()
    if uri.startswith("sqlite:///"):
        return Path(uri.removeprefix("sqlite:///")).parent / "artifacts"
    return MLRUNS / "artifacts"


def configure(tracking_uri: str | None = None) -> MlflowClient:
    """Point MLflow at the store (default: mlruns/mlflow.db) and return a client for it.

    A tracking server or database that cannot be reached is a one-line `TrackingError` naming it."""
    os.environ.setdefault("MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR", "false")
    uri = tracking_uri or default_tracking_uri()
    if sqlite_path(uri) is not None:
        seed_sqlite_store(sqlite_path(uri))  # a new local store in milliseconds, not MLflow's seconds of migrations
        private.database(sqlite_path(uri))  # runs' params and checkpoints: the owner's alone
    if not uri.startswith(("http://", "https://")):
        private.owner_only(artifact_root(uri))
    use_wal(uri)  # a SQLite store: commits append to its log (training/infra/sqlite_wal.py)
    check_tracking_uri(uri)
    mlflow.set_tracking_uri(uri)
    mlflow.set_registry_uri(uri)
    client = MlflowClient(uri, uri)
    if uri.startswith(("postgresql", "postgres:")):
        # MLflow creates its tables on first use; workers starting together take turns.
        with storage_lock(uri, "mlflow-schema"):
            client.search_experiments(max_results=1)
    return client


def check_tracking_uri(uri: str) -> None:
    """Fail fast on a tracking server that does not answer, instead of MLflow's minutes of retries."""
    if uri.startswith(("http://", "https://")):
        # A private CA's server (make tracking-server off loopback): verified the way MLflow's client verifies it.
        context = ssl.create_default_context(cafile=os.environ.get("MLFLOW_TRACKING_SERVER_CERT_PATH") or None)
        try:
            with urllib.request.urlopen(f"{uri.rstrip('/')}/health", timeout=10, context=context) as response:
                response.read()
        except (OSError, ValueError) as error:
            raise TrackingError(f"cannot reach MLflow tracking server {redact(uri)}: {error}") from None
    elif uri.startswith(("postgresql", "postgres:")):
        import psycopg

        try:
            psycopg.connect("postgresql://" + uri.split("://", 1)[1], connect_timeout=10).close()
        except psycopg.Error as error:
            line = (str(error).strip().splitlines() or [""])[0]
            raise TrackingError(f"cannot reach MLflow tracking database {redact(uri)}: {line}") from None


def experiment_id(client: MlflowClient, name: str) -> str:
    """Get or create the experiment `name`; local stores keep artifacts under mlruns/artifacts/<name>.
    Workers starting together may both try to create it: the loser takes the winner's."""
    found = client.get_experiment_by_name(name)
    if found is not None:
        return found.experiment_id
    location = None
    if not client.tracking_uri.startswith(("http://", "https://", "databricks")):  # a server knows its own
        location = (artifact_root(client.tracking_uri) / name).as_uri()
    try:
        return client.create_experiment(name, artifact_location=location)
    except MlflowException as error:
        found = client.get_experiment_by_name(name)
        if error.error_code != "RESOURCE_ALREADY_EXISTS" or found is None:
            raise
        return found.experiment_id


def package_versions() -> dict[str, str]:
    versions = {}
    for name in VERSIONED_PACKAGES:
        try:
            versions[name] = metadata.version(name)
        except metadata.PackageNotFoundError:
            versions[name] = "not installed"
    return versions
