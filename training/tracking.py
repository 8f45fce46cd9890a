"""MLflow at the edge: where the stores live, experiments, and the registry's `champion` alias."""

from __future__ import annotations

import math
import os
from dataclasses import dataclass
from importlib import metadata
from pathlib import Path

import mlflow
from mlflow import MlflowClient
from mlflow.exceptions import MlflowException

ROOT = Path(__file__).resolve().parents[1]
MLRUNS = ROOT / "mlruns"
CHAMPION = "champion"
VERSIONED_PACKAGES = ("torch", "mlflow", "optuna", "scikit-learn", "torchserve", "torch-model-archiver", "numpy")


def default_tracking_uri() -> str:
    return os.environ.get("MLFLOW_TRACKING_URI") or f"sqlite:///{MLRUNS / 'mlflow.db'}"


def default_optuna_storage() -> str:
    return f"sqlite:///{MLRUNS / 'optuna.db'}"


def artifact_root(tracking_uri: str | None = None) -> Path:
    """Artifacts live beside a SQLite tracking database: mlruns/artifacts by default."""
    uri = tracking_uri or default_tracking_uri()
    if uri.startswith("sqlite:///"):
        return Path(uri.removeprefix("sqlite:///")).parent / "artifacts"
    return MLRUNS / "artifacts"


def configure(tracking_uri: str | None = None) -> MlflowClient:
    """Point MLflow at the store (default: mlruns/mlflow.db) and return a client for it."""
    os.environ.setdefault("MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR", "false")
    uri = tracking_uri or default_tracking_uri()
    if uri.startswith("sqlite:///"):
        Path(uri.removeprefix("sqlite:///")).parent.mkdir(parents=True, exist_ok=True)
    mlflow.set_tracking_uri(uri)
    mlflow.set_registry_uri(uri)
    return MlflowClient(uri, uri)


def experiment_id(client: MlflowClient, name: str) -> str:
    """Get or create the experiment `name`; local stores keep artifacts under mlruns/artifacts/<name>."""
    found = client.get_experiment_by_name(name)
    if found is not None:
        return found.experiment_id
    location = None
    if client.tracking_uri.startswith("sqlite:///"):
        location = (artifact_root(client.tracking_uri) / name).as_uri()
    return client.create_experiment(name, artifact_location=location)


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


def promote_if_better(
    client: MlflowClient, name: str, version: str, metric: str, value: float, direction: str
) -> ChampionDecision:
    """Move `@champion` to `version` only if its test metric beats the current champion's."""
    current = champion_version(client, name)
    key = f"test_{metric}"
    if current is not None and current.version != version:
        best = float(current.tags.get(key, "nan"))
        beats = math.isnan(best) or (value < best if direction == "minimize" else value > best)
        if not beats:
            reason = f"kept version {current.version}: its {key}={best:.6g} is not beaten by {value:.6g}"
            return ChampionDecision(version, False, reason)
        reason = f"version {version} {key}={value:.6g} beats version {current.version} ({best:.6g})"
    else:
        reason = f"version {version} is the first champion ({key}={value:.6g})"
    client.set_registered_model_alias(name, CHAMPION, version)
    return ChampionDecision(version, True, reason)


def mark_version(client: MlflowClient, name: str, version: str, alias: str) -> None:
    """Point the registry alias `alias` at `version` and stamp the version (tag `<alias>_at`, UTC time).

    Shows in the Models tab which version is where: `archive` marks `@archived` after a successful build,
    a deploy marks `@serving` once the server answers with it. An alias names one version at a time."""
    import time

    client.set_registered_model_alias(name, alias, str(version))
    client.set_model_version_tag(name, str(version), f"{alias}_at", time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()))
