"""Roll a newly archived champion into the running TorchServe without dropping a request.

TorchServe holds several versions of a model side by side. The rollout registers the new archive's
version from the model store, waits until its workers are READY, makes it the default version (from then
on `/predictions/<name>` goes to it), lets the old version finish what it already holds, and unregisters
it. The registry's `serving` alias then moves to the version that answers, so a reviewer sees it in MLflow.
The server's history (`history.py`) records each version rolled in; `rollback.py` runs the same steps back.

Each deployed version is verified (signature and every member), then registered from its own copy under
the server's store (`.serve/store/releases/`), so two versions never share an archive file or an unpacked
directory.
"""

from __future__ import annotations

import fcntl
import io
import time
import zipfile
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field, replace
from pathlib import Path

from training.infra.processes import wait_until
from training.serving import history
from training.serving.errors import ArchiveMissingError, ArchiveRefusedError, ManagementError, RolloutBusyError
from training.serving.serve import ARCHIVES, RUN_DIR, running_server
from training.serving.signing import member_digests
from training.serving.store import RELEASES, archive_info, bound_bytes, private_store
from training.serving.torchserve import Server
from training.tracking import mlflow_store, registry


@dataclass
class Rollout:
    name: str
    version: str
    previous: list[str]
    seconds: float
    registry: str  # what happened to the registry's `serving` alias
    notes: list[str] = field(default_factory=list)  # e.g. a newer champion waits


def deploy(
    name: str,
    run_dir: Path = RUN_DIR,
    model_store: Path = ARCHIVES,
    tracking_uri: str | None = None,
    drain_seconds: float = 1.0,
    mark_registry: bool = True,
    trust_unsigned: bool = False,
    allow_older: bool = False,
) -> Rollout:
    """Roll `model_store/<name>.mar` in: verified, and bound to the registry at `tracking_uri` (its latest build of a
    version not older than `@serving`, unless `allow_older`: `binding.py`)."""
    run_dir, model_store = Path(run_dir).resolve(), Path(model_store).resolve()
    with rollout_lock(run_dir, name):
        server = running_server(run_dir)
        archive = model_store / f"{name}.mar"
        if not archive.exists():
            known = ", ".join(sorted(p.stem for p in model_store.glob("*.mar"))) or "none"
            raise ArchiveMissingError(f"no archive {archive}: `make archive NAME={name}` first (archives: {known})")
        data, notes = bound_bytes(archive, tracking_uri, trust_unsigned, allow_older)  # what the server reads
        version = str(archive_info(data)["version"])
        served = history.versions(run_dir, name) or served_versions(server, name)  # a server from before histories
        after = history.after_rollout(served, version)
        rollout = roll(server, run_dir, name, version, data, after, drain_seconds, tracking_uri, mark_registry)
        return replace(rollout, notes=notes)


def roll(
    server: Server,
    run_dir: Path,
    name: str,
    version: str,
    data: bytes,
    history_after: list[str],
    drain_seconds: float,
    tracking_uri: str | None,
    mark_registry: bool,
) -> Rollout:
    """Serve `version` of `name`, from its verified bytes, in place of every other version: register it beside
    them, wait for a READY worker, make it the default, record `history_after`, let the others drain, unregister
    them and move `@serving`. A deploy rolls forward with it, a rollback back."""
    start = time.monotonic()
    served = served_versions(server, name)
    if version not in served:
        register(server, name, version, release_copy(data, run_dir, name, version))
    elif not same_contents(data, served_copy(run_dir, name, version)):
        raise ArchiveRefusedError(
            f"{name} version {version} is served already, built differently (archived again with other settings?): "
            "restart the server (`make stop`, `make serve`) to serve this build"
        )
    set_default(server, name, version)
    history.record(run_dir, name, history_after)  # from here on, `version` answers
    old = [v for v in served if v != version]
    if old:
        drain(server, name, old, drain_seconds)
    for previous in old:
        status, body, _ = server.manage("DELETE", f"/models/{name}/{previous}")
        if status != 200:
            raise ManagementError(
                f"version {version} serves {name}, but unregistering version {previous} failed: {body}"
            )
    registry = mark_serving(name, version, tracking_uri) if mark_registry else "not updated"
    return Rollout(name, version, old, time.monotonic() - start, registry)


