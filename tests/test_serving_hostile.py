"""A real TorchServe under hostile and oversized traffic: no request can hurt a worker or its batch."""

import json
import os
import random
import signal
import threading
import time
import zipfile
from concurrent.futures import ThreadPoolExecutor

import pytest

from handlers.contract import Limits, adapter_for
from training.nn import load_checkpoint
from training.serving import serve
from training.serving.archive import MODEL_CONFIG
from training.serving.serve import free_ports

pytestmark = pytest.mark.e2e
LIMITS = Limits.from_options(MODEL_CONFIG["handler"])
VALID = {
    "nw-sine": [0.5, 2.5, 4.5],
    "mha-adding": [[[0.3, 1], [0.9, 0], [0.5, 1]], [[0.1, 0]] * 7 + [[0.7, 1], [0.2, 1]]],
}


@pytest.fixture(scope="module")
def server(model_store_copy, champions, tmp_path_factory):
    root = tmp_path_factory.mktemp("hostile")
    store = model_store_copy(root / "archives")
    server = serve.start(
        run_dir=root / "run", model_store=store, ports=free_ports(), quiet=True, tracking_uri=champions["tracking_uri"],
        front_door=True,  # as `make serve` runs it: hostile bodies cross HAProxy first
    )  # fmt: skip
    yield server
    serve.stop(server.run_dir, quiet=True)


def post(server, name, body: bytes, explain=False):
    route = "explanations" if explain else "predictions"
    return server.request("POST", f"{server.inference_url}/{route}/{name}", body, token=server.token(), timeout=60)


def worker_pids(server):
    return {name: sorted(w["pid"] for w in server.workers(name)) for name in VALID}


def valid_answers(server):
    return {
        (name, explain): post(server, name, json.dumps({"instances": VALID[name]}).encode(), explain)[1]
        for name in VALID
        for explain in (False, True)
    }


def send_together(server, name: str, bodies: list[bytes]) -> list:
    """Every body at the same moment (a barrier), so the server batches them: the answers, in order."""
    barrier = threading.Barrier(len(bodies))

    def send(body):
        barrier.wait()
        return post(server, name, body)

    with ThreadPoolExecutor(max_workers=len(bodies)) as pool:
        return list(pool.map(send, bodies))


def close(a, b, tol=1e-5) -> bool:
    """Equal JSON answers up to float noise (a batch's padding changes the last digits)."""
    if isinstance(a, dict):
        return isinstance(b, dict) and a.keys() == b.keys() and all(close(a[k], b[k], tol) for k in a)
    if isinstance(a, list):
        return isinstance(b, list) and len(a) == len(b) and all(close(x, y, tol) for x, y in zip(a, b))
    if isinstance(a, float) or isinstance(b, float):
        return abs(a - b) <= tol
    return a == b


# the fuzz corpus


