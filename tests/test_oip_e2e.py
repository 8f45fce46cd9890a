"""The Open Inference Protocol (KServe v2) on the served champions: our own requests and `tritonclient`'s, over
REST (JSON and binary tensors) and gRPC, against the same numbers as `/predictions`."""

import json
import time

import grpc
import numpy as np
import pytest
import tritonclient.grpc
import tritonclient.utils
from documented import check_documented_curls
from served_champions import SEQUENCES, XS
from triton_clients import triton_grpc, triton_http, triton_input, triton_outputs
from tritonclient.grpc import service_pb2

from benchmarks.steady_load import SteadyLoad
from handlers.contract import agrees
from training.infra.processes import wait_until
from training.serving.torchserve import OIP_GRPC_SERVICE, read_properties

pytestmark = pytest.mark.e2e


def test_the_open_inference_protocol_answers_as_predictions_do(served_champions):
    server, _ = served_champions
    token, url = server.token(), f"{server.inference_url}/v2"
    xs = [0.5, 2.5, 4.9]
    padded = [step for sequence in SEQUENCES for step in sequence + [[0.0, 0.0]] * (9 - len(sequence))]
    requests = {
        "nw-sine": (xs, [{"name": "features", "datatype": "FP32", "shape": [3, 1], "data": xs}]),
        "mha-adding": (
            SEQUENCES,
            [
                {"name": "sequences", "datatype": "FP32", "shape": [2, 9, 2], "data": padded},
                {"name": "lengths", "datatype": "INT64", "shape": [2], "data": [len(s) for s in SEQUENCES]},
            ],
        ),
    }
    for name, (instances, inputs) in requests.items():
        expected = server.predict(name, instances)[1]
        status, body, _ = server.request("POST", f"{url}/models/{name}/infer", {"id": "a1", "inputs": inputs}, token)
        assert status == 200 and (body["model_name"], body["id"]) == (name, "a1"), body
        assert body["model_version"] == expected["model"]["version"]
        (prediction,) = body["outputs"]
        assert prediction["name"] == "prediction" and agrees(prediction["data"], expected["predictions"])
    bad = {"inputs": [{"name": "features", "datatype": "FP32", "shape": [2, 1], "data": [1.0]}]}
    status, body, _ = server.request("POST", f"{url}/models/nw-sine/infer", bad, token)
    assert status == 400 and "input 'features' has shape [2, 1]" in body["error"]
    assert server.request("GET", f"{url}/health/ready", token=token)[:2] == (200, {"ready": True})
    assert server.request("GET", f"{url}/health/ready")[0] != 200  # behind the same token


def reference_tensors(name):
    """The instances of `name`'s /predictions reference as (tensor name, datatype, array)."""
    if name == "nw-sine":
        return [("features", "FP32", np.array(XS, dtype=np.float32).reshape(-1, 1))]
    padded = [sequence + [[0.0, 0.0]] * (9 - len(sequence)) for sequence in SEQUENCES]
    lengths = np.array([len(s) for s in SEQUENCES], dtype=np.int64)
    return [("sequences", "FP32", np.array(padded, dtype=np.float32)), ("lengths", "INT64", lengths)]


def triton_inputs(name, binary):
    """The reference instances as tritonclient's HTTP tensors."""
    return [triton_input(*tensor, binary) for tensor in reference_tensors(name)]


def grpc_inputs(name):
    """The reference instances as tritonclient's gRPC tensors (raw contents)."""
    return [
        tritonclient.grpc.InferInput(tensor, list(array.shape), datatype).set_data_from_numpy(array)
        for tensor, datatype, array in reference_tensors(name)
    ]


