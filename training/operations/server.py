"""`make tracking-server`: a local PostgreSQL and an `mlflow server` in front of it, for many tuning workers.

PostgreSQL holds two databases: `optuna` (the studies; workers connect to it directly) and `mlflow` (the
tracking and registry store, used only by the server). The server proxies artifacts
(`--serve-artifacts`), so workers need nothing but its URL; artifacts land under `<state>/artifacts`.
Everything binds to loopback unless a host is given. State (data, logs, password) lives in `.tracking/`.
"""

from __future__ import annotations

import ipaddress
import secrets
from pathlib import Path

import psutil

from training.infra.places import LOOPBACK, MLFLOW_PORT, POSTGRES_PORT
from training.infra.processes import stop_tree
from training.operations.mlflow_server import (
    healthy,
    start_mlflow,
)
from training.operations.postgres import (
    postgres_running,
    provision,
    start_postgres,
    stop_postgres,
)
from training.operations.server_state import (
    STATE,
    WORKER_PASSWORD_FILE,
    TrackingServer,
    TrackingServerError,
    read_password,
    read_state,
    write_password,
    write_state,
)


def start(
    state_dir: str | Path = STATE,
    host: str = LOOPBACK,
    pg_port: int | None = None,
    mlflow_port: int | None = None,
    allowed_hosts: list[str] | None = None,
    workers: int = 2,
    tls: bool | None = None,
) -> TrackingServer:
    """Start (or find running) PostgreSQL + mlflow server with their state in `state_dir`. Off loopback both
    speak TLS (`tls` None: TLS exactly when `host` is not a loopback address); without it they refuse."""
    tls = not is_loopback(host) if tls is None else tls
    if not tls and not is_loopback(host):
        raise TrackingServerError(
            f"refusing to listen on {host} without TLS: passwords would cross the network in clear"
        )
    state = Path(state_dir).resolve()
    state.mkdir(parents=True, exist_ok=True)
    state.chmod(0o711)  # PostgreSQL's user passes through to its data; nobody else lists or reads what is here
    previous = read_state(state)
    if previous and ours(previous) and healthy(previous):
        return previous
    password = read_password(state) or (previous.password if previous else None) or secrets.token_urlsafe(18)
    write_password(state, password)
    server = TrackingServer(
        state_dir=str(state),
        host=host,
        pg_port=pg_port or (previous.pg_port if previous else POSTGRES_PORT),
        mlflow_port=mlflow_port or (previous.mlflow_port if previous else MLFLOW_PORT),
        password=password,
        tls=tls,
    )
    worker_password = read_password(state, WORKER_PASSWORD_FILE) or secrets.token_urlsafe(18)
    write_password(state, worker_password, WORKER_PASSWORD_FILE)
    stop_leftovers(server, previous)
    try:
        start_postgres(server, allowed_hosts or [])
        provision(server, worker_password)
        server.mlflow_pid = start_mlflow(server, allowed_hosts or [], workers)
    except BaseException:
        stop_postgres(server)  # a start that fails leaves nothing running
        raise
    write_state(server)
    return server


def is_loopback(host: str) -> bool:
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def stop_leftovers(server: TrackingServer, previous: TrackingServer | None) -> None:
    """What a crashed, killed or half-failed start left running (an mlflow server, a PostgreSQL): start clean."""
    if previous and ours(previous):
        stop_tree(previous.mlflow_pid, timeout=5)
    stop_postgres(server)


def ours(server: TrackingServer) -> bool:
    """Whether `server.mlflow_pid` still is the mlflow server we started (after a reboot the pid may be
    anything's): only then is it stopped."""
    try:
        command = " ".join(psutil.Process(server.mlflow_pid).cmdline())
    except psutil.Error:
        return False
    return "mlflow" in command and " server " in f"{command} " and str(server.mlflow_port) in command


def stop(state_dir: str | Path = STATE) -> bool:
    """Stop what `start` started; the data stays. False when nothing was running."""
    state = Path(state_dir).resolve()
    server = read_state(state)
    if server is None:  # no server.json: still stop a PostgreSQL a failed start may have left
        leftover = TrackingServer(str(state), LOOPBACK, 0, 0, "")
        running = postgres_running(leftover)
        stop_postgres(leftover)
        return running
    if ours(server):
        stop_tree(server.mlflow_pid, timeout=5)  # uvicorn waits for idle keep-alive clients; requests are committed
    stop_postgres(server)
    (state / "server.json").unlink()
    return True
