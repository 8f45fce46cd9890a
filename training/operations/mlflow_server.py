"""The tracking server's `mlflow server`: MLflow's basic-auth app over the PostgreSQL store, artifacts proxied,
TLS with the state's own certificate when it leaves loopback, and the workers' account."""

from __future__ import annotations

import base64
import json
import os
import ssl
import sys
import urllib.error
import urllib.request
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from training.infra.certificates import ensure_certificates
from training.infra.processes import answers, private_dir, start_group, stop_tree, wait_until
from training.operations.postgres import (
    certificate_names,
)
from training.operations.server_state import (
    FLASK_SECRET_FILE,
    MLFLOW_ADMIN,
    MLFLOW_ADMIN_PASSWORD_FILE,
    MLFLOW_WORKER,
    MLFLOW_WORKER_PASSWORD_FILE,
    TrackingServer,
    TrackingServerError,
    secret,
)
from training.tracking.mlflow_store import NO_JOB_RUNNERS

AUTH_CACHE_SECONDS = 60


def start_mlflow(server: TrackingServer, allowed_hosts: list[str], workers: int) -> int:
    from mlflow.store.tracking.sqlalchemy_store import SqlAlchemyStore

    artifacts = Path(server.state_dir) / "artifacts"
    private_dir(artifacts)  # models and plots (an NW checkpoint holds its training rows): the server's user's alone
    backend = server.database_url("mlflow")  # no password: the server reads the worker role's from PGPASSFILE
    env = {**os.environ, "PGPASSFILE": str(server.pgpass)} | NO_JOB_RUNNERS
    with password_file(server.pgpass):
        SqlAlchemyStore(backend, artifacts.as_uri())  # the schema, created once here, not raced by server workers
    hosts = [f"{h}:{server.mlflow_port}" for h in ["127.0.0.1", "localhost", server.host, *allowed_hosts]]
    env |= {"MLFLOW_AUTH_CONFIG_PATH": str(auth_config(server)), "MLFLOW_AUTH_ADMIN_USERNAME": MLFLOW_ADMIN}
    env["MLFLOW_AUTH_ADMIN_PASSWORD"] = secret(server, MLFLOW_ADMIN_PASSWORD_FILE)  # the environment: not in `ps`
    env["MLFLOW_FLASK_SERVER_SECRET_KEY"] = secret(server, FLASK_SECRET_FILE)  # CSRF tokens, the same every start
    command = [sys.executable, "-m", "mlflow", "server", "--app-name", "basic-auth", "--backend-store-uri", backend]
    command += ["--serve-artifacts", "--artifacts-destination", artifacts.as_uri()]
    command += ["--host", server.host, "--port", str(server.mlflow_port), "--workers", str(workers)]
    command += ["--allowed-hosts", ",".join(dict.fromkeys(hosts))]
    if server.tls:
        certificate = ensure_certificates(Path(server.state_dir) / "tls", certificate_names(server, allowed_hosts))
        command += ["--uvicorn-opts", f"--ssl-keyfile {certificate.key} --ssl-certfile {certificate.certificate}"]
    log_path = Path(server.state_dir) / "mlflow.log"
    with os.fdopen(os.open(log_path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o600), "ab") as log:
        process = start_group(command, log, env=env, cwd=server.state_dir, umask=0o077)  # its files: 0600

    def check() -> None:
        if process.poll() is not None:
            raise TrackingServerError(f"mlflow server on {server.tracking_uri} exited: {log_tail(server)}")

    try:
        if not wait_until(lambda: healthy(server), timeout=180, check=check):
            raise TrackingServerError(f"mlflow server on {server.tracking_uri} did not come up: {log_tail(server)}")
        add_worker_account(server)
    except BaseException:
        stop_tree(process.pid, timeout=5)
        raise
    return process.pid


def auth_config(server: TrackingServer) -> Path:
    """MLflow's basic-auth settings (no secret in them): its user store beside the data, READ by default. MLflow
    gives the account that creates an experiment or a registered model MANAGE on it, so the workers' account writes
    the studies' experiments and models it made, and only reads everything else.

    A verified password is remembered for a minute (MLflow's own credential cache, off by default): each check
    is a deliberately slow hash, and a worker's trial or a model's registration makes dozens of requests. The
    price, as MLflow states it: with several server workers a changed password may still work on the others for
    that minute; this project sets the accounts' passwords only while the server starts."""
    path = Path(server.state_dir) / "basic_auth.ini"
    database = Path(server.state_dir) / "basic_auth.db"
    path.write_text(
        f"[mlflow]\ndefault_permission = READ\nauth_cache_ttl_seconds = {AUTH_CACHE_SECONDS}\n"
        f"database_uri = sqlite:///{database}\nadmin_username = {MLFLOW_ADMIN}\n"
        "authorization_function = mlflow.server.auth:authenticate_request_basic_auth\n"
    )
    return path


def add_worker_account(server: TrackingServer) -> None:
    """The workers' MLflow account (created, or its password set again from its file): not an admin."""
    admin = (MLFLOW_ADMIN, secret(server, MLFLOW_ADMIN_PASSWORD_FILE))
    account = {"username": MLFLOW_WORKER, "password": secret(server, MLFLOW_WORKER_PASSWORD_FILE)}
    status, body = auth_request(server, "POST", "/api/2.0/mlflow/users/create", account, admin)
    if status != 200 and "RESOURCE_ALREADY_EXISTS" in body:
        status, body = auth_request(server, "PATCH", "/api/2.0/mlflow/users/update-password", account, admin)
    if status != 200:
        raise TrackingServerError(f"cannot set up the MLflow account {MLFLOW_WORKER!r}: HTTP {status} {body[:200]}")


def auth_request(server: TrackingServer, method: str, path: str, body: dict, user: tuple[str, str]) -> tuple[int, str]:
    credentials = base64.b64encode(f"{user[0]}:{user[1]}".encode()).decode()
    request = urllib.request.Request(
        server.tracking_uri + path,
        data=json.dumps(body).encode(),
        method=method,
        headers={"Content-Type": "application/json", "Authorization": f"Basic {credentials}"},
    )
    context = ssl.create_default_context(cafile=server.ca) if server.tls else None
    try:
        with urllib.request.urlopen(request, timeout=30, context=context) as response:
            return response.status, response.read().decode()
    except urllib.error.HTTPError as error:
        return error.code, error.read().decode(errors="replace")


def worker_credentials(server: TrackingServer) -> dict[str, str]:
    """What a worker's environment needs to write to the tracking server."""
    return {
        "MLFLOW_TRACKING_USERNAME": MLFLOW_WORKER,
        "MLFLOW_TRACKING_PASSWORD": secret(server, MLFLOW_WORKER_PASSWORD_FILE),
    }


@contextmanager
def password_file(path: Path) -> Iterator[None]:
    """PGPASSFILE set to `path` in this process for the duration (libpq reads it at each connection)."""
    before = os.environ.get("PGPASSFILE")
    os.environ["PGPASSFILE"] = str(path)
    try:
        yield
    finally:
        if before is None:
            os.environ.pop("PGPASSFILE", None)
        else:
            os.environ["PGPASSFILE"] = before


def healthy(server: TrackingServer) -> bool:
    return answers(f"{server.tracking_uri}/health", cafile=server.ca if server.tls else None)


def log_tail(server: TrackingServer) -> str:
    return " | ".join((Path(server.state_dir) / "mlflow.log").read_text(errors="replace").strip().splitlines()[-3:])
