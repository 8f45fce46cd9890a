"""Where a study lives: an Optuna storage (SQLite in WAL mode, PostgreSQL, journal file) opened with heartbeats, its
tables created under `storage_lock` (workers may open an empty database together), and each invocation's sampler
seed."""

from __future__ import annotations

from collections.abc import Callable

import numpy as np
import optuna

from training.infra import private
from training.infra.locks import storage_lock
from training.infra.sqlite_wal import use_wal
from training.infra.storage_urls import (
    StorageError,
    is_postgres,
    journal_path,
    one_line,
    redact,
    sqlalchemy_url,
    sqlite_path,
)
from training.search.study_storage import StudyStorage


def open_storage(
    url: str,
    heartbeat: int,
    grace: int,
    on_stale: Callable[[optuna.Study, optuna.trial.FrozenTrial], None] | None = None,
) -> optuna.storages.BaseStorage:
    """An Optuna storage for `url`; stale trials (silent for `grace` s) go to `on_stale` (journal: no heartbeats)."""
    journal = journal_path(url)
    try:
        if journal is not None:
            private.database(journal)
            backend = optuna.storages.journal.JournalFileBackend(
                str(journal), lock_obj=optuna.storages.journal.JournalFileOpenLock(str(journal))
            )
            return optuna.storages.JournalStorage(backend)
        engine = {"connect_args": {"timeout": 60}} if url.startswith("sqlite") else {}
        if is_postgres(url):
            engine = {"connect_args": {"connect_timeout": 10}, "pool_pre_ping": True}
        if sqlite_path(url) is not None:
            private.database(sqlite_path(url))
        with storage_lock(url, "optuna-schema"):
            use_wal(url)
            database = optuna.storages.RDBStorage(
                sqlalchemy_url(url),
                engine_kwargs=engine,
                heartbeat_interval=heartbeat,
                grace_period=grace,
                heartbeat_stale_trial_callback=on_stale,
            )
        return StudyStorage(database)  # this process's running trials written behind (study_storage.py)
    except StorageError:
        raise
    except Exception as error:  # SQLAlchemy, driver and URL errors: one line naming the URL
        raise StorageError(f"cannot open Optuna storage {redact(url)}: {one_line(error)}") from None


def sampler_seed(seed: int, invocation: int) -> int:
    """The first invocation of a study samples with `seed` itself (reproducible alone); every later or
    simultaneous one gets a seed of its own, so parallel workers do not draw the same parameters."""
    if invocation == 0:
        return seed
    return int(np.random.SeedSequence([seed, invocation]).generate_state(1)[0])
