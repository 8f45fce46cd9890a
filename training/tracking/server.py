"""`make tracking-server`: a local PostgreSQL and an `mlflow server` in front of it, for many tuning workers.

PostgreSQL holds two databases: `optuna` (the studies; workers connect to it directly) and `mlflow` (the
tracking and registry store, used only by the server). The server proxies artifacts
(`--serve-artifacts`), so workers need nothing but its URL; artifacts land under `<state>/artifacts`.
Everything binds to loopback unless a host is given. State (data, logs, password) lives in `.tracking/`.
"""

from __future__ import annotations

import base64
import json
import os
import pwd
import secrets
import shutil
import subprocess
import sys
import urllib.error
import urllib.request
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import asdict, dataclass
from pathlib import Path

from training.infra.places import LOOPBACK, MLFLOW_PORT, POSTGRES_PORT, TRACKING_DIR
from training.infra.processes import answers, pid_alive, start_group, stop_tree, wait_until, write_secret

STATE = TRACKING_DIR
# Secrets outside server.json, which a stop removes: the data outlives every stop. Each 0600.
PASSWORD_FILE = "postgres.password"  # the superuser's: provisioning only
WORKER_PASSWORD_FILE = "worker.password"  # the worker role's (also in the pgpass file workers read)
WORKER_ROLE = "tuner"
DATABASES = ("optuna", "mlflow")
# MLflow's basic-auth app: an admin (provisioning only) and a worker account, which writes experiments, runs and
# models but is no admin. Clients use MLflow's own conventions: MLFLOW_TRACKING_USERNAME/PASSWORD.
MLFLOW_ADMIN, MLFLOW_ADMIN_PASSWORD_FILE = "admin", "mlflow-admin.password"
MLFLOW_WORKER, MLFLOW_WORKER_PASSWORD_FILE = WORKER_ROLE, "mlflow-worker.password"
UNPRIVILEGED = ("postgres", "nobody")  # who runs PostgreSQL when we are root (initdb refuses root)


class TrackingServerError(RuntimeError):
    """The tracking server cannot be started or found."""


@dataclass
class TrackingServer:
    state_dir: str
    host: str
    pg_port: int
    mlflow_port: int
    password: str
    mlflow_pid: int = 0

    def database_url(self, database: str) -> str:
        """The worker role's URL, without a password: libpq reads it from the password file (PGPASSFILE)."""
        return f"postgresql://{WORKER_ROLE}@{self.host}:{self.pg_port}/{database}"

    @property
    def storage_url(self) -> str:
        """What workers pass as STORAGE (Optuna)."""
        return self.database_url("optuna")

    @property
    def pgpass(self) -> Path:
        """The worker role's password file (0600): what workers set as PGPASSFILE."""
        return Path(self.state_dir) / "pgpass"

    def admin(self, database: str = "postgres"):
        """A connection as the superuser, for provisioning only; its password never leaves this process."""
        import psycopg

        return psycopg.connect(
            host=self.host,
            port=self.pg_port,
            user="postgres",
            password=self.password,
            dbname=database,
            autocommit=True,
            connect_timeout=10,
        )

    @property
    def tracking_uri(self) -> str:
        """What workers set as MLFLOW_TRACKING_URI."""
        return f"http://{self.host}:{self.mlflow_port}"

    @property
    def pgdata(self) -> Path:
        return Path(self.state_dir) / "pgdata"


# helpers


def postgres_bin() -> Path:
    """The directory of the system's PostgreSQL server binaries (initdb, pg_ctl, postgres)."""
    found = shutil.which("pg_ctl")
    if found and shutil.which("initdb"):
        return Path(found).resolve().parent
    candidates = sorted(Path("/usr/lib/postgresql").glob("*/bin/pg_ctl"), key=lambda p: int(p.parts[-3]))
    if candidates:
        return candidates[-1].parent
    if os.geteuid() == 0 and shutil.which("apt-get") and not getattr(postgres_bin, "tried_apt", False):
        postgres_bin.tried_apt = True  # once per process; Debian/Ubuntu put the binaries in /usr/lib/postgresql
        print("PostgreSQL not found; trying apt-get install postgresql ...", flush=True)
        env = {**os.environ, "DEBIAN_FRONTEND": "noninteractive"}
        subprocess.run(["apt-get", "update", "-qq"], env=env, capture_output=True)
        subprocess.run(["apt-get", "install", "-y", "-qq", "postgresql"], env=env, capture_output=True)
        return postgres_bin()
    raise TrackingServerError(
        "PostgreSQL server binaries (initdb, pg_ctl) not found: install them "
        "(Debian/Ubuntu: apt-get install postgresql; macOS: brew install postgresql@15) and run again"
    )


