"""Archives bound to their registry version: `make serve` and `make deploy` serve a signed archive only when it is
the registry's latest build of the version it names (the version's `archive_sha256` tag, set by `make archive`), and
not one older than the version `@serving` names unless asked to go back (`make rollback`, or `ALLOW_OLDER=1`); one
older than `@champion` is served with a line saying a newer champion waits.

A signature says who built an archive; the registry says which build of which version is current, so an archive
signed long ago (an older version, or the same one built with other settings) cannot be replayed.
"""

from __future__ import annotations

import hashlib

from mlflow import MlflowClient
from mlflow.exceptions import MlflowException

from training.infra import storage_urls
from training.serving.errors import ArchiveRefusedError
from training.tracking import registry

ARCHIVE_SHA256 = "archive_sha256"  # a version's tag: the sha256 of its latest build


class ArchiveUnboundError(ArchiveRefusedError):
    """An archive that is not the registry's latest build of the version it names, or names no registered version."""


class ArchiveDowngradeError(ArchiveRefusedError):
    """An archive older than the version `@serving` names, served without being asked to go back."""


def build_tag(name: str, archive_name: str) -> str:
    """The version's tag holding its latest build's sha256: `archive_sha256`, or a benchmark variant's own."""
    return ARCHIVE_SHA256 if archive_name == name else f"{ARCHIVE_SHA256}.{archive_name}"


def check_bound(client: MlflowClient, data: bytes, info: dict, where: str, allow_older: bool = False) -> list[str]:
    """Refuse the archive `data` (its `model_info.json` is `info`; named `where` in errors) unless it is the registry's
    latest build of its version and, unless `allow_older`, not older than `@serving`; returns the lines to show
    (a newer champion waits)."""
    name, version = info["name"], str(info["version"])
    at = storage_urls.redact(client.tracking_uri)
    try:
        registered = client.get_model_version(name, version)
    except MlflowException as error:
        if error.error_code != "RESOURCE_DOES_NOT_EXIST":
            raise ArchiveUnboundError(f"cannot check {where} against the registry at {at}: {error.message}") from None
        raise ArchiveUnboundError(
            f"{where} names {name} version {version}, which the registry at {at} does not hold: not serving it"
        ) from None
    sha, latest = hashlib.sha256(data).hexdigest(), registered.tags.get(build_tag(name, info.get("archive", name)))
    if sha != latest:
        raise ArchiveUnboundError(
            f"{where} (sha256 {sha}) is not the registry's latest build of {name} version {version} "
            f"({latest or 'none recorded'}): build it again with `make archive NAME={name}`"
        )
    serving = alias_version(client, name, registry.SERVING)
    if serving is not None and int(version) < serving and not allow_older:
        raise ArchiveDowngradeError(
            f"{where} is {name} version {version}, older than version {serving} that @serving names: "
            f"`make rollback NAME={name}` goes back, or serve it on purpose with ALLOW_OLDER=1 (--allow-older)"
        )
    champion = alias_version(client, name, registry.CHAMPION)
    if champion is not None and int(version) < champion:
        return [
            f"{name}: version {version} is served and a newer champion waits, version {champion} "
            f"(`make archive NAME={name}`, then `make deploy NAME={name}`)"
        ]
    return []


def alias_version(client: MlflowClient, name: str, alias: str) -> int | None:
    try:
        return int(client.get_model_version_by_alias(name, alias).version)
    except MlflowException:
        return None
