"""`make serve REPLICAS=2`: two real TorchServe replicas behind a real HAProxy, with the keeper; faults under load."""

import http.client
import json
import os
import re
import signal
import time
import urllib.error
import urllib.request
from collections import Counter
from pathlib import Path

import numpy as np
import psutil
import pytest
import tritonclient.grpc
import tritonclient.utils
from champion_versions import new_champion_version
from four_kinds import build_four_kinds
from served_champions import SEQUENCES, XS
from triton_clients import as_triton_inputs, triton_grpc, triton_http

from benchmarks import faults
from benchmarks.steady_load import SteadyLoad
from handlers.contract import agrees
from training.infra.processes import free_ports, pid_alive, wait_until
from training.serving import balancer, canary, fleet, fleet_rollout, history, monitor, oip_grpc
from training.serving.archive import MODEL_CONFIG, archive_champions
from training.serving.errors import AlreadyRunningError, ManagementError, StartupError
from training.tracking import mlflow_store, registry

pytestmark = pytest.mark.e2e

IMAGE = [[(row * 3 + column * 5) % 17 for column in range(8)] for row in range(8)]  # raw pixel values, 0..16
TEXTS = ["23 Nov 2026", "11/23/26"]
OIP_TEXTS = {"inputs": [{"name": "texts", "datatype": "BYTES", "shape": [2], "data": TEXTS}]}
OTHER_HOST = "127.0.0.2"  # another address of this machine (Linux routes 127/8 to lo): a replica "off loopback"
REQUESTS = [  # every model kind, predictions, explanations and the Open Inference Protocol
    (path, json.dumps(body).encode())
    for path, body in [
        ("/predictions/nw-sine", {"instances": XS}),
        ("/predictions/mha-adding", {"instances": SEQUENCES}),
        ("/predictions/s2s-dates", {"instances": TEXTS}),
        ("/predictions/pixel-digits", {"instances": [IMAGE]}),
        ("/explanations/nw-sine", {"instances": XS[:1]}),
        ("/v2/models/s2s-dates/infer", OIP_TEXTS),
    ]
]
INSTANCES = {"nw-sine": XS, "mha-adding": SEQUENCES, "s2s-dates": TEXTS, "pixel-digits": [IMAGE]}
TENSORS = {"nw-sine": "features", "mha-adding": "sequences", "s2s-dates": "texts", "pixel-digits": "images"}


def front_body(name):
    """The instances of INSTANCES[name] as the model's OIP input tensors."""
    if name == "mha-adding":
        padded = [s + [[0.0, 0.0]] * (9 - len(s)) for s in SEQUENCES]
        lengths = {"name": "lengths", "datatype": "INT64", "shape": [2], "data": [len(s) for s in SEQUENCES]}
        return {"inputs": [oip_tensor("sequences", "FP32", padded), lengths]}
    if name == "s2s-dates":
        return OIP_TEXTS
    return {"inputs": [oip_tensor(TENSORS[name], "FP32", [[x] for x in XS] if name == "nw-sine" else [IMAGE])]}


def oip_tensor(name, datatype, nested):
    array = np.array(nested)
    return {"name": name, "datatype": datatype, "shape": list(array.shape), "data": array.flatten().tolist()}


@pytest.fixture(scope="module")
def kinds(champions, tmp_path_factory):
    """Every model kind archived: (model store, tracking URI)."""
    return build_four_kinds(champions, tmp_path_factory.mktemp("kinds"))


@pytest.fixture(scope="module")
def two(kinds, tmp_path_factory):
    """A fleet of two replicas serving every kind, on free ports: r1 on loopback, r2 on another address of this
    machine standing for another host (TLS, verified against the fleet's CA); stopped when the module is done."""
    store, uri = kinds
    root = tmp_path_factory.mktemp("fleet")
    front, metrics, grpc_front = (f"127.0.0.1:{port}" for port in free_ports(3))
    started = fleet.start(2, run_dir=root / "serve", model_store=store, front_address=front, metrics_address=metrics,
                          tracking_uri=uri, hosts=["127.0.0.1", OTHER_HOST], grpc_address=grpc_front)  # fmt: skip
    yield started
    fleet.stop(root / "serve", quiet=True)


