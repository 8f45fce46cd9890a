"""End to end: real stores, real archives built from the registry, a real TorchServe on free loopback ports."""

import base64
import ipaddress
import json
import re
import shutil
import time
import urllib.error
import urllib.request
import zipfile
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import mlflow
import pandas as pd
import psutil
import pytest
from mlflow import MlflowClient
from served_champions import CREDENTIALS, SEQUENCES

from handlers.metrics import FLUSH_SECONDS
from training.infra import memory, places
from training.infra.processes import free_port, process_tree, wait_until
from training.serving import balancer, monitor, oip_grpc, serve
from training.serving.errors import ArchiveMissingError, MissingProgramError

pytestmark = pytest.mark.e2e


def champion(champions, name):
    mlflow.set_tracking_uri(champions["tracking_uri"])  # the registry too: an earlier module may have named another
    mlflow.set_registry_uri(champions["tracking_uri"])
    return mlflow.pyfunc.load_model(f"models:/{name}@champion")


def test_served_predictions_equal_in_process_predictions(champions, served_champions):
    server, _ = served_champions
    status, body, _ = server.predict("nw-sine", [0.5, 2.5, 4.9])
    expected = champion(champions, "nw-sine").predict(pd.DataFrame({"x0": [0.5, 2.5, 4.9]}))
    assert status == 200 and body["predictions"] == pytest.approx(expected.tolist(), abs=1e-5)
    version = MlflowClient(champions["tracking_uri"], champions["tracking_uri"]).get_model_version_by_alias(
        "nw-sine", "champion"
    )
    assert body["model"] == {"name": "nw-sine", "version": str(version.version), "run_id": version.run_id}

    status, body, _ = server.predict("mha-adding", SEQUENCES)
    expected = champion(champions, "mha-adding").predict(pd.DataFrame({"sequence": SEQUENCES}))
    assert status == 200 and body["predictions"] == pytest.approx(expected.tolist(), abs=1e-4)


def test_explanations_are_attention_weights_summing_to_one(served_champions):
    server, _ = served_champions
    status, body, _ = server.predict("nw-sine", [1.0, 3.0], explain=True)
    assert status == 200 and len(body["explanations"]) == 2
    for item in body["explanations"]:
        assert len(item["weights"]) == 50 and sum(item["weights"]) == pytest.approx(1.0, abs=1e-5)
    status, body, _ = server.predict("mha-adding", SEQUENCES, explain=True, heads=True)
    assert status == 200
    for seq, item in zip(SEQUENCES, body["explanations"]):
        assert len(item["pooling_weights"]) == len(seq) and sum(item["pooling_weights"]) == pytest.approx(1.0, abs=1e-5)
        assert len(item["head_weights"][0][0]) == len(seq)


def test_requests_without_a_valid_token_are_refused(served_champions):
    server, _ = served_champions
    url = f"{server.inference_url}/predictions/nw-sine"
    for token in (None, "wrong-token"):
        status, body, _ = server.request("POST", url, {"instances": [1.0]}, token=token)
        assert status in (400, 401, 403) and "Token" in json.dumps(body)
    status, _, _ = server.request("GET", f"{server.inference_url}/ping")
    assert status != 200  # token auth guards /ping too


def test_bad_inputs_get_4xx_and_the_server_stays_healthy(served_champions):
    server, _ = served_champions
    bad = [
        ("nw-sine", ["x"]),
        ("nw-sine", []),
        ("nw-sine", [[1.0, 2.0]]),
        ("nw-sine", [float("nan")]),
        ("mha-adding", [[[0.1]]]),
        ("mha-adding", [[]]),
        ("mha-adding", [[[0.0, 0.0]] * 1001]),
    ]
    for name, instances in bad:
        status, answer, _ = server.predict(name, instances)  # NaN goes out as the JSON literal NaN
        assert 400 <= status < 500 and answer["error"] and answer["detail"], (name, instances, answer)
    assert server.health() == "Healthy"
    assert server.predict("nw-sine", [1.0])[0] == 200


def test_concurrent_requests_are_batched_and_all_answered_correctly(served_champions):
    server, _ = served_champions
    xs = [i / 10 for i in range(48)]
    expected = server.predict("nw-sine", xs)[1]["predictions"]
    with ThreadPoolExecutor(max_workers=48) as pool:
        answers = list(pool.map(lambda x: server.predict("nw-sine", [x]), xs))
    assert all(status == 200 for status, _, _ in answers)
    assert [body["predictions"][0] for _, body, _ in answers] == pytest.approx(expected, abs=1e-5)
    batch_sizes = [int(headers.get("X-Batch-Size", headers.get("x-batch-size", 1))) for _, _, headers in answers]
    assert max(batch_sizes) > 1


