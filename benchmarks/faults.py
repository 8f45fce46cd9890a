"""Faults a fleet must outlive, injected under a steady load: what test_fleet asserts and the fleet row reports.

`under_fault` runs a `SteadyLoad` on the fleet's front door, injects one fault into its first replica, waits until
the replica is back in rotation (its TorchServe restarted by the keeper, its worker by TorchServe, or the stopped
process continued), and returns every answer the load got with the fault's timings.
"""

from __future__ import annotations

import os
import signal
import time
from dataclasses import dataclass
from pathlib import Path

import psutil

from benchmarks.steady_load import Outcome, SteadyLoad
from training.infra.processes import wait_until
from training.serving import balancer, fleet, serve

FAULTS = ("kill -9 of a replica's frontend", "kill -9 of a worker", "a SIGSTOPped replica")
STOPPED_S = 3.0  # how long a SIGSTOPped replica stays hung once out of rotation


@dataclass
class FaultRun:
    fault: str
    outcome: Outcome
    hit: float  # monotonic time of the fault
    back: float  # monotonic time the replica was back in rotation

    @property
    def p99_ms(self) -> float:
        """The p99 latency of the requests that ended from the fault until the replica was back."""
        return self.outcome.p99_ms(self.hit, self.back)


def state(running: fleet.Fleet, name: str) -> str:
    return balancer.stats(running.balancer_dir)[name]["status"]


def all_up(running: fleet.Fleet, timeout: float = 180) -> bool:
    return wait_until(lambda: all(state(running, r.name) == "UP" for r in running.replicas), timeout, 0.2)


def java_of(replica_dir: Path) -> psutil.Process:
    launcher = psutil.Process(int((replica_dir / "server.pid").read_text()))
    return next(p for p in launcher.children(recursive=True) if "java" in p.name())


def worker_pids(running: fleet.Fleet, replica: fleet.FleetReplica, model: str) -> set[int]:
    """The pids of the replica's workers serving `model`, as its management API names them."""
    return {int(w["pid"]) for w in running.server(replica).workers(model) if w.get("pid")}


def inject(running: fleet.Fleet, fault: str, model: str) -> None:
    """Inflict `fault` on the first replica and return once it has had its effect (out of rotation, restarted)."""
    victim = running.replicas[0]
    if fault == FAULTS[0]:
        os.kill(java_of(Path(victim.run_dir)).pid, signal.SIGKILL)
        assert wait_until(lambda: state(running, victim.name) != "UP", 10, 0.1), "the replica stayed in rotation"
        assert wait_until(lambda: serve.running_pid(Path(victim.run_dir)), 60, 0.2), "the keeper did not restart it"
    elif fault == FAULTS[1]:
        (killed,) = worker_pids(running, victim, model)
        os.kill(killed, signal.SIGKILL)
        assert wait_until(lambda: worker_pids(running, victim, model) - {killed}, 30, 0.2), "no new worker"
    elif fault == FAULTS[2]:
        stopped = java_of(Path(victim.run_dir))
        stopped.suspend()
        try:
            assert wait_until(lambda: state(running, victim.name) != "UP", 10, 0.1), "a hung replica stayed in rotation"
            time.sleep(STOPPED_S)
        finally:
            stopped.resume()
    else:
        raise ValueError(f"no fault {fault!r}; one of {FAULTS}")


def under_fault(
    running: fleet.Fleet, fault: str, requests: list[tuple[str, bytes]], concurrency: int, model: str = "nw-sine"
) -> FaultRun:
    """`fault` injected into the first replica while `concurrency` connections keep sending `requests`."""
    assert all_up(running), "a replica was out of rotation before the fault"
    front = fleet.front(Path(running.run_dir))
    with SteadyLoad(front.inference_url, front.token(), requests, concurrency) as load:
        time.sleep(1)
        hit = time.monotonic()
        inject(running, fault, model)
        assert all_up(running), balancer.stats(running.balancer_dir)[running.replicas[0].name]
        back = time.monotonic()
        time.sleep(1)  # served by every replica again
    return FaultRun(fault, load.outcome, hit, back)
