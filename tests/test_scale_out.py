"""The README's recipe for several machines, for real: a PostgreSQL + `mlflow server` (the code behind
`make tracking-server`, on free loopback ports), three tuning workers started at the same moment on empty
databases, one killed with kill -9 in the middle of a trial, then two conclusions at once and an archive
built through the tracking server."""

import json
import os
import re
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
import types
import zipfile
from pathlib import Path

import optuna
import psutil
import pytest
import sqlalchemy
from mlflow import MlflowClient

from training.infra.processes import answers, free_ports
from training.infra.storage_urls import sqlalchemy_url
from training.operations import mlflow_server, postgres, server_state
from training.operations import server as tracking_server
from training.tracking import mlflow_store
from training.tracking.trial_log import RUN_STATUS

pytestmark = pytest.mark.e2e

ROOT = Path(__file__).resolve().parents[1]
# A grace of a few heartbeats: a busy 2-core machine may delay a live worker's beat by seconds, and a grace
# shorter than that fails live trials as dead.
SURVIVOR_TRIALS, HEARTBEAT, GRACE = 3, 2, 10

# A worker is `python -m training tune`, started through this shim: it imports everything first, says it is
# ready and waits for the go file (so the three really race on the empty databases), optionally holds each
# trial while a hold file exists, and the victim stalls after its first trial's first epoch (so it is killed
# mid-trial, however slowly the machine runs; a trial it might still finish would race the kill); its trials write
# to the study every second, so the victim is seen mid-trial soon.
WORKER = """
import os, sys, time
import training.tracking.trial_record as record
record.FLUSH_SECONDS = 1  # as shipped 10 s: a trial's reports and run id reach the study within a second
from training.search import objective
from training.cli import main

ready, go, hold, stall = sys.argv[1], sys.argv[2], sys.argv[3], sys.argv[4] == "stall"
real_call, real_fit = objective.Objective.__call__, objective.fit

def held(self, trial):
    while hold and os.path.exists(hold):
        time.sleep(0.1)
    return real_call(self, trial)

def stalled(model, data, config, on_epoch=None):
    def beat(epoch, row):
        on_epoch(epoch, row)
        while stall:  # reported (the heartbeat thread writes it to the study) and never finished: kill -9 here
            time.sleep(1)
    return real_fit(model, data, config, beat if on_epoch else None)

objective.Objective.__call__, objective.fit = held, stalled
open(ready, "w").close()
while not os.path.exists(go):
    time.sleep(0.05)
sys.exit(main(sys.argv[5:]))
"""


@pytest.fixture(scope="module")
def server():
    """The tracking server as a host off loopback gets it (TLS, its own CA): the workers verify both servers. The
    module's last server test stops, kills and restarts it (a fresh initdb is the slow part of a start)."""
    state = Path(tempfile.mkdtemp(prefix="tracking-"))
    state.chmod(0o755)  # PostgreSQL runs as an unprivileged user when the tests run as root
    try:
        ports = dict(zip(("pg_port", "mlflow_port"), free_ports(2)))
        started = tracking_server.start(state, **ports, workers=1, tls=True)
        with pytest.MonkeyPatch.context() as patch:  # as each worker is told to: the password file, no password
            for key, value in (started.client_environment() | mlflow_server.worker_credentials(started)).items():
                patch.setenv(key, value)  # PGSSLMODE=verify-full, the CA, the password file, the account
            yield started
    finally:
        tracking_server.stop(state)
        shutil.rmtree(state, ignore_errors=True)


def cli(server, *args: str) -> list[str]:
    return [*args, "--storage", server.storage_url, "--tracking-uri", server.tracking_uri]


def start_worker(server, tmp: Path, index: int, trials: int, hold: str, stall: bool) -> subprocess.Popen:
    tune = ["tune", "--model", "nw", "--dataset", "sine", "--trials", str(trials), "--device", "cpu"]
    tune += ["--no-conclude", "--no-progress", "--heartbeat", str(HEARTBEAT), "--grace", str(GRACE)]
    command = [sys.executable, "-c", WORKER, str(tmp / f"ready-{index}"), str(tmp / "go"), hold]
    command.append("stall" if stall else "go on")
    return subprocess.Popen(
        command + cli(server, *tune),
        cwd=ROOT,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
        start_new_session=True,
    )


