"""The fleet's keeper (`python -m training keeper`, started by `make serve REPLICAS=N`): it restarts a replica whose
TorchServe died, at the versions it served, and keeps every replica's token fresh at the balancer.

TorchServe restarts a worker that dies; nothing restarts TorchServe itself, nor the fleet's gRPC front
(`oip_grpc.py`), which the keeper starts again too. Each second the keeper looks at every
replica: one whose process is gone is started again from its own run directory (`serve.restart`: its config, ports
and verified store as they were), and the balancer is given its new token; the balancer's health checks put it back
in rotation once it answers. A replica's token is refreshed (TorchServe's management API, with its API key) when
less than `REFRESH_BEFORE` of it is left, and handed to the balancer at once. It logs one line per event, never a
token.
"""

from __future__ import annotations

import logging
import time
from datetime import UTC, datetime, timedelta
from pathlib import Path

from training.serving import balancer, canary, fleet, oip_grpc, serve
from training.serving.errors import ServingError

REFRESH_BEFORE = timedelta(minutes=10)
log = logging.getLogger("keeper")


def keep(run_dir: Path, interval: float = 1.0) -> None:
    """Look after the fleet running from `run_dir` until it is stopped."""
    state = fleet.running(run_dir)
    log.info("keeping %d replicas of the fleet in %s", len(state.replicas), run_dir)
    gated: dict[str, float] = {}  # canary -> when the gate last looked at it
    held: set[str] = set()  # replicas this keeper took out of rotation to restart, until they are whole again
    while True:
        for replica in state.replicas:
            try:
                look_after(state, replica, held)
            except (ServingError, OSError, KeyError, ValueError) as error:
                log.warning("%s: %s", replica.name, error)
        if not oip_grpc.running(run_dir):
            log.warning("the gRPC front is not running; starting it again")
            try:
                oip_grpc.start(run_dir, state.grpc, oip_grpc.Upstream(f"http://{state.front}", front_door=True))
            except (ServingError, OSError) as error:
                log.warning("the gRPC front: %s", error)
        for running in canary.running_canaries(run_dir):
            if time.monotonic() - gated.get(running.name, 0.0) >= running.gate["interval_s"]:
                gated[running.name] = time.monotonic()
                gate(run_dir, running)
        time.sleep(interval)


def gate(run_dir: Path, running: canary.Canary) -> None:
    label = f"canary {running.name} version {running.version}"
    try:
        reason = canary.check(run_dir, running)
    except (ServingError, OSError, KeyError, ValueError) as error:
        log.warning("%s: the gate could not look: %s", label, error)
        return
    if reason:
        log.warning("%s aborted: %s", label, reason)


def look_after(state: fleet.Fleet, replica: fleet.FleetReplica, held: set[str]) -> None:
    run_dir = Path(replica.run_dir)
    if not serve.running_pid(run_dir):
        log.warning("%s: TorchServe is not running; restarting it", replica.name)
        started = time.monotonic()
        balancer.set_state(state.balancer_dir, replica.name, "maint")  # back only once it holds every canary too
        held.add(replica.name)
        server = serve.restart(run_dir)
        balancer.set_replica_token(state.balancer_dir, replica.name, server.token())
        log.info("%s: restarted in %.1f s", replica.name, time.monotonic() - started)
    server = state.server(replica)
    if replica.name in held:  # restarted: each running canary's version registered again, then back in rotation
        for running in canary.running_canaries(Path(state.run_dir)):
            canary.register_on(server, run_dir, running)
        balancer.set_state(state.balancer_dir, replica.name, "ready")
        held.discard(replica.name)
        log.info("%s: back in rotation once its health check passes", replica.name)
        return
    expiry = server.token_expiry()
    if expiry is not None and expiry - datetime.now(UTC) < REFRESH_BEFORE:
        balancer.set_replica_token(state.balancer_dir, replica.name, server.refresh_token())
        log.info("%s: token refreshed (it expired at %s)", replica.name, expiry.strftime("%H:%M:%S UTC"))