def malformed(name: str, rng: random.Random) -> bytes:
    """One malformed request body for `name`, drawn from families of mistakes and attacks."""
    good = VALID[name][0]
    junk = rng.choice(["x", None, True, {}, {"a": 1}, [], "1.0", [None], [[]], False])
    huge = "9" * rng.choice([310, 400, 4000])
    nest = rng.choice([50, 500, 990, 5000])
    families = [
        lambda: b"{not json",
        lambda: b"\xff\xfe\xfd",
        lambda: b"",
        lambda: json.dumps(rng.choice([[], 1, "instances", None, [good]])).encode(),
        lambda: json.dumps({"inputs": [good]}).encode(),
        lambda: json.dumps({"instances": rng.choice([{}, "x", 3, None])}).encode(),
        lambda: json.dumps({"instances": []}).encode(),
        lambda: json.dumps({"instances": [good] * (LIMITS.max_instances + 1)}).encode(),
        lambda: json.dumps({"instances": [junk]}).encode(),
        lambda: json.dumps({"instances": [good, junk]}).encode(),
        lambda: json.dumps({"instances": [good], "heads": rng.choice(["yes", 1, None, [True]])}).encode(),
        lambda: ('{"instances": [' + huge + "]}").encode(),
        lambda: ('{"instances": [[' + huge + ", 1]]]}").encode(),
        lambda: ('{"instances": ' + "[" * nest + "0.5" + "]" * nest + "}").encode(),
        lambda: ("[" * nest + "]" * nest).encode(),
        lambda: json.dumps({"instances": [rng.choice([1e308, -1e308, 3.5e38, -1e39, 1e300])]}).encode(),
        lambda: ('{"instances": [' + rng.choice(["NaN", "Infinity", "-Infinity", "1e400"]) + "]}").encode(),
        lambda: json.dumps({"instances": [[[0.5, 1e308]]]}).encode(),
        lambda: json.dumps({"instances": [[[0.5] * rng.choice([1, 3, 9])]]}).encode(),
        lambda: json.dumps({"instances": [[[0.0, 0.0]] * (LIMITS.max_steps + 1)]}).encode(),
        lambda: json.dumps({"instances": [[[0.5, True]]]}).encode(),
        lambda: json.dumps({"instances": [[0.5, 1.0, 2.0, 3.0]]}).encode(),
        lambda: json.dumps({"instances": [good]})[: rng.randint(1, 12)].encode(),
    ]
    return rng.choice(families)()


def test_300_malformed_requests_get_4xx_json_and_hurt_nothing(server):
    before_pids, before = worker_pids(server), valid_answers(server)
    rng = random.Random(0)
    cases = [(name, explain, malformed(name, rng)) for _ in range(80) for name in VALID for explain in (False, True)]
    valid = [(n, explain, json.dumps({"instances": VALID[n]}).encode()) for n in VALID for explain in (False, True)]
    mixed = cases + valid * 10  # valid requests batched among the malformed ones
    rng.shuffle(mixed)
    with ThreadPoolExecutor(max_workers=16) as pool:
        answers = list(pool.map(lambda case: (case, post(server, case[0], case[2], case[1])), mixed))
    assert len(cases) >= 300
    for (name, explain, body), (status, answer, _) in answers:
        if (name, explain, body) in valid:
            assert status == 200 and close(answer, before[(name, explain)]), (name, explain)
            continue
        assert 400 <= status < 500, (name, explain, body[:120], status, answer)
        assert isinstance(answer, dict) and answer["error"], (body[:120], answer)
        # the contract's refusal names a detail; an OIP body ({"inputs"}) gets the protocol's, in its frame
        assert answer.get("detail") or answer.get("outputs") == [], (body[:120], answer)
    assert worker_pids(server) == before_pids
    assert valid_answers(server) == before


# the same on the Open Inference Protocol's route

OIP_VALID = {
    "nw-sine": {"name": "features", "datatype": "FP32", "shape": [3, 1], "data": [0.5, 2.5, 4.5]},
    "mha-adding": {"name": "sequences", "datatype": "FP32", "shape": [1, 3, 2], "data": [0.3, 1, 0.9, 0, 0.5, 1]},
}