@contextmanager
def rollout_lock(run_dir: Path, name: str) -> Iterator[None]:
    """One deploy or rollback of `name` at a time on a server: a second is refused at once (rather than run after
    the first, from a state its user did not see), and the lock goes with its process, however it ends."""
    if not run_dir.is_dir():  # no server ran from here: the rollout itself says so
        yield
        return
    with open(run_dir / f"rollout-{name}.lock", "a") as handle:
        try:
            fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            raise RolloutBusyError(
                f"another deploy or rollback of {name} is under way on the server in {run_dir}: "
                "run this one again once it has finished"
            ) from None
        try:
            yield
        finally:
            fcntl.flock(handle, fcntl.LOCK_UN)


def served_versions(server: Server, name: str) -> list[str]:
    return [str(v["modelVersion"]) for v in server.versions(name)]


def served_copy(run_dir: Path, name: str, version: str) -> Path | None:
    """The verified copy the server registered `version` from: the store's own, or a rollout's release."""
    store = private_store(run_dir)
    release = store / RELEASES / f"{name}-v{version}.mar"
    if release.exists():
        return release
    started = store / f"{name}.mar"
    return started if started.exists() and str(archive_info(started)["version"]) == version else None


def same_contents(data: bytes, copy: Path | None) -> bool:
    """Whether two archives hold the same members with the same bytes (their zip framing aside)."""
    if copy is None:
        return False
    with zipfile.ZipFile(io.BytesIO(data)) as new, zipfile.ZipFile(copy) as old:
        return member_digests(new) == member_digests(old)


def drain(server: Server, name: str, versions: list[str], settle_seconds: float, timeout: float = 60) -> None:
    """Wait until the old versions' queues are empty, then `settle_seconds` for the batch in flight."""

    def drained() -> bool:
        old = [v for v in server.versions(name) if str(v["modelVersion"]) in versions]
        return not any(v.get("jobQueueStatus", {}).get("pendingRequests", 0) for v in old)

    wait_until(drained, timeout, interval=0.1)
    time.sleep(settle_seconds)


def release_copy(data: bytes, run_dir: Path, name: str, version: str) -> str:
    """Write the verified archive to the server's store as releases/<name>-v<version>.mar and return its
    file:// URL (inside `allowed_urls`). TorchServe copies a registered URL into its store's top folder and refuses
    a name already there; a copy left by a TorchServe that died with the version registered (a fleet's replica the
    keeper restarted) would block registering the version again, so it goes first: nothing registers it now."""
    store = private_store(run_dir)
    target = store / RELEASES / f"{name}-v{version}.mar"
    target.write_bytes(data)
    (store / target.name).unlink(missing_ok=True)
    return target.as_uri()


def register(server: Server, name: str, version: str, url: str) -> None:
    status, body, _ = server.manage("POST", "/models", url=url, synchronous="true", initial_workers=1)
    if status != 200:
        raise ManagementError(f"registering {name} version {version} from {url} failed: HTTP {status} {body}")
    if not wait_until(lambda: server.workers_ready(name, version), timeout=180, interval=0.2):
        server.manage("DELETE", f"/models/{name}/{version}")
        raise ManagementError(f"{name} version {version} had no READY worker within 180 s; it was unregistered")


def set_default(server: Server, name: str, version: str) -> None:
    status, body, _ = server.manage("PUT", f"/models/{name}/{version}/set-default")
    if status != 200:
        raise ManagementError(f"making version {version} the default of {name} failed: HTTP {status} {body}")


def mark_serving(name: str, version: str, tracking_uri: str | None) -> str:
    """Move the registry's `serving` alias to `version`; the rollout stands even if the registry is elsewhere."""
    from mlflow.exceptions import MlflowException

    try:
        client = mlflow_store.configure(tracking_uri)
        registry.mark_version(client, name, version, registry.SERVING)
    except MlflowException as error:
        return f"not updated ({error.message.splitlines()[0][:120]})"
    return f"@{registry.SERVING} -> version {version}"
