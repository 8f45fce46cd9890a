"""Storage URLs (SQLite, PostgreSQL, journal files): their kinds, their driver spellings, and a form fit to log."""

from __future__ import annotations

from pathlib import Path


class StorageError(RuntimeError):
    """A storage URL that cannot be used: one line, naming the URL without its password."""


def redact(url: str) -> str:
    """A storage URL without its password, fit to log."""
    if "@" not in url or "://" not in url:
        return url
    scheme, rest = url.split("://", 1)
    credentials, host = rest.rsplit("@", 1)
    user = credentials.split(":", 1)[0]
    return f"{scheme}://{user}:***@{host}"


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


def psycopg_dsn(url: str) -> str:
    return "postgresql://" + url.split("://", 1)[1]


def one_line(error: BaseException) -> str:
    text = str(getattr(error, "orig", None) or error).strip().splitlines()
    return f"{type(error).__name__}: {text[0] if text else ''}".strip()