def as_postgres_user() -> list[str]:
    """A command prefix running PostgreSQL as an unprivileged user when we are root; empty otherwise."""
    if os.geteuid() != 0:
        return []
    for name in UNPRIVILEGED:
        try:
            pwd.getpwnam(name)
        except KeyError:
            continue
        return ["runuser", "-u", name, "--"]
    raise TrackingServerError(f"running as root and none of the users {UNPRIVILEGED} exists to run PostgreSQL")


def hand_over(path: Path) -> None:
    """Give `path` to the user PostgreSQL runs as (when we are root)."""
    prefix = as_postgres_user()
    if prefix:
        entry = pwd.getpwnam(prefix[2])
        os.chown(path, entry.pw_uid, entry.pw_gid)


def run(command: list[str], what: str) -> None:
    done = subprocess.run(command, capture_output=True, text=True)
    if done.returncode:
        detail = (done.stderr or done.stdout).strip().splitlines()
        raise TrackingServerError(f"{what} failed: {detail[-1] if detail else done.returncode}")


def read_state(state_dir: Path) -> TrackingServer | None:
    """The running server's state (server.json), with the database password from its own file."""
    file = state_dir / "server.json"
    if not file.exists():
        return None
    fields = json.loads(file.read_text())
    fields["password"] = read_password(state_dir) or fields.get("password", "")  # server.json of old kept it
    return TrackingServer(**fields)


def write_state(server: TrackingServer) -> None:
    file = Path(server.state_dir) / "server.json"
    fields = {k: v for k, v in asdict(server).items() if k != "password"}
    file.write_text(json.dumps(fields, indent=2))
    file.chmod(0o600)


def read_password(state_dir: Path, name: str = PASSWORD_FILE) -> str | None:
    file = state_dir / name
    return file.read_text().strip() if file.exists() else None


def write_password(state_dir: Path, password: str, name: str = PASSWORD_FILE) -> None:
    """A database password, 0600 from its first byte; a stop keeps it, since the data needs it."""
    write_secret(state_dir / name, password + "\n")


# PostgreSQL


def start_postgres(server: TrackingServer) -> None:
    bin_dir, prefix, state = postgres_bin(), as_postgres_user(), Path(server.state_dir)
    if not (server.pgdata / "PG_VERSION").exists():
        server.pgdata.mkdir(mode=0o700)
        hand_over(server.pgdata)
        password_file = state / "initdb.pw"
        password_file.write_text(server.password + "\n")
        password_file.chmod(0o600)
        hand_over(password_file)
        try:
            command = [str(bin_dir / "initdb"), "-D", str(server.pgdata), "-U", "postgres", "-E", "UTF8"]
            command += [f"--pwfile={password_file}", "--auth=scram-sha-256", "--no-instructions"]
            run(prefix + command, f"initdb in {server.pgdata} (is every parent directory readable by {prefix[2:3]}?)")
        finally:
            password_file.unlink()
        if server.host not in ("127.0.0.1", "localhost", "::1"):
            with open(server.pgdata / "pg_hba.conf", "a") as hba:  # workers on other machines, with the password
                hba.write("host all all 0.0.0.0/0 scram-sha-256\nhost all all ::/0 scram-sha-256\n")
    log = state / "postgres.log"
    log.touch()
    hand_over(log)
    options = f"-c listen_addresses={server.host} -p {server.pg_port} -k {server.pgdata}"
    command = [str(bin_dir / "pg_ctl"), "-D", str(server.pgdata), "-l", str(log), "-w", "-t", "60", "-o", options]
    run(prefix + command + ["start"], f"PostgreSQL on {server.host}:{server.pg_port} (see {log})")


