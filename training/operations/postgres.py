"""The tracking server's PostgreSQL: made and started as an unprivileged user, password logins only (TCP over
TLS alone when it leaves loopback), and a worker role that owns the two databases and nothing else."""

from __future__ import annotations

import os
import pwd
import shutil
import subprocess
from pathlib import Path

from training.infra.certificates import ensure_certificates
from training.infra.processes import write_secret
from training.operations.server_state import (
    DATABASES,
    POSTGRES_USER,
    SUPERUSER,
    WORKER_ROLE,
    TrackingServer,
    TrackingServerError,
)


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
    """A command prefix running PostgreSQL as its own system user when we are root; empty otherwise."""
    if os.geteuid() != 0:
        return []
    try:
        pwd.getpwnam(POSTGRES_USER)
    except KeyError:
        raise TrackingServerError(
            f"running as root, PostgreSQL needs a system user of its own, {POSTGRES_USER!r}, and there is none: "
            f"install the distribution's package (apt-get install postgresql makes it), create it (useradd --system "
            f"{POSTGRES_USER}), or run as an ordinary user (never as a shared one like nobody)"
        ) from None
    return ["runuser", "-u", POSTGRES_USER, "--"]


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


MAX_CONNECTIONS = 400


def access_rules(tls: bool) -> list[str]:
    """pg_hba.conf's lines, the first that matches deciding: password logins (scram-sha-256) only; the superuser
    through the Unix socket alone (the data folder, 0700), never TCP; the others over TCP from anywhere over TLS
    alone (`hostssl`) when the server speaks it, else from loopback only."""
    if tls:
        rules = ["hostssl all all 0.0.0.0/0 scram-sha-256", "hostssl all all ::/0 scram-sha-256"]
    else:
        rules = ["host all all 127.0.0.1/32 scram-sha-256", "host all all ::1/128 scram-sha-256"]
    return ["local all all scram-sha-256", f"host all {SUPERUSER} all reject", *rules]


def write_access_rules(server: TrackingServer) -> None:
    path = server.pgdata / "pg_hba.conf"
    path.write_text("\n".join(access_rules(server.tls)) + "\n")
    hand_over(path)


def certificate_names(server: TrackingServer, allowed_hosts: list[str]) -> list[str]:
    return list(dict.fromkeys([server.host, "127.0.0.1", "localhost", *allowed_hosts]))


def start_postgres(server: TrackingServer, allowed_hosts: list[str] | None = None) -> None:
    bin_dir, prefix, state = postgres_bin(), as_postgres_user(), Path(server.state_dir)
    if not (server.pgdata / "PG_VERSION").exists():
        server.pgdata.mkdir(mode=0o700)
        hand_over(server.pgdata)
        password_file = state / "initdb.pw"
        write_secret(password_file, server.password + "\n")
        hand_over(password_file)
        try:
            command = [str(bin_dir / "initdb"), "-D", str(server.pgdata), "-U", SUPERUSER, "-E", "UTF8"]
            command += [f"--pwfile={password_file}", "--auth=scram-sha-256", "--no-instructions"]
            run(prefix + command, f"initdb in {server.pgdata} (is every parent directory readable by {prefix[2:3]}?)")
        finally:
            password_file.unlink()
    write_access_rules(server)
    log = state / "postgres.log"
    log.touch(mode=0o600)
    log.chmod(0o600)
    hand_over(log)
    options = f"-c listen_addresses={server.host} -p {server.pg_port} -k {server.pgdata}"
    # Workers are not superusers: the default 100 connections, less the superuser's reserve, ran out with three
    # workers, two conclusions and the mlflow server's pools (each SQLAlchemy engine keeps several).
    options += f" -c max_connections={MAX_CONNECTIONS}"
    if server.tls:  # the data directory's server.crt and server.key: copies readable by PostgreSQL's user
        certificate = ensure_certificates(state / "tls", certificate_names(server, allowed_hosts))
        for source, name in ((certificate.certificate, "server.crt"), (certificate.key, "server.key")):
            write_secret(server.pgdata / name, source.read_text())
            hand_over(server.pgdata / name)
        options += " -c ssl=on"
    command = [str(bin_dir / "pg_ctl"), "-D", str(server.pgdata), "-l", str(log), "-w", "-t", "60", "-o", options]
    run(prefix + command + ["start"], f"PostgreSQL on {server.host}:{server.pg_port} (see {log})")


def provision(server: TrackingServer, worker_password: str) -> None:
    """The worker role: a login that owns the `optuna` and `mlflow` databases and nothing else (no superuser,
    so no `COPY ... TO PROGRAM`); its password goes to the 0600 password file workers read."""
    import psycopg

    try:
        create_worker_role(server, worker_password)
        for name in DATABASES:
            hand_over_objects(server, name)
    except psycopg.Error as error:
        line = (str(error).strip().splitlines() or [type(error).__name__])[0]
        raise TrackingServerError(f"cannot set up the database role {WORKER_ROLE!r}: {line}") from None
    # Any host name: workers reach this server by whatever name ALLOWED_HOSTS lists (the port tells it apart).
    write_secret(server.pgpass, f"*:{server.pg_port}:*:{WORKER_ROLE}:{worker_password}\n")


def create_worker_role(server: TrackingServer, worker_password: str) -> None:
    from psycopg import sql

    role = sql.Identifier(WORKER_ROLE)
    with server.admin() as connection:
        exists = connection.execute("SELECT 1 FROM pg_roles WHERE rolname = %s", (WORKER_ROLE,)).fetchone()
        verb = sql.SQL("ALTER ROLE" if exists else "CREATE ROLE")
        options = sql.SQL("WITH LOGIN NOSUPERUSER NOCREATEDB NOCREATEROLE NOREPLICATION PASSWORD {}")
        # Hashed here (SCRAM): the statement, which a failure would log, never holds the password itself.
        hashed = connection.pgconn.encrypt_password(worker_password.encode(), WORKER_ROLE.encode(), b"scram-sha-256")
        connection.execute(sql.SQL("{} {} ").format(verb, role) + options.format(sql.Literal(hashed.decode())))
        for name in DATABASES:
            if connection.execute("SELECT 1 FROM pg_database WHERE datname = %s", (name,)).fetchone():
                connection.execute(sql.SQL("ALTER DATABASE {} OWNER TO {}").format(sql.Identifier(name), role))
            else:
                connection.execute(sql.SQL("CREATE DATABASE {} OWNER {}").format(sql.Identifier(name), role))


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
