"""`make canary NAME=… PERCENT=10`, `make promote NAME=…`, `make abort NAME=…`: a new version on a share of a
fleet's traffic, with a gate that aborts it on its own when it does worse than the version serving.

The canary's archive is verified and bound to the registry as `make deploy` checks it, then registered on every
replica beside the serving version (not the default: `/predictions/<name>` still reaches the serving one), and the
balancer sends `PERCENT` of the model's unversioned predictions and explanations to the canary's versioned route
(`balancer.set_canary`, at run time). The Open Inference Protocol's routes keep reaching the serving version
(TorchServe 0.12 has no versioned OIP route). `promote` rolls the canary's version into every replica, one at a time
(`fleet_rollout`), and moves `@serving`; `abort` returns all traffic at once, then unregisters the canary version.

The gate (run by the fleet's keeper every `interval_s`) reads the handler's metrics from Prometheus (`make monitor`)
over the last `window_s` for both versions and aborts the canary when, with at least `min_requests` answered by it,
its error ratio exceeds the serving version's by more than `max_error_increase`, its p99 handler time exceeds
`max_p99_ratio` times the serving version's (plus `p99_slack_ms`), or its share of novel inputs (beyond the held-out
data's 0.99 quantile) exceeds the serving version's by more than `max_novelty_increase`. The state lives in
`.serve/canary-<name>.json`; an aborted or promoted canary keeps its file, with the reason, until the next canary.
"""

from __future__ import annotations

import json
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path

from training.infra import places
from training.infra.processes import write_whole
from training.serving import balancer, fleet_rollout, history, monitor
from training.serving.deploy import register, release_copy, served_versions
from training.serving.errors import ArchiveMissingError, ServingError
from training.serving.fleet import Fleet, running
from training.serving.rollback import verified_copy
from training.serving.serve import ARCHIVES, RUN_DIR
from training.serving.store import archive_info, bound_bytes

RUNNING, ABORTED, PROMOTED = "running", "aborted", "promoted"


class CanaryError(ServingError):
    """A canary cannot be started, promoted or aborted as asked."""


@dataclass(frozen=True)
class Gate:
    interval_s: float = 10
    window_s: float = 60
    min_requests: int = 20
    max_error_increase: float = 0.02
    max_p99_ratio: float = 2.0
    p99_slack_ms: float = 10.0
    max_novelty_increase: float = 0.10


@dataclass
class Canary:
    name: str
    version: str
    serving: str
    percent: int
    started: float
    monitor_url: str
    monitor_dir: str
    gate: dict = field(default_factory=lambda: asdict(Gate()))
    status: str = RUNNING
    reason: str = ""


@dataclass(frozen=True)
class Figures:
    requests: float
    error_ratio: float
    p99_ms: float
    novel_share: float


def state_path(run_dir: Path, name: str) -> Path:
    return Path(run_dir) / f"canary-{name}.json"


def read(run_dir: Path, name: str) -> Canary | None:
    path = state_path(run_dir, name)
    return Canary(**json.loads(path.read_text())) if path.exists() else None


def write(run_dir: Path, canary: Canary) -> None:
    write_whole(state_path(run_dir, canary.name), json.dumps(asdict(canary), indent=1).encode())


def canaries(run_dir: Path) -> list[Canary]:
    """Every canary recorded in `run_dir`, running or ended, by model name."""
    found = (read(run_dir, p.stem.removeprefix("canary-")) for p in sorted(Path(run_dir).glob("canary-*.json")))
    return [c for c in found if c is not None]


def running_canaries(run_dir: Path) -> list[Canary]:
    return [c for c in canaries(run_dir) if c.status == RUNNING]


def start(
    name: str,
    percent: int,
    run_dir: Path = RUN_DIR,
    model_store: Path = ARCHIVES,
    tracking_uri: str | None = None,
    trust_unsigned: bool = False,
    allow_older: bool = False,
    monitor_url: str | None = None,
    monitor_dir: Path = places.MONITOR_DIR,
    gate: Gate = Gate(),
) -> Canary:
    """Register `model_store/<name>.mar` on every replica beside the serving version and send it `percent` % of
    the model's traffic; the gate watches it from then on (Prometheus at `monitor_url`, `make monitor`'s)."""
    if not 1 <= percent <= 99:
        raise CanaryError(f"PERCENT must be 1..99, not {percent}: 100 is `make deploy`, 0 is `make abort`")
    fleet = running(run_dir)
    current = read(run_dir, name)
    if current is not None and current.status == RUNNING:
        raise CanaryError(f"{name} version {current.version} is a canary already: `make promote` or `make abort` it")
    monitor_url = monitor_url or monitor.running_url(Path(monitor_dir))
    archive = Path(model_store).resolve() / f"{name}.mar"
    if not archive.exists():
        raise ArchiveMissingError(f"no archive {archive}: `make archive NAME={name}` first")
    data, _ = bound_bytes(archive, tracking_uri, trust_unsigned, allow_older)
    version = str(archive_info(data)["version"])
    serving = {version for r in fleet.replicas for version in history.versions(Path(r.run_dir), name)[-1:]}
    if serving == {version}:
        raise CanaryError(f"{name} version {version} is the version serving: archive a new champion first")
    if len(serving) != 1:
        raise CanaryError(f"the replicas serve different versions of {name} ({sorted(serving)}): deploy one first")
    for replica in fleet.replicas:
        server = fleet.server(replica)
        if version not in served_versions(server, name):
            register(server, name, version, release_copy(data, Path(replica.run_dir), name, version))
    canary = Canary(name, version, serving.pop(), percent, time.time(), monitor_url, str(monitor_dir), asdict(gate))
    write(run_dir, canary)
    balancer.set_canary(fleet.balancer_dir, name, version, percent)
    return canary