def test_the_front_door_answers_with_the_fleets_token_from_every_replica(two):
    front = fleet.front(Path(two.run_dir))
    direct = two.server(two.replicas[0])
    assert faults.all_up(two)
    before = {name: int(row["stot"]) for name, row in balancer.stats(two.balancer_dir).items()}
    for _ in range(8):
        status, body, _ = front.predict("nw-sine", XS)
        assert status == 200, body
        assert body == direct.predict("nw-sine", XS)[1]
    after = {name: int(row["stot"]) for name, row in balancer.stats(two.balancer_dir).items()}
    assert all(after[name] > before[name] for name in after), (before, after)  # both replicas answered


def test_a_replica_on_another_host_speaks_tls_verified_against_the_fleets_ca(two):
    remote = two.replicas[1]
    assert remote.tls and remote.host == OTHER_HOST
    server = two.server(remote)
    assert server.inference_url.startswith(f"https://{OTHER_HOST}:") and server.ca is not None
    assert server.health() == "Healthy"  # verified against the fleet's CA
    with pytest.raises(urllib.error.URLError, match="CERTIFICATE_VERIFY_FAILED"):  # not against the system's
        urllib.request.urlopen(f"{server.inference_url}/ping", timeout=5)
    plain = server.inference_url.replace("https://", "http://")
    with pytest.raises((urllib.error.URLError, ConnectionError, http.client.HTTPException)):
        urllib.request.urlopen(plain + "/ping", timeout=5)  # no plain HTTP off loopback
    config = (two.balancer_dir / balancer.CONFIG).read_text()
    assert f"server {remote.name} {remote.address} ssl verify required" in config
    assert f"verifyhost {remote.name}.fleet" in config


@pytest.mark.parametrize("name", ["nw-sine", "mha-adding", "s2s-dates", "pixel-digits"])
def test_the_front_door_answers_every_oip_rest_route_torchserve_lacks(two, name):
    """Model metadata, per-model readiness and the versioned infer route (TorchServe 0.12: 404 and 501) answered
    at the front door by the model's handler, as tritonclient asks for them."""
    front = fleet.front(Path(two.run_dir))
    client, headers = triton_http(front)
    version = front.request("POST", f"{front.inference_url}/v2/models/{name}", b"", token=front.token())
    served = front.predict(name, INSTANCES[name])[1]["model"]["version"]
    assert client.is_model_ready(name, headers=headers) and client.is_model_ready(name, served, headers=headers)
    metadata = client.get_model_metadata(name, headers=headers)
    assert metadata == client.get_model_metadata(name, served, headers=headers)
    assert (metadata["name"], metadata["versions"]) == (name, [served])
    assert {t["name"] for t in metadata["inputs"]} >= {TENSORS[name]}
    plain = client.infer(name, as_triton_inputs(front_body(name)), headers=headers).get_response()
    pinned = client.infer(
        name, as_triton_inputs(front_body(name)), model_version=served, headers=headers
    ).get_response()
    assert pinned["outputs"] == plain["outputs"] and pinned["model_version"] == served
    with pytest.raises(tritonclient.utils.InferenceServerException) as refused:
        client.infer(name, as_triton_inputs(front_body(name)), model_version="999", headers=headers)
    assert refused.value.status() == "400" and f"it serves version {served}" in str(refused.value)
    assert version[0] == 404  # a POST to the metadata route is no OIP call: TorchServe's own 404
    # a client's own routing header is dropped at the front door: an inference is answered, not metadata
    url = f"{front.inference_url}/v2/models/{name}/infer"
    status, body, _ = front.request("POST", url, front_body(name), front.token(), headers={"X-OIP-Route": "metadata"})
    assert status == 200 and body["outputs"], body


ATTENTION = {"nw-sine": "attention", "mha-adding": "pooling_weights", "s2s-dates": "alignment"}
ATTENTION["pixel-digits"] = "pixel_attention"


