"""Run TorchServe in the background over archives/, health-checked; stop it; hand out its tokens.

The server runs in a run directory (default `.serve/`, git-ignored) that holds its resolved config,
logs, pid file and `key_file.json` (TorchServe's tokens: a secret).
"""

from __future__ import annotations

import json
import os
import re
import shutil
import signal
import subprocess
import sys
import time
import urllib.error
import urllib.request
from dataclasses import dataclass
from pathlib import Path

from .tracking import ROOT

RUN_DIR = ROOT / ".serve"
ARCHIVES = ROOT / "archives"
BASE_CONFIG = ROOT / "config.properties"


@dataclass
class Server:
    run_dir: Path
    inference_url: str
    management_url: str
    metrics_url: str

    def token(self, kind: str = "inference") -> str:
        """The current token of `kind` (inference | management | API) from key_file.json."""
        return json.loads((self.run_dir / "key_file.json").read_text())[kind]["key"]

    def request(
        self, method: str, url: str, body: dict | None = None, token: str | None = None, timeout: float = 30
    ) -> tuple[int, dict | str, dict]:
        """(status, JSON or text body, headers); HTTP errors are returned, not raised."""
        data = None if body is None else json.dumps(body).encode()
        headers = {"Content-Type": "application/json"} if data is not None else {}
        if token:
            headers["Authorization"] = f"Bearer {token}"
        req = urllib.request.Request(url, data=data, method=method, headers=headers)
        try:
            with urllib.request.urlopen(req, timeout=timeout) as response:
                status, raw, response_headers = response.status, response.read(), dict(response.headers)
        except urllib.error.HTTPError as error:
            status, raw, response_headers = error.code, error.read(), dict(error.headers)
        try:
            return status, json.loads(raw), response_headers
        except json.JSONDecodeError:
            return status, raw.decode(errors="replace"), response_headers

    def predict(self, name: str, instances: list, explain: bool = False, **extra) -> tuple[int, dict | str, dict]:
        route = "explanations" if explain else "predictions"
        return self.request(
            "POST", f"{self.inference_url}/{route}/{name}", {"instances": instances, **extra}, token=self.token()
        )

    def health(self) -> str:
        status, body, _ = self.request("GET", f"{self.inference_url}/ping", token=self.token(), timeout=5)
        return body.get("status", "") if status == 200 and isinstance(body, dict) else f"HTTP {status}"

    def models(self) -> list[str]:
        status, body, _ = self.request("GET", f"{self.management_url}/models", token=self.token("management"))
        return [m["modelName"] for m in body["models"]] if status == 200 else []

    def workers_ready(self, name: str) -> bool:
        status, body, _ = self.request("GET", f"{self.management_url}/models/{name}", token=self.token("management"))
        return status == 200 and any(w.get("status") == "READY" for w in body[0].get("workers", []))

    def refresh_token(self, kind: str = "inference") -> str:
        """Ask TorchServe for a new token of `kind` (with the API key) and return it."""
        self.request("POST", f"{self.management_url}/token?type={kind}", token=self.token("API"))
        return self.token(kind)


# config


def read_properties(path: Path) -> dict[str, str]:
    properties = {}
    for line in path.read_text().splitlines():
        line = line.strip()
        if line and not line.startswith("#") and "=" in line:
            key, value = line.split("=", 1)
            properties[key.strip()] = value.strip()
    return properties


def resolve_config(
    run_dir: Path, model_store: Path, ports: dict[str, int] | None = None, overrides: dict[str, str] | None = None
) -> tuple[Path, dict[str, str]]:
    """Write the run's config: the base file with an absolute model store and, when given, other ports."""
    properties = read_properties(BASE_CONFIG)
    properties["model_store"] = str(model_store)
    properties["allowed_urls"] = "file://" + re.escape(str(model_store)).replace("\\", "\\\\") + "/.*\\\\.mar"
    for key, port in (ports or {}).items():  # e.g. {"inference_address": 18080, "grpc_inference_port": 17070}
        properties[key] = f"http://127.0.0.1:{port}" if key.endswith("_address") else str(port)
    properties.update(overrides or {})
    path = run_dir / "config.properties"
    path.write_text("".join(f"{k}={v}\n" for k, v in properties.items()))
    return path, properties


def server_for(run_dir: Path = RUN_DIR) -> Server:
    """The server whose config lives in `run_dir` (it may or may not be running)."""
    properties = read_properties(run_dir / "config.properties")
    return Server(
        run_dir, properties["inference_address"], properties["management_address"], properties["metrics_address"]
    )


# start / stop


def check_java() -> None:
    java = shutil.which("java")
    if java is None:
        raise RuntimeError(
            "TorchServe needs Java 17+ and `java` is not on PATH: run `make install` "
            "(installs openjdk-17-jre-headless with apt) or install a JDK 17 yourself"
        )
    version = subprocess.run([java, "-version"], capture_output=True, text=True).stderr
    match = re.search(r'version "(\d+)', version)
    if not match or int(match.group(1)) < 17:
        raise RuntimeError(f"TorchServe needs Java 17+; found: {version.splitlines()[0] if version else 'unknown'}")