def malformed_oip(name: str, rng: random.Random) -> bytes:
    """One malformed OIP infer body for `name`: tensors of the wrong kind, size, type or name, and worse."""
    good = OIP_VALID[name]
    junk = rng.choice(["x", None, True, {}, [], -1, 1e308, [None], "FP32"])
    n = len(good["data"])
    families = [
        lambda: json.dumps({"inputs": [good | {"datatype": rng.choice(["BYTES", "BF16", "FP8", junk])}]}),
        lambda: json.dumps({"inputs": [good | {"shape": rng.choice([[n + 1], [-1, 1], [0], [], junk, [2**62, 2]])}]}),
        lambda: json.dumps({"inputs": [good | {"data": rng.choice([good["data"][:-1], [junk] * n, junk, []])}]}),
        lambda: json.dumps({"inputs": [good | {"name": rng.choice(["x", "", junk])}]}),
        lambda: json.dumps({"inputs": [good, good]}),
        lambda: json.dumps({"inputs": [good], "outputs": [{"name": rng.choice(["weights", "", junk])}]}),
        lambda: json.dumps({"inputs": [good], "outputs": rng.choice(["x", True, {}, -1, [None], ["prediction"]])}),
        lambda: json.dumps({"inputs": [good], "id": rng.choice([1, True, [], {}])}),
        lambda: json.dumps({"inputs": rng.choice([[], {}, "x", None, [junk]])}),
        lambda: json.dumps({"inputs": [good | {"data": [1e308] * n}]}),
        lambda: json.dumps({"inputs": [good | {"shape": [100_000, 1], "data": [0.5] * 100_000}]}),
        lambda: '{"inputs": [' + "[" * (deep := rng.choice([500, 990, 5000])) + "]" * deep + "]}",
    ]
    return rng.choice(families)().encode()


def test_malformed_oip_requests_get_4xx_json_in_the_protocols_frame_and_hurt_nothing(server):
    before_pids, before = worker_pids(server), valid_answers(server)
    rng = random.Random(1)
    cases = [(name, malformed_oip(name, rng)) for _ in range(60) for name in OIP_VALID]
    valid = [(name, json.dumps({"inputs": [OIP_VALID[name]]}).encode()) for name in OIP_VALID]
    mixed = cases + valid * 10
    rng.shuffle(mixed)

    def infer(case):
        name, body = case
        url = f"{server.inference_url}/v2/models/{name}/infer"
        return server.request("POST", url, body, token=server.token(), timeout=60)

    with ThreadPoolExecutor(max_workers=16) as pool:
        answers = list(pool.map(lambda case: (case, infer(case)), mixed))
    for (name, body), (status, answer, _) in answers:
        if (name, body) in valid:
            assert status == 200 and answer["outputs"][0]["name"] == "prediction", (name, answer)
            continue
        assert 400 <= status < 500, (name, body[:120], status, answer)
        assert isinstance(answer, dict) and answer["error"], (body[:120], answer)
        # a body that is not JSON at all cannot say it is OIP (TorchServe names no route): the contract's refusal
        framed = answer.get("outputs") == [] and answer.get("model_name") == name
        assert framed or answer["error"] == "invalid JSON", (body[:120], answer)
    assert worker_pids(server) == before_pids
    assert valid_answers(server) == before


def test_a_poisonous_request_does_not_fail_the_valid_ones_batched_with_it(server):
    poison = [
        ('{"instances": [' + "9" * 5000 + "]}").encode(),
        ('{"instances": ' + "[" * 990 + "1" + "]" * 990 + "}").encode(),
        b'{"instances": [1e308]}',
    ]
    expected = post(server, "nw-sine", b'{"instances": [2.5]}')[1]
    answers = send_together(server, "nw-sine", [b'{"instances": [2.5]}'] * 29 + poison)
    assert [status for status, _, _ in answers[:29]] == [200] * 29
    assert all(body == expected for _, body, _ in answers[:29])
    assert [status for status, _, _ in answers[29:]] == [400, 400, 400]
    batched = max(int(headers.get("X-Batch-Size", headers.get("x-batch-size", 1))) for _, _, headers in answers)
    assert batched > 1


def test_predictions_with_heads_get_a_400_and_the_requests_batched_with_them_their_answers(server):
    # It used to fall between the handler's groups: a 503 "Prediction failed" for the whole batch.
    asking = json.dumps({"instances": VALID["mha-adding"], "heads": True}).encode()
    plain = json.dumps({"instances": VALID["mha-adding"]}).encode()
    answers = send_together(server, "mha-adding", [asking] * 4 + [plain] * 12)
    assert [(status, answer["error"]) for status, answer, _ in answers[:4]] == [(400, "invalid heads")] * 4
    assert [status for status, _, _ in answers[4:]] == [200] * 12
    assert post(server, "mha-adding", asking, explain=True)[0] == 200