@pytest.mark.parametrize("binary", [True, False])
def test_tritonclient_http_infers_as_predictions_do_binary_or_json(served_champions, binary):
    server, _ = served_champions
    client, headers = triton_http(server)
    assert client.is_server_live(headers=headers) and client.is_server_ready(headers=headers)
    attention = {"nw-sine": "attention", "mha-adding": "pooling_weights"}
    for name, instances in (("nw-sine", XS), ("mha-adding", SEQUENCES)):
        expected = server.predict(name, instances)[1]["predictions"]
        outputs = triton_outputs(("prediction", attention[name]), binary)
        result = client.infer(name, triton_inputs(name, binary), outputs=outputs, headers=headers)
        assert agrees(result.as_numpy("prediction").tolist(), expected), name
        weights = result.as_numpy(attention[name])
        assert weights.shape[0] == len(instances) and np.allclose(weights.sum(axis=1), 1.0, atol=1e-5), name
        plain = client.infer(name, triton_inputs(name, binary), headers=headers)  # every prediction output, binary
        assert [o["name"] for o in plain.get_response()["outputs"]] == ["prediction"]
        assert agrees(plain.as_numpy("prediction").tolist(), expected), name


@pytest.mark.parametrize(
    ("tensor", "named"),
    [
        (("features", "INT64", np.ones((1, 1), dtype=np.int64)), None),
        (("features", "BYTES", np.array([[b"x"]], dtype=object)), "input 'features' has datatype \"BYTES\""),
        (("features", "FP32", np.ones((1, 3), dtype=np.float32)), "input 'features' has shape [1, 3]"),
        (("weights", "FP32", np.ones((1, 1), dtype=np.float32)), "unknown input 'weights'"),
    ],
)
def test_tritonclient_http_bad_requests_raise_a_4xx_naming_the_tensor(served_champions, tensor, named):
    server, _ = served_champions
    client, headers = triton_http(server)
    inputs = [triton_input(*tensor, binary=True)]
    if named is None:  # INT64 is taken in place of FP32: the control
        assert client.infer("nw-sine", inputs, headers=headers).as_numpy("prediction").shape == (1,)
        return
    with pytest.raises(tritonclient.utils.InferenceServerException) as error:
        client.infer("nw-sine", inputs, headers=headers)
    assert error.value.status() == "400" and named in error.value.message()
    assert server.health() == "Healthy"


def test_tritonclient_http_gets_the_routes_torchserve_lacks_from_the_front_door(served_champions):
    """Model metadata, per-model readiness and a version by name (TorchServe 0.12: 404, 404, 501) answered by the
    single server's front door, as `make serve` runs it; TorchServe's own address still has none of them."""
    server, _ = served_champions
    client, headers = triton_http(server)
    version = server.predict("nw-sine", [1.0])[1]["model"]["version"]
    assert client.get_server_metadata(headers=headers)["version"] == "0.12.0"
    assert client.is_model_ready("nw-sine", headers=headers)
    assert client.is_model_ready("nw-sine", version, headers=headers)
    metadata = client.get_model_metadata("nw-sine", headers=headers)
    assert metadata["versions"] == [version] and metadata["inputs"][0]["name"] == "features"
    result = client.infer("nw-sine", triton_inputs("nw-sine", True), model_version=version, headers=headers)
    assert agrees(result.as_numpy("prediction").tolist(), server.predict("nw-sine", XS)[1]["predictions"])
    with pytest.raises(tritonclient.utils.InferenceServerException) as error:
        client.get_model_config("nw-sine", headers=headers)  # Triton's own extension, not the protocol's
    assert error.value.status() == "404"
    direct = read_properties(server.run_dir / "config.properties")["inference_address"]
    assert direct != server.inference_url  # TorchServe's own, private, behind the front
    status, _, _ = server.request("GET", f"{direct}/v2/models/nw-sine", token=server.token())
    assert status == 404


