"""Run TorchServe in the background over archives/, health-checked; stop it; hand out its tokens.

The server runs in a run directory (default `.serve/`, git-ignored) that holds its resolved config,
logs, pid file and `key_file.json` (TorchServe's tokens: a secret).
"""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

from training.infra import memory, processes
from training.infra.places import ARCHIVES, LOOPBACK, SERVE_DIR, TORCHSERVE_CONFIG
from training.infra.private import owner_only
from training.infra.processes import (
    pid_alive,
    port_is_free,
    private_dir,
    reap,
    start_group,
    stop_tree,
    wait_until,
    without_credentials,
)
from training.nn.integrity import REFUSAL  # what a worker logs when an archive fails its sha256 check
from training.serving import balancer, history, oip_grpc
from training.serving.errors import (
    AlreadyRunningError,
    ArchiveMissingError,
    ArchiveRefusedError,
    MissingProgramError,
    NotRunningError,
    PortInUseError,
    StartupError,
)
from training.serving.store import RELEASES, archive_info, bound_bytes, private_store
from training.serving.torchserve import Server, read_properties, server_for

__all__ = ["RUN_DIR", "Server", "running_pid", "running_server", "server_for", "start", "stop"]

RUN_DIR = SERVE_DIR
AUTH_HEADER = "auth-header"  # `python -m training token --header-file`: for curl -H @.serve/auth-header
SOCKET_PATH_BYTES = 107  # sun_path, less its terminating zero
BASE_CONFIG = TORCHSERVE_CONFIG
METRICS_CONFIG = Path(__file__).with_name("metrics.yaml")
LOG_CONFIG = Path(__file__).with_name("log4j2.xml")  # size-capped, rotating logs; nothing per request on stdout
OIP_GRPC_PORT = "oip_grpc_port"  # config.properties: the Open Inference Protocol's gRPC service (not TorchServe's)
FRONT_ADDRESS = "front_address"  # the run's config.properties: where clients reach a front door (inference_address:
FRONT_DIR = "front"  # TorchServe's own, private, behind it); the front's HAProxy runs from here


# config


def resolve_config(
    run_dir: Path,
    model_store: Path,
    names: list[str],
    ports: dict[str, int] | None = None,
    overrides: dict[str, str] | None = None,
) -> tuple[Path, dict[str, str]]:
    """Write the run's config: the base file with an absolute model store and, when given, other ports."""
    properties = read_properties(BASE_CONFIG)
    properties["model_store"] = str(model_store)
    properties["metrics_config"] = str(METRICS_CONFIG)  # declares the handler's metrics: only those are exported
    properties["allowed_urls"] = allowed_urls(model_store, names).replace("\\", "\\\\")  # properties escape "\\"
    for key, port in (ports or {}).items():  # e.g. {"inference_address": 18080, "grpc_inference_port": 17070}
        properties[key] = f"http://127.0.0.1:{port}" if key.endswith("_address") else str(port)
    properties.update(overrides or {})
    path = run_dir / "config.properties"
    write_properties(path, properties)
    return path, properties


def runtime_temp(run_dir: Path) -> Path:
    """TorchServe's temp folder (0700): `<run dir>/tmp`, or, where that path is too long for the worker sockets
    it holds (a Unix socket path has at most 107 bytes), a fresh folder of ours under the system's temp."""
    temp = run_dir / "tmp"
    if len(str(temp / ".ts.sock.65535").encode()) > SOCKET_PATH_BYTES:
        temp = Path(tempfile.mkdtemp(prefix="attention-serve-"))  # 0700, a name nobody could take first
        (run_dir / "tmp-elsewhere").write_text(str(temp))  # for `stop` to remove
        return temp
    return private_dir(temp)


def allowed_urls(model_store: Path, names: list[str]) -> str:
    """The only archives the management API may register: the server's store's own, `<name>.mar`, and a
    rollout's `releases/<name>-v<N>.mar`, for the archive names given (TorchServe matches each regex whole)."""
    store = re.escape(model_store.as_uri())
    alternatives = "|".join(re.escape(name) for name in sorted(names))
    return f"{store}/({alternatives})\\.mar,{store}/releases/({alternatives})-v[0-9]+\\.mar"


# start / stop


def write_properties(path: Path, properties: dict[str, str]) -> None:
    path.write_text("".join(f"{k}={v}\n" for k, v in properties.items()))


