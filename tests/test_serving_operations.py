"""Operating a real TorchServe: rollout and rollback under load, verified archives, stop, busy ports, logs, tokens."""

import hashlib
import json
import os
import shutil
import socket
import subprocess
import sys
import threading
import time
import zipfile
from collections import Counter
from pathlib import Path

import psutil
import pytest
import torch
import yaml
from champion_versions import new_champion_version, registry_copy

from training.infra.processes import process_tree
from training.nn import load_checkpoint, save_checkpoint
from training.serving import balancer, oip_grpc, serve
from training.serving.archive import archive_champions
from training.serving.deploy import deploy, served_copy
from training.serving.errors import (
    ArchiveMissingError,
    ArchiveRefusedError,
    NothingToRollBackError,
    NotRunningError,
    PortInUseError,
)
from training.serving.rollback import rollback
from training.serving.serve import free_ports
from training.serving.signing import SIGNATURE, ArchiveSignatureError, UnsignedArchiveError, sign_archive
from training.tracking import mlflow_store, registry

pytestmark = pytest.mark.e2e
ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def running(model_store_copy, champions, tmp_path_factory):
    root = tmp_path_factory.mktemp("operations")
    store = model_store_copy(root / "archives")
    server = serve.start(
        run_dir=root / "run", model_store=store, ports=free_ports(), quiet=True, tracking_uri=champions["tracking_uri"],
        front_door=True,  # as `make serve` runs it: the rollouts' load crosses HAProxy
    )  # fmt: skip
    yield server, store, root
    serve.stop(server.run_dir, quiet=True)


def new_champion_copy(champions, root: Path, name: str) -> tuple[str, str]:
    """A private copy of the registry with a new @champion version of `name` (same weights): (uri, version)."""
    uri = registry_copy(champions, root)
    return uri, new_champion_version(uri, name)


def under_load(server, action):
    """Run `action()` while six clients keep asking nw-sine, from a second before to a second after it:
    (what it returned, [(status, version or error body) of every answer in order])."""
    stop, seen = threading.Event(), []

    def load():
        while not stop.is_set():
            status, body, _ = server.predict("nw-sine", [2.5])
            seen.append((status, body["model"]["version"] if status == 200 else json.dumps(body)))

    threads = [threading.Thread(target=load) for _ in range(6)]
    for t in threads:
        t.start()
    time.sleep(1.0)
    try:
        result = action()
        time.sleep(1.0)
    finally:
        stop.set()
        for t in threads:
            t.join()
    return result, seen


def assert_switched_without_failures(seen, before: str, after: str):
    counts = Counter(seen)
    assert all(status == 200 for status, _ in counts), counts
    assert counts[(200, before)] > 0 and counts[(200, after)] > 0
    assert all(v == after for _, v in seen[-6:]), "answers switch to the new version and stay there"


def test_a_new_champion_rolls_out_and_back_under_load_with_zero_failed_requests(running, champions):
    server, store, root = running
    uri, version = new_champion_copy(champions, root, "nw-sine")
    archive_champions("nw-sine", out_dir=store, tracking_uri=uri)
    old_version = server.predict("nw-sine", [2.5])[1]["model"]["version"]
    client = mlflow_store.configure(uri)
    rollout, seen = under_load(
        server, lambda: deploy("nw-sine", run_dir=server.run_dir, model_store=store, tracking_uri=uri)
    )
    assert_switched_without_failures(seen, old_version, version)
    assert rollout.version == version and rollout.previous == [old_version]
    assert [v["modelVersion"] for v in server.versions("nw-sine")] == [version]
    assert str(client.get_model_version_by_alias("nw-sine", registry.SERVING).version) == version
    again = deploy("nw-sine", run_dir=server.run_dir, model_store=store, tracking_uri=uri)
    assert again.previous == [] and server.predict("nw-sine", [2.5])[0] == 200

    back, seen = under_load(server, lambda: rollback("nw-sine", run_dir=server.run_dir, tracking_uri=uri))
    assert_switched_without_failures(seen, version, old_version)
    assert back.version == old_version and back.previous == [version]
    assert [v["modelVersion"] for v in server.versions("nw-sine")] == [old_version]
    assert str(client.get_model_version_by_alias("nw-sine", registry.SERVING).version) == old_version
    with pytest.raises(NothingToRollBackError) as error:
        rollback("nw-sine", run_dir=server.run_dir, tracking_uri=uri)
    assert f"nw-sine version {old_version}" in str(error.value)
    forward = deploy("nw-sine", run_dir=server.run_dir, model_store=store, tracking_uri=uri)  # its release again
    assert forward.previous == [old_version] and server.predict("nw-sine", [2.5])[1]["model"]["version"] == version


