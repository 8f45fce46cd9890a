"""HAProxy in front of the fleet's TorchServe replicas: one front door, health checks, retries, connection limits.

Clients send one token (the fleet's own, `front.map`) to the front address; HAProxy checks it and answers a JSON
401 without it. Requests go to the replica with the fewest in flight (`leastconn`), at most `maxconn` at a time to
each (its queue; more wait at the balancer). Each replica is reached through a Unix socket of the balancer's own
(`sock/<replica>.sock`, 0600 in a 0700 folder), whose backend writes that replica's TorchServe token
(`replicas.map`): TorchServe's tokens cannot be chosen and expire, so each replica has its own and the keeper
(`keeper.py`) puts a fresh one in the map at run time. HAProxy sets a header per backend, never per server, hence a
backend per replica.

Inference is free of side effects, so a request that fails on a dead, hung or draining replica is sent again to
another (`retry-on`, `option redispatch`): a connection refused or closed without an answer, a timeout, a 502/503/504
the replica's backend made, a 401 from a replica whose token was just rotated, and a killed worker's 507 or 500
"Worker died." (HAProxy 2.6 retries on no status past 504, and a handler's own 500 is not retried, so the replica's
backend answers these two as 503). Active checks (`GET /ping` every 500 ms,
down after two failures) take a replica out of rotation while it or one of its models has no worker, and put it
back once it answers again. A request larger than `tune.bufsize` is not held for a retry; it is sent once.

The runtime API (`admin.sock`, 0600) changes a replica's state (drain for a rollout), weights and the maps without
a reload. HAProxy's Prometheus exporter answers on the metrics address (`/metrics`, loopback).
"""

from __future__ import annotations

import csv
import io
import json
import shutil
import socket
import tempfile
from dataclasses import dataclass
from pathlib import Path

from training.infra.places import LOOPBACK
from training.infra.processes import private_dir, start_group, stop_tree, wait_until, write_secret
from training.serving.errors import MissingProgramError, ServingError, StartupError

CONFIG, PID_FILE, LOG_FILE, ADMIN = "haproxy.cfg", "haproxy.pid", "haproxy.log", "admin.sock"
FRONT_MAP, REPLICA_MAP = "front.map", "replicas.map"
CANARY_MAP, SHARE_MAP = "canary.map", "canary-share.map"  # model -> canary version; model -> percent of its traffic
FLEET = "fleet"  # the backend clients reach
SOCKET_PATH_BYTES = 107
BUFFER_BYTES = 65536  # requests up to this size are held for a retry
# A replica's answer is awaited this long before it is retried elsewhere: above the handler's budget for a batch
# (handlers/types.py `Limits.batch_seconds`, 15 s, after which it answers 503 itself), so no answer is cut short.
SERVER_TIMEOUT_S = 20
# One server's front: above TorchServe's own default_response_timeout (60 s), which answers first.
SINGLE_TIMEOUT_S = 70
# Connections to TorchServe are kept and shared between clients' connections: one closed per client connection
# would be a reset that TorchServe logs as an ERROR each time.
REUSE, POOL = ["  http-reuse always"], "pool-low-conn 4 pool-max-conn 64 pool-purge-delay 60s"
CHECK = "inter 500ms fastinter 250ms downinter 500ms fall 2 rise 2"


class BalancerError(ServingError):
    """HAProxy refused a runtime command, or is not running."""


@dataclass(frozen=True)
class Replica:
    name: str  # r1, r2, ...: the server's name at the balancer
    address: str  # host:port of its TorchServe inference listener
    maxconn: int  # requests in flight at once (its job queue); more wait at the balancer
    tls: bool = False  # off loopback: TLS, verified against the fleet's CA


def error_body(error: str, detail: str) -> str:
    """A balancer-made error in the serving contract's shape, as one HAProxy config word."""
    return json.dumps(json.dumps({"error": error, "detail": detail}))