def check_java() -> None:
    java = shutil.which("java")
    if java is None:
        raise MissingProgramError(
            "TorchServe needs Java 17+ and `java` is not on PATH: run `make install` "
            "(installs openjdk-17-jre-headless with apt) or install a JDK 17 yourself"
        )
    version = subprocess.run([java, "-version"], capture_output=True, text=True).stderr
    match = re.search(r'version "(\d+)', version)
    if not match or int(match.group(1)) < 17:
        found = version.splitlines()[0] if version else "unknown"
        raise MissingProgramError(f"TorchServe needs Java 17+; found: {found}")


def start(
    models: list[str] | None = None,
    run_dir: Path = RUN_DIR,
    model_store: Path = ARCHIVES,
    ports: dict[str, int] | None = None,
    overrides: dict[str, str] | None = None,
    timeout: float = 180,
    quiet: bool = False,
    log_size: str | None = None,
    trust_unsigned: bool = False,
    tracking_uri: str | None = None,
    allow_older: bool = False,
    grpc_front: bool = True,
    front_door: bool = False,
) -> Server:
    """Start TorchServe in the background from `run_dir` over the archives in `model_store`, and return once it
    is healthy with a ready worker per model. Each archive is verified (its signature and every member, and that the
    registry at `tracking_uri` names it its latest build of a version not older than `@serving` unless `allow_older`)
    and only the verified bytes are copied to the server's private store, which TorchServe reads. `log_size` caps
    each log file before it rolls over ("10 MB"); `trust_unsigned` serves archives built before signing;
    `grpc_front` starts the Open Inference Protocol's gRPC service on `oip_grpc_port` (`oip_grpc.py`);
    `front_door` puts HAProxy on the inference address (`make serve`), in front of TorchServe on a private port:
    it answers the protocol's REST routes TorchServe lacks (`balancer.start_single`) and passes the rest through."""
    check_java()
    model_store = Path(model_store).resolve()
    archives = sorted(p.stem for p in model_store.glob("*.mar"))
    if not archives:
        raise ArchiveMissingError(f"no archives in {model_store}: run `make archive` (after `make tune`) first")
    missing = sorted(set(models or []) - set(archives))
    if missing:
        raise ArchiveMissingError(f"no archive for {', '.join(missing)} in {model_store} (have: {', '.join(archives)})")
    run_dir = Path(run_dir).resolve()
    if running_pid(run_dir):
        raise AlreadyRunningError(f"TorchServe is already running from {run_dir}: `make stop` first")
    owner_only(run_dir)  # tokens, logs, the archives served: ours alone (tightened if it was not)
    private_dir(run_dir / "logs")
    (run_dir / "key_file.json").unlink(missing_ok=True)
    names = models or archives
    checked = {
        name: bound_bytes(model_store / f"{name}.mar", tracking_uri, trust_unsigned, allow_older) for name in names
    }
    served_store, started = private_store(run_dir, reset=True), {}
    for name, (data, _) in checked.items():
        (served_store / f"{name}.mar").write_bytes(data)
        started[name] = str(archive_info(data)["version"])
    history.start_anew(run_dir, started)  # a fresh store: no earlier release to roll back to
    config, properties = resolve_config(run_dir, served_store, archives, ports, overrides)
    if front_door:  # clients reach the configured inference address, TorchServe a private one behind it
        properties[FRONT_ADDRESS] = properties["inference_address"]
        properties["inference_address"] = f"http://{LOOPBACK}:{processes.free_port()}"
        write_properties(config, properties)
    check_ports_free(properties)
    # The Open Inference Protocol's own gRPC service, in front of this server's REST side (oip_grpc.py); it
    # starts while TorchServe does. A fleet's replicas have none: the fleet's is in front of its balancer.
    listen, grpc_process = f"{LOOPBACK}:{properties[OIP_GRPC_PORT]}", None
    rest = oip_grpc.Upstream(properties.get(FRONT_ADDRESS, properties["inference_address"]), front_door)
    try:
        if front_door:
            address = properties["inference_address"].split("://")[-1]
            balancer.start_single(run_dir / FRONT_DIR, properties[FRONT_ADDRESS].split("://")[-1], address)
        if grpc_front:
            grpc_process = oip_grpc.launch(run_dir, listen, rest)
        server = launch(run_dir, {name: f"{name}.mar" for name in names}, timeout, log_size)
        if grpc_process is not None:
            oip_grpc.wait_listening(run_dir, grpc_process, listen)
    except BaseException:
        stop(run_dir, quiet=True)
        raise
    if not quiet:
        print_usage(server, names)
        for line in [line for _, notes in checked.values() for line in notes]:
            print(f"  note        {line}")
    return server