def provision(server: TrackingServer, worker_password: str) -> None:
    """The worker role: a login that owns the `optuna` and `mlflow` databases and nothing else (no superuser,
    so no `COPY ... TO PROGRAM`); its password goes to the 0600 password file workers read."""
    from psycopg import sql

    role = sql.Identifier(WORKER_ROLE)
    with server.admin() as connection:
        exists = connection.execute("SELECT 1 FROM pg_roles WHERE rolname = %s", (WORKER_ROLE,)).fetchone()
        verb = sql.SQL("ALTER ROLE" if exists else "CREATE ROLE")
        options = sql.SQL("WITH LOGIN NOSUPERUSER NOCREATEDB NOCREATEROLE NOREPLICATION PASSWORD {}")
        connection.execute(sql.SQL("{} {} ").format(verb, role) + options.format(sql.Literal(worker_password)))
        for name in DATABASES:
            if connection.execute("SELECT 1 FROM pg_database WHERE datname = %s", (name,)).fetchone():
                connection.execute(sql.SQL("ALTER DATABASE {} OWNER TO {}").format(sql.Identifier(name), role))
            else:
                connection.execute(sql.SQL("CREATE DATABASE {} OWNER {}").format(sql.Identifier(name), role))
    for name in DATABASES:
        hand_over_objects(server, name)
    hosts = dict.fromkeys([server.host, "127.0.0.1", "localhost"])
    write_secret(server.pgpass, "".join(f"{h}:{server.pg_port}:*:{WORKER_ROLE}:{worker_password}\n" for h in hosts))


def hand_over_objects(server: TrackingServer, database: str) -> None:
    """Tables, sequences and enum types the superuser made before there was a worker role: the role's now."""
    from psycopg import sql

    query = (
        "SELECT 'TABLE', c.relname FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace "
        "WHERE n.nspname = 'public' AND c.relkind IN ('r', 'S', 'v') AND pg_get_userbyid(c.relowner) = 'postgres' "
        "UNION ALL SELECT 'TYPE', t.typname FROM pg_type t JOIN pg_namespace n ON n.oid = t.typnamespace "
        "WHERE n.nspname = 'public' AND t.typtype = 'e' AND pg_get_userbyid(t.typowner) = 'postgres'"
    )
    with server.admin(database) as connection:
        for kind, name in connection.execute(query).fetchall():
            statement = sql.SQL("ALTER {} public.{} OWNER TO {}")
            connection.execute(statement.format(sql.SQL(kind), sql.Identifier(name), sql.Identifier(WORKER_ROLE)))


def postgres_running(server: TrackingServer) -> bool:
    """Whether a PostgreSQL runs on this data (a postmaster.pid left by a killed one does not count)."""
    if not (server.pgdata / "postmaster.pid").exists():
        return False
    command = as_postgres_user() + [str(postgres_bin() / "pg_ctl"), "-D", str(server.pgdata), "status"]
    return subprocess.run(command, capture_output=True).returncode == 0


def stop_postgres(server: TrackingServer) -> None:
    if postgres_running(server):
        command = [str(postgres_bin() / "pg_ctl"), "-D", str(server.pgdata), "-m", "fast", "-w", "stop"]
        run(as_postgres_user() + command, "stopping PostgreSQL")


# the MLflow server


def start_mlflow(server: TrackingServer, allowed_hosts: list[str], workers: int) -> int:
    from mlflow.store.tracking.sqlalchemy_store import SqlAlchemyStore

    artifacts = Path(server.state_dir) / "artifacts"
    artifacts.mkdir(exist_ok=True)
    backend = server.database_url("mlflow")  # no password: the server reads the worker role's from PGPASSFILE
    env = {**os.environ, "PGPASSFILE": str(server.pgpass)}
    with password_file(server.pgpass):
        SqlAlchemyStore(backend, artifacts.as_uri())  # the schema, created once here, not raced by server workers
    hosts = [f"{h}:{server.mlflow_port}" for h in ["127.0.0.1", "localhost", server.host, *allowed_hosts]]
    env |= {"MLFLOW_AUTH_CONFIG_PATH": str(auth_config(server)), "MLFLOW_AUTH_ADMIN_USERNAME": MLFLOW_ADMIN}
    env["MLFLOW_AUTH_ADMIN_PASSWORD"] = secret(server, MLFLOW_ADMIN_PASSWORD_FILE)  # the environment: not in `ps`
    command = [sys.executable, "-m", "mlflow", "server", "--app-name", "basic-auth", "--backend-store-uri", backend]
    command += ["--serve-artifacts", "--artifacts-destination", artifacts.as_uri()]
    command += ["--host", server.host, "--port", str(server.mlflow_port), "--workers", str(workers)]
    command += ["--allowed-hosts", ",".join(dict.fromkeys(hosts))]
    with open(Path(server.state_dir) / "mlflow.log", "ab") as log:
        process = start_group(command, log, env=env, cwd=server.state_dir)

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


