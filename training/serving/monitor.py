"""`make monitor`: a Prometheus on loopback scraping the running TorchServe (or every replica of a fleet and its
balancer), with this project's alert rules.

Prometheus (Debian's `prometheus`; `make prometheus` installs it) runs in a process group of its own, so `make
monitor-stop` ends it whole. It wants a password for every request (its web configuration's basic auth: user
`monitor`, the password in the 0600 file `web-password`, a bcrypt hash of it in `web.yml`): on loopback any local
user reaches the port, and only the owner of `.monitor/` reads the password. TorchServe 0.12's metrics API checks
no token, so the scrape sends none (docs/security.md says who can read `/metrics`). Everything lives in
`.monitor/` (0700): the scrape and web configurations, the rules, the password, the series and the log.
"""

from __future__ import annotations

import base64
import json
import secrets
import shutil
import urllib.error
import urllib.parse
import urllib.request
from pathlib import Path

import bcrypt
import yaml

from training.infra import places
from training.infra.processes import pid_alive, private_dir, start_group, stop_tree, wait_until, write_secret
from training.serving import fleet
from training.serving.errors import (
    AlreadyRunningError,
    MissingProgramError,
    NotRunningError,
    PrometheusQueryError,
    StartupError,
)
from training.serving.torchserve import server_for

ALERTS = Path(__file__).with_name("alerts.yml")
CONFIG_FILE, WEB_CONFIG, PID_FILE, LOG_FILE = "prometheus.yml", "web.yml", "monitor.pid", "prometheus.log"
URL_FILE = "url"  # where the running Prometheus answers (the canary's gate asks it)
USER, PASSWORD_FILE = "monitor", "web-password"  # Prometheus's one account, and the file (0600) holding its password


def scrape_config(
    metrics_urls: dict[str, str], interval: str, balancer: str | None = None, ca: Path | None = None
) -> dict:
    """Prometheus's configuration: each TorchServe's metrics address (by replica name; "" for a single server; an
    https one verified against `ca`), HAProxy's exporter for a fleet (`balancer`, host:port), and the alert rules."""
    static = []
    for replica, url in metrics_urls.items():
        target = urllib.parse.urlsplit(url)
        labels = ({"replica": replica} if replica else {}) | (
            {"__scheme__": "https"} if target.scheme == "https" else {}
        )
        static.append({"targets": [target.netloc], **({"labels": labels} if labels else {})})
    job = {"job_name": "torchserve", "static_configs": static} | ({"tls_config": {"ca_file": str(ca)}} if ca else {})
    jobs = [job] + ([{"job_name": "balancer", "static_configs": [{"targets": [balancer]}]}] if balancer else [])
    return {
        "global": {"scrape_interval": interval, "evaluation_interval": interval},
        "rule_files": [ALERTS.name],
        "scrape_configs": jobs,
    }


def scrape_targets(run_dir: Path) -> tuple[dict[str, str], str | None, Path | None]:
    """What to scrape for the server or fleet running from `run_dir`: TorchServe metrics URLs by replica name, the
    balancer's exporter (host:port) for a fleet, and the CA its replicas off loopback are verified against."""
    running = fleet.read(run_dir)
    if running is None:
        return {"": server_for(run_dir).metrics_url}, None, None
    ca = Path(running.run_dir) / fleet.TLS / "ca.crt"
    urls = {r.name: running.server(r).metrics_url for r in running.replicas}
    return urls, running.metrics, ca if ca.exists() else None


def web_config(password: str) -> dict:
    """Prometheus's web configuration: every request wants the user `monitor` and `password` (bcrypt-hashed)."""
    return {"basic_auth_users": {USER: bcrypt.hashpw(password.encode(), bcrypt.gensalt()).decode()}}


