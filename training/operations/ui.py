"""The review UIs as foreground processes: MLflow's UI (`make ui`) and optuna-dashboard (`make dashboard`).

Each runs in a process group of its own, on loopback; a busy port or a server that does not come up
ends the command non-zero with the cause, and SIGTERM/SIGINT to the wrapper ends the server and its
workers (gunicorn/uvicorn children included).
"""

from __future__ import annotations

import os
import signal
import sys
import tempfile
import time
from pathlib import Path

from training.infra import places, storage_urls
from training.infra.places import DASHBOARD_PORT, LOOPBACK, MLFLOW_PORT
from training.infra.processes import answers, port_is_free, signal_group, start_group, wait_until
from training.tracking import mlflow_store
from training.tracking.mlflow_store import NO_JOB_RUNNERS

HOST = LOOPBACK
UI_PORT, DASHBOARD_PORT = MLFLOW_PORT, DASHBOARD_PORT
START_SECONDS, STOP_SECONDS = 120, 15


class UIError(RuntimeError):
    """A review UI that cannot start: the port is taken, or the server exited or never answered."""


def check_port(port: int) -> None:
    if not port_is_free(port, HOST):
        raise UIError(f"port {port} on {HOST} is busy: pick another with PORT=...")


def run_foreground(command: list[str], port: int, health_path: str, what: str, env: dict | None = None) -> int:
    """Start `command` in its own process group, wait until `health_path` answers, then until it ends.

    SIGTERM/SIGINT to this process stop the whole group; the return code is 0 after such a stop."""
    check_port(port)
    with tempfile.TemporaryFile("w+") as log:
        child = start_group(command, log, env=env)
        stopping: list[float] = []

        def stop(signum, _frame) -> None:  # only signals here: waiting is the main loop's job
            if not stopping:
                stopping.append(time.monotonic())
                signal_group(child.pid, signal.SIGTERM)

        previous = {s: signal.signal(s, stop) for s in (signal.SIGTERM, signal.SIGINT)}
        try:
            _wait_ready(child, port, health_path, what, log, stopping)
            if not stopping:
                print(f"{what} on http://{HOST}:{port} (Ctrl-C to stop)", flush=True)
            while child.poll() is None:
                if stopping and time.monotonic() - stopping[0] > STOP_SECONDS:
                    signal_group(child.pid, signal.SIGKILL)
                time.sleep(0.2)
        finally:
            if child.poll() is None:
                signal_group(child.pid, signal.SIGKILL)
                child.wait()
            signal_group(child.pid, signal.SIGTERM)  # workers the server may have left behind
            for sig, handler in previous.items():
                signal.signal(sig, handler)
    return 0 if stopping else child.returncode


def _wait_ready(child, port: int, health_path: str, what: str, log, stopping: list) -> None:
    def check() -> None:  # a server that exits because it was asked to stop is no failure to start
        if child.poll() is not None and not stopping:
            log.seek(0)
            tail = "\n".join(log.read().strip().splitlines()[-15:])
            raise UIError(f"{what} exited with code {child.returncode} before answering:\n{tail}")

    def ready() -> bool:  # or asked to stop meanwhile
        return bool(stopping) or answers(f"http://{HOST}:{port}{health_path}")

    if not wait_until(ready, START_SECONDS, interval=0.3, check=check):
        raise UIError(f"{what} did not answer on port {port} within {START_SECONDS} s")


def mlflow_ui(port: int = UI_PORT, tracking_uri: str | None = None) -> int:
    uri = tracking_uri or mlflow_store.default_tracking_uri()
    if uri.startswith(("http://", "https://")):
        print(f"{storage_urls.redact(uri)} is a tracking server with its own UI: open it")
        return 0
    mlflow_store.configure(uri)  # creates mlruns/ on a fresh checkout
    print(f"starting the MLflow UI over {storage_urls.redact(uri)} ...", flush=True)
    command = [sys.executable, "-m", "mlflow", "ui", "--backend-store-uri", uri]
    command += [
        "--default-artifact-root",
        mlflow_store.artifact_root(uri).as_uri(),
        "--host",
        HOST,
        "--port",
        str(port),
        "--workers",  # one reviewer's UI: one worker starts in a fraction of the time four take (MLflow's default)
        "1",
    ]
    env = {**os.environ, "MLFLOW_TRACKING_URI": uri} | NO_JOB_RUNNERS
    return run_foreground(command, port, "/health", "MLflow UI", env=env)


def dashboard(
    port: int = DASHBOARD_PORT, storage: str | None = None, allowed_hosts: str = "", read_only: bool = False
) -> int:
    """optuna-dashboard behind its guard (training/operations/dashboard.py): loopback names and `allowed_hosts`."""
    url = storage or places.default_optuna_storage()
    if url.startswith("sqlite:///"):
        Path(url.removeprefix("sqlite:///")).parent.mkdir(parents=True, exist_ok=True)
    mode = " (read-only)" if read_only else ""
    print(f"starting optuna-dashboard{mode} over {storage_urls.redact(url)} ...", flush=True)
    command = [sys.executable, "-m", "training.operations.dashboard", url, "--host", HOST, "--port", str(port)]
    command += ["--allowed-hosts", allowed_hosts] + (["--read-only"] if read_only else [])
    return run_foreground(command, port, "/api/meta", "optuna-dashboard")