def restart(run_dir: Path, timeout: float = 180, log_size: str | None = None) -> Server:
    """Start again the server that ran from `run_dir` and died: its config, ports and store as they were, each
    model at the version its history names last (what it served when it died, rollouts included), from the verified
    copy in its store. The fleet's keeper calls this for a replica whose frontend is gone."""
    run_dir = Path(run_dir).resolve()
    pid_file = run_dir / "server.pid"
    if pid_file.exists():
        if pid_alive(int(pid_file.read_text())):
            raise AlreadyRunningError(f"TorchServe is already running from {run_dir}")
        stop_tree(int(pid_file.read_text()), timeout=5)  # what the dead launcher's group left: Java, workers
        pid_file.unlink()
    store = private_store(run_dir)
    models = {}
    for name, versions in history.load(run_dir).items():
        release = Path(RELEASES) / f"{name}-v{versions[-1]}.mar"
        models[name] = str(release) if (store / release).exists() else f"{name}.mar"
    check_ports_free(read_properties(run_dir / "config.properties"))
    (run_dir / "key_file.json").unlink(missing_ok=True)
    return launch(run_dir, models, timeout, log_size)


def launch(run_dir: Path, models: dict[str, str], timeout: float, log_size: str | None) -> Server:
    """Run TorchServe from `run_dir` over its config and private store, serving each model from its file in the
    store, and return once it is healthy with a ready worker per model."""
    temp = runtime_temp(run_dir)  # the unpacked handler code and the worker sockets: ours alone too
    command = [
        str(Path(sys.executable).with_name("torchserve")),
        "--start",
        "--foreground",
        "--ncs",
        "--ts-config",
        str(run_dir / "config.properties"),
        "--log-config",
        str(LOG_CONFIG),
        "--model-store",
        str(private_store(run_dir)),
        "--models",
        ",".join(f"{name}={file}" for name, file in models.items()),
    ]
    env = {
        **without_credentials(os.environ),  # the handler code an archive carries sees no tracking or database login
        # TorchServe unpacks archives and puts worker sockets in Java's temp folder, which its launcher takes
        # from TEMP (not TMPDIR): never the shared /tmp, where another user could plant /tmp/models first.
        "TEMP": str(temp),
        "TMPDIR": str(temp),
        "LOG_LOCATION": str(run_dir / "logs"),
        "METRICS_LOCATION": str(run_dir / "logs"),
        **({"TS_LOG_SIZE": log_size} if log_size else {}),
        **memory.child_environment(),  # the workers keep the memory they reuse (training/infra/memory.py)
    }
    env.pop("PYTHONPATH", None)  # workers import only what the archives carry
    # TorchServe reads this one variable even with enable_envvars_config=false, over config.properties' switch.
    env.pop("TS_OPEN_INFERENCE_PROTOCOL", None)
    with open(run_dir / "logs" / "torchserve.out", "ab") as log:
        process = start_group(command, log, env=env, cwd=run_dir, umask=0o077)  # key_file.json: 0600 from birth
    (run_dir / "server.pid").write_text(str(process.pid))
    server = server_for(run_dir)
    try:
        wait_healthy(server, process, list(models), timeout)
    except BaseException:
        stop(run_dir, quiet=True)
        raise
    return server


def free_ports() -> dict[str, int]:
    """A free loopback port for each of TorchServe's listeners: a second server runs beside the first."""
    keys = ["inference_address", "management_address", "metrics_address", "grpc_inference_port", "grpc_management_port"]
    keys.append(OIP_GRPC_PORT)
    return dict(zip(keys, processes.free_ports(len(keys))))


def check_ports_free(properties: dict[str, str]) -> None:
    """Refuse to start on a busy port, or on one port given to two listeners, with the ports' names, instead of a
    server that exits at once."""
    listeners: dict[int, str] = {}
    for key, value in properties.items():
        listens = key.endswith("_port") or (key.endswith("_address") and not key.startswith("grpc_"))
        if not listens:
            continue
        port = int(value.rsplit(":", 1)[-1])
        if port in listeners:
            raise PortInUseError(
                f"port {port} is given to both {listeners[port]} and {key}: change one in config.properties"
            )
        listeners[port] = key
        if not port_is_free(port):
            raise PortInUseError(
                f"port {port} ({key}) is in use by another process: stop it, or change {key} in config.properties"
            )