def test_archives_are_self_contained_and_record_their_provenance(champions, served_champions):
    _, archives = served_champions
    client = MlflowClient(champions["tracking_uri"], champions["tracking_uri"])
    for path in archives:
        with zipfile.ZipFile(path) as archive:
            names = set(archive.namelist())
            info = json.loads(archive.read("model_info.json"))
            manifest = json.loads(archive.read("MAR-INF/MANIFEST.json"))
        assert {"training/nn/attention.py", "handlers/contract.py", "checkpoint.pt", "model-config.yaml"} <= names
        assert not any(n.endswith((".pkl", ".pickle")) for n in names)
        assert not any(n.startswith("training/") and "nn/" not in n and not n.endswith("__init__.py") for n in names)
        version = client.get_model_version_by_alias(info["name"], "champion")
        assert info["version"] == str(version.version) == manifest["model"]["modelVersion"]
        assert info["run_id"] == version.run_id and info["sha256"] == version.tags["checkpoint_sha256"]
        assert any(k.startswith("test_") for k in info)


def test_workers_run_the_archived_code_not_the_checkout(served_champions):
    server, _ = served_champions
    log = (server.run_dir / "logs" / "model_log.log").read_text()
    loaded = [line for line in log.splitlines() if "code from" in line]
    assert loaded, "the handler logs where its code came from"
    assert all("requests read through a buffer" in line for line in loaded), "handlers/worker_io.py is installed"
    checkout = str(places.ROOT)
    for line in loaded:
        sources = line.split("code from ", 1)[1].split(" and ")
        assert all(not s.strip().startswith(checkout) for s in sources), line


def test_model_registration_is_token_guarded_and_limited_to_the_model_store(served_champions, tmp_path):
    server, archives = served_champions
    outside = tmp_path / "elsewhere.mar"
    outside.write_bytes(b"not an archive")
    for url in (outside.as_uri(), "http://127.0.0.1:9/x.mar", "../nw-sine.mar"):
        status, body, _ = server.manage("POST", "/models", url=url)
        assert status >= 400, (url, body)
    store = archives[0].parent
    planted = store / "planted.mar"  # a file someone put in the store after the server started
    shutil.copy(store / "nw-sine.mar", planted)
    try:
        status, body, _ = server.manage("POST", "/models", url=planted.as_uri())
        assert status >= 400, body
    finally:
        planted.unlink()
    register = f"{server.management_url}/models?url=nw-sine.mar"
    for token in (None, server.token()):  # none, or the inference token
        assert server.request("POST", register, token=token)[0] >= 400
    assert sorted(server.models()) == ["mha-adding", "nw-sine"]


def test_everything_binds_to_loopback(served_champions):
    server, _ = served_champions
    fronts = [server.run_dir / serve.FRONT_DIR / balancer.PID_FILE, server.run_dir / oip_grpc.PID_FILE]
    roots = [serve.running_pid(server.run_dir), *(int(pid_file.read_text()) for pid_file in fronts)]
    listening = [
        connection.laddr
        for root in roots
        for process in process_tree(root)
        for connection in process.net_connections(kind="inet")
        if connection.status == psutil.CONN_LISTEN
    ]
    urls = (server.inference_url, server.management_url, server.metrics_url, server.grpc_address)
    ports = {int(url.rsplit(":", 1)[1]) for url in urls}  # the front door's and the gRPC front's among them
    assert ports <= {address.port for address in listening}, listening  # the server's own sockets, as bound
    assert all(loopback(address.ip) for address in listening), listening
    for token in (server.token(), None, "not-the-token"):  # TorchServe 0.12 checks no token here (docs/security.md)
        status, metrics, _ = server.request("GET", f"{server.metrics_url}/metrics", token=token)
        assert status == 200 and "ts_inference_requests_total" in metrics


def test_the_workers_keep_the_memory_they_reuse(served_champions):
    server, _ = served_champions
    workers = [
        p for p in process_tree(serve.running_pid(server.run_dir)) if "model_service_worker" in " ".join(p.cmdline())
    ]
    assert len(workers) >= 2  # one per model at least
    for worker in workers:  # glibc reads these at the worker's start (training/infra/memory.py)
        assert all(worker.environ().get(name) == value for name, value in memory.ENVIRONMENT.items()), worker.pid


def test_the_archives_and_the_run_folder_are_their_owners_alone(champions, served_champions):
    """Made under the suite's umask (022): NW archives hold training rows, the run folder tokens and logs."""
    server, archives = served_champions
    assert (champions["root"] / "archives").stat().st_mode & 0o777 == 0o700
    assert {archive.stat().st_mode & 0o777 for archive in archives} == {0o600}
    assert server.run_dir.stat().st_mode & 0o777 == 0o700


