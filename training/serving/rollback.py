"""Return the running TorchServe to the version of a model it served before the last rollout, dropping no request.

The rollout in reverse, by the same steps (`deploy.roll`): the earlier version is registered again from its
verified copy in the server's store (the archive `make serve` started with, or a rollout's release; both are
kept while the server runs), verified again as `make deploy` verifies an archive, waited for until READY and
made the default; the version it replaces drains and is unregistered, and the registry's `serving` alias moves
back. The server's history (`history.py`) loses its last version, so a second rollback goes back one rollout
further, and says so when nothing earlier is recorded.
"""

from __future__ import annotations

from pathlib import Path

from training.serving import history
from training.serving.deploy import Rollout, roll, rollout_lock, served_copy, served_versions
from training.serving.errors import ArchiveMissingError, ArchiveRefusedError, HistoryError
from training.serving.serve import RUN_DIR, running_server
from training.serving.store import STORE, archive_info, verified_bytes


def rollback(
    name: str,
    run_dir: Path = RUN_DIR,
    tracking_uri: str | None = None,
    drain_seconds: float = 1.0,
    mark_registry: bool = True,
    trust_unsigned: bool = False,
) -> Rollout:
    run_dir = Path(run_dir).resolve()
    with rollout_lock(run_dir, name):
        return rollback_locked(name, run_dir, tracking_uri, drain_seconds, mark_registry, trust_unsigned)


def rollback_locked(
    name: str, run_dir: Path, tracking_uri: str | None, drain_seconds: float, mark_registry: bool, trust_unsigned: bool
) -> Rollout:
    server = running_server(run_dir)
    after = history.before_last_rollout(run_dir, name)
    current, previous = history.versions(run_dir, name)[-1], after[-1]
    data = verified_copy(run_dir, name, previous, trust_unsigned)
    served = served_versions(server, name)
    if current not in served:
        raise HistoryError(
            f"{history.history_path(run_dir)} records {name} version {current} as served, but the server serves "
            f"{', '.join(served) or 'no version of it'}: not rolling back from a state this server did not record"
        )
    return roll(server, run_dir, name, previous, data, after, drain_seconds, tracking_uri, mark_registry)


def verified_copy(run_dir: Path, name: str, version: str, trust_unsigned: bool) -> bytes:
    """The bytes of the store's copy of `name` `version`, verified again (signature, every member, its name and
    version): the store is the server's, but what is registered is checked where it is read."""
    copy = served_copy(run_dir, name, version)
    if copy is None:
        raise ArchiveMissingError(
            f"the verified copy of {name} version {version} is missing from {run_dir / STORE}: "
            "it cannot be registered again (deploy that version's archive instead: `make deploy`)"
        )
    data = verified_bytes(copy, trust_unsigned, built_as=name)
    found = str(archive_info(data)["version"])
    if found != version:
        raise ArchiveRefusedError(f"{copy} holds {name} version {found}, not version {version}: not registering it")
    return data
