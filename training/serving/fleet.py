"""`make serve REPLICAS=N`: N TorchServe replicas behind HAProxy, kept alive by a keeper; stopped and shown whole.

The fleet lives in the serve directory (`.serve/`, 0700): `fleet.json` (where each part runs), `replica-<i>/` (each
replica's own run directory: config, private store, tokens, history, logs, temp, exactly as `make serve` makes
for one server), `balancer/` (HAProxy's configuration, maps and runtime socket) and `front-token` (the one token
clients send, 0600). Each replica listens on loopback ports of its own; clients use the front address alone.
The keeper (`keeper.py`) restarts a replica whose TorchServe died, at the versions it served, and keeps every
replica's token fresh at the balancer.
"""

from __future__ import annotations

import json
import os
import secrets
import shutil
import sys
from concurrent.futures import ThreadPoolExecutor
from dataclasses import asdict, dataclass
from pathlib import Path

from training.infra import processes
from training.infra.certificates import ServerCertificate, ensure_certificates
from training.infra.places import LOOPBACK, ROOT, SERVE_DIR
from training.infra.private import owner_only
from training.infra.processes import pid_alive, port_is_free, start_group, stop_tree, write_secret, write_whole
from training.serving import balancer, history, oip_grpc, serve
from training.serving.balancer import SERVER_TIMEOUT_S, Replica
from training.serving.errors import AlreadyRunningError, NotRunningError, PortInUseError
from training.serving.torchserve import CA_FILE, Server, read_properties, server_for

FLEET_FILE, FRONT_TOKEN, BALANCER, KEEPER_LOG = "fleet.json", "front-token", "balancer", "keeper.log"
TLS, TLS_NAME = "tls", ".fleet"  # the fleet's CA and replicas' certificate; r1.fleet: the name the balancer verifies
LISTENERS = len(serve.free_ports())  # each replica's ports (`serve.free_ports`)


@dataclass
class FleetReplica:
    name: str  # r1, r2, ...
    run_dir: str
    address: str  # host:port of its inference listener
    tls: bool = False  # off loopback: its listeners speak TLS with a certificate of the fleet's CA

    @property
    def host(self) -> str:
        return self.address.rsplit(":", 1)[0]


@dataclass
class Fleet:
    run_dir: str
    front: str  # host:port clients use
    metrics: str  # host:port of the balancer's Prometheus exporter
    replicas: list[FleetReplica]
    keeper_pid: int = 0
    grpc: str = ""  # host:port of the Open Inference Protocol's gRPC service, in front of the front door

    @property
    def balancer_dir(self) -> Path:
        return Path(self.run_dir) / BALANCER

    def server(self, replica: FleetReplica) -> Server:
        return server_for(Path(replica.run_dir))


@dataclass
class Front(Server):
    """The fleet's front door as a client sees it: the balancer's address and the fleet's token."""

    def keys(self) -> dict:
        return {"inference": {"key": (self.run_dir / FRONT_TOKEN).read_text().strip()}}


def read(run_dir: Path = SERVE_DIR) -> Fleet | None:
    file = Path(run_dir) / FLEET_FILE
    if not file.exists():
        return None
    fields = json.loads(file.read_text())
    return Fleet(**{**fields, "replicas": [FleetReplica(**r) for r in fields["replicas"]]})


def write(fleet: Fleet) -> None:
    write_whole(Path(fleet.run_dir) / FLEET_FILE, json.dumps(asdict(fleet), indent=1).encode())


def front(run_dir: Path = SERVE_DIR) -> Front:
    fleet = running(run_dir)
    return Front(Path(run_dir), f"http://{fleet.front}", "", f"http://{fleet.metrics}", grpc_address=fleet.grpc)


def running(run_dir: Path = SERVE_DIR) -> Fleet:
    fleet = read(run_dir)
    if fleet is None:
        raise NotRunningError(f"no fleet runs from {run_dir}: `make serve REPLICAS=2` first")
    return fleet


def base_address(key: str) -> str:
    """host:port of one of config.properties' listeners: the fleet's front door takes the inference address."""
    return read_properties(serve.BASE_CONFIG)[key].split("://")[-1]