def wait_for(condition, what: str, seconds: float = 120):
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        found = condition()
        if found:
            return found
        time.sleep(0.1)
    raise AssertionError(f"timed out waiting for {what}")


def victim_trial(storage: optuna.storages.BaseStorage, pid: int):
    """The victim's trial that is running and has reported at least one epoch, if any."""
    try:
        trials = optuna.load_study(study_name="nw-sine", storage=storage).get_trials(deepcopy=False)
    except KeyError:
        return None
    worker = f"{socket.gethostname()}:{pid}"
    running = [t for t in trials if t.user_attrs.get("worker") == worker and t.state.name == "RUNNING"]
    return next((t for t in running if t.intermediate_values and "mlflow_run_id" in t.user_attrs), None)


@pytest.fixture(scope="module")
def tuned(server, tmp_path_factory):
    tmp = tmp_path_factory.mktemp("workers")
    hold = tmp / "hold"
    hold.touch()
    victim = start_worker(server, tmp, 0, 30, "", stall=True)
    survivors = [start_worker(server, tmp, i, SURVIVOR_TRIALS, str(hold), stall=False) for i in (1, 2)]
    workers = [victim, *survivors]
    try:
        wait_for(lambda: all((tmp / f"ready-{i}").exists() for i in range(3)), "the workers to import", 180)
        (tmp / "go").touch()  # all three open the empty databases at once
        watching = optuna.storages.RDBStorage(server.storage_url)  # one engine for every poll, not one a poll
        dead = wait_for(lambda: victim_trial(watching, victim.pid), "the victim to be mid-trial", 120)
        os.killpg(victim.pid, signal.SIGKILL)
        victim.wait(timeout=30)
        wait_for(lambda: silent_seconds(watching, dead.number) > GRACE + 0.5, "the dead trial to turn stale", 60)
        hold.unlink()  # the survivors go on: the next trial one of them starts fails and retries the dead one
        command_lines = every_command_line()  # while the survivors tune, the server and PostgreSQL serve them
        outputs = [p.communicate(timeout=300)[0] for p in survivors]
    finally:
        for process in workers:
            if process.poll() is None:
                os.killpg(process.pid, signal.SIGKILL)
                process.wait()
    storage = optuna.storages.RDBStorage(server.storage_url)
    return {
        "dead": dead,
        "victim": victim,
        "survivors": survivors,
        "outputs": outputs,
        "storage": storage,
        "command_lines": command_lines,
    }


def silent_seconds(storage: optuna.storages.RDBStorage, number: int) -> float:
    """How long ago trial `number` last beat, by the database's clock (the one Optuna's stale check reads)."""
    query = sqlalchemy.text(
        "SELECT EXTRACT(EPOCH FROM now() - h.heartbeat) FROM trial_heartbeats h JOIN trials t USING (trial_id) "
        "WHERE t.number = :number"
    )
    with storage.engine.connect() as connection:
        return float(connection.execute(query, {"number": number}).scalar_one())


def every_command_line() -> list[str]:
    """What `ps -eo args` shows every local user."""
    return [" ".join(p.info["cmdline"] or []) for p in psutil.process_iter(["cmdline"])]


@pytest.fixture(scope="module")
def concluded(server, tuned):
    # two conclusions at the same moment: one refits and registers, the other finds it registered
    command = [sys.executable, "-m", "training", *cli(server, "conclude", "--name", "nw-sine")]
    command += ["--heartbeat", str(HEARTBEAT), "--grace", str(GRACE), "--device", "cpu"]
    runs = [subprocess.Popen(command, cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)]
    runs.append(subprocess.Popen(command, cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True))
    outputs = [run.communicate(timeout=300)[0] for run in runs]
    assert [run.returncode for run in runs] == [0, 0], outputs
    return outputs


def test_workers_started_together_all_ran_and_count_only_their_own_trials(tuned):
    assert tuned["victim"].returncode == -signal.SIGKILL
    for process, output in zip(tuned["survivors"], tuned["outputs"]):
        assert process.returncode == 0, output
        assert "Traceback" not in output and "UniqueViolation" not in output
        mine = re.search(r"this worker\s+(\d+) trials", output)
        assert mine and int(mine.group(1)) == SURVIVOR_TRIALS, output
        assert "make conclude NAME=nw-sine" in output  # CONCLUDE=0: no refit, no registration here