def test_tritonclient_grpc_calls_the_fleets_grpc_service_for_every_kind_through_the_front_door(two):
    """The Open Inference Protocol's own gRPC service at the fleet's gRPC address (tritonclient, raw contents): the
    fleet's token in, each replica's own token out; every call answered, the numbers /predictions gives."""
    front = fleet.front(Path(two.run_dir))
    client, headers = triton_grpc(front)
    assert client.is_server_live(headers=headers) and client.is_server_ready(headers=headers)
    before = {name: int(row["stot"]) for name, row in balancer.stats(two.balancer_dir).items()}
    for name in INSTANCES:
        served = front.predict(name, INSTANCES[name])[1]
        assert client.is_model_ready(name, served["model"]["version"], headers=headers), name
        metadata = client.get_model_metadata(name, headers=headers, as_json=True)
        assert metadata["versions"] == [served["model"]["version"]] and metadata["inputs"], name
        outputs = [tritonclient.grpc.InferRequestedOutput(o) for o in ("prediction", ATTENTION[name])]
        if name == "pixel-digits":
            outputs[0] = tritonclient.grpc.InferRequestedOutput("label")
        for _ in range(3):
            result = client.infer(name, as_triton_inputs(front_body(name), tritonclient.grpc), outputs=outputs,
                                  headers=headers, model_version=served["model"]["version"])  # fmt: skip
            assert result.as_numpy(ATTENTION[name]).shape[0] == len(INSTANCES[name]), name
        got = result.as_numpy(outputs[0].name()).tolist()
        expected = [p["label"] for p in served["predictions"]] if name == "pixel-digits" else served["predictions"]
        if name == "s2s-dates":
            assert [g.decode() for g in got] == expected
        else:
            assert agrees(got, expected), name
    after = {name: int(row["stot"]) for name, row in balancer.stats(two.balancer_dir).items()}
    assert all(after[name] > before[name] for name in after), (before, after)  # both replicas answered
    replica = {"authorization": f"Bearer {two.server(two.replicas[0]).token()}"}
    with pytest.raises(tritonclient.utils.InferenceServerException) as refused:
        client.infer("nw-sine", as_triton_inputs(front_body("nw-sine"), tritonclient.grpc), headers=replica)
    assert refused.value.status() == "StatusCode.UNAUTHENTICATED"  # a replica's own token is no use at the front


@pytest.mark.parametrize("header", [None, "Bearer wrong", "Basic {token}", "Bearer {replica}"])
def test_the_front_door_refuses_any_other_token_with_a_json_401(two, header):
    front = fleet.front(Path(two.run_dir))
    replica_token = two.server(two.replicas[0]).token()
    headers = {} if header is None else {"Authorization": header.format(token=front.token(), replica=replica_token)}
    status, body, _ = request(front.inference_url + "/predictions/nw-sine", {"instances": XS}, headers)
    assert status == 401 and body["error"] == "unauthorized" and "token" in body["detail"]


def request(url: str, body: dict, headers: dict) -> tuple[int, dict | str, dict]:
    req = urllib.request.Request(url, json.dumps(body).encode(), {"Content-Type": "application/json", **headers})
    try:
        with urllib.request.urlopen(req, timeout=30) as answer:
            return answer.status, json.loads(answer.read()), dict(answer.headers)
    except urllib.error.HTTPError as error:
        raw = error.read()
        try:
            return error.code, json.loads(raw), dict(error.headers)
        except ValueError:
            return error.code, raw.decode(errors="replace"), dict(error.headers)


def test_bad_input_and_limits_pass_through_the_balancer_unchanged(two):
    front, direct = fleet.front(Path(two.run_dir)), two.server(two.replicas[0])
    for body in ({"instances": ["a"]}, {"instances": []}, {"nothing": 1}):
        via, straight = (
            front.request("POST", f"{front.inference_url}/predictions/nw-sine", body, front.token()),
            (direct.request("POST", f"{direct.inference_url}/predictions/nw-sine", body, direct.token())),
        )
        assert via[0] == straight[0] and 400 <= via[0] < 500 and via[1] == straight[1]
    huge = b'{"instances": [' + b"1.0, " * 1_400_000 + b"1.0]}"  # 7 MB: past the handler's 6 MB
    via = front.request("POST", f"{front.inference_url}/predictions/nw-sine", huge, front.token())
    assert via[0] == 413 and via[1]["error"] == "body too large"


def test_a_rolling_deploy_and_rollback_move_one_replica_at_a_time_and_fail_no_request(two, kinds):
    store, uri = kinds
    new = new_champion_version(uri, "nw-sine")
    archive_champions("nw-sine", out_dir=store, tracking_uri=uri)
    front, run_dir = fleet.front(Path(two.run_dir)), Path(two.run_dir)
    old = front.predict("nw-sine", XS)[1]["model"]["version"]
    with SteadyLoad(front.inference_url, front.token(), REQUESTS, 64, watch="/predictions/nw-sine") as load:
        time.sleep(1)
        began = time.monotonic()
        rollout = fleet_rollout.deploy("nw-sine", run_dir, store, uri)
        rolled = time.monotonic()
        time.sleep(1)
        back = fleet_rollout.rollback("nw-sine", run_dir, uri)
        returned = time.monotonic()
        time.sleep(1)
    outcome = load.outcome
    assert outcome.failed == 0, (outcome.statuses, outcome.failures)
    assert rollout.version == new and rollout.previous == [old] and back.version == old and back.previous == [new]
    seen = outcome.versions
    assert {v for t, v in seen if t < began} == {old} and {v for t, v in seen if rolled < t < rolled + 1} == {new}
    assert {v for t, v in seen if t > returned} == {old}
    mixed = [t for t, v in seen if began <= t <= rolled and v == old] + [t for t, v in seen if t <= rolled and v == new]
    assert max(mixed) - min(mixed) <= rolled - began  # two versions answered only while the roll took
    for replica in two.replicas:
        assert history.versions(Path(replica.run_dir), "nw-sine") == [old]
        assert [v["modelVersion"] for v in two.server(replica).versions("nw-sine")] == [old]
    serving = mlflow_store.configure(uri).get_model_version_by_alias("nw-sine", registry.SERVING)
    assert str(serving.version) == old