def start(
    replicas: int,
    models: list[str] | None = None,
    run_dir: Path = SERVE_DIR,
    model_store: Path = serve.ARCHIVES,
    front_address: str | None = None,
    metrics_address: str | None = None,
    trust_unsigned: bool = False,
    tracking_uri: str | None = None,
    allow_older: bool = False,
    server_timeout_s: float = SERVER_TIMEOUT_S,
    keep: bool = True,
    timeout: float = 180,
    hosts: list[str] | None = None,
    grpc_address: str | None = None,
) -> Fleet:
    """Start `replicas` TorchServe replicas over the archives in `model_store` (each verified, as `make serve`
    verifies them), HAProxy in front of them on `front_address` (config.properties' inference address by default)
    and the keeper; return once every replica is healthy and the front door answers. `hosts` names the address
    each replica listens on (default loopback); a replica off loopback speaks TLS with a certificate of the
    fleet's own CA (`.serve/tls/`), which the balancer, the keeper and Prometheus verify."""
    run_dir = Path(run_dir).resolve()
    hosts = hosts or [LOOPBACK] * replicas
    if len(hosts) != replicas:
        raise ValueError(f"{len(hosts)} hosts for {replicas} replicas: name one address per replica")
    check_not_running(run_dir)
    balancer.haproxy_binary()
    front_address = front_address or base_address("inference_address")
    metrics_address = metrics_address or base_address("metrics_address")
    grpc_address = grpc_address or f"{LOOPBACK}:{read_properties(serve.BASE_CONFIG)[serve.OIP_GRPC_PORT]}"
    for address in (front_address, metrics_address, grpc_address):
        if not on_loopback(address.rsplit(":", 1)[0]):
            raise ValueError(f"the fleet's front door and exporter listen on loopback, not {address}")
        if not port_is_free(int(address.rsplit(":", 1)[1])):
            raise PortInUseError(f"{address} is in use by another process: stop it, or choose another address")
    owner_only(run_dir)
    ports = processes.free_ports(LISTENERS * replicas)
    dirs = [run_dir / f"replica-{i + 1}" for i in range(replicas)]
    remote = [host for host in hosts if not on_loopback(host)]
    names = [f"r{i + 1}" for i in range(replicas)]
    names_in_certificate = remote + [f"{name}{TLS_NAME}" for name in names]
    tls = ensure_certificates(run_dir / TLS, names_in_certificate, rsa_key=True) if remote else None
    fleet = Fleet(str(run_dir), front_address, metrics_address, [], grpc=grpc_address)
    try:

        def start_replica(i: int) -> Server:
            own = dict(zip(serve.free_ports().keys(), ports[LISTENERS * i : LISTENERS * (i + 1)]))
            overrides = None
            if not on_loopback(hosts[i]):
                overrides = tls_overrides(hosts[i], own, tls)
                dirs[i].mkdir(mode=0o700, parents=True, exist_ok=True)
                shutil.copyfile(tls.ca, dirs[i] / CA_FILE)
            return serve.start(
                models, dirs[i], model_store, own, overrides, timeout=timeout, quiet=True,
                trust_unsigned=trust_unsigned, tracking_uri=tracking_uri, allow_older=allow_older, grpc_front=False,
            )  # fmt: skip

        with ThreadPoolExecutor(replicas) as pool:
            servers = list(pool.map(start_replica, range(replicas)))
        fleet.replicas = [
            FleetReplica(names[i], str(dirs[i]), s.inference_url.split("://")[-1], not on_loopback(hosts[i]))
            for i, s in enumerate(servers)
        ]
        write(fleet)
        queue = int(read_properties(dirs[0] / "config.properties").get("job_queue_size", 100))
        token = secrets.token_urlsafe(32)
        write_secret(run_dir / FRONT_TOKEN, token + "\n")
        balancer.start(
            fleet.balancer_dir,
            front_address,
            metrics_address,
            [Replica(r.name, r.address, queue, r.tls) for r in fleet.replicas],
            token,
            {r.name: s.token() for r, s in zip(fleet.replicas, servers)},
            server_timeout_s,
            tls.ca if tls else None,
        )
        # the Open Inference Protocol's gRPC service, in front of the front door (the same token, checked there)
        oip_grpc.start(run_dir, grpc_address, oip_grpc.Upstream(f"http://{front_address}", front_door=True))
        if keep:
            fleet.keeper_pid = start_keeper(run_dir)
        write(fleet)
    except BaseException:
        stop(run_dir, quiet=True)
        for replica_dir in dirs:  # replicas that started before one failed: no fleet.json names them yet
            serve.stop(replica_dir, quiet=True)
        raise
    return fleet


def on_loopback(host: str) -> bool:
    return host in (LOOPBACK, "localhost")