def promote(name: str, run_dir: Path = RUN_DIR, tracking_uri: str | None = None, trust_unsigned: bool = False):
    """Roll the canary's version into every replica (one at a time) and move `@serving`; the canary ends."""
    canary = running_canary(run_dir, name)
    fleet = running(run_dir)

    def step(replica):
        data = verified_copy(Path(replica.run_dir), name, canary.version, trust_unsigned)
        return fleet_rollout.forward(fleet, replica, name, canary.version, data)

    rollout = fleet_rollout.across(fleet, name, canary.version, step, tracking_uri, trust_unsigned)
    balancer.set_canary(fleet.balancer_dir, name, None)
    canary.status, canary.reason = PROMOTED, f"promoted: version {canary.version} serves every replica"
    write(run_dir, canary)
    return rollout


def abort(name: str, run_dir: Path = RUN_DIR, reason: str = "aborted on request", drain_s: float = 1.0) -> Canary:
    """All of the model's traffic back to the serving version at once; then the canary version is unregistered."""
    canary = running_canary(run_dir, name)
    fleet = running(run_dir)
    balancer.set_canary(fleet.balancer_dir, name, None)
    canary.status, canary.reason = ABORTED, reason
    write(run_dir, canary)
    time.sleep(drain_s)  # requests the canary holds finish
    unregister(fleet, name, canary.version)
    return canary


def register_on(server, replica_dir: Path, canary: Canary, trust_unsigned: bool = False) -> None:
    """Register a running canary's version again on a replica restarted without it (from its verified copy)."""
    if canary.version not in served_versions(server, canary.name):
        data = verified_copy(replica_dir, canary.name, canary.version, trust_unsigned)
        register(server, canary.name, canary.version, release_copy(data, replica_dir, canary.name, canary.version))


def unregister(fleet: Fleet, name: str, version: str) -> None:
    for replica in fleet.replicas:
        server = fleet.server(replica)
        if version in served_versions(server, name):
            status, body, _ = server.manage("DELETE", f"/models/{name}/{version}")
            if status != 200:
                raise CanaryError(f"unregistering {name} version {version} on {replica.name} failed: {body}")


def running_canary(run_dir: Path, name: str) -> Canary:
    canary = read(run_dir, name)
    if canary is None or canary.status != RUNNING:
        raise CanaryError(f"no canary of {name} is running: `make canary NAME={name} PERCENT=10` starts one")
    return canary


# the gate


def measure(canary: Canary, version: str) -> Figures:
    """`version`'s figures over the gate's window, from Prometheus."""
    window = f"{int(canary.gate['window_s'])}s"
    model = f'ModelName="{canary.name}",model_version="{version}"'

    def value(promql: str) -> float:
        result = monitor.query(canary.monitor_url, promql, Path(canary.monitor_dir))
        return float(result[0]["value"][1]) if result else 0.0

    requests = value(f"sum(increase(attention_requests_total{{{model}}}[{window}]))")
    errors = value(f'sum(increase(attention_requests_total{{{model},outcome!="answered"}}[{window}]))')
    p99 = value(f"histogram_quantile(0.99, sum by (le) (rate(attention_handler_ms_bucket{{{model}}}[{window}])))")
    instances = value(f"sum(increase(attention_novelty_instances_total{{{model}}}[{window}]))")
    novel = value(f'sum(increase(attention_novelty_instances_total{{{model},band=~"0.99-1|beyond"}}[{window}]))')
    return Figures(requests, errors / requests if requests else 0.0, p99, novel / instances if instances else 0.0)


def verdict(canary: Figures, serving: Figures, gate: Gate) -> str | None:
    """Why the canary must be aborted, or None while it does as well as the serving version (within the gate)."""
    if canary.requests < gate.min_requests:
        return None
    if canary.error_ratio > serving.error_ratio + gate.max_error_increase:
        return f"error ratio {canary.error_ratio:.1%} against the serving version's {serving.error_ratio:.1%}"
    if canary.p99_ms > gate.max_p99_ratio * serving.p99_ms + gate.p99_slack_ms:
        return f"p99 handler time {canary.p99_ms:.1f} ms against the serving version's {serving.p99_ms:.1f} ms"
    if canary.novel_share > serving.novel_share + gate.max_novelty_increase:
        return f"novel inputs {canary.novel_share:.1%} against the serving version's {serving.novel_share:.1%}"
    return None


def check(run_dir: Path, canary: Canary) -> str | None:
    """One look of the gate: aborts the canary (and says why) when it does worse than the serving version."""
    gate = Gate(**canary.gate)
    reason = verdict(measure(canary, canary.version), measure(canary, canary.serving), gate)
    if reason is None:
        return None
    abort(canary.name, run_dir, f"aborted by the gate: {reason} over the last {gate.window_s:g} s")
    return reason
