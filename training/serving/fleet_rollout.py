"""`make deploy` and `make rollback` across a fleet: one replica at a time, each out of rotation while it swaps.

Each replica in turn is drained at the balancer (no new requests; those in flight finish), swapped by the same steps
a single server takes (`deploy.roll`: register, READY, default, drain, unregister), checked (its new version is the
default with a READY worker, its health check passes) and put back in rotation; then the next. A replica is not
taken out of rotation when no other is in it: TorchServe's own swap drops nothing either. The registry's `@serving`
moves once the last replica serves the new version. If a replica fails its swap, the replicas already moved are
rolled back to the version they served, so the fleet does not stay split between two versions, and the error says
what happened.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterator
from contextlib import ExitStack, contextmanager
from dataclasses import replace
from pathlib import Path

from training.infra.processes import wait_until
from training.serving import balancer, history
from training.serving.deploy import Rollout, mark_serving, roll, rollout_lock, served_versions
from training.serving.errors import ArchiveMissingError, ManagementError, ServingError
from training.serving.fleet import Fleet, FleetReplica, running
from training.serving.rollback import verified_copy
from training.serving.serve import ARCHIVES, RUN_DIR
from training.serving.store import archive_info, bound_bytes

DRAIN_TIMEOUT_S = 60


def deploy(
    name: str,
    run_dir: Path = RUN_DIR,
    model_store: Path = ARCHIVES,
    tracking_uri: str | None = None,
    drain_seconds: float = 1.0,
    trust_unsigned: bool = False,
    allow_older: bool = False,
) -> Rollout:
    """Roll `model_store/<name>.mar` (verified and bound to the registry, as `make deploy` checks it) into every
    replica of the fleet running from `run_dir`, one at a time."""
    fleet = running(run_dir)
    archive = Path(model_store).resolve() / f"{name}.mar"
    if not archive.exists():
        raise ArchiveMissingError(f"no archive {archive}: `make archive NAME={name}` first")
    data, notes = bound_bytes(archive, tracking_uri, trust_unsigned, allow_older)
    version = str(archive_info(data)["version"])

    def step(replica: FleetReplica) -> Rollout:
        return forward(fleet, replica, name, version, data, drain_seconds)

    rollout = across(fleet, name, version, step, tracking_uri, trust_unsigned)
    return replace(rollout, notes=notes)


def rollback(
    name: str, run_dir: Path = RUN_DIR, tracking_uri: str | None = None, trust_unsigned: bool = False
) -> Rollout:
    """Return every replica to the version it served before the last rollout, one at a time."""
    fleet = running(run_dir)
    lasts = {tuple(history.before_last_rollout(Path(r.run_dir), name)) for r in fleet.replicas}
    if len(lasts) != 1:
        raise ServingError(f"the replicas' histories of {name} differ ({sorted(lasts)}): roll each forward first")
    after = list(lasts.pop())

    def step(replica: FleetReplica) -> Rollout:
        data = verified_copy(Path(replica.run_dir), name, after[-1], trust_unsigned)
        return roll(fleet.server(replica), Path(replica.run_dir), name, after[-1], data, after, 1.0, None, False)

    return across(fleet, name, after[-1], step, tracking_uri, trust_unsigned)


def forward(
    fleet: Fleet, replica: FleetReplica, name: str, version: str, data: bytes, drain_seconds: float = 1.0
) -> Rollout:
    """Roll `version` (its verified bytes) into one replica, its history extended (a deploy's step, a promotion's)."""
    server, replica_dir = fleet.server(replica), Path(replica.run_dir)
    after = history.after_rollout(history.versions(replica_dir, name) or served_versions(server, name), version)
    return roll(server, replica_dir, name, version, data, after, drain_seconds, None, False)


def across(
    fleet: Fleet,
    name: str,
    version: str,
    step: Callable[[FleetReplica], Rollout],
    tracking_uri: str | None,
    trust_unsigned: bool,
) -> Rollout:
    """Run `step` on each replica in turn, out of rotation, then move `@serving`; undo the moved ones on failure."""
    start, moved, previous = time.monotonic(), [], set()
    with ExitStack() as locks:
        for replica in fleet.replicas:
            locks.enter_context(rollout_lock(Path(replica.run_dir), name))
        for replica in fleet.replicas:
            before = history.versions(Path(replica.run_dir), name)
            try:
                with out_of_rotation(fleet, replica):
                    done = step(replica)
                    check_serves(fleet, replica, name, version)
            except ServingError as error:
                undone = undo(fleet, name, moved, trust_unsigned)
                raise ManagementError(
                    f"rolling {name} version {version} stopped at replica {replica.name}: {error}; {undone}"
                ) from error
            moved.append((replica, before))
            previous.update(done.previous)
    registry = mark_serving(name, version, tracking_uri)
    return Rollout(name, version, sorted(previous), time.monotonic() - start, registry)


@contextmanager
def out_of_rotation(fleet: Fleet, replica: FleetReplica) -> Iterator[None]:
    """`replica` drained at the balancer for the block (when another replica is in rotation), then back in it."""
    stats = balancer.stats(fleet.balancer_dir)
    others_up = any(row["status"] == "UP" for name, row in stats.items() if name != replica.name)
    if not others_up:
        yield
        return
    balancer.set_state(fleet.balancer_dir, replica.name, "drain")
    try:
        wait_until(lambda: int(balancer.stats(fleet.balancer_dir)[replica.name]["scur"]) == 0, DRAIN_TIMEOUT_S, 0.05)
        yield
    finally:
        balancer.set_state(fleet.balancer_dir, replica.name, "ready")
    if not wait_until(lambda: balancer.stats(fleet.balancer_dir)[replica.name]["status"] == "UP", 60, 0.1):
        raise ManagementError(f"replica {replica.name} did not pass its health check within 60 s of its swap")


def check_serves(fleet: Fleet, replica: FleetReplica, name: str, version: str) -> None:
    server = fleet.server(replica)
    defaults = [str(v["modelVersion"]) for v in server.versions(name) if v.get("isDefault", True)]
    if defaults != [version] or not server.workers_ready(name, version):
        raise ManagementError(f"replica {replica.name} serves {name} {defaults or 'nothing'}, not version {version}")


def undo(fleet: Fleet, name: str, moved: list[tuple[FleetReplica, list[str]]], trust_unsigned: bool) -> str:
    """Return the replicas already moved to the versions they served; what was done, in words."""
    if not moved:
        return "no replica had moved"
    for replica, before in moved:
        data = verified_copy(Path(replica.run_dir), name, before[-1], trust_unsigned)
        with out_of_rotation(fleet, replica):
            roll(fleet.server(replica), Path(replica.run_dir), name, before[-1], data, before, 1.0, None, False)
    return f"{', '.join(r.name for r, _ in moved)} went back to version {moved[0][1][-1]}"