def test_deploy_names_what_is_missing(running, tmp_path):
    server, store, _ = running
    with pytest.raises(ArchiveMissingError) as missing:
        deploy("nw-sinee", run_dir=server.run_dir, model_store=store, mark_registry=False)
    assert "make archive NAME=nw-sinee" in str(missing.value)
    with pytest.raises(NotRunningError) as stopped:
        deploy("nw-sine", run_dir=tmp_path, model_store=store, mark_registry=False)
    assert "make serve" in str(stopped.value)


def tampered_copy(archive: Path, target: Path, signed: bool = True) -> Path:
    """The same archive with its checkpoint swapped: every training target set to 42 (and, unless `signed`,
    without its signed manifest: an archive as built before signing)."""
    with zipfile.ZipFile(archive) as original:
        members = {name: original.read(name) for name in original.namelist() if signed or name != SIGNATURE}
    checkpoint = target.parent / "checkpoint.pt"
    checkpoint.write_bytes(members["checkpoint.pt"])
    model, metadata = load_checkpoint(checkpoint)
    with torch.no_grad():
        model.values.fill_(42.0)
    save_checkpoint(model, checkpoint, metadata)
    members["checkpoint.pt"] = checkpoint.read_bytes()
    with zipfile.ZipFile(target, "w") as forged:
        for name, data in members.items():
            forged.writestr(name, data)
    return target


def test_a_tampered_archive_is_refused_before_torchserve_sees_it(champions, tmp_path):
    store = tmp_path / "archives"
    store.mkdir()
    original = next(a for a in champions["archives"] if a.stem == "nw-sine")
    tampered_copy(original, store / "nw-sine.mar")
    with pytest.raises(ArchiveSignatureError, match="nw-sine.mar: member checkpoint.pt was changed after signing"):
        serve.start(run_dir=tmp_path / "run", model_store=store, ports=free_ports(), quiet=True, timeout=120)
    assert serve.running_pid(tmp_path / "run") is None and not (tmp_path / "run" / "store" / "nw-sine.mar").exists()


def test_an_unsigned_archive_trusted_on_request_is_still_checked_by_the_worker(champions, tmp_path):
    store = tmp_path / "archives"
    store.mkdir()
    original = next(a for a in champions["archives"] if a.stem == "nw-sine")
    tampered_copy(original, store / "nw-sine.mar", signed=False)
    with pytest.raises(UnsignedArchiveError, match="is not signed"):
        serve.start(run_dir=tmp_path / "run", model_store=store, ports=free_ports(), quiet=True, timeout=120)
    started = time.monotonic()
    with pytest.raises(ArchiveRefusedError) as refused:
        serve.start(
            run_dir=tmp_path / "run",
            model_store=store,
            ports=free_ports(),
            quiet=True,
            timeout=120,
            trust_unsigned=True,
        )
    assert "nw-sine" in str(refused.value) and "model_info.json" in str(refused.value)
    assert time.monotonic() - started < 100, "the refusal is reported as soon as a worker logs it"
    assert serve.running_pid(tmp_path / "run") is None and not (tmp_path / "run" / "key_file.json").exists()


def test_a_tampered_archive_is_not_deployed_and_the_served_version_goes_on(running, tmp_path):
    server, store, _ = running
    before = server.predict("nw-sine", [2.5])[1]
    upload = tmp_path / "upload"
    upload.mkdir()
    tampered_copy(store / "nw-sine.mar", upload / "nw-sine.mar")
    with pytest.raises(ArchiveSignatureError, match="member checkpoint.pt was changed after signing"):
        deploy("nw-sine", run_dir=server.run_dir, model_store=upload, mark_registry=False)
    assert server.predict("nw-sine", [2.5])[1] == before


def test_stop_returns_when_the_whole_process_tree_is_gone_and_start_works_right_after(
    model_store_copy, champions, tmp_path
):
    store, uri = model_store_copy(tmp_path / "archives"), champions["tracking_uri"]
    ports = free_ports()
    start = dict(models=["nw-sine"], run_dir=tmp_path / "run", model_store=store, ports=ports, quiet=True,
                 tracking_uri=uri, front_door=True)  # fmt: skip
    server = serve.start(**start)
    pid = serve.running_pid(server.run_dir)
    tree = [pid] + [p.pid for p in psutil.Process(pid).children(recursive=True)]
    assert len(tree) >= 3, "launcher, Java and at least one worker"
    fronts = [server.run_dir / serve.FRONT_DIR / balancer.PID_FILE, server.run_dir / oip_grpc.PID_FILE]
    tree += [int(pid_file.read_text()) for pid_file in fronts]  # HAProxy and the gRPC front
    assert serve.stop(server.run_dir, quiet=True)
    assert not [p for p in tree if psutil.pid_exists(p) and psutil.Process(p).status() != psutil.STATUS_ZOMBIE]
    again = serve.start(**start)
    try:
        assert again.predict("nw-sine", [1.0])[0] == 200
    finally:
        serve.stop(again.run_dir, quiet=True)