def wait_healthy(server: Server, process: subprocess.Popen, names: list[str], timeout: float) -> None:
    def check() -> None:
        if process.poll() is not None:
            raise StartupError(f"TorchServe stopped during start-up: {last_error(server)}; see {log_hint(server)}")
        refusal = archive_refusal(server)
        if refusal:
            raise ArchiveRefusedError(f"{refusal}; see {log_hint(server)}")

    def healthy() -> bool:
        try:
            return server.health() == "Healthy" and all(server.workers_ready(n) for n in names)
        except (OSError, KeyError, ValueError):  # not listening yet, or key file not written yet
            return False

    if not wait_until(healthy, timeout, check=check):
        raise StartupError(f"TorchServe was not healthy within {timeout:.0f}s; see {log_hint(server)}")


def archive_refusal(server: Server) -> str | None:
    """The first archive a worker refused to load (tampered checkpoint), from the model log."""
    log = server.run_dir / "logs" / "model_log.log"
    if not log.exists():
        return None
    for line in log.read_text(errors="replace").splitlines():
        if REFUSAL in line and "ArchiveIntegrityError" not in line:
            return line[line.index(REFUSAL) :]
    return None


def last_error(server: Server) -> str:
    out = server.run_dir / "logs" / "torchserve.out"
    lines = out.read_text(errors="replace").splitlines() if out.exists() else []
    errors = [line for line in lines if "Exception" in line or "ERROR" in line or "error" in line.lower()]
    return (errors or lines or ["no output"])[-1].strip()[:300]


def log_hint(server: Server) -> str:
    return str(server.run_dir / "logs")


def running_pid(run_dir: Path) -> int | None:
    pid_file = Path(run_dir) / "server.pid"
    if not pid_file.exists():
        return None
    pid = int(pid_file.read_text())
    if not pid_alive(pid):
        reap(pid)
        pid_file.unlink(missing_ok=True)
        return None
    return pid


def running_server(run_dir: Path) -> Server:
    """The server running from `run_dir`, or an error that says to start one."""
    if not running_pid(run_dir):
        raise NotRunningError(f"TorchServe is not running from {run_dir}: `make serve` first")
    return server_for(run_dir)


def stop(run_dir: Path = RUN_DIR, quiet: bool = False, timeout: float = 30) -> bool:
    """Stop the server started from `run_dir` and return only when its whole process tree is gone
    (the launcher, Java and every worker): SIGTERM, a bounded wait, then SIGKILL."""
    run_dir = Path(run_dir)
    oip_grpc.stop(run_dir)
    balancer.stop(run_dir / FRONT_DIR)
    pid = running_pid(run_dir)
    if pid is None:
        if not quiet:
            print("TorchServe is not running")
        return False
    stop_tree(pid, timeout)
    (run_dir / "server.pid").unlink(missing_ok=True)
    (run_dir / "key_file.json").unlink(missing_ok=True)
    (run_dir / AUTH_HEADER).unlink(missing_ok=True)
    elsewhere = run_dir / "tmp-elsewhere"
    if elsewhere.exists():
        shutil.rmtree(elsewhere.read_text().strip(), ignore_errors=True)
        elsewhere.unlink()
    if not quiet:
        print("TorchServe stopped")
    return True


def print_usage(server: Server, names: list[str]) -> None:
    example = names[0]
    print(f"TorchServe is up: {', '.join(names)}")
    print(f"  inference   {server.inference_url}   metrics {server.metrics_url}/metrics")
    if server.grpc_address:
        print(f"  gRPC        {server.grpc_address}   (the Open Inference Protocol's service; the token as metadata)")
    print(f"  tokens      {server.run_dir / 'key_file.json'} (secret; expire, see README)")
    print("  token       .venv/bin/python -m training token --header-file   # writes .serve/auth-header (0600)")
    print(
        f"  try         curl -s -H @{server.run_dir / AUTH_HEADER} -H 'Content-Type: application/json' "
        f"-d '{{\"instances\": [...]}}' {server.inference_url}/predictions/{example}"
    )
    print("  stop        make stop")