def prepare(monitor_dir: Path, run_dir: Path, interval: str) -> None:
    """Write the scrape and web configurations, the rules and (on first use) the password into `monitor_dir`."""
    urls, balancer, ca = scrape_targets(run_dir)
    private_dir(monitor_dir)
    password_file = monitor_dir / PASSWORD_FILE
    if not password_file.exists():
        write_secret(password_file, secrets.token_urlsafe(24))
    write_secret(monitor_dir / WEB_CONFIG, yaml.safe_dump(web_config(password_file.read_text())))
    (monitor_dir / CONFIG_FILE).write_text(yaml.safe_dump(scrape_config(urls, interval, balancer, ca), sort_keys=False))
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
    """Start Prometheus in the background; return its URL once it answers (with its account)."""
    run_dir, monitor_dir = Path(run_dir).resolve(), Path(monitor_dir).resolve()
    if not (run_dir / "key_file.json").exists() and fleet.read(run_dir) is None:
        raise NotRunningError(f"no running TorchServe in {run_dir}: `make serve` first")
    if running_pid(monitor_dir):
        raise AlreadyRunningError(
            f"a monitor is running already (pid file {monitor_dir / PID_FILE}): `make monitor-stop`"
        )
    binary = prometheus_binary()
    prepare(monitor_dir, run_dir, interval)
    command = [
        binary,
        f"--config.file={monitor_dir / CONFIG_FILE}",
        f"--web.config.file={monitor_dir / WEB_CONFIG}",
        f"--storage.tsdb.path={monitor_dir / 'data'}",
        f"--web.listen-address={places.LOOPBACK}:{port}",
    ]
    with open(monitor_dir / LOG_FILE, "ab") as log:
        prometheus = start_group(command, log, cwd=monitor_dir, umask=0o077)
    (monitor_dir / PID_FILE).write_text(str(prometheus.pid))
    url = f"http://{places.LOOPBACK}:{port}"
    (monitor_dir / URL_FILE).write_text(url)

    def check() -> None:
        if prometheus.poll() is not None:
            raise StartupError(f"Prometheus stopped at start; see {monitor_dir / LOG_FILE}")

    if not wait_until(lambda: ready(url, monitor_dir), timeout, check=check):
        stop(monitor_dir)
        raise StartupError(
            f"Prometheus did not answer {url}/-/ready within {timeout:g} s; see {monitor_dir / LOG_FILE}"
        )
    return url


def ready(url: str, monitor_dir: Path) -> bool:
    """Whether Prometheus answers `/-/ready` to its account."""
    try:
        with urllib.request.urlopen(authorized(f"{url}/-/ready", monitor_dir), timeout=2) as response:
            return response.status == 200
    except OSError:
        return False


def authorized(address: str, monitor_dir: Path = places.MONITOR_DIR) -> urllib.request.Request:
    """A request to Prometheus with its account (the password read from `monitor_dir`)."""
    password = (Path(monitor_dir) / PASSWORD_FILE).read_text()
    credentials = base64.b64encode(f"{USER}:{password}".encode()).decode()
    return urllib.request.Request(address, headers={"Authorization": f"Basic {credentials}"})


def running_url(monitor_dir: Path = places.MONITOR_DIR) -> str:
    """The running Prometheus's URL, or an error that says to start one."""
    if not running_pid(monitor_dir) or not (Path(monitor_dir) / URL_FILE).exists():
        raise NotRunningError(f"no Prometheus runs from {monitor_dir}: `make monitor` first (the gate reads it)")
    return (Path(monitor_dir) / URL_FILE).read_text().strip()


def running_pid(monitor_dir: Path) -> int | None:
    pid_file = Path(monitor_dir) / PID_FILE
    if not pid_file.exists():
        return None
    pid = int(pid_file.read_text() or 0)
    return pid if pid and pid_alive(pid) else None


def stop(monitor_dir: Path = places.MONITOR_DIR) -> bool:
    """Stop Prometheus; False when none was running. The series stay in `monitor_dir`."""
    pid = running_pid(monitor_dir)
    if pid:
        stop_tree(pid)
    (Path(monitor_dir) / PID_FILE).unlink(missing_ok=True)
    return pid is not None


def api(url: str, path: str, monitor_dir: Path = places.MONITOR_DIR) -> dict:
    """A JSON answer of Prometheus's HTTP API (`/api/v1/rules`, ...), asked with its account."""
    with urllib.request.urlopen(authorized(f"{url}{path}", monitor_dir), timeout=10) as response:
        return json.load(response)


def query(url: str, promql: str, monitor_dir: Path = places.MONITOR_DIR) -> list[dict]:
    """Prometheus's instant query: the result vector (each {"metric": labels, "value": [time, "v"]})."""
    body = api(url, f"/api/v1/query?{urllib.parse.urlencode({'query': promql})}", monitor_dir)
    if body.get("status") != "success":
        raise PrometheusQueryError(f"Prometheus refused {promql!r}: {body.get('error')}")
    return body["data"]["result"]