def test_a_busy_port_is_named_and_leaves_no_stale_state(model_store_copy, champions, tmp_path):
    store = model_store_copy(tmp_path / "archives")
    ports = free_ports()
    with socket.socket() as squatter:
        squatter.bind(("127.0.0.1", ports["inference_address"]))
        squatter.listen()
        with pytest.raises(PortInUseError) as busy:
            serve.start(
                run_dir=tmp_path / "run",
                model_store=store,
                ports=ports,
                quiet=True,
                tracking_uri=champions["tracking_uri"],
            )
    assert f"port {ports['inference_address']} (inference_address)" in str(busy.value)
    assert serve.running_pid(tmp_path / "run") is None and not (tmp_path / "run" / "key_file.json").exists()


def test_logs_rotate_by_size_and_requests_do_not_reach_stdout(running):
    server, _, _ = running
    logs = server.run_dir / "logs"
    quiet = ["torchserve.out", "ts_log.log", "model_log.log"]
    before = {name: (logs / name).stat().st_size for name in quiet}
    for _ in range(200):
        assert server.predict("nw-sine", [1.0])[0] == 200
    grown = {name: (logs / name).stat().st_size - before[name] for name in quiet}
    assert all(size < 1000 for size in grown.values()), f"per-request lines only go to the access log: {grown}"
    assert (logs / "access_log.log").stat().st_size > 200 * 50


def test_a_log_at_its_size_cap_rolls_over_into_a_compressed_file(model_store_copy, champions, tmp_path):
    store = model_store_copy(tmp_path / "archives")
    server = serve.start(
        models=["nw-sine"],
        run_dir=tmp_path / "run",
        model_store=store,
        ports=free_ports(),
        quiet=True,
        log_size="8 KB",
        tracking_uri=champions["tracking_uri"],
    )
    logs = server.run_dir / "logs"
    try:
        for _ in range(300):  # ~100 bytes per access-log line: about four caps' worth
            assert server.predict("nw-sine", [1.0])[0] == 200
    finally:
        serve.stop(server.run_dir, quiet=True)
    rolled = sorted(p.name for p in logs.glob("access_log.*.log.gz"))
    assert rolled, sorted(p.name for p in logs.iterdir())
    assert len(rolled) <= 3  # DefaultRolloverStrategy max: older files are deleted
    assert (logs / "access_log.log").stat().st_size < 16 * 1024


def test_the_token_command_replaces_an_expired_token_and_says_so(running):
    server, _, _ = running
    keys = server.keys()
    keys["inference"]["expiration time"] = "2000-01-01T00:00:00.000000000Z"
    (server.run_dir / "key_file.json").write_text(json.dumps(keys))
    command = [sys.executable, "-m", "training", "token", "--run-dir", str(server.run_dir)]
    result = subprocess.run(command, cwd=ROOT, capture_output=True, text=True, timeout=60)
    assert result.returncode == 0 and "expired" in result.stderr
    fresh = result.stdout.strip()
    assert fresh and fresh != keys["inference"]["key"] and not server.token_expired()
    url = f"{server.inference_url}/predictions/nw-sine"
    assert server.request("POST", url, {"instances": [1.0]}, token=fresh)[0] == 200


def test_the_header_file_lets_curl_send_the_token_without_it_on_a_command_line(running):
    server, _, _ = running
    command = [sys.executable, "-m", "training", "token", "--header-file", "--run-dir", str(server.run_dir)]
    result = subprocess.run(command, cwd=ROOT, capture_output=True, text=True, timeout=60)
    header = Path(result.stdout.strip())
    assert result.returncode == 0 and header == server.run_dir / "auth-header"
    assert header.stat().st_mode & 0o777 == 0o600 and server.token() not in result.stdout + result.stderr
    assert header.read_text() == f"Authorization: Bearer {server.token()}\n"
    if shutil.which("curl"):
        url = f"{server.inference_url}/predictions/nw-sine"
        curl = ["curl", "-s", "-o", "/dev/null", "-w", "%{http_code}", "-H", f"@{header}", "-d", '{"instances": [1]}']
        curl += ["-H", "Content-Type: application/json", url]
        assert subprocess.run(curl, capture_output=True, text=True, timeout=60).stdout == "200"


