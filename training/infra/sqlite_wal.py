"""The SQLite databases this project writes (the Optuna study, MLflow's store) in write-ahead-log mode.

In SQLite's default rollback-journal mode every commit syncs the database and its journal to disk, about a
millisecond apiece on this project's machines, and a tracked trial commits a few dozen times (benchmarks row 12).
In WAL mode a commit appends to the log; with `synchronous=NORMAL` the log is synced at checkpoints, not at
every commit. What that costs: a power cut may lose the last commits; a killed process (kill -9, Ctrl-C) loses
nothing it committed, and neither ever leaves a torn database (SQLite's documented guarantee for WAL + NORMAL).
What it gives besides: readers no longer block the writer, so workers sharing one file wait less.

WAL, like SQLite's locking in any mode, needs the file on a local disk: workers on several machines share a
PostgreSQL database instead (docs/scale-out.md). The mode is a property of the file (kept once set); the sync
level is per connection, set here on every SQLite connection this process opens to a file in WAL mode.
"""

from __future__ import annotations

import sqlite3
from pathlib import Path

from sqlalchemy import event
from sqlalchemy.engine import Engine

BUSY_TIMEOUT_SECONDS = 60  # another worker may hold the write lock while it creates the schema


def use_wal(url: str) -> None:
    """Put the SQLite file of `url` (`sqlite:///path`) in WAL mode, creating it if need be; other URLs: nothing."""
    if not url.startswith("sqlite:///") or url == "sqlite:///:memory:":
        return
    path = Path(url.removeprefix("sqlite:///"))
    path.parent.mkdir(parents=True, exist_ok=True)
    connection = sqlite3.connect(path, timeout=BUSY_TIMEOUT_SECONDS)
    try:
        if connection.execute("PRAGMA journal_mode").fetchone()[0] != "wal":
            connection.execute("PRAGMA journal_mode=WAL")
    finally:
        connection.close()
    _sync_at_checkpoints()


def _sync_at_checkpoints() -> None:
    if not event.contains(Engine, "connect", _normal_sync_in_wal):
        event.listen(Engine, "connect", _normal_sync_in_wal)


def _normal_sync_in_wal(dbapi_connection, _record) -> None:
    if isinstance(dbapi_connection, sqlite3.Connection):
        if dbapi_connection.execute("PRAGMA journal_mode").fetchone()[0] == "wal":
            dbapi_connection.execute("PRAGMA synchronous=NORMAL")
