"""`make serve REPLICAS=2`: two real TorchServe replicas behind a real HAProxy, with the keeper; faults under load."""

import json
import os
import signal
import time
from pathlib import Path

import psutil
import pytest
from four_kinds import build_four_kinds
from served_champions import SEQUENCES, XS

from benchmarks.steady_load import SteadyLoad
from training.infra.processes import free_ports, pid_alive, wait_until
from training.serving import balancer, fleet, serve
from training.serving.errors import AlreadyRunningError
from training.serving.torchserve import Server

pytestmark = pytest.mark.e2e

IMAGE = [[(row * 3 + column * 5) % 17 for column in range(8)] for row in range(8)]  # raw pixel values, 0..16
TEXTS = ["23 Nov 2026", "11/23/26"]
OIP_TEXTS = {"inputs": [{"name": "texts", "datatype": "BYTES", "shape": [2], "data": TEXTS}]}
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


@pytest.fixture(scope="module")
def kinds(stores):
    """Every model kind, tuned briefly and archived: (model store, tracking URI)."""
    build_four_kinds({k: stores[k] for k in ("tracking_uri", "storage")}, stores["root"] / "archives")
    return stores["root"] / "archives", stores["tracking_uri"]


@pytest.fixture(scope="module")
def two(kinds, tmp_path_factory):
    """A fleet of two replicas serving every kind, on free loopback ports; stopped when the module is done."""
    store, uri = kinds
    root = tmp_path_factory.mktemp("fleet")
    front, metrics = (f"127.0.0.1:{port}" for port in free_ports(2))
    started = fleet.start(2, run_dir=root / "serve", model_store=store, front_address=front, metrics_address=metrics,
                          tracking_uri=uri)  # fmt: skip
    yield started
    fleet.stop(root / "serve", quiet=True)


def replica_state(running: fleet.Fleet, name: str) -> str:
    return balancer.stats(running.balancer_dir)[name]["status"]


def wait_up(running: fleet.Fleet, timeout: float = 120) -> bool:
    return wait_until(lambda: all(replica_state(running, r.name) == "UP" for r in running.replicas), timeout, 0.2)


def test_the_front_door_answers_with_the_fleets_token_from_every_replica(two):
    front = fleet.front(Path(two.run_dir))
    direct = two.server(two.replicas[0])
    assert wait_up(two)
    before = {name: int(row["stot"]) for name, row in balancer.stats(two.balancer_dir).items()}
    for _ in range(8):
        status, body, _ = front.predict("nw-sine", XS)
        assert status == 200, body
        assert body == direct.predict("nw-sine", XS)[1]
    after = {name: int(row["stot"]) for name, row in balancer.stats(two.balancer_dir).items()}
    assert all(after[name] > before[name] for name in after), (before, after)  # both replicas answered


@pytest.mark.parametrize("header", [None, "Bearer wrong", "Basic {token}", "Bearer {replica}"])
def test_the_front_door_refuses_any_other_token_with_a_json_401(two, header):
    front = fleet.front(Path(two.run_dir))
    replica_token = two.server(two.replicas[0]).token()
    headers = {} if header is None else {"Authorization": header.format(token=front.token(), replica=replica_token)}
    status, body, _ = request(front.inference_url + "/predictions/nw-sine", {"instances": XS}, headers)
    assert status == 401 and body["error"] == "unauthorized" and "token" in body["detail"]


def request(url: str, body: dict, headers: dict) -> tuple[int, dict | str, dict]:
    import urllib.error
    import urllib.request

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


def java_of(replica_dir: Path) -> psutil.Process:
    launcher = psutil.Process(int((replica_dir / "server.pid").read_text()))
    return next(p for p in launcher.children(recursive=True) if "java" in p.name())


def worker_pids(running: fleet.Fleet, replica: fleet.FleetReplica, model: str) -> set[int]:
    """The pids of the replica's workers serving `model`, as its management API names them."""
    return {int(w["pid"]) for w in running.server(replica).workers(model) if w.get("pid")}


@pytest.mark.parametrize("fault", ["kill -9 of a replica's frontend", "kill -9 of a worker", "a SIGSTOPped replica"])
def test_a_fault_under_load_fails_no_request_and_the_replica_comes_back(two, fault):
    assert wait_up(two)
    victim = two.replicas[0]
    front = fleet.front(Path(two.run_dir))
    with SteadyLoad(front.inference_url, front.token(), REQUESTS, concurrency=64) as load:
        time.sleep(2)
        hit = time.monotonic()
        if fault.startswith("kill -9 of a replica"):
            os.kill(java_of(Path(victim.run_dir)).pid, signal.SIGKILL)
            assert wait_until(lambda: replica_state(two, victim.name) != "UP", 10, 0.1)  # out of rotation
            assert wait_until(lambda: serve.running_pid(Path(victim.run_dir)), 30, 0.2)  # the keeper restarts it
        elif fault.startswith("kill -9 of a worker"):
            (killed,) = worker_pids(two, victim, "nw-sine")
            os.kill(killed, signal.SIGKILL)
            assert wait_until(lambda: worker_pids(two, victim, "nw-sine") - {killed}, 30, 0.2)  # TorchServe's restart
        else:
            stopped = java_of(Path(victim.run_dir))
            stopped.suspend()
            assert wait_until(lambda: replica_state(two, victim.name) != "UP", 10, 0.1)
            time.sleep(3)
            stopped.resume()
        assert wait_up(two, timeout=180), balancer.stats(two.balancer_dir)[victim.name]
        time.sleep(2)  # served by both again
    outcome = load.outcome
    print(f"{fault}: {outcome.requests} requests, p99 {outcome.p99_ms(hit):.0f} ms from the fault on")
    assert outcome.failed == 0, (outcome.statuses, outcome.failures)
    assert outcome.requests > 500
    assert Server.health(two.server(victim)) == "Healthy"


def test_status_shows_each_replica_with_its_versions_and_load(two):
    lines = fleet.status_lines(Path(two.run_dir))
    assert "fleet of 2 replicas" in lines[0] and "keeper      running" in lines[2]
    for replica in two.replicas:
        (line,) = [line for line in lines if line.strip().startswith(replica.name)]
        assert "UP" in line and "nw-sine v" in line and "mha-adding v" in line and "answered" in line


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