def test_trials_add_up_and_first_draws_differ(tuned):
    study = optuna.load_study(study_name="nw-sine", storage=tuned["storage"])
    trials = study.get_trials(deepcopy=False)
    victim = f"{socket.gethostname()}:{tuned['victim'].pid}"
    by_victim = [t for t in trials if t.user_attrs.get("worker") == victim]
    assert len(trials) == 2 * SURVIVOR_TRIALS + len(by_victim)  # the retry is one of a survivor's trials
    assert all(t.state.is_finished() for t in trials), [t.state for t in trials]
    retried_from = optuna.storages.RetryHeartbeatStaleTrialCallback.retried_trial_number
    fresh = [tuple(sorted(t.params.items())) for t in trials if retried_from(t) is None]
    assert len(fresh) == len(set(fresh)), "parallel workers drew the same parameters"
    assert len({tuple(sorted(t.params.items())) for t in trials[:3]}) == 3


def test_the_killed_trial_failed_and_was_retried(tuned):
    trials = optuna.load_study(study_name="nw-sine", storage=tuned["storage"]).get_trials(deepcopy=False)
    dead = trials[tuned["dead"].number]
    assert dead.state == optuna.trial.TrialState.FAIL
    retried_from = optuna.storages.RetryHeartbeatStaleTrialCallback.retried_trial_number
    retries = [t for t in trials if retried_from(t) == dead.number]
    assert len(retries) == 1 and retries[0].state.is_finished() and retries[0].params == dead.params
    assert retries[0].user_attrs["worker"] != dead.user_attrs["worker"]


def test_every_trial_is_a_closed_child_run_in_step_with_optuna(server, tuned, concluded):
    client = MlflowClient(server.tracking_uri, server.tracking_uri)
    trials = optuna.load_study(study_name="nw-sine", storage=tuned["storage"]).get_trials(deepcopy=False)
    for trial in trials:
        run = client.get_run(trial.user_attrs["mlflow_run_id"])
        assert run.info.status == RUN_STATUS[trial.state.name], (trial.number, trial.state, run.info.status)
        assert run.data.tags["optuna.state"] == trial.state.name
    dead = client.get_run(tuned["dead"].user_attrs["mlflow_run_id"])
    assert "heartbeat" in dead.data.tags["optuna.reason"]
    experiment = client.get_experiment_by_name("nw-sine").experiment_id
    assert not client.search_runs([experiment], "attributes.status = 'RUNNING'")
    parents = client.search_runs([experiment], "tags.kind = 'tuning'")
    assert sorted(r.info.status for r in parents) == ["FINISHED", "FINISHED", "KILLED"]
    seeds = {r.data.params["sampler_seed"] for r in parents}
    assert len(seeds) == 3 and "0" in seeds  # one seed per worker; the first invocation keeps the seed given


def test_one_conclusion_one_version_and_the_champion_is_the_best_by_validation(server, tuned, concluded):
    # registry_uri too: a client given only a tracking URI reads the process-wide registry of earlier tests
    client = MlflowClient(server.tracking_uri, server.tracking_uri)
    study = optuna.load_study(study_name="nw-sine", storage=tuned["storage"])
    versions = client.search_model_versions("name = 'nw-sine'")
    assert len(versions) == 1, [(v.version, v.tags.get("candidate")) for v in versions]
    champion = client.get_model_version_by_alias("nw-sine", "champion")
    assert champion.version == versions[0].version
    assert champion.tags["optuna.trial"] == str(study.best_trial.number)
    assert float(champion.tags["val_mse"]) == pytest.approx(study.best_value)
    assert "test_mse" in champion.tags
    assert sum("(registered before)" in output for output in concluded) == 1


def test_archive_builds_the_champion_through_the_tracking_server(server, concluded, tmp_path, capsys):
    from training.cli import main  # the command line in this process: its credentials from the environment

    done = main(["archive", "--name", "nw-sine", "--out", str(tmp_path), "--tracking-uri", server.tracking_uri])
    assert done == 0, capsys.readouterr()
    champion = MlflowClient(server.tracking_uri, server.tracking_uri).get_model_version_by_alias("nw-sine", "champion")
    with zipfile.ZipFile(tmp_path / "nw-sine.mar") as archive:
        info = json.loads(archive.read("model_info.json"))
    assert info["version"] == str(champion.version) and info["name"] == "nw-sine"