def tls_overrides(host: str, ports: dict[str, int], tls: ServerCertificate) -> dict[str, str]:
    """A replica on `host`: its HTTP listeners there, in TLS with the fleet's certificate (TorchServe's own gRPC
    listeners stay on loopback, unused: the fleet's gRPC service is in front of the front door)."""
    addresses = {key: f"https://{host}:{ports[key]}" for key in ("inference_address", "management_address",
                                                                  "metrics_address")}  # fmt: skip
    return addresses | {"certificate_file": str(tls.certificate), "private_key_file": str(tls.key)}


def check_not_running(run_dir: Path) -> None:
    if serve.running_pid(run_dir):
        raise AlreadyRunningError(f"TorchServe is already running from {run_dir}: `make stop` first")
    if read(run_dir) is not None:
        raise AlreadyRunningError(f"a fleet is already running from {run_dir}: `make stop` first")


def start_keeper(run_dir: Path) -> int:
    command = [sys.executable, "-m", "training", "keeper", "--run-dir", str(run_dir)]
    env = {**processes.without_credentials(os.environ), "PYTHONUNBUFFERED": "1"}
    with open(run_dir / KEEPER_LOG, "ab") as log:
        return start_group(command, log, env=env, cwd=ROOT, umask=0o077).pid


def stop(run_dir: Path = SERVE_DIR, quiet: bool = False) -> bool:
    """Stop the keeper first (it would restart what follows), then HAProxy, then every replica; True if one ran."""
    run_dir = Path(run_dir)
    fleet = read(run_dir)
    if fleet is None:
        return False
    if fleet.keeper_pid and pid_alive(fleet.keeper_pid):
        stop_tree(fleet.keeper_pid, timeout=10)
    oip_grpc.stop(run_dir)
    balancer.stop(fleet.balancer_dir)
    for replica in fleet.replicas:
        serve.stop(Path(replica.run_dir), quiet=True)
    for secret in (FRONT_TOKEN, serve.AUTH_HEADER, FLEET_FILE):
        (run_dir / secret).unlink(missing_ok=True)
    if not quiet:
        print(f"the fleet stopped ({len(fleet.replicas)} replicas and the balancer)")
    return True


def status_lines(run_dir: Path = SERVE_DIR) -> list[str]:
    """Each replica's health at the balancer, the versions it serves and its load."""
    fleet = running(run_dir)
    try:
        stats = balancer.stats(fleet.balancer_dir)
    except balancer.BalancerError as error:
        stats, note = {}, f"  balancer    not answering: {error}"
    else:
        note = f"  balancer    http://{fleet.front} (pid {pid_file_text(fleet.balancer_dir / balancer.PID_FILE)})"
    keeper = "running" if fleet.keeper_pid and pid_alive(fleet.keeper_pid) else "not running"
    grpc = f"{fleet.grpc} ({'running' if oip_grpc.running(run_dir) else 'not running'})"
    lines = [f"fleet of {len(fleet.replicas)} replicas in {run_dir}", note, f"  keeper      {keeper}"]
    lines.append(f"  gRPC        {grpc}")
    for replica in fleet.replicas:
        row = stats.get(replica.name, {})
        served = ", ".join(f"{n} v{v[-1]}" for n, v in sorted(history.load(Path(replica.run_dir)).items()))
        alive = "up" if serve.running_pid(Path(replica.run_dir)) else "process down"
        lines.append(
            f"  {replica.name:<10}  {row.get('status', '?'):<6} ({alive}) {replica.address}  serves {served or '?'}  "
            f"in flight {row.get('scur', '?')}, queued {row.get('qcur', '?')}, answered {row.get('stot', '?')}, "
            f"retried {row.get('wretr', '?')}, redispatched {row.get('wredis', '?')}"
        )
    return lines


def pid_file_text(path: Path) -> str:
    return path.read_text().strip() if path.exists() else "?"


def print_usage(fleet: Fleet, names: list[str]) -> None:
    run_dir = Path(fleet.run_dir)
    print(f"a fleet of {len(fleet.replicas)} TorchServe replicas behind HAProxy is up: {', '.join(names)}")
    print(f"  inference   http://{fleet.front}   gRPC {fleet.grpc}   balancer metrics http://{fleet.metrics}/metrics")
    print(f"  token       {run_dir / FRONT_TOKEN} (secret; the one token clients send, whichever replica answers)")
    print("  token       .venv/bin/python -m training token --header-file   # writes .serve/auth-header (0600)")
    print("  status      make status        stop  make stop")
