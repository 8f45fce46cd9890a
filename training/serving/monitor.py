"""`make monitor`: a Prometheus on loopback scraping the running TorchServe, with this project's alert rules.

Prometheus (Debian's `prometheus`; `make prometheus` installs it) runs under a small keeper process, started in a
process group of its own so `make monitor-stop` ends both. TorchServe's metrics API takes the inference token, which
expires: the keeper hands Prometheus the current token through a 0600 file it re-reads at every scrape
(`credentials_file`), and asks TorchServe for a fresh one once it has expired, as `python -m training token` does.
Everything lives in `.monitor/` (0700): the scrape configuration, the rules, the token, the series and the log.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import signal
import subprocess
import sys
import urllib.parse
import urllib.request
from pathlib import Path

import yaml

from training.infra import places
from training.infra.processes import answers, pid_alive, private_dir, start_group, stop_tree, wait_until, write_secret
from training.serving.errors import (
    AlreadyRunningError,
    MissingProgramError,
    NotRunningError,
    PrometheusQueryError,
    StartupError,
)
from training.serving.torchserve import server_for

ALERTS = Path(__file__).with_name("alerts.yml")
TOKEN_FILE, CONFIG_FILE, PID_FILE, LOG_FILE = "scrape-token", "prometheus.yml", "monitor.pid", "prometheus.log"
KEEP_EVERY = 5.0  # seconds between the keeper's looks at the token and at Prometheus


def scrape_config(metrics_url: str, interval: str) -> dict:
    """Prometheus's configuration: TorchServe's metrics address with the token file, and the alert rules."""
    target = urllib.parse.urlsplit(metrics_url)
    return {
        "global": {"scrape_interval": interval, "evaluation_interval": interval},
        "rule_files": [ALERTS.name],
        "scrape_configs": [
            {
                "job_name": "torchserve",
                "scheme": target.scheme,
                "authorization": {"type": "Bearer", "credentials_file": TOKEN_FILE},
                "static_configs": [{"targets": [target.netloc]}],
            }
        ],
    }


def prepare(monitor_dir: Path, run_dir: Path, interval: str) -> None:
    """Write the scrape configuration, the rules and the current token into `monitor_dir`."""
    server = server_for(run_dir)
    private_dir(monitor_dir)
    write_secret(monitor_dir / TOKEN_FILE, server.token())
    (monitor_dir / CONFIG_FILE).write_text(yaml.safe_dump(scrape_config(server.metrics_url, interval), sort_keys=False))
    shutil.copyfile(ALERTS, monitor_dir / ALERTS.name)


def prometheus_binary() -> str:
    found = shutil.which("prometheus")
    if not found:
        raise MissingProgramError("Prometheus is not installed: `make prometheus` installs Debian's package (apt)")
    return found


def start(
    run_dir: Path = places.SERVE_DIR,
    monitor_dir: Path = places.MONITOR_DIR,
    port: int = places.PROMETHEUS_PORT,
    interval: str = "15s",
    timeout: float = 60,
) -> str:
    """Start the keeper (and through it Prometheus) in the background; return Prometheus's URL once it is ready."""
    run_dir, monitor_dir = Path(run_dir).resolve(), Path(monitor_dir).resolve()
    if not (run_dir / "key_file.json").exists():
        raise NotRunningError(f"no running TorchServe in {run_dir}: `make serve` first")
    if running_pid(monitor_dir):
        raise AlreadyRunningError(
            f"a monitor is running already (pid file {monitor_dir / PID_FILE}): `make monitor-stop`"
        )
    binary = prometheus_binary()
    prepare(monitor_dir, run_dir, interval)
    command = [sys.executable, "-m", "training.serving.monitor", "--run-dir", str(run_dir)]
    command += ["--monitor-dir", str(monitor_dir), "--port", str(port), "--prometheus", binary]
    with open(monitor_dir / LOG_FILE, "ab") as log:
        keeper = start_group(command, log, cwd=places.ROOT, umask=0o077)
    (monitor_dir / PID_FILE).write_text(str(keeper.pid))
    url = f"http://{places.LOOPBACK}:{port}"

    def check() -> None:
        if keeper.poll() is not None:
            raise StartupError(f"Prometheus stopped at start; see {monitor_dir / LOG_FILE}")

    if not wait_until(lambda: answers(f"{url}/-/ready"), timeout, check=check):
        stop(monitor_dir)
        raise StartupError(
            f"Prometheus did not answer {url}/-/ready within {timeout:g} s; see {monitor_dir / LOG_FILE}"
        )
    return url


def running_pid(monitor_dir: Path) -> int | None:
    pid_file = Path(monitor_dir) / PID_FILE
    if not pid_file.exists():
        return None
    pid = int(pid_file.read_text() or 0)
    return pid if pid and pid_alive(pid) else None


def stop(monitor_dir: Path = places.MONITOR_DIR) -> bool:
    """Stop the keeper and Prometheus; False when none was running. The series stay in `monitor_dir`."""
    pid = running_pid(monitor_dir)
    if pid:
        stop_tree(pid)
    (Path(monitor_dir) / PID_FILE).unlink(missing_ok=True)
    return pid is not None


# the keeper: the process `start` runs in the background


def keep(run_dir: Path, monitor_dir: Path, port: int, binary: str) -> int:
    """Run Prometheus and keep its token current until told to stop (SIGTERM) or Prometheus ends."""
    command = [
        binary,
        f"--config.file={monitor_dir / CONFIG_FILE}",
        f"--storage.tsdb.path={monitor_dir / 'data'}",
        f"--web.listen-address={places.LOOPBACK}:{port}",
    ]
    prometheus = subprocess.Popen(command)
    signal.signal(signal.SIGTERM, lambda *_: prometheus.terminate())
    server = server_for(run_dir)
    while prometheus.poll() is None:
        try:
            keep_token(server, monitor_dir / TOKEN_FILE)
        except (OSError, json.JSONDecodeError, RuntimeError) as error:  # the server restarting, or stopped
            print(f"token not refreshed: {type(error).__name__}: {error}", flush=True)
        try:
            prometheus.wait(KEEP_EVERY)
        except subprocess.TimeoutExpired:
            pass
    return prometheus.returncode or 0


def keep_token(server, token_file: Path) -> None:
    """The server's current inference token in `token_file`; a fresh one first once it has expired."""
    token = server.refresh_token() if server.token_expired() else server.token()
    if not token_file.exists() or token_file.read_text() != token:
        write_secret(token_file, token)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--run-dir", type=Path, required=True)
    parser.add_argument("--monitor-dir", type=Path, required=True)
    parser.add_argument("--port", type=int, required=True)
    parser.add_argument("--prometheus", required=True)
    args = parser.parse_args()
    os.umask(0o077)
    return keep(args.run_dir, args.monitor_dir, args.port, args.prometheus)


def query(url: str, promql: str) -> list[dict]:
    """Prometheus's instant query: the result vector (each {"metric": labels, "value": [time, "v"]})."""
    address = f"{url}/api/v1/query?{urllib.parse.urlencode({'query': promql})}"
    with urllib.request.urlopen(address, timeout=10) as response:
        body = json.load(response)
    if body.get("status") != "success":
        raise PrometheusQueryError(f"Prometheus refused {promql!r}: {body.get('error')}")
    return body["data"]["result"]


if __name__ == "__main__":
    sys.exit(main())