def test_tritonclient_grpc_gets_every_call_of_the_protocols_service_answered(served_champions):
    """The protocol's own gRPC service (`inference.GRPCInferenceService` on `oip_grpc_port`, in front of the REST
    side): live, ready, server and model metadata, model readiness, infer binary (raw contents) with attention,
    the served version by name; the numbers /predictions gives."""
    server, _ = served_champions
    client, headers = triton_grpc(server)
    assert client.is_server_live(headers=headers) and client.is_server_ready(headers=headers)
    assert client.get_server_metadata(headers=headers, as_json=True)["version"] == "0.12.0"
    attention = {"nw-sine": "attention", "mha-adding": "pooling_weights"}
    for name, instances in (("nw-sine", XS), ("mha-adding", SEQUENCES)):
        served = server.predict(name, instances)[1]
        version = served["model"]["version"]
        assert client.is_model_ready(name, headers=headers) and client.is_model_ready(name, version, headers=headers)
        metadata = client.get_model_metadata(name, version, headers=headers, as_json=True)
        assert (metadata["name"], metadata["versions"]) == (name, [version])
        inputs = grpc_inputs(name)
        outputs = [tritonclient.grpc.InferRequestedOutput(o) for o in ("prediction", attention[name])]
        result = client.infer(name, inputs, outputs=outputs, model_version=version, headers=headers, request_id="q")
        assert agrees(result.as_numpy("prediction").tolist(), served["predictions"]), name
        assert np.allclose(result.as_numpy(attention[name]).sum(axis=1), 1.0, atol=1e-5), name
        assert result.get_response().id == "q"
        plain = client.infer(name, inputs, headers=headers).get_response()  # every prediction output
        assert [o.name for o in plain.outputs] == ["prediction"]


@pytest.mark.parametrize(
    ("call", "code", "named"),
    [
        ("wrong datatype", "INVALID_ARGUMENT", "input 'features' has datatype \"BYTES\""),
        ("unknown output", "INVALID_ARGUMENT", 'unknown output "weights"'),
        ("another version", "INVALID_ARGUMENT", "it serves version"),
        ("unknown model", "NOT_FOUND", "nw-nothing"),
        ("too many instances", "RESOURCE_EXHAUSTED", "instances"),
        ("no token", "UNAUTHENTICATED", "Token Authorization failed"),
    ],
)
def test_a_bad_grpc_call_gets_the_protocols_status_naming_the_problem_and_costs_no_worker(
    served_champions, call, code, named
):
    server, _ = served_champions
    client, headers = triton_grpc(server)
    workers = [w["pid"] for w in server.workers("nw-sine")]
    values, datatype, model, version, output = np.array([[0.5]], dtype=np.float32), "FP32", "nw-sine", "", "prediction"
    if call == "wrong datatype":
        values, datatype = np.array([[b"x"]], dtype=object), "BYTES"
    elif call == "unknown output":
        output = "weights"
    elif call == "another version":
        version = "999"
    elif call == "unknown model":
        model = "nw-nothing"
    elif call == "too many instances":
        values = np.zeros((200_000, 1), dtype=np.float32)
    elif call == "no token":
        headers = {}
    tensor = tritonclient.grpc.InferInput("features", list(values.shape), datatype).set_data_from_numpy(values)
    outputs = [tritonclient.grpc.InferRequestedOutput(output)]
    with pytest.raises(tritonclient.utils.InferenceServerException) as error:
        client.infer(model, [tensor], outputs=outputs, model_version=version, headers=headers)
    assert error.value.status() == f"StatusCode.{code}" and named in error.value.message(), error.value
    assert [w["pid"] for w in server.workers("nw-sine")] == workers