def config_text(
    folder: Path,
    sockets: Path,
    front: str,
    metrics: str,
    replicas: list[Replica],
    server_timeout_s: float,
    ca: Path | None = None,
) -> str:
    """haproxy.cfg for a fleet: `front` and `metrics` are host:port; `sockets` holds each replica's Unix sockets."""
    unauthorized = error_body("unauthorized", "send the fleet's token: Authorization: Bearer <token>")
    errors = {
        502: "a replica closed the connection; retried on the others, none answered",
        503: "no replica of the fleet is ready: see `make status`",
        504: f"no replica answered within {server_timeout_s:g} s",
    }
    admin = f"  stats socket {folder / ADMIN} mode 600 level admin expose-fd listeners"
    lines = [
        *settings(server_timeout_s, errors, admin),
        "frontend front",
        f"  bind {front}",
        *token_check(folder, unauthorized),
        *oip_routes(),
        # A canary: a share of a model's unversioned predictions and explanations go to its canary version's route.
        "  acl unversioned path_reg ^/(predictions|explanations)/[^/]+$",
        "  acl has_model var(txn.model) -m found",
        "  acl has_canary var(txn.canary) -m found",
        "  acl picked rand(100),sub(txn.share) -m int lt 0",
        "  http-request set-var(txn.model) path,field(3,/) if unversioned",
        f"  http-request set-var(txn.canary) var(txn.model),map({folder / CANARY_MAP}) if has_model",
        f"  http-request set-var(txn.share) var(txn.model),map_str_int({folder / SHARE_MAP},0) if has_canary",
        "  http-request set-path %[path]/%[var(txn.canary)] if has_canary picked",
        f"  default_backend {FLEET}",
        f"backend {FLEET}",
        "  balance leastconn",
        "  option redispatch 1",
        "  retries 3",
        "  retry-on conn-failure empty-response response-timeout 401 502 503 504",
        "  option httpchk",
        "  http-check send meth GET uri /ping",
        "  http-check expect status 200",
        *(f"  server {r.name} unix@{sockets / r.name}.sock check {CHECK} maxconn {r.maxconn}" for r in replicas),
        "frontend metrics",
        f"  bind {metrics}",
        "  http-request use-service prometheus-exporter if { path /metrics }",
        "  http-request return status 404",
    ]
    for r in replicas:
        tls = f" ssl verify required ca-file {ca} verifyhost {r.name}.fleet" if r.tls else ""
        lines += [
            f"frontend {r.name}",
            f"  bind unix@{sockets / r.name}.sock mode 600",
            f"  default_backend {r.name}-replica",
            f"backend {r.name}-replica",
            "  retries 0",
            *REUSE,
            f"  http-request set-header Authorization 'Bearer %[str({r.name}),map({folder / REPLICA_MAP})]'",
            # A killed worker's requests (TorchServe answers them 507, or 500 "Worker died."): 503, retried elsewhere.
            "  http-response set-status 503 if { status 507 }",
            "  http-response wait-for-body time 1s if { status 500 }",
            '  http-response set-status 503 if { status 500 } { res.body -m sub "Worker died" }',
            f"  server {r.name} {r.address}{tls} {POOL}",
        ]
    return "\n".join(lines) + "\n"


ERRORS = {502: "bad gateway", 503: "unavailable", 504: "timeout"}


def settings(server_timeout_s: float, details: dict[int, str], *global_lines: str) -> list[str]:
    """A configuration's global and defaults sections: limits, timeouts, and the errors HAProxy makes itself in the
    serving contract's JSON, each with its `details`."""
    return [
        "global",
        *global_lines,
        "  nbthread 1",
        "  maxconn 4096",
        f"  tune.bufsize {BUFFER_BYTES}",
        "defaults",
        "  mode http",
        "  timeout connect 1s",
        "  timeout client 120s",
        "  timeout http-request 30s",
        "  timeout queue 60s",
        f"  timeout server {server_timeout_s:g}s",
        "  timeout check 1s",
        *(
            f"  http-error status {status} content-type application/json string {error_body(ERRORS[status], detail)}"
            for status, detail in details.items()
        ),
    ]


def token_check(folder: Path, unauthorized: str) -> list[str]:
    """A front door's lines that answer 401 to any request without the fleet's token."""
    return [
        "  acl bearer req.hdr(authorization) -m beg 'Bearer '",
        f"  acl known req.hdr(authorization),word(2,' '),map({folder / FRONT_MAP}) -m found",
        f"  http-request return status 401 content-type application/json string {unauthorized} unless bearer known",
    ]