def test_the_server_runtime_is_private_to_its_user(running):
    server, _, _ = running
    run_dir = server.run_dir
    for folder in (run_dir, run_dir / "logs", run_dir / "tmp"):
        assert folder.stat().st_mode & 0o777 == 0o700, folder
    assert (run_dir / "key_file.json").stat().st_mode & 0o077 == 0  # written under umask 077: never readable
    java = [p for p in process_tree(serve.running_pid(run_dir)) if p.name() == "java"]
    assert java and f"-Djava.io.tmpdir={run_dir / 'tmp'}" in java[0].cmdline()  # not the shared /tmp
    assert any((run_dir / "tmp" / "models").iterdir())  # the unpacked archives (handler code) live there
    sockets = [c.laddr for p in process_tree(serve.running_pid(run_dir)) for c in p.net_connections(kind="unix")]
    assert sockets and all(str(s).startswith(str(run_dir / "tmp")) for s in sockets if s), sockets
    if os.geteuid() == 0 and shutil.which("setpriv"):  # another local user (nobody) can open none of it
        nobody = ["setpriv", "--reuid=65534", "--regid=65534", "--clear-groups"]
        for target in ("key_file.json", "tmp/models", "logs/model_log.log"):
            done = subprocess.run(nobody + ["cat", str(run_dir / target)], capture_output=True, text=True)
            assert done.returncode != 0 and "Permission denied" in done.stderr, (target, done.stderr)


def test_an_interrupted_archive_build_leaves_the_archive_before_it_whole(champions, tmp_path, monkeypatch):
    from training.serving import archive

    (built,) = archive_champions("nw-sine", out_dir=tmp_path, tracking_uri=champions["tracking_uri"])
    before = built.read_bytes()
    client = mlflow_store.configure(champions["tracking_uri"])
    archived = client.get_model_version_by_alias("nw-sine", "archived")
    assert archived.tags["archive_sha256"] == hashlib.sha256(before).hexdigest()  # the registry knows the bytes
    real = shutil.copyfile

    def interrupted(source, target, *args, **kwargs):
        if not str(target).endswith(".partial"):  # the payload's files
            return real(source, target, *args, **kwargs)
        Path(target).write_bytes(Path(source).read_bytes()[:100])  # the archive itself, cut short while written
        raise KeyboardInterrupt

    monkeypatch.setattr(archive.shutil, "copyfile", interrupted)
    with pytest.raises(KeyboardInterrupt):
        archive_champions("nw-sine", out_dir=tmp_path, tracking_uri=champions["tracking_uri"])
    monkeypatch.setattr(archive.shutil, "copyfile", real)
    assert built.read_bytes() == before and sorted(p.name for p in tmp_path.glob("*.mar")) == ["nw-sine.mar"]


def test_a_version_built_again_differently_is_not_deployed_over_the_one_served(running, champions, tmp_path):
    server, _, _ = running
    (served,) = [str(v["modelVersion"]) for v in server.versions("nw-sine")]
    with zipfile.ZipFile(served_copy(server.run_dir, "nw-sine", served)) as copy:
        members = {name: copy.read(name) for name in copy.namelist() if name != SIGNATURE}
    config = yaml.safe_load(members["model-config.yaml"])
    config["handler"]["explain_keys"] = "none"  # the same version, built again to withhold the training rows
    members["model-config.yaml"] = yaml.safe_dump(config).encode()
    again = tmp_path / "nw-sine.mar"
    with zipfile.ZipFile(again, "w") as archive:
        for name, data in members.items():
            archive.writestr(name, data)
    digest = sign_archive(again)
    uri = registry_copy(champions, tmp_path)  # where `make archive EXPLAIN_KEYS=none` recorded it as the latest build
    client = mlflow_store.configure(uri)
    champion = client.get_model_version_by_alias("nw-sine", registry.CHAMPION)
    while len(client.search_model_versions("name = 'nw-sine'")) < int(served):  # a version a rollout test added
        client.create_model_version("nw-sine", source=champion.source, run_id=champion.run_id, tags=champion.tags)
    client.set_model_version_tag("nw-sine", served, "archive_sha256", digest)
    with pytest.raises(ArchiveRefusedError) as refused:
        deploy("nw-sine", run_dir=server.run_dir, model_store=tmp_path, tracking_uri=uri, mark_registry=False)
    assert "built differently" in str(refused.value)
    assert server.predict("nw-sine", [1.0], explain=True)[1]["explanations"][0]["revealed"] == "values"