def test_torchserve_and_its_workers_hold_no_tracking_or_database_credentials(served_champions):
    server, _ = served_champions
    tree = process_tree(serve.running_pid(server.run_dir))
    assert any("model_service_worker" in " ".join(p.cmdline()) for p in tree)
    for process in tree:  # what /proc/<pid>/environ holds, launcher, Java and workers alike
        environ = Path(f"/proc/{process.pid}/environ").read_bytes().decode(errors="replace")
        assert not [name for name in CREDENTIALS if f"{name}=" in environ], process.cmdline()
        assert "s3cret" not in environ, process.cmdline()


def loopback(ip: str) -> bool:
    """127.0.0.0/8 or ::1, also as Java's IPv6 sockets report IPv4 ones (::ffff:127.0.0.1)."""
    address = ipaddress.ip_address(ip)
    return (getattr(address, "ipv4_mapped", None) or address).is_loopback


def test_serve_explains_what_is_missing(tmp_path, monkeypatch):
    with pytest.raises(ArchiveMissingError) as error:
        serve.start(run_dir=tmp_path / "run", model_store=tmp_path)
    assert "make archive" in str(error.value)
    monkeypatch.setattr(serve.shutil, "which", lambda name: None)
    with pytest.raises(MissingProgramError) as error:
        serve.start(run_dir=tmp_path / "run", model_store=tmp_path)
    assert "Java 17" in str(error.value)


def test_a_refreshed_token_replaces_the_old_one(served_champions):
    server, _ = served_champions
    old = server.token()
    new = server.refresh_token()
    assert new != old
    url = f"{server.inference_url}/predictions/nw-sine"
    assert server.request("POST", url, {"instances": [1.0]}, token=old)[0] != 200
    assert server.request("POST", url, {"instances": [1.0]}, token=new)[0] == 200


def test_allowed_urls_admit_exactly_the_stores_own_archives_and_their_releases(tmp_path):
    patterns = serve.allowed_urls(tmp_path, ["nw-sine", "mha-adding"]).split(",")
    admitted = [(tmp_path / "nw-sine.mar").as_uri(), (tmp_path / "releases" / "mha-adding-v12.mar").as_uri()]
    refused = [tmp_path / "planted.mar", tmp_path / "releases" / "planted-v1.mar", tmp_path / "nw-sine.mar.mar"]
    refused += [tmp_path / "sub" / "nw-sine.mar", tmp_path / "releases" / "nw-sine-vx.mar", tmp_path / "nw-sinexmar"]
    for url in admitted:
        assert any(re.fullmatch(p, url) for p in patterns), url
    for path in refused:
        assert not any(re.fullmatch(p, path.as_uri()) for p in patterns), path
    assert not any(re.fullmatch(p, "http://127.0.0.1:9/nw-sine.mar") for p in patterns)


def scrape(server) -> dict[tuple[str, frozenset], float]:
    """TorchServe's Prometheus page as {(metric, labels): value}."""
    status, text, _ = server.request("GET", f"{server.metrics_url}/metrics", token=server.token())
    assert status == 200, text
    samples = {}
    for line in text.splitlines():
        match = re.fullmatch(r"(\w+)\{(.*)\} (\S+)", line)
        if match:
            labels = frozenset(re.findall(r'(\w+)="([^"]*)"', match.group(2)))
            samples[(match.group(1), labels)] = float(match.group(3))
    return samples


def settled(read: Callable[[], dict]) -> dict:
    """What `read` gives once two reads a flush apart agree: every figure a worker held has gone out."""
    last = read()
    for _ in range(20):
        time.sleep(FLUSH_SECONDS + 0.5)
        now = read()
        if now == last:
            return now
        last = now
    raise AssertionError(f"the figures kept moving: {last}")


