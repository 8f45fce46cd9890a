"""Registries for the rollout tests: a private copy of the suite's champions' registry, and a new `@champion` version
of a registered model (the champion's weights registered again) for a rollout to roll in."""

import sqlite3
from pathlib import Path

from training.tracking import mlflow_store, registry


def registry_copy(champions: dict, root: Path) -> str:
    """A private copy of the champions' registry in `root`: its URI (artifacts stay where the champions' are)."""
    db = root / "registry.db"
    source = sqlite3.connect(champions["tracking_uri"].removeprefix("sqlite:///"))
    with sqlite3.connect(db) as copy:  # SQLite's own copy: the file alone lacks what its write-ahead log holds
        source.backup(copy)
    source.close()
    return f"sqlite:///{db}"


def new_champion_version(uri: str, name: str) -> str:
    """A new version of `name` in the registry at `uri` (the current champion's weights and tags), made `@champion`:
    its number."""
    client = mlflow_store.configure(uri)
    current = client.get_model_version_by_alias(name, registry.CHAMPION)
    new = client.create_model_version(name, source=current.source, run_id=current.run_id)
    for key, value in current.tags.items():
        client.set_model_version_tag(name, new.version, key, value)
    client.set_registered_model_alias(name, registry.CHAMPION, new.version)
    return str(new.version)