def test_a_roll_that_fails_on_a_replica_returns_the_moved_ones_and_says_so(two, kinds, monkeypatch):
    store, uri = kinds
    run_dir, first, second = Path(two.run_dir), two.replicas[0], two.replicas[1]
    old = history.versions(Path(first.run_dir), "nw-sine")[-1]
    real_roll = fleet_rollout.roll

    def roll_failing_on_the_second(server, replica_dir, *args):
        if Path(replica_dir) == Path(second.run_dir):
            raise ManagementError("registering failed (a disk full, say)")
        return real_roll(server, replica_dir, *args)

    monkeypatch.setattr(fleet_rollout, "roll", roll_failing_on_the_second)
    with pytest.raises(ManagementError) as error:
        fleet_rollout.deploy("nw-sine", run_dir, store, uri)
    assert "stopped at replica r2" in str(error.value) and f"r1 went back to version {old}" in str(error.value)
    for replica in two.replicas:
        assert [v["modelVersion"] for v in two.server(replica).versions("nw-sine")] == [old]
    assert faults.all_up(two)


@pytest.fixture(scope="module")
def prometheus(two, tmp_path_factory):
    """`make monitor` on the fleet, scraping every second: (url, its folder)."""
    folder = tmp_path_factory.mktemp("monitor")
    url = monitor.start(run_dir=Path(two.run_dir), monitor_dir=folder, port=free_ports(1)[0], interval="1s")
    yield url, folder
    monitor.stop(folder)


def test_prometheus_scrapes_every_replica_and_the_balancer_with_the_fleet_alerts(two, prometheus):
    url, folder = prometheus
    front = fleet.front(Path(two.run_dir))
    for _ in range(5):
        assert front.predict("nw-sine", XS)[0] == 200

    def scraped() -> bool:
        up = monitor.query(url, "up == 1", folder)
        return {(r["metric"]["job"], r["metric"].get("replica")) for r in up} == {
            ("torchserve", "r1"),
            ("torchserve", "r2"),
            ("balancer", None),
        }

    assert wait_until(scraped, 30, 0.5), monitor.query(url, "up", folder)
    per_replica = 'sum by (replica) (attention_requests_total{ModelName="nw-sine"})'
    assert wait_until(lambda: len(monitor.query(url, per_replica, folder)) == 2, 30, 0.5)
    exported = urllib.request.urlopen(f"{front.metrics_url}/metrics", timeout=5).read().decode()
    for name in set(re.findall(r"haproxy_\w+", monitor.ALERTS.read_text())):
        assert f"\n{name}{{" in exported, f"the alert rules query {name}, which HAProxy does not export"
    rules = {r["name"] for g in monitor.api(url, "/api/v1/rules", folder)["data"]["groups"] for r in g["rules"]}
    assert {"FleetReplicaDown", "FleetRetriesClimbing"} <= rules


FAST_GATE = canary.Gate(interval_s=2, window_s=10, min_requests=10)


