"""Where a study lives: Optuna storage URLs (SQLite, PostgreSQL, journal files), checked, opened and locked.

Several workers may open the same storage at the same moment on an empty database. Creating Optuna's
tables is not safe to race on PostgreSQL (`pg_type_typname_nsp_index`, `alembic_version_pkc`), so it
happens under a lock: a PostgreSQL advisory lock on a connection of its own, or a file lock beside a
SQLite database or journal file. The same `storage_lock` serializes each study's conclusion.
"""

from __future__ import annotations

import fcntl
import hashlib
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path

import numpy as np
import optuna

from . import tracking


class StorageError(RuntimeError):
    """An Optuna storage URL that cannot be used: one line, naming the URL without its password."""


def journal_path(url: str) -> Path | None:
    """A journal file (`journal:///abs/path`, `journal://rel/path` or a bare file path), else None."""
    if url.startswith("journal://"):
        return Path(url.removeprefix("journal://"))
    if "://" not in url:
        return Path(url)
    return None


def is_postgres(url: str) -> bool:
    return url.split("://", 1)[0].split("+", 1)[0] in ("postgresql", "postgres")


def sqlalchemy_url(url: str) -> str:
    """`postgres://` is libpq's spelling; SQLAlchemy wants `postgresql://` (psycopg 3 is the pinned driver)."""
    if url.startswith("postgres://"):
        return "postgresql+psycopg://" + url.removeprefix("postgres://")
    if url.startswith("postgresql://"):
        return "postgresql+psycopg://" + url.removeprefix("postgresql://")
    return url


def one_line(error: BaseException) -> str:
    text = str(getattr(error, "orig", None) or error).strip().splitlines()
    return f"{type(error).__name__}: {text[0] if text else ''}".strip()


@contextmanager
def storage_lock(url: str, key: str) -> Iterator[None]:
    """Held by one process at a time, across machines for PostgreSQL (advisory lock), on one host otherwise."""
    if is_postgres(url):
        import psycopg

        number = int.from_bytes(hashlib.sha256(key.encode()).digest()[:8], "big", signed=True)
        try:
            connection = psycopg.connect(psycopg_dsn(url), autocommit=True, connect_timeout=10)
        except psycopg.Error as error:
            raise StorageError(f"cannot reach Optuna storage {tracking.redact(url)}: {one_line(error)}") from None
        with connection:
            connection.execute("SELECT pg_advisory_lock(%s)", (number,))
            try:
                yield
            finally:
                connection.execute("SELECT pg_advisory_unlock(%s)", (number,))
        return
    journal = journal_path(url)
    if journal is not None:
        lock_file = journal.with_name(journal.name + ".tune-lock")
    elif url.startswith("sqlite:///") and url != "sqlite:///:memory:":
        lock_file = Path(url.removeprefix("sqlite:///")).with_suffix(".tune-lock")
    else:
        yield
        return
    lock_file.parent.mkdir(parents=True, exist_ok=True)
    safe_key = hashlib.sha256(key.encode()).hexdigest()[:16]
    with open(f"{lock_file}.{safe_key}", "a") as handle:
        fcntl.flock(handle, fcntl.LOCK_EX)  # flock: separate opens exclude each other, threads included
        try:
            yield
        finally:
            fcntl.flock(handle, fcntl.LOCK_UN)


def psycopg_dsn(url: str) -> str:
    return "postgresql://" + url.split("://", 1)[1]


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
            journal.parent.mkdir(parents=True, exist_ok=True)
            backend = optuna.storages.journal.JournalFileBackend(
                str(journal), lock_obj=optuna.storages.journal.JournalFileOpenLock(str(journal))
            )
            return optuna.storages.JournalStorage(backend)
        engine = {"connect_args": {"timeout": 60}} if url.startswith("sqlite") else {}
        if is_postgres(url):
            engine = {"connect_args": {"connect_timeout": 10}, "pool_pre_ping": True}
        with storage_lock(url, "optuna-schema"):
            return optuna.storages.RDBStorage(
                sqlalchemy_url(url),
                engine_kwargs=engine,
                heartbeat_interval=heartbeat,
                grace_period=grace,
                heartbeat_stale_trial_callback=on_stale,
            )
    except StorageError:
        raise
    except Exception as error:  # SQLAlchemy, driver and URL errors: one line naming the URL
        raise StorageError(f"cannot open Optuna storage {tracking.redact(url)}: {one_line(error)}") from None


def sampler_seed(seed: int, invocation: int) -> int:
    """The first invocation of a study samples with `seed` itself (reproducible alone); every later or
    simultaneous one gets a seed of its own, so parallel workers do not draw the same parameters."""
    if invocation == 0:
        return seed
    return int(np.random.SeedSequence([seed, invocation]).generate_state(1)[0])
