"""The tracking server's state: where it runs, its secrets (each 0600, in files a stop keeps), and its
running state (`server.json`, which a stop removes)."""

from __future__ import annotations

import json
import secrets
from dataclasses import asdict, dataclass
from pathlib import Path

from training.infra.places import TRACKING_DIR
from training.infra.processes import write_secret

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
FLASK_SECRET_FILE = "mlflow-flask.secret"  # the basic-auth app's CSRF key
# Who runs PostgreSQL when we are root (initdb refuses root): its own system user, made by the distribution's
# package; never a shared one like `nobody`, whose other processes would own the data and the passwords.
POSTGRES_USER = "postgres"
SUPERUSER = "postgres"  # the database superuser: logs in through the Unix socket in the data folder alone


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
    tls: bool = False  # both servers speak TLS with a certificate of the state's own CA (always off loopback)

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
        """A connection as the superuser, for provisioning only, through the Unix socket in the data folder (0700):
        pg_hba.conf refuses the superuser over TCP. Its password never leaves this process."""
        import psycopg

        return psycopg.connect(
            host=str(self.pgdata),
            port=self.pg_port,
            user=SUPERUSER,
            password=self.password,
            dbname=database,
            autocommit=True,
            connect_timeout=10,
        )

    @property
    def tracking_uri(self) -> str:
        """What workers set as MLFLOW_TRACKING_URI."""
        return f"{'https' if self.tls else 'http'}://{self.host}:{self.mlflow_port}"

    @property
    def ca(self) -> Path:
        """The certificate clients verify both servers against (with TLS)."""
        return Path(self.state_dir) / "tls" / "ca.crt"

    def client_environment(self) -> dict[str, str]:
        """What a worker's environment needs besides the MLflow account: the password file and, with TLS, the CA
        both clients verify against (`sslmode=verify-full`)."""
        tls = {
            "PGSSLMODE": "verify-full",
            "PGSSLROOTCERT": str(self.ca),
            "MLFLOW_TRACKING_SERVER_CERT_PATH": str(self.ca),
        }
        return {"PGPASSFILE": str(self.pgpass)} | (tls if self.tls else {})

    @property
    def pgdata(self) -> Path:
        return Path(self.state_dir) / "pgdata"


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


def secret(server: TrackingServer, name: str) -> str:
    """A password kept in the state folder (0600), made on first use; a stop keeps it."""
    state = Path(server.state_dir)
    value = read_password(state, name) or secrets.token_urlsafe(18)
    write_password(state, value, name)
    return value
