"""The registry's aliases: `@champion` chosen by the validation metric; `@archived` and `@serving` mark where
a version is."""

from __future__ import annotations

import getpass
import math
import os
import socket
import time
import urllib.parse
from dataclasses import dataclass
from pathlib import Path

import mlflow
from mlflow import MlflowClient
from mlflow.exceptions import MlflowException

from training.infra import storage_urls
from training.nn.integrity import file_sha256
from training.tracking.model_files import checkpoint_in

CHAMPION = "champion"
SERVING = "serving"  # moves on `make deploy`: the version TorchServe answers with


class RegistryError(RuntimeError):
    """The model registry could not give what was asked for."""


class NoChampionError(RegistryError):
    """No registered model, or not the one named, has a `@champion` yet (`make tune` first)."""


class ChecksumMismatchError(RegistryError):
    """A downloaded checkpoint differs from the sha256 its registered version records."""


class MissingChecksumError(RegistryError):
    """A registered version records no `checkpoint_sha256`: its checkpoint cannot be checked, so it is not used."""


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


def champion_names(client: MlflowClient) -> list[str]:
    return sorted(m.name for m in client.search_registered_models() if CHAMPION in (m.aliases or {}))


def download_champion(client: MlflowClient, name: str, dst: Path) -> tuple[object, Path]:
    """The `@champion` of `name`: its registered version and its checkpoint downloaded under `dst`, refused when
    the version records no `checkpoint_sha256` tag or the file differs from it."""
    version = champion_version(client, name)
    if version is None:
        known = ", ".join(champion_names(client)) or "none yet"
        raise NoChampionError(
            f"{name!r} has no @champion in the registry at {storage_urls.redact(client.tracking_uri)} "
            f"(champions: {known}): run `make tune` first, or pick one of those"
        )
    expected = version.tags.get("checkpoint_sha256")
    if not expected:
        raise MissingChecksumError(
            f"{name} version {version.version} records no checkpoint_sha256: its checkpoint cannot be checked, "
            "so it is not used (conclude the study again to register a version that records it)"
        )
    local = Path(mlflow.artifacts.download_artifacts(f"models:/{name}@{CHAMPION}", dst_path=str(dst)))
    checkpoint = checkpoint_in(local)  # data/ since the registry carries data; artifacts/ before
    sha = file_sha256(checkpoint)
    if expected != sha:
        raise ChecksumMismatchError(
            f"{name} version {version.version}: checkpoint sha256 {sha} differs from the registry's {expected}"
        )
    return version, checkpoint


def selection_value(version, metric: str) -> float:
    """A registered version's selection value: the validation metric of the trial it was refit from."""
    try:
        return float(version.tags.get(f"val_{metric}", "nan"))
    except ValueError:
        return math.nan


def promote_best(client: MlflowClient, name: str, metric: str, direction: str) -> ChampionDecision:
    """Point `@champion` at the version with the best validation metric (`val_<metric>` tag); the test
    metric is only reported. Idempotent; callers serialize it (`storage_lock`) so that two
    conclusions never interleave their read and their set."""
    versions = [
        v for v in client.search_model_versions(f"name = '{name}'") if math.isfinite(selection_value(v, metric))
    ]
    if not versions:
        raise ValueError(f"no version of {name!r} has a val_{metric} tag to select on")
    versions = [v for v in versions if has_artifacts(client, v)]  # an alias never points at files that are gone
    if not versions:
        raise ValueError(f"no version of {name!r} has its model files where the registry says they are")
    sign = 1 if direction == "minimize" else -1
    best = min(versions, key=lambda v: (sign * selection_value(v, metric), int(v.version)))
    current = champion_version(client, name)
    value = selection_value(best, metric)
    if current is not None and str(current.version) == str(best.version):
        return ChampionDecision(
            str(best.version), False, f"version {best.version} stays: best val_{metric}={value:.6g}"
        )
    mark_version(client, name, str(best.version), CHAMPION)
    if current is None:
        reason = f"version {best.version} is the first champion (val_{metric}={value:.6g})"
    else:
        was = selection_value(current, metric)
        reason = f"version {best.version} val_{metric}={value:.6g} beats version {current.version} ({was:.6g})"
    return ChampionDecision(str(best.version), True, reason)


def has_artifacts(client: MlflowClient, version) -> bool:
    """Whether the version's model files are where the registry says. A version registered through a
    PostgreSQL store on another machine points at that machine's disk; a tracking server keeps its own."""
    try:
        uri = client.get_model_version_download_uri(version.name, version.version)
    except MlflowException:
        return False
    if uri.startswith("file:"):
        return (Path(urllib.parse.unquote(urllib.parse.urlparse(uri).path)) / "MLmodel").exists()
    if "://" not in uri and ":" not in uri.split("/", 1)[0]:
        return (Path(uri) / "MLmodel").exists()
    return True  # served by a tracking server or a cloud store: its business


def actor() -> str:
    """Who acts on the registry, as a version records it: this machine's user and host, and the MLflow account a
    tracking server authenticates (`MLFLOW_TRACKING_USERNAME`) when there is one."""
    who = f"{getpass.getuser()}@{socket.gethostname()}"
    account = os.environ.get("MLFLOW_TRACKING_USERNAME")
    return f"{who} (MLflow account {account})" if account else who


def mark_version(client: MlflowClient, name: str, version: str, alias: str) -> None:
    """Point the registry alias `alias` at `version` and stamp the version: when (tag `<alias>_at`, UTC time) and
    by whom (`<alias>_by`, `actor()`).

    Shows in the Models tab which version is where and who put it there: a conclusion moves `@champion`, `archive`
    marks `@archived` after a successful build, a deploy marks `@serving` once the server answers with it. An alias
    names one version at a time."""
    client.set_registered_model_alias(name, alias, str(version))
    client.set_model_version_tag(name, str(version), f"{alias}_at", time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()))
    client.set_model_version_tag(name, str(version), f"{alias}_by", actor())