def oip_routes() -> list[str]:
    """The Open Inference Protocol's REST routes TorchServe 0.12 lacks, rewritten to the model's infer route with
    headers its handler answers (`handlers/oip.py`): `GET /v2/models/<n>[/versions/<v>]` (metadata), its `/ready`, and
    `/v2/models/<n>/versions/<v>/infer` (the served version, or a refusal naming it). A client's own `X-OIP-*`
    headers are dropped: only the front door sets them."""
    model = "^/v2/models/[^/]+"
    return [
        "  http-request del-header X-OIP-Route",
        "  http-request del-header X-OIP-Version",
        f"  acl oip_metadata path_reg {model}(/versions/[^/]+)?$",
        f"  acl oip_ready path_reg {model}(/versions/[^/]+)?/ready$",
        f"  acl oip_version path_reg {model}/versions/[^/]+(/infer|/ready)?$",
        f"  acl oip_versioned_infer path_reg {model}/versions/[^/]+/infer$",
        "  acl oip_get var(txn.oip_get) -m found",
        "  http-request set-var(txn.oip_get) bool(1) if METH_GET oip_metadata or METH_GET oip_ready",
        "  http-request set-header X-OIP-Version %[path,field(6,/)] if oip_version oip_get or oip_versioned_infer",
        "  http-request set-header X-OIP-Route metadata if oip_get oip_metadata",
        "  http-request set-header X-OIP-Route ready if oip_get oip_ready",
        "  http-request set-method POST if oip_get",
        "  http-request set-path /v2/models/%[path,field(4,/)]/infer if oip_get or oip_versioned_infer",
    ]


def socket_folder(folder: Path) -> Path:
    """Where the replicas' Unix sockets live (0700): `<folder>/sock`, or a fresh private temp folder where that path
    is too long for a socket's (107 bytes)."""
    sockets = folder / "sock"
    if len(str(sockets / "r999.sock").encode()) > SOCKET_PATH_BYTES or len(str(folder / ADMIN)) > SOCKET_PATH_BYTES:
        sockets = Path(tempfile.mkdtemp(prefix="attention-balancer-"))
        (folder / "sock-elsewhere").write_text(str(sockets))
        return sockets
    return private_dir(sockets)


def haproxy_binary() -> str:
    found = shutil.which("haproxy")
    if not found:
        raise MissingProgramError("HAProxy is not installed: `make haproxy` installs Debian's package (apt)")
    return found


def start(
    folder: Path,
    front: str,
    metrics: str,
    replicas: list[Replica],
    front_token: str,
    replica_tokens: dict[str, str],
    server_timeout_s: float = SERVER_TIMEOUT_S,
    ca: Path | None = None,
) -> int:
    """Start HAProxy from `folder` (0700) and return its pid once the front door and the exporter listen."""
    haproxy_binary()
    private_dir(folder)
    write_secret(folder / FRONT_MAP, f"{front_token} client\n")
    for name in (CANARY_MAP, SHARE_MAP):
        write_secret(folder / name, "")
    write_secret(folder / REPLICA_MAP, "".join(f"{name} {token}\n" for name, token in replica_tokens.items()))
    text = config_text(folder, socket_folder(folder), front, metrics, replicas, server_timeout_s, ca)
    return run(folder, text, front, lambda: (folder / ADMIN).exists())


def start_single(folder: Path, front: str, server: str, server_timeout_s: float = SINGLE_TIMEOUT_S) -> int:
    """HAProxy as one TorchServe's front door (`make serve`): the Open Inference Protocol's REST routes TorchServe
    lacks rewritten to the handler, everything else passed through unchanged, the client's token included
    (TorchServe checks it; this front holds none)."""
    haproxy_binary()
    private_dir(folder)
    return run(folder, single_config_text(front, server, server_timeout_s), front)


def single_config_text(front: str, server: str, server_timeout_s: float) -> str:
    """haproxy.cfg for one server: `front` and `server` are host:port."""
    errors = {
        502: "TorchServe closed the connection without an answer",
        503: "TorchServe is not answering: see `make status`",
        504: f"TorchServe did not answer within {server_timeout_s:g} s",
    }
    return "\n".join([
        *settings(server_timeout_s, errors),
        "frontend front",
        f"  bind {front}",
        *oip_routes(),
        "  default_backend torchserve",
        "backend torchserve",
        *REUSE,
        # a kept connection TorchServe closed meanwhile: the request again on a new one (inference has no side effects)
        "  retries 2",
        "  retry-on conn-failure empty-response",
        f"  server torchserve {server} {POOL}",
    ]) + "\n"  # fmt: skip


def run(folder: Path, text: str, front: str, ready=lambda: True) -> int:
    """Run HAProxy from `folder` over `text` (checked first) and return its pid once `front` listens."""
    binary = haproxy_binary()
    config = folder / CONFIG
    write_secret(config, text)
    checked = subprocess_check(binary, config)
    if checked:
        raise StartupError(f"HAProxy refused its configuration {config}: {checked}")
    with open(folder / LOG_FILE, "ab") as log:
        process = start_group([binary, "-W", "-db", "-f", str(config)], log, cwd=folder, umask=0o077)
    (folder / PID_FILE).write_text(str(process.pid))

    def check() -> None:
        if process.poll() is not None:
            tail = (folder / LOG_FILE).read_text(errors="replace").strip().splitlines()[-3:]
            raise StartupError(f"HAProxy stopped during start-up: {' | '.join(tail)}")

    if not wait_until(lambda: listening(front) and ready(), 15, interval=0.05, check=check):
        stop(folder)
        raise StartupError(f"HAProxy did not listen on {front} within 15 s; see {folder / LOG_FILE}")
    return process.pid