def test_torchserves_own_grpc_service_answers_its_messages_and_a_refusal_costs_no_worker(served_champions):
    """TorchServe's own gRPC listener (loopback, unused by `make serve`'s clients) does not serve the protocol's
    `inference.GRPCInferenceService` (UNIMPLEMENTED for every call). Its messages, sent to TorchServe's renamed
    service with typed contents (tritonclient's `infer` sends raw_input_contents, which TorchServe drops), are
    answered: the same numbers as /predictions."""
    server, _ = served_champions
    address = f"127.0.0.1:{read_properties(server.run_dir / 'config.properties')['grpc_inference_port']}"
    metadata = {"authorization": f"Bearer {server.token()}"}
    with pytest.raises(tritonclient.utils.InferenceServerException) as error:
        tritonclient.grpc.InferenceServerClient(address).is_server_live(headers=metadata)
    assert error.value.status() == "StatusCode.UNIMPLEMENTED" and "inference.GRPCInferenceService" in str(error.value)
    features = service_pb2.ModelInferRequest.InferInputTensor(name="features", datatype="FP32", shape=[3, 1])
    features.contents.fp32_contents.extend(XS)
    request = service_pb2.ModelInferRequest(model_name="nw-sine", id="g1", inputs=[features])
    with grpc.insecure_channel(address) as channel:
        live = channel.unary_unary(
            f"{OIP_GRPC_SERVICE}/ServerLive",
            request_serializer=service_pb2.ServerLiveRequest.SerializeToString,
            response_deserializer=service_pb2.ServerLiveResponse.FromString,
        )
        assert live(service_pb2.ServerLiveRequest(), metadata=list(metadata.items()), timeout=30).live
        with pytest.raises(grpc.RpcError) as refused:
            live(service_pb2.ServerLiveRequest(), metadata=[("authorization", "Bearer not-the-token")], timeout=30)
        assert refused.value.code() != grpc.StatusCode.OK
        infer = channel.unary_unary(
            f"{OIP_GRPC_SERVICE}/ModelInfer",
            request_serializer=service_pb2.ModelInferRequest.SerializeToString,
            response_deserializer=service_pb2.ModelInferResponse.FromString,
        )
        response = infer(request, metadata=list(metadata.items()), timeout=30)
        # a refused request (tritonclient's raw contents, which TorchServe drops: no data) costs no worker: the
        # refusal carries the frame TorchServe's gRPC side reads, so it answers OK with no outputs
        workers = [w["pid"] for w in server.workers("nw-sine")]
        raw = service_pb2.ModelInferRequest.InferInputTensor(name="features", datatype="FP32", shape=[1, 1])
        bad = service_pb2.ModelInferRequest(model_name="nw-sine", id="g2", inputs=[raw], raw_input_contents=[b"\0" * 4])
        refused_answer = infer(bad, metadata=list(metadata.items()), timeout=30)
        assert (refused_answer.id, list(refused_answer.outputs)) == ("g2", [])
        assert infer(request, metadata=list(metadata.items()), timeout=30).outputs
        assert [w["pid"] for w in server.workers("nw-sine")] == workers
    result = tritonclient.grpc.InferResult(response)  # as_numpy reads raw contents only: the typed ones here
    assert (response.id, response.model_name) == ("g1", "nw-sine")
    expected = server.predict("nw-sine", XS)[1]["predictions"]
    assert agrees(list(result.get_output("prediction").contents.fp64_contents), expected)


def test_the_documented_curl_calls_answer_as_documented(served_champions):
    server, _ = served_champions
    for request, answer in check_documented_curls(server, "nw-sine", minimum=3):  # README, JSON, with attention
        expected = server.predict("nw-sine", request["inputs"][0]["data"])[1]["predictions"]
        assert answer["outputs"][0]["name"] == "prediction" and agrees(answer["outputs"][0]["data"], expected)
    ((request, answer),) = check_documented_curls(server, "mha-adding")
    assert [output["name"] for output in answer["outputs"]] == ["prediction", "pooling_weights"]


