"""A new local MLflow store, copied from an empty one this MLflow version built once.

MLflow builds a new SQLite store by running every schema migration it has ever shipped, 3-5 s on this
project's machines, and a new store is made often: a fresh checkout's `mlruns/`, each benchmark row's stores,
each test module's. The result is the same empty schema every time, so it is built once per MLflow version into
the user's cache (`~/.cache/attention-serve/`, or `$ATTENTION_SERVE_CACHE`; private to its owner) and copied.
The copy holds no experiment: MLflow creates its Default experiment on the first open, pointing at the new
store's own artifact root, as it does for a store it built itself.
"""

from __future__ import annotations

import contextlib
import os
import sqlite3
import tempfile
from pathlib import Path

import mlflow
from mlflow.exceptions import MlflowException

from training.infra.processes import private_dir, write_whole


def cache_dir() -> Path:
    configured = os.environ.get("ATTENTION_SERVE_CACHE")
    base = Path(configured) if configured else Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache")
    return base if configured else base / "attention-serve"


def seed_sqlite_store(path: Path) -> bool:
    """Make the SQLite store at `path` from the cached empty one when it does not exist yet; True if it did. A
    folder it makes, and the file, are its owner's alone (0700, 0600)."""
    if path.exists():
        return False
    try:
        template = empty_store()
    except (OSError, sqlite3.Error, MlflowException):
        return False  # no usable cache (a read-only home, say): MLflow builds the store itself, as it would
    path.parent.mkdir(mode=0o700, parents=True, exist_ok=True)
    # whole or absent, never a half-copied file under the store's name; another process's made first is as good
    return write_whole(path, template.read_bytes(), replace=False)


def empty_store() -> Path:
    """The cached empty store of this MLflow version, built on first use."""
    from mlflow.store.tracking.sqlalchemy_store import SqlAlchemyStore  # 0.7 s of imports, needed once per version

    folder = private_dir(cache_dir())
    template = folder / f"mlflow-{mlflow.__version__}-empty.db"
    if template.exists():
        return template
    with tempfile.TemporaryDirectory(dir=folder, prefix=".build-") as tmp:
        built = Path(tmp) / "empty.db"
        store = SqlAlchemyStore(f"sqlite:///{built}", str(Path(tmp) / "artifacts"))
        store.engine.dispose()
        with contextlib.closing(sqlite3.connect(built)) as connection, connection:
            connection.execute("DELETE FROM experiments")  # MLflow's Default, made again for the store that opens it
        os.replace(built, template)  # a concurrent builder's template is the same: the last one stays
    return template