def secret(server: TrackingServer, name: str) -> str:
    """A password kept in the state folder (0600), made on first use; a stop keeps it."""
    state = Path(server.state_dir)
    value = read_password(state, name) or secrets.token_urlsafe(18)
    write_password(state, value, name)
    return value


def auth_config(server: TrackingServer) -> Path:
    """MLflow's basic-auth settings (no secret in them): its user store beside the data, READ by default."""
    path = Path(server.state_dir) / "basic_auth.ini"
    database = Path(server.state_dir) / "basic_auth.db"
    path.write_text(
        "[mlflow]\ndefault_permission = READ\n"
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
    try:
        with urllib.request.urlopen(request, timeout=30) as response:
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
    return answers(f"{server.tracking_uri}/health")


def log_tail(server: TrackingServer) -> str:
    return " | ".join((Path(server.state_dir) / "mlflow.log").read_text(errors="replace").strip().splitlines()[-3:])


# commands


def start(
    state_dir: str | Path = STATE,
    host: str = LOOPBACK,
    pg_port: int | None = None,
    mlflow_port: int | None = None,
    allowed_hosts: list[str] | None = None,
    workers: int = 2,
) -> TrackingServer:
    """Start (or find running) PostgreSQL + mlflow server with their state in `state_dir`."""
    state = Path(state_dir).resolve()
    state.mkdir(parents=True, exist_ok=True)
    previous = read_state(state)
    if previous and pid_alive(previous.mlflow_pid) and healthy(previous):
        return previous
    password = read_password(state) or (previous.password if previous else None) or secrets.token_urlsafe(18)
    write_password(state, password)
    server = TrackingServer(
        state_dir=str(state),
        host=host,
        pg_port=pg_port or (previous.pg_port if previous else POSTGRES_PORT),
        mlflow_port=mlflow_port or (previous.mlflow_port if previous else MLFLOW_PORT),
        password=password,
    )
    worker_password = read_password(state, WORKER_PASSWORD_FILE) or secrets.token_urlsafe(18)
    write_password(state, worker_password, WORKER_PASSWORD_FILE)
    stop_leftovers(server, previous)
    try:
        start_postgres(server)
        provision(server, worker_password)
        server.mlflow_pid = start_mlflow(server, allowed_hosts or [], workers)
    except BaseException:
        stop_postgres(server)  # a start that fails leaves nothing running
        raise
    write_state(server)
    return server


def stop_leftovers(server: TrackingServer, previous: TrackingServer | None) -> None:
    """What a crashed, killed or half-failed start left running (an mlflow server, a PostgreSQL): start clean."""
    if previous and pid_alive(previous.mlflow_pid):
        stop_tree(previous.mlflow_pid, timeout=5)
    stop_postgres(server)


def stop(state_dir: str | Path = STATE) -> bool:
    """Stop what `start` started; the data stays. False when nothing was running."""
    state = Path(state_dir).resolve()
    server = read_state(state)
    if server is None:  # no server.json: still stop a PostgreSQL a failed start may have left
        leftover = TrackingServer(str(state), LOOPBACK, 0, 0, "")
        running = postgres_running(leftover)
        stop_postgres(leftover)
        return running
    if pid_alive(server.mlflow_pid):
        stop_tree(server.mlflow_pid, timeout=5)  # uvicorn waits for idle keep-alive clients; requests are committed
    stop_postgres(server)
    (state / "server.json").unlink()
    return True