def test_at_c64_the_two_protocols_share_batches_as_the_batch_fill_metric_shows(served_champions):
    """OIP requests join TorchServe's dynamic batches beside /predictions: under a mixed load at concurrency 64,
    `attention_batch_requests` counts batches holding both protocols; every request is answered."""
    server, _ = served_champions
    oip = {"inputs": [{"name": "features", "datatype": "FP32", "shape": [3, 1], "data": XS}]}
    requests = [("/predictions/nw-sine", json.dumps({"instances": XS}).encode())]
    requests.append(("/v2/models/nw-sine/infer", json.dumps(oip).encode()))
    with SteadyLoad(server.inference_url, server.token(), requests, 64) as load:
        time.sleep(3)
    assert load.outcome.requests > 200 and load.outcome.failed == 0, load.outcome

    def shared() -> list[str]:  # the worker writes its figures within a second of each batch
        status, text, _ = server.request("GET", f"{server.metrics_url}/metrics", token=server.token())
        counts = [line for line in text.splitlines() if line.startswith("attention_batch_requests_count{")]
        both = [line for line in counts if 'protocols="both"' in line and 'ModelName="nw-sine"' in line]
        return [line for line in both if float(line.rsplit(" ", 1)[1]) > 0] if status == 200 else []

    assert wait_until(lambda: bool(shared()), 10, 0.25), shared()


def hostile_grpc_requests():
    """Malformed ModelInferRequests no client library would build: (what, request)."""
    request = service_pb2.ModelInferRequest
    tensor = service_pb2.ModelInferRequest.InferInputTensor

    def features(datatype="FP32", shape=(1, 1)):
        return tensor(name="features", datatype=datatype, shape=list(shape))

    typed = features()
    typed.contents.fp32_contents.extend([1.0, 2.0])  # two values for a shape of one
    return [
        ("raw contents for fewer inputs", request(model_name="nw-sine", inputs=[features(), features()],
                                                  raw_input_contents=[b"\0" * 4])),
        ("too few bytes", request(model_name="nw-sine", inputs=[features(shape=(2, 1))],
                                  raw_input_contents=[b"\0" * 4])),
        ("an unknown datatype", request(model_name="nw-sine", inputs=[features("XYZ")])),
        ("a negative shape", request(model_name="nw-sine", inputs=[features(shape=(-1, 1))], raw_input_contents=[b""])),
        ("a shape of 10^12 rows", request(model_name="nw-sine", inputs=[features(shape=(10**12, 1))],
                                          raw_input_contents=[b"\0" * 4])),
        ("typed data against its shape", request(model_name="nw-sine", inputs=[typed])),
        ("cut-off BYTES", request(model_name="nw-sine", inputs=[features("BYTES")], raw_input_contents=[b"\x09\0"])),
        ("no model name", request(inputs=[features()], raw_input_contents=[b"\0" * 4])),
        ("a path for a name", request(model_name="../nw-sine", inputs=[features()], raw_input_contents=[b"\0" * 4])),
        ("no inputs", request(model_name="nw-sine")),
        ("random bytes", request(model_name="nw-sine", inputs=[features(shape=(3, 1))],
                                 raw_input_contents=[bytes(range(7, 19))])),
    ]  # fmt: skip


def test_hostile_grpc_requests_are_refused_with_a_status_naming_them_and_cost_no_worker(served_champions):
    server, _ = served_champions
    workers = [w["pid"] for w in server.workers("nw-sine")]
    metadata = [("authorization", f"Bearer {server.token()}")]
    with grpc.insecure_channel(server.grpc_address) as channel:
        infer = channel.unary_unary(
            "/inference.GRPCInferenceService/ModelInfer",
            request_serializer=service_pb2.ModelInferRequest.SerializeToString,
            response_deserializer=service_pb2.ModelInferResponse.FromString,
        )
        for what, request in hostile_grpc_requests():
            if what == "random bytes":  # twelve bytes are three FP32 values: a valid request, answered
                assert len(infer(request, metadata=metadata, timeout=30).raw_output_contents) == 1
                continue
            with pytest.raises(grpc.RpcError) as refused:
                infer(request, metadata=metadata, timeout=30)
            code = refused.value.code()
            assert code in (grpc.StatusCode.INVALID_ARGUMENT, grpc.StatusCode.NOT_FOUND), (what, refused.value)
            assert refused.value.details(), what
    assert [w["pid"] for w in server.workers("nw-sine")] == workers and server.health() == "Healthy"