def test_workers_log_in_as_a_role_that_owns_the_two_databases_and_cannot_run_programs(server):
    import psycopg

    assert "@" in server.storage_url and ":" not in server.storage_url.split("//", 1)[1].split("@")[0]
    assert (server.pgpass.stat().st_mode & 0o777) == 0o600
    with psycopg.connect(server.storage_url, autocommit=True) as connection:
        who = "SELECT current_user, rolsuper FROM pg_roles WHERE rolname = current_user"
        role, superuser = connection.execute(who).fetchone()
        assert (role, superuser) == (server_state.WORKER_ROLE, False)
        member = "SELECT pg_has_role(current_user, 'pg_execute_server_program', 'MEMBER')"
        assert connection.execute(member).fetchone() == (False,)
        with pytest.raises(psycopg.errors.InsufficientPrivilege):
            connection.execute("COPY (SELECT 1) TO PROGRAM 'true'")
        owners = "SELECT datname, pg_get_userbyid(datdba) FROM pg_database WHERE datname IN ('optuna', 'mlflow')"
        assert dict(connection.execute(owners).fetchall()) == dict.fromkeys(["optuna", "mlflow"], role)
    superuser = {"user": server_state.SUPERUSER, "password": server.password, "dbname": "postgres"}
    with pytest.raises(psycopg.OperationalError, match="pg_hba.conf rejects"):  # the right password, over TCP
        psycopg.connect(host="127.0.0.1", port=server.pg_port, connect_timeout=10, **superuser)
    with server.admin() as admin:  # its one way in: the Unix socket in the data folder (0700)
        assert admin.execute("SELECT rolsuper FROM pg_roles WHERE rolname = current_user").fetchone() == (True,)


def test_the_tracking_server_wants_an_account_and_the_workers_is_no_admin(server):
    alias = "/api/2.0/mlflow/registered-models/alias"
    planted = {"name": "nw-sine", "alias": "champion", "version": "1"}
    assert mlflow_server.auth_request(server, "POST", alias, planted, ("", ""))[0] == 401
    assert mlflow_server.auth_request(server, "POST", alias, planted, ("tuner", "guess"))[0] == 401
    worker = (server_state.MLFLOW_WORKER, mlflow_server.worker_credentials(server)["MLFLOW_TRACKING_PASSWORD"])
    search = "/api/2.0/mlflow/experiments/search"
    assert mlflow_server.auth_request(server, "POST", search, {"max_results": 1}, worker)[0] == 200
    wrong = (worker[0], worker[1][:-1])  # right after the right one: the remembered check is for that password alone
    assert mlflow_server.auth_request(server, "POST", search, {"max_results": 1}, wrong)[0] == 401
    account = {"username": "intruder", "password": "a-password-long-enough-1"}
    assert mlflow_server.auth_request(server, "POST", "/api/2.0/mlflow/users/create", account, worker)[0] == 403
    admin = (server_state.MLFLOW_ADMIN, server_state.secret(server, server_state.MLFLOW_ADMIN_PASSWORD_FILE))
    for who, name in ((admin, "operators"), (worker, "workers-own")):
        status, body = mlflow_server.auth_request(
            server, "POST", "/api/2.0/mlflow/experiments/create", {"name": name}, who
        )
        assert status == 200, body
        run = {"experiment_id": json.loads(body)["experiment_id"]}
        allowed = 403 if who == admin else 200  # the worker writes what it created, and only reads the rest
        assert mlflow_server.auth_request(server, "POST", "/api/2.0/mlflow/runs/create", run, worker)[0] == allowed
    for name in (server_state.MLFLOW_ADMIN_PASSWORD_FILE, server_state.MLFLOW_WORKER_PASSWORD_FILE):
        assert (Path(server.state_dir) / name).stat().st_mode & 0o777 == 0o600
    state = Path(server.state_dir)
    assert state.stat().st_mode & 0o777 == 0o711 and (state / "artifacts").stat().st_mode & 0o777 == 0o700
    for name in ("mlflow.log", "basic_auth.db", "postgres.log"):
        assert (state / name).stat().st_mode & 0o077 == 0, name  # no other user reads the logs or accounts


def test_the_tracking_servers_default_permission_is_read(tmp_path):
    config = mlflow_server.auth_config(types.SimpleNamespace(state_dir=tmp_path)).read_text()
    assert "default_permission = READ" in config


