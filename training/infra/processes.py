"""Process plumbing, written once: free ports and port probes, servers in process groups of their own, waiting
until something answers, and stopping a whole process tree (launcher, children, and what they re-parented)."""

from __future__ import annotations

import contextlib
import os
import re
import signal
import socket
import ssl
import subprocess
import threading
import time
import urllib.request
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import IO

import psutil

from training.infra.places import LOOPBACK


def free_port(host: str = LOOPBACK) -> int:
    """A port nothing listens on now (the kernel's choice)."""
    (port,) = free_ports(1, host)
    return port


def free_ports(count: int, host: str = LOOPBACK) -> list[int]:
    """`count` different ports nothing listens on now: each held until all are chosen (one port closed before the
    next is asked for may be handed out again, and two listeners of one server would then collide)."""
    with contextlib.ExitStack() as held:
        sockets = [held.enter_context(socket.socket()) for _ in range(count)]
        for s in sockets:
            s.bind((host, 0))
        return [s.getsockname()[1] for s in sockets]


def port_is_free(port: int, host: str = LOOPBACK) -> bool:
    """Whether a server could bind `port` on `host` now. Servers bind with SO_REUSEADDR (HAProxy, Java, gRPC), so
    the probe does too: connections of a server just stopped (TIME_WAIT) do not hold its port, a listener does."""
    with socket.socket() as probe:
        probe.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            probe.bind((host, port))
        except OSError:
            return False
    return True


def answers(url: str, timeout: float = 2, cafile: str | Path | None = None) -> bool:
    """Whether `url` answers 200 (a health endpoint); over https, verified against `cafile` when given."""
    context = ssl.create_default_context(cafile=cafile) if cafile else None
    try:
        with urllib.request.urlopen(url, timeout=timeout, context=context) as response:
            return response.status == 200
    except OSError:
        return False


def start_group(
    command: list[str], log: IO, env: dict | None = None, cwd: str | Path | None = None, umask: int = -1
) -> subprocess.Popen:
    """Start `command` in a process group (session) of its own, output to `log`: a stop reaches its workers.
    `umask` (e.g. 0o077) applies to the command and everything it starts: the files they create."""
    return subprocess.Popen(
        command, stdout=log, stderr=subprocess.STDOUT, env=env, cwd=cwd, start_new_session=True, umask=umask
    )


# What a process that runs others' code (TorchServe, its workers) must not inherit: libpq's settings (PGPASSWORD,
# PGPASSFILE, ...), the MLflow account and tracking URI, cloud credentials, and anything named like a secret.
CREDENTIAL = re.compile(
    r"^(PG|MLFLOW_TRACKING_|AWS_|AZURE_|GOOGLE_APPLICATION_)|PASSWORD|PASSWD|SECRET|TOKEN|CREDENTIAL|API_?KEY|"
    r"DATABASE_URL|STORAGE_URL",
    re.IGNORECASE,
)


def without_credentials(environ: Mapping[str, str]) -> dict[str, str]:
    """`environ` less every tracking, database or cloud credential (`CREDENTIAL`)."""
    return {name: value for name, value in environ.items() if not CREDENTIAL.search(name)}


def write_secret(path: Path, text: str) -> Path:
    """Write `text` to `path`, readable by its owner alone (0600) from its first byte."""
    descriptor = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    os.fchmod(descriptor, 0o600)  # an older file of laxer mode
    with os.fdopen(descriptor, "w") as handle:
        handle.write(text)
    return path


def write_whole(path: Path, data: bytes, replace: bool = True) -> bool:
    """`path` holding `data` (0600), appearing whole or not at all, so a process reading it meanwhile never reads
    half of it: written aside, then moved over (`replace`) or linked in, where a file another process put there
    first stands (False then)."""
    aside = path.with_name(f".{path.name}.{os.getpid()}.{threading.get_ident()}.partial")
    with os.fdopen(os.open(aside, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600), "wb") as handle:
        handle.write(data)
    try:
        if replace:
            os.replace(aside, path)
        else:
            os.link(aside, path)
        return True
    except FileExistsError:
        return False
    finally:
        aside.unlink(missing_ok=True)


def private_dir(path: Path) -> Path:
    """`path` as a folder only its owner can open (0700), made so if it exists already."""
    path.mkdir(mode=0o700, parents=True, exist_ok=True)
    path.chmod(0o700)
    return path


def wait_until(
    ready: Callable[[], bool], timeout: float, interval: float = 0.5, check: Callable[[], None] | None = None
) -> bool:
    """Poll `ready()` until it is true (True) or `timeout` seconds pass (False). `check()` runs before each poll
    and raises when waiting is pointless (the process died, the server refused the model)."""
    deadline = time.monotonic() + timeout
    while True:
        if check is not None:
            check()
        if ready():
            return True
        if time.monotonic() > deadline:
            return False
        time.sleep(interval)


def pid_alive(pid: int) -> bool:
    if pid <= 0:
        return False
    try:
        process = psutil.Process(pid)
        return process.status() != psutil.STATUS_ZOMBIE
    except psutil.Error:
        return False


def signal_group(pid: int, sig: int) -> None:
    """Signal the process group led by `pid`, if it is still there."""
    try:
        os.killpg(pid, sig)
    except (ProcessLookupError, PermissionError):
        pass


def process_tree(pid: int) -> list[psutil.Process]:
    """The process `pid`, its descendants, and anything left in its process group (children re-parented)."""
    try:
        root = psutil.Process(pid)
        tree = {p.pid: p for p in [root, *root.children(recursive=True)]}
    except psutil.NoSuchProcess:
        tree = {}
    for process in psutil.process_iter():
        try:
            if os.getpgid(process.pid) == pid:
                tree.setdefault(process.pid, process)
        except (ProcessLookupError, psutil.Error):
            continue
    return list(tree.values())


def stop_tree(pid: int, timeout: float = 30) -> None:
    """SIGTERM to the group led by `pid` and to every process of its tree, a bounded wait, then SIGKILL; returns
    when all of them are gone, and reaps `pid` when it is this process's child (so no zombie stays)."""
    tree = process_tree(pid)
    _signal_all(pid, tree, signal.SIGTERM)
    _, alive = psutil.wait_procs(tree, timeout=timeout)
    if alive:
        _signal_all(pid, alive, signal.SIGKILL)
        psutil.wait_procs(alive, timeout=10)
    reap(pid)


def _signal_all(group: int, processes: list[psutil.Process], sig: int) -> None:
    signal_group(group, sig)
    for process in processes:
        try:
            process.send_signal(sig)
        except psutil.Error:
            pass


def reap(pid: int) -> None:
    """Collect the exit status of a child that has ended."""
    try:
        os.waitpid(pid, os.WNOHANG)
    except ChildProcessError:
        pass
