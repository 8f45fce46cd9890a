"""MLflow at the edge: where the stores live, experiments, and the registry's `champion` alias."""

from __future__ import annotations

import math
import os
import urllib.request
from dataclasses import dataclass
from importlib import metadata
from pathlib import Path

import mlflow
from mlflow import MlflowClient
from mlflow.exceptions import MlflowException

ROOT = Path(__file__).resolve().parents[1]
MLRUNS = ROOT / "mlruns"
CHAMPION = "champion"
SERVING = "serving"  # moves on `make deploy`: the version TorchServe answers with
VERSIONED_PACKAGES = ("torch", "mlflow", "optuna", "scikit-learn", "torchserve", "torch-model-archiver", "numpy")


class TrackingError(RuntimeError):
    """An MLflow tracking URI that cannot be used."""


def default_tracking_uri() -> str:
    return os.environ.get("MLFLOW_TRACKING_URI") or f"sqlite:///{MLRUNS / 'mlflow.db'}"


def default_optuna_storage() -> str:
    return f"sqlite:///{MLRUNS / 'optuna.db'}"


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
    if uri.startswith("sqlite:///"):
        Path(uri.removeprefix("sqlite:///")).parent.mkdir(parents=True, exist_ok=True)
    check_tracking_uri(uri)
    mlflow.set_tracking_uri(uri)
    mlflow.set_registry_uri(uri)
    client = MlflowClient(uri, uri)
    if uri.startswith(("postgresql", "postgres:")):
        from .storage import storage_lock

        # MLflow creates its tables on first use; workers starting together take turns.
        with storage_lock(uri, "mlflow-schema"):
            client.search_experiments(max_results=1)
    return client


def check_tracking_uri(uri: str) -> None:
    """Fail fast on a tracking server that does not answer, instead of MLflow's minutes of retries."""
    if uri.startswith(("http://", "https://")):
        try:
            with urllib.request.urlopen(f"{uri.rstrip('/')}/health", timeout=10) as response:
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


def redact(url: str) -> str:
    """A storage URL without its password, fit to log."""
    if "@" not in url or "://" not in url:
        return url
    scheme, rest = url.split("://", 1)
    credentials, host = rest.rsplit("@", 1)
    user = credentials.split(":", 1)[0]
    return f"{scheme}://{user}:***@{host}"


@dataclass
class ChampionDecision:
    version: str
    promoted: bool
    reason: str


def champion_version(client: MlflowClient, name: str):
    try:
        return client.get_model_version_by_alias(name, CHAMPION)
    except MlflowException:
        return None


def selection_value(version, metric: str) -> float:
    """A registered version's selection value: the validation metric of the trial it was refit from."""
    try:
        return float(version.tags.get(f"val_{metric}", "nan"))
    except ValueError:
        return math.nan


def promote_best(client: MlflowClient, name: str, metric: str, direction: str) -> ChampionDecision:
    """Point `@champion` at the version with the best validation metric (`val_<metric>` tag); the test
    metric is only reported. Idempotent; callers serialize it (`storage.storage_lock`) so that two
    conclusions never interleave their read and their set."""
    versions = [
        v for v in client.search_model_versions(f"name = '{name}'") if math.isfinite(selection_value(v, metric))
    ]
    if not versions:
        raise ValueError(f"no version of {name!r} has a val_{metric} tag to select on")
    sign = 1 if direction == "minimize" else -1
    best = min(versions, key=lambda v: (sign * selection_value(v, metric), int(v.version)))
    current = champion_version(client, name)
    value = selection_value(best, metric)
    if current is not None and str(current.version) == str(best.version):
        return ChampionDecision(
            str(best.version), False, f"version {best.version} stays: best val_{metric}={value:.6g}"
        )
    client.set_registered_model_alias(name, CHAMPION, str(best.version))
    if current is None:
        reason = f"version {best.version} is the first champion (val_{metric}={value:.6g})"
    else:
        was = selection_value(current, metric)
        reason = f"version {best.version} val_{metric}={value:.6g} beats version {current.version} ({was:.6g})"
    return ChampionDecision(str(best.version), True, reason)


def mark_version(client: MlflowClient, name: str, version: str, alias: str) -> None:
    """Point the registry alias `alias` at `version` and stamp the version (tag `<alias>_at`, UTC time).

    Shows in the Models tab which version is where: `archive` marks `@archived` after a successful build,
    a deploy marks `@serving` once the server answers with it. An alias names one version at a time."""
    import time

    client.set_registered_model_alias(name, alias, str(version))
    client.set_model_version_tag(name, str(version), f"{alias}_at", time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()))