def subprocess_check(binary: str, config: Path) -> str:
    """HAProxy's own check of a configuration: '' when valid, else its complaint."""
    import subprocess

    done = subprocess.run([binary, "-c", "-f", str(config)], capture_output=True, text=True)
    return "" if done.returncode == 0 else (done.stderr or done.stdout or f"exit {done.returncode}").strip()[-500:]


def listening(address: str) -> bool:
    host, port = address.rsplit(":", 1)
    try:
        with socket.create_connection((host or LOOPBACK, int(port)), timeout=0.5):
            return True
    except OSError:
        return False


def stop(folder: Path) -> bool:
    pid_file = folder / PID_FILE
    if not pid_file.exists():
        return False
    stop_tree(int(pid_file.read_text()), timeout=10)
    pid_file.unlink(missing_ok=True)
    elsewhere = folder / "sock-elsewhere"
    if elsewhere.exists():
        shutil.rmtree(elsewhere.read_text().strip(), ignore_errors=True)
        elsewhere.unlink()
    return True


# the runtime API


def command(folder: Path, line: str, timeout: float = 5) -> str:
    """Send one runtime API command to the running HAProxy and return its answer."""
    try:
        with socket.socket(socket.AF_UNIX) as admin:
            admin.settimeout(timeout)
            admin.connect(str(folder / ADMIN))
            admin.sendall(line.encode() + b"\n")
            chunks = []
            while chunk := admin.recv(65536):
                chunks.append(chunk)
    except OSError as error:
        raise BalancerError(
            f"HAProxy's runtime API in {folder} does not answer ({error}): is the fleet running?"
        ) from None
    return b"".join(chunks).decode(errors="replace")


def set_replica_token(folder: Path, name: str, token: str) -> None:
    """The token the balancer sends `name` from now on (in memory, and in the map file a restart reads)."""
    answer = command(folder, f"set map {folder / REPLICA_MAP} {name} {token}")
    if answer.strip():
        raise BalancerError(f"HAProxy refused the token of replica {name}: {answer.strip()[:200]}")
    write_map(folder / REPLICA_MAP, read_map(folder / REPLICA_MAP) | {name: token})


def set_canary(folder: Path, model: str, version: str | None, percent: int = 0) -> None:
    """Send `percent` of `model`'s unversioned predictions and explanations to `version` (None: none, at once)."""
    for map_name, value in ((CANARY_MAP, version), (SHARE_MAP, str(percent))):
        path = folder / map_name
        command(folder, f"del map {path} {model}")  # answers an error when absent: nothing to remove
        if version is not None:
            answer = command(folder, f"add map {path} {model} {value}")
            if answer.strip():
                raise BalancerError(f"HAProxy refused the canary of {model}: {answer.strip()[:200]}")
        entries = {k: v for k, v in read_map(path).items() if k != model}
        write_map(path, entries | ({model: value} if version is not None else {}))


def read_map(path: Path) -> dict[str, str]:
    """A map file HAProxy reads at start: one `key value` per line."""
    return dict(line.split(" ", 1) for line in path.read_text().splitlines() if " " in line)


def write_map(path: Path, entries: dict[str, str]) -> None:
    """A map file (0600), as the runtime API has just made the map in memory: what a restart of HAProxy reads."""
    write_secret(path, "".join(f"{key} {value}\n" for key, value in entries.items()))


def set_state(folder: Path, name: str, state: str) -> None:
    """`ready` (in rotation), `drain` (no new requests; those in flight finish) or `maint` for replica `name`."""
    answer = command(folder, f"set server {FLEET}/{name} state {state}")
    if answer.strip():
        raise BalancerError(f"HAProxy refused to set replica {name} {state}: {answer.strip()[:200]}")


def stats(folder: Path, backend: str = FLEET) -> dict[str, dict[str, str]]:
    """A backend's servers (the fleet's by default), by name: HAProxy's
    `show stat` fields (status, scur, qcur, stot, wretr, ...)."""
    text = command(folder, "show stat").lstrip("# ")
    rows = csv.DictReader(io.StringIO(text))
    totals = ("FRONTEND", "BACKEND")
    return {row["svname"]: row for row in rows if row["pxname"] == backend and row["svname"] not in totals}