def start(
    models: list[str] | None = None,
    run_dir: Path = RUN_DIR,
    model_store: Path = ARCHIVES,
    ports: dict[str, int] | None = None,
    overrides: dict[str, str] | None = None,
    timeout: float = 180,
    quiet: bool = False,
) -> Server:
    check_java()
    model_store = Path(model_store).resolve()
    archives = sorted(p.stem for p in model_store.glob("*.mar"))
    if not archives:
        raise RuntimeError(f"no archives in {model_store}: run `make archive` (after `make tune`) first")
    missing = sorted(set(models or []) - set(archives))
    if missing:
        raise RuntimeError(f"no archive for {', '.join(missing)} in {model_store} (have: {', '.join(archives)})")
    run_dir = Path(run_dir)
    if running_pid(run_dir):
        raise RuntimeError(f"TorchServe is already running from {run_dir}: `make stop` first")
    (run_dir / "logs").mkdir(parents=True, exist_ok=True)
    (run_dir / "key_file.json").unlink(missing_ok=True)
    config, _ = resolve_config(run_dir, model_store, ports, overrides)
    names = models or archives
    command = [
        str(Path(sys.executable).with_name("torchserve")),
        "--start",
        "--foreground",
        "--ncs",
        "--ts-config",
        str(config),
        "--model-store",
        str(model_store),
        "--models",
        ",".join(f"{n}={n}.mar" for n in names),
    ]
    env = {
        **os.environ,
        "TMPDIR": str(run_dir),
        "LOG_LOCATION": str(run_dir / "logs"),
        "METRICS_LOCATION": str(run_dir / "logs"),
    }
    env.pop("PYTHONPATH", None)  # workers import only what the archives carry
    with open(run_dir / "logs" / "torchserve.out", "ab") as log:
        process = subprocess.Popen(
            command, cwd=run_dir, env=env, stdout=log, stderr=subprocess.STDOUT, start_new_session=True
        )
    (run_dir / "server.pid").write_text(str(process.pid))
    server = server_for(run_dir)
    try:
        wait_healthy(server, process, names, timeout)
    except BaseException:
        stop(run_dir, quiet=True)
        raise
    if not quiet:
        print_usage(server, names)
    return server


def wait_healthy(server: Server, process: subprocess.Popen, names: list[str], timeout: float) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if process.poll() is not None:
            raise RuntimeError(f"TorchServe exited with code {process.returncode}; see {log_hint(server)}")
        try:
            if server.health() == "Healthy" and all(server.workers_ready(n) for n in names):
                return
        except (OSError, KeyError, ValueError):  # not listening yet, or key file not written yet
            pass
        time.sleep(0.5)
    raise RuntimeError(f"TorchServe was not healthy within {timeout:.0f}s; see {log_hint(server)}")


def log_hint(server: Server) -> str:
    return str(server.run_dir / "logs")


def running_pid(run_dir: Path) -> int | None:
    pid_file = Path(run_dir) / "server.pid"
    if not pid_file.exists():
        return None
    pid = int(pid_file.read_text())
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        pid_file.unlink()
        return None
    return pid


def stop(run_dir: Path = RUN_DIR, quiet: bool = False, timeout: float = 30) -> bool:
    """Stop the server started from `run_dir` (its whole process group); False if none was running."""
    pid = running_pid(Path(run_dir))
    if pid is None:
        if not quiet:
            print("TorchServe is not running")
        return False
    os.killpg(pid, signal.SIGTERM)
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline and process_alive(pid):
        time.sleep(0.2)
    if process_alive(pid):
        os.killpg(pid, signal.SIGKILL)
    (Path(run_dir) / "server.pid").unlink(missing_ok=True)
    (Path(run_dir) / "key_file.json").unlink(missing_ok=True)
    if not quiet:
        print("TorchServe stopped")
    return True


def process_alive(pid: int) -> bool:
    try:
        finished, _ = os.waitpid(pid, os.WNOHANG)  # reap if it is our child
        if finished:
            return False
    except ChildProcessError:
        pass
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    return True


def print_usage(server: Server, names: list[str]) -> None:
    example = names[0]
    print(f"TorchServe is up: {', '.join(names)}")
    print(f"  inference   {server.inference_url}   metrics {server.metrics_url}/metrics")
    print(f"  tokens      {server.run_dir / 'key_file.json'} (secret; expire, see README)")
    print("  token       TOKEN=$(.venv/bin/python -m training token)")
    print(
        f"  try         curl -s -H \"Authorization: Bearer $TOKEN\" -H 'Content-Type: application/json' "
        f"-d '{{\"instances\": [...]}}' {server.inference_url}/predictions/{example}"
    )
    print("  stop        make stop")