def test_a_canary_takes_its_share_and_promote_rolls_it_into_every_replica(two, kinds, prometheus):
    (store, uri), (url, folder) = kinds, prometheus
    run_dir, front = Path(two.run_dir), fleet.front(Path(two.run_dir))
    serving = history.versions(Path(two.replicas[0].run_dir), "nw-sine")[-1]
    new = new_champion_version(uri, "nw-sine")
    archive_champions("nw-sine", out_dir=store, tracking_uri=uri)
    with pytest.raises(canary.CanaryError, match="PERCENT must be 1..99"):
        canary.start("nw-sine", 100, run_dir, store, uri, monitor_url=url, monitor_dir=folder)
    canary.start("nw-sine", 30, run_dir, store, uri, monitor_url=url, monitor_dir=folder, gate=FAST_GATE)
    with pytest.raises(canary.CanaryError, match="a canary already"):
        canary.start("nw-sine", 30, run_dir, store, uri, monitor_url=url, monitor_dir=folder)
    answered = Counter(front.predict("nw-sine", XS)[1]["model"]["version"] for _ in range(300))
    assert set(answered) == {serving, new} and 0.18 < answered[new] / 300 < 0.42, answered
    oip = {"inputs": [{"name": "x", "datatype": "FP32", "shape": [1], "data": [2.5]}]}
    oip_versions = {front.request("POST", f"{front.inference_url}/v2/models/nw-sine/infer", oip, front.token())[1][
        "model_version"] for _ in range(20)}  # fmt: skip
    assert oip_versions == {serving}  # TorchServe has no versioned OIP route: the serving version answers
    rollout = canary.promote("nw-sine", run_dir, uri)
    assert rollout.version == new
    assert {front.predict("nw-sine", XS)[1]["model"]["version"] for _ in range(30)} == {new}
    assert canary.read(run_dir, "nw-sine").status == canary.PROMOTED
    serving_alias = mlflow_store.configure(uri).get_model_version_by_alias("nw-sine", registry.SERVING)
    assert str(serving_alias.version) == new


def test_a_frontend_killed_under_load_during_a_canary_fails_no_request_and_returns_holding_the_canary(
    two, kinds, prometheus
):
    """The fault `kill -9` of a replica's frontend (the others: below), here with a canary running: the keeper
    restarts the replica and returns it only once the canary's version is registered on it again."""
    (store, uri), (url, folder) = kinds, prometheus
    run_dir, front, first = Path(two.run_dir), fleet.front(Path(two.run_dir)), two.replicas[0]
    serving = history.versions(Path(first.run_dir), "nw-sine")[-1]
    new = new_champion_version(uri, "nw-sine")
    archive_champions("nw-sine", out_dir=store, tracking_uri=uri)
    patient = canary.Gate(min_requests=10**9)  # this test is about the restart: the gate never judges here
    canary.start("nw-sine", 50, run_dir, store, uri, monitor_url=url, monitor_dir=folder, gate=patient)
    run = faults.under_fault(two, faults.FAULTS[0], REQUESTS, concurrency=64)  # every kind; the keeper restarts it
    outcome = run.outcome
    print(f"{run.fault} during a canary: {outcome.requests} requests, p99 {run.p99_ms:.0f} ms while it was out")
    assert outcome.failed == 0, (outcome.statuses, outcome.failures)
    assert outcome.requests > 500
    registered = [str(v["modelVersion"]) for v in two.server(first).versions("nw-sine")]
    assert sorted(registered) == sorted([serving, new])  # the canary's version registered on it again
    ended = canary.abort("nw-sine", run_dir)  # by hand: every request to the serving version, the canary unregistered
    assert ended.status == canary.ABORTED and ended.reason == "aborted on request"
    assert {front.predict("nw-sine", XS)[1]["model"]["version"] for _ in range(30)} == {serving}
    for replica in two.replicas:
        assert [str(v["modelVersion"]) for v in two.server(replica).versions("nw-sine")] == [serving]


def test_a_canary_failing_a_share_of_requests_is_aborted_by_the_gate(two, kinds, prometheus):
    (store, uri), (url, folder) = kinds, prometheus
    run_dir, front = Path(two.run_dir), fleet.front(Path(two.run_dir))
    serving = history.versions(Path(two.replicas[0].run_dir), "nw-sine")[-1]
    bad = new_champion_version(uri, "nw-sine")  # built to refuse requests of more than 2 instances
    limits = {**MODEL_CONFIG, "handler": {**MODEL_CONFIG["handler"], "max_instances": 2}}
    archive_champions("nw-sine", out_dir=store, tracking_uri=uri, model_config=limits)
    nw = [(path, body) for path, body in REQUESTS if path == "/predictions/nw-sine"]  # 3 instances each
    with SteadyLoad(front.inference_url, front.token(), nw, 16, watch="/predictions/nw-sine") as load:
        time.sleep(1)
        began = time.monotonic()
        canary.start("nw-sine", 20, run_dir, store, uri, monitor_url=url, monitor_dir=folder, gate=FAST_GATE)
        aborted = wait_until(lambda: canary.read(run_dir, "nw-sine").status == canary.ABORTED, 60, 0.1)
        ended = time.monotonic()
        time.sleep(2)
    assert aborted, (canary.read(run_dir, "nw-sine"), (run_dir / fleet.KEEPER_LOG).read_text()[-2000:])
    assert "aborted by the gate: error ratio" in canary.read(run_dir, "nw-sine").reason
    outcome = load.outcome
    during = [status for t, _, status in outcome.samples if began <= t <= ended]
    assert 0 < during.count(413) + sum(s not in (200, 413) for s in during) <= 0.35 * len(during)
    late = [t for t, _, status in outcome.samples if status != 200 and t > ended + 0.5]
    assert not late, f"{len(late)} errors after the gate aborted the canary"
    assert {v for t, v in outcome.versions if t > ended + 0.5} == {serving}
    for replica in two.replicas:
        assert bad not in [str(v["modelVersion"]) for v in two.server(replica).versions("nw-sine")]