def largest_sequences(champions, tmp_path):
    """As many 1000-step sequences as one request may hold for the served mha-adding champion."""
    archive = next(a for a in champions["archives"] if a.stem == "mha-adding")
    with zipfile.ZipFile(archive) as mar:
        (tmp_path / "checkpoint.pt").write_bytes(mar.read("checkpoint.pt"))
    adapter = adapter_for(load_checkpoint(tmp_path / "checkpoint.pt")[0], LIMITS)
    step = [[0.5, 0.0]] * LIMITS.max_steps
    n = int(LIMITS.max_request_mmac // adapter.sequence_mmac(LIMITS.max_steps))
    n = min(n, LIMITS.max_instances)
    return [step] * max(n, 1), adapter


def test_the_largest_accepted_requests_are_answered_even_four_at_once(server, champions, tmp_path):
    sequences, adapter = largest_sequences(champions, tmp_path)
    body = json.dumps({"instances": sequences}).encode()
    over = json.dumps({"instances": sequences + [sequences[0]] * 2}).encode()
    status, answer, _ = post(server, "mha-adding", over)
    if adapter.cost(adapter.parse(json.loads(over)["instances"]), False, False).mmac > LIMITS.max_request_mmac:
        assert status == 413 and answer["error"] == "request too costly" and "at most" in answer["detail"]
    with ThreadPoolExecutor(max_workers=4) as pool:
        answers = list(pool.map(lambda explain: post(server, "mha-adding", body, explain), [False, False, True, True]))
    assert [status for status, _, _ in answers] == [200] * 4, [a[1] for a in answers if a[0] != 200]
    assert all(len(a[1]["predictions" if i < 2 else "explanations"]) == len(sequences) for i, a in enumerate(answers))
    nw = json.dumps({"instances": [float(i) / 60 for i in range(LIMITS.max_instances)]}).encode()
    assert post(server, "nw-sine", nw, explain=True)[0] == 200
    # per-head weights: the longest sequence whose answer fits the response budget, and one step past a 413
    longest = max(T for T in range(2, LIMITS.max_steps) if adapter.cost([[0] * T], True, True).response_bytes < 4e6)
    fits = json.dumps({"instances": [[[0.5, 0.0]] * longest], "heads": True}).encode()
    status, answer, _ = post(server, "mha-adding", fits, explain=True)
    assert status == 200 and len(answer["explanations"][0]["head_weights"][0][0]) == longest
    too_big = json.dumps({"instances": [[[0.5, 0.0]] * (longest + 40)], "heads": True}).encode()
    status, answer, _ = post(server, "mha-adding", too_big, explain=True)
    assert status == 413 and answer["error"] == "response too large"


def test_a_killed_worker_comes_back_and_only_its_batch_fails(server):
    (pid,) = worker_pids(server)["nw-sine"]
    stop, results = threading.Event(), []

    def load():
        while not stop.is_set():
            results.append(post(server, "nw-sine", b'{"instances": [2.5]}')[0])

    threads = [threading.Thread(target=load) for _ in range(4)]
    for t in threads:
        t.start()
    time.sleep(1.0)
    before_kill = len(results)
    os.kill(pid, signal.SIGKILL)
    deadline = time.monotonic() + 90
    while time.monotonic() < deadline:
        pids = [w["pid"] for w in server.workers("nw-sine") if w.get("status") == "READY"]
        if pids and pids[0] != pid:
            break
        time.sleep(0.2)
    time.sleep(1.0)
    stop.set()
    for t in threads:
        t.join()
    failed = [s for s in results if s != 200]
    assert server.workers_ready("nw-sine") and worker_pids(server)["nw-sine"] != [pid]
    assert len(failed) <= 4, f"{len(failed)} failed; only the in-flight batch (at most 4 requests) may"
    assert all(s == 200 for s in results[:before_kill]) and results[-1] == 200
