"""`storage_lock`: one holder at a time per (storage, key): a PostgreSQL advisory lock across machines, a file
lock beside a SQLite database or journal file on one host.

Several workers may open the same storage at the same moment on an empty database. Creating Optuna's or
MLflow's tables is not safe to race on PostgreSQL (`pg_type_typname_nsp_index`, `alembic_version_pkc`), so it
happens under this lock; the same lock serializes each study's conclusion.
"""

from __future__ import annotations

import fcntl
import hashlib
import os
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from training.infra.storage_urls import StorageError, is_postgres, journal_path, one_line, psycopg_dsn, redact


@contextmanager
def storage_lock(url: str, key: str) -> Iterator[None]:
    """Held by one process at a time, across machines for PostgreSQL (advisory lock), on one host otherwise."""
    if is_postgres(url):
        import psycopg

        number = int.from_bytes(hashlib.sha256(key.encode()).digest()[:8], "big", signed=True)
        try:
            connection = psycopg.connect(psycopg_dsn(url), autocommit=True, connect_timeout=10)
        except psycopg.Error as error:
            raise StorageError(f"cannot reach storage {redact(url)}: {one_line(error)}") from None
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
    descriptor = os.open(f"{lock_file}.{safe_key}", os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o600)  # beside a store
    with os.fdopen(descriptor, "a") as handle:
        fcntl.flock(handle, fcntl.LOCK_EX)  # flock: separate opens exclude each other, threads included
        try:
            yield
        finally:
            fcntl.flock(handle, fcntl.LOCK_UN)