def test_no_password_is_on_any_command_line(server, tuned, tmp_path):
    state = Path(server.state_dir)
    names = ["postgres.password", "worker.password", "mlflow-admin.password", "mlflow-worker.password"]
    secrets_ = [(state / name).read_text().strip() for name in names]
    lines = tuned["command_lines"] + every_command_line()  # during the multi-worker run, and after it
    lines += tuned["outputs"]  # what the workers printed
    lines += [(state / name).read_text(errors="replace") for name in ("mlflow.log", "postgres.log")]
    client = MlflowClient(server.tracking_uri)
    for run in client.search_runs([client.get_experiment_by_name("nw-sine").experiment_id]):
        lines += [str(run.data.params), str(run.data.tags)]  # what MLflow recorded
    assert all(secret not in line for secret in secrets_ for line in lines)
    assert any("mlflow" in line and "server" in line for line in lines)  # the scan saw the tracking server
    assert any("--storage" in line and "tune" in line for line in tuned["command_lines"])  # and the workers


def test_off_loopback_the_servers_speak_tls_and_keep_their_data_through_a_stop_and_a_kill_9(server, tmp_path):
    """Last of the module's server tests: it stops, kills and restarts the module's server."""
    import psycopg

    with pytest.raises(server_state.TrackingServerError, match="refusing to listen on 0.0.0.0 without TLS"):
        tracking_server.start(tmp_path / "plain", host="0.0.0.0", tls=False)
    state = Path(server.state_dir)

    def start():
        return tracking_server.start(state, pg_port=server.pg_port, mlflow_port=server.mlflow_port, workers=1, tls=True)

    def studies(server) -> set[str]:
        return set(optuna.get_all_study_names(storage=sqlalchemy_url(server.storage_url)))

    assert server.tracking_uri.startswith("https://")
    assert (state / "tls" / "server.key").stat().st_mode & 0o777 == 0o600
    with psycopg.connect(server.storage_url) as connection:
        assert connection.execute("SELECT ssl FROM pg_stat_ssl WHERE pid = pg_backend_pid()").fetchone() == (True,)
    with pytest.raises(psycopg.OperationalError):  # no TLS, no login
        psycopg.connect(server.storage_url, sslmode="disable", connect_timeout=10)
    client = mlflow_store.configure(server.tracking_uri)  # https, verified against the state's CA
    assert client.get_experiment_by_name("Default") is not None
    assert not answers(server.tracking_uri.replace("https://", "http://") + "/health")  # no plain http
    assert not answers(server.tracking_uri + "/health")  # nor a client that does not know the CA
    assert answers(server.tracking_uri + "/health", cafile=server.ca)

    # a stop and a start, then a kill -9 of everything and a start, bring back the same data
    optuna.create_study(study_name="kept", storage=sqlalchemy_url(server.storage_url))
    kept = studies(server)
    assert tracking_server.stop(state) and not (state / "server.json").exists()
    assert (state / server_state.PASSWORD_FILE).stat().st_mode & 0o777 == 0o600  # kept, private
    again = start()
    assert again.password == server.password and studies(again) == kept
    postmaster = int((again.pgdata / "postmaster.pid").read_text().split()[0])
    killed = [psutil.Process(postmaster), *psutil.Process(postmaster).children(recursive=True)]
    killed += [psutil.Process(again.mlflow_pid), *psutil.Process(again.mlflow_pid).children(recursive=True)]
    for process in killed:
        process.kill()
    psutil.wait_procs(killed, timeout=30)
    third = start()
    assert studies(third) == kept and mlflow_server.healthy(third)

    tracking_server.stop(state)
    with socket.socket() as squatter:  # the mlflow server cannot start: whatever started is stopped again
        squatter.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)  # the port may still be in TIME_WAIT
        squatter.bind(("127.0.0.1", server.mlflow_port))
        squatter.listen()
        with pytest.raises(server_state.TrackingServerError):
            start()
    assert not postgres.postgres_running(third)
    assert studies(start()) == kept  # and left running, as the module's fixture stops it


def test_a_start_never_stops_a_process_that_merely_has_the_recorded_pid(tmp_path):
    stranger = subprocess.Popen(["sleep", "60"])
    try:
        recorded = server_state.TrackingServer(str(tmp_path), "127.0.0.1", 1, 5000, "", mlflow_pid=stranger.pid)
        assert not tracking_server.ours(recorded)  # after a reboot the pid may belong to anything
    finally:
        stranger.kill()
        stranger.wait()
