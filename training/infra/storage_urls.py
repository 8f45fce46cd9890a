"""Storage URLs (SQLite, PostgreSQL, journal files): their kinds, their driver spellings, and a form fit to log."""

from __future__ import annotations

import re
import urllib.parse
from pathlib import Path


class StorageError(RuntimeError):
    """A storage URL that cannot be used: one line, naming the URL without its password."""


# Keys whose values are secrets wherever they appear: a URL's query (`?password=`, `&sslpassword=`) or a libpq
# key=value string (`host=db password=...`); matched on the key decoded, so `pass%77ord` counts too.
SECRET_KEY = re.compile(r"pass|pwd|secret|token", re.IGNORECASE)
KEY_VALUE = re.compile(r"(?P<key>[\w%.+-]+)(?P<eq>\s*=\s*)(?P<value>'(?:[^'\\]|\\.)*'|[^\s&;#]*)")
HIDDEN = "***"
URL = re.compile(r"[\w+.-]+://[^\s'\"]+")  # a URL inside a message, up to a space or a quote


def redact(url: str) -> str:
    """A storage or tracking URL (or a libpq key=value string) without any password, fit to print and log:
    `user:pass@` becomes `user:***@`, and the value of every key naming a password, secret or token is `***`."""
    scheme, separator, rest = url.partition("://")
    if separator:  # the user info ends at the last `@` before the query (a password may hold an `@` or a `/`)
        userinfo, at, after = rest.partition("?")[0].partition("#")[0].rpartition("@")
        if at and ":" in userinfo and not userinfo.startswith("/"):
            rest = f"{userinfo.split(':', 1)[0]}:{HIDDEN}@{rest[len(userinfo) + 1 :]}"
        url = f"{scheme}://{rest}"
    return KEY_VALUE.sub(_hide_secret_value, url)


def redact_text(text: str) -> str:
    """`text` (an error's message) with every URL in it redacted, and every secret key's value hidden."""
    return KEY_VALUE.sub(_hide_secret_value, URL.sub(lambda m: redact(m[0]), text))


def _hide_secret_value(match: re.Match) -> str:
    if not SECRET_KEY.search(urllib.parse.unquote(match["key"])):
        return match[0]
    return f"{match['key']}{match['eq']}{HIDDEN}"


def journal_path(url: str) -> Path | None:
    """A journal file (`journal:///abs/path`, `journal://rel/path` or a bare file path), else None."""
    if url.startswith("journal://"):
        return Path(url.removeprefix("journal://"))
    if "://" not in url:
        return Path(url)
    return None


def sqlite_path(url: str) -> Path | None:
    """The file of a SQLite URL (`sqlite:///path`), else None (`:memory:` included)."""
    if not url.startswith("sqlite:///") or url == "sqlite:///:memory:":
        return None
    return Path(url.removeprefix("sqlite:///"))


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
    return redact_text(f"{type(error).__name__}: {text[0] if text else ''}".strip())