def test_the_handlers_metrics_reach_prometheus_by_route_and_outcome(served_champions):
    server, _ = served_champions

    def requests(route: str, outcome: str) -> float:
        want = {("route", route), ("outcome", outcome), ("ModelName", "nw-sine")}
        return sum(
            v for (name, labels), v in scrape(server).items() if name == "attention_requests_total" and want <= labels
        )

    keys = [("predictions", "answered"), ("predictions", "invalid instance"), ("explanations", "answered")]
    before = settled(lambda: {key: requests(*key) for key in keys})  # earlier tests' figures held in the worker
    for _ in range(3):
        assert server.predict("nw-sine", [1.0, 2.0])[0] == 200
    for _ in range(2):
        assert server.predict("nw-sine", ["x"])[0] == 400
    assert server.predict("nw-sine", [1.0], explain=True)[0] == 200
    deadline = time.monotonic() + 30  # the frontend picks the worker's metric lines up as they come
    while time.monotonic() < deadline and requests("predictions", "answered") < before[("predictions", "answered")] + 3:
        time.sleep(0.5)
    assert requests("predictions", "answered") - before[("predictions", "answered")] == 3
    assert requests("predictions", "invalid instance") - before[("predictions", "invalid instance")] == 2
    assert requests("explanations", "answered") - before[("explanations", "answered")] == 1
    samples = scrape(server)
    assert any(name.startswith("attention_handler_ms") for name, _ in samples)
    assert any(name.startswith("attention_batch_requests") for name, _ in samples)


def test_a_real_prometheus_counts_both_layers_exactly_and_sees_inputs_drift(served_champions, tmp_path):
    """`make monitor`'s Prometheus, scraping this server every second: a known mix of good, bad, unauthorized and
    far-away requests shows up in its query API with exact counts, and the drift alert goes pending."""
    server, _ = served_champions
    watch = tmp_path / "monitor"
    url = monitor.start(run_dir=server.run_dir, monitor_dir=watch, port=free_port(), interval="1s")
    prometheus = monitor.running_pid(watch)
    for headers in ({}, {"Authorization": "Basic " + base64.b64encode(b"monitor:wrong").decode()}):
        with pytest.raises(urllib.error.HTTPError) as refused:  # on loopback, yet no page without the password
            urllib.request.urlopen(urllib.request.Request(f"{url}/api/v1/query?query=up", headers=headers))
        assert refused.value.code == 401

    def value(promql: str) -> float:
        return sum(float(sample["value"][1]) for sample in monitor.query(url, promql, watch))

    def settle(at_least: dict[str, float]) -> dict[str, float]:
        """Every count once each has reached its floor and two more scrapes passed (one still climbing shows)."""
        wait_until(lambda: all(value(counts[k]) >= floor for k, floor in at_least.items()), timeout=60, interval=0.5)
        time.sleep(2.5)
        return {key: value(counts[key]) for key in at_least}

    model = 'ModelName="nw-sine"'
    counts = {
        "answered": f'attention_requests_total{{{model},route="predictions",outcome="answered"}}',
        "invalid": f'attention_requests_total{{{model},route="predictions",outcome="invalid instance"}}',
        "beyond": f'attention_novelty_instances_total{{{model},band="beyond"}}',
        "range": f"attention_beyond_training_range_total{{{model}}}",
        "4xx": "Requests4XX",
    }
    try:
        assert server.predict("nw-sine", [90.0])[0] == 200  # every series exists before the counted mix
        before = settle(dict.fromkeys(counts, 1))
        far = [90.0 + i for i in range(150)]
        for _ in range(4):
            assert server.predict("nw-sine", [1.0, 2.0])[0] == 200
        for _ in range(2):
            assert server.predict("nw-sine", ["x"])[0] == 400
        for token in ("", "not-the-token"):  # refused by TorchServe: the handler never sees these
            status, _, _ = server.request(
                "POST", f"{server.inference_url}/predictions/nw-sine", {"instances": [1.0]}, token=token
            )
            assert status in (400, 401)
        assert server.predict("nw-sine", far)[0] == 200
        expected = {"answered": 5, "invalid": 2, "beyond": 150, "range": 150, "4xx": 4}
        after = settle({key: before[key] + expected[key] for key in counts})
        assert {key: after[key] - before[key] for key in counts} == expected

        rules = {r["name"] for g in monitor.api(url, "/api/v1/rules", watch)["data"]["groups"] for r in g["rules"]}
        assert {"AttentionRequestErrors", "AttentionOverCapacity", "AttentionInputsDrifted"} <= rules

        def drift_alert() -> bool:
            alerts = monitor.api(url, "/api/v1/alerts", watch)["data"]["alerts"]
            return any(
                a["labels"]["alertname"] == "AttentionInputsDrifted" and a["labels"].get("ModelName") == "nw-sine"
                for a in alerts
            )

        assert wait_until(drift_alert, timeout=30, interval=0.5)
    finally:
        assert monitor.stop(watch)
    assert not psutil.pid_exists(prometheus) and not monitor.running_pid(watch)


def test_status_shows_the_front_door_and_the_grpc_service_running(served_champions):
    from training.cli import front_lines

    server, _ = served_champions
    assert front_lines(server) == [
        "  front door  HAProxy, running",
        f"  gRPC        {server.grpc_address} (running)",
    ]