@pytest.mark.parametrize("fault", faults.FAULTS[1:])  # the frontend's kill: during a canary, above
def test_a_fault_under_load_fails_no_request_and_the_replica_comes_back(two, fault):
    run = faults.under_fault(two, fault, REQUESTS, concurrency=64)
    outcome = run.outcome
    print(f"{fault}: {outcome.requests} requests, p99 {run.p99_ms:.0f} ms while the replica was out")
    assert outcome.failed == 0, (outcome.statuses, outcome.failures)
    assert outcome.requests > 500
    assert two.server(two.replicas[0]).health() == "Healthy"


def test_the_keeper_starts_a_killed_grpc_front_again(two):
    run_dir = Path(two.run_dir)
    client, headers = triton_grpc(fleet.front(run_dir))
    killed = int((run_dir / oip_grpc.PID_FILE).read_text())
    os.kill(killed, signal.SIGKILL)

    def back() -> bool:
        try:
            return int((run_dir / oip_grpc.PID_FILE).read_text()) != killed and client.is_server_live(headers=headers)
        except tritonclient.utils.InferenceServerException:
            return False

    assert wait_until(back, 30, 0.5), (run_dir / fleet.KEEPER_LOG).read_text()[-2000:]
    assert any(line.startswith("  gRPC") and "(running)" in line for line in fleet.status_lines(run_dir))


def test_status_shows_each_replica_with_its_versions_and_load(two):
    lines = fleet.status_lines(Path(two.run_dir))
    assert "fleet of 2 replicas" in lines[0] and "keeper      running" in lines[2]
    for replica in two.replicas:
        (line,) = [line for line in lines if line.strip().startswith(replica.name)]
        assert "UP" in line and "nw-sine v" in line and "mha-adding v" in line and "answered" in line


def test_a_fleet_whose_replica_cannot_start_leaves_no_process_and_names_why(kinds, tmp_path):
    store, uri = kinds
    front, metrics = (f"127.0.0.1:{port}" for port in free_ports(2))
    before = {p.pid for p in psutil.process_iter()}
    with pytest.raises(StartupError) as error:  # the second replica's address is on no interface of this machine
        fleet.start(2, ["nw-sine"], tmp_path, store, front, metrics, tracking_uri=uri, hosts=["127.0.0.1", "192.0.2.1"])
    assert "TorchServe" in str(error.value) and "replica-2" in str(error.value)
    left = [p for p in psutil.process_iter() if p.pid not in before and str(tmp_path) in " ".join(p.cmdline())]
    assert not left, [p.cmdline()[:3] for p in left]  # the first replica, started, was stopped again
    assert fleet.read(tmp_path) is None


def test_a_second_start_is_refused_and_stop_leaves_no_process_of_the_fleet(two, kinds):
    """Last in the module: it stops the module's fleet."""
    store, uri = kinds
    run_dir = Path(two.run_dir)
    pids = [two.keeper_pid, int((two.balancer_dir / balancer.PID_FILE).read_text())]
    pids += [int((Path(r.run_dir) / "server.pid").read_text()) for r in two.replicas]
    with pytest.raises(AlreadyRunningError, match="a fleet is already running"):
        fleet.start(2, ["nw-sine"], run_dir, store, tracking_uri=uri)
    assert fleet.stop(run_dir, quiet=True)
    assert not any(pid_alive(pid) for pid in pids)
    assert not (run_dir / fleet.FRONT_TOKEN).exists() and fleet.read(run_dir) is None
    assert not fleet.stop(run_dir, quiet=True)  # nothing left to stop
